//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON,
//! plain or gzip.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::budget::{read_body, BodyRefusal as ReadRefusal, Held};
use super::{encode_within, Oversize, Relay, BODY_BYTES_IN_FLIGHT, MAX_REQUEST_BYTES};
use crate::listen::Peer;
use crate::record::{OtlpPayload, OtlpSignal};
use crate::relay::run::JoinRuns;

pub(super) async fn traces(
    State(r): State<Relay>,
    peer: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    http_export(&r, OtlpSignal::Traces, peer.map(|p| p.0), &headers, body).await
}

pub(super) async fn metrics(
    State(r): State<Relay>,
    peer: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    http_export(&r, OtlpSignal::Metrics, peer.map(|p| p.0), &headers, body).await
}

pub(super) async fn logs(
    State(r): State<Relay>,
    peer: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    http_export(&r, OtlpSignal::Logs, peer.map(|p| p.0), &headers, body).await
}

fn busy_response(message: String) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// How an OTLP/HTTP body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyEncoding {
    Protobuf,
    Json,
}

async fn http_export(
    relay: &Relay,
    signal: OtlpSignal,
    peer: Option<Arc<Peer>>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "application/x-protobuf" | "application/protobuf" => BodyEncoding::Protobuf,
        "application/json" => BodyEncoding::Json,
        other => {
            relay.invalid();
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {other:?}: send application/x-protobuf or application/json"
                ),
            )
                .into_response();
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Held until the request is answered: its bytes count against the budget
    // while they are in memory.
    let mut held = Held::none();
    let body = match read_body(body, declared, MAX_REQUEST_BYTES, &relay.budget, &mut held).await {
        Ok(b) => b,
        Err(ReadRefusal::Busy) => {
            relay.refused();
            return busy_response(ReadRefusal::Busy.to_string());
        }
        Err(e @ ReadRefusal::TooLarge { .. }) => {
            relay.invalid();
            return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
        Err(e @ ReadRefusal::Read(_)) => {
            relay.invalid();
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let decoded = decode_content(content_encoding, body, MAX_REQUEST_BYTES, &mut |more| {
        relay.budget.take(&mut held, more)
    });
    let body = match decoded {
        Ok(b) => b,
        Err(ContentRefusal::Busy) => {
            relay.refused();
            return busy_response(ContentRefusal::Busy.to_string());
        }
        Err(refusal) => {
            relay.invalid();
            let status = match refusal {
                ContentRefusal::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ContentRefusal::Corrupt(_) => StatusCode::BAD_REQUEST,
                ContentRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ContentRefusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            };
            return (status, refusal.to_string()).into_response();
        }
    };
    let protobuf = match to_protobuf(signal, encoding, body, MAX_REQUEST_BYTES, &mut |more| {
        relay.budget.take(&mut held, more)
    }) {
        Ok(p) => p,
        Err(BodyRefusal::Malformed(reason)) => {
            relay.invalid();
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot decode the {} export: {reason}", signal.as_str()),
            )
                .into_response();
        }
        Err(BodyRefusal::Oversize(e @ Oversize::TooLarge { .. })) => {
            relay.invalid();
            return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
        Err(BodyRefusal::Oversize(e @ Oversize::Busy)) => {
            relay.refused();
            return busy_response(e.to_string());
        }
    };
    if !protobuf.is_empty() {
        if let Err(e) = relay
            .store(
                OtlpPayload {
                    signal,
                    body: protobuf,
                },
                peer.as_deref(),
            )
            .await
        {
            return busy_response(format!("cannot buffer the request: {e}"));
        }
    }
    drop(held);
    // The full-success response has no fields set: `{}` in JSON, no bytes in
    // protobuf.
    match encoding {
        BodyEncoding::Json => ([(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
        BodyEncoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::<u8>::new(),
        )
            .into_response(),
    }
}

/// Why a body's `Content-Encoding` could not be undone.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ContentRefusal {
    #[error(
        "Content-Encoding {0:?} is not supported by this receiver: send the body as gzip or uncompressed"
    )]
    Unsupported(String),
    #[error("cannot decompress the gzip body: {0}")]
    Corrupt(String),
    #[error(
        "the gzip body decompresses to more than {limit} bytes, the most this receiver takes: \
         send smaller batches (e.g. a lower max export batch size in the SDK)"
    )]
    TooLarge { limit: usize },
    #[error(
        "the receiver's requests in flight would pass their bound ({BODY_BYTES_IN_FLIGHT} bytes) \
         with this body inflated: retry shortly"
    )]
    Busy,
}

