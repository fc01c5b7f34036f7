//! Loki's refusals, told exactly, and nothing lost that can be kept: the built
//! agent against the test Loki refusing as Loki 3.7 does (a 400 for a push of
//! which it stored the rest, naming what it refused; a 429 for its stream
//! limit). Entries refused as too old or too far behind arrive at a new time
//! with their own in `original_timestamp`, lines too long arrive cut to
//! Loki's limit, and `/metrics` counts what Loki refused, by cause.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::agent::{metric, Agent, Setup};
use support::loki::{Limits, LokiReceiver, Mode};
use support::{append, wait_until, wait_until_async, DEADLINE};
use wisp_agent::record::Timestamp;

const APP: &str = r#"{job="app"}"#;

fn now_ms() -> i64 {
    Timestamp::now().as_nanos() / 1_000_000
}

/// A Pino line stamped `ms` (epoch milliseconds), of level `level`.
fn pino_at(ms: i64, level: u8, msg: &str) -> String {
    format!(r#"{{"level":{level},"time":{ms},"pid":4242,"hostname":"vm","msg":"{msg}"}}"#)
}

/// The time the agent reads from a Pino line, as `original_timestamp` holds it.
fn rfc3339_of(ms: i64) -> String {
    Timestamp(ms * 1_000_000).to_string()
}

/// Waits until the sample `name` reads `want`; returns what it read last.
async fn metric_reaches(addr: SocketAddr, name: &str, want: f64) -> Option<f64> {
    wait_until_async(DEADLINE, || async {
        metric(addr, name).await == Some(want)
    })
    .await;
    metric(addr, name).await
}

/// The agent's `/status` document.
async fn status(addr: SocketAddr) -> serde_json::Value {
    let text = reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn assert_metrics(agent: &Agent, addr: SocketAddr, want: &[(&str, f64)]) {
    for (name, value) in want {
        assert_eq!(
            metric_reaches(addr, name, *value).await,
            Some(*value),
            "{name}\n{}",
            agent.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_good_too_far_behind_too_old_and_too_long_lines_ends_with_every_line_in_loki() {
    let loki = LokiReceiver::start().await;
    loki.set_limits(Limits {
        reject_old_samples_max_age: Some(Duration::from_secs(120)),
        too_far_behind: Some(Duration::from_secs(30)),
        max_line_bytes: Some(1000),
        ..Limits::default()
    });
    let setup = Setup::new(&loki, r#"max_line_bytes = "4KiB""#);
    setup.set_admin_listen("127.0.0.1:0");
    let file = setup.log_path("api.log");
    let agent = setup.start();
    let addr = agent.admin_addr().await;

    // The stream's newest entry is now.
    let now = now_ms();
    let fresh = pino_at(now, 30, "fresh");
    append(&file, std::slice::from_ref(&fresh));
    agent
        .assert_shipped_once(&loki, APP, std::slice::from_ref(&fresh), DEADLINE)
        .await;

    // One push of four: good, a minute behind the stream (its window is 30 s),
    // ten minutes old (Loki keeps two), and 2000 bytes long (Loki takes 1000).
    let now = now_ms();
    let (behind_ms, old_ms) = (now - 60_000, now - 600_000);
    let good = pino_at(now, 30, "good");
    let behind = pino_at(behind_ms, 30, "behind");
    let old = pino_at(old_ms, 30, "old");
    let long = pino_at(now + 1, 30, &"x".repeat(2000));
    append(
        &file,
        &[good.clone(), behind.clone(), old.clone(), long.clone()],
    );

    let cut = long[..1000].to_string();
    let want = vec![fresh, good, behind.clone(), old.clone(), cut.clone()];
    agent.assert_shipped_once(&loki, APP, &want, DEADLINE).await;
    let entries = loki.entries(APP);
    let of = |line: &str| entries.iter().find(|e| e.line == line).unwrap();
    for (line, ms) in [(&behind, behind_ms), (&old, old_ms)] {
        let e = of(line);
        assert_eq!(
            e.metadata.get("original_timestamp"),
            Some(&rfc3339_of(ms)),
            "{e:?}"
        );
        assert!(e.timestamp_ns >= now * 1_000_000, "{e:?}");
    }
    assert_eq!(of(&cut).metadata.get("original_timestamp"), None);

    assert_metrics(
        &agent,
        addr,
        &[
            (
                r#"wisp_loki_records_refused_total{reason="too_far_behind"}"#,
                1.0,
            ),
            // As Loki counts them (loki_discarded_samples_total): it refused
            // the old and the long line twice, the first time without saying
            // why (its ingester's answer told of the line behind only).
            (r#"wisp_loki_records_refused_total{reason="too_old"}"#, 2.0),
            (r#"wisp_loki_records_refused_total{reason="too_long"}"#, 2.0),
            (
                r#"wisp_loki_records_rewritten_total{reason="too_far_behind"}"#,
                1.0,
            ),
            (
                r#"wisp_loki_records_rewritten_total{reason="too_old"}"#,
                1.0,
            ),
            (
                r#"wisp_loki_records_rewritten_total{reason="too_long"}"#,
                1.0,
            ),
            ("wisp_loki_records_shipped_total", 5.0),
        ],
    )
    .await;
    let page = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("wisp_loki_records_dropped_total{"), "{page}");

    // One log line per cause, Loki's words on it; the time of the last error
    // in the status.
    let log = agent.log();
    for cause in ["too_far_behind", "too_old", "too_long"] {
        assert_eq!(
            log.matches(&format!("entries of a push as {cause} (status 400):"))
                .count(),
            1,
            "{log}"
        );
    }
    assert!(
        log.contains("cut to loki's limit of 1000 bytes and sent again"),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("user 'fake'")), "{log}");
    let s = status(addr).await;
    assert_eq!(s["loki"]["records_refused"], 5, "{s}");
    assert_eq!(s["loki"]["records_rewritten"], 3, "{s}");
    assert!(
        s["loki"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("loki refused")),
        "{s}"
    );
    assert!(s["loki"]["last_error_seconds_ago"].is_number(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refusal_loki_tells_exactly_is_counted_without_asking_loki_and_drop_drops() {
    let loki = LokiReceiver::start().await;
    loki.set_limits(Limits {
        reject_old_samples_max_age: Some(Duration::from_secs(120)),
        ..Limits::default()
    });
    let setup = Setup::new(&loki, "");
    setup.add_loki_keys(r#"refused_entries = "drop""#);
    setup.set_admin_listen("127.0.0.1:0");
    let agent = setup.start();
    let addr = agent.admin_addr().await;

    let now = now_ms();
    let good: Vec<String> = (0..4)
        .map(|i| pino_at(now + i, 30, &format!("good {i}")))
        .collect();
    let old = pino_at(now - 600_000, 30, "old");
    let mut lines = good.clone();
    lines.insert(2, old.clone());
    append(&setup.log_path("api.log"), &lines);

    assert_metrics(
        &agent,
        addr,
        &[
            ("wisp_loki_records_shipped_total", 4.0),
            (r#"wisp_loki_records_refused_total{reason="too_old"}"#, 1.0),
            (r#"wisp_loki_records_dropped_total{reason="too_old"}"#, 1.0),
        ],
    )
    .await;
    if let Err(e) = loki.exactly_once(APP, &good) {
        panic!("{e}\n{}", agent.log());
    }
    // Loki's answer said it all: it was not asked.
    assert_eq!(loki.queries(), 0, "{}", agent.log());
    assert_eq!(
        metric(
            addr,
            r#"wisp_loki_records_rewritten_total{reason="too_old"}"#
        )
        .await,
        None
    );
    assert!(
        agent
            .log()
            .contains(r#"dropped (loki.refused_entries = "drop""#),
        "{}",
        agent.log()
    );
}

/// The harness's agent with a push timeout long enough that a push left
/// unanswered is not retried before the test kills the agent.
fn patient_setup(loki: &LokiReceiver) -> Setup {
    let setup = Setup::new(loki, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replacen("timeout = \"1s\"", "timeout = \"30s\"", 1),
    )
    .unwrap();
    setup.set_admin_listen("127.0.0.1:0");
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_after_loki_stored_a_line_sent_again_at_a_new_time_does_not_double_it() {
    let loki = LokiReceiver::start().await;
    loki.set_limits(Limits {
        reject_old_samples_max_age: Some(Duration::from_secs(120)),
        ..Limits::default()
    });
    let setup = patient_setup(&loki);
    let file = setup.log_path("api.log");
    // The first push is answered (the old line refused); the second, the old
    // line at a new time, is stored and never answered.
    loki.next_modes(&[Mode::Normal, Mode::StoreThenHang]);
    let mut agent = setup.start();
    let now = now_ms();
    let old_ms = now - 600_000;
    let lines = vec![pino_at(now, 30, "good"), pino_at(old_ms, 30, "old")];
    append(&file, &lines);
    assert!(
        loki.wait_for_stored(2, DEADLINE).await,
        "{}\n{:?}",
        agent.log(),
        loki.answers()
    );
    assert!(setup.wait_checkpointed(&file).await, "{}", agent.log());
    agent.kill9();
    let received = loki.received_count();
    assert_eq!(received, 3, "{:?}", loki.all_entries());

    // Restarted: the push in flight is checked, the line is found at its new
    // time, and nothing of it is sent again.
    let more = vec![pino_at(now_ms(), 30, "after")];
    append(&file, &more);
    let agent = setup.start();
    let mut want = lines.clone();
    want.extend(more);
    agent.assert_shipped_once(&loki, APP, &want, DEADLINE).await;
    assert!(
        agent
            .own_log()
            .contains("already has 2 of the 2 records of the push in flight"),
        "{}",
        agent.log()
    );
    assert_eq!(loki.received_count(), received + 1, "{}", agent.log());
    let old = loki
        .entries(APP)
        .into_iter()
        .find(|e| e.line == lines[1])
        .unwrap();
    assert_eq!(
        old.metadata.get("original_timestamp"),
        Some(&rfc3339_of(old_ms))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_lokis_stream_limit_waits_and_the_streams_loki_took_are_not_sent_again() {
    let loki = LokiReceiver::start().await;
    loki.set_limits(Limits {
        max_streams: Some(1),
        ..Limits::default()
    });
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    // Two streams in one push: level="error" is created, level="info" (the
    // push's last stream) is over the limit and answered 429.
    let now = now_ms();
    let errors: Vec<String> = (0..3)
        .map(|i| pino_at(now + i, 50, &format!("e{i}")))
        .collect();
    let infos: Vec<String> = (0..3)
        .map(|i| pino_at(now + i, 30, &format!("i{i}")))
        .collect();
    let mut lines = errors.clone();
    lines.extend(infos.clone());
    append(&setup.log_path("api.log"), &lines);

    let refused = r#"wisp_loki_records_refused_total{reason="stream_limit"}"#;
    assert!(
        wait_until_async(DEADLINE, || async {
            metric(addr, refused).await.is_some_and(|n| n >= 6.0)
        })
        .await,
        "{}",
        agent.log()
    );
    if let Err(e) = loki.exactly_once(r#"{job="app",level="error"}"#, &errors) {
        panic!("{e}\n{}", agent.log());
    }
    // Loki makes room: the waiting stream arrives, the other is not sent again.
    loki.set_limits(Limits::default());
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    assert!(
        wait_until(DEADLINE, || agent.log().contains("as stream_limit")).await,
        "{}",
        agent.log()
    );
    assert_eq!(
        metric(
            addr,
            r#"wisp_loki_records_dropped_total{reason="stream_limit"}"#
        )
        .await,
        None
    );
}
