//! What the tailer makes of the bytes it reads: lines, partial lines, cut lines,
//! bad bytes, and where it starts in a file.

mod tail_common;

use tail_common::*;
use wisp_agent::config::{Size, Span, StartAt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_appended_to_a_followed_file_is_handed_on_with_its_source() {
    let (_dir, logs, state) = temp();
    let path = logs.join("api.log");
    append(&path, "");
    let mut e = entry("refly-api", &logs.join("*.log"));
    e.labels.insert("env".into(), "local".into());
    let tail = start(vec![e], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    append(&path, "hello\r\nworld\n");
    tail.wait_lines(2).await;
    let r = tail.received();
    assert_eq!(r[0].text, "hello", "a \\r\\n loses its \\r");
    assert_eq!(r[1].text, "world");
    assert_eq!(r[0].job, "refly-api");
    assert_eq!(r[0].filename, path.display().to_string());
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_last_line_waits_for_its_newline_and_is_flushed_after_the_timeout() {
    let (_dir, logs, state) = temp();
    let path = logs.join("a.log");
    let mut e = entry("a", &path);
    e.partial_line_timeout = Span::millis(1000);
    append(&path, "complete\nhalf a li");
    let tail = start(vec![e], &state);
    tail.wait_lines(1).await;
    append(&path, "ne\nno newline yet");
    // "half a line" completes; the next partial is shipped after its timeout.
    let got = tail.wait_lines(3).await;
    assert_eq!(got, ["complete", "half a line", "no newline yet"]);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_max_line_bytes_is_cut_and_counted() {
    let (_dir, logs, state) = temp();
    let path = logs.join("big.log");
    let mut e = entry("big", &path);
    e.max_line_bytes = Size::kib(1);
    let huge = "x".repeat(3 * 1024 * 1024);
    append(&path, &format!("before\n{huge}\nafter\n"));
    let tail = start(vec![e], &state);
    let got = tail.wait_lines(3).await;
    assert_eq!(got[0], "before");
    assert_eq!(got[1].len(), 1024, "cut at max_line_bytes");
    assert_eq!(got[2], "after", "the rest of the long line is discarded");
    let metrics = tail.counters.snapshot().metrics();
    assert!(
        metrics.contains(&("wisp_file_lines_cut_total", 1)),
        "{metrics:?}"
    );
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_line_arriving_in_pieces_is_cut_without_being_buffered_whole() {
    let (_dir, logs, state) = temp();
    let path = logs.join("big.log");
    let mut e = entry("big", &path);
    e.max_line_bytes = Size::kib(1);
    append(&path, "");
    let tail = start(vec![e], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    for _ in 0..20 {
        append(&path, &"y".repeat(300));
    }
    append(&path, "\nnext\n");
    let got = tail.wait_lines(2).await;
    assert_eq!(got[0], "y".repeat(1024));
    assert_eq!(got[1], "next");
    assert_eq!(tail.counters.snapshot().lines_cut, 1);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_shipped_lossily_and_nul_bytes_dropped_both_counted() {
    let (_dir, logs, state) = temp();
    let path = logs.join("bad.log");
    append_bytes(&path, b"ok \xff\xfe end\nnul\x00inside\n");
    let tail = start(vec![entry("bad", &path)], &state);
    let got = tail.wait_lines(2).await;
    assert_eq!(got[0], "ok \u{fffd}\u{fffd} end");
    // A NUL is dropped from what is shipped (and counted): see source/terminal.rs.
    assert_eq!(got[1], "nulinside");
    assert_eq!(tail.counters.snapshot().invalid_utf8_lines, 1);
    assert_eq!(tail.counters.snapshot().controls_dropped, 1);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_end_skips_what_a_file_held_at_startup_and_beginning_reads_it() {
    let (_dir, logs, state) = temp();
    let old = logs.join("end.log");
    let all = logs.join("beginning.log");
    append(&old, "old line\n");
    append(&all, "first line\n");
    let mut end = entry("end", &old);
    end.start_at = StartAt::End;
    let beginning = entry("beginning", &all);
    let tail = start(vec![end, beginning], &state);
    tail.wait_lines(1).await;
    append(&old, "new line\n");
    let mut got = tail.wait_lines(2).await;
    got.sort();
    assert_eq!(got, ["first line", "new line"]);
    tail.stop().await;
}
