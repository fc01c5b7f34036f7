//! `wisp-agent status` against a running agent (the real binary, the fake
//! Loki and collector): the summary's figures, `--json` and its documented
//! keys, Loki away (buffered data, the last error, exit 0: the daemon is
//! healthy), no daemon (exit 1), no address to ask (exit 2), secrets kept out;
//! and the periodic status line of `run` (`agent.status_interval`).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::agent::{Agent, Relay, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::{append, wait_until, DEADLINE};

const APP: &str = r#"{job="app"}"#;
const PASSWORD: &str = "s3cr3t-pw";

/// `wisp-agent status ARGS --config CONFIG`, off the test's runtime.
async fn status(config: &Path, args: &[&str]) -> Output {
    let mut cmd = support::agent_command();
    cmd.arg("status").args(args).arg("--config").arg(config);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A copy of the agent's configuration whose `admin.listen` is the address the
/// agent logged (it bound port 0, which `status` cannot guess).
fn status_config(config: &Path, addr: SocketAddr) -> PathBuf {
    let t = std::fs::read_to_string(config).unwrap();
    assert!(t.contains("listen = \"127.0.0.1:0\""), "{t}");
    let t = t.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    );
    let path = config.with_file_name("status.toml");
    std::fs::write(&path, t).unwrap();
    path
}

