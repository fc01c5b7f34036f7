//! The admin endpoint's unit tests: with every stage registered as `run`
//! registers it, the page parses strictly, every declared family is served in
//! the declared order, `/healthz` follows the buffers.

use super::*;
use crate::admin::metrics::{registry, render};
use crate::discovery::Chosen;
use crate::metric::{self as family, Registry};
use crate::parse::ParseCounters;
use crate::procfs::Proc;
use crate::run::metric_families as families;
use crate::source::exec::metrics::{CountedRun, ExecCounters};
use crate::source::file::TailCounters;
use crate::source::otlp::ReceiverCounters;
use crate::spool::SpoolCounters;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use tokio::sync::watch;

#[derive(Debug)]
struct FakeProc;

impl Proc for FakeProc {
    fn read(&self, path: &str) -> Option<String> {
        Some(
            match path {
                "/proc/self/status" => {
                    "Name:\twisp-agent\nVmSize:\t  123456 kB\nVmRSS:\t    7040 kB\nThreads:\t5\n"
                }
                // A command name with a space and a parenthesis.
                "/proc/self/stat" => {
                    "4242 (wisp) agent) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 5 0 12345 0 0"
                }
                "/proc/stat" => "cpu  1 2 3\nbtime 1764400000\nprocesses 42\n",
                "/proc/self/limits" => {
                    "Limit                     Soft Limit           Hard Limit           Units\n\
                     Max open files            1024                 524288               files\n"
                }
                _ => return None,
            }
            .to_string(),
        )
    }

    fn open_fds(&self) -> Option<u64> {
        Some(17)
    }
}

/// Every stage's counters, as `run` wires them: what the tests set, and
/// from which [`Stages::metrics`] registers the readers in the same way.
#[derive(Clone, Debug)]
struct Stages {
    logs: Option<LogStages>,
    relay: Option<RelayStages>,
    host: watch::Receiver<Option<Chosen>>,
    exec: Option<Arc<ExecCounters>>,
}

#[derive(Clone, Debug)]
struct LogStages {
    tail: Arc<TailCounters>,
    parse: Arc<ParseCounters>,
    spool: Arc<SpoolCounters>,
    loki: Arc<LokiCounters>,
    buffer: Arc<BufferHealth>,
    spool_max_bytes: u64,
}

#[derive(Clone, Debug)]
struct RelayStages {
    receiver: Arc<ReceiverCounters>,
    exporter: Arc<OtlpCounters>,
    spool: Arc<SpoolCounters>,
    buffer: Arc<BufferHealth>,
    spool_max_bytes: u64,
}

impl Stages {
    /// Every stage's readers, registered as `run` does, the endpoint's own
    /// connections (`admin`) and the process figures read from `proc`.
    fn metrics(
        &self,
        admin: Option<Arc<ListenerCounters>>,
        proc: impl Proc + 'static,
    ) -> AgentMetrics {
        let mut r = Registry::default();
        crate::discovery::metrics::register(&mut r, self.host.clone());
        let config = crate::run::reload::ConfigState::with(
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_400_000),
        );
        config.count(crate::run::reload::Outcome::Unchanged, None);
        config.register(&mut r);
        if let Some(logs) = &self.logs {
            logs.tail.clone().register(&mut r);
            logs.parse.clone().register(&mut r);
            logs.spool
                .clone()
                .register(&mut r, "loki", logs.spool_max_bytes);
            logs.loki.clone().register(&mut r);
            Arc::new(crate::tap::Tap::default()).register(&mut r);
        }
        if let Some(relay) = &self.relay {
            relay.receiver.clone().register(&mut r);
            relay
                .spool
                .clone()
                .register(&mut r, "otlp", relay.spool_max_bytes);
            relay.exporter.clone().register(&mut r);
            relay
                .receiver
                .grpc_connections
                .clone()
                .register(&mut r, "otlp_grpc");
            relay
                .receiver
                .http_connections
                .clone()
                .register(&mut r, "otlp_http");
        }
        if let Some(exec) = &self.exec {
            exec.clone().register(&mut r);
        }
        if let Some(admin) = admin {
            admin.register(&mut r, "admin");
        }
        ProcessStats::register(&mut r, Box::new(proc));
        r.finish()
    }

    /// What `/healthz` and `/status` read of the stages.
    fn sources(&self) -> Sources {
        Sources {
            logs: self.logs.as_ref().map(|l| LogSources {
                loki: l.loki.clone(),
                buffer: l.buffer.clone(),
                tap: Arc::default(),
            }),
            relay: self.relay.as_ref().map(|r| RelaySources {
                exporter: r.exporter.clone(),
                buffer: r.buffer.clone(),
            }),
        }
    }

    fn problem(&self) -> Option<String> {
        self.sources().problem()
    }
}

