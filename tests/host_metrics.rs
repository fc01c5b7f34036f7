//! Host metrics end to end: the built binary samples `/proc` every
//! `host_metrics.interval` and relays the samples through its OTLP spool to the
//! fake collector, across a collector outage; off when configured off, and when
//! `[otlp]` is off.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use support::agent::{Agent, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::{wait_until, DEADLINE};

/// An agent exporting to `collector` over gRPC, with a local gRPC receiver, host
/// metrics as `host_metrics` says, and Loki on when given.
struct Vm {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Vm {
    fn new(collector: &OtlpReceiver, host_metrics: &str, loki: Option<&LokiReceiver>) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let loki_section = match loki {
            Some(l) => format!(
                "url = \"http://{{host}}:{}/loki/api/v1/push\"\nbatch_max_wait = \"100ms\"",
                l.addr().port()
            ),
            None => "enabled = false".to_string(),
        };
        let text = format!(
            r#"[agent]
state_dir = "{state}"
hostname = "vm-metrics"

[host]
address = "127.0.0.1"

[loki]
{loki_section}

[otlp]
endpoint = "{endpoint}"
protocol = "grpc"
timeout = "2s"
max_backoff = "300ms"
resource_attributes = {{ "deployment.environment" = "test" }}

[receiver]
grpc = "127.0.0.1:0"
http = ""

[host_metrics]
{host_metrics}

[admin]
listen = ""

[exec]
socket = "{socket}"
"#,
            state = dir.path().join("state").display(),
            socket = dir.path().join("exec.sock").display(),
            endpoint = collector.grpc_endpoint(),
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        Vm { dir, config }
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config, &self.dir.path().join("agent.stderr"))
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn text_of(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text_of(kv.value.as_ref())))
        .collect()
}

/// Every metric received, with its resource's attributes.
fn metrics(requests: &[ExportMetricsServiceRequest]) -> Vec<(BTreeMap<String, String>, Metric)> {
    let mut out = Vec::new();
    for r in requests {
        for rm in &r.resource_metrics {
            let resource = attrs(
                &rm.resource
                    .clone()
                    .unwrap_or_else(Resource::default)
                    .attributes,
            );
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    out.push((resource.clone(), m.clone()));
                }
            }
        }
    }
    out
}

fn points(m: &Metric) -> &[NumberDataPoint] {
    match &m.data {
        Some(metric::Data::Sum(s)) => &s.data_points,
        Some(metric::Data::Gauge(g)) => &g.data_points,
        _ => &[],
    }
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        Some(number_data_point::Value::AsDouble(v)) => v,
        None => f64::NAN,
    }
}

fn named<'a>(all: &'a [(BTreeMap<String, String>, Metric)], name: &str) -> Vec<&'a Metric> {
    all.iter()
        .filter(|(_, m)| m.name == name)
        .map(|(_, m)| m)
        .collect()
}

/// The timestamps of the `system.memory.usage` samples received.
fn sample_times(collector: &OtlpReceiver) -> BTreeSet<u64> {
    let all = metrics(&collector.metric_requests());
    named(&all, "system.memory.usage")
        .iter()
        .flat_map(|m| points(m).iter().map(|p| p.time_unix_nano))
        .collect()
}

fn mem_total_bytes() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024.0
}

fn listening(log: &str, marker: &str) -> Option<SocketAddr> {
    let at = log.rfind(marker)? + marker.len();
    log[at..].split_whitespace().next()?.parse().ok()
}

