//! `wisp-agent exec -- CMD` as a user sees it: the command's output passes through
//! unchanged, its exit status is exec's, and what it printed reaches Loki through
//! the daemon's exec socket with `job` = `--name`, the `--label`s and the `user`
//! the kernel names, whether the daemon ran at the time or started later (then
//! the caller's own outbox keeps it until the next exec or `exec --flush`).
//! Nothing the daemon does depends on files other users can write.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use support::agent::{Agent, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::users::INTRUDER;
use support::{agent_command, wait_until, DEADLINE};

fn exec(config: &Path, args: &[&str]) -> Output {
    agent_command()
        .arg("exec")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Root's outbox under the test's state dir.
fn outbox(setup: &Setup) -> PathBuf {
    setup.dir.path().join("state").join("exec-outbox")
}

/// The captures in a directory.
fn captures_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cap"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn captures(setup: &Setup) -> Vec<PathBuf> {
    captures_in(&outbox(setup))
}

/// The frames of a capture: 4-byte big-endian length, then JSON.
fn frames(path: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        out.push(serde_json::from_slice(&bytes[at..at + len]).unwrap());
        at += len;
    }
    out
}

/// The name of the user running the tests.
fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Waits (bounded) for a child to exit.
async fn exits_within_deadline(child: &mut Child) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(DEADLINE, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    })
    .await;
    status
}

fn pino(level: u8, msg: &str) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(r#"{{"level":{level},"time":{now_ms},"pid":1,"hostname":"vm","msg":"{msg}"}}"#)
}

