//! An idle agent hardly wakes: where file events report every change (every
//! folder watched, on a local filesystem, every file reached by its own name
//! there), the poll is only a safety net every 10 s or `poll_interval` if
//! longer, and events alone find new lines, new files, rotations and
//! truncations. Where they cannot (here: a file reached through a symlink,
//! written to in a folder the agent does not watch), the poll keeps
//! `poll_interval`. With the real binary.

mod support;

use std::time::Duration;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::{append, DEADLINE};

const SELECTOR: &str = r#"{job="app"}"#;

fn lines(tag: &str, from: usize, to: usize) -> Vec<String> {
    support::pino_lines(30, &format!("{tag} line"), from, to)
}

fn poll_every(setup: &Setup, interval: &str) {
    setup.edit(|t| {
        assert!(t.contains("poll_interval = \"100ms\""), "{t}");
        t.replace(
            "poll_interval = \"100ms\"",
            &format!("poll_interval = {interval:?}"),
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_poll_of_an_hour_events_alone_find_lines_new_files_rotations_and_truncations() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    poll_every(&setup, "1h");
    let app = setup.log_path("app.log");
    let mut all = lines("first", 0, 50);
    append(&app, &all);
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;

    // Written to, a new file, then a rotation by rename and create.
    let more = lines("more", 50, 60);
    append(&app, &more);
    let other = lines("other", 0, 10);
    append(&setup.log_path("other.log"), &other);
    std::fs::rename(&app, setup.log_path("app.log.1")).unwrap();
    let after = lines("after", 60, 70);
    append(&app, &after);
    all.extend(more.into_iter().chain(other).chain(after));
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;

    // Truncated in place, then fewer bytes than were read written again.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&app)
        .unwrap()
        .set_len(0)
        .unwrap();
    let truncated = lines("truncated", 70, 72);
    append(&app, &truncated);
    all.extend(truncated);
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_where_no_event_reaches_the_agent_is_still_read_every_poll_interval() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    poll_every(&setup, "200ms");
    // The agent watches logs/; the file lives (and is written) elsewhere.
    let elsewhere = setup.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let real = elsewhere.join("real.txt");
    let mut all = lines("first", 0, 20);
    append(&real, &all);
    std::os::unix::fs::symlink(&real, setup.log_path("app.log")).unwrap();
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;
    assert!(
        setup.wait_checkpointed(&setup.log_path("app.log")).await,
        "never checkpointed; agent log:\n{}",
        agent.log()
    );
    // Twice, each time with nothing else due (the checkpoint written after the
    // last lines long done): only the poll can find these lines, within a few
    // polls of 200 ms, where the safety net's 10 s would mostly miss 3 s.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = lines(&format!("later {round}"), 20, 30);
        append(&real, &later);
        all.extend(later);
        agent
            .assert_shipped_once(&loki, SELECTOR, &all, Duration::from_secs(3))
            .await;
    }
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_whose_folders_events_cover_hardly_wakes_whatever_its_poll_interval() {
    let loki = LokiReceiver::start().await;
    // The harness polls every 100 ms: 30 polls (each a walk of the folder on
    // another thread, and a stat of every file) in the 3 s watched below.
    let setup = Setup::new(&loki, "");
    let mut all = Vec::new();
    for name in ["a", "b", "c"] {
        let some = lines(name, 0, 20);
        append(&setup.log_path(&format!("{name}.log")), &some);
        all.extend(some);
    }
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;
    let pid = agent.pid().unwrap();
    // Once the checkpoints are written and the spool synced, nothing is due.
    let positions = setup.dir.path().join("state").join("positions.json");
    assert!(
        setup.wait_checkpointed(&setup.log_path("c.log")).await,
        "{} never caught up; agent log:\n{}",
        positions.display(),
        agent.log()
    );
    let mut before = support::proc::context_switches(pid);
    let mut settled = false;
    // Settled: a whole second without more than a couple of wakeups (the
    // allocator hands memory back, the last acks are written).
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = support::proc::context_switches(pid);
        let woke = now - before;
        before = now;
        if woke <= 3 {
            settled = true;
            break;
        }
    }
    assert!(settled, "the agent never went quiet; log:\n{}", agent.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let woke = support::proc::context_switches(pid) - before;
    assert!(
        woke < 15,
        "the idle agent woke {woke} times in 3 s (a 100 ms poll would be 60 or more)"
    );
    // Still following: a line written now arrives.
    let last = lines("last", 20, 21);
    append(&setup.log_path("a.log"), &last);
    all.extend(last);
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
}
