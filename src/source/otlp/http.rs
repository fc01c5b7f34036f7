//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON,
//! plain or gzip.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::budget::{read_body, BodyRefusal, Held};
use super::{Relay, BODY_BYTES_IN_FLIGHT, MAX_REQUEST_BYTES};
use crate::record::{OtlpPayload, OtlpSignal};

pub(super) async fn traces(State(r): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    http_export(&r, OtlpSignal::Traces, &headers, body).await
}

pub(super) async fn metrics(State(r): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    http_export(&r, OtlpSignal::Metrics, &headers, body).await
}

pub(super) async fn logs(State(r): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    http_export(&r, OtlpSignal::Logs, &headers, body).await
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
        Err(BodyRefusal::Busy) => {
            relay.refused();
            return busy_response(BodyRefusal::Busy.to_string());
        }
        Err(e @ BodyRefusal::TooLarge { .. }) => {
            relay.invalid();
            return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
        Err(e @ BodyRefusal::Read(_)) => {
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
    let protobuf = match to_protobuf(signal, encoding, body) {
        Ok(p) => p,
        Err(reason) => {
            relay.invalid();
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot decode the {} export: {reason}", signal.as_str()),
            )
                .into_response();
        }
    };
    if !protobuf.is_empty() {
        if let Err(e) = relay
            .store(OtlpPayload {
                signal,
                body: protobuf,
            })
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

/// Checks an OTLP/HTTP body and returns its protobuf encoding: protobuf bodies as
/// they are, JSON bodies converted.
pub(crate) fn to_protobuf(
    signal: OtlpSignal,
    encoding: BodyEncoding,
    body: Bytes,
) -> Result<Bytes, String> {
    match signal {
        OtlpSignal::Traces => convert::<ExportTraceServiceRequest>(encoding, body),
        OtlpSignal::Metrics => convert::<ExportMetricsServiceRequest>(encoding, body),
        OtlpSignal::Logs => convert::<ExportLogsServiceRequest>(encoding, body),
    }
}

fn convert<M>(encoding: BodyEncoding, body: Bytes) -> Result<Bytes, String>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        BodyEncoding::Protobuf => {
            M::decode(body.clone()).map_err(|e| e.to_string())?;
            Ok(body)
        }
        BodyEncoding::Json => {
            let m: M = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok(m.encode_to_vec().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_bodies_are_kept_byte_for_byte() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![Default::default()],
        };
        let bytes = Bytes::from(req.encode_to_vec());
        let out = to_protobuf(OtlpSignal::Traces, BodyEncoding::Protobuf, bytes.clone()).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn json_bodies_become_protobuf() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        let out = to_protobuf(
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
                to_protobuf(OtlpSignal::Traces, enc, Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
    }
}
