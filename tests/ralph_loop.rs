//! A Ralph loop as a user runs it, end to end: in a real tmux pane whose output
//! `pipe-pane -o 'cat >> FILE'` captures into a file `wisp-agent run` tails,
//!
//! ```sh
//! for i in 1 2 3; do wisp-agent exec --name ralph --label iter=$i -- node --require ./instrumentation.js app.js; done
//! ```
//!
//! then the same loop with a Python app under `opentelemetry-instrument`, over
//! gRPC and over HTTP. The apps are real (tests/ralph/): pino and the stock
//! OpenTelemetry Node SDK, the stock Python SDK, exporters from the `OTEL_*`
//! environment `exec` fills in, spans made with the APIs, pino lines carrying
//! trace_id and span_id through instrumentation-pino. What the user must see:
//!
//! - every line the apps printed is in Loki exactly once, across every job
//!   (the tailed file's and `ralph`), and none was sent twice;
//! - those lines have `job=ralph`, `iter=N`, `user`, pino's level and pino's
//!   `time`;
//! - every app span is in its run's trace (the trace id of the run span, which
//!   is the run id), the app's root spans children of the run span;
//! - every line exec shipped of run R and every OTLP log record of run R that
//!   reached Loki carry the structured metadata `run_id` = R, and the query of
//!   the Ralph dashboard's "Logs of one iteration" panel finds them all, and
//!   nothing of another run.
//!
//! The SDKs come from `.ci/sdks.sh` (in `$WISP_SDK_DIR`, default
//! `~/.cache/wisp-agent-sdks`). Without them the test says so and passes,
//! unless `WISP_REQUIRE_SDKS=1` (CI), where it fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::agent::Agent;
use support::loki::{Entry, LokiReceiver};
use support::otlp::{OtlpReceiver, SeenSpan};
use support::tmux::TmuxServer;
use support::{wait_until, DEADLINE};

/// How long one loop of three iterations may take on a loaded machine (here:
/// about 1.2 s; the whole test about 5 s).
const LOOP_DEADLINE: Duration = Duration::from_secs(60);

/// Where `.ci/sdks.sh` installed the apps and their SDKs.
struct Sdks {
    /// node_modules with pino and the OpenTelemetry Node SDK.
    node_modules: PathBuf,
    /// The venv with opentelemetry-sdk, -exporter-otlp and -distro.
    venv: PathBuf,
}

/// The SDKs, or None (with the reason on stderr) when they are not installed
/// and not required; panics when `WISP_REQUIRE_SDKS=1` and something is missing.
fn sdks() -> Option<Sdks> {
    let dir = std::env::var_os("WISP_SDK_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/wisp-agent-sdks")))
        .unwrap_or_default();
    let sdks = Sdks {
        node_modules: dir.join("node/node_modules"),
        venv: dir.join("python/venv"),
    };
    let needed = [
        sdks.node_modules.join("pino/package.json"),
        sdks.node_modules
            .join("@opentelemetry/sdk-node/package.json"),
        sdks.node_modules
            .join("@opentelemetry/instrumentation-pino/package.json"),
        sdks.venv.join("bin/opentelemetry-instrument"),
    ];
    let mut missing: Vec<String> = needed
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    for program in ["node", "tmux"] {
        if Command::new(program).arg("-V").output().is_err() {
            missing.push(format!("the program {program}"));
        }
    }
    if missing.is_empty() {
        return Some(sdks);
    }
    let why = format!(
        "the Ralph loop's SDKs are not installed (missing: {}); run .ci/sdks.sh (WISP_SDK_DIR={})",
        missing.join(", "),
        dir.display()
    );
    if std::env::var("WISP_REQUIRE_SDKS").as_deref() == Ok("1") {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// A port free now, for a receiver whose address `exec` reads from the
/// configuration (with port 0 only the daemon would know it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's configuration: the pane's file tailed as job `pane`, Loki,
/// OTLP relayed to `collector`, both local receivers on fixed ports (OTLP logs
/// go to Loki too, the default).
fn config(dir: &Path, pane: &Path, loki: &LokiReceiver, collector: &OtlpReceiver) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
state_dir = "{state}"
hostname = "vm-test"
[host]
address = "127.0.0.1"
[loki]
url = "http://{{host}}:{loki}/loki/api/v1/push"
batch_max_wait = "100ms"
[otlp]
endpoint = "{collector}"
protocol = "grpc"
max_backoff = "300ms"
[receiver]
grpc = "127.0.0.1:{grpc}"
http = "127.0.0.1:{http}"
[host_metrics]
enabled = false
agent_metrics = false
[admin]
listen = ""
[exec]
socket = "{socket}"
[[files]]
name = "pane"
paths = ["{pane}"]
start_at = "beginning"
poll_interval = "100ms"
"#,
            state = dir.join("state").display(),
            loki = loki.addr().port(),
            collector = collector.grpc_endpoint(),
            grpc = free_port(),
            http = free_port(),
            socket = dir.join("exec.sock").display(),
            pane = pane.display(),
        ),
    )
    .unwrap();
    config
}

