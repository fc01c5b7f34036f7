//! The agent's own metrics over OTLP (`[host_metrics] agent_metrics`), end to
//! end: the built binary pushes every family its `/metrics` page serves, with
//! the page's names, help, types, labels and (for a quiet agent) values, to the
//! fake collector at `host_metrics.interval`, through its OTLP spool (an outage
//! only delays them); with the admin endpoint off and with host metrics off;
//! and not at all when turned off.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint,
};

use support::agent::Relay;
use support::loki::LokiReceiver;
use support::otlp::{any_value_text, OtlpReceiver};
use support::{wait_until, wait_until_async, DEADLINE};

/// The scope the agent's own metrics come under.
const SCOPE: &str = "wisp-agent";

/// A sample: its name as served and its labels.
type Key = (String, BTreeMap<String, String>);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A relay configuration (Loki on when given) with `[host_metrics]` as
/// `host_metrics` says and a resource attribute of its own.
fn relay(collector: &OtlpReceiver, loki: Option<&LokiReceiver>, host_metrics: &str) -> Relay {
    let relay = Relay::new(collector, "grpc", loki);
    let text = std::fs::read_to_string(&relay.config).unwrap();
    let section = "[host_metrics]\nenabled = false\nagent_metrics = false\n";
    assert!(text.contains(section), "{text}");
    let text = text
        .replace(section, &format!("[host_metrics]\n{host_metrics}\n"))
        .replacen(
            "[otlp]\n",
            "[otlp]\nresource_attributes = { \"deployment.environment\" = \"test\" }\n",
            1,
        );
    std::fs::write(&relay.config, text).unwrap();
    relay
}

// ---- the page ----

/// The `/metrics` page, parsed: each family's type and help, and every
/// sample.
#[derive(Debug, Default)]
struct Page {
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
    samples: BTreeMap<Key, f64>,
}

impl Page {
    fn families(&self) -> BTreeSet<String> {
        self.types.keys().cloned().collect()
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `{a="x",b="y"}` (without the braces) as a map.
fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").expect("a label");
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, 'n') => (value.push('\n'), escaped = false).1,
                (true, c) => (value.push(c), escaped = false).1,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end.expect("a closed label value");
        labels.insert(name.trim_start_matches(',').to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The text format 0.0.4: a family's HELP and TYPE name it as its samples are
/// named (a counter's with `_total`).
fn parse_page(text: &str) -> Page {
    let mut page = Page::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            page.types.insert(name.to_string(), kind.to_string());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            page.help.insert(name.to_string(), unescape(help));
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.strip_suffix('}').unwrap())),
                None => (series, BTreeMap::new()),
            };
            page.samples
                .insert((name.to_string(), labels), value.parse().unwrap());
        }
    }
    page
}

async fn scrape(addr: SocketAddr) -> Page {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the admin endpoint answers")
        .text()
        .await
        .unwrap();
    parse_page(&text)
}

// ---- what the collector got ----

/// One push of the agent's own metrics: its resource and metrics, and the
/// time of its points.
#[derive(Clone, Debug)]
struct Push {
    resource: BTreeMap<String, String>,
    metrics: Vec<Metric>,
    time: u64,
}

impl Push {
    fn families(&self) -> BTreeSet<String> {
        self.metrics.iter().map(|m| m.name.clone()).collect()
    }

    fn metric(&self, name: &str) -> &Metric {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in the push: {:?}", self.families()))
    }

