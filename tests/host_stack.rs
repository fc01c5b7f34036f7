//! The host stack's Grafana dashboards (`packaging/host-stack/grafana/dashboards`)
//! ask only for what the agent really sends. The real binary runs against the
//! fake Loki and the fake collector: a tailed file line (with trace and span
//! ids), an `exec` run inside a git work tree, a push Loki refuses and an
//! export the collector refuses (so the `reason` families have samples). What
//! arrived is the catalogue:
//!
//! - Loki: the stream labels of every stream the fake Loki got, plus the
//!   `[agent].labels` keys of the default configuration; structured metadata
//!   keys of every entry;
//! - Prometheus: the `system.*` metrics the agent pushed (name, unit, type,
//!   monotonicity, attribute keys, resource), plus what the agent's own
//!   sampling code (`source::host_metrics::Collector`) makes of a captured
//!   VM's `/proc` (`tests/fixtures/proc/`), for disks and interfaces this
//!   machine may lack; and the agent's own families (names from
//!   `wisp_agent::run::metric_families()`, labels from a scrape of
//!   `/metrics`) as contract B pushes them; each translated by the rules of
//!   `prometheus/prometheus.yaml` and `otelcol/config.yaml`
//!   (`host_stack/translate.rs`);
//! - Tempo: the attribute keys of the exec run's span and of its resource.
//!
//! Every query of every panel and every variable is then checked against it:
//! LogQL stream selectors and `by` clauses name stream labels, pipeline label
//! filters name structured metadata (no parser stages); PromQL names metrics
//! that exist and labels those metrics carry (matchers, and `by` clauses
//! against the metrics they aggregate); TraceQL names intrinsics and the exec
//! span's attributes (`host_stack/queries.rs`).
//!
//! The Ralph dashboard's "Logs of one iteration" query is also run, as Loki
//! would run it, against what the agent stored of two `exec` runs: it finds
//! one run's lines, all of them and only them (by the structured metadata
//! `run_id` exec gives each line).

#[path = "host_stack/queries.rs"]
mod queries;
mod support;
#[path = "host_stack/translate.rs"]
mod translate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, Metric};

use queries::check_dashboard;
use support::agent::Relay;
use support::loki::LokiReceiver;
use support::otlp::{any_value_text, OtlpReceiver};
use support::{agent_command, append, wait_until, DEADLINE};
use translate::{prom_name, OtlpKind, Translation};

fn stack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/host-stack")
}

fn read(rel: &str) -> String {
    let path = stack().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// What the agent sends.

#[derive(Debug, Default)]
struct Catalogue {
    loki_labels: BTreeSet<String>,
    loki_metadata: BTreeSet<String>,
    /// Prometheus metric name → its label names.
    prom: BTreeMap<String, BTreeSet<String>>,
    span_attributes: BTreeSet<String>,
    span_resource: BTreeSet<String>,
}

fn attr_keys(kvs: &[KeyValue]) -> BTreeSet<String> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

/// Each metric of the requests: its Prometheus name and labels.
fn translate_requests(
    requests: &[ExportMetricsServiceRequest],
    t: &Translation,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for req in requests {
        for rm in &req.resource_metrics {
            let resource: BTreeMap<String, String> = rm
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                .collect();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let Some((kind, keys)) = kind_and_keys(m) else {
                        continue;
                    };
                    let labels = t.prom_labels(&keys, &resource);
                    out.entry(prom_name(&m.name, &m.unit, kind))
                        .or_default()
                        .extend(labels);
                }
            }
        }
    }
    out
}

fn kind_and_keys(m: &Metric) -> Option<(OtlpKind, BTreeSet<String>)> {
    match m.data.as_ref()? {
        metric::Data::Gauge(g) => Some((
            OtlpKind::Gauge,
            g.data_points
                .iter()
                .flat_map(|p| attr_keys(&p.attributes))
                .collect(),
        )),
        metric::Data::Sum(s) => Some((
            if s.is_monotonic {
                OtlpKind::MonotonicSum
            } else {
                OtlpKind::NonMonotonicSum
            },
            s.data_points
                .iter()
                .flat_map(|p| attr_keys(&p.attributes))
                .collect(),
        )),
        _ => None,
    }
}