/// One iteration as its app recorded it (tests/ralph/*: RALPH_RECORDS).
#[derive(Debug)]
struct Run {
    app: &'static str,
    /// The run id: the trace id of TRACEPARENT, `wisp.run.id`.
    id: String,
    iter: String,
    /// Every line the app printed, in order.
    lines: Vec<String>,
}

/// The runs recorded in `dir`, by app and iteration.
fn runs(dir: &Path) -> Vec<Run> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let app = if name.starts_with("node-") {
            "node"
        } else {
            "python"
        };
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let mut lines = text.lines();
        let header: serde_json::Value =
            serde_json::from_str(lines.next().unwrap_or("{}")).unwrap_or_default();
        let id = header["traceparent"]
            .as_str()
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or_default()
            .to_string();
        let resource = header["resource"].as_str().unwrap_or_default();
        let iter = resource
            .split(',')
            .find_map(|kv| kv.strip_prefix("iter="))
            .unwrap_or_default()
            .to_string();
        out.push(Run {
            app,
            id,
            iter,
            lines: lines.map(str::to_string).collect(),
        });
    }
    out
}

/// The level label Loki should show for a printed line: pino's number, or the
/// Python app's leading word.
fn level_of(line: &str) -> &'static str {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return match v["level"].as_u64() {
            Some(30) => "info",
            Some(40) => "warn",
            Some(50) => "error",
            other => panic!("the app printed level {other:?}: {line}"),
        };
    }
    match line.split_whitespace().next() {
        Some("INFO") => "info",
        Some("WARN") => "warn",
        Some("ERROR") => "error",
        other => panic!("the app printed level {other:?}: {line}"),
    }
}

/// Pino's `time` (ms) as nanoseconds; None for a line without it.
fn pino_time_ns(line: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(v["time"].as_i64()? * 1_000_000)
}

/// The expression of the Ralph dashboard's "Logs of one iteration" panel.
fn iteration_panel_query() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/host-stack/grafana/dashboards/ralph-loop.json");
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    board["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["title"] == "Logs of one iteration")
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .unwrap_or_else(|| panic!("{}: no \"Logs of one iteration\" panel", path.display()))
        .to_string()
}

/// Waits until the tailer's checkpoint (`positions`) holds an offset at the
/// end of `file`'s last complete line: it has read and stored every line (the
/// shell's last prompt, with no newline yet, is not one). False on timeout.
async fn wait_checkpointed(positions: &Path, file: &Path) -> bool {
    support::agent::wait_checkpointed_at(positions, || {
        let text = std::fs::read(file).ok()?;
        Some(
            text.iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i as u64 + 1),
        )
    })
    .await
}