/// Undoes the body's `Content-Encoding` (none, `identity` or `gzip`). A gzip
/// body is inflated at most to `limit` bytes: memory stays bounded whatever the
/// body claims to hold (a gzip bomb is refused once past it, not read to the end).
/// Each allocation for the inflated body is first asked of `room` (the
/// receivers' shared budget); when it says no, the body is refused
/// [`ContentRefusal::Busy`].
pub(crate) fn decode_content(
    content_encoding: Option<&str>,
    body: Bytes,
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, ContentRefusal> {
    let encoding = content_encoding.unwrap_or("").trim();
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    if !encoding.eq_ignore_ascii_case("gzip") && !encoding.eq_ignore_ascii_case("x-gzip") {
        return Err(ContentRefusal::Unsupported(encoding.to_string()));
    }
    if body.is_empty() {
        return Ok(body);
    }
    // Several gzip members one after the other are one stream, as `gunzip` and
    // Go's reader take them.
    let mut decoder = flate2::read::MultiGzDecoder::new(&body[..]);
    // The last member's trailer says how long it inflates to (mod 2^32): an
    // honest sender's body lands in one allocation of its size. The claim is
    // not trusted: growth past it doubles, but never past `limit`.
    let claimed = match body.len().checked_sub(4).and_then(|at| body.get(at..)) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => 0,
    };
    let first = claimed.min(limit);
    if !room(first) {
        return Err(ContentRefusal::Busy);
    }
    let mut out: Vec<u8> = Vec::with_capacity(first);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ContentRefusal::Corrupt(e.to_string())),
        };
        let len = out.len() + n;
        if len > limit {
            return Err(ContentRefusal::TooLarge { limit });
        }
        if len > out.capacity() {
            let grown = (out.capacity() * 2).max(len).min(limit);
            if !room(grown - out.capacity()) {
                return Err(ContentRefusal::Busy);
            }
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out.into())
}

/// Why an OTLP/HTTP body (its content encoding undone) is not stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyRefusal {
    /// Not a well-formed export request of its signal: the decoder's reason.
    Malformed(String),
    /// Its encoding with its runs joined is too large, or the budget has no
    /// room for it.
    Oversize(Oversize),
}

