//! The compact binary encoding of a record inside a frame's payload (see the
//! layout in [`super`]'s docs), and the bounded cursor that decodes it.

use crate::record::{Labels, LogRecord, OtlpPayload, OtlpSignal, Timestamp};

/// What a spool stores: a type that encodes itself into a frame payload and back.
/// The spool's framing, checksums, recovery and bounds do not depend on it, so one
/// implementation serves log records (the Loki spool) and OTLP requests (the OTLP
/// spool, `state_dir/spool/otlp/`).
pub trait SpoolRecord: Sized {
    /// State kept between encodes of one writer, or between decodes of one
    /// reader (for log records: the last label set and its encoding).
    type Cache: Default + Send;
    /// Appends the payload encoding of `self` to `out`.
    fn encode_payload(&self, out: &mut Vec<u8>, cache: &mut Self::Cache);
    /// Decodes a payload written by [`SpoolRecord::encode_payload`].
    fn decode_payload(payload: &[u8], cache: &mut Self::Cache) -> Result<Self, DecodeError>;
}

impl SpoolRecord for LogRecord {
    type Cache = LabelCache;

    fn encode_payload(&self, out: &mut Vec<u8>, cache: &mut LabelCache) {
        out.extend_from_slice(&self.timestamp.as_nanos().to_le_bytes());
        // A run of records of one stream shares one label set (one `Arc`, so the
        // comparison is a pointer's): its bytes are encoded once and copied.
        if cache.encoded.is_empty() || cache.labels != self.labels {
            cache.encoded.clear();
            put_varint(&mut cache.encoded, self.labels.len() as u64);
            for (k, v) in self.labels.iter() {
                put_str(&mut cache.encoded, k);
                put_str(&mut cache.encoded, v);
            }
            cache.labels = self.labels.clone();
        }
        out.extend_from_slice(&cache.encoded);
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

    fn encode_payload(&self, out: &mut Vec<u8>, _: &mut ()) {
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

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A payload whose checksum matched but whose contents do not decode: written by
/// another format version, or damaged in a way the checksum missed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed record payload: {0}")]
pub struct DecodeError(pub &'static str);

/// Remembers the last label set and its encoding: a reader's run of records of
/// one stream (the common case) shares one allocation instead of building a
/// label set per record, and a writer's copies the bytes instead of encoding
/// each pair again.
#[derive(Default)]
pub struct LabelCache {
    encoded: Vec<u8>,
    labels: Labels,
}

/// Decodes a frame payload written by [`super::encode_frame`].
pub fn decode_payload(payload: &[u8], cache: &mut LabelCache) -> Result<LogRecord, DecodeError> {
    let mut cur = Cursor { buf: payload };
    let ts = cur.take(8).ok_or(DecodeError("truncated timestamp"))?;
    let mut ts_bytes = [0u8; 8];
    ts_bytes.copy_from_slice(ts);
    let timestamp = Timestamp(i64::from_le_bytes(ts_bytes));

    // When the labels' bytes start with the previous record's (one stream, the
    // common case) the cached set is reused without reading them: the encoding is
    // self-delimiting, so reading them would take exactly those bytes.
    let labels = if !cache.encoded.is_empty() && cur.buf.starts_with(&cache.encoded) {
        cur.buf = &cur.buf[cache.encoded.len()..];
        cache.labels.clone()
    } else {
        let labels_start = payload.len() - cur.buf.len();
        let n_labels = cur.count()?;
        for _ in 0..n_labels {
            cur.skip_str()?;
            cur.skip_str()?;
        }
        let labels_bytes = &payload[labels_start..payload.len() - cur.buf.len()];
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
    // `simdutf8` answers as `std::str::from_utf8` does, in about half the
    // instructions on a line of a couple of hundred bytes.
    let line = simdutf8::basic::from_utf8(cur.buf)
        .map_err(|_| DecodeError("line is not UTF-8"))?
        .to_owned();
    Ok(LogRecord {
        timestamp,
        labels,
        structured_metadata,
        line,
    })
}

pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    pub(super) fn varint(&mut self) -> Result<u64, DecodeError> {
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
    pub(super) fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or(DecodeError("count exceeds payload"))
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError("length too large"))?;
        self.take(n).ok_or(DecodeError("truncated string"))
    }

    pub(super) fn skip_str(&mut self) -> Result<(), DecodeError> {
        self.bytes().map(|_| ())
    }

    pub(super) fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("string is not UTF-8"))
    }
}
