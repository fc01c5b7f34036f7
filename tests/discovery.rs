//! Host discovery and `probe`, each VM flavour played on loopback: a hosts file
//! mapping `host.lima.internal` to 127.0.0.2, a route table whose default gateway
//! is 127.0.0.3, IPv6-only routes to ::1, and servers that refuse, hang or are
//! not ready. Nothing here touches real DNS or a non-loopback address: names
//! resolve through an injected table, routes through injected files.
//!
//! The fakes here (a Loki answering `/ready` only; an OTLP collector over gRPC and
//! HTTP) are deliberately small; they are to be replaced by the shared receivers
//! of `tests/support/`. The `--push` tests already use the shared fake Loki, on
//! the address the test bound: it stores the probe's line as Loki does and
//! answers its read-back as strictly.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use support::loki::LokiReceiver;
use tokio::task::JoinHandle;
use wisp_agent::command::probe::{self, PushStatus, PROBE_JOB};
use wisp_agent::config::Config;
use wisp_agent::discovery::{self, Check, Chosen, Inputs, Resolution, Resolver};

// ---------------------------------------------------------------- fakes

#[derive(Default)]
struct LokiState {
    ready_status: AtomicU16,
    ready_hits: AtomicUsize,
}

/// A Loki that answers `/ready` with a settable status, and counts those calls.
struct FakeLoki {
    state: Arc<LokiState>,
    task: JoinHandle<()>,
}

impl Drop for FakeLoki {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLoki {
    fn set_ready(&self, status: u16) {
        self.state.ready_status.store(status, Ordering::SeqCst);
    }
    fn ready_hits(&self) -> usize {
        self.state.ready_hits.load(Ordering::SeqCst)
    }
}

async fn ready(State(s): State<Arc<LokiState>>) -> (StatusCode, &'static str) {
    s.ready_hits.fetch_add(1, Ordering::SeqCst);
    match s.ready_status.load(Ordering::SeqCst) {
        200 => (StatusCode::OK, "ready\n"),
        code => (
            StatusCode::from_u16(code).unwrap(),
            "Ingester not ready: waiting for 15s after being ready\n",
        ),
    }
}

fn serve(listener: std::net::TcpListener, app: Router) -> JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

fn start_loki(listener: std::net::TcpListener, ready_status: u16) -> FakeLoki {
    let state = Arc::new(LokiState::default());
    state.ready_status.store(ready_status, Ordering::SeqCst);
    let app = Router::new()
        .route("/ready", get(ready))
        .with_state(state.clone());
    FakeLoki {
        state,
        task: serve(listener, app),
    }
}

/// An OTLP collector: counts the spans it is sent, over gRPC or HTTP.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start_grpc_collector(listener: std::net::TcpListener) -> (Collector, Task) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (collector, Task(task))
}

fn start_http_collector(listener: std::net::TcpListener) -> (Collector, Task) {
    let collector = Collector::default();
    let spans = collector.spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let spans = spans.clone();
            async move {
                use prost::Message;
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let n: usize = req
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                spans.fetch_add(n, Ordering::SeqCst);
                StatusCode::OK
            }
        }),
    );
    (collector, Task(serve(listener, app)))
}

/// A server that accepts connections and never answers.
fn start_hanging(listener: std::net::TcpListener) -> Task {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    Task(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    }))
}