    fn samples(&self) -> BTreeMap<Key, f64> {
        self.metrics
            .iter()
            .flat_map(|m| {
                points(m).iter().map(|p| {
                    let labels = p
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                        .collect();
                    ((m.name.clone(), labels), value(p))
                })
            })
            .collect()
    }
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

/// Every push of the agent's own metrics received, by the time of its points.
fn pushes(requests: &[ExportMetricsServiceRequest]) -> Vec<Push> {
    let mut out = Vec::new();
    for r in requests {
        for rm in &r.resource_metrics {
            let resource: BTreeMap<String, String> = rm
                .resource
                .as_ref()
                .map(|r| {
                    r.attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                        .collect()
                })
                .unwrap_or_default();
            for sm in &rm.scope_metrics {
                if sm.scope.as_ref().map(|s| s.name.as_str()) != Some(SCOPE) {
                    continue;
                }
                let time = sm
                    .metrics
                    .iter()
                    .flat_map(|m| points(m).iter().map(|p| p.time_unix_nano))
                    .max()
                    .unwrap_or(0);
                out.push(Push {
                    resource: resource.clone(),
                    metrics: sm.metrics.clone(),
                    time,
                });
            }
        }
    }
    out.sort_by_key(|p| p.time);
    out
}

/// Every metric name received, in any scope.
fn all_names(requests: &[ExportMetricsServiceRequest]) -> BTreeSet<String> {
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect()
}

fn latest(collector: &OtlpReceiver) -> Option<Push> {
    pushes(&collector.metric_requests()).pop()
}

/// Waits for a push whose points were taken after `after` (ns).
async fn push_after(collector: &OtlpReceiver, after: u64) -> Push {
    let mut found = None;
    assert!(
        wait_until(DEADLINE, || {
            found = latest(collector).filter(|p| p.time > after);
            found.is_some()
        })
        .await,
        "no push of the agent's metrics after {after}"
    );
    found.unwrap()
}

/// Samples that move in a quiet agent too: its own pushes (the exporter, the
/// OTLP spool), the test's scrapes (the admin listener), the process itself.
fn moves(key: &Key) -> bool {
    let (name, labels) = key;
    (name.starts_with("wisp_otlp_") && !name.starts_with("wisp_otlp_receiver_"))
        || labels.get("spool").map(String::as_str) == Some("otlp")
        || name.starts_with("wisp_listener_")
        // The walker runs on a quiet agent too, paced, and counts its time.
        || name == "wisp_file_scan_seconds_total"
        || (name.starts_with("process_")
            && name != "process_max_fds"
            && name != "process_start_time_seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_gets_every_family_of_the_metrics_page_with_its_values() {
    let collector = OtlpReceiver::start().await;
    let loki = LokiReceiver::start().await;
    let relay = relay(
        &collector,
        Some(&loki),
        "enabled = false\nagent_metrics = true\ninterval = \"200ms\"",
    );
    relay.set_admin_listen("127.0.0.1:0");
    support::append(
        &relay.dir.path().join("logs").join("app.log"),
        &["a line the agent tails".to_string()],
    );
    let before_start = now_ns();
    let (agent, _, _) = relay.start().await;
    let addr = agent.admin_addr().await;
    assert!(
        loki.wait_for_stored(1, DEADLINE).await,
        "agent log:\n{}",
        agent.log()
    );
    // The tailed line is counted in what the collector receives.
    let read = |p: &Push| {
        p.samples()
            .get(&("wisp_file_lines_read_total".to_string(), BTreeMap::new()))
            .copied()
    };
    assert!(
        wait_until(DEADLINE, || latest(&collector)
            .is_some_and(|p| read(&p) == Some(1.0)))
        .await,
        "wisp_file_lines_read_total = 1 never arrived: {:?}; agent log:\n{}",
        latest(&collector).map(|p| p.samples()),
        agent.log()
    );
    // Quiet now (the line is shipped): a scrape, the next push, a scrape.
    assert!(
        wait_until_async(DEADLINE, || async {
            scrape(addr).await.samples.get(&(
                "wisp_loki_records_shipped_total".to_string(),
                BTreeMap::new(),
            )) == Some(&1.0)
        })
        .await,
        "agent log:\n{}",
        agent.log()
    );
    let scraped = now_ns();
    let page1 = scrape(addr).await;
    let push = push_after(&collector, scraped).await;
    let page2 = scrape(addr).await;

    // The same families: each on the page is pushed, each pushed is on the
    // page (label maps only grow, so the scrapes bracket the push).
    let missing: Vec<_> = page1
        .families()
        .difference(&push.families())
        .cloned()
        .collect();
    assert!(missing.is_empty(), "on /metrics, not pushed: {missing:?}");
    let extra: Vec<_> = push
        .families()
        .difference(&page2.families())
        .cloned()
        .collect();
    assert!(extra.is_empty(), "pushed, not on /metrics: {extra:?}");
    for family in [
        "wisp_build_info",
        "wisp_file_lines_read_total",
        "wisp_spool_max_bytes",
        "wisp_listener_connections",
        "wisp_loki_records_shipped_total",
        "process_cpu_seconds_total",
    ] {
        assert!(push.families().contains(family), "{family} not pushed");
    }

    // The same values, where a quiet agent's values stand still.
    let pushed = push.samples();
    let steady: BTreeMap<_, _> = page2.samples.iter().filter(|(k, _)| !moves(k)).collect();
    assert!(steady.len() > 20, "{steady:?}");
    for (key, v) in &steady {
        assert_eq!(pushed.get(*key), Some(*v), "{key:?}: pushed vs /metrics");
    }
    // The instances' labels are attributes too: every sample of the page is
    // pushed under the same name and labels.
    let keys: BTreeSet<_> = pushed.keys().collect();
    let unpushed: Vec<_> = page1.samples.keys().filter(|k| !keys.contains(k)).collect();
    assert!(unpushed.is_empty(), "not pushed: {unpushed:?}");
    for spool in ["loki", "otlp"] {
        let key = (
            "wisp_spool_max_bytes".to_string(),
            BTreeMap::from([("spool".to_string(), spool.to_string())]),
        );
        assert!(pushed.contains_key(&key), "{key:?}");
    }
    for listener in ["admin", "otlp_grpc", "otlp_http"] {
        let key = (
            "wisp_listener_connections".to_string(),
            BTreeMap::from([("listener".to_string(), listener.to_string())]),
        );
        assert!(pushed.contains_key(&key), "{key:?}");
    }

    // Names, help, types and temporality as served; counters start at the
    // agent's start; integers stay integers.
    let start = match &push.metric("wisp_file_lines_read_total").data {
        Some(metric::Data::Sum(s)) => s.data_points[0].start_time_unix_nano,
        other => panic!("wisp_file_lines_read_total is a sum: {other:?}"),
    };
    let first = pushes(&collector.metric_requests())[0].time;
    assert!(
        before_start <= start && start <= first,
        "start {start} not between {before_start} and the first push {first}"
    );
    for m in &push.metrics {
        assert_eq!(m.unit, "", "{}", m.name);
        assert_eq!(Some(&m.description), page2.help.get(&m.name), "{}", m.name);
        match (page2.types[&m.name].as_str(), &m.data) {
            ("counter", Some(metric::Data::Sum(s))) => {
                assert!(s.is_monotonic, "{}", m.name);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32,
                    "{}",
                    m.name
                );
                for p in &s.data_points {
                    assert_eq!(p.start_time_unix_nano, start, "{}", m.name);
                    assert!(p.time_unix_nano >= start, "{}", m.name);
                }
            }
            ("gauge", Some(metric::Data::Gauge(_))) => {}
            (kind, data) => panic!("{} served as {kind}, pushed as {data:?}", m.name),
        }
    }
    let is_int = |name: &str| {
        matches!(
            points(push.metric(name))[0].value,
            Some(number_data_point::Value::AsInt(_))
        )
    };
    assert!(is_int("wisp_file_lines_read_total"));
    assert!(is_int("process_max_fds"));
    assert!(!is_int("process_cpu_seconds_total"));

    // The host metrics' resource.
    let want = [
        ("service.name", "wisp-agent"),
        ("host.name", "vm-test"),
        ("os.type", "linux"),
        ("deployment.environment", "test"),
    ];
    for (k, v) in want {
        assert_eq!(push.resource.get(k).map(String::as_str), Some(v), "{k}");
    }
    // Host metrics are off: none of theirs.
    let names = all_names(&collector.metric_requests());
    assert!(!names.iter().any(|n| n.starts_with("system.")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_host_metrics_and_the_admin_endpoint_off_only_the_agents_metrics_arrive() {
    let collector = OtlpReceiver::start().await;
    // OTLP-only mode, `[admin] listen = ""` (the harness default).
    let relay = relay(
        &collector,
        None,
        "enabled = false\nagent_metrics = true\ninterval = \"200ms\"",
    );
    let (agent, _, _) = relay.start().await;
    assert!(
        wait_until(DEADLINE, || pushes(&collector.metric_requests()).len() >= 3).await,
        "agent log:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("admin endpoint disabled"));
    let push = latest(&collector).unwrap();
    for family in [
        "wisp_build_info",
        "wisp_host_chosen",
        "wisp_otlp_exports_total",
        "wisp_spool_records_appended_total",
        "wisp_listener_connections",
    ] {
        assert!(push.families().contains(family), "{family} not pushed");
    }
    // Without the endpoint there are no admin connections to count.
    assert!(push
        .samples()
        .keys()
        .all(|(_, l)| l.get("listener") != Some(&"admin".to_string())));
    // Without Loki, no file families.
    assert!(!push.families().contains("wisp_file_lines_read_total"));
    let names = all_names(&collector.metric_requests());
    assert!(!names.iter().any(|n| n.starts_with("system.")), "{names:?}");
    assert!(!agent.log().contains("host metrics: a sample every"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_off_sends_none_while_host_metrics_still_arrive() {
    let collector = OtlpReceiver::start().await;
    let relay = relay(
        &collector,
        None,
        "enabled = true\nagent_metrics = false\ninterval = \"200ms\"",
    );
    let (agent, _, _) = relay.start().await;
    let samples = |c: &OtlpReceiver| {
        c.metric_requests()
            .iter()
            .filter(|r| all_names(std::slice::from_ref(r)).contains("system.memory.usage"))
            .count()
    };
    assert!(
        wait_until(DEADLINE, || samples(&collector) >= 3).await,
        "agent log:\n{}",
        agent.log()
    );
    let requests = collector.metric_requests();
    assert!(pushes(&requests).is_empty(), "{:?}", pushes(&requests));
    let names = all_names(&requests);
    assert!(names.iter().all(|n| n.starts_with("system.")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_taken_while_the_collector_is_down_arrive_once_it_is_back() {
    let collector = OtlpReceiver::start().await;
    let relay = relay(
        &collector,
        None,
        "enabled = false\nagent_metrics = true\ninterval = \"200ms\"",
    );
    let (agent, _, _) = relay.start().await;
    assert!(
        wait_until(DEADLINE, || latest(&collector).is_some()).await,
        "agent log:\n{}",
        agent.log()
    );
    collector.stop().await;
    let down = now_ns();
    let stored = |log: &str| log.matches("host metrics: stored a sample").count();
    let before = stored(&agent.log());
    assert!(
        wait_until(DEADLINE, || stored(&agent.log()) >= before + 3).await,
        "agent log:\n{}",
        agent.log()
    );
    let up = now_ns();
    let during = |c: &OtlpReceiver| {
        pushes(&c.metric_requests())
            .into_iter()
            .filter(|p| (down..up).contains(&p.time))
            .collect::<Vec<_>>()
    };
    assert!(during(&collector).is_empty());
    collector.restart().await;
    assert!(
        wait_until(Duration::from_secs(30), || during(&collector).len() >= 2).await,
        "pushes from the outage did not arrive; agent log:\n{}",
        agent.log()
    );
    // They say what the agent counted then: exports failing, the spool holding.
    let outage = during(&collector);
    let retries = outage.iter().map(|p| {
        p.samples()
            .get(&("wisp_otlp_retries_total".to_string(), BTreeMap::new()))
            .copied()
            .unwrap_or(0.0)
    });
    assert!(
        retries.clone().any(|n| n > 0.0),
        "{:?}",
        retries.collect::<Vec<_>>()
    );
}
