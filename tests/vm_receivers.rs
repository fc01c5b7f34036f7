//! The host side of the VM test (`tests/vm/run.py`): this crate's fake Loki
//! and fake OTLP collector (tests/support: Loki's protobuf+snappy push and
//! its one-entry-per-(stream, timestamp, line) reading, OTLP over gRPC and
//! HTTP), on the ports a host stack listens on, 127.0.0.1:3100, :4317 and
//! :4318, inside the network namespace the harness made, where QEMU's
//! user-mode network takes the guest's connections to the host address.
//!
//! Not a test of its own: ignored by `cargo test`, which builds it; the
//! harness runs the built binary with `--ignored` and `WISP_VM_RECEIVERS=1`
//! and drives it over stdin, one command a line, each answered by one line
//! on stdout that starts with `vm-receivers: `:
//!
//! - `stop`: both take their ports away and drop open connections (the host
//!   stack is down);
//! - `start`: both listen again on the same ports, keeping what they stored;
//! - `dump`: everything stored, as one JSON object (below);
//! - end of input: exit.

mod support;

use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use tokio::io::{AsyncBufReadExt, BufReader};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn listen(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"))
}

/// What both receivers hold: Loki's entries as a query shows them and those
/// received again after being stored; every span and log record the
/// collector took (a span received twice is listed twice).
fn dump(loki: &LokiReceiver, collector: &OtlpReceiver, first_push: Option<f64>) -> String {
    let entries: Vec<_> = loki
        .all_entries()
        .into_iter()
        .map(|e| json!({"labels": e.labels, "ts": e.timestamp_ns.to_string(), "line": e.line, "metadata": e.metadata}))
        .collect();
    let resent: Vec<_> = loki
        .resent(r#"{job!=""}"#)
        .into_iter()
        .map(|(e, times)| json!({"labels": e.labels, "ts": e.timestamp_ns.to_string(), "line": e.line, "times": times}))
        .collect();
    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .map(|s| {
            json!({"trace_id": s.trace_id, "span_id": s.span_id, "parent_span_id": s.parent_span_id,
                   "name": s.name, "scope": s.scope, "service_name": s.service_name,
                   "resource": s.resource, "attributes": s.attributes})
        })
        .collect();
    let logs: Vec<_> = collector
        .logs()
        .into_iter()
        .map(|l| {
            json!({"body": l.body, "time": l.time_unix_nano.to_string(), "trace_id": l.trace_id,
                   "span_id": l.span_id, "service_name": l.service_name, "resource": l.resource})
        })
        .collect();
    let metrics: Vec<_> = collector
        .metrics()
        .into_iter()
        .map(|m| json!({"name": m.name, "service_name": m.service_name, "resource": m.resource}))
        .collect();
    json!({
        "loki": {"pushes": loki.pushes(), "received": loki.received_count(), "first_push_unix": first_push, "entries": entries, "resent": resent},
        "collector": {"exports": collector.exports(), "spans": spans, "logs": logs, "metrics": metrics},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the host side of tests/vm/run.py: run by it, inside its network namespace"]
async fn serve_the_vm_test() {
    if std::env::var("WISP_VM_RECEIVERS").as_deref() != Ok("1") {
        eprintln!("vm-receivers: WISP_VM_RECEIVERS=1 not set: tests/vm/run.py runs this");
        return;
    }
    let ip = std::env::var("WISP_VM_LISTEN").unwrap_or_else(|_| "127.0.0.1".into());
    let loki = LokiReceiver::start_on(listen(&format!("{ip}:3100")));
    let collector =
        OtlpReceiver::start_on(listen(&format!("{ip}:4317")), listen(&format!("{ip}:4318")));
    let say = |what: &str| println!("vm-receivers: {what}");
    say("listening on 3100 (loki), 4317 (otlp grpc), 4318 (otlp http)");

    // When the first push came: the figure "boot to first push".
    let mut first_push = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match line.trim() {
                    "stop" => {
                        loki.stop().await;
                        collector.stop().await;
                        say("stopped");
                    }
                    "start" => {
                        loki.restart().await;
                        collector.restart().await;
                        say("started");
                    }
                    "dump" => say(&dump(&loki, &collector, first_push)),
                    other => say(&format!("error: unknown command {other:?}")),
                }
            }
            _ = tick.tick() => {
                if first_push.is_none() && loki.pushes() > 0 {
                    first_push = Some(unix_now());
                }
            }
        }
    }
}