#[tokio::test]
async fn the_exit_status_is_the_commands_own() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let cases: [(&[&str], i32); 4] = [
        (&["--", "true"], 0),
        (&["--", "sh", "-c", "exit 3"], 3),
        (&["--", "sh", "-c", "kill -TERM $$"], 128 + 15),
        (&["--", "sh", "-c", "kill -KILL $$"], 128 + 9),
    ];
    for (args, code) in cases {
        let out = exec(&setup.config, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
    }
    let out = exec(&setup.config, &["--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-command-here: command not found"),
        "{err}"
    );
    let not_executable = setup.dir.path().join("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    let out = exec(&setup.config, &["--", not_executable.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
}

#[tokio::test]
async fn output_passes_through_unchanged() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let out = exec(
        &setup.config,
        &[
            "--",
            "sh",
            "-c",
            r#"printf 'one\n\033[31mred\033[0m\r\nno newline'; printf 'err\000bin\n' >&2"#,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"one\n\x1b[31mred\x1b[0m\r\nno newline");
    // No daemon runs: after the command's own output, exec says so (once).
    let (command, exec_says) = out.stderr.split_at(8);
    assert_eq!(command, b"err\0bin\n");
    let exec_says = String::from_utf8_lossy(exec_says);
    assert!(
        exec_says.starts_with("wisp-agent exec: no daemon answers") && exec_says.ends_with('\n'),
        "{exec_says}"
    );
    let again = exec(&setup.config, &["--", "sh", "-c", "echo quiet >&2"]);
    assert_eq!(again.stderr, b"quiet\n", "said once until a daemon answers");
}

#[tokio::test]
async fn output_reaches_loki_once_with_the_name_labels_and_user() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "the daemon never opened its exec socket:\n{}",
        agent.log()
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "any local user may connect");
    let error = pino(50, "iteration failed");
    let own_trace = r#"{"level":30,"msg":"traced","trace_id":"11111111111111111111111111111111","span_id":"2222222222222222"}"#;
    let tp_file = setup.dir.path().join("traceparent");
    let script = format!(
        "echo $TRACEPARENT > {}; echo '{error}'; echo 'plain words' >&2; echo '{own_trace}'; exit 1",
        tp_file.display()
    );
    let out = exec(
        &setup.config,
        &[
            "--name", "ralph", "--label", "iter=3", "--", "sh", "-c", &script,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let printed = [error.clone(), "plain words".into(), own_trace.to_string()];
    agent
        .assert_shipped_once(&loki, r#"{job="ralph"}"#, &printed, DEADLINE)
        .await;
    let user = whoami();
    assert_eq!(
        loki.lines(&format!(
            r#"{{job="ralph", iter="3", level="error", host="vm-test", user="{user}"}}"#
        )),
        vec![error]
    );
    assert_eq!(
        loki.lines(r#"{job="ralph", iter="3", level="unknown"}"#),
        vec!["plain words".to_string()]
    );
    // Every line is the run's: it carries the run's id, and is in the run's
    // trace (the relay puts the command's own spans there too); a line with a
    // span id of its own keeps it, the others link to the run's span, whose id
    // is the run id's low half.
    let traceparent = std::fs::read_to_string(&tp_file).unwrap();
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let (run_trace, run_span) = (parts[1], parts[2]);
    assert_eq!(run_span, &run_trace[16..]);
    for e in loki.entries(r#"{job="ralph"}"#) {
        let ids = (
            e.metadata.get("run_id").map(String::as_str),
            e.metadata.get("trace_id").map(String::as_str),
            e.metadata.get("span_id").map(String::as_str),
        );
        let span = if e.line == own_trace {
            "2222222222222222"
        } else {
            run_span
        };
        assert_eq!(
            ids,
            (Some(run_trace), Some(run_trace), Some(span)),
            "{}",
            e.line
        );
    }
    // Handed over: nothing stays in the outbox.
    assert!(
        wait_until(DEADLINE, || captures(&setup).is_empty()).await,
        "{:?}",
        captures(&setup)
    );
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="ralph"}"#, &printed), Ok(()));
    assert!(
        !socket.exists(),
        "the daemon removes its socket as it stops"
    );
}

#[tokio::test]
async fn output_kept_while_the_daemon_is_down_is_taken_when_it_starts_and_a_flush_clears_it() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut printed = Vec::new();
    for i in 0..3 {
        let line = pino(30, &format!("iteration {i}"));
        let out = exec(&setup.config, &["--", "echo", &line]);
        assert_eq!(out.status.code(), Some(0));
        printed.push(line);
    }
    // No daemon to take them: they wait in the caller's own outbox, 0700.
    assert_eq!(captures(&setup).len(), 3);
    let mode = std::fs::metadata(outbox(&setup))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let out = exec(&setup.config, &["--flush"]);
    assert_eq!(out.status.code(), Some(1), "nothing could be handed over");
    assert_eq!(captures(&setup).len(), 3);

    // The daemon, once up, takes what the runs left, with no further exec.
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &printed, DEADLINE)
        .await;
    // It writes nothing in a user's outbox: the next flush is told the runs
    // are complete, and deletes their captures, shipping nothing twice.
    // (A flush racing the daemon's own taking of a capture waits for it.)
    let out = exec(&setup.config, &["--flush"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(captures(&setup).is_empty(), "{:?}", captures(&setup));
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="exec"}"#, &printed), Ok(()));
}

#[tokio::test]
async fn the_next_exec_hands_over_what_an_earlier_one_kept() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut printed = vec![pino(30, "first")];
    let out = exec(&setup.config, &["--", "echo", &printed[0]]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(captures(&setup).len(), 1);
    let mut agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    printed.push(pino(30, "second"));
    let out = exec(&setup.config, &["--", "echo", &printed[1]]);
    assert_eq!(out.status.code(), Some(0));
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &printed, DEADLINE)
        .await;
    // The background hand-over lives as long as the second `exec` (its command
    // and 2 s more): on a loaded machine the first run's end may still be
    // waiting; a foreground flush finishes it, and ships nothing twice.
    let flushed = exec(&setup.config, &["--flush"]);
    assert_eq!(flushed.status.code(), Some(0), "{}", agent.log());
    assert!(
        wait_until(DEADLINE, || captures(&setup).is_empty()).await,
        "{:?}",
        captures(&setup)
    );
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="exec"}"#, &printed), Ok(()));
}

#[tokio::test]
async fn a_daemon_that_never_answers_does_not_hold_the_command_up() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    // Accepts connections and never reads nor answers.
    let listener =
        std::os::unix::net::UnixListener::bind(setup.dir.path().join("exec.sock")).unwrap();
    let mut child = agent_command()
        .args(["exec", "--config"])
        .arg(&setup.config)
        .args(["--", "sh", "-c", "echo right away; exit 6"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = exits_within_deadline(&mut child).await;
    let _ = child.kill();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(6),
        "exec hung on the daemon"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "right away\n");
    // Not handed over: kept for later.
    assert_eq!(captures(&setup).len(), 1);
    drop(listener);
}

#[tokio::test]
async fn sigterm_to_exec_reaches_the_command() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut child = agent_command()
        .arg("exec")
        .arg("--config")
        .arg(&setup.config)
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !seen.ends_with(b"ready\n") {
        assert!(Instant::now() < deadline, "the command never started");
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "exec closed stdout early");
        seen.extend_from_slice(&buf[..n]);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    assert_eq!(rest, "got TERM\n");
}

