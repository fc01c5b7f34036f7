//! `wisp-agent exec` wires the wrapped command's own OpenTelemetry into the run,
//! as a user sees it: the command finds the agent's local receiver in
//! `OTEL_EXPORTER_OTLP_ENDPOINT` and the run in `OTEL_RESOURCE_ATTRIBUTES` (a
//! user's own settings kept), a span the command sends itself reaches the
//! collector through the agent in the run's trace, the run's span carries git
//! HEAD before and after and the cost the command reported (across a `kill -9`
//! of the daemon), and `/metrics` counts the runs by job and exit status.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::agent::{metric, Agent};
use support::loki::LokiReceiver;
use support::otlp::{OtlpReceiver, SeenSpan};
use support::{agent_command, wait_until, wait_until_async, DEADLINE};

/// A port free now, for a receiver whose address `exec` must read from the
/// configuration (with port 0 only the daemon would know it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon configuration in `dir`: Loki at `loki`, OTLP relayed to
/// `collector` over gRPC, the local OTLP/HTTP receiver on `http_port`, the
/// admin endpoint on a free port.
fn config(dir: &Path, loki: &LokiReceiver, collector: &OtlpReceiver, http_port: u16) -> PathBuf {
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
url = "http://{{host}}:{port}/loki/api/v1/push"
batch_max_wait = "100ms"
[otlp]
endpoint = "{endpoint}"
protocol = "grpc"
max_backoff = "300ms"
[receiver]
grpc = ""
http = "127.0.0.1:{http_port}"
[host_metrics]
enabled = false
[admin]
listen = "127.0.0.1:0"
[exec]
socket = "{socket}"
"#,
            socket = dir.join("exec.sock").display(),
            state = dir.join("state").display(),
            port = loki.addr().port(),
            endpoint = collector.grpc_endpoint(),
        ),
    )
    .unwrap();
    config
}

