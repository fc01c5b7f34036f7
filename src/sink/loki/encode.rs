//! Turns a batch of records into the body of one Loki push.
//!
//! Promises: records are grouped into one stream per label set, streams in label
//! order, entries of a stream in timestamp order (a stable sort: entries with the
//! same timestamp keep the order they were read in). The output is a pure function
//! of the input, so a retried batch produces the same body (Loki 3.x stores a
//! resent entry again, though: after a crash the sink first asks Loki what it
//! holds, see `replay.rs`). Synchronous and allocation-light: it runs once per
//! batch on the sink's task.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

#[cfg(doc)]
use super::push_proto::PushRequest;
use super::push_proto::Timestamp;
use crate::config::LokiEncoding;
use crate::record::{Labels, LogRecord};

/// `Content-Type` of a protobuf push (the body is snappy block compressed).
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// `Content-Type` of a JSON push.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The body of one push, ready to send (and to send again on a retry: cloning the
/// body is cheap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPush {
    pub body: Bytes,
    pub content_type: &'static str,
    /// How many entries the body holds, for counting what was delivered or dropped.
    pub entries: usize,
}

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot snappy-compress a push of {len} bytes: {source}")]
    Compress { len: usize, source: snap::Error },
    #[error("cannot serialize a push as json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes `records` as one push body in the given encoding.
pub fn encode(records: &[LogRecord], encoding: LokiEncoding) -> Result<EncodedPush, EncodeError> {
    let streams = group(records);
    match encoding {
        LokiEncoding::Protobuf => encode_protobuf(&streams, records.len()),
        LokiEncoding::Json => encode_json(&streams, records.len()),
    }
}

/// Records grouped by label set (in label order), each group in timestamp order.
fn group(records: &[LogRecord]) -> BTreeMap<&Labels, Vec<&LogRecord>> {
    let mut streams: BTreeMap<&Labels, Vec<&LogRecord>> = BTreeMap::new();
    // A run of records of one stream (the common case) shares one label set: an
    // equal set is found by `==` (the same `Arc` answers at once) without the
    // map's ordered search, which compares every label's text.
    let mut last: Option<(&Labels, Vec<&LogRecord>)> = None;
    for r in records {
        match &mut last {
            Some((labels, run)) if **labels == r.labels => run.push(r),
            _ => {
                if let Some((labels, run)) = last.take() {
                    streams.entry(labels).or_default().extend(run);
                }
                last = Some((&r.labels, vec![r]));
            }
        }
    }
    if let Some((labels, run)) = last {
        streams.entry(labels).or_default().extend(run);
    }
    for entries in streams.values_mut() {
        // Stable: equal timestamps keep the read order, which Loki then keeps too.
        entries.sort_by_key(|r| r.timestamp);
    }
    streams
}

/// The push as `logproto.PushRequest` bytes, written straight from the records:
/// the same bytes `prost` writes for the [`PushRequest`] of [`super::push_proto`]
/// (fields in tag order, proto3 defaults left out), without copying each line
/// into a message first and without `prost` measuring each nested message again
/// at every level. Then snappy's block format.
fn encode_protobuf(
    streams: &BTreeMap<&Labels, Vec<&LogRecord>>,
    entries: usize,
) -> Result<EncodedPush, EncodeError> {
    let mut raw = Vec::new();
    let mut labels_text = String::new();
    let mut sizes = Vec::new();
    let total: usize = streams
        .values()
        .map(|records| records.iter().map(|r| r.line.len() + 24).sum::<usize>() + 128)
        .sum();
    raw.reserve(total);
    for (labels, records) in streams {
        labels_text.clear();
        {
            use std::fmt::Write as _;
            // Writing into a String cannot fail.
            let _ = write!(labels_text, "{labels}");
        }
        sizes.clear();
        sizes.extend(records.iter().map(|r| entry_len(r)));
        let stream_len = string_field_len(&labels_text)
            + sizes
                .iter()
                .map(|&n| 1 + varint_len(n as u64) + n)
                .sum::<usize>();
        // PushRequest.streams = 1
        raw.push(0x0a);
        put_varint(&mut raw, stream_len as u64);
        // StreamAdapter.labels = 1
        put_string_field(&mut raw, 0x0a, &labels_text);
        for (r, &size) in records.iter().zip(&sizes) {
            // StreamAdapter.entries = 2
            raw.push(0x12);
            put_varint(&mut raw, size as u64);
            put_entry(&mut raw, r);
        }
        // StreamAdapter.hash = 3 is 0, left out.
    }
    // Loki expects snappy's raw (block) format, not the framed stream format.
    let body = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .map_err(|source| EncodeError::Compress {
            len: raw.len(),
            source,
        })?;
    Ok(EncodedPush {
        body: Bytes::from(body),
        content_type: CONTENT_TYPE_PROTOBUF,
        entries,
    })
}

