//! Rotation and truncation while a writer keeps writing: rename-and-create,
//! copytruncate, `: > file`, and deletion. Nothing lost, nothing doubled.

mod tail_common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use tail_common::*;

/// How a writer thread rotates its file halfway through.
#[derive(Clone, Copy)]
enum Rotation {
    /// `mv app.log app.log.1`, keep writing a few lines to the old descriptor (as a
    /// writer does before it notices), then reopen `app.log`.
    RenameAndCreate,
    /// Copy `app.log` to `app.log.1`, then truncate `app.log`; the writer goes on
    /// appending through its descriptor.
    CopyTruncate,
}

/// Writes `"line {i}"` for `0..total`, rotating after `at`; pauses now and then so
/// the tailer reads while lines are still being written.
fn writer(path: PathBuf, total: usize, at: usize, rotation: Rotation) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        let mut f = open(&path);
        let rotated = path.with_extension("log.1");
        for i in 0..total {
            if i == at {
                match rotation {
                    Rotation::RenameAndCreate => {
                        std::fs::rename(&path, &rotated).unwrap();
                    }
                    Rotation::CopyTruncate => {
                        std::fs::copy(&path, &rotated).unwrap();
                        f.set_len(0).unwrap();
                    }
                }
            }
            if matches!(rotation, Rotation::RenameAndCreate) && i == at + 20 {
                f = open(&path);
            }
            writeln!(f, "line {i}").unwrap();
            if i % 50 == 0 {
                thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

fn sorted_by_number(mut lines: Vec<String>) -> Vec<String> {
    lines.sort_by_key(|l| {
        l.rsplit(' ')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_keeps_lines_written_before_and_after_it() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, "");
    // Only the live name is matched: the rotated file is read to its end and closed.
    let tail = start(vec![entry("app", &path)], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    writer(path.clone(), 2000, 1000, Rotation::RenameAndCreate)
        .join()
        .unwrap();
    let got = tail.wait_lines(2000).await;
    assert_eq!(sorted_by_number(got.clone()), expected("line", 0..2000));
    assert_eq!(got.len(), 2000, "nothing doubled");
    assert!(tail.counters.snapshot().rotations >= 1);
    eventually("rotated file closed", || {
        tail.counters.snapshot().files_open == 1
    })
    .await;
    let after = tail.stop().await;
    assert_eq!(after.len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_loses_and_doubles_nothing_when_the_copy_is_matched() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, "");
    // `app.log*` also matches the copy, app.log.1: it is read on from where the
    // original was read up to, so lines written just before the truncation are
    // not lost and the rest is not read twice.
    let tail = start(vec![entry("app", &logs.join("app.log*"))], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    writer(path.clone(), 2000, 1000, Rotation::CopyTruncate)
        .join()
        .unwrap();
    let got = tail.wait_lines(2000).await;
    assert_eq!(sorted_by_number(got), expected("line", 0..2000));
    assert!(tail.counters.snapshot().truncations >= 1);
    let after = tail.stop().await;
    assert_eq!(after.len(), 2000, "nothing doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_read_again_from_its_start() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, &numbered("before", 0..100));
    let tail = start(vec![entry("app", &path)], &state);
    tail.wait_lines(100).await;
    // `: > app.log`, then a short burst: the file ends up shorter than before.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    append(&path, &numbered("after", 0..3));
    let got = tail.wait_lines(103).await;
    assert_eq!(got[100..], expected("after", 0..3));
    assert_eq!(tail.counters.snapshot().truncations, 1);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncation_followed_by_more_writes_than_before_is_still_seen() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, &numbered("before", 0..10));
    let tail = start(vec![entry("app", &path)], &state);
    tail.wait_lines(10).await;
    // Truncated and refilled beyond the old size before the tailer looks: only
    // the first bytes tell.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(numbered("after", 0..40).as_bytes()).unwrap();
    drop(f);
    let got = tail.wait_lines(50).await;
    assert_eq!(got[10..], expected("after", 0..40));
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_read_to_its_end_before_it_is_closed() {
    let (_dir, logs, state) = temp();
    let path = logs.join("gone.log");
    append(&path, "");
    let mut e = entry("gone", &path);
    e.poll_interval = wisp_agent::config::Span::secs(30);
    let tail = start(vec![e], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    // Written and deleted before the tailer gets to read it (a writer still holds
    // it open in real life; here the tailer's own descriptor keeps the data).
    {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(numbered("last words", 0..500).as_bytes())
            .unwrap();
        std::fs::remove_file(&path).unwrap();
    }
    let got = tail.wait_lines(500).await;
    assert_eq!(got, expected("last words", 0..500));
    eventually("closed", || tail.counters.snapshot().files_open == 0).await;
    assert_eq!(tail.counters.snapshot().deletions, 1);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_is_followed_by_the_poll_alone_when_no_events_fire() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, "");
    let mut settings =
        wisp_agent::source::file::TailSettings::new(vec![entry("app", &path)], state.clone());
    settings.events = false;
    let tail = start_with(settings, Acks::Call);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    writer(path.clone(), 2000, 1000, Rotation::RenameAndCreate)
        .join()
        .unwrap();
    let got = tail.wait_lines(2000).await;
    assert_eq!(sorted_by_number(got), expected("line", 0..2000));
    assert_eq!(tail.stop().await.len(), 2000, "nothing doubled");
}
