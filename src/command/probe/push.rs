//! `probe --push`: one test line to Loki, read back through `query_range`, and
//! one test span to the OTLP collector.
//!
//! Promises: both go through the services `run` ships with ([`LokiService`] and
//! [`OtlpService`], the shipper's [`Service`]s: the same encoding, request and
//! classification of the answer), built from the same sections ([`LokiClient`]
//! with `loki.encoding`, tenant, credentials, `ca_file`, proxies and
//! `loki.timeout`; [`OtlpClient`] with `otlp.protocol`, `otlp.headers` and
//! `otlp.timeout`), and the line carries the labels the
//! transform stage gives every line, so a push that works here works for `run`.
//! The read-back ends within [`PUSH_READ_BACK_DEADLINE`] of the push. Nothing
//! reported quotes a URL's password (the clients' reasons are redacted).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use super::report::{ms, PushReport, PushStatus, PushStep};
use crate::config::{fill_host, Config, LogFormat, OtlpProtocol};
use crate::discovery::{base_of, Chosen};
use crate::parse::{ParseSettings, Transformer};
use crate::record::{
    Ack, LogRecord, OtlpPayload, OtlpSignal, SourceBatch, SourceInfo, SourceLine, Timestamp,
};
use crate::sink::loki::client::QueryError;
use crate::sink::loki::replay;
use crate::sink::loki::LokiClient;
use crate::sink::loki::LokiService;
use crate::sink::otlp::{OtlpClient, OtlpService, OtlpSinkSettings};
use crate::sink::retry::bounded_text;
use crate::sink::ship::{Outcome, Service};

/// How long `--push` waits for the test line to come back from Loki's query API.
pub const PUSH_READ_BACK_DEADLINE: Duration = Duration::from_secs(10);
/// At most this much of one read-back answer is read (it holds one line).
const READ_BACK_MAX_BYTES: usize = 1024 * 1024;
/// Pause between two read-back queries.
const READ_BACK_INTERVAL: Duration = Duration::from_millis(250);
/// The `job` label of the test line.
pub const PROBE_JOB: &str = "wisp-agent-probe";

/// A token unique enough to find one line among a Loki's: time, pid and a
/// process-random hash.
fn unique_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("probe-{:016x}", h.finish())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub(super) async fn push_test_data(config: &Config, chosen: &Chosen) -> PushReport {
    let token = unique_token();
    let (loki, otlp) = tokio::join!(
        async {
            if config.loki.enabled {
                push_loki_line(config, chosen, &token).await
            } else {
                PushStep::skipped("loki.enabled = false")
            }
        },
        async {
            if config.otlp.enabled {
                push_span(config, chosen, &token).await
            } else {
                PushStep::skipped("otlp.enabled = false")
            }
        }
    );
    PushReport { token, loki, otlp }
}

/// The test line as the daemon would ship it had it read the line from a source
/// named [`PROBE_JOB`]: through the transform stage, so it carries the labels
/// `run` gives every line (`[agent].labels`, `job`, `host`, `level`).
fn test_records(config: &Config, token: &str, sent_at: Timestamp) -> Vec<LogRecord> {
    let source = Arc::new(SourceInfo {
        job: PROBE_JOB.to_string(),
        filename: None,
        labels: Vec::new(),
        format: LogFormat::Text,
        label_fields: Vec::new(),
        trace_context: None,
        owner: crate::record::Owner::AGENT,
    });
    let batch = SourceBatch {
        source,
        lines: vec![SourceLine {
            text: format!("wisp-agent probe test line {token}"),
            read_time: sent_at,
        }],
        ack: Ack::none(),
    };
    let batch = Transformer::new(ParseSettings::from_config(config)).transform(batch);
    batch.ack.done();
    batch.records
}

/// Pushes one line through the daemon's Loki client and encoding (the client is
/// built from `[loki]` as `run` builds it: tenant, credentials, `ca_file`,
/// proxies, `loki.encoding`), then polls `query_range` through the same client
/// until the line is there.
async fn push_loki_line(config: &Config, chosen: &Chosen, token: &str) -> PushStep {
    let started = Instant::now();
    let mut loki = match LokiClient::new(&config.loki) {
        Ok(c) => LokiService::new(c, &config.loki, Arc::default()),
        Err(e) => return PushStep::failed(e.to_string(), started),
    };
    let host = chosen.host();
    let push_url = fill_host(&config.loki.url, &host);
    let sent_at = Timestamp::now();
    let records = test_records(config, token, sent_at);
    // The service `run` ships through: the same encoding, request and
    // classification of the answer.
    let Some(push) = loki.encode(&records) else {
        return PushStep::failed("cannot encode the test line".into(), started);
    };
    match loki.send(&push_url, &push).await {
        Outcome::Delivered { .. } => {}
        Outcome::Rejected { cause, reason } => {
            return PushStep::failed(format!("the push answered HTTP {cause}: {reason}"), started)
        }
        Outcome::Retry { reason, .. } => {
            return PushStep::failed(format!("the push failed: {reason}"), started)
        }
        Outcome::Partial(answer) => {
            return PushStep::failed(
                format!(
                    "the push answered HTTP {}: {}",
                    answer.status,
                    bounded_text(&answer.body)
                ),
                started,
            )
        }
    }
    let pushed_ms = ms(started.elapsed());

    // The URL the daemon's replay reads from; one without the push path in it
    // (a gateway's own route) is asked at the server's root, as before.
    let query_url = replay::query_url(&push_url).unwrap_or_else(|_| {
        format!(
            "{}/loki/api/v1/query_range",
            base_of(&config.loki.url, &host)
        )
    });
    let query = format!("{{job=\"{PROBE_JOB}\"}} |= \"{token}\"");
    let window = Duration::from_secs(600).as_nanos();
    let sent_ns = u128::try_from(sent_at.as_nanos()).unwrap_or(0);
    let params = [
        ("query", query),
        ("start", sent_ns.saturating_sub(window).to_string()),
        ("end", (sent_ns + window).to_string()),
        ("limit", "100".to_string()),
        ("direction", "backward".to_string()),
    ];
    let deadline = tokio::time::Instant::now() + PUSH_READ_BACK_DEADLINE;
    let mut last;
    loop {
        // Bounded by the deadline as well as by `loki.timeout`.
        let answer = tokio::time::timeout_at(
            deadline,
            loki.client.query(&query_url, &params, READ_BACK_MAX_BYTES),
        )
        .await;
        match answer {
            Ok(Ok(body)) if query_has_line(&String::from_utf8_lossy(&body), token) => {
                return PushStep {
                    status: PushStatus::Ok,
                    detail: format!(
                        "pushed in {pushed_ms} ms and read back through query_range after {} ms",
                        ms(started.elapsed())
                    ),
                    latency_ms: ms(started.elapsed()),
                }
            }
            Ok(Ok(_)) => last = "query_range does not return the line yet".into(),
            Ok(Err(QueryError::Status { status, reason })) => {
                last = format!("query_range answered HTTP {status}: {reason}")
            }
            Ok(Err(e)) => last = format!("query_range: {e}"),
            Err(_) => last = "query_range: no answer before the deadline".into(),
        }
        if tokio::time::Instant::now() + READ_BACK_INTERVAL > deadline {
            return PushStep::failed(
                format!(
                    "pushed (accepted), but not read back within {} s: {last}",
                    PUSH_READ_BACK_DEADLINE.as_secs()
                ),
                started,
            );
        }
        tokio::time::sleep(READ_BACK_INTERVAL).await;
    }
}

