//! A run's own telemetry joins the run's trace: a program started by
//! `wisp-agent exec` sends spans and logs whose resource names the run
//! (`wisp.run.id`, `wisp.run.name`, `wisp.run.labels`, as `exec` sets them in
//! `OTEL_RESOURCE_ATTRIBUTES`) to the local receivers (OTLP/HTTP protobuf with
//! gzip, HTTP JSON, gRPC); the built binary relays them to the fake collector
//! in the run's trace, roots under the run span, and stores the logs in the
//! fake Loki under the run's job and labels with its `run_id`. Telemetry of
//! other resources passes untouched.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use support::agent::Relay;
use support::loki::{Entry, LokiReceiver};
use support::otlp::{OtlpReceiver, SeenLog, SeenSpan};
use support::DEADLINE;

/// Run ids as `exec` makes them (32 hex digits); the run span's id is the
/// last 16.
const RUN_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const RUN_B: &str = "0af7651916cd43dd8448eb211c80319c";

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The resource of a program `exec --name ralph --label iter=3 --label
/// task=fix-ci` runs, as its SDK reads `OTEL_RESOURCE_ATTRIBUTES`.
fn run_resource(run_id: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            text("service.name", "claude-code"),
            text("wisp.run.id", run_id),
            text("wisp.run.name", "ralph"),
            text("wisp.run.labels", "iter,task"),
            text("iter", "3"),
            text("task", "fix-ci"),
        ],
        ..Default::default()
    })
}

fn plain_resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![text("service.name", "web")],
        ..Default::default()
    })
}

/// A span of a trace the SDK started on its own (`[trace; 16]`).
fn span(name: &str, trace: u8, id: u8, parent: Option<u8>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: 1,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        ..Default::default()
    }
}

fn resource_spans(resource: Option<Resource>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource,
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn resource_logs(resource: Option<Resource>, records: Vec<LogRecord>) -> ResourceLogs {
    ResourceLogs {
        resource,
        scope_logs: vec![ScopeLogs {
            log_records: records,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn record(line: &str, t: u64, ids: Option<(u8, u8)>) -> LogRecord {
    LogRecord {
        time_unix_nano: t,
        severity_number: 9,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(line.into())),
        }),
        trace_id: ids.map(|(t, _)| vec![t; 16]).unwrap_or_default(),
        span_id: ids.map(|(_, s)| vec![s; 8]).unwrap_or_default(),
        ..Default::default()
    }
}

/// Nanoseconds since the epoch, a few seconds ago (Loki takes recent entries).
fn recent_ns() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now - Duration::from_secs(5)).as_nanos() as u64
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) {
    let mut r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type);
    if let Some(e) = encoding {
        r = r.header("content-encoding", e);
    }
    let r = r.body(body).send().await.expect("post to the agent");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{path}: {text}");
}

/// The spans the collector got, by name (names are unique in these tests).
fn spans_by_name(collector: &OtlpReceiver) -> BTreeMap<String, SeenSpan> {
    collector
        .spans()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
}