/// The page a scrape of `s` gets, with `/proc` read from `proc`.
fn page(s: &Stages, proc: impl Proc + 'static) -> String {
    render(&registry(s.metrics(None, proc)))
}

fn sources(chosen: Option<Chosen>) -> Stages {
    let (_tx, host) = watch::channel(chosen);
    Stages {
        logs: Some(LogStages {
            tail: Arc::default(),
            parse: Arc::default(),
            spool: Arc::default(),
            loki: Arc::default(),
            buffer: Arc::new(BufferHealth::logs()),
            spool_max_bytes: 256 << 20,
        }),
        relay: Some(RelayStages {
            receiver: Arc::default(),
            exporter: Arc::default(),
            spool: Arc::default(),
            buffer: Arc::new(BufferHealth::otlp()),
            spool_max_bytes: 256 << 20,
        }),
        host,
        exec: Some(Arc::new(ExecCounters::new(50))),
    }
}

/// Parses the text format strictly: every sample line `name{labels} value`,
/// a HELP and a TYPE before the first sample of each family, each family's
/// samples together. Returns samples by their full `name{labels}`.
fn parse_strictly(text: &str) -> HashMap<String, f64> {
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut done = std::collections::HashSet::new();
    let mut current = String::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("help text");
            assert!(helped.insert(name.to_string()), "second HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("type");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(typed.insert(name.into(), kind.into()).is_none(), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        } else {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            let family = name.split('{').next().unwrap();
            assert!(
                family
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(typed.contains_key(family), "no TYPE for {line}");
            if family != current {
                assert!(done.insert(family.to_string()), "{family} split: {line}");
                current = family.to_string();
            }
            let v: f64 = value.parse().expect("a number");
            assert!(samples.insert(name.to_string(), v).is_none(), "{line}");
        }
    }
    samples
}