/// `wisp-agent exec --config CONFIG ARGS` in `cwd` with `env` set (the
/// agent's own variables cleared otherwise).
fn exec_in(cwd: &Path, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = agent_command();
    cmd.current_dir(cwd)
        .arg("exec")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The `NAME=value` lines of `env` output.
fn environment(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The trace id of `TRACEPARENT`.
fn trace_of(traceparent: &str) -> String {
    traceparent
        .split('-')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// A daemon running on `config`, once its exec socket and admin endpoint are up.
async fn start(dir: &Path, config: &Path) -> (Agent, SocketAddr) {
    let agent = Agent::start(config, &dir.join("agent.stderr"));
    let socket = dir.join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let admin = agent.admin_addr().await;
    (agent, admin)
}

/// The span of the exec run with `job`, once the collector has it.
async fn run_span(collector: &OtlpReceiver, job: &str, agent: &Agent) -> SeenSpan {
    let mut found = None;
    let arrived = wait_until(DEADLINE, || {
        found = collector
            .spans()
            .into_iter()
            .find(|s| s.scope == "wisp-agent exec" && s.name == job);
        found.is_some()
    })
    .await;
    assert!(arrived, "no span of {job}; agent log:\n{}", agent.log());
    found.unwrap()
}

#[tokio::test]
async fn the_command_finds_the_local_receiver_and_its_run_in_the_environment() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), &loki, &collector, port);
    let out = exec_in(
        dir.path(),
        &config,
        &[],
        &["--name", "ralph loop", "--label", "iter=3", "--", "env"],
    );
    assert_eq!(out.status.code(), Some(0));
    let env = environment(&out);
    assert_eq!(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
        Some(format!("http://127.0.0.1:{port}").as_str()),
        "{env:?}"
    );
    assert_eq!(
        env.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(String::as_str),
        Some("http/protobuf")
    );
    let trace = trace_of(&env["TRACEPARENT"]);
    assert_eq!(trace.len(), 32, "{env:?}");
    assert_eq!(
        env["OTEL_RESOURCE_ATTRIBUTES"],
        format!("wisp.run.id={trace},wisp.run.name=ralph%20loop,wisp.run.labels=iter,iter=3")
    );
    // The run's span id is the run id's low half: the relay needs no more to
    // put the command's spans under it.
    assert_eq!(
        env["TRACEPARENT"],
        format!("00-{trace}-{}-01", &trace[16..]),
        "{env:?}"
    );

    // What the user set is kept: their endpoint (and so no protocol of ours),
    // their other resource attributes; the run's own keys are the run's.
    let out = exec_in(
        dir.path(),
        &config,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector.example:4317",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "team=core,wisp.run.name=forged,deployment.environment=dev",
            ),
            (
                "TRACEPARENT",
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
        ],
        &["--name", "ralph", "--", "env"],
    );
    assert_eq!(out.status.code(), Some(0));
    let env = environment(&out);
    assert_eq!(
        env["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://collector.example:4317"
    );
    assert!(!env.contains_key("OTEL_EXPORTER_OTLP_PROTOCOL"), "{env:?}");
    let trace = trace_of(&env["TRACEPARENT"]);
    assert_ne!(trace, "11111111111111111111111111111111", "the run's own");
    assert_eq!(
        env["OTEL_RESOURCE_ATTRIBUTES"],
        format!("team=core,deployment.environment=dev,wisp.run.id={trace},wisp.run.name=ralph")
    );

    // An exec inside the command reads its configuration as well, though the
    // endpoint it inherits is the agent's own receiver.
    let bin = env!("CARGO_BIN_EXE_wisp-agent");
    let out = exec_in(
        dir.path(),
        &config,
        &[],
        &[
            "--",
            bin,
            "exec",
            "--config",
            config.to_str().unwrap(),
            "--name",
            "inner",
            "--",
            "env",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("without capturing"), "{err}");
    let env = environment(&out);
    assert!(
        env["OTEL_RESOURCE_ATTRIBUTES"].ends_with(",wisp.run.name=inner"),
        "{env:?}"
    );
}

/// Sends one span over OTLP/HTTP JSON as an instrumented program would: to
/// `$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces`, in the trace of `TRACEPARENT`, with
/// the resource of `OTEL_RESOURCE_ATTRIBUTES`.
const SEND_OWN_SPAN: &str = r#"
import json, os, time, urllib.parse, urllib.request
_, trace, parent, _ = os.environ["TRACEPARENT"].split("-")
attrs = [{"key": "service.name", "value": {"stringValue": "coding-agent"}}]
for part in os.environ["OTEL_RESOURCE_ATTRIBUTES"].split(","):
    k, v = part.split("=", 1)
    attrs.append({"key": k, "value": {"stringValue": urllib.parse.unquote(v)}})
now = time.time_ns()
span = {"traceId": trace, "spanId": "00f067aa0ba902b7", "parentSpanId": parent,
        "name": "tool call", "kind": 1,
        "startTimeUnixNano": str(now - 1000000), "endTimeUnixNano": str(now)}
body = {"resourceSpans": [{"resource": {"attributes": attrs},
        "scopeSpans": [{"scope": {"name": "agent-sdk"}, "spans": [span]}]}]}
req = urllib.request.Request(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] + "/v1/traces",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
print("sent", urllib.request.urlopen(req, timeout=10).status)
"#;

#[tokio::test]
async fn a_span_the_command_sends_itself_joins_the_runs_trace_at_the_collector() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &loki, &collector, free_port());
    let (mut agent, _) = start(dir.path(), &config).await;
    let out = exec_in(
        dir.path(),
        &config,
        &[],
        &["--name", "ralph", "--", "python3", "-c", SEND_OWN_SPAN],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sent 200\n");
    let run = run_span(&collector, "ralph", &agent).await;
    let mut own = None;
    assert!(
        wait_until(DEADLINE, || {
            own = collector
                .spans()
                .into_iter()
                .find(|s| s.name == "tool call");
            own.is_some()
        })
        .await,
        "{}",
        agent.log()
    );
    let own = own.unwrap();
    assert_eq!(own.service_name, "coding-agent");
    assert_eq!(own.trace_id, run.trace_id, "in the run's trace");
    assert_eq!(own.parent_span_id, run.span_id, "a child of the run's span");
    assert_eq!(
        own.resource.get("wisp.run.id"),
        Some(&run.trace_id),
        "{:?}",
        own.resource
    );
    assert_eq!(
        own.resource.get("wisp.run.name").map(String::as_str),
        Some("ralph")
    );
    assert_eq!(agent.terminate(), Some(0));
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(repo)
        .args(["-c", "user.name=wisp", "-c", "user.email=wisp@example.com"])
        .args(args)
        .output()
        .expect("git is installed (.ci/run installs it)");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn the_span_has_git_head_before_and_after_in_a_work_tree_and_none_outside() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &loki, &collector, free_port());
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "before"]);
    let before = git(&repo, &["rev-parse", "HEAD"]);
    let (mut agent, _) = start(dir.path(), &config).await;
    let out = exec_in(
        &repo,
        &config,
        &[],
        &[
            "--name",
            "committer",
            "--",
            "git",
            "-c",
            "user.name=wisp",
            "-c",
            "user.email=wisp@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "the iteration's work",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = git(&repo, &["rev-parse", "HEAD"]);
    assert_ne!(before, after);
    let span = run_span(&collector, "committer", &agent).await;
    assert_eq!(span.attributes.get("wisp.git.head.before"), Some(&before));
    assert_eq!(span.attributes.get("wisp.git.head.after"), Some(&after));

    let outside = dir.path().join("not-a-repo");
    std::fs::create_dir(&outside).unwrap();
    let out = exec_in(&outside, &config, &[], &["--name", "plain", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    let span = run_span(&collector, "plain", &agent).await;
    assert!(
        !span.attributes.keys().any(|k| k.starts_with("wisp.git.")),
        "{:?}",
        span.attributes
    );
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test]
async fn a_reported_cost_is_on_the_span_and_runs_are_counted_by_exit_status() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &loki, &collector, free_port());
    let (mut agent, admin) = start(dir.path(), &config).await;
    // Claude Code's `-p --output-format json` result line, after other output.
    let result = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2817,"num_turns":3,"result":"done","session_id":"4f1c","total_cost_usd":0.0342,"usage":{"input_tokens":12,"output_tokens":80}}"#;
    let script = format!("echo 'working on it'; echo '{result}'");
    let out = exec_in(
        dir.path(),
        &config,
        &[],
        &["--name", "ralph", "--", "sh", "-c", &script],
    );
    assert_eq!(out.status.code(), Some(0));
    let span = run_span(&collector, "ralph", &agent).await;
    assert_eq!(
        span.attributes
            .get("wisp.exec.cost_usd")
            .map(String::as_str),
        Some("0.0342")
    );
    let out = exec_in(
        dir.path(),
        &config,
        &[],
        &["--name", "ralph", "--", "sh", "-c", "echo failing; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3));
    let counted = wait_until_async(DEADLINE, || async {
        metric(admin, r#"wisp_exec_runs_total{job="ralph",exit_code="3"}"#).await == Some(1.0)
    })
    .await;
    assert!(counted, "{}", agent.log());
    assert_eq!(
        metric(admin, r#"wisp_exec_runs_total{job="ralph",exit_code="0"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        metric(admin, r#"wisp_exec_cost_usd_total{job="ralph"}"#).await,
        Some(0.0342),
        "the failing run reported no cost"
    );
    let seconds = metric(admin, r#"wisp_exec_run_seconds_total{job="ralph"}"#).await;
    assert!(seconds.is_some_and(|s| s >= 0.0), "{seconds:?}");
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test]
async fn a_killed_exec_flushed_later_is_counted_once_with_an_unknown_exit() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &loki, &collector, free_port());
    let outbox = dir.path().join("state").join("exec-outbox");
    let pid_file = dir.path().join("command.pid");
    // No daemon: the run stays in the outbox; then exec dies mid-run.
    let script = format!(
        "echo $$ > {}; echo 'half done'; exec sleep 60",
        pid_file.display()
    );
    let mut child = agent_command()
        .current_dir(dir.path())
        .args(["exec", "--name", "ralph", "--config"])
        .arg(&config)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let captured = wait_until(DEADLINE, || {
        std::fs::read_dir(&outbox).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.len() > 200))
        }) && pid_file.exists()
    })
    .await;
    assert!(captured, "the run's line never reached its capture");
    child.kill().unwrap();
    child.wait().unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();

    let (mut agent, admin) = start(dir.path(), &config).await;
    for _ in 0..2 {
        let out = exec_in(dir.path(), &config, &[], &["--flush"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let span = run_span(&collector, "ralph", &agent).await;
    assert_eq!(span.status_code, 2);
    assert_eq!(
        metric(
            admin,
            r#"wisp_exec_runs_total{job="ralph",exit_code="unknown"}"#
        )
        .await,
        Some(1.0),
        "{}",
        agent.log()
    );
    assert_eq!(collector.spans().len(), 1, "{:?}", collector.spans());
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test]
async fn a_cost_reported_before_a_daemon_kill_is_still_the_runs_after_the_restart() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &loki, &collector, free_port());
    let (mut agent, _) = start(dir.path(), &config).await;
    let go = dir.path().join("go");
    let result = r#"{"type":"result","subtype":"success","result":"done","total_cost_usd":1.25}"#;
    let script = format!(
        "echo '{result}'; while [ ! -e {} ]; do sleep 0.05; done; echo 'after the restart'",
        go.display()
    );
    let mut child = agent_command()
        .current_dir(dir.path())
        .args(["exec", "--name", "ralph", "--config"])
        .arg(&config)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The cost line is durable in the daemon's buffer: it will not be sent
    // again, so the restarted daemon must know its cost from the buffer.
    agent
        .assert_shipped_once(&loki, r#"{job="ralph"}"#, &[result.to_string()], DEADLINE)
        .await;
    agent.kill9();
    let (mut agent, admin) = start(dir.path(), &config).await;
    std::fs::write(&go, "").unwrap();
    let exited = wait_until(DEADLINE, || child.try_wait().ok().flatten().is_some()).await;
    let _ = child.kill();
    assert!(exited, "exec did not exit");
    let out = exec_in(dir.path(), &config, &[], &["--flush"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let span = run_span(&collector, "ralph", &agent).await;
    assert_eq!(
        span.attributes
            .get("wisp.exec.cost_usd")
            .map(String::as_str),
        Some("1.25"),
        "{:?}",
        span.attributes
    );
    assert_eq!(
        metric(admin, r#"wisp_exec_cost_usd_total{job="ralph"}"#).await,
        Some(1.25)
    );
    assert_eq!(agent.terminate(), Some(0));
}
