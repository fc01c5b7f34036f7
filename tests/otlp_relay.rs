//! The OTLP relay end to end: programs send to the agent's local receiver (gRPC,
//! HTTP protobuf, HTTP JSON), the built binary relays through its spool to the
//! fake collector (gRPC or HTTP), across collector outages and a `kill -9`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tonic::codec::CompressionEncoding;

use support::agent::{Agent, Relay};
use support::loki::LokiReceiver;
use support::otlp::{OtlpReceiver, Transport};
use support::{wait_until, DEADLINE};

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![text("service.name", service)],
        ..Default::default()
    })
}

/// A request with one span named `name`, trace id `[trace; 16]`.
fn span_request(name: &str, trace: u8) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("relay-test"),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![trace; 16],
                    span_id: vec![7; 8],
                    name: name.into(),
                    kind: 2,
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    attributes: vec![text("http.route", "/items"), text("attempt", name)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn send_grpc_span(addr: SocketAddr, name: &str, trace: u8) {
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the agent's grpc receiver");
    client
        .export(span_request(name, trace))
        .await
        .expect("the agent acknowledges the span");
}

async fn post(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("post to the agent's http receiver");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// POSTs `body` with a `Content-Encoding`.
async fn post_encoded(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    content_encoding: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("content-encoding", content_encoding)
        .body(body)
        .send()
        .await
        .expect("post to the agent's http receiver");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn span_names(collector: &OtlpReceiver) -> Vec<String> {
    collector.spans().into_iter().map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_sent_over_grpc_reaches_the_collector_intact() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (mut agent, grpc, _) = relay.start().await;
    send_grpc_span(grpc, "GET /items", 0xab).await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    let spans = collector.spans();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "GET /items");
    assert_eq!(s.trace_id, "ab".repeat(16));
    assert_eq!(s.span_id, "07".repeat(8));
    assert_eq!(s.service_name, "relay-test");
    assert_eq!(
        s.attributes,
        BTreeMap::from([
            ("http.route".to_string(), "/items".to_string()),
            ("attempt".to_string(), "GET /items".to_string()),
        ])
    );
    assert_eq!(collector.transports(), [Transport::Grpc]);
    assert!(
        agent.log().contains("the [[files]] entries are not tailed"),
        "with loki disabled the log says files are not tailed:\n{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "agent log:\n{}", agent.log());
    assert_eq!(
        collector.last_headers().get("x-relay-test").unwrap(),
        "yes",
        "otlp.headers travel with the export"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_sent_over_http_protobuf_and_json_reach_the_collector() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, _, http) = relay.start().await;

    let (status, _) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        span_request("protobuf span", 0x11).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);

    // OTLP/JSON as SDKs write it: hex ids, camelCase, 64-bit numbers as strings.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-app"}}]},
        "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
        "spanId":"eee19b7ec3c1b174","name":"json span","kind":2,
        "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000",
        "attributes":[{"key":"http.route","value":{"stringValue":"/json"}}]}]}]}]}"#;
    let (status, body) = post(http, "/v1/traces", "application/json", json.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "{}");

    assert!(
        collector.wait_for_spans(2, DEADLINE).await,
        "got {:?}; agent log:\n{}",
        span_names(&collector),
        agent.log()
    );
    let spans = collector.spans();
    let json_span = spans.iter().find(|s| s.name == "json span").unwrap();
    assert_eq!(json_span.trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(json_span.span_id, "eee19b7ec3c1b174");
    assert_eq!(json_span.service_name, "json-app");
    assert_eq!(json_span.attributes["http.route"], "/json");
    assert_eq!(json_span.start_time_unix_nano, 1_700_000_000_000_000_000);
    let pb_span = spans.iter().find(|s| s.name == "protobuf span").unwrap();
    assert_eq!(pb_span.trace_id, "11".repeat(16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_answered_400_and_the_receiver_keeps_working() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, _, http) = relay.start().await;

    let (status, reason) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        vec![0xff, 0xff, 0xff, 0xff, 0x01],
    )
    .await;
    assert_eq!(status, 400);
    assert!(reason.contains("cannot decode"), "{reason}");
    let (status, reason) = post(http, "/v1/logs", "application/json", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(reason.contains("cannot decode"), "{reason}");
    let (status, reason) = post(http, "/v1/metrics", "text/plain", b"x".to_vec()).await;
    assert_eq!(status, 415, "{reason}");
    // gzip is taken (see below); other encodings are not.
    let (status, reason) = post_encoded(
        http,
        "/v1/traces",
        "application/x-protobuf",
        "br",
        vec![0x0b, 0x01, 0x80],
    )
    .await;
    assert_eq!(status, 415, "{reason}");
    assert!(
        reason.contains("send the body as gzip or uncompressed"),
        "{reason}"
    );

    let (status, _) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        span_request("after the bad ones", 0x22).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(span_names(&collector), ["after the bad ones"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_grpc_request_is_invalid_argument_and_the_receiver_keeps_working() {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue, KeyValueList};
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, grpc, _) = relay.start().await;
    // An attribute nested deeper than any decoder takes (prost stops at 100).
    let mut value = AnyValue {
        value: Some(any_value::Value::StringValue("bottom".into())),
    };
    for _ in 0..200 {
        value = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(value),
                    ..Default::default()
                }],
            })),
        };
    }
    let mut deep = span_request("too deep", 0x31);
    deep.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..Default::default()
        });
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let err = client.export(deep).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cannot decode"), "{err:?}");
    send_grpc_span(grpc, "after the bad one", 0x32).await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(span_names(&collector), ["after the bad one"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_sent_while_the_collector_is_down_arrive_once_it_is_back() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, grpc, _) = relay.start().await;
    collector.stop().await;

    for i in 0..5u8 {
        send_grpc_span(grpc, &format!("during outage {i}"), i + 1).await;
    }
    // The exporter has tried (and failed) at least once before the collector returns.
    assert!(
        wait_until(DEADLINE, || agent.log().contains("otlp export to")).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(collector.exports(), 0);
    collector.restart().await;
    assert!(
        collector.wait_for_spans(5, Duration::from_secs(30)).await,
        "got {:?}; agent log:\n{}",
        span_names(&collector),
        agent.log()
    );
    let mut names = span_names(&collector);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_acknowledged_before_a_kill_9_is_exported_after_the_restart() {
    let collector = OtlpReceiver::start().await;
    // Loki on as well: the relay runs beside the tailer.
    let loki = LokiReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let (mut agent, grpc, _) = relay.start().await;
    collector.stop().await;

    send_grpc_span(grpc, "acknowledged then killed", 0x33).await;
    agent.kill9();
    assert_eq!(collector.exports(), 0);

    collector.restart().await;
    let (agent, _, _) = relay.start().await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    assert!(span_names(&collector).contains(&"acknowledged then killed".to_string()));

    // The tailer ships to Loki beside the relay, once.
    let line = r#"{"level":30,"msg":"beside the relay"}"#.to_string();
    std::fs::write(
        relay.dir.path().join("logs").join("app.log"),
        format!("{line}\n"),
    )
    .unwrap();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &[line], DEADLINE)
        .await;
    assert!(loki.all_entries()[0].line.contains("beside the relay"));
}

fn log_request(body: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("relay-test"),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000,
                    severity_number: 9,
                    severity_text: "INFO".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(body.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metric_request(name: &str) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("relay-test"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    unit: "1".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: 1_700_000_000_000_000_000,
                            value: Some(number_data_point::Value::AsInt(3)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_speaks_http_protobuf_and_http_json_for_all_three_signals() {
    for (protocol, transport) in [
        ("http/protobuf", Transport::HttpProtobuf),
        ("http/json", Transport::HttpJson),
    ] {
        let collector = OtlpReceiver::start().await;
        let relay = Relay::new(&collector, protocol, None);
        let (agent, grpc, http) = relay.start().await;

        send_grpc_span(grpc, "over http", 0x44).await;
        let (status, _) = post(
            http,
            "/v1/logs",
            "application/x-protobuf",
            log_request("a log line").encode_to_vec(),
        )
        .await;
        assert_eq!(status, 200);
        MetricsServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap()
            .export(metric_request("queue.depth"))
            .await
            .unwrap();

        let arrived = collector.wait_for_spans(1, DEADLINE).await
            && collector.wait_for_logs(1, DEADLINE).await
            && collector.wait_for_metrics(1, DEADLINE).await;
        assert!(arrived, "{protocol}: agent log:\n{}", agent.log());
        assert_eq!(span_names(&collector), ["over http"], "{protocol}");
        assert_eq!(collector.spans()[0].trace_id, "44".repeat(16));
        let logs = collector.logs();
        assert_eq!(logs[0].body, "a log line", "{protocol}");
        assert_eq!(logs[0].severity_text, "INFO");
        let metrics = collector.metrics();
        assert_eq!(metrics[0].name, "queue.depth", "{protocol}");
        assert_eq!(metrics[0].data_points, 1);
        assert!(
            collector.transports().iter().all(|t| *t == transport),
            "{protocol}: {:?}",
            collector.transports()
        );
        assert_eq!(collector.last_headers().get("x-relay-test").unwrap(), "yes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_export_is_dropped_logged_once_and_later_data_flows() {
    for (protocol, cause) in [
        ("grpc", "grpc_invalid_argument"),
        ("http/protobuf", "http_400"),
    ] {
        let collector = OtlpReceiver::start().await;
        let relay = Relay::new(&collector, protocol, None);
        let (agent, grpc, _) = relay.start().await;
        collector.reject_next(1);
        send_grpc_span(grpc, "refused", 0x55).await;
        assert!(
            collector.wait_for_exports(1, DEADLINE).await,
            "{protocol}: agent log:\n{}",
            agent.log()
        );
        send_grpc_span(grpc, "taken", 0x66).await;
        assert!(
            collector.wait_for_spans(1, DEADLINE).await,
            "{protocol}: agent log:\n{}",
            agent.log()
        );
        assert_eq!(span_names(&collector), ["taken"], "{protocol}");
        let log = agent.log();
        assert_eq!(
            log.matches(&format!("({cause}); dropping them")).count(),
            1,
            "{protocol}: the refusal is logged once with its cause:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_collector_is_retried_until_it_takes_the_export() {
    for protocol in ["grpc", "http/protobuf"] {
        let collector = OtlpReceiver::start().await;
        let relay = Relay::new(&collector, protocol, None);
        let (agent, grpc, _) = relay.start().await;
        collector.fail_next(2);
        send_grpc_span(grpc, "retried", 0x77).await;
        assert!(
            collector.wait_for_spans(1, Duration::from_secs(20)).await,
            "{protocol}: agent log:\n{}",
            agent.log()
        );
        assert!(
            collector.exports() >= 3,
            "{protocol}: {}",
            collector.exports()
        );
        assert_eq!(span_names(&collector), ["retried"], "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_port_in_use_is_an_error_naming_the_key() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&relay.config).unwrap().replace(
        "grpc = \"127.0.0.1:0\"",
        &format!("grpc = \"{}\"", taken.local_addr().unwrap()),
    );
    std::fs::write(&relay.config, text).unwrap();
    let out = support::agent_command()
        .args(["run", "--config"])
        .arg(&relay.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A configuration error: another program holds the port the configuration
    // names, and a restart would meet it again (the unit does not restart on 2).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("set receiver.grpc to a free address")
            && stderr.contains("\"\" to disable"),
        "{stderr}"
    );
    // The OS error once, not again as the error's source.
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_export_disabled_the_receivers_do_not_listen() {
    let collector = OtlpReceiver::start().await;
    let loki = LokiReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let text = std::fs::read_to_string(&relay.config)
        .unwrap()
        .replace("[otlp]\n", "[otlp]\nenabled = false\n");
    std::fs::write(&relay.config, text).unwrap();
    let mut agent = Agent::start(&relay.config, &relay.stderr_path());
    assert!(
        wait_until(DEADLINE, || agent.log().contains(
            "receivers (receiver.grpc, receiver.http) are not started"
        ))
        .await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "agent log:\n{}", agent.log());
    assert!(!agent.log().contains("listening on"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_requests_over_http_protobuf_and_json_arrive_intact() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, _, http) = relay.start().await;

    let (status, reason) = post_encoded(
        http,
        "/v1/traces",
        "application/x-protobuf",
        "gzip",
        gzip(&span_request("gzip protobuf span", 0x12).encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{reason}");
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gzip-json-app"}}]},
        "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
        "spanId":"eee19b7ec3c1b174","name":"gzip json span","kind":2,
        "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000",
        "attributes":[{"key":"http.route","value":{"stringValue":"/gz"}}]}]}]}]}"#;
    let (status, body) = post_encoded(
        http,
        "/v1/traces",
        "application/json",
        "gzip",
        gzip(json.as_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "{}");
    let (status, reason) = post_encoded(
        http,
        "/v1/logs",
        "application/x-protobuf",
        "gzip",
        gzip(&log_request("a gzip log line").encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{reason}");

    assert!(
        collector.wait_for_spans(2, DEADLINE).await && collector.wait_for_logs(1, DEADLINE).await,
        "got {:?}; agent log:\n{}",
        span_names(&collector),
        agent.log()
    );
    let spans = collector.spans();
    let pb = spans
        .iter()
        .find(|s| s.name == "gzip protobuf span")
        .unwrap();
    assert_eq!(pb.trace_id, "12".repeat(16));
    assert_eq!(pb.service_name, "relay-test");
    assert_eq!(pb.attributes["attempt"], "gzip protobuf span");
    let js = spans.iter().find(|s| s.name == "gzip json span").unwrap();
    assert_eq!(js.trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(js.service_name, "gzip-json-app");
    assert_eq!(js.attributes["http.route"], "/gz");
    assert_eq!(collector.logs()[0].body, "a gzip log line");
    // What reaches the collector is the request as the program built it (the
    // exporter may have merged both trace requests into one export).
    let sent = span_request("gzip protobuf span", 0x12).resource_spans;
    let arrived: Vec<_> = collector
        .trace_requests()
        .into_iter()
        .flat_map(|r| r.resource_spans)
        .collect();
    assert!(arrived.contains(&sent[0]), "{arrived:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_gzip_body_is_400_with_the_reason() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, _, http) = relay.start().await;

    let mut corrupt = gzip(&span_request("corrupt", 0x13).encode_to_vec());
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let truncated = gzip(&span_request("truncated", 0x14).encode_to_vec())[..12].to_vec();
    for body in [corrupt, truncated, b"not gzip".to_vec()] {
        let (status, reason) =
            post_encoded(http, "/v1/traces", "application/x-protobuf", "gzip", body).await;
        assert_eq!(status, 400, "{reason}");
        assert!(
            reason.contains("cannot decompress the gzip body"),
            "{reason}"
        );
    }
    // The receiver keeps working.
    let (status, _) = post_encoded(
        http,
        "/v1/traces",
        "application/x-protobuf",
        "gzip",
        gzip(&span_request("after the corrupt ones", 0x15).encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(span_names(&collector), ["after the corrupt ones"]);
}

/// The agent's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line["VmHWM:".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_413_and_never_inflated_in_memory() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, _, http) = relay.start().await;
    let pid = agent.pid().unwrap();
    let before = peak_rss(pid);

    // 100 MiB of zeros: about 100 KiB compressed.
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());

    let (status, reason) =
        post_encoded(http, "/v1/traces", "application/x-protobuf", "gzip", bomb).await;
    assert_eq!(status, 413, "{reason}");
    assert!(
        reason.contains("decompresses to more than 16777216 bytes"),
        "{reason}"
    );
    // Inflating all of it would have taken 100 MiB; the receiver stops at its
    // 16 MiB bound. The peak (not the current) resident size shows it.
    let grown = peak_rss(pid).saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB", grown >> 10);
    assert!(
        grown < 40 << 20,
        "the peak RSS grew by {} MiB with the bomb",
        grown >> 20
    );

    // Nothing was stored; the receiver keeps working.
    let (status, _) = post_encoded(
        http,
        "/v1/traces",
        "application/x-protobuf",
        "gzip",
        gzip(&span_request("after the bomb", 0x16).encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(span_names(&collector), ["after the bomb"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_sending_gzip_is_accepted_and_a_grpc_bomb_is_resource_exhausted() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, grpc, _) = relay.start().await;
    let before = peak_rss(agent.pid().unwrap());

    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    client
        .export(span_request("grpc gzip span", 0x17))
        .await
        .expect("the agent takes a gzip grpc request");
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    let spans = collector.spans();
    assert_eq!(spans[0].name, "grpc gzip span");
    assert_eq!(spans[0].trace_id, "17".repeat(16));

    // 100 MiB of attribute, about 100 KiB on the wire: past the receiver's
    // bound once inflated; tonic stops inflating there.
    let mut big = span_request("too big", 0x18);
    big.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(text("pad", &"x".repeat(100 << 20)));
    let status = client.export(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let grown = peak_rss(agent.pid().unwrap()).saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB", grown >> 10);
    // tonic's inflate buffer doubles up to its bound: more than ours, far
    // less than the 100 MiB all of it would take.
    assert!(grown < 64 << 20, "peak RSS grew by {} MiB", grown >> 20);
    assert_eq!(span_names(&collector), ["grpc gzip span"]);
}
