//! The push in flight at a `kill -9`: Loki stored it but the agent never heard.
//! Real Loki 3.x stores a replayed entry again, so after the restart the agent
//! asks Loki which of the push's records it holds and sends only the others; when
//! Loki cannot be read, it sends them all and counts them. These tests count each
//! line themselves, and the entries the fake received (`received_count`), so a replay
//! shows even where the fake keeps identical entries once.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use support::agent::{metric, Setup};
use support::loki::{LokiReceiver, Mode};
use support::{append, wait_until, wait_until_async, DEADLINE};

/// Pino lines numbered `from..to`, stamped now so Loki's window accepts them.
fn pino_lines(from: usize, to: usize) -> Vec<String> {
    support::pino_lines(40, "line", from, to)
}

/// The harness's agent with the admin endpoint on a free port, and a push
/// timeout long enough that the agent does not retry the unanswered push (a
/// retry of a push whose answer was lost is another story than the restart's).
fn setup(loki: &LokiReceiver) -> Setup {
    let setup = Setup::new(loki, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains("timeout = \"1s\""), "{text}");
    std::fs::write(
        &setup.config,
        text.replacen("timeout = \"1s\"", "timeout = \"30s\"", 1),
    )
    .unwrap();
    setup.set_admin_listen("127.0.0.1:0");
    setup
}

/// How often each line is stored in the fake Loki.
fn stored_counts(loki: &LokiReceiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in loki.all_entries() {
        *counts.entry(e.line).or_default() += 1;
    }
    counts
}

/// Waits until `name` reads `want`; returns what it read last.
async fn metric_reaches(addr: SocketAddr, name: &str, want: f64) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let last = metric(addr, name).await;
        if last == Some(want) || tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs the agent until the fake Loki stored the first 50 lines without
