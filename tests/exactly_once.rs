//! File → spool exactly once, with the real binary: after a `kill -9`, lines that
//! were already in the spool are not read from the file again, even when
//! `positions.json` is behind (it is written about once a second, after the
//! spool's fsync). The tailer resumes where the spool's last commit says.
//!
//! To hit the window between the spool's fsync and `positions.json` every time
//! (not only when a kill happens to land in it), `positions.json` is made a
//! directory while the first agent runs: the agent cannot write it at all, so
//! without the spool's resume points every line would be read again.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::agent::{metric, Agent, Setup};
use support::loki::LokiReceiver;
use support::{append, wait_until_async, DEADLINE};

const SELECTOR: &str = r#"{job="app"}"#;
const APPENDED: &str = "wisp_spool_records_appended_total{spool=\"loki\"}";

fn lines(tag: &str, from: usize, to: usize) -> Vec<String> {
    support::pino_lines(30, &format!("{tag} line"), from, to)
}

/// Waits until the spool has taken at least `n` records.
async fn wait_spooled(agent: &Agent, admin: SocketAddr, n: f64) {
    let held = wait_until_async(DEADLINE, || async {
        metric(admin, APPENDED).await.is_some_and(|v| v >= n)
    })
    .await;
    assert!(
        held,
        "the spool never held {n} records (has {:?}); agent log:\n{}",
        metric(admin, APPENDED).await,
        agent.log()
    );
}

/// Blocks `positions.json` (a directory in its place) so the agent cannot write it.
fn block_positions(state: &Path) {
    std::fs::create_dir_all(state.join("positions.json")).unwrap();
}

fn unblock_positions(state: &Path) {
    std::fs::remove_dir_all(state.join("positions.json")).unwrap();
}

/// The first life of each test: Loki away (the lines wait in the spool, no push
/// is in flight at the kill), `positions.json` unwritable, `first` appended to
/// `app.log` and spooled, then (after `between`, with the agent running)
/// `kill -9`. `positions.json` is writable again afterwards.
struct FirstLife {
    loki: LokiReceiver,
    setup: Setup,
    file: std::path::PathBuf,
}

impl FirstLife {
    async fn run(extra: &str, first: &[String], spooled: f64) -> (FirstLife, Agent, SocketAddr) {
        let loki = LokiReceiver::start().await;
        loki.stop().await;
        let setup = Setup::new(&loki, extra);
        setup.set_admin_listen("127.0.0.1:0");
        block_positions(&setup.dir.path().join("state"));
        let file = setup.log_path("app.log");
        append(&file, first);
        let agent = setup.start();
        let admin = agent.admin_addr().await;
        wait_spooled(&agent, admin, spooled).await;
        assert!(
            agent.log().contains("cannot write checkpoint file"),
            "positions.json should be unwritable here:\n{}",
            agent.log()
        );
        (FirstLife { loki, setup, file }, agent, admin)
    }

    /// `kill -9`, then `positions.json` is writable again.
    fn kill(&self, mut agent: Agent) {
        agent.kill9();
        unblock_positions(&self.setup.dir.path().join("state"));
    }
}

/// Waits until Loki holds every line of `expected`, stops the agent cleanly (it
/// drains what it holds), and checks that each line is stored exactly once.
async fn assert_each_once(loki: &LokiReceiver, expected: &[String], agent: &mut Agent) {
    agent
        .assert_shipped_once(loki, SELECTOR, expected, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    if let Err(e) = loki.exactly_once(SELECTOR, expected) {
        panic!("after the agent stopped: {e}\nagent log:\n{}", agent.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_spooled_before_a_kill_9_are_not_read_again_when_positions_json_is_behind() {
    let first = lines("first", 0, 300);
    let (life, agent, _) = FirstLife::run("", &first, 300.0).await;
    life.kill(agent);

    life.loki.restart().await;
    let mut agent = life.setup.start();
    let second = lines("second", 300, 400);
    append(&life.file, &second);
    let mut all = first;
    all.extend(second);
    assert_each_once(&life.loki, &all, &mut agent).await;
    assert!(
        agent
            .log()
            .contains("resume where the buffer's last commit left them"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_and_rewritten_before_a_kill_9_resumes_in_its_new_content() {
    let old = lines("old", 0, 200);
    let (life, agent, admin) = FirstLife::run("", &old, 200.0).await;
    // copytruncate's second half, then new lines in the emptied file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&life.file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let new = lines("new", 200, 250);
    append(&life.file, &new);
    wait_spooled(&agent, admin, 250.0).await;
    life.kill(agent);

    // While the agent is away the file grows past where the old content ended:
    // only the new content's own resume point tells where to go on.
    let later = lines("later", 250, 700);
    append(&life.file, &later);
    life.loki.restart().await;
    let mut agent = life.setup.start();
    let mut all = old;
    all.extend(new);
    all.extend(later);
    assert_each_once(&life.loki, &all, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_line_record_held_back_at_a_kill_9_is_read_whole_once() {
    let mut first = lines("first", 0, 50);
    // A stack trace whose continuation has not been written yet: the joiner
    // holds it, and the resume point stays before it.
    let mut written = first.clone();
    written.push("Error: boom".to_string());
    let (life, agent, _) = FirstLife::run("multiline_timeout = \"30s\"\n", &written, 50.0).await;
    life.kill(agent);

    append(
        &life.file,
        &[
            "    at handler (/app/a.js:1:1)".to_string(),
            "    at main (/app/b.js:2:2)".to_string(),
        ],
    );
    let after = lines("after", 50, 60);
    append(&life.file, &after);
    life.loki.restart().await;
    let mut agent = life.setup.start();
    first.push("Error: boom\n    at handler (/app/a.js:1:1)\n    at main (/app/b.js:2:2)".into());
    first.extend(after);
    assert_each_once(&life.loki, &first, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copytruncate_while_the_agent_is_away_is_read_on_from_where_the_original_was() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("app.log");
    let before = lines("before", 0, 300);
    append(&file, &before);
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, SELECTOR, &before, DEADLINE)
        .await;
    // Some lines the agent has not read yet when it stops.
    let unread = lines("unread", 300, 350);
    agent.kill9();
    append(&file, &unread);

    // logrotate's copytruncate while the agent is away. The copy's name sorts
    // before the original's, so the agent meets it first.
    let copy = setup.log_path("app-1.log");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let after = lines("after", 350, 400);
    append(&file, &after);

    let mut agent = setup.start();
    let mut all = before;
    all.extend(unread);
    all.extend(after);
    assert_each_once(&loki, &all, &mut agent).await;
    assert!(
        agent
            .log()
            .contains(&format!("tailing {} from byte", copy.display())),
        "{}",
        agent.log()
    );
}