/// The user name `exec` labels lines with: the kernel's uid, by name.
fn user_name() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn short(line: &str) -> String {
    let q: String = line.chars().take(90).collect();
    if q.len() < line.len() {
        format!("{q:?}…")
    } else {
        format!("{q:?}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ralph_loop_of_node_and_python_apps_reaches_loki_and_the_collector_as_one_run_each() {
    let Some(sdks) = sdks() else { return };
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pane_file = dir.path().join("pane.log");
    let records = dir.path().join("records");
    std::fs::create_dir_all(&records).unwrap();
    let config = config(dir.path(), &pane_file, &loki, &collector);

    // The Node app's sources as they are in the repository, beside the
    // installed packages.
    let node_app = dir.path().join("node");
    std::fs::create_dir_all(&node_app).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ralph");
    for f in ["app.js", "instrumentation.js"] {
        std::fs::copy(src.join("node").join(f), node_app.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&sdks.node_modules, node_app.join("node_modules")).unwrap();
    let python_app = src.join("python/app.py");

    let mut agent = Agent::start(&config, &dir.path().join("agent.stderr"));
    let socket = dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wisp-agent"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let tmux_socket = format!("wisp-ralph-{}", std::process::id());
    let server = TmuxServer::start_with_env(
        &tmux_socket,
        &node_app,
        &[
            ("PATH", &path),
            ("WISP_AGENT_CONFIG", config.to_str().unwrap()),
            ("RALPH_RECORDS", records.to_str().unwrap()),
            ("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "true"),
        ],
    )
    .expect("a tmux server starts");
    server.tmux(&[
        "pipe-pane",
        "-o",
        "-t",
        "pane",
        &format!("cat >> {}", pane_file.display()),
    ]);
    // One loop at a time, as a user types them: each when the one before
    // has finished.
    let instrument = sdks.venv.join("bin/opentelemetry-instrument");
    let python = sdks.venv.join("bin/python");
    let python_loop = |protocol: &str| {
        format!(
            "for i in 1 2 3; do OTEL_EXPORTER_OTLP_PROTOCOL={protocol} wisp-agent exec --name ralph --label iter=$i -- {} {} {}; done",
            instrument.display(),
            python.display(),
            python_app.display()
        )
    };
    let loops = [
        "for i in 1 2 3; do wisp-agent exec --name ralph --label iter=$i -- node --require ./instrumentation.js app.js; done".to_string(),
        python_loop("grpc"),
        python_loop("http/protobuf"),
    ];
    for (n, command) in loops.iter().enumerate() {
        let finished = dir.path().join(format!("finished-{n}"));
        let command = format!("{command}; touch {}", finished.display());
        let started = std::time::Instant::now();
        server.type_line(&command);
        // The loop finishes, each run having printed its lines.
        let done = wait_until(LOOP_DEADLINE, || finished.exists()).await;
        eprintln!("loop {n} took {:?}", started.elapsed());
        assert!(
            done,
            "{command:?} did not finish in {LOOP_DEADLINE:?}; the pane:\n{}\nagent log:\n{}",
            std::fs::read_to_string(&pane_file).unwrap_or_default(),
            agent.log()
        );
    }
    let pane_text = std::fs::read_to_string(&pane_file).unwrap_or_default();
    let runs = runs(&records);
    let summary: Vec<(&str, &str, &str, usize)> = runs
        .iter()
        .map(|r| (r.app, r.id.as_str(), r.iter.as_str(), r.lines.len()))
        .collect();
    assert_eq!(
        runs.len(),
        9,
        "{summary:?}\nthe pane:\n{pane_text}\nagent log:\n{}",
        agent.log()
    );
    for r in &runs {
        assert!(
            r.id.len() == 32 && ["1", "2", "3"].contains(&r.iter.as_str()) && r.lines.len() >= 7,
            "{r:?}"
        );
        for line in &r.lines {
            assert!(
                pane_text.contains(line.as_str()),
                "the pane shows not {line}"
            );
        }
    }
    let printed: Vec<&String> = runs.iter().flat_map(|r| &r.lines).collect();
    let distinct: BTreeSet<&String> = printed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        printed.len(),
        "the apps printed a line twice"
    );

    // The SDKs reached the agent's receivers, and it relayed: each run's
    // spans (four per app run) and the run span of each run.
    let run_spans = |spans: &[SeenSpan]| -> BTreeMap<String, SeenSpan> {
        spans
            .iter()
            .filter(|s| s.scope == "wisp-agent exec" && s.name == "ralph")
            .map(|s| (s.trace_id.clone(), s.clone()))
            .collect()
    };
    let app_spans_of = |spans: &[SeenSpan], run: &str| -> Vec<SeenSpan> {
        spans
            .iter()
            .filter(|s| s.scope != "wisp-agent exec")
            .filter(|s| s.resource.get("wisp.run.id").map(String::as_str) == Some(run))
            .cloned()
            .collect()
    };
    let relayed = wait_until(DEADLINE * 3, || {
        let spans = collector.spans();
        let by_run = run_spans(&spans);
        runs.iter()
            .all(|r| by_run.contains_key(&r.id) && app_spans_of(&spans, &r.id).len() >= 4)
    })
    .await;
    let spans = collector.spans();
    assert!(
        relayed,
        "spans missing at the collector: {:#?}\nagent log:\n{}",
        spans
            .iter()
            .map(|s| (&s.service_name, &s.name, s.resource.get("wisp.run.id")))
            .collect::<Vec<_>>(),
        agent.log()
    );
    let by_run = run_spans(&spans);
    for r in &runs {
        let service = app_spans_of(&spans, &r.id)[0].service_name.clone();
        assert_eq!(service, format!("unknown_service:{}", r.app), "{r:?}");
    }
    // The log records the SDKs sent (pino's, through instrumentation-pino,
    // and Python's `logging`), per run.
    let logs_of = |run: &str| {
        collector
            .logs()
            .into_iter()
            .filter(|l| l.resource.get("wisp.run.id").map(String::as_str) == Some(run))
            .collect::<Vec<_>>()
    };
    let logged = wait_until(DEADLINE * 3, || {
        runs.iter().all(|r| logs_of(&r.id).len() >= 2)
    })
    .await;
    assert!(
        logged,
        "log records missing at the collector; agent log:\n{}",
        agent.log()
    );

    // Every printed line reached Loki; then the agent catches up with the
    // pane's file and drains, so that a copy arriving late is seen too.
    let all_arrived = wait_until(DEADLINE * 3, || {
        let stored: BTreeSet<String> = loki.all_entries().into_iter().map(|e| e.line).collect();
        printed.iter().all(|l| stored.contains(l.as_str()))
    })
    .await;
    drop(server);
    let caught_up = wait_checkpointed(&dir.path().join("state/positions.json"), &pane_file).await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert!(
        all_arrived,
        "printed lines missing in Loki: {:?}\nagent log:\n{}",
        printed
            .iter()
            .filter(|l| !loki.all_entries().iter().any(|e| &e.line == **l))
            .map(|l| short(l))
            .collect::<Vec<_>>(),
        agent.log()
    );
    assert!(caught_up, "the tailer did not reach the pane file's end");

    let entries = loki.all_entries();
    let user = user_name();
    let mut problems: Vec<String> = Vec::new();

    // Exactly once across every job, and nothing sent twice.
    let mut twice = Vec::new();
    for line in &printed {
        let found: Vec<&Entry> = entries.iter().filter(|e| &&e.line == line).collect();
        if found.len() != 1 {
            twice.push(format!(
                "{} in {}",
                short(line),
                found
                    .iter()
                    .map(|e| format!("job={}", e.labels["job"]))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
    }
    if !twice.is_empty() {
        problems.push(format!(
            "{} of {} printed lines are in Loki more than once, e.g. {}",
            twice.len(),
            printed.len(),
            twice[..twice.len().min(2)].join("; ")
        ));
    }
    let resent = loki.resent(r#"{job!=""}"#);
    if !resent.is_empty() {
        problems.push(format!("{} entries sent to Loki twice", resent.len()));
    }

    // Each printed line as exec shipped it: job, iter, user, level, time.
    let mut mislabelled = Vec::new();
    for r in &runs {
        for line in &r.lines {
            let Some(e) = entries.iter().find(|e| {
                &e.line == line && e.labels.get("job").map(String::as_str) == Some("ralph")
            }) else {
                mislabelled.push(format!("{} not in job=ralph", short(line)));
                continue;
            };
            let want = [
                ("iter", r.iter.as_str()),
                ("user", user.as_str()),
                ("level", level_of(line)),
            ];
            for (k, v) in want {
                if e.labels.get(k).map(String::as_str) != Some(v) {
                    mislabelled.push(format!(
                        "{}: {k}={:?}, not {v}",
                        short(line),
                        e.labels.get(k)
                    ));
                }
            }
            // Pino's millisecond; lines of one run sharing it are a
            // nanosecond apart in the order they were printed (Loki keeps one
            // entry per stream, timestamp and line).
            if let Some(ns) = pino_time_ns(line) {
                if !(ns..ns + 1_000_000).contains(&e.timestamp_ns) {
                    mislabelled.push(format!(
                        "{}: timestamp {} not within pino's millisecond {ns}",
                        short(line),
                        e.timestamp_ns
                    ));
                }
            }
        }
    }
    if !mislabelled.is_empty() {
        problems.push(format!(
            "{} printed lines not labelled as their run, e.g. {}",
            mislabelled.len(),
            mislabelled[..mislabelled.len().min(3)].join("; ")
        ));
    }

    // Every app span in its run's trace; the roots children of the run span,
    // whose id is the run id's low half.
    let (mut off_trace, mut orphans, mut run_span_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut app_span_count = 0;
    for r in &runs {
        let run_span = &by_run[&r.id];
        if run_span.span_id != r.id[16..] {
            run_span_ids.push(format!("{} for run {}", run_span.span_id, r.id));
        }
        let app = app_spans_of(&spans, &r.id);
        app_span_count += app.len();
        let ids: BTreeSet<&str> = app.iter().map(|s| s.span_id.as_str()).collect();
        for s in &app {
            if s.trace_id != r.id {
                off_trace.push(format!(
                    "{} {:?} in trace {}, not the run's {}",
                    r.app, s.name, s.trace_id, r.id
                ));
            }
            if !ids.contains(s.parent_span_id.as_str()) && s.parent_span_id != run_span.span_id {
                orphans.push(format!(
                    "{} {:?} has parent {:?}, not the run span {}",
                    r.app, s.name, s.parent_span_id, run_span.span_id
                ));
            }
        }
    }
    if !off_trace.is_empty() {
        problems.push(format!(
            "{} of {app_span_count} app spans not in their run's trace, e.g. {}",
            off_trace.len(),
            off_trace[..off_trace.len().min(2)].join("; ")
        ));
    }
    if !orphans.is_empty() {
        problems.push(format!(
            "{} app root spans not children of their run span, e.g. {}",
            orphans.len(),
            orphans[..orphans.len().min(2)].join("; ")
        ));
    }
    if !run_span_ids.is_empty() {
        problems.push(format!(
            "{} of {} run spans' ids are not the run id's low half, e.g. {}",
            run_span_ids.len(),
            runs.len(),
            run_span_ids[0]
        ));
    }

    // run_id on every exec line and every OTLP log record of the run in
    // Loki; the dashboard's query finds exactly those.
    let query = iteration_panel_query();
    let mut without_run_id = Vec::new();
    let mut panel = Vec::new();
    for r in &runs {
        let mut of_run: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.labels.get("job").map(String::as_str) == Some("ralph"))
            .filter(|e| r.lines.contains(&e.line))
            .collect();
        let records = logs_of(&r.id);
        let otlp: Vec<&Entry> = entries
            .iter()
            .filter(|e| {
                records
                    .iter()
                    .any(|l| l.body == e.line && l.time_unix_nano as i64 == e.timestamp_ns)
            })
            .collect();
        if otlp.len() < records.len() {
            problems.push(format!(
                "{} {}: {} of its {} OTLP log records in Loki",
                r.app,
                r.id,
                otlp.len(),
                records.len()
            ));
        }
        of_run.extend(otlp);
        for e in &of_run {
            if e.metadata.get("run_id") != Some(&r.id) {
                without_run_id.push(format!(
                    "{} (job={}): run_id {:?}",
                    short(&e.line),
                    e.labels["job"],
                    e.metadata.get("run_id")
                ));
            }
        }
        let q = query.replace("$job", "ralph").replace("$run_id", &r.id);
        let found = loki.entries(&q);
        let want: BTreeSet<(i64, &str)> = of_run
            .iter()
            .map(|e| (e.timestamp_ns, e.line.as_str()))
            .collect();
        let got: BTreeSet<(i64, &str)> = found
            .iter()
            .map(|e| (e.timestamp_ns, e.line.as_str()))
            .collect();
        if want != got {
            panel.push(format!(
                "{} iteration {} ({}): {} of its {} lines found, {} of other runs",
                r.app,
                r.iter,
                r.id,
                want.intersection(&got).count(),
                want.len(),
                got.difference(&want).count()
            ));
        }
    }
    if !without_run_id.is_empty() {
        problems.push(format!(
            "{} lines of a run in Loki without its run_id, e.g. {}",
            without_run_id.len(),
            without_run_id[..without_run_id.len().min(2)].join("; ")
        ));
    }
    if !panel.is_empty() {
        problems.push(format!(
            "the dashboard's {query} misses: {}",
            panel[..panel.len().min(3)].join("; ")
        ));
    }

    assert!(
        problems.is_empty(),
        "the Ralph loop as a user sees it:\n- {}",
        problems.join("\n- ")
    );
}
