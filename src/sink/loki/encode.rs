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
use prost::Message;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::push_proto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};
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
    for r in records {
        streams.entry(&r.labels).or_default().push(r);
    }
    for entries in streams.values_mut() {
        // Stable: equal timestamps keep the read order, which Loki then keeps too.
        entries.sort_by_key(|r| r.timestamp);
    }
    streams
}

fn encode_protobuf(
    streams: &BTreeMap<&Labels, Vec<&LogRecord>>,
    entries: usize,
) -> Result<EncodedPush, EncodeError> {
    let request = PushRequest {
        streams: streams
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
    };
    let raw = request.encode_to_vec();
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
    use super::*;
    use crate::record::Timestamp as Ts;

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
}