/// `GET /status`, parsed.
async fn get_status(addr: SocketAddr) -> Option<serde_json::Value> {
    let body = reqwest::get(format!("http://{addr}/status"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// Waits until `/status` satisfies `cond`; panics with the agent's log if not.
async fn wait_status(agent: &Agent, addr: SocketAddr, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut last = None;
    let mut ok = false;
    while !ok && tokio::time::Instant::now() < deadline {
        last = get_status(addr).await;
        ok = last.as_ref().is_some_and(&cond);
        if !ok {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert!(
        ok,
        "/status never matched: {last:#?}\nagent log:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_host_files_lines_shipped_and_buffered_bytes() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    let lines = support::pino_lines(30, "line", 0, 25);
    append(&setup.log_path("a.log"), &lines);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    wait_status(&agent, addr, |s| s["loki"]["records_shipped"] == 25).await;

    let o = status(&status_config(&setup.config, addr), &[]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "health:  ok",
        "host:    127.0.0.1",
        "files:   1 tailed now, 25 lines read",
        "loki:    25 lines shipped",
        "0 B of 512.0 MiB buffered",
        "last push ",
        "0 retries, 0 dropped",
        "otlp:    off",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(!out.contains("last push never"), "{out}");
    assert!(out.lines().count() <= 24, "more than a screen:\n{out}");
}

/// The `/status` keys `docs/REFERENCE.md` documents (its `status-keys` table).
fn documented_keys() -> BTreeSet<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/REFERENCE.md"))
            .unwrap();
    let begin = doc
        .find("<!-- status-keys:begin -->")
        .expect("no status-keys:begin");
    let end = doc
        .find("<!-- status-keys:end -->")
        .expect("no status-keys:end");
    doc[begin..end]
        .lines()
        .filter_map(|l| {
            let cell = l.trim().strip_prefix('|')?.split('|').next()?.trim();
            Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_string())
        })
        .collect()
}

/// Every key of `v` as a dotted path (`loki.buffer.bytes`; `exec.jobs[].job`
/// for the elements of an array).
fn keys(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                keys(v, &path, out);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                keys(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_parses_and_has_exactly_the_documented_keys() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    relay.set_admin_listen("127.0.0.1:0");
    let (agent, _, http) = relay.start().await;
    let addr = agent.admin_addr().await;
    // One span relayed: the collector's last export is then known.
    let answer = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(span_json("relayed"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    wait_status(&agent, addr, |s| s["otlp"]["requests_shipped"] == 1).await;
    let o = status(&status_config(&relay.config, addr), &["--json"]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(v["version"], 1);
    assert_eq!(v["agent"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["health"]["ok"], true);
    assert_eq!(v["host"]["address"], "127.0.0.1");
    assert!(v["otlp"]["buffer"]["max_bytes"].as_u64() > Some(0), "{v:#}");
    assert_eq!(v["otlp"]["requests_received"], 1, "{v:#}");
    assert!(
        v["otlp"]["last_export_seconds_ago"]
            .as_f64()
            .is_some_and(|s| s < 60.0),
        "{v:#}"
    );
    assert!(v["loki"]["last_push_seconds_ago"].is_null(), "{v:#}");
    let mut served = BTreeSet::new();
    keys(&v, "", &mut served);
    let documented = documented_keys();
    // No exec run yet: the elements of `exec.jobs` are documented, not served.
    let missing: Vec<_> = documented
        .iter()
        .filter(|k| !served.contains(*k) && !k.starts_with("exec.jobs[]."))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty() && undocumented.is_empty(),
        "documented but not served: {missing:?}\nserved but not documented: {undocumented:?}\n{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loki_down_status_shows_the_buffered_lines_and_the_last_error_and_exits_0() {
    let loki = LokiReceiver::start().await;
    let port = loki.addr().port();
    loki.stop().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    // A password in the push URL: never shown.
    let t = std::fs::read_to_string(&setup.config).unwrap();
    let t = t.replacen(
        "url = \"http://{host}:",
        &format!("url = \"http://wisp:{PASSWORD}@{{host}}:"),
        1,
    );
    assert!(t.contains(PASSWORD) && t.contains(&port.to_string()));
    std::fs::write(&setup.config, t).unwrap();
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    append(
        &setup.log_path("a.log"),
        &support::pino_lines(30, "waiting", 0, 10),
    );
    wait_status(&agent, addr, |s| {
        s["loki"]["buffer"]["bytes"].as_u64() > Some(0)
            && s["loki"]["retries"].as_u64() > Some(0)
            && s["loki"]["last_error"].is_string()
    })
    .await;

    let config = status_config(&setup.config, addr);
    let o = status(&config, &[]).await;
    let (out, err) = text(&o);
    // Loki away is not the agent unhealthy: the buffer is doing its job.
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("health:  ok"), "{out}");
    assert!(out.contains("loki:    0 lines shipped"), "{out}");
    assert!(out.contains("last push never"), "{out}");
    assert!(!out.contains(" 0 B of 512.0 MiB buffered"), "{out}");
    // The last error, with when it happened.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("last error ") && l.contains(" ago: ")),
        "{out}"
    );
    let json = status(&config, &["--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&text(&json).0).unwrap();
    assert!(doc["loki"]["last_error_seconds_ago"].is_number(), "{doc}");
    for shown in [out, err, text(&json).0, text(&json).1, agent.log()] {
        assert!(!shown.contains(PASSWORD), "a secret is shown:\n{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_daemon_status_exits_1_naming_the_address_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[admin]\nlisten = \"0.0.0.0:{port}\"\n")).unwrap();
    let o = status(&config, &[]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.is_empty(), "{out}");
    // 0.0.0.0 is asked on loopback.
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/status")),
        "{err}"
    );
    assert!(err.contains("admin.listen"), "{err}");
    assert!(
        err.contains("wisp-agent run") && err.contains("systemctl start wisp-agent"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_address_to_ask_status_exits_2_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[admin]\nlisten = \"\"\n").unwrap();
    let o = status(&config, &[]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("needs the admin endpoint") && err.contains("admin.listen = \"\""),
        "{err}"
    );

    std::fs::write(&config, "[admin]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let o = status(&config, &[]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot guess"), "{err}");

    std::fs::write(&config, "[admin]\nlisten = \"nonsense\"\n").unwrap();
    let o = status(&config, &[]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}

/// The agent of `setup` with `agent.status_interval = interval`.
fn with_status_interval(setup: &Setup, interval: &str) -> Agent {
    let t = std::fs::read_to_string(&setup.config).unwrap();
    let t = t.replacen(
        "hostname = \"vm-test\"\n",
        &format!("hostname = \"vm-test\"\nstatus_interval = \"{interval}\"\n"),
        1,
    );
    std::fs::write(&setup.config, t).unwrap();
    setup.start()
}

fn status_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" status: ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_a_status_line_every_status_interval_and_none_with_0s() {
    let loki = LokiReceiver::start().await;
    let quiet = Setup::new(&loki, "");
    let quiet_agent = with_status_interval(&quiet, "0s");
    let setup = Setup::new(&loki, "");
    let agent = with_status_interval(&setup, "200ms");
    let lines = support::pino_lines(30, "line", 0, 7);
    append(&setup.log_path("a.log"), &lines);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    let want =
        "status: host 127.0.0.1, 1 files, 7 lines read, loki 7 shipped 0 B buffered, last push ";
    let logged = wait_until(DEADLINE, || {
        let log = agent.log();
        status_lines(&log)
            .iter()
            .filter(|l| l.contains(want))
            .count()
            >= 2
    })
    .await;
    assert!(logged, "no status line with {want:?}:\n{}", agent.log());
    assert!(
        status_lines(&agent.log())
            .iter()
            .all(|l| l.contains(" INFO ") && l.contains("0 retries, 0 dropped")),
        "{}",
        agent.log()
    );
    // The quiet agent started first and ran as long: it logged none.
    let mut quiet_agent = quiet_agent;
    let quiet_log = quiet_agent.log();
    assert!(status_lines(&quiet_log).is_empty(), "{quiet_log}");
    assert!(quiet_log.contains("tailing app"), "{quiet_log}");
    // "0s" is off, not a zero period (tokio's interval panics on one).
    assert!(!quiet_log.contains("panicked"), "{quiet_log}");
    assert_eq!(quiet_agent.terminate(), Some(0), "{}", quiet_agent.log());
}

/// An OTLP/HTTP JSON export of one span named `name`.
fn span_json(name: &str) -> String {
    serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0123456789abcdef0123456789abcdef",
        "spanId": "0123456789abcdef",
        "name": name,
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
    }]}]}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_buffer_that_cannot_write_status_says_unhealthy_and_exits_1() {
    let Some(fs) = support::TinyFs::mount("1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let collector = OtlpReceiver::start().await;
    collector.stop().await;
    let relay = Relay::with_state_dir(
        &collector,
        "http/json",
        None,
        Some(&fs.path().join("state")),
    );
    relay.set_admin_listen("127.0.0.1:0");
    let (agent, _, http) = relay.start().await;
    let addr = agent.admin_addr().await;
    let config = status_config(&relay.config, addr);
    assert_eq!(status(&config, &[]).await.status.code(), Some(0));

    // The disk fills: a request larger than a page cannot be appended.
    support::fill(&fs.path().join("filler"));
    let answer = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(span_json(&"x".repeat(64 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    wait_status(&agent, addr, |s| s["health"]["ok"] == false).await;

    let o = status(&config, &[]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("health:  unhealthy: ") && out.contains("otlp buffer"),
        "{out}"
    );
    assert!(
        err.contains("unhealthy") && err.contains("/healthz"),
        "{err}"
    );
    let json = status(&config, &["--json"]).await;
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v["health"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("otlp buffer")),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_shows_status_interval_and_refuses_a_tiny_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let state = dir.path().join("state");
    let write = |interval: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{}\"\nstatus_interval = \"{interval}\"\n",
                state.display()
            ),
        )
        .unwrap()
    };
    let check = || {
        let mut cmd = support::agent_command();
        cmd.args(["config", "check", "--config"]).arg(&config);
        cmd.output().unwrap()
    };
    write("2m");
    let o = check();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("status_interval = \"2m\""), "{out}");
    write("0s");
    assert_eq!(check().status.code(), Some(0));
    write("10ms");
    let o = check();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("agent.status_interval") && err.contains("100ms"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_named_with_escape_sequences_reaches_no_terminal_raw() {
    use std::io::Write;
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    // `exec` refuses such a name; anyone can speak the socket's protocol by
    // hand: a run named to clear the screen and retitle the terminal.
    let evil = "x\u{1b}]0;owned\u{7}\u{1b}[2J\r";
    let frames = [
        serde_json::json!({"type": "hello", "version": 1, "job": evil,
            "labels": {"note": "a\u{1b}[31mred"},
            "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "8448eb211c80319c",
            "started_ms": 1}),
        serde_json::json!({"type": "lines", "seq": 1, "lines": [
            {"stream": "stdout", "text": "hello from the run", "time_ns": 0}]}),
        serde_json::json!({"type": "end", "exit": 0, "ended_ms": 2}),
    ];
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    for f in &frames {
        let body = serde_json::to_vec(f).unwrap();
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&body).unwrap();
    }
    let want = ["hello from the run".to_string()];
    let wait = loki.wait_for_exactly_once(r#"{note="a\\u{1b}[31mred"}"#, &want, DEADLINE);
    if let Err(e) = wait.await {
        panic!("{e}: {:?}\n{}", loki.streams(), agent.log());
    }
    let raw = |t: &str| t.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    for labels in loki.streams() {
        assert!(!labels.values().any(|v| raw(v)), "{labels:?}");
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wisp_exec_runs_total{job=\"x\\\\u{1b}]0;owned"),
        "{metrics}"
    );
    assert!(!raw(&metrics));
    let o = status(&status_config(&setup.config, addr), &[]).await;
    let (out, err) = text(&o);
    assert!(out.contains("x\\u{1b}]0;owned"), "{out}");
    assert!(!raw(&out) && !raw(&err), "{out:?}{err:?}");
    assert!(!raw(&agent.log()), "{}", agent.log());
}