#[test]
fn every_metric_has_help_and_a_type_and_the_page_parses() {
    let s = sources(Some(Chosen {
        name: "host.lima.internal".into(),
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 5, 2)),
    }));
    let logs = s.logs.as_ref().unwrap();
    logs.loki.records_shipped.store(7, Ordering::Relaxed);
    logs.loki
        .records_dropped
        .lock()
        .unwrap()
        .insert("400".into(), 3);
    logs.loki
        .records_refused
        .lock()
        .unwrap()
        .insert(crate::sink::loki::refusal::Cause::TooOld, 2);
    logs.loki
        .records_rewritten
        .lock()
        .unwrap()
        .insert(crate::sink::loki::refusal::Cause::TooOld, 2);
    logs.loki.batches_dropped.lock().unwrap().insert(400, 1);
    logs.spool
        .owner_dropped(crate::record::Owner::exec(1001), 5, 4500);
    let relay = s.relay.as_ref().unwrap();
    relay.receiver.requests_accepted[0].store(4, Ordering::Relaxed);
    relay.exporter.requests_shipped.store(4, Ordering::Relaxed);
    relay
        .exporter
        .requests_dropped
        .lock()
        .unwrap()
        .insert("http_400".into(), 2);
    relay
        .exporter
        .items_rejected
        .lock()
        .unwrap()
        .insert("traces", 5);
    s.exec.as_ref().unwrap().count(&CountedRun {
        job: "ralph",
        exit: Some(3),
        seconds: 2.5,
        cost_usd: Some(0.25),
    });
    let text = page(&s, FakeProc);
    let samples = parse_strictly(&text);
    assert_eq!(
        samples["wisp_exec_runs_total{job=\"ralph\",exit_code=\"3\"}"],
        1.0
    );
    assert_eq!(samples["wisp_exec_run_seconds_total{job=\"ralph\"}"], 2.5);
    assert_eq!(samples["wisp_exec_cost_usd_total{job=\"ralph\"}"], 0.25);
    for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!line.contains("Undocumented"), "{line}");
    }
    assert_eq!(
        samples[&format!(
            "wisp_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );
    assert_eq!(
        samples["wisp_host_info{candidate=\"host.lima.internal\",host=\"192.168.5.2\"}"],
        1.0
    );
    assert_eq!(samples["wisp_host_chosen"], 1.0);
    assert_eq!(samples["wisp_loki_records_shipped_total"], 7.0);
    assert_eq!(
        samples["wisp_loki_records_dropped_total{reason=\"400\"}"],
        3.0
    );
    assert_eq!(
        samples["wisp_spool_max_bytes{spool=\"loki\"}"],
        (256u64 << 20) as f64
    );
    assert_eq!(
        samples["wisp_spool_max_bytes{spool=\"otlp\"}"],
        (256u64 << 20) as f64
    );
    assert_eq!(
        samples["wisp_spool_records_appended_total{spool=\"otlp\"}"],
        0.0
    );
    assert_eq!(
        samples["wisp_otlp_receiver_requests_total{signal=\"traces\"}"],
        4.0
    );
    assert_eq!(samples["wisp_otlp_requests_shipped_total"], 4.0);
    assert_eq!(
        samples["wisp_otlp_requests_dropped_total{reason=\"http_400\"}"],
        2.0
    );
    assert_eq!(
        samples["wisp_spool_owner_records_dropped_total{spool=\"loki\",owner=\"exec:1001\"}"],
        5.0
    );
    assert_eq!(
        samples["wisp_spool_owner_bytes_buffered{spool=\"loki\",owner=\"exec:1001\"}"],
        0.0
    );
    // Every spool sample names its spool, first.
    for name in samples.keys().filter(|n| n.starts_with("wisp_spool_")) {
        assert!(
            name.contains("{spool=\"loki\"") || name.contains("{spool=\"otlp\""),
            "{name}"
        );
    }
    assert_eq!(
        samples["wisp_config_reloads_total{result=\"unchanged\"}"],
        1.0
    );
    assert_eq!(samples["wisp_config_reloads_total{result=\"failed\"}"], 0.0);
    assert_eq!(samples["wisp_config_last_reload_successful"], 1.0);
    assert_eq!(
        samples["wisp_config_last_reload_success_timestamp_seconds"],
        1_764_400_000.0
    );
    assert_eq!(samples["process_resident_memory_bytes"], 7040.0 * 1024.0);
    assert_eq!(samples["process_virtual_memory_bytes"], 123456.0 * 1024.0);
    assert_eq!(samples["process_cpu_seconds_total"], 3.0);
    assert!((samples["process_start_time_seconds"] - 1764400123.45).abs() < 1e-3);
    assert_eq!(samples["process_open_fds"], 17.0);
    assert_eq!(samples["process_max_fds"], 1024.0);
    // Every declared family is served (the dropped ones once Loki rejected
    // something), with its declared type, and nothing undeclared is.
    let declared: Vec<String> = families()
        .iter()
        .map(|(name, kind)| format!("# TYPE {name} {kind}"))
        .collect();
    let served: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    assert_eq!(served, declared, "{text}");
}

#[test]
fn either_pipeline_alone_serves_its_own_metrics_and_not_the_others() {
    let mut otlp_only = sources(None);
    otlp_only.logs = None;
    let text = page(&otlp_only, FakeProc);
    let samples = parse_strictly(&text);
    assert!(
        !text.contains("wisp_file_") && !text.contains("wisp_loki_"),
        "{text}"
    );
    assert!(!text.contains("spool=\"loki\""), "{text}");
    assert_eq!(samples["wisp_spool_segments{spool=\"otlp\"}"], 0.0);
    assert_eq!(samples["wisp_otlp_exports_total"], 0.0);

    let mut loki_only = sources(None);
    loki_only.relay = None;
    let text = page(&loki_only, FakeProc);
    let samples = parse_strictly(&text);
    assert!(!text.contains("wisp_otlp_"), "{text}");
    assert!(!text.contains("spool=\"otlp\""), "{text}");
    assert_eq!(samples["wisp_spool_segments{spool=\"loki\"}"], 0.0);
    assert_eq!(samples["wisp_file_lines_read_total"], 0.0);
}

#[test]
fn either_buffer_failing_is_a_problem_naming_it() {
    let s = sources(None);
    assert_eq!(s.problem(), None);
    let relay = s.relay.as_ref().unwrap();
    relay
        .buffer
        .set(Some("no space left on device (os error 28)".into()));
    let p = s.problem().unwrap();
    assert!(
        p.contains("otlp buffer") && p.contains("os error 28"),
        "{p}"
    );
    let logs = s.logs.as_ref().unwrap();
    logs.buffer.set(Some("an i/o error".into()));
    let p = s.problem().unwrap();
    assert!(p.contains("log buffer") && p.contains("otlp buffer"), "{p}");
    relay.buffer.set(None);
    logs.buffer.set(None);
    assert_eq!(s.problem(), None);
}

#[test]
fn no_host_chosen_is_a_zero_and_no_info_sample() {
    let text = page(&sources(None), FakeProc);
    let samples = parse_strictly(&text);
    assert_eq!(samples["wisp_host_chosen"], 0.0);
    assert!(!text.contains("wisp_host_info{"), "{text}");
}

#[test]
fn label_values_are_escaped() {
    let s = sources(Some(Chosen {
        name: "a\\b\"c\nd".into(),
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 5, 2)),
    }));
    let text = page(&s, FakeProc);
    assert!(
        text.contains("\nwisp_host_info{candidate=\"a\\\\b\\\"c\\nd\",host=\"192.168.5.2\"} 1\n"),
        "{text}"
    );
    parse_strictly(&text);
}