/// Does a `query_range` answer (streams) hold a line containing `token`?
fn query_has_line(body: &str, token: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let Some(result) = v.pointer("/data/result").and_then(|r| r.as_array()) else {
        return false;
    };
    result.iter().any(|stream| {
        stream
            .get("values")
            .and_then(|vals| vals.as_array())
            .is_some_and(|vals| {
                vals.iter().any(|pair| {
                    pair.get(1)
                        .and_then(|l| l.as_str())
                        .is_some_and(|l| l.contains(token))
                })
            })
    })
}

fn test_span_request(config: &Config, token: &str) -> ExportTraceServiceRequest {
    let string_kv = |key: &str, value: &str| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    };
    let end = u64::try_from(now_nanos()).unwrap_or(u64::MAX);
    let span = Span {
        trace_id: random_bytes::<16>().to_vec(),
        span_id: random_bytes::<8>().to_vec(),
        name: "wisp-agent probe".into(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: end.saturating_sub(1_000_000),
        end_time_unix_nano: end,
        attributes: vec![string_kv("wisp.probe.token", token)],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", &config.otlp.service_name)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wisp-agent".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends one span through the daemon's OTLP client (built from `[otlp]` as
/// `run` builds it: `otlp.protocol`, `otlp.headers`, `otlp.timeout`) and reports
/// what the collector answered.
async fn push_span(config: &Config, chosen: &Chosen, token: &str) -> PushStep {
    let started = Instant::now();
    let request = test_span_request(config, token);
    let settings = OtlpSinkSettings::from_config(&config.otlp);
    let mut otlp = match OtlpClient::new(&settings) {
        Ok(c) => OtlpService::new(c, &settings, Arc::default()),
        Err(e) => return PushStep::failed(e.to_string(), started),
    };
    let endpoint = fill_host(&settings.endpoint, &chosen.host());
    // The daemon's gRPC client has no TLS (tonic is built without it), so `run`
    // could not ship there either: said as before rather than as a failure.
    if settings.protocol == OtlpProtocol::Grpc && endpoint.starts_with("https://") {
        return PushStep::skipped("probe --push sends gRPC over plain HTTP/2 only");
    }
    let payload = OtlpPayload {
        signal: OtlpSignal::Traces,
        body: Bytes::from(request.encode_to_vec()),
    };
    let Some(export) = otlp.encode(&[payload]) else {
        return PushStep::failed("cannot encode the test span".into(), started);
    };
    // The service `run` exports through; its answers are redacted (tonic and
    // hyper errors may quote the endpoint, password and all).
    match otlp.send(&endpoint, &export).await {
        Outcome::Delivered {
            note: Some((_, warning)),
        } => PushStep::failed(
            format!("the collector rejected the span: {warning}"),
            started,
        ),
        Outcome::Delivered { note: None } => PushStep {
            status: PushStatus::Ok,
            detail: "the collector accepted the span".into(),
            latency_ms: ms(started.elapsed()),
        },
        Outcome::Partial(answer) => PushStep::failed(
            format!(
                "the collector refused the span: HTTP {}: {}",
                answer.status,
                bounded_text(&answer.body)
            ),
            started,
        ),
        Outcome::Rejected { reason, .. } => {
            PushStep::failed(format!("the collector refused the span: {reason}"), started)
        }
        Outcome::Retry { reason, .. } => {
            PushStep::failed(format!("the export failed: {reason}"), started)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answers_are_searched_for_the_token() {
        let body = r#"{"status":"success","data":{"resultType":"streams","result":[
            {"stream":{"job":"wisp-agent-probe"},"values":[["1","wisp-agent probe test line probe-42"]]}]}}"#;
        assert!(query_has_line(body, "probe-42"));
        assert!(!query_has_line(body, "probe-43"));
        assert!(!query_has_line("not json", "probe-42"));
    }
}
