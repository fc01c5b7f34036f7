//! Checkpoints across restarts: resume exactly, re-read what was never
//! acknowledged, survive a corrupt positions file.

mod tail_common;

use tail_common::*;
use wisp_agent::config::StartAt;
use wisp_agent::source::file::{TailSettings, POSITIONS_FILE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_exactly_where_the_acknowledged_lines_end() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, &numbered("line", 0..300));
    let tail = start(vec![entry("app", &path)], &state);
    tail.wait_lines(300).await;
    assert_eq!(tail.stop().await, expected("line", 0..300));

    append(&path, &numbered("line", 300..450));
    let tail = start(vec![entry("app", &path)], &state);
    let got = tail.wait_lines(150).await;
    assert_eq!(got, expected("line", 300..450), "exactly the rest");
    assert_eq!(tail.stop().await.len(), 150, "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_whose_batches_were_never_acknowledged_are_read_again_after_a_restart() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, &numbered("line", 0..100));
    let tail = start(vec![entry("app", &path)], &state);
    tail.wait_lines(100).await;
    tail.stop().await;

    append(&path, &numbered("line", 100..200));
    let unacked = start_with(
        TailSettings::new(vec![entry("app", &path)], state.clone()),
        Acks::Drop,
    );
    assert_eq!(unacked.wait_lines(100).await, expected("line", 100..200));
    unacked.stop().await;

    let tail = start(vec![entry("app", &path)], &state);
    let got = tail.wait_lines(100).await;
    assert_eq!(
        got,
        expected("line", 100..200),
        "read again, from the last ack"
    );
    assert_eq!(tail.stop().await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_end_applies_only_to_files_never_seen_before() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, "history\n");
    let mut e = entry("app", &path);
    e.start_at = StartAt::End;
    let tail = start(vec![e.clone()], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    append(&path, "seen live\n");
    tail.wait_lines(1).await;
    tail.stop().await;
    // Written while the agent was down: a known file resumes at its checkpoint.
    append(&path, "written while down\n");
    let tail = start(vec![e], &state);
    assert_eq!(tail.wait_lines(1).await, ["written while down"]);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_appeared_during_a_reload_is_read_from_its_start_whatever_start_at_says() {
    let (_dir, logs, state) = temp();
    let mut e = entry("app", &logs.join("*.log"));
    e.start_at = StartAt::End;
    let tail = start(vec![e.clone()], &state);
    eventually("first walk", || tail.counters.snapshot().watches > 0).await;
    tail.stop().await;
    // Created while the pipelines restarted on a reloaded configuration: the
    // entry ran before it, so `start_at = "end"` is not applied again.
    let path = logs.join("rotated-in.log");
    append(&path, "written during the reload\n");
    let settings = TailSettings {
        continued: ["app".to_string()].into(),
        ..TailSettings::new(vec![e], state.clone())
    };
    let tail = start_with(settings, Acks::Call);
    assert_eq!(tail.wait_lines(1).await, ["written during the reload"]);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_positions_file_is_set_aside_and_rebuilt() {
    let (_dir, logs, state) = temp();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join(POSITIONS_FILE),
        b"{\"version\":1,\"files\":[{\"pa",
    )
    .unwrap();
    let path = logs.join("app.log");
    append(&path, &numbered("line", 0..5));
    let tail = start(vec![entry("app", &path)], &state);
    assert_eq!(tail.wait_lines(5).await, expected("line", 0..5));
    tail.stop().await;
    assert!(state.join("positions.json.corrupt").exists());
    let rebuilt = std::fs::read_to_string(state.join(POSITIONS_FILE)).unwrap();
    assert!(rebuilt.contains("app.log"), "{rebuilt}");

    append(&path, "one more\n");
    let tail = start(vec![entry("app", &path)], &state);
    assert_eq!(tail.wait_lines(1).await, ["one more"]);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_last_line_is_not_checkpointed_at_shutdown() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, "done\nhalf");
    let tail = start(vec![entry("app", &path)], &state);
    tail.wait_lines(1).await;
    tail.stop().await;
    append(&path, " and the rest\n");
    let tail = start(vec![entry("app", &path)], &state);
    assert_eq!(tail.wait_lines(1).await, ["half and the rest"]);
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rotated_while_the_agent_was_down_is_finished_and_its_successor_read_whole() {
    let (_dir, logs, state) = temp();
    let path = logs.join("app.log");
    append(&path, &numbered("old", 0..10));
    let mut e = entry("app", &logs.join("app.log*"));
    e.start_at = StartAt::End;
    let tail = start(vec![e.clone()], &state);
    eventually("file open", || tail.counters.snapshot().files_open == 1).await;
    append(&path, &numbered("old", 10..20));
    tail.wait_lines(10).await;
    tail.stop().await;
    // While the agent is down: more lines, a rename-and-create, lines in the new file.
    append(&path, &numbered("old", 20..25));
    std::fs::rename(&path, logs.join("app.log.1")).unwrap();
    append(&path, &numbered("new", 0..5));
    let tail = start(vec![e], &state);
    let mut got = tail.wait_lines(10).await;
    got.sort();
    let mut want = expected("old", 20..25);
    want.extend(expected("new", 0..5));
    want.sort();
    assert_eq!(
        got, want,
        "start_at = end does not apply to the new app.log"
    );
    assert_eq!(tail.stop().await.len(), 10);
}