#[test]
fn values_print_as_prometheus_reads_them() {
    let text = page(&sources(None), FakeProc);
    for line in [
        "wisp_file_lines_read_total 0",
        "wisp_spool_max_bytes{spool=\"loki\"} 268435456",
        "process_resident_memory_bytes 7208960",
        "process_start_time_seconds 1764400123.45",
        // Whole seconds as integers, as the page always printed them.
        "process_cpu_seconds_total 3",
        "wisp_loki_last_push_timestamp_seconds 0",
        "wisp_spool_fsync_seconds_total{spool=\"otlp\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[test]
fn unreadable_proc_files_leave_their_metrics_out() {
    #[derive(Debug)]
    struct NoProc;
    impl Proc for NoProc {
        fn read(&self, _: &str) -> Option<String> {
            None
        }
        fn open_fds(&self) -> Option<u64> {
            None
        }
    }
    let text = page(&sources(None), NoProc);
    parse_strictly(&text);
    assert!(!text.contains("process_"), "{text}");
}

#[tokio::test]
async fn healthz_answers_503_with_the_reason_while_the_buffer_cannot_write() {
    let s = sources(None);
    let health = s.logs.as_ref().unwrap().buffer.clone();
    let metrics = s.metrics(None, FakeProc);
    let app = router(Arc::new(std::sync::RwLock::new(Arc::new(Endpoint::new(
        s.sources(),
        metrics,
        CancellationToken::new(),
    )))));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/healthz");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");

    health.set(Some("no space left on device (os error 28)".into()));
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("no space left on device"), "{body}");

    health.set(None);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    cancel.cancel();
    server.await.unwrap().unwrap();
}

#[test]
fn a_reading_holds_exactly_the_samples_the_page_serves_in_its_order() {
    let s = sources(None);
    s.logs
        .as_ref()
        .unwrap()
        .loki
        .records_shipped
        .store(3, Ordering::Relaxed);
    let admin = Arc::new(ListenerCounters::default());
    let metrics = s.metrics(Some(admin), FakeProc);
    let reading = metrics.read();
    let text = render(&registry(metrics));
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let read: Vec<&str> = reading.iter().map(|r| r.name).collect();
    assert_eq!(served, read);
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert_eq!(
        samples,
        reading.iter().map(|r| r.samples.len()).sum::<usize>()
    );
    let shipped = reading
        .iter()
        .find(|r| r.name == "wisp_loki_records_shipped_total")
        .unwrap();
    assert_eq!(shipped.samples[0].value, family::Value::Int(3));
    // The endpoint's own connections are read with the instance label first.
    let listeners = reading
        .iter()
        .find(|r| r.name == "wisp_listener_connections")
        .unwrap();
    let names: Vec<_> = listeners
        .samples
        .iter()
        .map(|s| (s.labels[0].0, s.labels[0].1.to_string()))
        .collect();
    assert_eq!(
        names,
        [
            ("listener", "otlp_grpc".to_string()),
            ("listener", "otlp_http".to_string()),
            ("listener", "admin".to_string())
        ]
    );
}
