//! A second local user who speaks the agent's local interfaces by hand, at
//! once: a run whose name and labels are escape sequences (sent over the exec
//! socket as bytes, since `exec` refuses them), a churn of runs the daemon
//! refuses, and a hundred idle connections to the admin endpoint. Meanwhile
//! another user's file lines still arrive within 2 s, the daemon stays under
//! 48 MiB, `/healthz` and `status` answer, and nothing printed holds a raw
//! control character. Runs the real binary as root, the attacks as
//! `wisp-test-intruder` (`setpriv`); skipped when not root.

mod support;

use std::time::{Duration, Instant};

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::users::{self, intruder};
use support::{append, wait_until, DEADLINE};

/// The attacks, in Python (stdlib only), as the second user: argv is the
/// exec socket and the admin endpoint's port. It holds its idle connections
/// until stdin closes.
const ATTACK: &str = r#"
import json, socket, struct, sys

sock_path, admin_port = sys.argv[1], int(sys.argv[2])

def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body

def run(frames):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    for f in frames:
        s.sendall(frame(f))
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):
        pass
    s.close()

# A run named to clear the screen and retitle the terminal.
run([
    {"type": "hello", "version": 1, "job": "x\x1b]0;owned\x07\x1b[2J\r",
     "labels": {"note": "a\x1b[31mred"},
     "trace_id": "1af7651916cd43dd8448eb211c80319c", "span_id": "8448eb211c80319c",
     "started_ms": 1},
    {"type": "lines", "seq": 1, "lines": [
        {"stream": "stdout", "text": "from the intruder", "time_ns": 0}]},
    {"type": "end", "exit": 0, "ended_ms": 2},
])
# Runs the daemon refuses, as fast as connections go.
for _ in range(300):
    run([{"type": "hello", "version": 99, "job": "x",
          "trace_id": "0af7651916cd43dd8448eb211c80319c",
          "span_id": "b7ad6b7169203331", "started_ms": 1}])
# A hundred idle connections to the admin endpoint, half with half a request.
held = []
for i in range(100):
    c = socket.create_connection(("127.0.0.1", admin_port))
    if i % 2:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    held.append(c)
print("holding", flush=True)
sys.stdin.read()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_user_cannot_blind_poison_or_bloat_the_daemon() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "multiline = \"none\"");
    setup.set_admin_listen("127.0.0.1:0");
    users::open_up(setup.dir.path(), &[]);
    let agent = setup.start();
    let admin = agent.admin_addr().await;
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let script = setup.dir.path().join("attack.py");
    std::fs::write(&script, ATTACK).unwrap();
    users::open_up(setup.dir.path(), &[&script]);
    let mut attack = users::command_as(who, "/usr/bin/python3")
        .arg(&script)
        .arg(&socket)
        .arg(admin.port().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the attack holds its connections (the named run and the churn
    // done): another user's lines arrive within 2 s each time.
    let log = setup.log_path("victim.log");
    let mut out = attack.stdout.take().unwrap();
    let holding = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut out, 8), &mut text);
        text
    });
    let holding = tokio::time::timeout(DEADLINE, holding).await;
    assert!(
        matches!(&holding, Ok(Ok(t)) if t == "holding\n"),
        "the attack did not get to hold its connections: {holding:?}\n{}",
        agent.log()
    );
    for i in 0..5 {
        let line = format!("victim line {i}");
        let written = Instant::now();
        append(&log, std::slice::from_ref(&line));
        let arrived = wait_until(Duration::from_secs(2), || {
            loki.lines(r#"{job="app"}"#).contains(&line)
        })
        .await;
        assert!(arrived, "{line} took over 2 s\n{}", agent.log());
        eprintln!("{line}: {:?}", written.elapsed());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let healthz = client.get(format!("http://{admin}/healthz")).send().await;
    assert!(healthz.is_ok_and(|r| r.status() == 200), "{}", agent.log());
    let line = "victim line after".to_string();
    append(&log, std::slice::from_ref(&line));
    assert!(
        wait_until(Duration::from_secs(2), || loki
            .lines(r#"{job="app"}"#)
            .contains(&line))
        .await,
        "{}",
        agent.log()
    );
    // The named run arrived, escaped; nothing raw anywhere.
    let raw = |t: &str| t.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    assert!(
        wait_until(DEADLINE, || !loki
            .lines(r#"{job="x\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r"}"#)
            .is_empty())
        .await,
        "{:?}\n{}",
        loki.streams(),
        agent.log()
    );
    for labels in loki.streams() {
        assert!(!labels.values().any(|v| raw(v)), "{labels:?}");
    }
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw(&metrics), "{metrics}");
    let log_text = agent.log();
    assert!(!raw(&log_text), "{log_text}");
    assert!(
        log_text.matches("refused an exec run").count() <= 1,
        "{log_text}"
    );
    let peak = support::proc::peak_rss(agent.pid().unwrap());
    eprintln!("peak RSS {} KiB", peak / 1024);
    assert!(peak < 48 << 20, "peak RSS {peak} bytes");
    drop(attack.stdin.take());
    let _ = attack.wait();
}
