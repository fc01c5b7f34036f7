//! The admin endpoint of the running daemon: `/metrics` in the Prometheus text
//! format counts what was tailed, parsed, buffered and shipped; `/healthz`
//! answers while the pipeline runs; `listen = ""` binds nothing; a port in use
//! does not stop the shipping of logs.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use support::agent::{Relay, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::{append, fill, wait_until, TinyFs, DEADLINE};

/// Pino lines numbered `from..to`, stamped now so Loki's window accepts them.
fn pino_lines(from: usize, to: usize) -> Vec<String> {
    support::pino_lines(30, "line", from, to)
}

/// The stream selector of the file lines these tests write.
const APP: &str = r#"{job="app"}"#;

/// A parsed `/metrics` page: sample values by their full `name{labels}`, and
/// each family's type.
struct Page {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Page {
    fn get(&self, name: &str) -> f64 {
        match self.samples.get(name) {
            Some(v) => *v,
            None => panic!("no sample {name}; have {:?}", self.samples.keys()),
        }
    }
}

/// Parses the text exposition format 0.0.4 strictly: only `# HELP name text`,
/// `# TYPE name counter|gauge` and `name{label="value",...} value` lines; a HELP
/// and a TYPE before each family's first sample, once; a family's samples
/// together; label values with only `\\`, `\"` and `\n` escapes; `*_total`
/// names are counters.
fn parse_exposition(text: &str) -> Result<Page, String> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn labels(s: &str) -> Result<(), String> {
        // s is what is inside the braces.
        let mut rest = s;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"").ok_or(format!("label in {s}"))?;
            if !is_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        other => return Err(format!("bad escape {other:?} in {s}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err(format!("raw newline in {s}")),
                    Some(_) => {}
                    None => return Err(format!("unterminated value in {s}")),
                }
            };
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.is_empty() {
                return Err(format!("junk after a label value in {s}"));
            }
        }
        Ok(())
    }
    if !text.ends_with('\n') {
        return Err("the page does not end with a newline".into());
    }
    let mut helped = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen_families = HashSet::new();
    let mut current = String::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("HELP: {line}"))?;
            if !is_name(name) || help.is_empty() || !helped.insert(name.to_string()) {
                return Err(format!("bad or repeated HELP: {line}"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("TYPE: {line}"))?;
            if !matches!(kind, "counter" | "gauge") || !helped.contains(name) {
                return Err(format!("bad TYPE, or TYPE without HELP: {line}"));
            }
            if name.ends_with("_total") != (kind == "counter") {
                return Err(format!("a counter is named *_total, nothing else: {line}"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("repeated TYPE: {line}"));
            }
        } else if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line {line:?}"));
        } else {
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            let family = match series.split_once('{') {
                Some((family, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .ok_or(format!("unclosed labels: {line}"))?;
                    labels(inner)?;
                    family
                }
                None => series,
            };
            if !is_name(family) || !types.contains_key(family) {
                return Err(format!("sample without TYPE or bad name: {line}"));
            }
            if family != current {
                if !seen_families.insert(family.to_string()) {
                    return Err(format!("samples of {family} are not together"));
                }
                current = family.to_string();
            }
            let v: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
            if samples.insert(series.to_string(), v).is_some() {
                return Err(format!("repeated series: {line}"));
            }
        }
    }
    Ok(Page { samples, types })
}

async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> Result<Page, String> {
    let r = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if content_type != "text/plain; version=0.0.4; charset=utf-8" {
        return Err(format!("content type {content_type:?}"));
    }
    let text = r.text().await.map_err(|e| e.to_string())?;
    parse_exposition(&text).map_err(|e| format!("{e}\n{text}"))
}