/// answering, then `kill -9`s it. Returns the lines and the entries the fake had
/// received by then.
async fn stored_then_killed(loki: &LokiReceiver, setup: &Setup) -> (Vec<String>, usize) {
    loki.set_mode(Mode::StoreThenHang);
    let mut agent = setup.start();
    let lines = pino_lines(0, 50);
    append(&setup.log_path("api.log"), &lines);
    assert!(
        loki.wait_for_stored(50, DEADLINE).await,
        "got {}; agent log:\n{}",
        loki.stored_count(),
        agent.log()
    );
    // The lines are in the spool and the tailer's checkpoint is past them: what
    // could come back after the kill is the spool's push in flight, not a re-read.
    assert!(
        setup.wait_checkpointed(&setup.log_path("api.log")).await,
        "{}",
        agent.log()
    );
    agent.kill9();
    let received = loki.received_count();
    assert_eq!(received, 50, "the push went more than once before the kill");
    (lines, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_loki_stored_before_a_kill_9_is_not_sent_again_after_the_restart() {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    let (mut lines, received) = stored_then_killed(&loki, &setup).await;

    loki.set_mode(Mode::Normal);
    let more = pino_lines(50, 60);
    append(&setup.log_path("api.log"), &more);
    lines.extend(more);
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    // The 10 new lines are shipped; the 50 in flight were found in Loki.
    assert_eq!(
        metric_reaches(addr, "wisp_loki_records_shipped_total", 10.0).await,
        Some(10.0),
        "{}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("already has 50 of the 50 records of the push in flight"),
        "{}",
        agent.log()
    );
    assert_eq!(
        metric(addr, "wisp_loki_records_possibly_duplicated_total").await,
        Some(0.0)
    );

    // Every line exactly once, and nothing of the first push received again.
    let counts = stored_counts(&loki);
    for line in &lines {
        assert_eq!(counts.get(line), Some(&1), "{line}\n{}", agent.log());
    }
    assert_eq!(counts.len(), lines.len());
    assert_eq!(loki.received_count() - received, 10, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loki_that_refuses_queries_gets_the_push_in_flight_whole_and_the_resent_entries_are_counted(
) {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    let (mut lines, received) = stored_then_killed(&loki, &setup).await;

    // The push credentials may write but not read.
    loki.set_query_status(Some(403));
    loki.set_mode(Mode::Normal);
    let more = pino_lines(50, 60);
    append(&setup.log_path("api.log"), &more);
    lines.extend(more);
    let since = std::fs::read_to_string(setup.stderr_path())
        .unwrap_or_default()
        .len();
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    assert_eq!(
        metric_reaches(addr, "wisp_loki_records_shipped_total", 60.0).await,
        Some(60.0),
        "{}",
        agent.log()
    );
    let resent = loki.received_count() - received - 10;
    assert_eq!(resent, 50, "{}", agent.log());
    assert_eq!(
        metric(addr, "wisp_loki_records_possibly_duplicated_total").await,
        Some(resent as f64)
    );
    // Logged once, with the reason.
    let log = agent.log();
    let log = &log[since..];
    assert_eq!(
        log.matches("cannot check which of the 50 records").count(),
        1,
        "{log}"
    );
    assert!(log.contains("status 403"), "{log}");

    // Every line arrived; none is stored more often than the counter admits.
    let counts = stored_counts(&loki);
    for line in &lines {
        assert!(counts.get(line).is_some_and(|&n| n >= 1), "{line} missing");
    }
    let extra: usize = counts.values().map(|n| n - 1).sum();
    assert!(extra <= resent, "{extra} duplicates, {resent} counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loki_still_down_at_the_restart_is_waited_for_then_checked() {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    let (lines, received) = stored_then_killed(&loki, &setup).await;

    loki.set_mode(Mode::Normal);
    loki.stop().await;
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    assert!(
        wait_until(DEADLINE, || agent.own_log().contains(
            "which records of the push in flight when the agent stopped it already has"
        ))
        .await,
        "{}",
        agent.log()
    );
    loki.restart().await;
    assert!(
        wait_until(DEADLINE, || agent
            .log()
            .contains("already has 50 of the 50 records"))
        .await,
        "{}",
        agent.log()
    );
    assert_eq!(
        metric(addr, "wisp_loki_records_possibly_duplicated_total").await,
        Some(0.0)
    );
    let counts = stored_counts(&loki);
    for line in &lines {
        assert_eq!(counts.get(line), Some(&1), "{line}");
    }
    assert_eq!(loki.received_count(), received, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_lost_before_loki_stored_it_is_sent_after_the_restart() {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    // Loki never takes the push (it hangs before storing): the check finds
    // nothing and the whole push goes, once.
    loki.set_mode(Mode::Hang);
    let mut agent = setup.start();
    let lines = pino_lines(0, 20);
    append(&setup.log_path("api.log"), &lines);
    assert!(loki.wait_for_pushes(1, DEADLINE).await, "{}", agent.log());
    assert!(
        setup.wait_checkpointed(&setup.log_path("api.log")).await,
        "{}",
        agent.log()
    );
    agent.kill9();

    loki.set_mode(Mode::Normal);
    let agent = setup.start();
    assert!(
        loki.wait_for_stored(20, DEADLINE).await,
        "got {}; agent log:\n{}",
        loki.stored_count(),
        agent.log()
    );
    assert!(
        wait_until(DEADLINE, || agent.log().contains("already has 0 of the")).await,
        "{}",
        agent.log()
    );
    let counts = stored_counts(&loki);
    for line in &lines {
        assert_eq!(counts.get(line), Some(&1), "{line}");
    }
    assert_eq!(loki.received_count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_timed_out_after_loki_stored_it_is_not_sent_again() {
    let loki = LokiReceiver::start().await;
    // The harness's push timeout is 1s: the agent gives up on the unanswered
    // push and tries again, as it would when Loki restarts mid-push.
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    loki.set_mode(Mode::StoreThenHang);
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    let mut lines = pino_lines(0, 50);
    append(&setup.log_path("api.log"), &lines);
    assert!(loki.wait_for_stored(50, DEADLINE).await, "{}", agent.log());
    // The first try timed out (counted as a retry); then Loki answers again.
    let retried = wait_until_async(DEADLINE, || async {
        metric(addr, "wisp_loki_retries_total")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(retried, "{}", agent.log());
    loki.set_mode(Mode::Normal);
    let more = pino_lines(50, 60);
    append(&setup.log_path("api.log"), &more);
    lines.extend(more);
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines, DEADLINE)
        .await;
    assert!(
        agent.log().contains(
            "already has 50 of the 50 records of a push whose last try may have reached it"
        ),
        "{}",
        agent.log()
    );
    assert_eq!(loki.received_count(), 60, "{}", agent.log());
    assert_eq!(
        metric(addr, "wisp_loki_records_possibly_duplicated_total").await,
        Some(0.0)
    );
}
