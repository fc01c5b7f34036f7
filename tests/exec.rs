//! `wisp-agent exec -- CMD` as a user sees it: the command's output passes through
//! unchanged, its exit status is exec's, and what it printed reaches Loki through
//! the daemon with `job` = `--name` and the `--label`s, whether the daemon ran at
//! the time or started later. Captures the daemon has shipped are deleted by the
//! next exec.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use support::agent::{Agent, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
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

fn capture_dir(setup: &Setup) -> PathBuf {
    setup.dir.path().join("state").join("exec")
}

/// Files in the capture directory with the given extension.
fn captures(setup: &Setup, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(capture_dir(setup))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The offset `positions.json` holds for `file`.
fn acknowledged(positions: &Path, file: &Path) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(positions).ok()?).ok()?;
    doc["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"].as_str() == file.to_str())?["offset"]
        .as_u64()
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
    assert_eq!(out.stderr, b"err\0bin\n");
}

#[tokio::test]
async fn output_reaches_loki_with_the_name_and_labels_given() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let error = pino(50, "iteration failed");
    let own_trace = r#"{"level":30,"msg":"traced","trace_id":"11111111111111111111111111111111","span_id":"2222222222222222"}"#;
    let script = format!("echo '{error}'; echo 'plain words' >&2; echo '{own_trace}'; exit 1");
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
    assert_eq!(
        loki.lines(r#"{job="ralph", iter="3", level="error", host="vm-test"}"#),
        vec![error]
    );
    assert_eq!(
        loki.lines(r#"{job="ralph", iter="3", level="unknown"}"#),
        vec!["plain words".to_string()]
    );
    // Lines without trace ids of their own carry the run's, so logs link to
    // the run's span; a line with its own keeps it.
    let json = captures(&setup, "json");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json[0]).unwrap()).unwrap();
    let run_trace = sidecar["trace_id"].as_str().unwrap();
    let run_span = sidecar["span_id"].as_str().unwrap();
    for e in loki.entries(r#"{job="ralph"}"#) {
        let ids = (
            e.metadata.get("trace_id").map(String::as_str),
            e.metadata.get("span_id").map(String::as_str),
        );
        if e.line == own_trace {
            assert_eq!(
                ids,
                (
                    Some("11111111111111111111111111111111"),
                    Some("2222222222222222")
                )
            );
        } else {
            assert_eq!(ids, (Some(run_trace), Some(run_span)), "{}", e.line);
        }
    }
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="ralph"}"#, &printed), Ok(()));
}

#[tokio::test]
async fn output_captured_while_the_daemon_is_down_is_shipped_when_it_starts() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut printed = Vec::new();
    for i in 0..3 {
        let line = pino(30, &format!("iteration {i}"));
        let out = exec(&setup.config, &["--", "echo", &line]);
        assert_eq!(out.status.code(), Some(0));
        printed.push(line);
    }
    // Nothing ran to ship them, and nothing was deleted: they were never shipped.
    assert_eq!(captures(&setup, "log").len(), 3);
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &printed, DEADLINE)
        .await;
    let lines = loki.lines(r#"{job="exec"}"#);
    for i in 0..3 {
        assert!(lines.iter().any(|l| l.contains(&format!("iteration {i}"))));
    }
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="exec"}"#, &printed), Ok(()));
}

#[tokio::test]
async fn the_next_exec_deletes_captures_the_daemon_has_shipped() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let mut printed = vec![pino(30, "first")];
    let out = exec(&setup.config, &["--", "echo", &printed[0]]);
    assert_eq!(out.status.code(), Some(0));
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &printed, DEADLINE)
        .await;
    let first = captures(&setup, "log");
    assert_eq!(first.len(), 1);
    // The checkpoint moves once the spool has the line: wait for it on disk.
    let positions = setup.dir.path().join("state").join("positions.json");
    let size = std::fs::metadata(&first[0]).unwrap().len();
    assert!(
        wait_until(DEADLINE, || acknowledged(&positions, &first[0])
            == Some(size))
        .await,
        "checkpoint of the capture never reached {size}"
    );
    // And the daemon has handled the run (its span, were OTLP on).
    let stem = first[0].file_stem().unwrap().to_str().unwrap().to_string();
    let handled = setup.dir.path().join("state").join("exec-spans.json");
    assert!(
        wait_until(DEADLINE, || std::fs::read_to_string(&handled)
            .is_ok_and(|t| t.contains(&stem)))
        .await,
        "the run was never marked handled"
    );
    printed.push(pino(30, "second"));
    let out = exec(&setup.config, &["--", "echo", &printed[1]]);
    assert_eq!(out.status.code(), Some(0));
    let now = captures(&setup, "log");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first, "the shipped capture is gone, the new one stays");
    assert_eq!(captures(&setup, "json").len(), 1);
    agent
        .assert_shipped_once(&loki, r#"{job="exec"}"#, &printed, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.exactly_once(r#"{job="exec"}"#, &printed), Ok(()));
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
async fn the_command_gets_the_runs_traceparent_and_the_sidecar_records_the_run() {
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
    let json = captures(&setup, "json");
    assert_eq!(json.len(), 1);
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json[0]).unwrap()).unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            sidecar["trace_id"].as_str().unwrap(),
            sidecar["span_id"].as_str().unwrap()
        )
    );
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert_eq!(sidecar["job"], "ralph");
    assert_eq!(sidecar["exit"], 4);
    assert!(sidecar["ended_ms"].as_u64() >= sidecar["started_ms"].as_u64());
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
[admin]
listen = ""
"#,
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
    assert_eq!(span.status_code, 2, "an exit of 3 is an error");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // A restarted daemon does not send it again: the next run's span arrives
    // alone.
    assert_eq!(agent.terminate(), Some(0));
    let mut agent = Agent::start(&config, &stderr);
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
