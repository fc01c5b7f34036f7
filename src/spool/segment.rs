//! The on-disk format of a spool segment: its header, how a record is framed and
//! checksummed, and the compact binary encoding of a [`LogRecord`] inside a frame.
//!
//! A segment file is an 8-byte header (`WSPL`, a format version, three zero bytes)
//! followed by frames. A frame is `len: u32 LE`, `crc: u32 LE`, then `len` bytes of
//! payload; the CRC-32 covers the length bytes and the payload, so a flipped bit in
//! either is detected. The payload (format version 1) is:
//!
//! ```text
//! timestamp   i64 LE, nanoseconds since the Unix epoch
//! labels      varint count, then per pair: varint len, name, varint len, value
//! metadata    varint count, then pairs as for labels
//! line        the rest of the payload, UTF-8
//! ```
//!
//! Everything here is synchronous and allocation-bounded: a frame is never larger
//! than [`MAX_PAYLOAD`] bytes, and [`scan_segment`] checks a whole file through a
//! small buffer without holding a record in memory.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::record::{Labels, LogRecord, OtlpPayload, OtlpSignal, Timestamp};

/// Identifies a spool segment file and the version of its frame payloads.
pub const MAGIC: [u8; 4] = *b"WSPL";
/// The payload encoding described in this module's documentation.
pub const VERSION: u8 = 1;
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

    let payload_len = out.len() - start - FRAME_HEADER_LEN as usize;
    // An oversized payload gets a length that no reader accepts; the caller checks
    // `frame_len` against MAX_PAYLOAD before writing it, so this only keeps the
    // arithmetic total.
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    let len_bytes = len.to_le_bytes();
    let crc = frame_crc(len_bytes, &out[start + FRAME_HEADER_LEN as usize..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
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

/// Whether a segment's first bytes are a header this version can read.
pub fn header_is_valid(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN as usize && bytes[..4] == MAGIC && bytes[4] == VERSION
}

/// One frame as a reader finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame whose checksum matched; its payload is in the caller's buffer.
    Record { len: u32 },
    /// A complete frame whose checksum did not match: `FRAME_HEADER_LEN + len` bytes
    /// were consumed, and the next frame may start right after it.
    Corrupt { len: u32 },
    /// Fewer bytes than a frame header, a length above [`MAX_PAYLOAD`], or a frame
    /// running past the `remaining` bytes: nothing after this point can be framed.
    Torn,
}

/// Reads the frame at the reader's position into `payload`, given that `remaining`
/// bytes (`> 0`) of valid data are left before the end of the readable region. On
/// `Torn` the reader's position is unspecified.
pub fn read_frame<R: Read>(r: &mut R, remaining: u64, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let Some((len, crc)) = read_frame_header(r, remaining)? else {
        return Ok(Frame::Torn);
    };
    payload.clear();
    payload.resize(len as usize, 0);
    match r.read_exact(payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Frame::Torn),
        Err(e) => return Err(e),
    }
    if frame_crc(len.to_le_bytes(), payload) == crc {
        Ok(Frame::Record { len })
    } else {
        Ok(Frame::Corrupt { len })
    }
}

fn read_frame_header<R: Read>(r: &mut R, remaining: u64) -> io::Result<Option<(u32, u32)>> {
    if remaining < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_PAYLOAD || FRAME_HEADER_LEN + u64::from(len) > remaining {
        return Ok(None);
    }
    Ok(Some((len, crc)))
}

/// Checks a frame like [`read_frame`], streaming the payload through the checksum
/// instead of keeping it: recovery's memory stays at the reader's buffer.
fn check_frame<R: Read>(r: &mut R, remaining: u64, chunk: &mut [u8]) -> io::Result<Frame> {
    let Some((len, crc)) = read_frame_header(r, remaining)? else {
        return Ok(Frame::Torn);
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut left = len as usize;
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
    if h.finalize() == crc {
        Ok(Frame::Record { len })
    } else {
        Ok(Frame::Corrupt { len })
    }
}

/// What recovery found in one segment file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The header is missing or not this version's: the file holds nothing readable.
    pub bad_header: bool,
    /// Bytes up to the end of the last frame worth keeping; the file should be cut here.
    pub valid_len: u64,
    /// The file's length before any cut.
    pub file_len: u64,
    /// Frames with a good checksum before `valid_len`.
    pub records: u64,
    /// Frames with a bad checksum that are kept in place (and skipped by readers)
    /// because a good frame follows them.
    pub corrupt: u64,
    /// Good frames that end at or before `ack_offset`.
    pub records_before_ack: u64,
    /// Whether `ack_offset` falls on a frame boundary at or before `valid_len`.
    pub ack_aligned: bool,
}

/// Checks every frame of a segment file, in bounded memory.
///
/// Policy for damage: a frame with a bad checksum whose length is plausible and that
/// is followed by a good frame is kept and counted (readers skip it, losing one
/// record). Anything else, a short header, an implausible length, a frame running past
/// the end of the file, or a bad frame not followed by a good one, ends the segment:
/// `valid_len` is the end of the last good frame and everything after it is a torn
/// tail. A crash while appending can only leave the latter.
pub fn scan_segment(path: &Path, ack_offset: Option<u64>) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut scan = Scan {
        file_len,
        ..Scan::default()
    };
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut head = [0u8; HEADER_LEN as usize];
    if file_len < HEADER_LEN || {
        r.read_exact(&mut head)?;
        !header_is_valid(&head)
    } {
        scan.bad_header = true;
        return Ok(scan);
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut offset = HEADER_LEN;
    scan.valid_len = HEADER_LEN;
    scan.ack_aligned = ack_offset == Some(HEADER_LEN);
    // A bad frame seen but not yet known to be followed by a good one.
    let mut pending_corrupt = false;
    while offset < file_len {
        match check_frame(&mut r, file_len - offset, &mut chunk)? {
            Frame::Record { len } => {
                offset += FRAME_HEADER_LEN + u64::from(len);
                if pending_corrupt {
                    scan.corrupt += 1;
                    pending_corrupt = false;
                }
                scan.records += 1;
                scan.valid_len = offset;
                if ack_offset.is_some_and(|a| offset <= a) {
                    scan.records_before_ack += 1;
                }
                if ack_offset == Some(offset) {
                    scan.ack_aligned = true;
                }
            }
            Frame::Corrupt { len } if !pending_corrupt => {
                offset += FRAME_HEADER_LEN + u64::from(len);
                pending_corrupt = true;
            }
            Frame::Corrupt { .. } | Frame::Torn => break,
        }
    }
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
