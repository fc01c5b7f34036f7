//! While Loki has not answered a push, the agent reads the next one from its
//! buffer, so that it goes as soon as the answer comes. What is read ahead is
//! neither in flight nor acknowledged: a stop meanwhile leaves it in the
//! buffer, and the next start sends it once; a drain ships it before the exit.

mod support;

use std::net::SocketAddr;

use support::agent::{metric, Agent, Setup};
use support::loki::{LokiReceiver, Mode};
use support::{append, wait_until_async, DEADLINE};

/// Records the agent has read from its Loki buffer.
const READ: &str = "wisp_spool_records_read_total{spool=\"loki\"}";

fn pino_lines(from: usize, to: usize) -> Vec<String> {
    support::pino_lines(30, "read ahead", from, to)
}

/// The harness's agent with the admin endpoint on, pushes of at most 1 KiB
/// (a few lines each), and a push timeout longer than any hold of the test
/// (a retry is another story).
fn setup(loki: &LokiReceiver) -> Setup {
    let setup = Setup::new(loki, "");
    setup.edit(|text| {
        assert!(text.contains("timeout = \"1s\""), "{text}");
        text.replacen("timeout = \"1s\"", "timeout = \"60s\"", 1)
    });
    setup.add_loki_keys("batch_max_bytes = \"1KiB\"");
    setup.set_admin_listen("127.0.0.1:0");
    setup
}

/// Starts the agent with `lines` in its file and Loki holding its first push
/// unanswered; returns once the agent has read more of its buffer than that
/// push holds. Returns the agent, its admin address and the entries of the
/// held push.
async fn first_push_held(
    loki: &LokiReceiver,
    setup: &Setup,
    lines: &[String],
) -> (Agent, SocketAddr, usize) {
    loki.next_modes(&[Mode::StoreThenHold]);
    append(&setup.log_path("api.log"), lines);
    let agent = setup.start();
    let addr = agent.admin_addr().await;
    assert!(
        loki.wait_for_held(1, DEADLINE).await,
        "no push held; agent log:\n{}",
        agent.log()
    );
    let first = loki.stored_count();
    assert!(
        first > 0 && first < lines.len(),
        "the first push holds {first} of {} lines: the test needs several pushes",
        lines.len()
    );
    let read_ahead = wait_until_async(DEADLINE, || async {
        metric(addr, READ).await.is_some_and(|n| n > first as f64)
    })
    .await;
    assert!(
        read_ahead,
        "while loki held a push of {first} entries, the agent read {:?} records of its buffer; \
         agent log:\n{}",
        metric(addr, READ).await,
        agent.log()
    );
    assert_eq!(loki.pushes(), 1, "{}", agent.log());
    assert!(loki.answers().is_empty(), "{:?}", loki.answers());
    (agent, addr, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_push_is_read_from_the_buffer_while_loki_has_not_answered() {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    let lines = pino_lines(0, 60);
    let (mut agent, _, _) = first_push_held(&loki, &setup, &lines).await;

    loki.release_held();
    agent
        .assert_shipped_once(&loki, "{job=\"app\"}", &lines, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert_eq!(loki.received_count(), lines.len(), "{}", agent.log());
    assert!(
        loki.answers().iter().all(|&s| s == 204),
        "{:?}",
        loki.answers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_next_push_is_read_ahead_loses_and_doubles_nothing() {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    let lines = pino_lines(0, 60);
    let (mut agent, _, first) = first_push_held(&loki, &setup, &lines).await;

    // SIGTERM: the held push is not answered within the 5 s the sink gets,
    // so the agent stops with it in flight and the next batch read ahead.
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    loki.release_held();
    assert_eq!(loki.received_count(), first);

    let agent = setup.start();
    let addr = agent.admin_addr().await;
    let rest = (lines.len() - first) as f64;
    let shipped = wait_until_async(DEADLINE, || async {
        metric(addr, "wisp_loki_records_shipped_total").await == Some(rest)
    })
    .await;
    assert!(
        shipped,
        "shipped {:?} of the {rest} records after the held push; agent log:\n{}",
        metric(addr, "wisp_loki_records_shipped_total").await,
        agent.log()
    );
    // The held push was in flight: Loki was asked, and it held all of it.
    assert!(
        agent.log().contains(&format!(
            "already has {first} of the {first} records of the push in flight"
        )),
        "{}",
        agent.log()
    );
    agent
        .assert_shipped_once(&loki, "{job=\"app\"}", &lines, DEADLINE)
        .await;
    assert_eq!(loki.received_count(), lines.len(), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_while_the_next_push_is_read_ahead_ships_it_once() {
    let loki = LokiReceiver::start().await;
    let setup = setup(&loki);
    let lines = pino_lines(0, 60);
    let (mut agent, _, _) = first_push_held(&loki, &setup, &lines).await;

    // SIGTERM, and Loki answers within the 5 s the sink gets: the batch read
    // ahead and the rest of the buffer go before the agent exits.
    let pid = agent.pid().expect("the agent runs").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success()));
    assert!(
        agent
            .wait_logged("SIGTERM received: stopping sources and draining", 1)
            .await,
        "{}",
        agent.log()
    );
    loki.release_held();
    assert!(
        support::wait_until(DEADLINE, || !agent.running()).await,
        "the agent did not exit; log:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("stopped cleanly"), "{}", agent.log());
    loki.exactly_once("{job=\"app\"}", &lines)
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    assert_eq!(loki.received_count(), lines.len(), "{}", agent.log());
}
