//! Loki's push protocol (`pkg/push/push.proto`) as hand-written `prost` messages.
//!
//! Written by hand so the build needs no `protoc` and no build script, and so the
//! entry carries structured metadata (field 3), which older published crates lack.
//! Field numbers and types match Loki's `push.proto`; the timestamp is
//! `google.protobuf.Timestamp`, declared here with the same two fields so the
//! bytes on the wire are identical. Public so the test receiver decodes with it.

/// `logproto.PushRequest`: the body of `POST /loki/api/v1/push` (snappy block
/// compressed, `Content-Type: application/x-protobuf`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// One stream: its label set in selector form (`{job="api", level="info"}`) and
/// its entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// The original hash of the stream; clients leave it 0 and Loki recomputes it.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// One log entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    /// `structuredMetadata` in the proto: non-indexed pairs (trace and span ids).
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// A structured-metadata pair.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`: seconds since the epoch and the nanoseconds within
/// that second (always `0..1_000_000_000`, also for times before 1970).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// From nanoseconds since the epoch.
    pub fn from_nanos(ns: i64) -> Self {
        Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            // rem_euclid of a positive divisor lies in 0..1e9, which fits an i32.
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }

    /// To nanoseconds since the epoch, saturating far outside Loki's range.
    pub fn to_nanos(self) -> i64 {
        self.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(self.nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn timestamps_split_into_seconds_and_nanos_both_sides_of_the_epoch() {
        for ns in [
            0,
            1,
            999_999_999,
            1_795_388_381_726_000_001,
            -1,
            -1_500_000_000,
        ] {
            let t = Timestamp::from_nanos(ns);
            assert!((0..1_000_000_000).contains(&t.nanos), "{ns}: {t:?}");
            assert_eq!(t.to_nanos(), ns);
        }
        assert_eq!(
            Timestamp::from_nanos(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_999_999
            }
        );
    }

    #[test]
    fn field_numbers_match_lokis_push_proto() {
        // Hand-assembled bytes of a PushRequest with one stream and one entry, as
        // Loki's generated Go code writes them: tags 1/2/3 on each message.
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: "{a=\"b\"}".into(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: 1,
                        nanos: 2,
                    }),
                    line: "x".into(),
                    structured_metadata: vec![LabelPairAdapter {
                        name: "k".into(),
                        value: "v".into(),
                    }],
                }],
                hash: 0,
            }],
        };
        let entry: &[u8] = &[
            0x0a, 0x04, 0x08, 0x01, 0x10, 0x02, // timestamp {seconds: 1, nanos: 2}
            0x12, 0x01, b'x', // line
            0x1a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // structuredMetadata
        ];
        let mut stream = vec![0x0a, 0x07];
        stream.extend_from_slice(b"{a=\"b\"}");
        stream.push(0x12);
        stream.push(entry.len() as u8);
        stream.extend_from_slice(entry);
        let mut expected = vec![0x0a, stream.len() as u8];
        expected.extend_from_slice(&stream);
        assert_eq!(req.encode_to_vec(), expected);
        assert_eq!(PushRequest::decode(expected.as_slice()).unwrap(), req);
    }
}
