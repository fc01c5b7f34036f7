//! Fuzzes what the local OTLP/HTTP receiver does with a request body
//! (`src/source/otlp/http.rs`, `to_protobuf`): a JSON body converted to protobuf
//! by opentelemetry-proto's serde support, a protobuf one checked, either put in
//! its runs' traces (`src/relay/run.rs`); and, for logs, the conversion of the
//! stored request into Loki entries (`src/relay/to_loki.rs`). The first byte
//! picks the signal and the encoding, the rest is the body. Checks, beyond
//! "never panics":
//!
//! - a body is refused exactly when it does not decode as its signal's request;
//! - what is stored decodes, and is the body's request with its runs joined
//!   (compared by encoding, so NaN values compare too): the protobuf the body
//!   re-encodes to decodes to the same request;
//! - the run rewrite is idempotent: the stored request has nothing left to
//!   join, and stored again as a protobuf body it is kept byte for byte;
//! - the Loki conversion is deterministic (the same request gives the same
//!   entries, from the same converter and from a new one), gives one entry per
//!   log record, and every label is a valid name with a value that is not
//!   empty, holds no control character and is at most `MAX_VALUE_BYTES`.
//!
//! These steps need the agent's configuration, labels, records and receivers,
//! so this target depends on the agent crate (feature `agent`: the one slow
//! build, for .ci/fuzz-long.sh) and reaches its crate-private steps through
//! `wisp_agent::fuzzing`.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;
use wisp_agent::fuzzing::{join_runs_logs, join_runs_traces, otlp_http_body, LokiConversion};
use wisp_agent::parse::labels::MAX_VALUE_BYTES;
use wisp_agent::record::{OtlpSignal, Timestamp};
use wisp_agent::relay::to_loki::ToLokiSettings;

/// Decodes `body` as the receiver does, and joins its runs.
fn expected<M>(json: bool, body: &[u8], join: fn(&mut M) -> bool) -> Option<M>
where
    M: Message + Default + DeserializeOwned,
{
    let mut request = if json {
        serde_json::from_slice::<M>(body).ok()?
    } else {
        M::decode(body).ok()?
    };
    join(&mut request);
    Some(request)
}

/// Checks one body of request type `M`; the stored request, if any.
fn check<M>(signal: OtlpSignal, json: bool, body: &[u8], join: fn(&mut M) -> bool) -> Option<M>
where
    M: Message + Default + DeserializeOwned + Debug,
{
    let stored = otlp_http_body(signal, json, body);
    let expected = expected::<M>(json, body, join);
    let (stored, expected) = match (stored, expected) {
        (Err(_), None) => return None,
        (Ok(stored), Some(expected)) => (stored, expected),
        (Err(e), Some(request)) => panic!("a request that decodes was refused ({e}): {request:?}"),
        (Ok(stored), None) => panic!("a body that does not decode was stored as {stored:?}"),
    };
    let mut request = M::decode(stored.clone()).expect("the stored protobuf decodes");
    let canonical = expected.encode_to_vec();
    assert_eq!(request.encode_to_vec(), canonical, "stored {request:?}");
    if json {
        assert_eq!(stored, canonical, "a JSON body is stored as its encoding");
    }
    assert!(
        !join(&mut request),
        "the rewrite of {request:?} is not idempotent"
    );
    let again = otlp_http_body(signal, false, &stored).expect("the stored protobuf is taken");
    assert_eq!(again, stored, "the stored protobuf stored again changed");
    Some(request)
}

fn settings() -> ToLokiSettings {
    ToLokiSettings {
        hostname: "vm1".into(),
        agent_labels: vec![("env".into(), "local".into())],
        // Small, so the guard's overflow (`job="other"`) is reached too.
        max_label_values: 4,
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_loki(request: &ExportLogsServiceRequest) {
    let received = Timestamp(1_700_000_000_000_000_000);
    let mut conversion = LokiConversion::new(&settings());
    let entries = conversion.convert(request, received, Some(1000));
    let records: usize = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    assert_eq!(entries.len(), records, "one entry per record");
    assert_eq!(
        conversion.convert(request, received, Some(1000)),
        entries,
        "converted again"
    );
    let fresh = LokiConversion::new(&settings()).convert(request, received, Some(1000));
    assert_eq!(fresh, entries, "converted by a new converter");
    for entry in &entries {
        for label in ["job", "host", "level"] {
            assert!(entry.labels.get(label).is_some(), "no {label} in {entry:?}");
        }
        for (name, value) in entry.labels.iter() {
            assert!(valid_label_name(name), "label name {name:?}");
            assert!(!value.is_empty(), "empty {name} in {entry:?}");
            assert!(
                value.len() <= MAX_VALUE_BYTES,
                "{name} of {} bytes",
                value.len()
            );
            assert!(
                !value.chars().any(char::is_control),
                "control character in {name}={value:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    // Mostly JSON, the conversion this target is for; protobuf bodies too
    // (0xc0 and up: 0xc0 traces, 0xc1 metrics, 0xc2 logs).
    let json = first < 0xc0;
    match first % 3 {
        0 => {
            check::<ExportTraceServiceRequest>(OtlpSignal::Traces, json, body, join_runs_traces);
        }
        1 => {
            check::<ExportMetricsServiceRequest>(OtlpSignal::Metrics, json, body, |_| false);
        }
        _ => {
            if let Some(request) =
                check::<ExportLogsServiceRequest>(OtlpSignal::Logs, json, body, join_runs_logs)
            {
                check_loki(&request);
            }
        }
    }
});