// ---------------------------------------------------------------- helpers

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Listeners on one port shared by several loopback addresses, so that one
/// `loki.url` port serves every candidate.
fn bind_same_port(addresses: &[&str]) -> (u16, Vec<std::net::TcpListener>) {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((ip(addresses[0]), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for a in &addresses[1..] {
            match std::net::TcpListener::bind((ip(a), port)) {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == addresses.len() {
            return (port, all);
        }
    }
    panic!("no port free on all of {addresses:?}");
}

/// A port that nothing listens on (bound, then released).
fn closed_port(address: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip(address), 0)).unwrap();
    l.local_addr().unwrap().port()
}

const ROUTE_HEADER: &str =
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

fn route_v4_via(gw: Ipv4Addr) -> String {
    format!(
        "{ROUTE_HEADER}lo\t00000000\t{:08X}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
        u32::from_le_bytes(gw.octets())
    )
}

const V6_DEFAULT_VIA_LOOPBACK: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000001 00000400 00000003 00000000 00000003       lo\n";

/// Injected network facts in a temp dir; names not in `names` do not resolve.
fn inputs(
    dir: &Path,
    hosts: &str,
    route_v4: &str,
    route_v6: &str,
    names: &[(&str, &str)],
) -> Inputs {
    std::fs::write(dir.join("hosts"), hosts).unwrap();
    std::fs::write(dir.join("route"), route_v4).unwrap();
    std::fs::write(dir.join("ipv6_route"), route_v6).unwrap();
    Inputs {
        route_table: dir.join("route"),
        ipv6_route_table: dir.join("ipv6_route"),
        hosts_file: dir.join("hosts"),
        resolver: Resolver::fixed(names.iter().map(|(n, a)| (*n, vec![ip(a)]))),
        proxy_env: BTreeMap::new(),
    }
}

fn config(text: &str) -> Config {
    toml::from_str(text).unwrap()
}

/// Loki on `loki_port`, OTLP disabled, these candidates.
fn loki_only(candidates: &[&str], loki_port: u16) -> Config {
    config(&format!(
        "[host]\ncandidates = {candidates:?}\n\
         [loki]\nurl = \"http://{{host}}:{loki_port}/loki/api/v1/push\"\n\
         [otlp]\nenabled = false\n"
    ))
}

async fn wait_for<F: Fn() -> bool>(what: &str, deadline: Duration, f: F) {
    let until = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kinds(r: &probe::ProbeReport) -> Vec<&str> {
    r.diagnoses.iter().map(|d| d.kind).collect()
}

// ---------------------------------------------------------------- discovery

#[tokio::test]
async fn a_hosts_file_entry_finds_limas_host() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.2"]);
    let _loki = start_loki(ls.remove(0), 200);
    let inputs = inputs(
        dir.path(),
        "127.0.0.1 localhost\n127.0.0.2 host.lima.internal\n",
        &route_v4_via(Ipv4Addr::new(127, 0, 0, 3)),
        "",
        &[],
    );
    let cfg = loki_only(
        &["host.lima.internal", "host.docker.internal", "gateway"],
        port,
    );

    let d = discovery::discover(&cfg, &inputs).await;

    assert_eq!(
        d.chosen,
        Some(Chosen {
            name: "host.lima.internal".into(),
            address: ip("127.0.0.2")
        })
    );
    assert_eq!(
        d.candidates[0].resolution,
        Resolution::HostsFile {
            addresses: vec![ip("127.0.0.2")],
            path: dir.path().join("hosts")
        }
    );
    assert!(d.candidates[1].resolution.is_failed());
}

#[tokio::test]
async fn the_default_route_finds_the_host_when_no_name_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.3"]);
    let _loki = start_loki(ls.remove(0), 200);
    let inputs = inputs(
        dir.path(),
        "127.0.0.1 localhost\n",
        &route_v4_via(Ipv4Addr::new(127, 0, 0, 3)),
        "",
        &[],
    );
    let cfg = loki_only(
        &["host.lima.internal", "host.docker.internal", "gateway"],
        port,
    );

    let r = probe::run_probe(&cfg, &inputs, false).await;

    assert_eq!(r.chosen.as_ref().unwrap().name, "gateway");
    assert_eq!(r.chosen.as_ref().unwrap().address, ip("127.0.0.3"));
    assert_eq!(r.candidates[2].resolution.via(), "route_table");
    assert!(r.verdict.ok, "{}", r.verdict.summary);
    // The names that did not resolve are expected on this VM: not diagnosed.
    assert!(r.diagnoses.is_empty(), "{:?}", r.diagnoses);
}

#[tokio::test]
async fn names_resolve_through_the_resolver_when_the_hosts_file_lacks_them() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.5"]);
    let _loki = start_loki(ls.remove(0), 200);
    let inputs = inputs(
        dir.path(),
        "",
        ROUTE_HEADER,
        "",
        &[("host.docker.internal", "127.0.0.5")],
    );
    let cfg = loki_only(&["host.lima.internal", "host.docker.internal"], port);

    let d = discovery::discover(&cfg, &inputs).await;

    assert_eq!(d.chosen.unwrap().name, "host.docker.internal");
    assert_eq!(
        d.candidates[1].resolution,
        Resolution::Dns {
            addresses: vec![ip("127.0.0.5")]
        }
    );
}