/// `/metrics` as family name → label names of its samples.
fn scrape_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let mut rest = &line[name_end + 1..];
            while let Some(eq) = rest.find('=') {
                labels.insert(rest[..eq].trim_start_matches(',').trim().to_string());
                // Skip the quoted value, escapes included.
                let mut chars = rest[eq + 2..].char_indices();
                let mut end = 0;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            end = eq + 2 + i + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &rest[end..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    out
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// Runs the agent and collects what it sends.
async fn catalogue() -> Catalogue {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let text = std::fs::read_to_string(&relay.config).unwrap();
    let text = text.replacen(
        "[host_metrics]\nenabled = false\nagent_metrics = false",
        "[host_metrics]\nenabled = true\nagent_metrics = true\ninterval = \"100ms\"",
        1,
    );
    std::fs::write(&relay.config, text).unwrap();
    relay.set_admin_listen("127.0.0.1:0");
    // The first push (and the agent's second try, made for Loki to say why)
    // and the first export are refused for good, so that the families
    // counting drops by `reason` have samples.
    loki.fail_next(2, 400, None, "refused by the test");
    collector.reject_next(1);

    let log = relay.dir.path().join("logs").join("app.log");
    let line = |msg: &str| {
        format!(
            r#"{{"level":30,"time":{},"msg":"{msg}","traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7"}}"#,
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        )
    };
    append(&log, &[line("refused")]);
    let (agent, _, _) = relay.start().await;
    let admin = agent.admin_addr().await;
    assert!(
        wait_until(DEADLINE, || loki.answers().contains(&400)).await,
        "no push refused; agent log:\n{}",
        agent.log()
    );
    append(&log, &[line("stored")]);

    // One exec run in a git work tree, its command reporting a cost.
    let repo = relay.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "start"]);
    let socket = relay.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let out = agent_command()
        .args(["exec", "--config"])
        .arg(&relay.config)
        .args(["--name", "ralph", "--", "sh", "-c"])
        .arg(r#"echo 'iteration'; echo '{"type":"result","total_cost_usd":0.25}'"#)
        .current_dir(&repo)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    assert!(
        loki.wait_for_entries(r#"{job="ralph"}"#, 2, DEADLINE).await
            && loki.wait_for_entries(r#"{job="app"}"#, 1, DEADLINE).await,
        "lines missing in Loki; agent log:\n{}",
        agent.log()
    );
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "no exec span; agent log:\n{}",
        agent.log()
    );
    let has_metric = |name: &str| collector.metrics().iter().any(|m| m.name == name);
    assert!(
        wait_until(DEADLINE, || has_metric("system.cpu.time")
            && has_metric("system.memory.usage"))
        .await,
        "no host metrics; agent log:\n{}",
        agent.log()
    );
    // Wait for the refusals to be counted, then scrape.
    let scrape = || async {
        match reqwest::get(format!("http://{admin}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let counted = |page: &str| {
        page.contains("wisp_loki_records_dropped_total{")
            && page.contains("wisp_otlp_requests_dropped_total{")
            && page.contains("wisp_loki_records_shipped_total")
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut page = scrape().await;
    while !counted(&page) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        page = scrape().await;
    }
    assert!(
        counted(&page),
        "drops not counted:\n{page}\nagent log:\n{}",
        agent.log()
    );
    // ... and for a push that carries them (contract B: every family goes
    // to the collector too).
    let pushed_all = || {
        [
            "wisp_exec_runs_total",
            "wisp_exec_cost_usd_total",
            "wisp_loki_records_dropped_total",
            "wisp_otlp_requests_dropped_total",
        ]
        .iter()
        .all(|n| has_metric(n))
    };
    assert!(
        wait_until(DEADLINE, pushed_all).await,
        "the agent's families not pushed; agent log:\n{}",
        agent.log()
    );

    let t = Translation::from_stack();
    let mut cat = Catalogue::default();

    // Loki.
    for e in loki.all_entries() {
        cat.loki_labels.extend(e.labels.keys().cloned());
        cat.loki_metadata.extend(e.metadata.keys().cloned());
    }
    cat.loki_labels.extend(
        wisp_agent::config::Config::default()
            .agent
            .labels
            .into_keys(),
    );

    // Tempo: the exec span.
    let traces = collector.trace_requests();
    for rs in traces.iter().flat_map(|r| &r.resource_spans) {
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            if span.name == "ralph" {
                cat.span_attributes.extend(attr_keys(&span.attributes));
                cat.span_resource
                    .extend(rs.resource.iter().flat_map(|r| attr_keys(&r.attributes)));
            }
        }
    }
    assert!(cat.span_resource.contains("service.name"), "{cat:?}");

    // Prometheus: the host metrics as pushed...
    let requests = collector.metric_requests();
    let pushed = translate_requests(&requests, &t);
    let host_resource: BTreeMap<String, String> = requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .find(|rm| {
            rm.scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .any(|m| m.name.starts_with("system."))
        })
        .and_then(|rm| rm.resource.as_ref())
        .map(|r| {
            r.attributes
                .iter()
                .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                .collect()
        })
        .expect("a host metrics resource");
    cat.prom.extend(pushed.clone());
    // ... and as the same code samples a captured VM's /proc, for disks and
    // interfaces this machine may not have.
    let fixture = fixture_proc();
    let sampled = wisp_agent::source::host_metrics::Collector::new(fixture.path().to_path_buf())
        .collect(SystemTime::now());
    assert!(sampled.iter().any(|m| m.name == "system.disk.io"));
    let fixture_request = wisp_agent::source::host_metrics::request(
        &opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: host_resource
                .iter()
                .map(|(k, v)| wisp_agent::record::otlp_text(k, v))
                .collect(),
            ..Default::default()
        },
        sampled,
        Vec::new(),
    );
    for (name, labels) in translate_requests(&[fixture_request], &t) {
        cat.prom.entry(name).or_default().extend(labels);
    }

    // The agent's own families (contract B): pushed under their /metrics
    // names, with their labels as data point attributes (taken with the push
    // above).
    let families = wisp_agent::run::metric_families();
    let agent_pushed: Vec<&String> = pushed
        .keys()
        .filter(|n| n.starts_with("wisp_") || n.starts_with("process_"))
        .collect();
    assert!(
        !agent_pushed.is_empty(),
        "the agent's own families did not arrive at the collector"
    );
    for name in agent_pushed {
        assert!(
            families.iter().any(|(n, _)| n == name),
            "{name} reached Prometheus under a name /metrics does not serve"
        );
    }
    drop(agent);
    cat
}

/// A `/proc` made of the files captured from a VM.
fn fixture_proc() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc");
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("stat", "stat"),
        ("loadavg", "loadavg"),
        ("meminfo", "meminfo"),
        ("uptime", "uptime"),
        ("diskstats", "diskstats"),
        ("net_dev", "net/dev"),
    ] {
        let to = dir.path().join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(from), to).unwrap();
    }
    // `/` exists everywhere, whatever its device.
    std::fs::create_dir_all(dir.path().join("self")).unwrap();
    std::fs::write(dir.path().join("self/mounts"), "/dev/vda / ext4 rw 0 0\n").unwrap();
    dir
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = stack().join("grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let board: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        out.push((path.display().to_string(), board));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_dashboard_parses_and_names_the_provisioned_datasources() {
    let boards = dashboards();
    let titles: BTreeSet<&str> = boards
        .iter()
        .filter_map(|(_, b)| b["title"].as_str())
        .collect();
    assert_eq!(titles, BTreeSet::from(["Ralph loop", "VM"]));
    let uids: BTreeSet<&str> = boards
        .iter()
        .filter_map(|(_, b)| b["uid"].as_str())
        .collect();
    assert_eq!(uids.len(), boards.len(), "dashboard uids must be unique");
    let datasources = read("grafana/provisioning/datasources/datasources.yaml");
    for uid in ["loki", "tempo", "prometheus"] {
        assert!(
            datasources.contains(&format!("uid: {uid}\n")),
            "no datasource uid {uid}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_what_the_agent_sends() {
    let cat = catalogue().await;
    let mut problems = Vec::new();
    for (path, board) in dashboards() {
        for p in check_dashboard(&board, &cat) {
            problems.push(format!("{path}: {p}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nwhat the agent sends: {cat:#?}",
        problems.join("\n")
    );
}

/// The Ralph dashboard's "Logs of one iteration" panel, evaluated against what
/// the agent stored for two `exec` runs: its query, with the job and one run's
/// id filled in, finds every line of that run and none of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_of_one_iteration_panel_finds_every_line_of_its_run_and_none_of_another() {
    let boards = dashboards();
    let expr = boards
        .iter()
        .filter_map(|(_, b)| b["panels"].as_array())
        .flatten()
        .find(|p| p["title"] == "Logs of one iteration")
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .expect("the Ralph dashboard has a \"Logs of one iteration\" panel")
        .to_string();
    let loki = LokiReceiver::start().await;
    let setup = support::agent::Setup::new(&loki, "");
    let agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let mut runs = Vec::new();
    for n in 1..=2 {
        let out = agent_command()
            .args(["exec", "--config"])
            .arg(&setup.config)
            .args(["--name", "ralph", "--label", &format!("iter={n}")])
            .args(["--", "sh", "-c"])
            .arg(format!(
                r#"echo "iteration {n} starts, run $TRACEPARENT"; echo '{{"level":40,"msg":"iteration {n} warns"}}'"#
            ))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let run_id = stdout
            .split("run 00-")
            .nth(1)
            .and_then(|rest| rest.get(..32))
            .unwrap_or_else(|| panic!("no TRACEPARENT in {stdout:?}"))
            .to_string();
        let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
        runs.push((run_id, lines));
    }
    let all: Vec<String> = runs.iter().flat_map(|(_, l)| l.clone()).collect();
    agent
        .assert_shipped_once(&loki, r#"{job="ralph"}"#, &all, DEADLINE)
        .await;
    for (run_id, lines) in &runs {
        let query = expr.replace("$job", "ralph").replace("$run_id", run_id);
        let found = loki.lines(&query);
        assert_eq!(
            &found,
            lines,
            "{query} finds not the run's lines; the stored entries: {:#?}",
            loki.all_entries()
        );
    }
}

#[test]
fn the_scrape_parser_reads_label_names_past_escaped_values() {
    let page = "# TYPE a counter\na_total{x=\"1,y=\\\"2\\\"\",z=\"3\"} 4\nb 5\n";
    let labels = scrape_labels(page);
    assert_eq!(labels["a_total"], ["x", "z"].map(String::from).into());
    assert!(labels["b"].is_empty());
}
