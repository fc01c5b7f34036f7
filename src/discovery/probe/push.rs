//! `probe --push`: one test line to Loki, read back through `query_range`, and
//! one test span to the OTLP collector.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::report::{ms, PushReport, PushStatus, PushStep};
use crate::config::{fill_host, Config, OtlpProtocol};
use crate::discovery::check;
use crate::discovery::{base_of, endpoint_socket, otlp_traces_url, step_timeout, Chosen};

/// How long `--push` waits for the test line to come back from Loki's query API.
pub const PUSH_READ_BACK_DEADLINE: Duration = Duration::from_secs(10);
/// One push or export request of `--push`.
const PUSH_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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

fn push_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PUSH_REQUEST_TIMEOUT)
        .connect_timeout(PUSH_REQUEST_TIMEOUT)
        .user_agent(concat!("wisp-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
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

/// Adds the tenant and credentials Loki is configured with; the error names the
/// file that could not be read (never its content).
fn loki_auth(
    config: &Config,
    mut request: reqwest::RequestBuilder,
) -> Result<reqwest::RequestBuilder, String> {
    if !config.loki.tenant.is_empty() {
        request = request.header("X-Scope-OrgID", config.loki.tenant.as_str());
    }
    if let Some(auth) = &config.loki.basic_auth {
        let password = std::fs::read_to_string(&auth.password_file)
            .map_err(|e| format!("cannot read {}: {e}", auth.password_file.display()))?;
        request = request.basic_auth(&auth.username, Some(password.trim_end()));
    }
    if let Some(path) = &config.loki.bearer_token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        request = request.bearer_auth(token.trim());
    }
    Ok(request)
}

/// Pushes one line (JSON encoding) and polls `query_range` until it is there.
async fn push_loki_line(config: &Config, chosen: &Chosen, token: &str) -> PushStep {
    let started = Instant::now();
    let client = push_client();
    let host = chosen.host();
    let push_url = fill_host(&config.loki.url, &host);
    let hostname = if config.agent.hostname.is_empty() {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    } else {
        config.agent.hostname.clone()
    };
    let sent_at = now_nanos();
    let line = format!("wisp-agent probe test line {token}");
    let body = serde_json::json!({
        "streams": [{
            "stream": { "job": PROBE_JOB, "host": hostname },
            "values": [[sent_at.to_string(), line]],
        }]
    });
    let request = client
        .post(&push_url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    let request = match loki_auth(config, request) {
        Ok(r) => r,
        Err(e) => return PushStep::failed(e, started),
    };
    match request.send().await {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => {
            let code = resp.status().as_u16();
            let text = check::excerpt(&resp.text().await.unwrap_or_default());
            return PushStep::failed(format!("the push answered HTTP {code}: {text}"), started);
        }
        Err(e) => {
            return PushStep::failed(
                format!("the push failed: {}", check::error_chain(&e.without_url())),
                started,
            )
        }
    }
    let pushed_ms = ms(started.elapsed());

    let query_url = format!(
        "{}/loki/api/v1/query_range",
        base_of(&config.loki.url, &host)
    );
    let query = format!("{{job=\"{PROBE_JOB}\"}} |= \"{token}\"");
    let window = Duration::from_secs(600).as_nanos();
    let start = sent_at.saturating_sub(window).to_string();
    let end = (sent_at + window).to_string();
    let deadline = tokio::time::Instant::now() + PUSH_READ_BACK_DEADLINE;
    let mut last;
    loop {
        let request = client.get(&query_url).query(&[
            ("query", query.as_str()),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("limit", "100"),
            ("direction", "backward"),
        ]);
        match loki_auth(config, request) {
            Err(e) => return PushStep::failed(e, started),
            Ok(request) => match request.send().await {
                Ok(resp) if resp.status().is_success() => match resp.text().await {
                    Ok(text) if query_has_line(&text, token) => {
                        return PushStep {
                            status: PushStatus::Ok,
                            detail: format!(
                                "pushed in {pushed_ms} ms and read back through query_range after {} ms",
                                ms(started.elapsed())
                            ),
                            latency_ms: ms(started.elapsed()),
                        }
                    }
                    Ok(_) => last = "query_range does not return the line yet".into(),
                    Err(e) => last = format!("query_range: {}", check::error_chain(&e.without_url())),
                },
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let text = check::excerpt(&resp.text().await.unwrap_or_default());
                    last = format!("query_range answered HTTP {code}: {text}");
                }
                Err(e) => last = format!("query_range: {}", check::error_chain(&e.without_url())),
            },
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

/// Sends one span per `otlp.protocol` and reports what the collector answered.
async fn push_span(config: &Config, chosen: &Chosen, token: &str) -> PushStep {
    let started = Instant::now();
    let request = test_span_request(config, token);
    let host = chosen.host();
    let accepted = |rejected: i64, message: &str| {
        if rejected > 0 {
            PushStep::failed(
                format!("the collector rejected the span: {message}"),
                started,
            )
        } else {
            PushStep {
                status: PushStatus::Ok,
                detail: "the collector accepted the span".into(),
                latency_ms: ms(started.elapsed()),
            }
        }
    };
    match config.otlp.protocol {
        OtlpProtocol::Grpc => {
            if fill_host(&config.otlp.endpoint, &host).starts_with("https://") {
                return PushStep::skipped("probe --push sends gRPC over plain HTTP/2 only");
            }
            let Some(sock) = endpoint_socket(&config.otlp.endpoint, chosen.address) else {
                return PushStep::failed("otlp.endpoint has no usable port".into(), started);
            };
            let request = check::grpc_request(request, &config.otlp.headers);
            let timeout = PUSH_REQUEST_TIMEOUT.max(step_timeout(config));
            match tokio::time::timeout(timeout, check::grpc_export(sock, request, timeout)).await {
                Err(_) => PushStep::failed(
                    format!("no answer from {sock} within {} s", timeout.as_secs()),
                    started,
                ),
                Ok(Ok(resp)) => match resp.partial_success {
                    Some(p) => accepted(p.rejected_spans, &p.error_message),
                    None => accepted(0, ""),
                },
                Ok(Err(check::GrpcFailure::Status(status))) => PushStep::failed(
                    format!(
                        "the collector answered gRPC {:?}: {}",
                        status.code(),
                        check::excerpt(status.message())
                    ),
                    started,
                ),
                Ok(Err(check::GrpcFailure::Connect(reason))) => {
                    PushStep::failed(format!("cannot connect to {sock}: {reason}"), started)
                }
            }
        }
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            let json = config.otlp.protocol == OtlpProtocol::HttpJson;
            let (content_type, body) = if json {
                match serde_json::to_vec(&request) {
                    Ok(b) => ("application/json", b),
                    Err(e) => {
                        return PushStep::failed(format!("cannot encode the span: {e}"), started)
                    }
                }
            } else {
                ("application/x-protobuf", request.encode_to_vec())
            };
            let url = otlp_traces_url(&config.otlp.endpoint, &host);
            let mut req = push_client()
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
            for (k, v) in &config.otlp.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => accepted(0, ""),
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let text = check::excerpt(&resp.text().await.unwrap_or_default());
                    PushStep::failed(
                        format!("the collector answered HTTP {code}: {text}"),
                        started,
                    )
                }
                Err(e) => PushStep::failed(check::error_chain(&e.without_url()), started),
            }
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