async fn send_span(addr: SocketAddr, name: &str) {
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the agent's grpc receiver");
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: name.into(),
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    client
        .export(request)
        .await
        .expect("the agent acknowledges the span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_reach_the_collector_with_sane_values() {
    let collector = OtlpReceiver::start().await;
    // Loki on as well: host metrics run beside the tailer.
    let loki = LokiReceiver::start().await;
    let vm = Vm::new(
        &collector,
        "enabled = true\ninterval = \"200ms\"",
        Some(&loki),
    );
    let mut agent = vm.start();
    assert!(
        wait_until(DEADLINE, || !sample_times(&collector).is_empty()).await,
        "no host metrics arrived; agent log:\n{}",
        agent.log()
    );
    let all = metrics(&collector.metric_requests());
    let (resource, _) = &all[0];
    assert_eq!(
        resource.get("host.name").map(String::as_str),
        Some("vm-metrics")
    );
    assert_eq!(resource.get("os.type").map(String::as_str), Some("linux"));
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("wisp-agent")
    );
    assert_eq!(
        resource.get("deployment.environment").map(String::as_str),
        Some("test")
    );

    // Memory: used is more than nothing and less than all of it.
    let usage = named(&all, "system.memory.usage");
    let m = usage[0];
    assert_eq!(m.unit, "By");
    let Some(metric::Data::Sum(sum)) = &m.data else {
        panic!("system.memory.usage is a sum: {m:?}")
    };
    assert!(!sum.is_monotonic);
    let states: BTreeMap<String, f64> = sum
        .data_points
        .iter()
        .map(|p| {
            (
                attrs(&p.attributes)["system.memory.state"].clone(),
                value(p),
            )
        })
        .collect();
    let total = mem_total_bytes();
    let used = states["used"];
    assert!(
        used > 0.0 && used < total,
        "used {used} of {total}: {states:?}"
    );
    assert!(states["free"] > 0.0 && states["free"] < total, "{states:?}");

    // CPU time: a cumulative monotonic sum in seconds per mode, from boot.
    let cpu = named(&all, "system.cpu.time");
    let m = cpu[0];
    assert_eq!(m.unit, "s");
    let Some(metric::Data::Sum(sum)) = &m.data else {
        panic!("system.cpu.time is a sum: {m:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let modes: BTreeMap<String, f64> = sum
        .data_points
        .iter()
        .map(|p| (attrs(&p.attributes)["cpu.mode"].clone(), value(p)))
        .collect();
    assert!(modes["user"] > 0.0 && modes["idle"] > 0.0, "{modes:?}");
    let uptime_s: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // No CPU spends more time in a mode than the machine has been up (with
    // room for CPUs this process may not see).
    assert!(
        modes["user"] < uptime_s * cpus * 4.0,
        "{modes:?} after {uptime_s}s up"
    );
    for p in &sum.data_points {
        assert!(
            p.start_time_unix_nano > 0 && p.start_time_unix_nano < p.time_unix_nano,
            "{p:?}"
        );
    }

    // Load average: a gauge, a number not below zero.
    let load = named(&all, "system.cpu.load_average.1m");
    let m = load[0];
    assert!(matches!(m.data, Some(metric::Data::Gauge(_))), "{m:?}");
    let v = value(&points(m)[0]);
    assert!(v.is_finite() && v >= 0.0, "load {v}");

    // More samples follow at the interval; the agent then stops cleanly.
    assert!(
        wait_until(DEADLINE, || sample_times(&collector).len() >= 3).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "agent log:\n{}", agent.log());
    // Samples are not log lines, and no file was written: Loki got nothing.
    assert_eq!(loki.received_count(), 0, "agent log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_taken_while_the_collector_is_down_arrive_once_it_is_back() {
    let collector = OtlpReceiver::start().await;
    let vm = Vm::new(&collector, "enabled = true\ninterval = \"200ms\"", None);
    let agent = vm.start();
    assert!(
        wait_until(DEADLINE, || !sample_times(&collector).is_empty()).await,
        "agent log:\n{}",
        agent.log()
    );
    collector.stop().await;
    let down = now_ns();
    let stored = |log: &str| log.matches("host metrics: stored a sample").count();
    let before = stored(&agent.log());
    // At least three samples buffered while the collector is away.
    assert!(
        wait_until(DEADLINE, || stored(&agent.log()) >= before + 3).await,
        "agent log:\n{}",
        agent.log()
    );
    let up = now_ns();
    let outage = |times: &BTreeSet<u64>| times.range(down..up).count();
    assert_eq!(outage(&sample_times(&collector)), 0);
    collector.restart().await;
    assert!(
        wait_until(Duration::from_secs(30), || outage(&sample_times(
            &collector
        )) >= 2)
        .await,
        "samples from the outage did not arrive: {:?} ({down}..{up}); agent log:\n{}",
        sample_times(&collector),
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_off_sends_none_while_spans_still_flow() {
    let collector = OtlpReceiver::start().await;
    // The agent's own metrics off too (they would come alone: see
    // tests/agent_metrics.rs).
    let vm = Vm::new(
        &collector,
        "enabled = false\nagent_metrics = false\ninterval = \"200ms\"",
        None,
    );
    let agent = vm.start();
    let marker = "otlp receiver (grpc) listening on ";
    let mut grpc = None;
    assert!(
        wait_until(DEADLINE, || {
            grpc = listening(&agent.log(), marker);
            grpc.is_some()
        })
        .await,
        "agent log:\n{}",
        agent.log()
    );
    // Five intervals' worth of time in which samples would have arrived.
    assert!(
        !wait_until(Duration::from_secs(1), || !collector
            .metric_requests()
            .is_empty())
        .await,
        "host metrics arrived although disabled"
    );
    send_span(grpc.unwrap(), "still relayed").await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    assert!(collector.metric_requests().is_empty());
    assert!(!agent.log().contains("host metrics: a sample every"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otlp_host_metrics_do_not_run_and_the_log_says_so() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replace(
        "[host_metrics]\nenabled = false",
        "[host_metrics]\nenabled = true\ninterval = \"200ms\"",
    );
    std::fs::write(&setup.config, text).unwrap();
    let mut agent = setup.start();
    let said = "otlp.enabled = false: host metrics are not collected";
    assert!(
        wait_until(DEADLINE, || agent.log().contains(said)).await,
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "agent log:\n{}", agent.log());
    assert_eq!(agent.log().matches(said).count(), 1);
    assert_eq!(loki.received_count(), 0, "no file was written");
}

/// Waits (at most 20 s) for a second in which the agent woke at most 3 times.
async fn quiet(pid: u32) -> bool {
    let mut before = support::proc::context_switches(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = support::proc::context_switches(pid);
        if now - before <= 3 {
            return true;
        }
        before = now;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_keeps_its_threads_from_one_metrics_sample_to_the_next() {
    // Longer than the 10 s an idle thread of tokio's blocking pool waited by
    // default: each sample's threads then ended before the next, which
    // started new ones.
    let collector = OtlpReceiver::start().await;
    let vm = Vm::new(
        &collector,
        "enabled = true\nagent_metrics = true\ninterval = \"13s\"",
        None,
    );
    let agent = vm.start();
    let pid = agent.pid().unwrap();
    assert!(
        wait_until(DEADLINE, || !sample_times(&collector).is_empty()).await,
        "agent log:\n{}",
        agent.log()
    );
    assert!(quiet(pid).await, "never quiet; agent log:\n{}", agent.log());
    let threads = support::proc::thread_ids(pid);
    assert!(
        wait_until(Duration::from_secs(30), || sample_times(&collector).len()
            >= 2)
        .await,
        "no second sample; agent log:\n{}",
        agent.log()
    );
    let now = support::proc::thread_ids(pid);
    let ended: Vec<u32> = threads.difference(&now).copied().collect();
    assert!(
        ended.is_empty(),
        "threads {ended:?} ended between two samples (there were {threads:?}, now {now:?})"
    );
}