#[tokio::test]
async fn the_first_candidate_in_order_that_answers_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ls) = bind_same_port(&["127.0.0.2", "127.0.0.3"]);
    let mut ls = ls.into_iter();
    let _a = start_loki(ls.next().unwrap(), 200);
    let _b = start_loki(ls.next().unwrap(), 200);
    let inputs = inputs(
        dir.path(),
        "127.0.0.2 host.lima.internal\n",
        &route_v4_via(Ipv4Addr::new(127, 0, 0, 3)),
        "",
        &[],
    );

    let d = discovery::discover(
        &loki_only(&["gateway", "host.lima.internal"], port),
        &inputs,
    )
    .await;

    assert_eq!(d.chosen.unwrap().name, "gateway");
}

#[tokio::test]
async fn an_ipv6_only_route_table_gives_the_ipv6_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["::1"]);
    let _loki = start_loki(ls.remove(0), 200);
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, V6_DEFAULT_VIA_LOOPBACK, &[]);

    let d = discovery::discover(&loki_only(&["gateway"], port), &inputs).await;

    assert_eq!(
        d.candidates[0].resolution,
        Resolution::RouteTable {
            address: ip("::1"),
            interface: "lo".into(),
            family: "ipv6"
        }
    );
    assert_eq!(d.chosen.unwrap().address, ip("::1"));
}

#[tokio::test]
async fn a_garbage_route_file_means_no_gateway_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(
        dir.path(),
        "\u{0}\u{1} not a hosts file",
        "garbage\n\u{0}\u{ff}\nIface x\nlo zz zz zz zz zz zz zz\n",
        "ffff not a route\n",
        &[],
    );

    let r = probe::run_probe(&loki_only(&["gateway"], 3100), &inputs, false).await;

    assert!(r.candidates[0].resolution.is_failed());
    assert!(r.chosen.is_none());
    assert!(!r.verdict.ok);
    assert_eq!(kinds(&r), ["no_default_route"]);
}

#[tokio::test]
async fn missing_route_files_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = inputs(dir.path(), "", "", "", &[]);
    inputs.route_table = dir.path().join("absent");
    inputs.ipv6_route_table = dir.path().join("absent6");

    let d = discovery::discover(&loki_only(&["gateway"], 3100), &inputs).await;

    match &d.candidates[0].resolution {
        Resolution::Failed { reason } => assert!(reason.contains("cannot read"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- bad hosts

#[tokio::test]
async fn unresolvable_names_are_diagnosed_without_real_dns() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(
        &loki_only(&["host.lima.internal", "host.docker.internal"], 3100),
        &inputs,
        false,
    )
    .await;

    assert!(r.chosen.is_none());
    assert_eq!(
        kinds(&r),
        ["name_does_not_resolve", "name_does_not_resolve"]
    );
    assert!(r.diagnoses[0].message.contains("not a Lima VM"));
    assert!(r.diagnoses[0].message.contains("gateway"));
}

#[tokio::test]
async fn a_candidate_that_accepts_and_never_answers_times_out_within_the_promise() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.4"]);
    let _hang = start_hanging(ls.remove(0));
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    for timeout in ["1s", "30s"] {
        let mut cfg = loki_only(&["127.0.0.4"], port);
        cfg.host.probe_timeout = config(&format!("[host]\nprobe_timeout = \"{timeout}\""))
            .host
            .probe_timeout;
        let started = Instant::now();
        let r = probe::run_probe(&cfg, &inputs, false).await;
        let took = started.elapsed();

        assert!(took < Duration::from_secs(5), "probe took {took:?}");
        assert!(
            matches!(r.candidates[0].services.loki.check, Check::Timeout { .. }),
            "{:?}",
            r.candidates[0].services.loki.check
        );
        assert_eq!(kinds(&r), ["timeout"]);
        assert!(r.diagnoses[0].message.contains("firewall"));
    }
}

#[tokio::test]
async fn a_refused_port_on_loopback_is_reported_as_nothing_listening_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port("127.0.0.1");
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&loki_only(&["127.0.0.1"], port), &inputs, false).await;

    assert!(matches!(
        r.candidates[0].services.loki.check,
        Check::Refused { .. }
    ));
    assert_eq!(kinds(&r), ["refused"]);
    // Publishing the port on 0.0.0.0 would not help a client on the same
    // machine: the hint for loopback says where to look instead.
    let message = &r.diagnoses[0].message;
    assert!(!message.contains("0.0.0.0"), "{message}");
    assert!(
        message.contains("this machine itself") && message.contains("host.address"),
        "{message}"
    );
}

