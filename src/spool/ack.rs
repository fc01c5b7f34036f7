//! The `ack` file: the last acknowledged position and the end of the push in
//! flight, replaced atomically.

use super::*;

pub(super) const ACK_FILE: &str = "ack";
pub(super) const ACK_TMP_FILE: &str = "ack.tmp";
pub(super) const ACK_MAGIC: [u8; 4] = *b"WSPA";
/// v1: magic, version, the acknowledged position, CRC-32 (28 bytes). Still read.
pub(super) const ACK_V1: u32 = 1;
pub(super) const ACK_V1_LEN: usize = 28;
/// v2 (written since the in-flight push is recorded): magic, version, the
/// acknowledged position, the in-flight end, CRC-32 over what precedes it (44
/// bytes). An agent older than v2 finds a v2 file unreadable and ships the whole
/// spool again (at least once); nothing newer needs a v1 writer.
pub(super) const ACK_V2: u32 = 2;
pub(super) const ACK_V2_LEN: usize = 44;
/// v3 (written only while the push in flight carries a mark,
/// [`SpoolReader::mark_in_flight`]): v2 with the mark (8 bytes) before the
/// CRC-32 (52 bytes). Without a mark v2 is written, so an agent that reads only
/// v2 is affected only while such a push is in flight.
pub(super) const ACK_V3: u32 = 3;
pub(super) const ACK_V3_LEN: usize = 52;

/// What the `ack` file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct AckState {
    /// Everything up to here was shipped.
    pub(super) acked: SpoolPosition,
    /// The end of the furthest push begun ([`SpoolReader::begin_push`]); when it
    /// is beyond `acked`, the records between may already be in the sink's store.
    pub(super) in_flight: SpoolPosition,
    /// The sink's mark on the push in flight (0: none), see
    /// [`SpoolReader::mark_in_flight`].
    pub(super) mark: u64,
}

pub(super) fn put_position(b: &mut [u8], pos: SpoolPosition) {
    b[..8].copy_from_slice(&pos.segment.to_le_bytes());
    b[8..16].copy_from_slice(&pos.offset.to_le_bytes());
}

pub(super) fn get_position(b: &[u8]) -> Option<SpoolPosition> {
    Some(SpoolPosition {
        segment: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
        offset: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
    })
}

/// v2, or v3 when the state carries a mark.
pub(super) fn encode_ack(state: AckState) -> Vec<u8> {
    let (version, len) = if state.mark == 0 {
        (ACK_V2, ACK_V2_LEN)
    } else {
        (ACK_V3, ACK_V3_LEN)
    };
    let mut b = vec![0u8; len];
    b[..4].copy_from_slice(&ACK_MAGIC);
    b[4..8].copy_from_slice(&version.to_le_bytes());
    put_position(&mut b[8..24], state.acked);
    put_position(&mut b[24..40], state.in_flight);
    if state.mark != 0 {
        b[40..48].copy_from_slice(&state.mark.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..len - 4]);
    b[len - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads a v3 or v2 file, or a v1 file (which knows of no push in flight).
pub(super) fn decode_ack(b: &[u8]) -> Option<AckState> {
    if b.get(..4)? != ACK_MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let len = match version {
        ACK_V1 => ACK_V1_LEN,
        ACK_V2 => ACK_V2_LEN,
        ACK_V3 => ACK_V3_LEN,
        _ => return None,
    };
    if b.len() != len {
        return None;
    }
    let crc = u32::from_le_bytes(b[len - 4..].try_into().ok()?);
    if crc32fast::hash(&b[..len - 4]) != crc {
        return None;
    }
    let acked = get_position(&b[8..24])?;
    let in_flight = match version {
        ACK_V1 => acked,
        _ => get_position(&b[24..40])?,
    };
    let mark = match version {
        ACK_V3 => u64::from_le_bytes(b[40..48].try_into().ok()?),
        _ => 0,
    };
    Some(AckState {
        acked,
        in_flight,
        mark,
    })
}

/// Replaces the `ack` file: written to a temporary file, fsynced, renamed over.
pub(super) fn write_ack_file(dir: &Path, state: AckState) -> Result<(), SpoolError> {
    let tmp = dir.join(ACK_TMP_FILE);
    let write = || -> io::Result<()> {
        let mut f = crate::state_file::create_temp(&tmp)?;
        f.write_all(&encode_ack(state))?;
        f.sync_all()
    };
    write().map_err(|e| SpoolError::io("write spool acknowledgement file", &tmp, e))?;
    let path = dir.join(ACK_FILE);
    fs::rename(&tmp, &path)
        .map_err(|e| SpoolError::io("rename spool acknowledgement file", &path, e))?;
    // No directory fsync: should a power loss undo the rename, the previous
    // state is used and a little more is shipped again (at least once).
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", dir, e))
}

/// The last acknowledged position and in-flight end, or `None` when nothing was
/// acknowledged or the file is unreadable: then everything is read again (at
/// least once, never fatal).
pub(super) fn read_ack_file(dir: &Path) -> Option<AckState> {
    remove_file_logged(&dir.join(ACK_TMP_FILE));
    let path = dir.join(ACK_FILE);
    // An ack file is at most 52 bytes: a larger one is corrupt, and is not read whole.
    let read = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
    }
    .and_then(|f| {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut bytes).map(|_| bytes)
    });
    match read {
        Ok(bytes) => {
            let pos = decode_ack(&bytes);
            if pos.is_none() {
                warn!(path = %path.display(),
                    "spool acknowledgement file is corrupt; re-reading the whole spool (records may be shipped twice)");
            }
            pos
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(path = %path.display(), error = %e,
                "cannot read spool acknowledgement file; re-reading the whole spool");
            None
        }
    }
}
