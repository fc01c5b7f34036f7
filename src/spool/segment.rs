//! The on-disk format of a spool segment: its header, how a record is framed and
//! checksummed, and the compact binary encoding of a [`LogRecord`] inside a frame.
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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::record::{Labels, LogRecord, OtlpPayload, OtlpSignal, Timestamp};

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

/// What a spool stores: a type that encodes itself into a frame payload and back.
/// The spool's framing, checksums, recovery and bounds do not depend on it, so one
/// implementation serves log records (the Loki spool) and OTLP requests (the OTLP
/// spool, `state_dir/spool/otlp/`).
pub trait SpoolRecord: Sized {
    /// State kept between decodes of one reader (for log records: the last label set).
    type Cache: Default + Send;
    /// Appends the payload encoding of `self` to `out`.
    fn encode_payload(&self, out: &mut Vec<u8>);
    /// Decodes a payload written by [`SpoolRecord::encode_payload`].
    fn decode_payload(payload: &[u8], cache: &mut Self::Cache) -> Result<Self, DecodeError>;
}

impl SpoolRecord for LogRecord {
    type Cache = LabelCache;

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.as_nanos().to_le_bytes());
        put_varint(out, self.labels.len() as u64);
        for (k, v) in self.labels.iter() {
            put_str(out, k);
            put_str(out, v);
        }
        put_varint(out, self.structured_metadata.len() as u64);
        for (k, v) in &self.structured_metadata {
            put_str(out, k);
            put_str(out, v);
        }
        out.extend_from_slice(self.line.as_bytes());
    }

    fn decode_payload(payload: &[u8], cache: &mut LabelCache) -> Result<Self, DecodeError> {
        decode_payload(payload, cache)
    }
}

/// An OTLP request's payload: one byte naming the signal (1 traces, 2 metrics,
/// 3 logs), then the request's protobuf bytes as the program sent them.
impl SpoolRecord for OtlpPayload {
    type Cache = ();

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.push(match self.signal {
            OtlpSignal::Traces => 1,
            OtlpSignal::Metrics => 2,
            OtlpSignal::Logs => 3,
        });
        out.extend_from_slice(&self.body);
    }

    fn decode_payload(payload: &[u8], _: &mut ()) -> Result<Self, DecodeError> {
        let (&kind, body) = payload
            .split_first()
            .ok_or(DecodeError("empty otlp payload"))?;
        let signal = match kind {
            1 => OtlpSignal::Traces,
            2 => OtlpSignal::Metrics,
            3 => OtlpSignal::Logs,
            _ => return Err(DecodeError("unknown otlp signal")),
        };
        Ok(OtlpPayload {
            signal,
            body: bytes::Bytes::copy_from_slice(body),
        })
    }
}

/// Appends `record` to `out` as one complete frame and returns the frame's length.
pub fn encode_frame<R: SpoolRecord>(record: &R, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    record.encode_payload(out);
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
/// before. Returns the frame's length.
pub fn encode_commit<'a, I>(records: u64, snapshot: bool, updates: I, out: &mut Vec<u8>) -> usize
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
    finish_frame(out, start, META_FLAG)
}

