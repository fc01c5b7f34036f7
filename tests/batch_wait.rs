//! How long a push waits to fill (`[loki] batch_max_wait`, decision 033): a
//! burst does not wait out `batch_max_wait` once the file goes quiet, and a
//! trickle is still batched by time, one push per `batch_max_wait`, not one per
//! line.

mod support;

use std::time::Duration;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::{append, DEADLINE};

const APP: &str = r#"{job="app"}"#;

/// A setup whose pushes wait `wait` to fill and hold at most `max_bytes`.
fn batching(loki: &LokiReceiver, wait: &str, max_bytes: &str) -> Setup {
    let setup = Setup::new(loki, "");
    setup.edit(|text| {
        text.replace(
            "batch_max_wait = \"100ms\"",
            &format!("batch_max_wait = \"{wait}\"\nbatch_max_bytes = \"{max_bytes}\""),
        )
    });
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_half_a_push_goes_once_the_file_is_quiet_not_after_batch_max_wait() {
    let loki = LokiReceiver::start().await;
    // 5,000 lines: half the 10,000 records a push holds at most, and well
    // under half of 4 MiB, so no push can go before all of them are read.
    let setup = batching(&loki, "30s", "4MiB");
    let lines = support::pino_lines(30, "burst", 0, 5000);
    append(&setup.log_path("api.log"), &lines);
    let agent = setup.start();
    // Well before the 30 s a push may wait, and in one push: not full, it
    // went because the file was quiet.
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    assert_eq!(loki.pushes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_of_a_burst_larger_than_a_push_does_not_wait_out_batch_max_wait() {
    let loki = LokiReceiver::start().await;
    let setup = batching(&loki, "30s", "64KiB");
    let file = setup.log_path("api.log");
    let agent = setup.start();
    // Written while the agent tails the file: several full pushes and a tail.
    let lines = support::pino_lines(30, "burst", 0, 5000);
    append(&file, &lines);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    assert!(loki.pushes() >= 3, "{} pushes", loki.pushes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_lines_is_batched_by_batch_max_wait_not_pushed_line_by_line() {
    let loki = LokiReceiver::start().await;
    let setup = batching(&loki, "2s", "1MiB");
    let file = setup.log_path("api.log");
    let agent = setup.start();
    // A line every 100 ms for 2 s, as a busy terminal pane writes them.
    let lines = support::pino_lines(30, "trickle", 0, 20);
    for line in &lines {
        append(&file, std::slice::from_ref(line));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    // One push per 2 s of trickle (two or three as the seconds fall), never
    // one per line.
    assert!(
        loki.pushes() <= 3,
        "{} pushes for 20 lines over 2 s with batch_max_wait = 2s",
        loki.pushes()
    );
}