/// Checks an OTLP/HTTP body and returns the protobuf encoding to store: a
/// protobuf body as it is, unless a run's spans or log records in it join the
/// run's trace ([`crate::relay::run`]); a JSON body converted. A new encoding
/// is at most `limit` bytes, and what it adds to the body's size is first
/// asked of `room` (the receivers' budget).
pub(crate) fn to_protobuf(
    signal: OtlpSignal,
    encoding: BodyEncoding,
    body: Bytes,
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, BodyRefusal> {
    match signal {
        OtlpSignal::Traces => convert::<ExportTraceServiceRequest>(encoding, body, limit, room),
        OtlpSignal::Metrics => convert::<ExportMetricsServiceRequest>(encoding, body, limit, room),
        OtlpSignal::Logs => convert::<ExportLogsServiceRequest>(encoding, body, limit, room),
    }
}

fn convert<M>(
    encoding: BodyEncoding,
    body: Bytes,
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, BodyRefusal>
where
    M: Message + Default + serde::de::DeserializeOwned + JoinRuns,
{
    let malformed = |e: &dyn std::fmt::Display| BodyRefusal::Malformed(e.to_string());
    let mut request = match encoding {
        BodyEncoding::Protobuf => M::decode(body.clone()).map_err(|e| malformed(&e))?,
        BodyEncoding::Json => serde_json::from_slice::<M>(&body).map_err(|e| malformed(&e))?,
    };
    // The common case, a protobuf request of no run (or already in its
    // trace): stored as it came, not encoded again.
    if !request.join_runs() && encoding == BodyEncoding::Protobuf {
        return Ok(body);
    }
    encode_within(&request, body.len(), limit, room)
        .map(Bytes::from)
        .map_err(BodyRefusal::Oversize)
}
#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::record::otlp_text;
    use crate::relay::run::{run_span_id, run_trace_id, RUN_ID};

    const RUN: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    /// [`to_protobuf`] with room for anything up to 16 MiB.
    fn plain(
        signal: OtlpSignal,
        encoding: BodyEncoding,
        body: Bytes,
    ) -> Result<Bytes, BodyRefusal> {
        to_protobuf(signal, encoding, body, MAX_REQUEST_BYTES, &mut |_| true)
    }

    fn resource(run: Option<&str>) -> Option<Resource> {
        Some(Resource {
            attributes: [otlp_text("service.name", "agent")]
                .into_iter()
                .chain(run.map(|r| otlp_text(RUN_ID, r)))
                .collect(),
            ..Default::default()
        })
    }

    fn spans(run: Option<&str>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(run),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn root(id: u8) -> Span {
        Span {
            trace_id: vec![0x5b; 16],
            span_id: vec![id; 8],
            name: "tool call".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        }
    }

    #[test]
    fn requests_with_nothing_to_join_are_stored_as_the_bytes_received() {
        let mut joined = root(1);
        joined.trace_id = run_trace_id(RUN).unwrap().to_vec();
        joined.parent_span_id = run_span_id(RUN).unwrap().to_vec();
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(None),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        for (signal, body) in [
            (
                OtlpSignal::Traces,
                spans(None, vec![root(1), root(2)]).encode_to_vec(),
            ),
            (
                OtlpSignal::Traces,
                spans(Some("0"), vec![root(1)]).encode_to_vec(),
            ),
            (
                OtlpSignal::Traces,
                spans(Some(RUN), vec![joined]).encode_to_vec(),
            ),
            (OtlpSignal::Logs, logs.encode_to_vec()),
        ] {
            let body = Bytes::from(body);
            let mut asked = 0;
            let out = to_protobuf(
                signal,
                BodyEncoding::Protobuf,
                body.clone(),
                1 << 20,
                &mut |n| {
                    asked += n;
                    true
                },
            )
            .unwrap();
            // The very buffer received: not encoded again.
            assert_eq!(out.as_ptr(), body.as_ptr());
            assert_eq!(out, body);
            assert_eq!(asked, 0);
        }
    }

    #[test]
    fn a_runs_spans_are_stored_in_its_trace_from_protobuf_and_json() {
        let json = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"{RUN_ID}","value":{{"stringValue":"{RUN}"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op"}}]}}]}}]}}"#
        );
        for (encoding, body) in [
            (
                BodyEncoding::Protobuf,
                spans(Some(RUN), vec![root(0xee)]).encode_to_vec(),
            ),
            (BodyEncoding::Json, json.into_bytes()),
        ] {
            let out = plain(OtlpSignal::Traces, encoding, body.into()).unwrap();
            let req = ExportTraceServiceRequest::decode(out).unwrap();
            let span = &req.resource_spans[0].scope_spans[0].spans[0];
            assert_eq!(span.trace_id, run_trace_id(RUN).unwrap(), "{encoding:?}");
            assert_eq!(
                span.parent_span_id,
                run_span_id(RUN).unwrap(),
                "{encoding:?}"
            );
            assert_eq!(span.span_id[0], 0xee, "{encoding:?}");
        }
    }

    #[test]
    fn a_run_request_grown_by_its_ids_asks_the_budget_and_is_bounded() {
        // Spans with no ids at all: each grows by a trace and a parent id.
        let req = spans(Some(RUN), vec![Span::default(); 100]);
        let body = Bytes::from(req.encode_to_vec());
        let mut joined = req.clone();
        joined.join_runs();
        let grown = joined.encoded_len();
        assert!(grown > body.len() + 100 * 26, "{grown} vs {}", body.len());
        let mut asked = Vec::new();
        let out = to_protobuf(
            OtlpSignal::Traces,
            BodyEncoding::Protobuf,
            body.clone(),
            grown,
            &mut |n| {
                asked.push(n);
                true
            },
        )
        .unwrap();
        assert_eq!(out.len(), grown);
        assert_eq!(asked, [grown - body.len()]);
        assert_eq!(
            to_protobuf(
                OtlpSignal::Traces,
                BodyEncoding::Protobuf,
                body.clone(),
                grown,
                &mut |_| false
            ),
            Err(BodyRefusal::Oversize(Oversize::Busy))
        );
        assert_eq!(
            to_protobuf(
                OtlpSignal::Traces,
                BodyEncoding::Protobuf,
                body,
                grown - 1,
                &mut |_| true
            ),
            Err(BodyRefusal::Oversize(Oversize::TooLarge {
                limit: grown - 1
            }))
        );
    }

    #[test]
    fn protobuf_bodies_are_kept_byte_for_byte() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![Default::default()],
        };
        let bytes = Bytes::from(req.encode_to_vec());
        let out = plain(OtlpSignal::Traces, BodyEncoding::Protobuf, bytes.clone()).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn json_bodies_become_protobuf() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        let out = plain(
            OtlpSignal::Traces,
            BodyEncoding::Json,
            Bytes::from_static(json),
        )
        .unwrap();
        let req = ExportTraceServiceRequest::decode(out).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "op");
        assert_eq!(span.trace_id.len(), 16);
    }

    fn gzip(data: &[u8]) -> Bytes {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn gzip_bodies_are_inflated_and_plain_ones_kept() {
        let data = b"hello otlp".repeat(1000);
        assert_eq!(
            decode_content(Some("gzip"), gzip(&data), 1 << 20, &mut |_| true).unwrap(),
            Bytes::from(data.clone())
        );
        assert_eq!(
            decode_content(Some(" GZIP "), gzip(&data), 1 << 20, &mut |_| true).unwrap(),
            Bytes::from(data.clone())
        );
        // Two members, one stream.
        let mut two = gzip(b"abc").to_vec();
        two.extend_from_slice(&gzip(b"def"));
        assert_eq!(
            decode_content(Some("gzip"), two.into(), 100, &mut |_| true).unwrap(),
            Bytes::from_static(b"abcdef")
        );
        for none in [None, Some(""), Some("identity")] {
            assert_eq!(
                decode_content(none, Bytes::from_static(b"x"), 100, &mut |_| true).unwrap(),
                Bytes::from_static(b"x")
            );
        }
    }

    #[test]
    fn a_body_that_inflates_past_the_limit_is_refused_at_the_limit() {
        let data = vec![0u8; 1 << 20];
        // Exactly at the limit is taken, one byte more is not.
        assert_eq!(
            decode_content(Some("gzip"), gzip(&data), 1 << 20, &mut |_| true)
                .unwrap()
                .len(),
            1 << 20
        );
        assert_eq!(
            decode_content(Some("gzip"), gzip(&data), (1 << 20) - 1, &mut |_| true),
            Err(ContentRefusal::TooLarge {
                limit: (1 << 20) - 1
            })
        );
    }

    #[test]
    fn corrupt_gzip_and_unknown_encodings_are_refused_with_a_reason() {
        let mut bad = gzip(b"some data to compress, some data to compress").to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let truncated = gzip(b"abcdef")[..8].to_vec();
        for body in [bad, truncated, b"not gzip at all".to_vec()] {
            assert!(
                matches!(
                    decode_content(Some("gzip"), body.clone().into(), 1 << 20, &mut |_| true),
                    Err(ContentRefusal::Corrupt(_))
                ),
                "{body:?}"
            );
        }
        let err =
            decode_content(Some("br"), Bytes::from_static(b"x"), 100, &mut |_| true).unwrap_err();
        assert_eq!(err, ContentRefusal::Unsupported("br".into()));
        assert!(err.to_string().contains("gzip or uncompressed"), "{err}");
    }

    #[test]
    fn malformed_bodies_are_an_error_not_a_panic() {
        for (enc, body) in [
            (BodyEncoding::Protobuf, &b"\xff\xff\xff\xff"[..]),
            (BodyEncoding::Json, &b"{\"resourceSpans\": 3}"[..]),
            (BodyEncoding::Json, &b"not json"[..]),
        ] {
            assert!(
                matches!(
                    plain(OtlpSignal::Traces, enc, Bytes::copy_from_slice(body)),
                    Err(BodyRefusal::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }
}