/// A decoded commit frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Commit {
    /// Records in the segment up to this commit.
    pub records: u64,
    pub snapshot: bool,
    pub updates: Vec<(Vec<u8>, Option<Vec<u8>>)>,
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
        Ok(Commit {
            records,
            snapshot,
            updates,
        })
    }

    /// Applies the commit's resume points to `state`.
    pub fn apply(self, state: &mut ResumeState) {
        if self.snapshot {
            state.clear();
        }
        for (key, value) in self.updates {
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

fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(payload);
    h.finalize()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A payload whose checksum matched but whose contents do not decode: written by
/// another format version, or damaged in a way the checksum missed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed record payload: {0}")]
pub struct DecodeError(pub &'static str);

/// Remembers the last decoded label set, so a run of records of one stream (the
/// common case) shares one allocation instead of building a label set per record.
#[derive(Default)]
pub struct LabelCache {
    encoded: Vec<u8>,
    labels: Labels,
}

/// Decodes a frame payload written by [`encode_frame`].
pub fn decode_payload(payload: &[u8], cache: &mut LabelCache) -> Result<LogRecord, DecodeError> {
    let mut cur = Cursor { buf: payload };
    let ts = cur.take(8).ok_or(DecodeError("truncated timestamp"))?;
    let mut ts_bytes = [0u8; 8];
    ts_bytes.copy_from_slice(ts);
    let timestamp = Timestamp(i64::from_le_bytes(ts_bytes));

    // Skip over the labels first: when their bytes equal the previous record's (one
    // stream, the common case) the cached set is reused without parsing them.
    let labels_start = payload.len() - cur.buf.len();
    let n_labels = cur.count()?;
    for _ in 0..n_labels {
        cur.skip_str()?;
        cur.skip_str()?;
    }
    let labels_bytes = &payload[labels_start..payload.len() - cur.buf.len()];
    let labels = if cache.encoded == labels_bytes {
        cache.labels.clone()
    } else {
        let mut lc = Cursor { buf: labels_bytes };
        let n = lc.count()?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((lc.str()?, lc.str()?));
        }
        let labels = Labels::from_pairs(pairs);
        cache.encoded.clear();
        cache.encoded.extend_from_slice(labels_bytes);
        cache.labels = labels.clone();
        labels
    };

    let n_meta = cur.count()?;
    let mut structured_metadata = Vec::with_capacity(n_meta.min(64));
    for _ in 0..n_meta {
        let k = cur.str()?.to_owned();
        let v = cur.str()?.to_owned();
        structured_metadata.push((k, v));
    }
    let line = std::str::from_utf8(cur.buf)
        .map_err(|_| DecodeError("line is not UTF-8"))?
        .to_owned();
    Ok(LogRecord {
        timestamp,
        labels,
        structured_metadata,
        line,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(DecodeError("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    /// A count of items that follow; each takes at least one byte, which bounds it.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or(DecodeError("count exceeds payload"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError("length too large"))?;
        self.take(n).ok_or(DecodeError("truncated string"))
    }

    fn skip_str(&mut self) -> Result<(), DecodeError> {
        self.bytes().map(|_| ())
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("string is not UTF-8"))
    }
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
pub fn read_frame<R: Read>(r: &mut R, remaining: u64, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let Some(head) = read_frame_header(r, remaining)? else {
        return Ok(Frame::Torn);
    };
    payload.clear();
    payload.resize(head.len as usize, 0);
    match r.read_exact(payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Torn),
        Err(e) => return Err(e),
    }
    Ok(head.verdict(frame_crc(head.raw.to_le_bytes(), payload)))
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

/// Checks a frame like [`read_frame`], streaming a record's payload through the
/// checksum instead of keeping it (recovery's memory stays at the reader's
/// buffer); a commit's payload is kept in `commit`, for its resume points.
fn check_frame<R: Read>(
    r: &mut R,
    remaining: u64,
    chunk: &mut [u8],
    commit: &mut Vec<u8>,
) -> io::Result<Frame> {
    let Some(head) = read_frame_header(r, remaining)? else {
        return Ok(Frame::Torn);
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&head.raw.to_le_bytes());
    if head.raw & META_FLAG != 0 {
        commit.clear();
        commit.resize(head.len as usize, 0);
        match r.read_exact(commit) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Torn),
            Err(e) => return Err(e),
        }
        h.update(commit);
        return Ok(head.verdict(h.finalize()));
    }
    let mut left = head.len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        match r.read_exact(&mut chunk[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Torn),
            Err(e) => return Err(e),
        }
        h.update(&chunk[..n]);
        left -= n;
    }
    Ok(head.verdict(h.finalize()))
}

/// Bytes of a file examined at once while looking for the next frame.
const SEARCH_WINDOW: usize = 64 * 1024;

/// The first offset in `from..end` where a whole frame starts whose checksum
/// matches (a record or a commit): where reading resumes after damage. Reads the
/// file in windows of [`SEARCH_WINDOW`] bytes; a candidate's payload is checked
/// only when its length fits before `end`, which rules out almost every offset
/// inside damaged or text bytes at once.
pub fn find_frame(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut window = vec![0u8; SEARCH_WINDOW];
    let mut base = from;
    while base + FRAME_HEADER_LEN <= end {
        let want = usize::try_from((end - base).min(SEARCH_WINDOW as u64)).unwrap_or(SEARCH_WINDOW);
        let got = read_full_at(file, &mut window[..want], base)?;
        if got < FRAME_HEADER_LEN as usize {
            return Ok(None);
        }
        let last = got - FRAME_HEADER_LEN as usize;
        for i in 0..=last {
            let at = base + i as u64;
            let mut head = [0u8; FRAME_HEADER_LEN as usize];
            head.copy_from_slice(&window[i..i + FRAME_HEADER_LEN as usize]);
            let Some(h) = FrameHeader::parse(head, end - at) else {
                continue;
            };
            let inside = i + FRAME_HEADER_LEN as usize;
            let whole = if inside + h.len as usize <= got {
                frame_crc(
                    h.raw.to_le_bytes(),
                    &window[inside..inside + h.len as usize],
                ) == h.crc
            } else {
                // The payload runs past the window: read it where it is.
                frame_starts_at(file, at, end)?
            };
            if whole {
                return Ok(Some(at));
            }
        }
        // The next window starts where a header could begin that this one cut.
        base += last as u64 + 1;
    }
    Ok(None)
}

/// Whether a whole frame with a good checksum starts at `at` (or `at` is `end`):
/// after a frame with a bad checksum, this tells a damaged payload (the frame's
/// length held, and the next frame follows it) from a damaged length field.
pub fn frame_starts_at(file: &File, at: u64, end: u64) -> io::Result<bool> {
    if at == end {
        return Ok(true);
    }
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    if at > end || read_full_at(file, &mut head, at)? < head.len() {
        return Ok(false);
    }
    let Some(h) = FrameHeader::parse(head, end - at) else {
        return Ok(false);
    };
    let mut payload = vec![0u8; h.len as usize];
    if read_full_at(file, &mut payload, at + FRAME_HEADER_LEN)? < payload.len() {
        return Ok(false);
    }
    Ok(frame_crc(h.raw.to_le_bytes(), &payload) == h.crc)
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What recovery found in one segment file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Nothing in the file can be read: too short for a header, or no frame of
    /// this format anywhere in it.
    pub unreadable: bool,
    /// The header is damaged (or not this version's) but frames were found: the
    /// caller writes a good header over it and keeps the segment.
    pub header_damaged: bool,
    /// Bytes up to the end of the last frame worth keeping (the last commit, or in
    /// a version 1 segment the last record); the file should be cut here.
    pub valid_len: u64,
    /// The file's length before any cut.
    pub file_len: u64,
    /// Records before `valid_len`, as the commits count them (those lost to
    /// damage included, so that a reader's count agrees).
    pub records: u64,
    /// Damaged places before `valid_len` that readers skip: frames with a bad
    /// checksum, and runs of bytes in which no frame starts.
    pub damaged: u64,
    /// Records (as counted above) that end at or before `ack_offset`.
    pub records_before_ack: u64,
    /// Whether `ack_offset` falls on a frame boundary at or before `valid_len`.
    pub ack_aligned: bool,
}

/// Checks every frame of a segment file, in bounded memory, and applies the
/// resume points of its commits (up to `valid_len`) to `state`.
///
/// Policy for damage: a frame with a bad checksum is skipped; where no frame
/// starts (a damaged length field, zeroed or overwritten bytes), reading resumes
/// at the next offset where a whole frame with a good checksum starts
/// ([`find_frame`]). So damage in the middle costs only the records it covers.
/// What follows the last commit is a torn tail (an append a crash interrupted: it
/// was never acknowledged to its source, which reads it again) and is cut. A
/// damaged header does not make the frames behind it unreadable.
pub fn scan_segment(
    path: &Path,
    ack_offset: Option<u64>,
    state: &mut ResumeState,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut scan = Scan {
        file_len,
        ..Scan::default()
    };
    if file_len < HEADER_LEN {
        scan.unreadable = true;
        return Ok(scan);
    }
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut head = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut head)?;
    let version = header_version(&head);
    scan.header_damaged = version.is_none();
    // A damaged header says nothing of the frames: read them as this version's.
    let commits = version.unwrap_or(VERSION) >= VERSION;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut commit = Vec::new();
    let mut offset = HEADER_LEN;
    // Records so far (by the commits' count once one is seen), damaged places so
    // far, and both as of the last point worth keeping.
    let (mut records, mut damaged) = (0u64, 0u64);
    let mut found_frame = false;
    scan.valid_len = HEADER_LEN;
    scan.ack_aligned = ack_offset == Some(HEADER_LEN);
    while offset < file_len {
        let frame = check_frame(&mut r, file_len - offset, &mut chunk, &mut commit)?;
        match frame {
            Frame::Record { .. } => {
                found_frame = true;
                records += 1;
                offset += frame.size();
                if !commits {
                    scan.valid_len = offset;
                    (scan.records, scan.damaged) = (records, damaged);
                }
            }
            Frame::Commit { .. } => {
                found_frame = true;
                offset += frame.size();
                match Commit::decode(&commit, true) {
                    Ok(c) => {
                        records = c.records;
                        c.apply(state);
                        scan.valid_len = offset;
                        (scan.records, scan.damaged) = (records, damaged);
                    }
                    // A good checksum over a payload this build cannot read.
                    Err(_) => damaged += 1,
                }
            }
            // A damaged payload under an intact length: one record lost.
            Frame::Corrupt { .. }
                if frame_starts_at(r.get_ref(), offset + frame.size(), file_len)? =>
            {
                records += 1;
                damaged += 1;
                offset += frame.size();
            }
            // A damaged length field, or no frame here at all.
            Frame::Corrupt { .. } | Frame::Torn => {
                match find_frame(r.get_ref(), offset + 1, file_len)? {
                    Some(next) => {
                        damaged += 1;
                        offset = next;
                        r.seek(SeekFrom::Start(next))?;
                    }
                    None => break,
                }
            }
        }
        if ack_offset == Some(offset) {
            scan.ack_aligned = true;
            scan.records_before_ack = records;
        }
    }
    if ack_offset.is_some_and(|a| a > scan.valid_len) {
        scan.ack_aligned = false;
    }
    scan.unreadable = scan.header_damaged && !found_frame;
    Ok(scan)
}

/// Opens segment `path` for reading, positioned at `offset`.
pub fn open_at(path: &Path, offset: u64) -> io::Result<BufReader<File>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(BufReader::with_capacity(64 * 1024, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> LogRecord {
        LogRecord {
            timestamp: Timestamp(-5),
            labels: Labels::from_pairs([("job", "api"), ("level", "info")]),
            structured_metadata: vec![("trace_id".into(), "abc".into())],
            line: line.into(),
        }
    }

    #[test]
    fn a_frame_decodes_to_the_record_it_encodes() {
        let r = record("héllo ✓ {\"a\":1}");
        let mut buf = Vec::new();
        let n = encode_frame(&r, &mut buf);
        assert_eq!(n, buf.len());
        let mut payload = Vec::new();
        let frame = read_frame(&mut &buf[..], buf.len() as u64, &mut payload).unwrap();
        assert!(matches!(frame, Frame::Record { .. }));
        let mut cache = LabelCache::default();
        assert_eq!(decode_payload(&payload, &mut cache).unwrap(), r);
        // The second decode of the same stream reuses the cached label set.
        assert_eq!(decode_payload(&payload, &mut cache).unwrap(), r);
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_frame_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&record("some line"), &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let mut payload = Vec::new();
            let frame = read_frame(&mut &bad[..], bad.len() as u64, &mut payload).unwrap();
            assert_ne!(
                std::mem::discriminant(&frame),
                std::mem::discriminant(&Frame::Record { len: 0 }),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn a_frame_longer_than_what_remains_is_torn() {
        let mut buf = Vec::new();
        encode_frame(&record("some line"), &mut buf);
        let mut payload = Vec::new();
        for cut in 0..buf.len() {
            let frame = read_frame(&mut &buf[..cut], cut as u64, &mut payload).unwrap();
            assert_eq!(frame, Frame::Torn, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut cache = LabelCache::default();
        for bad in [
            &b""[..],
            &[1, 2, 3],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff],
            &[0, 0, 0, 0, 0, 0, 0, 0, 1, 5, b'a'],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc3],
        ] {
            assert!(decode_payload(bad, &mut cache).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_sort_as_ids_and_parse_back() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert!(file_name(9) < file_name(10));
        assert_eq!(parse_file_name("ack"), None);
        assert_eq!(parse_file_name("0000000000000000001x.seg"), None);
    }
}
