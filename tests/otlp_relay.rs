//! The OTLP relay end to end: programs send to the agent's local receiver (gRPC,
//! HTTP protobuf, HTTP JSON), the built binary relays through its spool to the
//! fake collector (gRPC or HTTP), across collector outages and a `kill -9`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

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
    let gzipped = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status().as_u16(), 415);
    assert!(gzipped
        .text()
        .await
        .unwrap()
        .contains("send the body uncompressed"));

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

    // The tailer ships to Loki beside the relay.
    std::fs::write(
        relay.dir.path().join("logs").join("app.log"),
        "{\"level\":30,\"msg\":\"beside the relay\"}\n",
    )
    .unwrap();
    assert!(
        loki.wait_for_unique(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("receiver.grpc") && stderr.contains("\"\" to disable"),
        "{stderr}"
    );
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
