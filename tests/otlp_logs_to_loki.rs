//! `[otlp] logs_to_loki` end to end: programs send logs to the agent's local
//! receiver (gRPC, HTTP JSON, HTTP protobuf with gzip); the built binary stores
//! each record for Loki (the fake Loki gets each exactly once, with the labels,
//! level, structured metadata, line and timestamp of contract C) and still
//! relays the request to the fake collector, marked `x-wisp-logs-in-loki: true`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use support::agent::{metric, Agent, Relay};
use support::loki::{Entry, LokiReceiver};
use support::otlp::OtlpReceiver;
use support::{wait_until, DEADLINE};

const HEADER: &str = "x-wisp-logs-in-loki";

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn body(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

fn resource_logs(service: Option<&str>, records: Vec<LogRecord>) -> ResourceLogs {
    ResourceLogs {
        resource: Some(Resource {
            attributes: service
                .map(|s| text("service.name", s))
                .into_iter()
                .chain([text("host.arch", "amd64")])
                .collect(),
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            log_records: records,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Nanoseconds since the epoch, a few seconds ago (Loki takes recent entries).
fn recent_ns() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now - Duration::from_secs(5)).as_nanos() as u64
}

/// The relay's configuration with `[agent] labels` and `extra` lines in
/// `[otlp]`.
fn relay(collector: &OtlpReceiver, protocol: &str, loki: &LokiReceiver, otlp_extra: &str) -> Relay {
    let r = Relay::new(collector, protocol, Some(loki));
    let text = std::fs::read_to_string(&r.config).unwrap();
    let text = text
        .replacen("[agent]\n", "[agent]\nlabels = { env = \"ci\" }\n", 1)
        .replacen("[otlp]\n", &format!("[otlp]\n{otlp_extra}"), 1);
    std::fs::write(&r.config, text).unwrap();
    r.set_admin_listen("127.0.0.1:0");
    r
}

async fn send_grpc(addr: SocketAddr, request: ExportLogsServiceRequest) {
    let mut client = LogsServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the agent's grpc receiver");
    client
        .export(request)
        .await
        .expect("the agent takes the logs request");
}

async fn post(
    addr: SocketAddr,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/logs"))
        .header("content-type", content_type);
    if let Some(e) = encoding {
        r = r.header("content-encoding", e);
    }
    let r = r.body(body).send().await.expect("post to the agent");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn entry(
    labels: BTreeMap<String, String>,
    ts: u64,
    line: &str,
    ids: Option<(&str, &str)>,
) -> Entry {
    Entry {
        labels,
        timestamp_ns: ts as i64,
        line: line.into(),
        metadata: ids
            .map(|(t, s)| {
                [("trace_id", t), ("span_id", s)]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every entry Loki holds, by line (lines are unique in these tests).
fn by_line(loki: &LokiReceiver) -> BTreeMap<String, Vec<Entry>> {
    let mut out: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in loki.all_entries() {
        out.entry(e.line.clone()).or_default().push(e);
    }
    out
}

/// Waits until Loki holds `want.len()` entries, then checks each is there once,
/// exactly as wanted.
async fn assert_in_loki_once(loki: &LokiReceiver, agent: &Agent, want: &[Entry]) {
    let arrived = loki.wait_for_stored(want.len(), DEADLINE).await;
    let got = by_line(loki);
    for w in want {
        match got.get(&w.line).map(Vec::as_slice) {
            Some([one]) => assert_eq!(one, w, "entry {:?}", w.line),
            other => panic!(
                "{:?} is in Loki {} time(s) (arrived: {arrived}): {other:?}\nagent log:\n{}",
                w.line,
                other.map_or(0, <[Entry]>::len),
                agent.log()
            ),
        }
    }
    assert_eq!(loki.all_entries().len(), want.len(), "{got:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_logs_reach_loki_once_each_with_job_level_ids_line_and_time_and_the_collector_marked()
{
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = relay(&collector, "grpc", &loki, "");
    let (agent, grpc, _) = relay.start().await;
    let t = recent_ns();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![
            resource_logs(
                Some("checkout"),
                vec![
                    LogRecord {
                        time_unix_nano: t,
                        observed_time_unix_nano: t + 500,
                        severity_number: 9,
                        severity_text: "INFO".into(),
                        body: body("order placed"),
                        trace_id: vec![0x5b; 16],
                        span_id: vec![0xee; 8],
                        attributes: vec![text("order.id", "o-1")],
                        ..Default::default()
                    },
                    LogRecord {
                        time_unix_nano: t + 1,
                        severity_number: 18,
                        body: body("card declined"),
                        ..Default::default()
                    },
                    // No number: the text, as a file level is read.
                    LogRecord {
                        time_unix_nano: t + 2,
                        severity_text: "Warning".into(),
                        body: body("retrying payment"),
                        ..Default::default()
                    },
                ],
            ),
            // No service.name, no time of its own but an observed one.
            resource_logs(
                None,
                vec![LogRecord {
                    observed_time_unix_nano: t + 3,
                    severity_number: 21,
                    body: body("out of memory"),
                    ..Default::default()
                }],
            ),
        ],
    };
    send_grpc(grpc, request.clone()).await;

    let base = |job: &str, level: &str| {
        labels(&[
            ("env", "ci"),
            ("host", "vm-test"),
            ("job", job),
            ("level", level),
        ])
    };
    let want = [
        entry(
            base("checkout", "info"),
            t,
            "order placed",
            Some((&"5b".repeat(16), &"ee".repeat(8))),
        ),
        entry(base("checkout", "error"), t + 1, "card declined", None),
        entry(base("checkout", "warn"), t + 2, "retrying payment", None),
        entry(
            base("unknown_service", "fatal"),
            t + 3,
            "out of memory",
            None,
        ),
    ];
    assert_in_loki_once(&loki, &agent, &want).await;

    // The collector gets the same request, marked as in Loki.
    assert!(
        collector.wait_for_logs(4, DEADLINE).await,
        "{}",
        agent.log()
    );
    let relayed: Vec<ExportLogsServiceRequest> = collector.log_requests();
    let merged = ExportLogsServiceRequest {
        resource_logs: relayed.into_iter().flat_map(|r| r.resource_logs).collect(),
    };
    assert_eq!(merged, request);
    let headers = collector.log_export_headers();
    assert!(!headers.is_empty());
    for h in &headers {
        assert_eq!(
            h.get(HEADER).and_then(|v| v.to_str().ok()),
            Some("true"),
            "{h:?}"
        );
    }

    let admin = agent.admin_addr().await;
    assert_eq!(
        metric(admin, "wisp_otlp_logs_to_loki_total").await,
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_and_gzip_protobuf_logs_reach_loki_once_and_a_map_body_is_a_json_line() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = relay(&collector, "http/protobuf", &loki, "");
    let (agent, _, http) = relay.start().await;
    let t = recent_ns();
    let json = format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"web"}}}}]}},
            "scopeLogs":[{{"logRecords":[
              {{"timeUnixNano":"{t}","severityNumber":5,"body":{{"stringValue":"GET /items 200"}},
                "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}},
              {{"timeUnixNano":"{t1}","severityText":"err",
                "body":{{"kvlistValue":{{"values":[
                  {{"key":"msg","value":{{"stringValue":"db down"}}}},
                  {{"key":"attempt","value":{{"intValue":"3"}}}},
                  {{"key":"fatal","value":{{"boolValue":false}}}}]}}}}}}
            ]}}]}}]}}"#,
        t1 = t + 1
    );
    let (status, answer) = post(http, "application/json", None, json.into_bytes()).await;
    assert_eq!((status, answer.as_str()), (200, "{}"));

    // HTTP protobuf, gzip: an array body.
    let request = ExportLogsServiceRequest {
        resource_logs: vec![resource_logs(
            Some("web"),
            vec![LogRecord {
                time_unix_nano: t + 2,
                severity_number: 1,
                body: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![body("a").unwrap(), body("b").unwrap()],
                        },
                    )),
                }),
                ..Default::default()
            }],
        )],
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&request.encode_to_vec()).unwrap();
    let (status, _) = post(
        http,
        "application/x-protobuf",
        Some("gzip"),
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(status, 200);

    // A logs request without records is answered OK and stores nothing for Loki.
    let empty = ExportLogsServiceRequest {
        resource_logs: vec![resource_logs(Some("web"), Vec::new())],
    };
    let (status, _) = post(http, "application/x-protobuf", None, empty.encode_to_vec()).await;
    assert_eq!(status, 200);

    let base = |level: &str| {
        labels(&[
            ("env", "ci"),
            ("host", "vm-test"),
            ("job", "web"),
            ("level", level),
        ])
    };
    let want = [
        entry(
            base("debug"),
            t,
            "GET /items 200",
            Some(("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")),
        ),
        entry(
            base("error"),
            t + 1,
            r#"{"attempt":3,"fatal":false,"msg":"db down"}"#,
            None,
        ),
        entry(base("trace"), t + 2, r#"["a","b"]"#, None),
    ];
    assert_in_loki_once(&loki, &agent, &want).await;

    // All three records reach the collector over OTLP/HTTP (the three requests
    // in as many exports, or fewer when the exporter joined them), each export
    // marked.
    assert!(
        wait_until(DEADLINE, || collector.logs().len() >= 3).await,
        "{}",
        agent.log()
    );
    let headers = collector.log_export_headers();
    for h in &headers {
        assert_eq!(
            h.get(HEADER).and_then(|v| v.to_str().ok()),
            Some("true"),
            "{h:?}"
        );
    }
    let admin = agent.admin_addr().await;
    assert_eq!(
        metric(admin, "wisp_otlp_logs_to_loki_total").await,
        Some(3.0)
    );
}

fn numbered(service: &str, from: usize, to: usize, t: u64) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![resource_logs(
            Some(service),
            (from..to)
                .map(|i| LogRecord {
                    time_unix_nano: t + i as u64,
                    severity_number: 9,
                    body: body(&format!("{service} line {i}")),
                    ..Default::default()
                })
                .collect(),
        )],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_logs_to_loki_off_nothing_goes_to_loki_and_logs_exports_carry_no_header() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = relay(&collector, "grpc", &loki, "logs_to_loki = false\n");
    let (agent, grpc, _) = relay.start().await;
    let t = recent_ns();
    send_grpc(grpc, numbered("svc", 0, 3, t)).await;
    assert!(
        collector.wait_for_logs(3, DEADLINE).await,
        "{}",
        agent.log()
    );
    for h in collector.log_export_headers() {
        assert!(h.get(HEADER).is_none(), "{h:?}");
    }
    // A file line written after the logs were answered reaches Loki; had the
    // logs been stored for Loki, they would have been stored before it.
    let marker = "file line after the otlp logs".to_string();
    support::append(
        &relay.dir.path().join("logs").join("a.log"),
        std::slice::from_ref(&marker),
    );
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &[marker], DEADLINE)
        .await;
    assert_eq!(loki.all_entries().len(), 1, "{:?}", loki.all_entries());
    let admin = agent.admin_addr().await;
    assert_eq!(
        metric(admin, "wisp_otlp_logs_to_loki_total").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loki_disabled_logs_are_relayed_without_the_header() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "http/protobuf", None);
    let (agent, _, http) = relay.start().await;
    let (status, _) = post(
        http,
        "application/x-protobuf",
        None,
        numbered("svc", 0, 2, recent_ns()).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        collector.wait_for_logs(2, DEADLINE).await,
        "{}",
        agent.log()
    );
    for h in collector.log_export_headers() {
        assert!(h.get(HEADER).is_none(), "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_sent_while_loki_is_down_arrive_once_after_it_is_back_across_a_kill_9() {
    let loki = LokiReceiver::start().await;
    loki.stop().await;
    let collector = OtlpReceiver::start().await;
    let relay = relay(&collector, "grpc", &loki, "");
    let t = recent_ns();
    let mut want: Vec<String> = Vec::new();

    let (mut agent, grpc, http) = relay.start().await;
    for i in 0..5 {
        let req = numbered("before", i * 10, i * 10 + 10, t);
        if i % 2 == 0 {
            send_grpc(grpc, req).await;
        } else {
            let (status, _) = post(http, "application/x-protobuf", None, req.encode_to_vec()).await;
            assert_eq!(status, 200);
        }
    }
    want.extend((0..50).map(|i| format!("before line {i}")));
    // Answered means durable: a kill -9 now loses none of it.
    agent.kill9();

    let (mut agent, grpc, _) = relay.start().await;
    send_grpc(grpc, numbered("after", 0, 10, t)).await;
    want.extend((0..10).map(|i| format!("after line {i}")));
    assert!(loki.all_entries().is_empty());

    loki.restart().await;
    agent
        .assert_shipped_once(&loki, r#"{host="vm-test"}"#, &want, Duration::from_secs(30))
        .await;
    // None twice, also once the agent has stopped (nothing resent at the drain).
    assert_eq!(agent.terminate(), Some(0));
    loki.exactly_once(r#"{host="vm-test"}"#, &want)
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    // And the collector got every record (at least once: the exporter may
    // resend what it was sending at the kill).
    assert!(
        wait_until(DEADLINE, || {
            let bodies: Vec<String> = collector.logs().into_iter().map(|l| l.body).collect();
            want.iter().all(|w| bodies.contains(w))
        })
        .await
    );
}

/// A request of `n` records of about 1 KiB each: too big for what a full disk
/// has left in a page already allocated.
fn big(service: &str, n: usize, t: u64) -> ExportLogsServiceRequest {
    let mut r = numbered(service, 0, n, t);
    for rec in &mut r.resource_logs[0].scope_logs[0].log_records {
        if let Some(any_value::Value::StringValue(s)) =
            rec.body.as_mut().and_then(|b| b.value.as_mut())
        {
            s.push(' ');
            s.push_str(&"x".repeat(1000));
        }
    }
    r
}

fn lines_of(r: &ExportLogsServiceRequest) -> Vec<String> {
    r.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .map(|l| match l.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_loki_buffer_was_full_stores_the_request_nowhere_twice() {
    // The log buffer alone on a tiny tmpfs (root only): the OTLP buffer takes
    // the request, the log buffer cannot.
    let Some(fs) = support::TinyFs::mount("2m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = relay(&collector, "http/protobuf", &loki, "");
    let spool = relay.dir.path().join("state").join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(fs.path().join("loki")).unwrap();
    std::os::unix::fs::symlink(fs.path().join("loki"), spool.join("loki")).unwrap();
    let (agent, _, http) = relay.start().await;
    let t = recent_ns();
    let first = numbered("first", 0, 3, t);
    let (status, _) = post(http, "application/x-protobuf", None, first.encode_to_vec()).await;
    assert_eq!(status, 200);
    agent
        .assert_shipped_once(&loki, r#"{job="first"}"#, &lines_of(&first), DEADLINE)
        .await;

    support::fill(&fs.path().join("filler"));
    let request = big("retried", 100, t);
    let want = lines_of(&request);
    let body = request.encode_to_vec();
    // The sender gives up waiting (the log buffer holds the append back).
    let gave_up = reqwest::Client::new()
        .post(format!("http://{http}/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .timeout(Duration::from_secs(2))
        .body(body.clone())
        .send()
        .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    // Its retry is refused at once while the log buffer cannot write.
    let (status, reason) = post(http, "application/x-protobuf", None, body.clone()).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("log buffer"), "{reason}");

    // Room again: the append held back lands; the next retry stores nothing
    // again and is answered success.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    agent
        .assert_shipped_once(&loki, r#"{job="retried"}"#, &want, DEADLINE)
        .await;
    let (status, _) = post(http, "application/x-protobuf", None, body).await;
    assert_eq!(status, 200);

    // What a second copy would have been stored before: a last request.
    let last = numbered("last", 0, 1, t);
    let (status, _) = post(http, "application/x-protobuf", None, last.encode_to_vec()).await;
    assert_eq!(status, 200);
    agent
        .assert_shipped_once(&loki, r#"{job="last"}"#, &lines_of(&last), DEADLINE)
        .await;
    assert!(
        wait_until(DEADLINE, || collector
            .logs()
            .iter()
            .any(|l| l.body == "last line 0"))
        .await
    );
    loki.exactly_once(r#"{job="retried"}"#, &want)
        .unwrap_or_else(|e| panic!("loki: {e}"));
    let relayed: Vec<String> = collector
        .logs()
        .into_iter()
        .filter(|l| l.service_name == "retried")
        .map(|l| l.body)
        .collect();
    support::exactly_once(&relayed, &want).unwrap_or_else(|e| panic!("collector: {e}"));
}

#[test]
fn config_check_shows_logs_to_loki_on_by_default_and_off_when_set() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("", "logs_to_loki = true"),
        ("[otlp]\nlogs_to_loki = false\n", "logs_to_loki = false"),
    ] {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = {:?}\n{text}",
                dir.path().join("state")
            ),
        )
        .unwrap();
        let out = support::agent_command()
            .args(["config", "check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let otlp = stdout
            .split("[otlp]")
            .nth(1)
            .and_then(|s| s.split("\n[").next())
            .unwrap_or_default();
        assert!(otlp.contains(want), "{stdout}");
    }
}
