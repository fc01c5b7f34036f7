//! `wisp-agent tap` against a running daemon, and `run --stdin --dry-run`.
//!
//! The tap shows, as JSON lines with their `source`, the records the daemon
//! ships from a tailed file, an `exec` run and OTLP logs; its filters run in
//! the daemon; a reader that does not read loses records for itself only,
//! told how many, while Loki still gets every line once; another local user
//! sees only their own records; no daemon is exit 1 naming `admin.listen`.
//! `run --stdin --dry-run` prints the records of the tmux capture as the
//! golden dry run does, and `--stdin` alone is refused.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::agent::{metric, Agent, Relay, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::{agent_command, append, wait_until, DEADLINE};

/// A configuration for the tap client: the daemon's admin address, nothing
/// else. In a folder any user may read (for the second user's tap).
fn client_config(dir: &Path, admin: SocketAddr) -> PathBuf {
    let path = dir.join(format!("client-{}.toml", admin.port()));
    std::fs::write(&path, format!("[admin]\nlisten = \"{admin}\"\n")).unwrap();
    support::users::open_up(dir, &[&path]);
    path
}

/// `wisp-agent tap` as a child process: its stdout lines as they come, its
/// stderr kept.
struct Tap {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<Value>,
}

impl Tap {
    fn start(cmd: Command, config: &Path, args: &[&str]) -> Tap {
        let mut cmd = cmd;
        let mut child = cmd
            .arg("tap")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let keep = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = keep.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Tap {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Takes every line printed so far.
    fn take(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("tap printed a line that is not JSON ({e}): {line}"));
            self.seen.push(v);
        }
    }

    /// Waits until a record whose line is `line` was printed; it, if so.
    async fn wait_line(&mut self, line: &str) -> Option<Value> {
        let found = wait_until(DEADLINE, || {
            self.take();
            self.seen.iter().any(|v| v["line"] == line)
        })
        .await;
        found.then(|| self.seen.iter().find(|v| v["line"] == line).cloned())?
    }