#[tokio::test]
async fn a_loki_that_is_not_ready_is_reported_with_its_answer_and_not_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.6"]);
    let _loki = start_loki(ls.remove(0), 503);
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&loki_only(&["127.0.0.6"], port), &inputs, false).await;

    assert!(r.chosen.is_none());
    match &r.candidates[0].services.loki.check {
        Check::HttpStatus { code, body, .. } => {
            assert_eq!(*code, 503);
            assert!(body.contains("not ready"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(kinds(&r), ["not_ready"]);
    assert!(r.diagnoses[0].message.contains("Ingester not ready"));
}

// ---------------------------------------------------------------- services and verdict

#[tokio::test]
async fn loki_up_but_otlp_down_is_a_failed_verdict_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.7"]);
    let _loki = start_loki(ls.remove(0), 200);
    let otlp_port = closed_port("127.0.0.7");
    let cfg = config(&format!(
        "[host]\naddress = \"127.0.0.7\"\n\
         [loki]\nurl = \"http://{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://{{host}}:{otlp_port}\"\n"
    ));
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&cfg, &inputs, false).await;

    assert_eq!(r.chosen.as_ref().unwrap().address, ip("127.0.0.7"));
    assert!(!r.verdict.ok);
    assert_eq!(kinds(&r), ["otlp_down"]);
    assert!(r.diagnoses[0].message.contains("Loki answers"));
    assert_eq!(r.candidates[0].services.otlp_grpc.port, otlp_port);
}

#[tokio::test]
async fn loki_and_an_otlp_grpc_collector_give_a_clean_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.8"]);
    let _loki = start_loki(ls.remove(0), 200);
    let (grpc_port, mut gs) = bind_same_port(&["127.0.0.8"]);
    let (collector, _task) = start_grpc_collector(gs.remove(0));
    let cfg = config(&format!(
        "[host]\naddress = \"127.0.0.8\"\n\
         [loki]\nurl = \"http://{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://{{host}}:{grpc_port}\"\n"
    ));
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&cfg, &inputs, false).await;

    assert!(r.verdict.ok, "{}", r.verdict.summary);
    assert!(r.candidates[0].services.otlp_grpc.check.is_ok());
    assert!(r.diagnoses.is_empty(), "{:?}", r.diagnoses);
    // The check is an empty export: no span reaches the collector.
    assert_eq!(collector.spans.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_loki_disabled_the_otlp_port_chooses_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.9"]);
    let (_collector, _task) = start_http_collector(ls.remove(0));
    let cfg = config(&format!(
        "[host]\ncandidates = [\"127.0.0.10\", \"127.0.0.9\"]\n\
         [loki]\nenabled = false\n\
         [otlp]\nendpoint = \"http://{{host}}:{port}\"\nprotocol = \"http/protobuf\"\n"
    ));
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    assert_eq!(
        discovery::discover(&cfg, &inputs)
            .await
            .chosen
            .unwrap()
            .address,
        ip("127.0.0.9")
    );
    let r = probe::run_probe(&cfg, &inputs, false).await;
    assert!(r.verdict.ok, "{}", r.verdict.summary);
    assert!(r.candidates[1].services.otlp_http.required);
}

#[tokio::test]
async fn proxy_variables_that_do_not_spare_the_host_are_diagnosed_without_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.2"]);
    let _loki = start_loki(ls.remove(0), 200);
    let mut inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);
    inputs.proxy_env.insert(
        "HTTPS_PROXY".into(),
        "http://user:hunter2@proxy.corp:3128".into(),
    );
    inputs
        .proxy_env
        .insert("NO_PROXY".into(), "localhost,.corp".into());
    let cfg = loki_only(&["127.0.0.2"], port);

    let r = probe::run_probe(&cfg, &inputs, false).await;

    // The check itself went direct, whatever the proxy variables say.
    assert!(r.verdict.ok);
    assert_eq!(kinds(&r), ["proxy"]);
    assert!(r.diagnoses[0].message.contains("HTTPS_PROXY"));
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("hunter2"));

    inputs
        .proxy_env
        .insert("NO_PROXY".into(), "localhost,127.0.0.0/8".into());
    assert!(probe::run_probe(&cfg, &inputs, false)
        .await
        .diagnoses
        .is_empty());
}

#[tokio::test]
async fn credentials_in_urls_never_reach_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.2"]);
    let _loki = start_loki(ls.remove(0), 200);
    let otlp_port = closed_port("127.0.0.2");
    let cfg = config(&format!(
        "[host]\naddress = \"127.0.0.2\"\n\
         [loki]\nurl = \"http://probe:s3cret@{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://probe:s3cret@{{host}}:{otlp_port}\"\nprotocol = \"http/protobuf\"\n"
    ));
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&cfg, &inputs, false).await;

    assert!(r.candidates[0].services.loki.check.is_ok());
    let json = serde_json::to_string(&r).unwrap();
    let text = probe::render_text(&r);
    assert!(!json.contains("s3cret"), "{json}");
    assert!(!text.contains("s3cret"), "{text}");
}