/// Scrapes until `cond` holds on the page (the sink counts a push only once
/// Loki's answer is back, just after Loki has the lines).
async fn scrape_until(
    client: &reqwest::Client,
    addr: SocketAddr,
    mut cond: impl FnMut(&Page) -> bool,
) -> Page {
    let mut last = Err(String::from("never scraped"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut held = false;
    while !held && tokio::time::Instant::now() < deadline {
        last = scrape(client, addr).await;
        held = last.as_ref().is_ok_and(&mut cond);
        if !held {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match last {
        Ok(page) if held => page,
        Ok(page) => panic!("condition never held; last page: {:?}", page.samples),
        Err(e) => panic!("cannot scrape /metrics: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_line_tailed_parsed_buffered_and_shipped() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    // Port 0: the agent binds a free port and logs which.
    setup.set_admin_listen("127.0.0.1:0");
    let file = setup.log_path("api.log");
    let lines = pino_lines(0, 5);
    append(&file, &lines);
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;

    let client = reqwest::Client::new();
    let page = scrape_until(&client, addr, |p| {
        p.samples.get("wisp_loki_records_shipped_total") == Some(&5.0)
    })
    .await;
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert_eq!(page.get("wisp_file_lines_read_total"), 5.0);
    assert_eq!(page.get("wisp_file_bytes_read_total"), bytes as f64);
    assert_eq!(page.get("wisp_file_files_open"), 1.0);
    assert_eq!(page.get("wisp_file_lines_cut_total"), 0.0);
    assert_eq!(page.get("wisp_parse_lines_total"), 5.0);
    assert_eq!(page.get("wisp_parse_json_lines_total"), 5.0);
    assert_eq!(page.get("wisp_parse_misses_total"), 0.0);
    assert_eq!(
        page.get("wisp_spool_records_appended_total{spool=\"loki\"}"),
        5.0
    );
    assert_eq!(
        page.get("wisp_spool_records_read_total{spool=\"loki\"}"),
        5.0
    );
    assert_eq!(
        page.get("wisp_spool_records_dropped_total{spool=\"loki\"}"),
        0.0
    );
    assert_eq!(page.get("wisp_loki_records_shipped_total"), 5.0);
    assert_eq!(
        page.get("wisp_loki_batches_shipped_total"),
        loki.pushes() as f64
    );
    assert_eq!(page.get("wisp_loki_retries_total"), 0.0);
    assert!(page.get("wisp_loki_last_push_timestamp_seconds") > 1.7e9);
    assert_eq!(
        page.get(&format!(
            "wisp_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(page.get("wisp_host_chosen"), 1.0);
    assert_eq!(
        page.get("wisp_host_info{candidate=\"127.0.0.1\",host=\"127.0.0.1\"}"),
        1.0
    );
    assert!(page.get("process_resident_memory_bytes") > 0.0);
    assert!(page.get("process_open_fds") > 0.0);
    assert!(page.get("process_start_time_seconds") > 1.7e9);
    assert_eq!(page.types["process_cpu_seconds_total"], "counter");
    assert_eq!(page.types["wisp_spool_bytes_buffered"], "gauge");
    // `otlp.enabled = false`: no relay, so no relay metrics and no second spool.
    assert!(
        page.samples
            .keys()
            .all(|k| !k.starts_with("wisp_otlp_") && !k.contains("spool=\"otlp\"")),
        "{:?}",
        page.samples.keys()
    );

    // More lines move the counters by exactly as many.
    let more = pino_lines(5, 8);
    append(&file, &more);
    let mut lines = lines;
    lines.extend(more);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    let page = scrape_until(&client, addr, |p| {
        p.samples.get("wisp_loki_records_shipped_total") == Some(&8.0)
    })
    .await;
    assert_eq!(page.get("wisp_file_lines_read_total"), 8.0);
    assert_eq!(
        page.get("wisp_spool_records_appended_total{spool=\"loki\"}"),
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ok_while_running_other_paths_404_other_methods_405() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    let mut agent = setup.start();
    let addr = agent.admin_addr().await;
    let client = reqwest::Client::new();

    let r = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");

    for path in ["/", "/metric", "/metrics/x", "/health"] {
        let r = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "GET {path}");
    }
    for path in ["/metrics", "/healthz"] {
        let r = client
            .post(format!("http://{addr}{path}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "POST {path}");
        let r = client
            .delete(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "DELETE {path}");
    }

    // It stops with the agent: the port is closed after a clean exit.
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// The inodes of the TCP sockets in LISTEN state on this machine.
fn listening_socket_inodes() -> HashSet<String> {
    let mut out = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" {
                out.insert(f[9].to_string());
            }
        }
    }
    out
}

/// The socket inodes a process holds open.
fn socket_inodes_of(pid: u32) -> HashSet<String> {
    let mut out = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                out.insert(inode.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_listen_address_binds_nothing_and_still_ships() {
    let loki = LokiReceiver::start().await;
    // The harness default: `[admin] listen = ""`, and no OTLP receivers.
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    let lines = pino_lines(0, 3);
    append(&file, &lines);
    let agent = setup.start();
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    let log = agent.log();
    assert!(log.contains("admin endpoint disabled"), "{log}");
    assert!(!log.contains("admin endpoint: http"), "{log}");
    let pid = agent.pid().unwrap();
    let listening = listening_socket_inodes();
    let held = socket_inodes_of(pid);
    assert!(
        held.is_disjoint(&listening),
        "the agent listens on a TCP socket: {:?}",
        held.intersection(&listening).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_logged_logs_still_ship_and_the_endpoint_comes_up_once_it_is_free() {
    let loki = LokiReceiver::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen(&addr.to_string());
    let file = setup.log_path("api.log");
    let lines = pino_lines(0, 4);
    append(&file, &lines);
    let agent = setup.start();

    assert!(
        wait_until(DEADLINE, || agent
            .log()
            .contains("cannot listen on admin.listen"))
        .await,
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains(&format!("\"{addr}\"")), "{log}");
    assert!(log.contains("logs are still shipped"), "{log}");
    assert!(log.contains("set admin.listen to a free address"), "{log}");
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;

    // Freed: the agent binds it at its next try.
    drop(taken);
    let client = reqwest::Client::new();
    let page = scrape_until(&client, addr, |p| {
        p.samples.get("wisp_loki_records_shipped_total") == Some(&4.0)
    })
    .await;
    assert_eq!(page.get("wisp_file_lines_read_total"), 4.0);
    assert!(agent
        .log()
        .contains(&format!("admin endpoint: http://{addr}/metrics")));
}

#[test]
fn a_listen_address_that_does_not_parse_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[host]\naddress = \"127.0.0.1\"\n\n[admin]\nlisten = \"localhost:9465\"\n",
    )
    .unwrap();
    let out = support::agent_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("WISP_HOST", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.listen"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9465"), "{stderr}");
}

/// A trace export with one span named `name`; `pad` bytes of attribute make it
/// as large as a test needs.
fn span_request(name: &str, pad: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![0xab; 16],
                    span_id: vec![7; 8],
                    name: name.into(),
                    kind: 2,
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    attributes: vec![KeyValue {
                        key: "pad".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("x".repeat(pad))),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn log_request(body: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000,
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

/// POSTs an OTLP/HTTP protobuf body to the agent's receiver; the status and body.
async fn post_protobuf(
    client: &reqwest::Client,
    http: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let r = client
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_otlp_requests_received_buffered_and_exported_beside_the_log_spool() {
    let collector = OtlpReceiver::start().await;
    let loki = LokiReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    relay.set_admin_listen("127.0.0.1:0");
    let (agent, grpc, http) = relay.start().await;
    let addr = agent.admin_addr().await;
    let client = reqwest::Client::new();

    // Three spans over gRPC, two over HTTP, one log record over HTTP.
    let mut bytes = 0;
    let mut grpc_client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for i in 0..3 {
        let req = span_request(&format!("grpc {i}"), 10);
        bytes += req.encoded_len();
        grpc_client.export(req).await.unwrap();
    }
    for i in 0..2 {
        let body = span_request(&format!("http {i}"), 20).encode_to_vec();
        bytes += body.len();
        assert_eq!(
            post_protobuf(&client, http, "/v1/traces", body).await.0,
            200
        );
    }
    let body = log_request("a log record").encode_to_vec();
    bytes += body.len();
    assert_eq!(post_protobuf(&client, http, "/v1/logs", body).await.0, 200);
    // And one malformed request, refused.
    let (status, _) = post_protobuf(&client, http, "/v1/traces", vec![0xff; 5]).await;
    assert_eq!(status, 400);
    // Two file lines, through the other spool.
    let lines = [r#"{"level":30,"msg":"one"}"#, r#"{"level":30,"msg":"two"}"#].map(String::from);
    append(&relay.dir.path().join("logs").join("app.log"), &lines);

    assert!(
        collector.wait_for_spans(5, DEADLINE).await && collector.wait_for_logs(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    // The log record goes to Loki too (otlp.logs_to_loki, on by default).
    let page = scrape_until(&client, addr, |p| {
        p.samples.get("wisp_otlp_requests_shipped_total") == Some(&6.0)
            && p.samples.get("wisp_loki_records_shipped_total") == Some(&3.0)
    })
    .await;
    assert_eq!(page.get("wisp_otlp_logs_to_loki_total"), 1.0);
    let traces = "wisp_otlp_receiver_requests_total{signal=\"traces\"}";
    assert_eq!(page.get(traces), 5.0);
    assert_eq!(
        page.get("wisp_otlp_receiver_requests_total{signal=\"logs\"}"),
        1.0
    );
    assert_eq!(
        page.get("wisp_otlp_receiver_requests_total{signal=\"metrics\"}"),
        0.0
    );
    assert_eq!(page.get("wisp_otlp_receiver_bytes_total"), bytes as f64);
    assert_eq!(page.get("wisp_otlp_receiver_requests_invalid_total"), 1.0);
    assert_eq!(page.get("wisp_otlp_receiver_requests_refused_total"), 0.0);
    assert_eq!(
        page.get("wisp_otlp_exports_total"),
        collector.exports() as f64
    );
    assert!(page.get("wisp_otlp_bytes_shipped_total") > bytes as f64 * 0.5);
    assert_eq!(page.get("wisp_otlp_retries_total"), 0.0);
    assert_eq!(page.types["wisp_otlp_receiver_requests_total"], "counter");
    // The two spools, told apart by their label.
    assert_eq!(
        page.get("wisp_spool_records_appended_total{spool=\"otlp\"}"),
        6.0
    );
    assert_eq!(
        page.get("wisp_spool_records_read_total{spool=\"otlp\"}"),
        6.0
    );
    assert_eq!(
        page.get("wisp_spool_records_appended_total{spool=\"loki\"}"),
        3.0
    );
    assert_eq!(
        page.get("wisp_spool_records_read_total{spool=\"loki\"}"),
        3.0
    );
    assert!(page.get("wisp_spool_max_bytes{spool=\"otlp\"}") > 0.0);
    assert_eq!(
        page.get("wisp_spool_max_bytes{spool=\"otlp\"}"),
        page.get("wisp_spool_max_bytes{spool=\"loki\"}"),
        "both on: each spool has half of buffer.max_bytes"
    );
    assert!(
        page.samples
            .keys()
            .filter(|k| k.starts_with("wisp_spool_"))
            .all(|k| k.contains("{spool=\"loki\"") || k.contains("{spool=\"otlp\"")),
        "{:?}",
        page.samples.keys()
    );

    // One more span moves the counters by exactly one.
    grpc_client.export(span_request("late", 10)).await.unwrap();
    let page = scrape_until(&client, addr, |p| {
        p.samples.get("wisp_otlp_requests_shipped_total") == Some(&7.0)
    })
    .await;
    assert_eq!(page.get(traces), 6.0);
    assert_eq!(
        page.get("wisp_spool_records_appended_total{spool=\"otlp\"}"),
        7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_only_mode_serves_metrics_and_healthz() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "http/protobuf", None);
    relay.set_admin_listen("127.0.0.1:0");
    let (mut agent, grpc, _) = relay.start().await;
    let addr = agent.admin_addr().await;
    let client = reqwest::Client::new();

    let r = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");

    TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .export(span_request("only otlp", 0))
        .await
        .unwrap();
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "{}",
        agent.log()
    );
    let page = scrape_until(&client, addr, |p| {
        p.samples.get("wisp_otlp_requests_shipped_total") == Some(&1.0)
    })
    .await;
    assert_eq!(
        page.get("wisp_otlp_receiver_requests_total{signal=\"traces\"}"),
        1.0
    );
    assert_eq!(
        page.get("wisp_spool_records_appended_total{spool=\"otlp\"}"),
        1.0
    );
    assert!(page.get("process_resident_memory_bytes") > 0.0);
    assert!(
        page.samples.keys().all(|k| !k.starts_with("wisp_file_")
            && !k.starts_with("wisp_parse_")
            && !k.starts_with("wisp_loki_")
            && !k.contains("spool=\"loki\"")),
        "loki.enabled = false: no file-log metrics; {:?}",
        page.samples.keys()
    );

    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_otlp_buffer_cannot_write_and_ok_once_it_can() {
    let Some(fs) = TinyFs::mount("1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let collector = OtlpReceiver::start().await;
    collector.stop().await;
    let state = fs.path().join("state");
    let relay = Relay::with_state_dir(&collector, "grpc", None, Some(&state));
    relay.set_admin_listen("127.0.0.1:0");
    let (agent, _, http) = relay.start().await;
    let addr = agent.admin_addr().await;
    let client = reqwest::Client::new();
    let healthz = || async {
        let r = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(healthz().await.0, 200);

    // The disk fills: a request larger than a page cannot be appended.
    let filler = fs.path().join("filler");
    fill(&filler);
    let big = span_request("too big for the disk", 64 * 1024).encode_to_vec();
    let (status, reason) = post_protobuf(&client, http, "/v1/traces", big.clone()).await;
    assert_eq!(status, 503, "{reason}");
    let (status, body) = healthz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("otlp buffer"), "{body}");
    assert!(body.contains("space"), "{body}");
    let page = scrape(&client, addr).await.unwrap();
    assert_eq!(page.get("wisp_otlp_receiver_requests_refused_total"), 1.0);

    // Space again: the next request is taken and the agent is healthy.
    std::fs::remove_file(&filler).unwrap();
    let (status, reason) = post_protobuf(&client, http, "/v1/traces", big).await;
    assert_eq!(status, 200, "{reason}");
    assert_eq!(healthz().await, (200, "ok\n".to_string()));
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_host_metrics_are_exported_but_not_counted_as_received() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    relay.set_admin_listen("127.0.0.1:0");
    let text = std::fs::read_to_string(&relay.config).unwrap();
    let on = text.replace(
        "[host_metrics]\nenabled = false",
        "[host_metrics]\nenabled = true\ninterval = \"200ms\"",
    );
    assert_ne!(
        on, text,
        "the relay config has a [host_metrics] section to turn on"
    );
    std::fs::write(&relay.config, on).unwrap();
    let (agent, _, _) = relay.start().await;
    let addr = agent.admin_addr().await;
    let client = reqwest::Client::new();
    assert!(
        collector.wait_for_exports(2, DEADLINE).await,
        "no host metrics exported; agent log:\n{}",
        agent.log()
    );
    let page = scrape_until(&client, addr, |p| {
        p.samples
            .get("wisp_otlp_requests_shipped_total")
            .is_some_and(|&n| n >= 2.0)
    })
    .await;
    assert_eq!(
        page.get("wisp_otlp_receiver_requests_total{signal=\"metrics\"}"),
        0.0
    );
    assert_eq!(page.get("wisp_otlp_receiver_bytes_total"), 0.0);
}