/// (trace id, span id, parent span id) of a span, lowercase hex.
fn ids(s: &SeenSpan) -> (&str, &str, &str) {
    (&s.trace_id, &s.span_id, &s.parent_span_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_spans_join_its_trace_under_the_run_span_and_other_spans_pass_untouched() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (agent, grpc, http) = relay.start().await;

    // OTLP/HTTP protobuf, gzip: a run's root and child, and another program's
    // span in the same request.
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans(
                run_resource(RUN_A),
                vec![
                    span("a root", 0x11, 0x01, None),
                    span("a child", 0x11, 0x02, Some(0x01)),
                ],
            ),
            resource_spans(plain_resource(), vec![span("web root", 0x33, 0x03, None)]),
        ],
    };
    post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        gzip(&request.encode_to_vec()),
    )
    .await;

    // OTLP/HTTP JSON, the run id in upper case.
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"wisp.run.id","value":{{"stringValue":"{}"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"b json root","kind":1}}]}}]}}]}}"#,
        RUN_B.to_uppercase()
    );
    post(
        http,
        "/v1/traces",
        "application/json",
        None,
        json.into_bytes(),
    )
    .await;

    // gRPC: a root, and a span already in the run's trace under the run span.
    let mut in_trace = span("b in trace", 0, 0x05, None);
    in_trace.trace_id = hex_bytes(RUN_B);
    in_trace.parent_span_id = hex_bytes(&RUN_B[16..]);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect to the agent's grpc receiver");
    client
        .export(ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(
                run_resource(RUN_B),
                vec![span("b grpc root", 0x44, 0x04, None), in_trace],
            )],
        })
        .await
        .expect("the agent takes the spans");

    assert!(
        collector.wait_for_spans(6, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    let spans = spans_by_name(&collector);
    let a_span = &RUN_A[16..];
    let b_span = &RUN_B[16..];
    let want = [
        ("a root", (RUN_A, "01".repeat(8), a_span.to_string())),
        ("a child", (RUN_A, "02".repeat(8), "01".repeat(8))),
        (
            "web root",
            (&"33".repeat(16)[..], "03".repeat(8), String::new()),
        ),
        (
            "b json root",
            (RUN_B, "eee19b7ec3c1b174".into(), b_span.to_string()),
        ),
        ("b grpc root", (RUN_B, "04".repeat(8), b_span.to_string())),
        ("b in trace", (RUN_B, "05".repeat(8), b_span.to_string())),
    ];
    for (name, (trace, id, parent)) in &want {
        let s = spans
            .get(*name)
            .unwrap_or_else(|| panic!("{name} not relayed: {spans:#?}"));
        assert_eq!(ids(s), (*trace, id.as_str(), parent.as_str()), "{name}");
    }
    assert_eq!(spans.len(), want.len(), "{spans:#?}");
    // The resource is relayed as sent.
    assert_eq!(spans["a root"].service_name, "claude-code");
    assert_eq!(spans["a root"].resource["wisp.run.id"], RUN_A);
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_logs_reach_the_collector_in_its_trace_and_loki_under_its_job_and_labels() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let (agent, grpc, http) = relay.start().await;
    let t = recent_ns();

    // OTLP/HTTP protobuf: a record logged in a span of the program's own trace,
    // one logged outside any span, and another program's record.
    let request = ExportLogsServiceRequest {
        resource_logs: vec![
            resource_logs(
                run_resource(RUN_A),
                vec![
                    record("in a span", t, Some((0x11, 0x02))),
                    record("no span", t + 1, None),
                ],
            ),
            resource_logs(plain_resource(), vec![record("web line", t + 2, None)]),
        ],
    };
    post(
        http,
        "/v1/logs",
        "application/x-protobuf",
        None,
        request.encode_to_vec(),
    )
    .await;
    // gRPC: another run's record.
    let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect to the agent's grpc receiver");
    client
        .export(ExportLogsServiceRequest {
            resource_logs: vec![resource_logs(
                run_resource(RUN_B),
                vec![record("grpc no span", t + 3, None)],
            )],
        })
        .await
        .expect("the agent takes the logs");

    // The collector: the run's records in the run's trace.
    assert!(
        collector.wait_for_logs(4, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    let logs: BTreeMap<String, SeenLog> = collector
        .logs()
        .into_iter()
        .map(|l| (l.body.clone(), l))
        .collect();
    let got = |line: &str| {
        let l = &logs[line];
        (l.trace_id.as_str(), l.span_id.as_str())
    };
    let span_02 = "02".repeat(8);
    assert_eq!(got("in a span"), (RUN_A, span_02.as_str()));
    assert_eq!(got("no span"), (RUN_A, &RUN_A[16..]));
    assert_eq!(got("web line"), ("", ""));
    assert_eq!(got("grpc no span"), (RUN_B, &RUN_B[16..]));

    // Loki: the run's job and labels, its run_id, the same ids.
    assert!(
        loki.wait_for_stored(4, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    let run_labels = map(&[
        ("host", "vm-test"),
        ("iter", "3"),
        ("job", "ralph"),
        ("level", "info"),
        ("task", "fix-ci"),
    ]);
    let run_meta = |run: &str, span: &str| {
        map(&[
            ("run_id", run),
            ("service_name", "claude-code"),
            ("span_id", span),
            ("trace_id", run),
        ])
    };
    let entry = |labels: &BTreeMap<String, String>, ts: u64, line: &str, meta| Entry {
        labels: labels.clone(),
        timestamp_ns: ts as i64,
        line: line.into(),
        metadata: meta,
    };
    let mut want = vec![
        entry(&run_labels, t, "in a span", run_meta(RUN_A, &span_02)),
        entry(&run_labels, t + 1, "no span", run_meta(RUN_A, &RUN_A[16..])),
        entry(
            &map(&[("host", "vm-test"), ("job", "web"), ("level", "info")]),
            t + 2,
            "web line",
            BTreeMap::new(),
        ),
        entry(
            &run_labels,
            t + 3,
            "grpc no span",
            run_meta(RUN_B, &RUN_B[16..]),
        ),
    ];
    let mut stored = loki.all_entries();
    stored.sort_by(|a, b| a.line.cmp(&b.line));
    want.sort_by(|a, b| a.line.cmp(&b.line));
    assert_eq!(stored, want);
}
