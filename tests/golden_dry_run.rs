//! The golden test of issue 7: `run --dry-run` over the real tmux capture
//! (`tests/fixtures/tmux/refly-api.log`), compared record by record with
//! `tests/golden/refly-api.expected.jsonl`: the level, where the timestamp came
//! from (the line itself, or the time the agent read it) and the shipped line.
//!
//! To regenerate after an intended change: `WISP_BLESS=1 cargo test --test
//! golden_dry_run`, then read the diff of the expected file line by line.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Long lines are compared by their length and their first 200 characters.
fn summarize(record: &Value, started: SystemTime) -> Value {
    let line = record["line"].as_str().unwrap_or_default();
    let ts = record["timestamp"].as_str().unwrap_or_default();
    let when = humantime::parse_rfc3339(ts).expect("the dry run prints RFC 3339 timestamps");
    // The fixture was captured on 2026-11-22; a timestamp from before this run
    // started can only have come from the line.
    let source = if when < started { "line" } else { "read" };
    let head: String = line.chars().take(200).collect();
    let mut v = json!({
        "level": record["labels"]["level"],
        "timestamp": source,
        "line": head,
    });
    if head.len() < line.len() {
        v["line_bytes"] = json!(line.len());
    }
    if let Some(m) = record["structured_metadata"].as_object() {
        if !m.is_empty() {
            v["structured_metadata"] = Value::Object(m.clone());
        }
    }
    v
}

#[test]
fn dry_run_over_the_tmux_capture_matches_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(
        repo("tests/fixtures/tmux/refly-api.log"),
        logs.join("refly-api.log"),
    )
    .unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
state_dir = "{state}"
hostname = "vm"
# The capture's own timestamps are from 2026-11-22: keep them whenever this runs.
timestamp_max_age = "36500d"

[host]
address = "127.0.0.1"
probe_timeout = "200ms"

[loki]
url = "http://{{host}}:9/loki/api/v1/push"

[otlp]
enabled = false

[receiver]
grpc = ""
http = ""

[[files]]
name = "refly-api"
paths = ["{logs}/*.log"]
start_at = "beginning"
multiline_timeout = "200ms"
# The capture ends in a shell prompt without a newline: ship it soon.
partial_line_timeout = "300ms"
"#,
            state = dir.path().join("state").display(),
            logs = logs.display(),
        ),
    )
    .unwrap();

    let started = SystemTime::now();
    let bless = std::env::var_os("WISP_BLESS").is_some();
    let mut child = support::agent_command()
        .args(["run", "--dry-run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let expected_path = repo("tests/golden/refly-api.expected.jsonl");
    let expected: Vec<Value> = std::fs::read_to_string(&expected_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("the golden file holds JSON lines"))
        .collect();

    // Read records until as many as expected arrived (or, blessing, until the
    // output has been quiet for a while), then stop the agent.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && (bless || got.len() < expected.len()) {
        match rx.recv_timeout(Duration::from_millis(if bless { 2000 } else { 500 })) {
            Ok(line) => {
                let record: Value =
                    serde_json::from_str(&line).expect("stdout holds only JSON lines");
                got.push(summarize(&record, started));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if bless => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    // Anything more arriving shortly after is a surplus record.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        let record: Value = serde_json::from_str(&line).expect("stdout holds only JSON lines");
        got.push(summarize(&record, started));
    }
    let _ = child.kill();
    let _ = child.wait();

    if bless {
        let mut text = String::new();
        for v in &got {
            text.push_str(&serde_json::to_string(v).unwrap());
            text.push('\n');
        }
        std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
        std::fs::write(&expected_path, text).unwrap();
        eprintln!(
            "blessed {} records into {}",
            got.len(),
            expected_path.display()
        );
        return;
    }
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "record {} differs", i + 1);
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "record count differs; extra or missing: {:?}",
        if got.len() > expected.len() {
            &got[expected.len()..]
        } else {
            &expected[got.len()..]
        }
    );
}