// ---------------------------------------------------------------- --push

/// The stream the probe pushes its line to (docs/probe.md).
fn probe_stream() -> String {
    format!("{{job=\"{PROBE_JOB}\"}}")
}

/// The line the probe pushes (docs/probe.md).
fn probe_line(token: &str) -> String {
    format!("wisp-agent probe test line {token}")
}

#[tokio::test]
async fn push_sends_a_line_reads_it_back_and_sends_a_span_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.2"]);
    let loki = LokiReceiver::start_on(ls.remove(0));
    let (grpc_port, mut gs) = bind_same_port(&["127.0.0.2"]);
    let (collector, _task) = start_grpc_collector(gs.remove(0));
    let cfg = config(&format!(
        "[host]\ncandidates = [\"host.lima.internal\"]\n\
         [loki]\nurl = \"http://{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://{{host}}:{grpc_port}\"\n"
    ));
    let inputs = inputs(
        dir.path(),
        "127.0.0.2 host.lima.internal\n",
        ROUTE_HEADER,
        "",
        &[],
    );

    let r = probe::run_probe(&cfg, &inputs, true).await;

    let push = r.push.as_ref().unwrap();
    assert_eq!(push.loki.status, PushStatus::Ok, "{}", push.loki.detail);
    assert_eq!(push.otlp.status, PushStatus::Ok, "{}", push.otlp.detail);
    assert!(r.verdict.ok, "{}", r.verdict.summary);
    // One line, stored once, and read back through query_range.
    assert_eq!(
        loki.exactly_once(&probe_stream(), &[probe_line(&push.token)]),
        Ok(())
    );
    assert!(loki.queries() >= 1);
    assert_eq!(collector.spans.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn push_over_otlp_http_reports_the_collectors_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.2"]);
    let loki = LokiReceiver::start_on(ls.remove(0));
    let (http_port, mut hs) = bind_same_port(&["127.0.0.2"]);
    let (collector, _task) = start_http_collector(hs.remove(0));
    let cfg = config(&format!(
        "[host]\naddress = \"127.0.0.2\"\n\
         [loki]\nurl = \"http://{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://{{host}}:{http_port}\"\nprotocol = \"http/protobuf\"\n"
    ));
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&cfg, &inputs, true).await;

    let push = r.push.unwrap();
    assert_eq!(push.otlp.status, PushStatus::Ok, "{}", push.otlp.detail);
    assert_eq!(collector.spans.load(Ordering::SeqCst), 1);
    assert_eq!(
        loki.exactly_once(&probe_stream(), &[probe_line(&push.token)]),
        Ok(())
    );
}

#[tokio::test]
async fn a_push_to_a_loki_that_drops_lines_fails_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut ls) = bind_same_port(&["127.0.0.2"]);
    // `/ready` answers, but the push path does not exist.
    let app = Router::new().route("/ready", get(|| async { "ready" }));
    let _task = Task(serve(ls.remove(0), app));
    let cfg = loki_only(&["127.0.0.2"], port);
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);

    let r = probe::run_probe(&cfg, &inputs, true).await;

    let push = r.push.as_ref().unwrap();
    assert_eq!(push.loki.status, PushStatus::Failed);
    assert!(push.loki.detail.contains("404"), "{}", push.loki.detail);
    assert_eq!(push.otlp.status, PushStatus::Skipped);
    assert!(!r.verdict.ok);
    assert_eq!(kinds(&r), ["push_failed"]);
}

// ---------------------------------------------------------------- rediscovery