/// Bytes of a varint holding `v`.
fn varint_len(v: u64) -> usize {
    // One byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A string field's bytes with its tag (one byte) and length; none when empty.
fn string_field_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + varint_len(s.len() as u64) + s.len()
    }
}

fn put_string_field(out: &mut Vec<u8>, tag: u8, s: &str) {
    if !s.is_empty() {
        out.push(tag);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
}

/// `google.protobuf.Timestamp` of `ns`: its length and fields.
fn timestamp_fields(ns: i64) -> (usize, Timestamp) {
    let t = Timestamp::from_nanos(ns);
    let mut len = 0;
    if t.seconds != 0 {
        len += 1 + varint_len(t.seconds as u64);
    }
    if t.nanos != 0 {
        // An int32 is written sign-extended to 64 bits.
        len += 1 + varint_len(i64::from(t.nanos) as u64);
    }
    (len, t)
}

fn label_pair_len(name: &str, value: &str) -> usize {
    string_field_len(name) + string_field_len(value)
}

/// The length of one `EntryAdapter`'s bytes.
fn entry_len(r: &LogRecord) -> usize {
    let (ts_len, _) = timestamp_fields(r.timestamp.as_nanos());
    let mut len = 1 + varint_len(ts_len as u64) + ts_len + string_field_len(&r.line);
    for (name, value) in &r.structured_metadata {
        let n = label_pair_len(name, value);
        len += 1 + varint_len(n as u64) + n;
    }
    len
}

/// One `EntryAdapter`'s bytes.
fn put_entry(out: &mut Vec<u8>, r: &LogRecord) {
    let (ts_len, t) = timestamp_fields(r.timestamp.as_nanos());
    // EntryAdapter.timestamp = 1 (always present, so written even when empty)
    out.push(0x0a);
    put_varint(out, ts_len as u64);
    if t.seconds != 0 {
        out.push(0x08);
        put_varint(out, t.seconds as u64);
    }
    if t.nanos != 0 {
        out.push(0x10);
        put_varint(out, i64::from(t.nanos) as u64);
    }
    // EntryAdapter.line = 2
    put_string_field(out, 0x12, &r.line);
    // EntryAdapter.structured_metadata = 3
    for (name, value) in &r.structured_metadata {
        out.push(0x1a);
        put_varint(out, label_pair_len(name, value) as u64);
        put_string_field(out, 0x0a, name);
        put_string_field(out, 0x12, value);
    }
}

fn encode_json(
    streams: &BTreeMap<&Labels, Vec<&LogRecord>>,
    entries: usize,
) -> Result<EncodedPush, EncodeError> {
    let body = JsonPush {
        streams: streams
            .iter()
            .map(|(labels, records)| JsonStream {
                stream: labels,
                values: JsonValues(records),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&body)?;
    Ok(EncodedPush {
        body: Bytes::from(bytes),
        content_type: CONTENT_TYPE_JSON,
        entries,
    })
}

/// `{"streams":[{"stream":{...},"values":[["<ns>","<line>",{...}]]}]}`
#[derive(Serialize)]
struct JsonPush<'a> {
    streams: Vec<JsonStream<'a>>,
}

#[derive(Serialize)]
struct JsonStream<'a> {
    stream: &'a Labels,
    values: JsonValues<'a>,
}

struct JsonValues<'a>(&'a [&'a LogRecord]);

impl Serialize for JsonValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in self.0 {
            seq.serialize_element(&JsonEntry(r))?;
        }
        seq.end()
    }
}

