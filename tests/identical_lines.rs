//! Identical lines, with the real binary and a test Loki that stores as Loki
//! does (one entry per identical stream, timestamp and line): each is stored as
//! often as it was written. Lines without a time of their own get strictly
//! increasing read times, lines with one own time a nanosecond each, and a
//! `kill -9` and restart neither collapses nor doubles them. The same for the
//! output of `wisp-agent exec`, which reaches Loki through the daemon.

mod support;

use std::io::Write;
use std::path::Path;

use support::agent::Setup;
use support::loki::{LokiReceiver, Mode};
use support::{agent_command, wait_until, DEADLINE};

const SELECTOR: &str = r#"{job="app"}"#;

/// Writes `lines` to `path` in one write: read together, in one batch.
fn write_at_once(path: &Path, lines: &[String]) {
    let mut block = String::new();
    for l in lines {
        block.push_str(l);
        block.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(block.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

/// cloud-init's network table (three identical rules), and three identical
/// Pino lines with one `time`.
fn burst() -> Vec<String> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let pino = format!(r#"{{"level":30,"time":{ms},"pid":4242,"hostname":"vm","msg":"retrying"}}"#);
    let rule = "ci-info: +--------+------+------------------------------+".to_string();
    vec![
        rule.clone(),
        "ci-info: | Device |  Up  |           Address            |".into(),
        rule.clone(),
        "ci-info: | enp0s1 | True |        192.168.5.15          |".into(),
        rule,
        pino.clone(),
        pino.clone(),
        pino,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_lines_written_together_are_each_stored() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("app.log");
    let mut agent = setup.start();
    let lines = burst();
    write_at_once(&file, &lines);
    agent
        .assert_shipped_once(&loki, SELECTOR, &lines, DEADLINE)
        .await;
    let entries = loki.entries(SELECTOR);
    let stamps = |text: &str| -> Vec<i64> {
        entries
            .iter()
            .filter(|e| e.line == text)
            .map(|e| e.timestamp_ns)
            .collect()
    };
    // The Pino lines keep their millisecond, a nanosecond apart in read order.
    let pino = stamps(&lines[5]);
    assert_eq!(pino.len(), 3);
    assert_eq!(pino[0] % 1_000_000, 0, "{pino:?}");
    assert_eq!([pino[1] - pino[0], pino[2] - pino[0]], [1, 2], "{pino:?}");
    // The rules carry no time: their read times strictly increase.
    let rules = stamps(&lines[0]);
    assert_eq!(rules.len(), 3);
    assert!(rules.windows(2).all(|w| w[0] < w[1]), "{rules:?}");
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.stored_count(), lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_lines_are_neither_collapsed_nor_doubled_by_a_kill_9_and_restart() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("app.log");
    let mut agent = setup.start();
    // Loki stores the push but the agent never hears back: at the kill, the
    // push is in doubt, and the restart asks Loki which entries it holds.
    loki.set_mode(Mode::StoreThenHang);
    let lines = burst();
    write_at_once(&file, &lines);
    let received = wait_until(DEADLINE, || loki.received_count() >= lines.len()).await;
    assert!(received, "nothing pushed:\n{}", agent.log());
    agent.kill9();
    loki.set_mode(Mode::Normal);
    // The same lines again while the agent is away: the Pino ones with the
    // same millisecond as those already stored.
    write_at_once(&file, &lines);
    let mut agent = setup.start();
    let twice: Vec<String> = lines.iter().chain(&lines).cloned().collect();
    agent
        .assert_shipped_once(&loki, SELECTOR, &twice, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    if let Err(e) = loki.exactly_once(SELECTOR, &twice) {
        panic!("after the agent stopped: {e}\nagent log:\n{}", agent.log());
    }
    assert_eq!(loki.stored_count(), twice.len(), "nothing else is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_lines_of_an_exec_run_printed_together_are_each_stored() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "no exec socket:\n{}",
        agent.log()
    );
    let lines = burst();
    // One write: exec reads them in one chunk and stamps them with one time.
    let printed = lines.join("\n") + "\n";
    let out = agent_command()
        .arg("exec")
        .arg("--config")
        .arg(&setup.config)
        .args(["--name", "ci", "--", "printf", "%s", &printed])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, printed.as_bytes());
    agent
        .assert_shipped_once(&loki, r#"{job="ci"}"#, &lines, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(loki.stored_count(), lines.len());
}
