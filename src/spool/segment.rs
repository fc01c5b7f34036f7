//! The on-disk format of a spool segment: its header, how a record is framed and
//! checksummed, and the compact binary encoding of a
//! [`LogRecord`](crate::record::LogRecord) inside a frame.
//!
//! A segment file is an 8-byte header (`WSPL`, a format version, three zero bytes)
//! followed by frames. A frame is `len: u32 LE`, `crc: u32 LE`, then `len` bytes of
//! payload; the CRC-32 covers the length bytes and the payload, so a flipped bit in
//! either is detected. The top bit of `len` ([`META_FLAG`]) marks a *commit frame*,
//! written by the spool itself; other frames hold one record each. A record's
//! payload (for log records) is:
//!
//! ```text
//! timestamp   i64 LE, nanoseconds since the Unix epoch
//! labels      varint count, then per pair: varint len, name, varint len, value
//! metadata    varint count, then pairs as for labels
//! line        the rest of the payload, UTF-8
//! ```
//!
//! Format version 2 ends every append with a commit frame, so an append is all or
//! nothing: recovery keeps frames up to the last commit and cuts the rest. A
//! commit's payload ([`Commit`]) says how many records the segment holds up to it
//! (which makes records lost to damage countable) and carries the resume points the
//! append's sources asked to store with it (a file's device, inode and offset), so
//! the resume point is durable in the same fsync as the lines. The first frame of a
//! new segment is a snapshot commit holding every live resume point, so deleting
//! older segments never loses one. Version 1 segments (no commits) are still read.
//!
//! Everything here is synchronous and allocation-bounded: a frame is never larger
//! than [`MAX_PAYLOAD`] bytes, and [`scan_segment`] checks a whole file through a
//! small buffer without holding a record in memory. Damage is skipped by looking
//! for the next offset where a frame's length and checksum agree ([`find_frame`]).
//!
//! This file holds the header, the framing and checksums, commits and reading a
//! frame; [`payload`] the encoding of a record inside a frame; [`recovery`] the
//! check of a whole file and the search for the next frame after damage.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

mod payload;
mod recovery;
#[cfg(test)]
mod tests;

// The split is internal: every item keeps its `segment::` path.
pub use payload::*;
pub use recovery::*;