/// One entry: `["<ns as string>", "<line>"]`, plus the structured metadata object
/// as a third element only when there is some (older Loki rejects an empty one).
struct JsonEntry<'a>(&'a LogRecord);

impl Serialize for JsonEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let with_metadata = !r.structured_metadata.is_empty();
        let mut seq = s.serialize_seq(Some(if with_metadata { 3 } else { 2 }))?;
        seq.serialize_element(&r.timestamp.as_nanos().to_string())?;
        seq.serialize_element(&r.line)?;
        if with_metadata {
            seq.serialize_element(&JsonMetadata(&r.structured_metadata))?;
        }
        seq.end()
    }
}

struct JsonMetadata<'a>(&'a [(String, String)]);

impl Serialize for JsonMetadata<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::super::push_proto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};
    use super::*;
    use crate::record::Timestamp as Ts;
    use prost::Message;

    fn rec(labels: &[(&str, &str)], ts: i64, line: &str, md: &[(&str, &str)]) -> LogRecord {
        LogRecord {
            timestamp: Ts(ts),
            labels: Labels::from_pairs(labels.iter().copied()),
            structured_metadata: md
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            line: line.into(),
        }
    }

    fn decode_protobuf(push: &EncodedPush) -> PushRequest {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&push.body)
            .expect("snappy block");
        PushRequest::decode(raw.as_slice()).expect("push request")
    }

    fn sample() -> Vec<LogRecord> {
        vec![
            rec(&[("job", "api"), ("level", "info")], 30, "c", &[]),
            rec(
                &[("job", "api"), ("level", "error")],
                20,
                "boom",
                &[("trace_id", "abc")],
            ),
            rec(&[("job", "api"), ("level", "info")], 10, "a", &[]),
            rec(&[("job", "api"), ("level", "info")], 30, "d", &[]),
            rec(&[("job", "api"), ("level", "info")], 20, "b", &[]),
        ]
    }

    #[test]
    fn protobuf_groups_streams_and_orders_entries_by_time_keeping_read_order_on_ties() {
        let push = encode(&sample(), LokiEncoding::Protobuf).unwrap();
        assert_eq!(push.content_type, "application/x-protobuf");
        assert_eq!(push.entries, 5);
        let req = decode_protobuf(&push);
        let labels: Vec<&str> = req.streams.iter().map(|s| s.labels.as_str()).collect();
        assert_eq!(
            labels,
            [
                r#"{job="api", level="error"}"#,
                r#"{job="api", level="info"}"#
            ]
        );
        let info: Vec<(i64, &str)> = req.streams[1]
            .entries
            .iter()
            .map(|e| (e.timestamp.unwrap().to_nanos(), e.line.as_str()))
            .collect();
        assert_eq!(info, [(10, "a"), (20, "b"), (30, "c"), (30, "d")]);
        assert_eq!(
            req.streams[0].entries[0].structured_metadata,
            [LabelPairAdapter {
                name: "trace_id".into(),
                value: "abc".into()
            }]
        );
    }

    #[test]
    fn json_matches_lokis_push_shape_with_metadata_only_when_present() {
        let push = encode(&sample(), LokiEncoding::Json).unwrap();
        assert_eq!(push.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&push.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"streams": [
                {"stream": {"job": "api", "level": "error"},
                 "values": [["20", "boom", {"trace_id": "abc"}]]},
                {"stream": {"job": "api", "level": "info"},
                 "values": [["10", "a"], ["20", "b"], ["30", "c"], ["30", "d"]]},
            ]})
        );
    }

    #[test]
    fn the_same_batch_always_encodes_to_the_same_bytes() {
        for encoding in [LokiEncoding::Protobuf, LokiEncoding::Json] {
            let a = encode(&sample(), encoding).unwrap();
            let b = encode(&sample(), encoding).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn lines_with_quotes_newlines_and_unicode_survive_both_encodings() {
        let line = "{\"msg\":\"a\\nb\"}\n\tat x \u{1F600} \"q\"";
        let records = [rec(&[("job", "we\"ird")], 1, line, &[])];
        let req = decode_protobuf(&encode(&records, LokiEncoding::Protobuf).unwrap());
        assert_eq!(req.streams[0].labels, r#"{job="we\"ird"}"#);
        assert_eq!(req.streams[0].entries[0].line, line);
        let json = encode(&records, LokiEncoding::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(v["streams"][0]["values"][0][1], line);
        assert_eq!(v["streams"][0]["stream"]["job"], "we\"ird");
    }

    #[test]
    fn an_empty_batch_is_an_empty_push() {
        let push = encode(&[], LokiEncoding::Protobuf).unwrap();
        assert_eq!(push.entries, 0);
        assert!(decode_protobuf(&push).streams.is_empty());
        let json = encode(&[], LokiEncoding::Json).unwrap();
        assert_eq!(&json.body[..], br#"{"streams":[]}"#);
    }

    /// What `prost` writes for the same push, built as messages.
    fn prost_bytes(records: &[LogRecord]) -> Vec<u8> {
        PushRequest {
            streams: group(records)
                .iter()
                .map(|(labels, records)| StreamAdapter {
                    labels: labels.to_string(),
                    entries: records
                        .iter()
                        .map(|r| EntryAdapter {
                            timestamp: Some(Timestamp::from_nanos(r.timestamp.as_nanos())),
                            line: r.line.clone(),
                            structured_metadata: r
                                .structured_metadata
                                .iter()
                                .map(|(name, value)| LabelPairAdapter {
                                    name: name.clone(),
                                    value: value.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                    hash: 0,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn protobuf_bytes_are_the_bytes_prost_writes_for_the_same_push() {
        let long = "x".repeat(300);
        let huge = "y".repeat(70_000);
        let mut records = sample();
        for (i, ts) in [
            0i64,
            1,
            999_999_999,
            1_000_000_000,
            -1,
            -1_500_000_000,
            i64::MIN,
            i64::MAX,
            1_795_388_381_726_000_001,
        ]
        .into_iter()
        .enumerate()
        {
            let line = match i % 3 {
                0 => "",
                1 => long.as_str(),
                _ => huge.as_str(),
            };
            records.push(rec(
                &[
                    ("job", "api"),
                    ("level", if i % 2 == 0 { "info" } else { "warn" }),
                ],
                ts,
                line,
                &[
                    ("trace_id", "abc"),
                    ("", "v"),
                    ("k", ""),
                    ("span_id", long.as_str()),
                ][..i % 5],
            ));
        }
        records.push(rec(&[], 5, "no labels", &[]));
        let push = encode(&records, LokiEncoding::Protobuf).unwrap();
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&push.body)
            .unwrap();
        assert_eq!(raw, prost_bytes(&records));
        for n in 0..records.len() {
            let push = encode(&records[n..n + 1], LokiEncoding::Protobuf).unwrap();
            let raw = snap::raw::Decoder::new()
                .decompress_vec(&push.body)
                .unwrap();
            assert_eq!(raw, prost_bytes(&records[n..n + 1]), "record {n}");
        }
    }

    #[test]
    fn varint_lengths_match_the_bytes_written() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