#[tokio::test]
async fn a_configuration_that_cannot_be_read_does_not_stop_the_command() {
    let out = agent_command()
        .args([
            "exec",
            "--config",
            "/nonexistent/wisp.toml",
            "--",
            "sh",
            "-c",
        ])
        .arg("echo still runs; exit 5")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(out.stdout, b"still runs\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/wisp.toml"), "{err}");
    assert!(err.contains("without capturing"), "{err}");
}

#[tokio::test]
async fn a_capture_directory_that_cannot_be_written_leaves_the_command_running() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    // The state dir is a file: nothing can be created under it.
    let blocked = setup.dir.path().join("state");
    std::fs::write(&blocked, "not a directory").unwrap();
    let out = agent_command()
        .args(["exec", "--config"])
        .arg(&setup.config)
        .args(["--", "echo", "fine"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"fine\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot capture the output"), "{err}");
}

#[tokio::test]
async fn the_command_gets_the_runs_traceparent_and_the_capture_records_the_run() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let out = exec(
        &setup.config,
        &[
            "--name",
            "ralph",
            "--",
            "sh",
            "-c",
            "echo $TRACEPARENT; exit 4",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    let traceparent = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let caps = captures(&setup);
    assert_eq!(caps.len(), 1);
    let mode = std::fs::metadata(&caps[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let frames = frames(&caps[0]);
    let hello = &frames[0];
    assert_eq!(hello["type"], "hello");
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            hello["trace_id"].as_str().unwrap(),
            hello["span_id"].as_str().unwrap()
        )
    );
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert_eq!(hello["job"], "ralph");
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "end");
    assert_eq!(end["exit"], 4);
    assert!(end["ended_ms"].as_u64() >= hello["started_ms"].as_u64());
}

