//! Finding files: globs, files that appear later, and the poll that works where
//! file events never fire (host-side writes on virtiofs, 9p, sshfs).

mod tail_common;

use tail_common::*;
use wisp_agent::config::Span;
use wisp_agent::source::file::TailSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_created_later_is_read_from_its_start() {
    let (_dir, logs, state) = temp();
    let mut e = entry("later", &logs.join("*.log"));
    // start_at = end applies to files present at startup only.
    e.start_at = wisp_agent::config::StartAt::End;
    e.poll_interval = Span::secs(30); // found through its directory's events
    append(&logs.join("present.log"), "present at startup\n");
    let tail = start(vec![e], &state);
    eventually("startup scan", || tail.counters.snapshot().files_open == 1).await;
    // Created and written at once: a rotation's first lines must not be skipped.
    append(&logs.join("new.log"), &numbered("new", 0..3));
    assert_eq!(tail.wait_lines(3).await, expected("new", 0..3));
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_star_pattern_picks_up_files_in_directories_created_later() {
    let (_dir, logs, state) = temp();
    let tail = start(vec![entry("deep", &logs.join("**/*.log"))], &state);
    let deep = logs.join("a/b");
    std::fs::create_dir_all(&deep).unwrap();
    append(&deep.join("x.log"), "deep line\n");
    append(&logs.join("top.log"), "top line\n");
    let mut got = tail.wait_lines(2).await;
    got.sort();
    assert_eq!(got, ["deep line", "top line"]);
    std::fs::create_dir_all(logs.join("c")).unwrap();
    append(&logs.join("c/ignored.txt"), "not matched\n");
    append(&logs.join("c/y.log"), "later line\n");
    let got = tail.wait_lines(3).await;
    assert_eq!(got[2], "later line");
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_whose_directory_does_not_exist_yet_is_followed_once_it_does() {
    let (_dir, logs, state) = temp();
    let dir = logs.join("refly");
    let tail = start(vec![entry("refly", &dir.join("*.log"))], &state);
    std::fs::create_dir_all(&dir).unwrap();
    append(&dir.join("api.log"), "first\n");
    tail.wait_lines(1).await;
    append(&dir.join("api.log"), "second\n");
    assert_eq!(tail.wait_lines(2).await, ["first", "second"]);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_file_events_the_poll_alone_sees_every_line_and_every_new_file() {
    let (_dir, logs, state) = temp();
    let mut e = entry("polled", &logs.join("*.log"));
    e.poll_interval = Span::millis(100);
    let mut settings = TailSettings::new(vec![e], state.clone());
    settings.events = false;
    let tail = start_with(settings, Acks::Call);
    let a = logs.join("a.log");
    for i in 0..50 {
        append(&a, &format!("a {i}\n"));
        if i % 10 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
    }
    append(&logs.join("b.log"), &numbered("b", 0..5));
    let got = tail.wait_lines(55).await;
    let (a_lines, b_lines): (Vec<_>, Vec<_>) = got.into_iter().partition(|l| l.starts_with('a'));
    assert_eq!(a_lines, expected("a", 0..50));
    assert_eq!(b_lines, expected("b", 0..5));
    tail.stop().await;
}