    fn lines(&mut self) -> Vec<String> {
        self.take();
        self.seen
            .iter()
            .filter_map(|v| v["line"].as_str().map(str::to_string))
            .collect()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Its exit code, once it exited within the deadline.
    async fn exit_code(&mut self) -> Option<i32> {
        let mut code = None;
        wait_until(DEADLINE, || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        })
        .await;
        code
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the daemon at `admin` serves `n` taps.
async fn wait_taps(admin: SocketAddr, n: usize) -> bool {
    support::wait_until_async(DEADLINE, || async move {
        metric(admin, "wisp_tap_clients").await == Some(n as f64)
    })
    .await
}

/// An agent tailing `logs/*.log` (job `app`), taking `exec` runs and OTLP
/// logs into Loki, its admin endpoint on a free port.
async fn relay_agent(
    collector: &OtlpReceiver,
    loki: &LokiReceiver,
) -> (Relay, Agent, SocketAddr, SocketAddr) {
    let relay = Relay::new(collector, "http/protobuf", Some(loki));
    relay.set_admin_listen("127.0.0.1:0");
    let (agent, _grpc, http) = relay.start().await;
    let admin = agent.admin_addr().await;
    (relay, agent, admin, http)
}

/// Sends one OTLP/JSON logs request of `service` with `line` at `severity`.
async fn send_otlp_log(http: SocketAddr, service: &str, line: &str, severity: u32) {
    let body = serde_json::json!({
        "resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeLogs": [{"logRecords": [{"severityNumber": severity, "body": {"stringValue": line}}]}]
        }]
    });
    let r = reqwest::Client::new()
        .post(format!("http://{http}/v1/logs"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// Runs `wisp-agent exec --name job -- sh -c 'echo line'` against `config`'s daemon.
fn exec_echo(config: &Path, job: &str, line: &str) {
    let out = agent_command()
        .args(["exec", "--config"])
        .arg(config)
        .args(["--name", job, "--", "sh", "-c", &format!("echo '{line}'")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "exec failed: {out:?}");
}

#[tokio::test]
async fn tap_shows_file_exec_and_otlp_records_with_their_source_and_exits_0_when_the_daemon_stops()
{
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let (relay, mut agent, admin, http) = relay_agent(&collector, &loki).await;
    let client = client_config(relay.dir.path(), admin);
    let mut tap = Tap::start(agent_command(), &client, &[]);
    assert!(wait_taps(admin, 1).await, "{}", tap.stderr());
    assert!(
        wait_until(DEADLINE, || tap.stderr().contains("tapping http://")).await,
        "{}",
        tap.stderr()
    );

    append(
        &relay.dir.path().join("logs/a.log"),
        &["from a file".to_string()],
    );
    exec_echo(&relay.config, "runjob", "from a run");
    send_otlp_log(http, "svc", "from otlp", 17).await;

    let file = tap.wait_line("from a file").await;
    let file = file.unwrap_or_else(|| panic!("no file record; tap printed {:?}", tap.seen));
    assert_eq!(file["source"], "file");
    assert_eq!(file["labels"]["job"], "app");
    assert!(file["labels"]["filename"]
        .as_str()
        .unwrap()
        .ends_with("/logs/a.log"));
    assert!(file["timestamp"].as_str().unwrap().ends_with('Z'));
    let run = tap.wait_line("from a run").await.expect("no exec record");
    assert_eq!(run["source"], "exec");
    assert_eq!(run["labels"]["job"], "runjob");
    let otlp = tap.wait_line("from otlp").await.expect("no otlp record");
    assert_eq!(otlp["source"], "otlp");
    assert_eq!(otlp["labels"]["job"], "svc");
    assert_eq!(otlp["labels"]["level"], "error");
    // What the tap showed is what Loki got.
    assert!(loki.wait_for_entries(r#"{job="svc"}"#, 1, DEADLINE).await);

    // The daemon stops: the tap ends, exit 0.
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(tap.exit_code().await, Some(0), "{}", tap.stderr());
    assert!(
        tap.stderr().contains("the daemon ended the tap"),
        "{}",
        tap.stderr()
    );
}

#[tokio::test]
async fn tap_filters_by_source_job_and_level_in_the_daemon_and_ctrl_c_exits_0() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let (relay, _agent, admin, http) = relay_agent(&collector, &loki).await;
    let client = client_config(relay.dir.path(), admin);
    let mut execs = Tap::start(agent_command(), &client, &["--source", "exec"]);
    let mut svc = Tap::start(agent_command(), &client, &["--job", "svc"]);
    let mut errors = Tap::start(agent_command(), &client, &["--level", "error"]);
    let mut all = Tap::start(agent_command(), &client, &[]);
    assert!(wait_taps(admin, 4).await, "{}", all.stderr());

    append(
        &relay.dir.path().join("logs/a.log"),
        &[
            r#"{"level":50,"msg":"file error"}"#.to_string(),
            r#"{"level":30,"msg":"file info"}"#.to_string(),
        ],
    );
    exec_echo(&relay.config, "runjob", "run info");
    send_otlp_log(http, "svc", "svc warn", 13).await;
    send_otlp_log(http, "other", "other error", 17).await;
    let file_error = r#"{"level":50,"msg":"file error"}"#;
    let file_info = r#"{"level":30,"msg":"file info"}"#;
    let want: [(&mut Tap, Vec<&str>); 4] = [
        (&mut execs, vec!["run info"]),
        (&mut svc, vec!["svc warn"]),
        (&mut errors, vec!["other error", file_error]),
        (
            &mut all,
            vec!["other error", "run info", "svc warn", file_info, file_error],
        ),
    ];
    for (tap, lines) in want {
        let mut got = Vec::new();
        let arrived = wait_until(DEADLINE, || {
            got = tap.lines();
            got.sort();
            got == lines
        })
        .await;
        assert!(arrived, "want {lines:?}, got {got:?}");
    }
    // Each tap got what it wanted and nothing else: the daemon queued 9
    // records in all (5 + 1 + 1 + 2).
    assert_eq!(metric(admin, "wisp_tap_records_total").await, Some(9.0));

    // Ctrl-C ends a tap with exit 0, and the daemon lets its place go.
    execs.signal("INT");
    assert_eq!(execs.exit_code().await, Some(0), "{}", execs.stderr());
    assert!(wait_taps(admin, 3).await);
}

#[tokio::test]
async fn a_reader_that_does_not_read_loses_records_for_itself_and_is_told_while_loki_gets_every_line_once(
) {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    let agent = setup.start();
    let admin = agent.admin_addr().await;

    // A client with a small receive window that reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(admin).await.unwrap();
    stalled
        .write_all(b"GET /tap HTTP/1.1\r\nhost: agent\r\n\r\n")
        .await
        .unwrap();
    assert!(wait_taps(admin, 1).await);

    // 20,000 lines of 500 bytes: far beyond the tap's 4096 records and the
    // sockets' buffers.
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("line {i:05} {}", "x".repeat(489)))
        .collect();
    let log = setup.log_path("big.log");
    for chunk in lines.chunks(2000) {
        append(&log, chunk);
    }
    loki.wait_for_exactly_once(r#"{job="app"}"#, &lines, Duration::from_secs(60))
        .await
        .unwrap();
    let dropped = metric(admin, "wisp_tap_records_dropped_total")
        .await
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "the stalled tap lost nothing?");

    // Now read: the records the tap kept, and how many it lost.
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut shown, mut told) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while shown + told < 20_000 && Instant::now() < deadline {
        let n = match tokio::time::timeout(DEADLINE, stalled.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        text.extend_from_slice(&buf[..n]);
        let s = String::from_utf8_lossy(&text);
        shown = s.matches("\"source\":\"file\"").count() as u64;
        told = s
            .lines()
            .filter_map(|l| l.strip_prefix("{\"dropped\":"))
            .filter_map(|l| l.strip_suffix('}')?.parse::<u64>().ok())
            .sum();
    }
    assert!(told > 0, "no {{\"dropped\":N}} line");
    assert_eq!(
        shown + told,
        20_000,
        "records shown plus those said dropped is every record"
    );
    assert_eq!(told as f64, dropped);
    assert!(shown >= 4096, "the tap kept at least its buffer: {shown}");
    // Loki still has each line exactly once (no loss, no duplicate).
    assert_eq!(loki.exactly_once(r#"{job="app"}"#, &lines), Ok(()));
}

#[tokio::test]
async fn another_user_taps_only_their_own_records() {
    let Some(intruder) = support::users::intruder() else {
        return; // skipped: needs root (printed)
    };
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let (relay, _agent, admin, _http) = relay_agent(&collector, &loki).await;
    let shared = tempfile::tempdir().unwrap();
    let client = client_config(shared.path(), admin);
    let bin = support::users::shared_binary(shared.path());
    let mut theirs = Tap::start(support::users::command_as(intruder, &bin), &client, &[]);
    let mut root = Tap::start(agent_command(), &client, &[]);
    assert!(wait_taps(admin, 2).await, "{}", theirs.stderr());
    assert!(
        wait_until(DEADLINE, || theirs
            .stderr()
            .contains("only your own records"))
        .await,
        "{}",
        theirs.stderr()
    );

    // Their file, theirs before the agent sees it (made aside, moved in).
    let aside = relay.dir.path().join("theirs.log");
    append(&aside, &["their line".to_string()]);
    std::os::unix::fs::chown(&aside, Some(intruder.0), Some(intruder.1)).unwrap();
    std::fs::rename(&aside, relay.dir.path().join("logs/theirs.log")).unwrap();
    append(
        &relay.dir.path().join("logs/root.log"),
        &["root's secret".to_string()],
    );

    assert!(root.wait_line("root's secret").await.is_some());
    assert!(root.wait_line("their line").await.is_some());
    assert!(
        theirs.wait_line("their line").await.is_some(),
        "{:?}",
        theirs.seen
    );
    // A line of theirs published after root's: once they have it, they
    // would have had root's before it.
    append(
        &relay.dir.path().join("logs/theirs.log"),
        &["their last line".to_string()],
    );
    assert!(theirs.wait_line("their last line").await.is_some());
    assert_eq!(theirs.lines(), ["their line", "their last line"]);
}

#[tokio::test]
async fn tap_without_a_daemon_or_with_the_endpoint_off_exits_1_naming_admin_listen() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then let go.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = client_config(dir.path(), free);
    let out = agent_command()
        .args(["tap", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no wisp-agent daemon answers"), "{err}");
    assert!(err.contains("admin.listen"), "{err}");
    assert!(out.stdout.is_empty());

    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[admin]\nlisten = \"\"\n").unwrap();
    let out = agent_command()
        .args(["tap", "--config"])
        .arg(&off)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("admin.listen = \"\""), "{err}");
    assert!(err.contains("set [admin] listen"), "{err}");
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A record as the golden file summarizes it (see `golden_dry_run.rs`).
fn summarize(record: &Value, started: SystemTime) -> Value {
    let line = record["line"].as_str().unwrap_or_default();
    let ts = record["timestamp"].as_str().unwrap_or_default();
    let when = humantime::parse_rfc3339(ts).expect("RFC 3339 timestamps");
    let source = if when < started { "line" } else { "read" };
    let head: String = line.chars().take(200).collect();
    let mut v = serde_json::json!({
        "level": record["labels"]["level"],
        "timestamp": source,
        "line": head,
    });
    if head.len() < line.len() {
        v["line_bytes"] = serde_json::json!(line.len());
    }
    if let Some(m) = record["structured_metadata"].as_object() {
        if !m.is_empty() {
            v["structured_metadata"] = Value::Object(m.clone());
        }
    }
    v
}

#[test]
fn run_stdin_dry_run_prints_the_tmux_capture_as_the_golden_dry_run_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        r#"[agent]
hostname = "vm"
timestamp_max_age = "36500d"

[[files]]
name = "other"
paths = ["/nonexistent/*.log"]
multiline = "none"

[[files]]
name = "refly-api"
paths = ["/nonexistent/*.log"]
"#,
    )
    .unwrap();
    let started = SystemTime::now();
    let out = agent_command()
        .args([
            "run",
            "--stdin",
            "--dry-run",
            "--job",
            "refly-api",
            "--config",
        ])
        .arg(&config)
        .stdin(std::fs::File::open(repo("tests/fixtures/tmux/refly-api.log")).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout holds only JSON lines"))
        .collect();
    for r in &records {
        assert_eq!(r["labels"]["job"], "refly-api");
        assert_eq!(r["labels"]["host"], "vm");
        assert!(r["labels"].get("filename").is_none(), "{r}");
        assert!(r.get("source").is_none(), "{r}");
    }
    let got: Vec<Value> = records.iter().map(|r| summarize(r, started)).collect();
    let expected: Vec<Value> =
        std::fs::read_to_string(repo("tests/golden/refly-api.expected.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "record {} differs", i + 1);
    }
    assert_eq!(got.len(), expected.len());
}

#[test]
fn run_stdin_without_dry_run_is_refused_with_exit_2_saying_why() {
    let out = agent_command()
        .args(["run", "--stdin", "--config", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--stdin needs --dry-run"), "{err}");
    assert!(err.contains("never shipped"), "{err}");
    assert!(out.stdout.is_empty());
}