/// A daemon configuration shipping to `loki` and relaying OTLP to `collector`.
fn config_with_otlp(dir: &Path, loki: &LokiReceiver, collector: &OtlpReceiver) -> PathBuf {
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
grpc = "127.0.0.1:0"
http = ""
[host_metrics]
enabled = false
agent_metrics = false
[admin]
listen = ""
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

#[tokio::test]
async fn each_run_becomes_one_span_with_the_ids_the_command_saw() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_otlp(dir.path(), &loki, &collector);
    let stderr = dir.path().join("agent.stderr");
    let mut agent = Agent::start(&config, &stderr);
    let socket = dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let out = exec(
        &config,
        &[
            "--name",
            "ralph",
            "--label",
            "iter=3",
            "--",
            "sh",
            "-c",
            "echo $TRACEPARENT; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let traceparent = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "no span; agent log:\n{}",
        agent.log()
    );
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(
        (span.trace_id.as_str(), span.span_id.as_str()),
        (parts[1], parts[2])
    );
    assert_eq!(span.name, "ralph");
    assert_eq!(span.service_name, "ralph");
    assert_eq!(
        span.resource.get("host.name").map(String::as_str),
        Some("vm-test")
    );
    assert_eq!(
        span.attributes.get("process.exit.code").map(String::as_str),
        Some("3")
    );
    assert_eq!(span.attributes.get("iter").map(String::as_str), Some("3"));
    let user = whoami();
    assert_eq!(
        span.attributes.get("enduser.id").map(String::as_str),
        Some(user.as_str()),
        "the user is the socket peer's"
    );
    assert_eq!(span.status_code, 2, "an exit of 3 is an error");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // A restarted daemon does not send it again: the next run's span arrives
    // alone.
    assert_eq!(agent.terminate(), Some(0));
    let mut agent = Agent::start(&config, &stderr);
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let out = exec(&config, &["--name", "ralph", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        collector.wait_for_spans(2, DEADLINE).await,
        "{}",
        agent.log()
    );
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_ne!(spans[0].trace_id, spans[1].trace_id);
    assert_eq!(spans[1].status_code, 0);
    // Nor does it ship the first run's output again (the second printed
    // nothing).
    let printed = [traceparent.trim().to_string()];
    agent
        .assert_shipped_once(&loki, r#"{job="ralph"}"#, &printed, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="ralph"}"#, &printed), Ok(()));
}

/// What [`root_only_secret`] holds: a line that must never reach Loki.
const SECRET: &str =
    "root:$y$j9T$SECRET-LINE-root-only-hash-of-a-password-nobody-may-read:20000:0:99999:7:::\n";

/// A file only root may read, with a line that must never reach Loki.
fn root_only_secret(dir: &Path) -> PathBuf {
    let secret = dir.join("shadow");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

#[tokio::test]
async fn what_is_planted_in_the_old_exec_dir_has_no_effect() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let secret = root_only_secret(setup.dir.path());
    // The attacks reported against the old file hand-off.
    let old = setup.dir.path().join("state").join("exec");
    std::fs::create_dir_all(&old).unwrap();
    std::os::unix::fs::symlink(&secret, old.join("x.log")).unwrap();
    std::os::unix::fs::symlink(&secret, old.join("x.json")).unwrap();
    mkfifo(&old.join("frozen.json"));
    std::fs::write(
        old.join("frozen.log"),
        format!("{}\n", pino(30, "from the run beside a fifo sidecar")),
    )
    .unwrap();
    let sparse = std::fs::File::create(old.join("huge.json")).unwrap();
    sparse.set_len(4 << 30).unwrap();
    std::fs::write(
        old.join("huge.log"),
        format!("{}\n", pino(30, "from the run beside a sparse sidecar")),
    )
    .unwrap();
    std::fs::write(
        old.join("forged.json"),
        r#"{"job":"forged","pid":1,"started_ms":1,"exit":0,"ended_ms":2,"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}"#,
    )
    .unwrap();
    std::fs::write(
        old.join("forged.log"),
        format!("{}\n", pino(30, "from the run with a forged sidecar")),
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();

    let control = [pino(30, "an ordinary log line")];
    support::append(&setup.log_path("app.log"), &control);
    let mut agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    // The daemon is not frozen: a real run gets through; and the tailer has
    // had its look at the files it found at start (it shipped this one).
    let printed = [pino(30, "a real run")];
    let out = exec(&setup.config, &["--", "echo", &printed[0]]);
    assert_eq!(out.status.code(), Some(0));
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &printed, DEADLINE)
        .await;
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &control, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    let everything = loki.lines(r#"{job="exec"}"#);
    assert_eq!(everything, printed.to_vec(), "only the real run is shipped");
    assert!(loki.lines(r#"{job="forged"}"#).is_empty());
    assert!(!loki.all_entries().iter().any(|e| e.line.contains("SECRET")));
    let mode = std::fs::metadata(&old).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "the daemon leaves the old dir alone");
}

/// The second user the tests run commands as; created when missing.
/// `(uid, gid)` of [`INTRUDER`] (tests call it once they know they are root).
fn intruder() -> (u32, u32) {
    support::users::intruder().expect("needs root")
}

/// `wisp-agent exec ARGS` as [`INTRUDER`], with its outbox under `state_home`.
fn exec_as_intruder(bin: &Path, config: &Path, state_home: &Path, args: &[&str]) -> Child {
    let mut cmd = support::users::command_as(intruder(), bin);
    cmd.env("XDG_STATE_HOME", state_home)
        .env("HOME", state_home)
        .arg("exec")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

#[tokio::test]
async fn a_second_user_is_labelled_as_itself_and_its_outbox_cannot_be_turned_on_the_daemon() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let (uid, gid) = intruder();
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    // The intruder may read the configuration and run the binary, nothing else
    // of root's.
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(setup.dir.path(), 0o755).unwrap();
    open(&setup.config, 0o644).unwrap();
    let bin = setup.dir.path().join("wisp-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_wisp-agent"), &bin).unwrap();
    open(&bin, 0o755).unwrap();
    let secret = root_only_secret(setup.dir.path());
    let home = setup.dir.path().join("intruder");
    std::fs::create_dir_all(&home).unwrap();
    chown(&home, uid, gid);
    // Planted in its own outbox: a link to root's secret, a FIFO, and a capture
    // that claims to be root's run.
    let its_outbox = home.join("wisp-agent").join("exec");
    std::fs::create_dir_all(&its_outbox).unwrap();
    std::os::unix::fs::symlink(&secret, its_outbox.join("1-1.cap")).unwrap();
    mkfifo(&its_outbox.join("2-2.cap"));
    let forged = its_outbox.join("3-3.cap");
    let frame = |v: serde_json::Value| {
        let body = serde_json::to_vec(&v).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let mut bytes = frame(
        serde_json::json!({"type":"hello","version":1,"job":"forged",
        "labels":{"user":"root"},"argv":[],"trace_id":"0af7651916cd43dd8448eb211c80319c",
        "span_id":"b7ad6b7169203331","started_ms":1}),
    );
    bytes.extend(frame(serde_json::json!({"type":"lines","seq":1,
        "lines":[{"stream":"stdout","text":"forged as root","time_ns":0}]})));
    std::fs::write(&forged, bytes).unwrap();
    for p in [home.join("wisp-agent"), its_outbox.clone(), forged.clone()] {
        chown(&p, uid, gid);
    }
    std::os::unix::fs::lchown(its_outbox.join("1-1.cap"), Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(its_outbox.join("2-2.cap"), Some(uid), Some(gid)).unwrap();

    let mut agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let printed = [pino(30, "from the intruder")];
    let mut child = exec_as_intruder(
        &bin,
        &setup.config,
        &home,
        &["--name", "ralph", "--", "echo", &printed[0]],
    );
    let status = exits_within_deadline(&mut child).await;
    let _ = child.kill();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    agent
        .assert_shipped_once(
            &loki,
            &format!(r#"{{job="ralph", user="{INTRUDER}"}}"#),
            &printed,
            DEADLINE,
        )
        .await;
    // A flush goes past the link and the FIFO without hanging, and the forged
    // capture is refused: a client cannot name its user.
    let mut child = exec_as_intruder(&bin, &setup.config, &home, &["--flush"]);
    let status = exits_within_deadline(&mut child).await;
    let _ = child.kill();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the forged capture is left"
    );
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.lines(r#"{host="vm-test"}"#), printed.to_vec());
    assert!(loki.lines(r#"{user="root"}"#).is_empty());
    assert!(forged.exists(), "refused, so kept");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET);
}

#[tokio::test]
async fn a_daemon_killed_mid_run_ships_the_run_once_and_makes_one_span() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_otlp(dir.path(), &loki, &collector);
    let stderr = dir.path().join("agent.stderr");
    let socket = dir.path().join("exec.sock");
    let mut agent = Agent::start(&config, &stderr);
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let go = dir.path().join("go");
    // Two lines in one write: one frame, which a replay would store again in
    // full (Loki drops only an entry equal to its stream's last).
    let printed = [
        pino(30, "before the kill"),
        pino(30, "also before the kill"),
        pino(30, "after the restart"),
    ];
    let script = format!(
        "printf '%s\\n%s\\n' '{}' '{}'; while [ ! -e {} ]; do sleep 0.05; done; echo '{}'",
        printed[0],
        printed[1],
        go.display(),
        printed[2]
    );
    let mut child = agent_command()
        .args(["exec", "--name", "ralph", "--config"])
        .arg(&config)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    agent
        .assert_shipped_once(&loki, r#"{job="ralph"}"#, &printed[..2], DEADLINE)
        .await;
    // The first line is in the spool (it was acknowledged): a kill -9 now
    // must not make it ship twice, nor lose what follows.
    agent.kill9();
    let mut agent = Agent::start(&config, &stderr);
    assert!(
        wait_until(DEADLINE, || agent.own_log().contains("hands its runs over")).await,
        "{}",
        agent.own_log()
    );
    std::fs::write(&go, "").unwrap();
    let status = exits_within_deadline(&mut child).await;
    let _ = child.kill();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    // Whatever the live sender could not hand over, a flush does.
    let out = exec(&config, &["--flush"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent
        .assert_shipped_once(&loki, r#"{job="ralph"}"#, &printed, DEADLINE)
        .await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="ralph"}"#, &printed), Ok(()));
    assert_eq!(collector.spans().len(), 1, "{:?}", collector.spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_churning_bad_runs_on_the_socket_cannot_flood_the_log() {
    use std::io::Write;
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    // The socket appears only once it answers.
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let staged: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".exec.sock"))
        .collect();
    assert!(staged.is_empty(), "a staging socket is left: {staged:?}");
    // A hello the daemon refuses (a protocol version it does not speak), 500
    // times over, as fast as connections go.
    let hello = br#"{"type":"hello","version":99,"job":"x","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","started_ms":1}"#;
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(hello);
    for _ in 0..500 {
        let mut s = std::os::unix::net::UnixStream::connect(&socket)
            .unwrap_or_else(|e| panic!("cannot connect: {e}\n{}", agent.log()));
        s.write_all(&frame).unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    }
    let refused = |log: &str| log.matches("refused an exec run").count();
    assert!(
        wait_until(DEADLINE, || refused(&agent.log()) >= 1).await,
        "{}",
        agent.log()
    );
    assert_eq!(
        refused(&agent.log()),
        1,
        "once a minute at most:\n{}",
        agent.log()
    );
    // The daemon still takes a good run.
    let line = pino(30, "after the churn");
    let out = exec(&setup.config, &["--", "echo", &line]);
    assert_eq!(out.status.code(), Some(0));
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &[line], DEADLINE)
        .await;
}
