//! Backpressure: when nobody takes batches, the tailer stops reading and holds a
//! bounded amount; once they are taken, every line arrives, in order.

mod tail_common;

use std::time::Duration;

use tail_common::*;
use wisp_agent::source::file::TailSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_stops_the_tailer_and_then_gets_every_line() {
    let (_dir, logs, state) = temp();
    let path = logs.join("flood.log");
    let total = 100_000;
    append(&path, &numbered("line", 0..total));
    let settings = TailSettings::new(vec![entry("flood", &path)], state.clone());
    let counters = settings.counters.clone();
    let mut tail = paused(settings, 2);
    let mut rx = tail.rx.take().unwrap();

    // The channel fills up, and reading stops with it.
    assert!(eventually("channel full", || rx.len() == 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = counters.snapshot().lines_read;
    // Two batches in the channel, one waiting to be sent, one being filled, and
    // at most one read chunk (256 KiB of 12-byte lines) beyond: far below the file.
    assert!(
        read < 30_000,
        "the tailer kept reading while blocked: {read} lines"
    );
    assert!(read >= 2_000);

    let mut got = Vec::with_capacity(total);
    while got.len() < total {
        let batch = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("batches keep coming")
            .expect("the tailer is running");
        assert!(batch.lines.len() <= 1000, "batches are bounded");
        got.extend(batch.lines.into_iter().map(|l| l.text));
        batch.ack.done();
    }
    assert_eq!(got, expected("line", 0..total));
    drop(rx);
    tail.stop().await;
}