#[tokio::test]
async fn rediscovery_keeps_the_old_host_until_another_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ls) = bind_same_port(&["127.0.0.2", "127.0.0.3"]);
    let mut ls = ls.into_iter();
    let first = start_loki(ls.next().unwrap(), 200);
    let second = start_loki(ls.next().unwrap(), 503);
    let mut cfg = loki_only(&["127.0.0.2", "127.0.0.3"], port);
    cfg.host.rediscover_interval = config("[host]\nrediscover_interval = \"50ms\"")
        .host
        .rediscover_interval;
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);
    let cancel = tokio_util::sync::CancellationToken::new();

    let (rx, _health) = discovery::watch(cfg, inputs, cancel.clone());
    let chosen =
        |rx: &tokio::sync::watch::Receiver<Option<Chosen>>| rx.borrow().as_ref().map(|c| c.address);
    wait_for("the first host", Duration::from_secs(5), || {
        chosen(&rx) == Some(ip("127.0.0.2"))
    })
    .await;

    // The first host goes away and the second is not ready: rounds run (the
    // second host sees them) and the choice stays where data last went.
    drop(first);
    let hits = second.ready_hits();
    wait_for("two more rounds", Duration::from_secs(5), || {
        second.ready_hits() >= hits + 2
    })
    .await;
    assert_eq!(chosen(&rx), Some(ip("127.0.0.2")));

    second.set_ready(200);
    wait_for("the second host", Duration::from_secs(5), || {
        chosen(&rx) == Some(ip("127.0.0.3"))
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn repeated_sink_failures_trigger_rediscovery_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ls) = bind_same_port(&["127.0.0.2", "127.0.0.3"]);
    let mut ls = ls.into_iter();
    let first = start_loki(ls.next().unwrap(), 200);
    let second = start_loki(ls.next().unwrap(), 503);
    // The interval alone would not run again during this test.
    let cfg = loki_only(&["127.0.0.2", "127.0.0.3"], port);
    let inputs = inputs(dir.path(), "", ROUTE_HEADER, "", &[]);
    let cancel = tokio_util::sync::CancellationToken::new();

    let (rx, health) = discovery::watch(cfg, inputs, cancel.clone());
    wait_for("the first host", Duration::from_secs(5), || {
        rx.borrow().as_ref().map(|c| c.address) == Some(ip("127.0.0.2"))
    })
    .await;

    drop(first);
    second.set_ready(200);
    health.report_failure();
    health.report_failure();
    health.report_failure();
    wait_for("the second host", Duration::from_secs(5), || {
        rx.borrow().as_ref().map(|c| c.address) == Some(ip("127.0.0.3"))
    })
    .await;
    cancel.cancel();
}

// ---------------------------------------------------------------- the binary

async fn run_probe_binary(config_text: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut cmd = tokio::process::Command::from(support::agent_command());
    cmd.arg("probe").args(args).arg("--config").arg(&path);
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn probe_json_exits_0_when_loki_and_otlp_answer() {
    let (port, mut ls) = bind_same_port(&["127.0.0.1"]);
    let _loki = start_loki(ls.remove(0), 200);
    let (grpc_port, mut gs) = bind_same_port(&["127.0.0.1"]);
    let (_collector, _task) = start_grpc_collector(gs.remove(0));
    let text = format!(
        "[host]\naddress = \"127.0.0.1\"\n\
         [loki]\nurl = \"http://{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://{{host}}:{grpc_port}\"\n"
    );

    let (code, stdout) = run_probe_binary(&text, &["--json"]).await;

    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(doc["verdict"]["ok"], true);
    assert_eq!(doc["chosen"]["address"], "127.0.0.1");
    assert_eq!(doc["candidates"][0]["resolution"]["via"], "literal");
    assert_eq!(doc["candidates"][0]["services"]["loki"]["status"], "ok");
    assert_eq!(
        doc["candidates"][0]["services"]["otlp_grpc"]["status"],
        "ok"
    );
}

#[tokio::test]
async fn probe_exits_1_when_nothing_answers_and_2_on_a_configuration_error() {
    let port = closed_port("127.0.0.1");
    let text = format!(
        "[host]\naddress = \"127.0.0.1\"\n\
         [loki]\nurl = \"http://{{host}}:{port}/loki/api/v1/push\"\n\
         [otlp]\nendpoint = \"http://{{host}}:{port}\"\n"
    );

    let (code, stdout) = run_probe_binary(&text, &["--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(code, 1);
    assert_eq!(doc["chosen"], serde_json::Value::Null);
    assert_eq!(doc["diagnoses"][0]["kind"], "refused");

    let (code, stdout) = run_probe_binary(&text, &[]).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("chosen host: none"), "{stdout}");
    // 127.0.0.1 is this machine: no advice to publish a port on 0.0.0.0.
    assert!(
        stdout.contains("this machine itself") && !stdout.contains("publish the port"),
        "{stdout}"
    );

    let (code, _) = run_probe_binary("[host]\nadress = \"x\"\n", &["--json"]).await;
    assert_eq!(code, 2);
}
