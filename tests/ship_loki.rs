//! The daemon end to end: the built binary tails real files and ships to the fake
//! Loki on loopback, through the spool, across outages, kills and restarts. The
//! fake stores what it is sent twice as Loki does, twice: every test asserts
//! that each line written arrives, and arrives once.

mod support;

use std::fs::File;
use std::time::Duration;

use support::agent::Setup;
use support::loki::{LokiReceiver, Mode};
use support::{append, wait_until, DEADLINE};

/// Pino lines numbered `from..to`, stamped now so Loki's window accepts them.
fn pino_lines(from: usize, to: usize, level: u8) -> Vec<String> {
    support::pino_lines(level, "line", from, to)
}

fn shipped_lines(loki: &LokiReceiver) -> Vec<String> {
    loki.all_entries().into_iter().map(|e| e.line).collect()
}

/// The stream selector of every line these tests write.
const APP: &str = r#"{job="app"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_appended_to_a_tailed_file_reach_loki_with_their_labels() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    let mut lines = pino_lines(0, 3, 30);
    lines.extend(pino_lines(3, 5, 50));
    append(&file, &lines);
    let agent = setup.start();
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    let info = loki.entries(r#"{job="app",level="info"}"#);
    let error = loki.entries(r#"{job="app",level="error"}"#);
    assert_eq!(info.len(), 3, "{:?}", loki.streams());
    assert_eq!(error.len(), 2, "{:?}", loki.streams());
    let labels = &info[0].labels;
    assert_eq!(labels.get("host").map(String::as_str), Some("vm-test"));
    assert_eq!(
        labels.get("filename").map(String::as_str),
        Some(file.to_str().unwrap())
    );
    assert_eq!(info[0].line, lines[0]);
    assert_eq!(
        loki.last_header("user-agent").unwrap_or_default(),
        format!("wisp-agent/{}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_loki_refuses_times_out_or_answers_503_and_a_file_rotates() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    let agent = setup.start();
    let mut written = Vec::new();

    let batch = pino_lines(0, 100, 30);
    append(&file, &batch);
    written.extend(batch);
    agent
        .assert_shipped_once(&loki, APP, &written, DEADLINE)
        .await;

    // Refused: the port is closed.
    loki.stop().await;
    let batch = pino_lines(100, 200, 30);
    append(&file, &batch);
    written.extend(batch);
    assert!(
        wait_until(DEADLINE, || agent.log().contains("retrying")).await,
        "{}",
        agent.log()
    );

    // Timing out: the port accepts and never answers.
    loki.set_mode(Mode::Hang);
    loki.restart().await;
    let batch = pino_lines(200, 300, 30);
    append(&file, &batch);
    written.extend(batch);
    let pushes = loki.pushes();
    assert!(loki.wait_for_pushes(pushes + 1, DEADLINE).await);

    // 503, while the file is rotated by rename-and-create.
    loki.set_mode(Mode::Status(503));
    let pushes = loki.pushes();
    assert!(loki.wait_for_pushes(pushes + 1, DEADLINE).await);
    let batch = pino_lines(300, 350, 30);
    append(&file, &batch);
    written.extend(batch);
    std::fs::rename(&file, setup.log_path("api.log.1")).unwrap();
    let batch = pino_lines(350, 400, 30);
    append(&file, &batch);
    written.extend(batch);

    // Back.
    loki.set_mode(Mode::Normal);
    agent
        .assert_shipped_once(&loki, APP, &written, Duration::from_secs(30))
        .await;
    let mut got = shipped_lines(&loki);
    assert_eq!(got.len(), 400);
    // In order per stream (the fake returns a stream's entries by timestamp, and
    // the lines were stamped in order): exactly what was written.
    got.sort();
    let mut want = written.clone();
    want.sort();
    assert_eq!(got, want);
    let in_stream = loki.lines(r#"{job="app",level="info"}"#);
    assert_eq!(in_stream, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_between_push_and_acknowledgement_does_not_push_again_what_loki_stored() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    loki.set_mode(Mode::StoreThenHang);
    let mut agent = setup.start();
    let lines = pino_lines(0, 50, 40);
    append(&file, &lines);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    agent.kill9();
    let received = loki.received_count();

    loki.set_mode(Mode::Normal);
    let more = pino_lines(50, 60, 40);
    append(&file, &more);
    let agent = setup.start();
    let mut want = lines.clone();
    want.extend(more);
    // Loki stores a replayed batch again (it drops only an entry identical to
    // its stream's last): the agent must not push twice what Loki has.
    agent.assert_shipped_once(&loki, APP, &want, DEADLINE).await;
    // The first 50 were not pushed again: after the restart the agent found
    // them in Loki (tests/loki_replay.rs has the cases around it), and the
    // tailer did not read them again (tests/exactly_once.rs).
    assert_eq!(loki.received_count() - received, 10, "{}", agent.log());
    assert_eq!(loki.lines(APP), want);
}

/// The offset `positions.json` holds for `file`, if it holds one.
fn checkpointed(setup: &Setup, file: &std::path::Path) -> Option<u64> {
    let positions = setup.dir.path().join("state").join("positions.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(positions).ok()?).ok()?;
    doc["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"].as_str() == file.to_str())?["offset"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_shipped_just_before_a_kill_9_are_not_shipped_again() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    let mut agent = setup.start();
    let lines = pino_lines(0, 50, 30);
    append(&file, &lines);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    // Killed as soon as Loki has them (and has answered): the checkpoint file,
    // written about once a second, is likely still behind them.
    let size = std::fs::metadata(&file).unwrap().len();
    let at_kill = checkpointed(&setup, &file);
    agent.kill9();

    let more = pino_lines(50, 60, 30);
    append(&file, &more);
    let agent = setup.start();
    let mut want = lines.clone();
    want.extend(more);
    if let Err(e) = loki.wait_for_exactly_once(APP, &want, DEADLINE).await {
        panic!(
            "{e}\n(positions.json held {at_kill:?} of {size} bytes at the kill)\nagent log:\n{}",
            agent.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_resumes_where_it_stopped() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    let mut agent = setup.start();
    let mut lines = pino_lines(0, 20, 30);
    append(&file, &lines);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());

    let more = pino_lines(20, 30, 30);
    append(&file, &more);
    let agent = setup.start();
    lines.extend(more);
    agent
        .assert_shipped_once(&loki, APP, &lines, DEADLINE)
        .await;
    // Nothing was pushed twice: the checkpoint and the spool's acknowledgement
    // were both where the first run stopped.
    assert_eq!(loki.received_count(), 30, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_batch_is_dropped_logged_with_the_reason_and_the_rest_flows() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("api.log");
    // Loki refuses the whole stream for its labels (and stores nothing).
    loki.fail_next(
        1,
        400,
        None,
        "error at least one label pair is required per stream\n",
    );
    let agent = setup.start();
    let rejected = pino_lines(0, 5, 30);
    append(&file, &rejected);
    assert!(
        wait_until(DEADLINE, || agent
            .log()
            .contains("at least one label pair is required"))
        .await,
        "{}",
        agent.log()
    );
    let later = pino_lines(5, 10, 30);
    append(&file, &later);
    assert!(loki.wait_for_stored(1, DEADLINE).await, "{}", agent.log());
    assert!(
        wait_until(DEADLINE, || loki
            .lines(APP)
            .iter()
            .any(|l| l.contains("line 00009")))
        .await,
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("status 400"), "{}", agent.log());
    // The lines after the rejected batch arrive once each; of those the
    // tailer had read before the 400 (the first at least), none arrives, and
    // none twice.
    let got = loki.lines(APP);
    let got_later: Vec<String> = got.iter().filter(|l| later.contains(l)).cloned().collect();
    if let Err(e) = support::exactly_once(&got_later, &later) {
        panic!(
            "the lines after the rejected batch: {e}\nagent log:\n{}",
            agent.log()
        );
    }
    assert!(
        !got.contains(&rejected[0]),
        "the rejected batch was stored: {got:#?}"
    );
    let mut written = rejected.clone();
    written.extend(later);
    if let Err(e) = loki.at_most_once(APP, &written) {
        panic!("{e}\nagent log:\n{}", agent.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_buffer_drops_the_oldest_lines_and_says_so() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    // The [buffer] table must come before [[files]]: rewrite the config.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replace(
        "[host_metrics]",
        "[buffer]\nmax_bytes = \"1MiB\"\n\n[host_metrics]",
    );
    std::fs::write(&setup.config, text).unwrap();
    loki.stop().await;
    let file = setup.log_path("api.log");
    let agent = setup.start();
    // About 3 MB of lines into a 1 MiB buffer while Loki is away.
    let lines = pino_lines(0, 24000, 30);
    for chunk in lines.chunks(500) {
        append(&file, chunk);
    }
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("dropped the oldest"))
        .await,
        "no drop reported; agent log:\n{}",
        agent.log()
    );
    loki.restart().await;
    // What survived arrives: the newest lines, and the batch the sink was
    // retrying when the buffer overflowed; the oldest buffered lines are gone.
    assert!(
        wait_until(DEADLINE, || shipped_lines(&loki)
            .iter()
            .any(|l| l.contains("line 23999")))
        .await,
        "{}",
        agent.log()
    );
    if let Err(e) = loki.at_most_once(APP, &lines) {
        panic!("{e}\nagent log:\n{}", agent.log());
    }
    let got = loki.stored_count();
    assert!(got < 24000, "nothing was dropped: {got}");
}

#[test]
fn sigterm_drains_and_exits_0() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loki = rt.block_on(LokiReceiver::start());
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let lines = pino_lines(0, 3, 30);
    append(&setup.log_path("a.log"), &lines);
    rt.block_on(agent.assert_shipped_once(&loki, APP, &lines, DEADLINE));
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    // Drained, and nothing sent again on the way out.
    assert_eq!(loki.exactly_once(APP, &lines), Ok(()));
    let _ = File::open(setup.stderr_path()).unwrap();
}

/// Waits until the tailer has written its checkpoint after `since`.
async fn checkpoint_written_after(setup: &Setup, since: std::time::SystemTime) -> bool {
    let positions = setup.dir.path().join("state").join("positions.json");
    wait_until(DEADLINE, || {
        std::fs::metadata(&positions)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > since)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_waiting_for_its_continuation_survives_kill_9_and_arrives_once() {
    let loki = LokiReceiver::start().await;
    // A long multi-line timeout: the last record of each round is still waiting
    // for its continuation when the agent is killed.
    let setup = Setup::new(&loki, "multiline_timeout = \"60s\"");
    let file = setup.log_path("api.log");
    let head = |i: usize| format!("ERROR record {i:03}");
    let tail = |i: usize| format!("    at frame {i:03}");
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.extend([head(i), tail(i)]);
    }
    lines.push(head(10));
    append(&file, &lines);
    // The records as Loki stores them: a head and its frame joined.
    let records = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("{}\n{}", head(i), tail(i)))
            .collect()
    };

    for round in 1..=2 {
        let mut agent = setup.start();
        let want = round * 10;
        if let Err(e) = loki
            .wait_for_exactly_once(APP, &records(want), DEADLINE)
            .await
        {
            panic!("round {round}: {e}\nagent log:\n{}", agent.log());
        }
        let arrived = std::time::SystemTime::now();
        assert!(
            checkpoint_written_after(&setup, arrived).await,
            "{}",
            agent.log()
        );
        agent.kill9();
        // The pending record's continuation, the next records, and a new
        // pending record.
        let mut more = vec![tail(want)];
        for i in want + 1..want + 10 {
            more.extend([head(i), tail(i)]);
        }
        more.push(head(want + 10));
        append(&file, &more);
    }
    let mut agent = setup.start();
    // A JSON line finishes the last record (and is one itself).
    let end = r#"{"level":30,"msg":"end"}"#.to_string();
    append(&file, &[tail(30), end.clone()]);
    let mut all = records(31);
    all.push(end.clone());
    agent.assert_shipped_once(&loki, APP, &all, DEADLINE).await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert_eq!(loki.exactly_once(APP, &all), Ok(()));

    let got = loki.lines(APP);
    let want = records(31);
    assert_eq!(got[..31], want[..]);
    assert_eq!(got[31], end);
    // Killed twice with a record pending, and still nothing read twice: the
    // checkpoint stopped at the start of the pending record each time.
    assert_eq!(
        loki.received_count(),
        32,
        "records were read again after a restart"
    );
}
