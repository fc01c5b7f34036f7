//! The `ack` file: the last acknowledged position and the end of the push in
//! flight. Written in place, in one of two slots taken in turn, so that a
//! write cut short leaves the state before it (v4); the older single-record
//! versions (v1–v3, replaced whole through a temporary file) are still read.

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

/// v2, or v3 when the state carries a mark (what agents before v4 wrote; kept
/// for the tests of reading them).
#[cfg(test)]
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

/// v4 (written since acknowledgements are recorded in place): two slots of
/// [`ACK_SLOT_LEN`] bytes, written in turn, each magic, version, a sequence
/// number, the acknowledged position, the in-flight end, the mark (0: none),
/// CRC-32 over what precedes it, zero padding. The valid slot with the higher
/// sequence number is the state: a write cut short damages only the slot it
/// was writing, and the other holds the state before it. An agent older than
/// v4 finds the file unreadable and ships the whole spool again (at least once).
pub(super) const ACK_V4: u32 = 4;
pub(super) const ACK_SLOT_LEN: usize = 64;
pub(super) const ACK_V4_LEN: usize = 2 * ACK_SLOT_LEN;
/// The bytes of a slot the CRC-32 covers.
const ACK_SLOT_BODY: usize = 56;

/// One v4 slot holding `state` under sequence number `seq`.
pub(super) fn encode_slot(seq: u64, state: AckState) -> [u8; ACK_SLOT_LEN] {
    let mut b = [0u8; ACK_SLOT_LEN];
    b[..4].copy_from_slice(&ACK_MAGIC);
    b[4..8].copy_from_slice(&ACK_V4.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    put_position(&mut b[16..32], state.acked);
    put_position(&mut b[32..48], state.in_flight);
    b[48..56].copy_from_slice(&state.mark.to_le_bytes());
    let crc = crc32fast::hash(&b[..ACK_SLOT_BODY]);
    b[ACK_SLOT_BODY..ACK_SLOT_BODY + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A v4 slot's sequence number and state; `None` when it is damaged (or
/// was never written).
pub(super) fn decode_slot(b: &[u8]) -> Option<(u64, AckState)> {
    let b = b.get(..ACK_SLOT_LEN)?;
    if b[..4] != ACK_MAGIC || u32::from_le_bytes(b[4..8].try_into().ok()?) != ACK_V4 {
        return None;
    }
    let crc = u32::from_le_bytes(b[ACK_SLOT_BODY..ACK_SLOT_BODY + 4].try_into().ok()?);
    if crc32fast::hash(&b[..ACK_SLOT_BODY]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let state = AckState {
        acked: get_position(&b[16..32])?,
        in_flight: get_position(&b[32..48])?,
        mark: u64::from_le_bytes(b[48..56].try_into().ok()?),
    };
    Some((seq, state))
}

/// A v4 file's newest valid slot: its index, sequence number and state.
pub(super) fn decode_slots(b: &[u8]) -> Option<(usize, u64, AckState)> {
    if b.len() != ACK_V4_LEN {
        return None;
    }
    let first = decode_slot(&b[..ACK_SLOT_LEN]).map(|(seq, s)| (0, seq, s));
    let second = decode_slot(&b[ACK_SLOT_LEN..]).map(|(seq, s)| (1, seq, s));
    match (first, second) {
        (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The `ack` file as the reader keeps it: once in the v4 form, open, and each
/// state written over the older of its two slots (`pwrite` + `fdatasync`: no
/// new file, no rename, the file's size unchanged).
#[derive(Debug)]
pub(super) struct AckFile {
    dir: PathBuf,
    /// The v4 file, open for writing in place; `None` until it is created
    /// (no file, an older version's, a damaged one) or after a failed write.
    file: Option<File>,
    /// The slot holding the newest state: the next write goes to the other.
    newest: usize,
    /// The newest state's sequence number.
    seq: u64,
}

impl AckFile {
    /// Reads the `ack` file of `dir`: the state it holds (`None` when there is
    /// none or it is unreadable: then everything is read again, at least once,
    /// never fatal), and the file to write the next states to.
    pub(super) fn open(dir: &Path) -> (Self, Option<AckState>) {
        let mut ack = AckFile {
            dir: dir.to_path_buf(),
            file: None,
            newest: 0,
            seq: 0,
        };
        let Some(bytes) = read_ack_bytes(dir) else {
            return (ack, None);
        };
        if let Some((slot, seq, state)) = decode_slots(&bytes) {
            // Written in place from here on.
            let path = dir.join(ACK_FILE);
            match open_in_place(&path) {
                Ok(f) => {
                    ack.file = Some(f);
                    ack.newest = slot;
                    ack.seq = seq;
                }
                Err(e) => warn!(path = %path.display(), error = %e,
                    "cannot open spool acknowledgement file for writing; it is written anew"),
            }
            return (ack, Some(state));
        }
        let state = decode_ack(&bytes);
        if state.is_none() {
            warn!(path = %dir.join(ACK_FILE).display(),
                "spool acknowledgement file is corrupt; re-reading the whole spool (records may be shipped twice)");
        }
        (ack, state)
    }

    /// Records `state` durably: in the older slot of the v4 file, or (the first
    /// time, and after a failed write) as a new v4 file, written to a temporary
    /// file, fsynced and renamed over the previous one.
    pub(super) fn write(&mut self, state: AckState) -> Result<(), SpoolError> {
        let seq = self.seq + 1;
        self.seq = seq;
        let path = self.dir.join(ACK_FILE);
        if let Some(f) = &self.file {
            use std::os::unix::fs::FileExt;
            let slot = 1 - self.newest;
            let written = f
                .write_all_at(&encode_slot(seq, state), (slot * ACK_SLOT_LEN) as u64)
                .and_then(|()| f.sync_data());
            return match written {
                Ok(()) => {
                    self.newest = slot;
                    Ok(())
                }
                Err(e) => {
                    // The other slot still holds the state before; the next
                    // write makes a new file rather than trust this one.
                    self.file = None;
                    Err(SpoolError::io("write spool acknowledgement file", &path, e))
                }
            };
        }
        let tmp = self.dir.join(ACK_TMP_FILE);
        let mut bytes = [0u8; ACK_V4_LEN];
        bytes[..ACK_SLOT_LEN].copy_from_slice(&encode_slot(seq, state));
        let write = || -> io::Result<File> {
            let mut f = crate::state_file::create_temp(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(f)
        };
        let f = write().map_err(|e| SpoolError::io("write spool acknowledgement file", &tmp, e))?;
        fs::rename(&tmp, &path)
            .map_err(|e| SpoolError::io("rename spool acknowledgement file", &path, e))?;
        // Once per file: the writes in place that follow go to this file, so
        // its name must not be lost to a power cut.
        sync_dir(&self.dir)?;
        self.file = Some(f);
        self.newest = 0;
        Ok(())
    }
}

/// Opens the v4 file to write its slots in place: never through a symlink.
fn open_in_place(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32)
        .open(path)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", dir, e))
}

/// The `ack` file's bytes (a stale temporary file removed first); `None`
/// when there is none or it cannot be read (logged).
fn read_ack_bytes(dir: &Path) -> Option<Vec<u8>> {
    remove_file_logged(&dir.join(ACK_TMP_FILE));
    let path = dir.join(ACK_FILE);
    // An ack file is at most 128 bytes: a larger one is corrupt, and is not read whole.
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
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(path = %path.display(), error = %e,
                "cannot read spool acknowledgement file; re-reading the whole spool");
            None
        }
    }
}