/// Identifies a spool segment file and the version of its frame payloads.
pub const MAGIC: [u8; 4] = *b"WSPL";
/// The format written: records framed as described above, each append ended by a
/// commit frame.
pub const VERSION: u8 = 2;
/// The format before commit frames; still read.
pub const VERSION_1: u8 = 1;
/// Set in a frame's length field: the frame is a commit, not a record.
pub const META_FLAG: u32 = 1 << 31;
/// Bytes before the first frame of a segment.
pub const HEADER_LEN: u64 = 8;
/// Bytes of a frame before its payload: length and checksum.
pub const FRAME_HEADER_LEN: u64 = 8;
/// The largest payload a frame may carry. A length field above it is corruption, which
/// bounds what a reader allocates for one record whatever the file says.
pub const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// The file name of segment `id`: zero-padded so names sort as ids do.
pub fn file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The id of a segment file name, or `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header every segment starts with.
pub fn header() -> [u8; HEADER_LEN as usize] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, 0, 0, 0]
}

/// Appends `record` to `out` as one complete frame and returns the frame's length.
#[cfg(test)]
pub fn encode_frame<R: SpoolRecord>(record: &R, out: &mut Vec<u8>) -> usize {
    encode_frame_cached(record, out, &mut R::Cache::default())
}

/// As [`encode_frame`], with the writer's `cache` of what the previous record
/// encoded (its label set).
pub fn encode_frame_cached<R: SpoolRecord>(
    record: &R,
    out: &mut Vec<u8>,
    cache: &mut R::Cache,
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    record.encode_payload(out, cache);
    finish_frame(out, start, 0)
}

/// Fills in the header of the frame whose payload follows `out[start..]`'s first
/// `FRAME_HEADER_LEN` bytes; returns the frame's length.
fn finish_frame(out: &mut [u8], start: usize, flag: u32) -> usize {
    let payload_len = out.len() - start - FRAME_HEADER_LEN as usize;
    // An oversized payload gets a length that no reader accepts; the caller checks
    // `frame_len` against MAX_PAYLOAD before writing it, so this only keeps the
    // arithmetic total.
    let len = u32::try_from(payload_len)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .map_or(u32::MAX, |l| l | flag);
    let len_bytes = len.to_le_bytes();
    let crc = frame_crc(len_bytes, &out[start + FRAME_HEADER_LEN as usize..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Resume points by source key, as a spool's commits leave them: for each source
/// that stores one, where it may resume once what the spool holds is shipped.
pub type ResumeState = BTreeMap<Vec<u8>, Vec<u8>>;

const COMMIT_UPDATES: u8 = 1;
const COMMIT_SNAPSHOT: u8 = 2;

/// Appends a commit frame: `records` is how many records the segment holds up to
/// it; `updates` set a source's resume point (`Some`) or forget the source
/// (`None`). A `snapshot` commit holds the whole state: it replaces what came
/// before. `shares` says whose the append's records are and which segments it
/// replaces (written only when it says anything: a reader that does not know
/// it ignores the bytes after the resume points). Returns the frame's length.
pub fn encode_commit<'a, I>(
    records: u64,
    snapshot: bool,
    updates: I,
    shares: &Shares,
    out: &mut Vec<u8>,
) -> usize
where
    I: ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
{
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    out.push(if snapshot {
        COMMIT_SNAPSHOT
    } else {
        COMMIT_UPDATES
    });
    put_varint(out, records);
    put_varint(out, updates.len() as u64);
    for (key, state) in updates {
        put_varint(out, key.len() as u64);
        out.extend_from_slice(key);
        match state {
            // The length plus one: zero means "forget".
            Some(v) => {
                put_varint(out, v.len() as u64 + 1);
                out.extend_from_slice(v);
            }
            None => put_varint(out, 0),
        }
    }
    if !shares.is_empty() {
        put_varint(out, shares.owners.len() as u64);
        for &(owner, n) in &shares.owners {
            put_varint(out, owner);
            put_varint(out, n);
        }
        put_varint(out, shares.superseded.len() as u64);
        for &id in &shares.superseded {
            put_varint(out, id);
        }
    }
    finish_frame(out, start, META_FLAG)
}

/// What a commit may say beyond its resume points: whose the append's records
/// are, and the segments whose records it carried forward.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shares {
    /// The append's records in order, as runs of (owner, how many)
    /// ([`crate::record::Owner::to_bits`]); records beyond the runs (and every
    /// record of an older spool) are [`crate::record::Owner::UNKNOWN`]'s.
    pub owners: Vec<(u64, u64)>,
    /// Segments whose unread records of other owners this append holds
    /// (carried forward when the spool was full): they are gone, and recovery
    /// deletes any a crash left behind, so no record is read twice.
    pub superseded: Vec<u64>,
}

impl Shares {
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.superseded.is_empty()
    }

    fn decode(cur: &mut Cursor<'_>) -> Result<Shares, DecodeError> {
        let mut shares = Shares::default();
        if cur.buf.is_empty() {
            return Ok(shares);
        }
        let n = cur.count()?;
        shares.owners.reserve(n.min(4096));
        for _ in 0..n {
            shares.owners.push((cur.varint()?, cur.varint()?));
        }
        let n = cur.count()?;
        for _ in 0..n {
            shares.superseded.push(cur.varint()?);
        }
        Ok(shares)
    }
}

/// A decoded commit frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Commit {
    /// Records in the segment up to this commit.
    pub records: u64,
    pub snapshot: bool,
    pub updates: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Read with the updates; empty in a commit that has none.
    pub shares: Shares,
}

impl Commit {
    /// Decodes a commit frame's payload; `with_updates = false` reads only the
    /// record count (what a reader needs).
    pub fn decode(payload: &[u8], with_updates: bool) -> Result<Self, DecodeError> {
        let mut cur = Cursor { buf: payload };
        let snapshot = match cur.take(1) {
            Some([COMMIT_UPDATES]) => false,
            Some([COMMIT_SNAPSHOT]) => true,
            _ => return Err(DecodeError("unknown commit kind")),
        };
        let records = cur.varint()?;
        let mut updates = Vec::new();
        if with_updates {
            let n = cur.count()?;
            updates.reserve(n.min(1024));
            for _ in 0..n {
                let key = cur.bytes()?.to_vec();
                let state = match cur.varint()? {
                    0 => None,
                    n => {
                        let len =
                            usize::try_from(n - 1).map_err(|_| DecodeError("length too large"))?;
                        Some(
                            cur.take(len)
                                .ok_or(DecodeError("truncated resume point"))?
                                .to_vec(),
                        )
                    }
                };
                updates.push((key, state));
            }
        }
        // An unreadable tail is taken as no shares: the resume points are what
        // matters, and the owners only weigh who loses first.
        let shares = if with_updates {
            Shares::decode(&mut cur).unwrap_or_default()
        } else {
            Shares::default()
        };
        Ok(Commit {
            records,
            snapshot,
            updates,
            shares,
        })
    }

    /// Applies the commit's resume points to `state`.
    pub fn apply(&mut self, state: &mut ResumeState) {
        if self.snapshot {
            state.clear();
        }
        for (key, value) in std::mem::take(&mut self.updates) {
            match value {
                Some(v) => {
                    state.insert(key, v);
                }
                None => {
                    state.remove(&key);
                }
            }
        }
    }
}

/// A fresh CRC-32 hasher. Cloned from one made once: `Hasher::new` detects
/// the CPU's features at every call, which cost as much as hashing a short
/// frame.
pub(super) fn crc_hasher() -> crc32fast::Hasher {
    static FRESH: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    FRESH.get_or_init(crc32fast::Hasher::new).clone()
}

fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc_hasher();
    h.update(&len_bytes);
    h.update(payload);
    h.finalize()
}

/// The format version of a segment's header, when it is one this build reads.
pub fn header_version(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= HEADER_LEN as usize
        && bytes[..4] == MAGIC
        && matches!(bytes[4], VERSION_1 | VERSION)
        && bytes[5..8] == [0, 0, 0])
    .then_some(bytes[4])
}

/// One frame as a reader finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete record frame whose checksum matched; its payload is in the
    /// caller's buffer.
    Record { len: u32 },
    /// A complete commit frame whose checksum matched; its payload is in the
    /// caller's buffer.
    Commit { len: u32 },
    /// A complete frame whose checksum did not match: `FRAME_HEADER_LEN + len` bytes
    /// were consumed, and the next frame may start right after it.
    Corrupt { len: u32 },
    /// Fewer bytes than a frame header, a length above [`MAX_PAYLOAD`], or a frame
    /// running past the `remaining` bytes: no frame starts here ([`find_frame`]
    /// looks for the next one).
    Torn,
}

impl Frame {
    /// Bytes the frame takes, header included (0 for `Torn`).
    pub fn size(&self) -> u64 {
        match *self {
            Frame::Record { len } | Frame::Commit { len } | Frame::Corrupt { len } => {
                FRAME_HEADER_LEN + u64::from(len)
            }
            Frame::Torn => 0,
        }
    }
}

/// Reads the frame at the reader's position into `payload`, given that `remaining`
/// bytes (`> 0`) of valid data are left before the end of the readable region. On
/// `Torn` the reader's position is unspecified.
pub fn read_frame<R: io::BufRead>(
    r: &mut R,
    remaining: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Frame> {
    let Some(head) = read_frame_header(r, remaining)? else {
        return Ok(Frame::Torn);
    };
    payload.clear();
    if !fill_exact(r, head.len as usize, payload)? {
        return Ok(Frame::Torn);
    }
    Ok(head.verdict(frame_crc(head.raw.to_le_bytes(), payload)))
}

/// Appends the next `len` bytes of `r` to `out`, copied straight from the
/// reader's buffer: `false` when the input ends first. (`read_exact` would want
/// the bytes zeroed first, a second pass over every record read.)
fn fill_exact<R: io::BufRead>(r: &mut R, len: usize, out: &mut Vec<u8>) -> io::Result<bool> {
    out.reserve(len);
    let mut left = len;
    while left > 0 {
        let buf = match r.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(false);
        }
        let n = buf.len().min(left);
        out.extend_from_slice(&buf[..n]);
        r.consume(n);
        left -= n;
    }
    Ok(true)
}

/// Whether the frame at the reader's position is marked a commit (its checksum
/// is not checked: [`read_frame`] does that).
pub fn commit_is_next<R: io::BufRead>(r: &mut R) -> io::Result<bool> {
    let buf = r.fill_buf()?;
    Ok(buf.len() >= 4 && buf[3] & 0x80 != 0)
}

/// A frame header that fits in what remains.
#[derive(Clone, Copy)]
struct FrameHeader {
    /// The length field as stored (with [`META_FLAG`]).
    raw: u32,
    len: u32,
    crc: u32,
}

impl FrameHeader {
    fn parse(head: [u8; FRAME_HEADER_LEN as usize], remaining: u64) -> Option<Self> {
        let raw = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let len = raw & !META_FLAG;
        (len <= MAX_PAYLOAD && FRAME_HEADER_LEN + u64::from(len) <= remaining)
            .then_some(FrameHeader { raw, len, crc })
    }

    fn verdict(self, crc: u32) -> Frame {
        match (crc == self.crc, self.raw & META_FLAG != 0) {
            (true, false) => Frame::Record { len: self.len },
            (true, true) => Frame::Commit { len: self.len },
            (false, _) => Frame::Corrupt { len: self.len },
        }
    }
}

fn read_frame_header<R: Read>(r: &mut R, remaining: u64) -> io::Result<Option<FrameHeader>> {
    if remaining < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(FrameHeader::parse(head, remaining))
}

/// One frame as a walk over a segment's appends sees it ([`step`]): the
/// records' payloads are skipped, unchecked; a commit is checked and decoded.
#[derive(Debug)]
pub enum Step {
    Record {
        size: u64,
    },
    Commit {
        size: u64,
        commit: Commit,
    },
    /// No frame fits here, or a commit whose checksum or payload is bad.
    Damaged,
}

/// Reads the frame at the reader's position (`remaining` bytes of valid data
/// left), skipping a record's payload; a commit's payload goes through
/// `payload`.
pub fn step(r: &mut BufReader<File>, remaining: u64, payload: &mut Vec<u8>) -> io::Result<Step> {
    let Some(head) = read_frame_header(r, remaining)? else {
        return Ok(Step::Damaged);
    };
    let size = FRAME_HEADER_LEN + u64::from(head.len);
    if head.raw & META_FLAG == 0 {
        r.seek_relative(i64::from(head.len))?;
        return Ok(Step::Record { size });
    }
    payload.clear();
    payload.resize(head.len as usize, 0);
    match r.read_exact(payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Step::Damaged),
        Err(e) => return Err(e),
    }
    if frame_crc(head.raw.to_le_bytes(), payload) != head.crc {
        return Ok(Step::Damaged);
    }
    Ok(match Commit::decode(payload, true) {
        Ok(commit) => Step::Commit { size, commit },
        Err(_) => Step::Damaged,
    })
}

/// Opens segment `path` for reading, positioned at `offset`.
pub fn open_at(path: &Path, offset: u64) -> io::Result<BufReader<File>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(BufReader::with_capacity(64 * 1024, file))
}
