//! Files rotated out of the globs, with the real binary: with `paths =
//! [".../app.log"]`, a `copytruncate`'s copy `app.log.2` holds the lines the
//! agent had not read yet, and a file renamed to `app.log.1` those it had not
//! read before the rename. They are read there from where the agent was,
//! exactly once, while it runs and across a `kill -9`.
//!
//! The agent is frozen (SIGSTOP) while the files change, so that it has lines
//! left to read when it looks, every time.

mod support;

use std::path::{Path, PathBuf};

use support::agent::{Agent, Setup};
use support::loki::LokiReceiver;
use support::{append, DEADLINE};

const SELECTOR: &str = r#"{job="app"}"#;

fn lines(tag: &str, from: usize, to: usize) -> Vec<String> {
    support::pino_lines(30, &format!("{tag} line"), from, to)
}

/// A harness whose only pattern is `app.log` itself.
fn narrow(loki: &LokiReceiver) -> (Setup, PathBuf) {
    tailing(loki, "app.log")
}

/// A setup whose one entry tails `logs/PATTERN`, and its `app.log`.
fn tailing(loki: &LokiReceiver, pattern: &str) -> (Setup, PathBuf) {
    let setup = Setup::new(loki, "");
    let logs = setup.dir.path().join("logs");
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let config = config.replace(
        &format!("paths = [\"{}/*.log\"]", logs.display()),
        &format!("paths = [\"{}/{pattern}\"]", logs.display()),
    );
    std::fs::write(&setup.config, config).unwrap();
    let file = setup.log_path("app.log");
    (setup, file)
}

/// `before` appended to `file` and shipped once by an agent started on it.
async fn shipped(loki: &LokiReceiver, setup: &Setup, file: &Path) -> (Agent, Vec<String>) {
    let before = lines("before", 0, 300);
    append(file, &before);
    let agent = setup.start();
    agent
        .assert_shipped_once(loki, SELECTOR, &before, DEADLINE)
        .await;
    (agent, before)
}

/// The last part of the copy tests: the agent killed with `kill -9`, `after`
/// appended to `file`, and a new agent ships `before` and `after` each once.
async fn killed_then_each_once(
    loki: &LokiReceiver,
    setup: &Setup,
    file: &Path,
    mut agent: Agent,
    before: Vec<String>,
) {
    agent.kill9();
    let after = lines("after", 300, 350);
    append(file, &after);
    let mut agent = setup.start();
    let all: Vec<String> = [before, after].concat();
    assert_each_once(loki, &all, &mut agent).await;
}

/// `cp app.log app.log.2; truncate -s0 app.log`.
fn copytruncate(file: &Path) -> PathBuf {
    let copy = file.with_extension("log.2");
    std::fs::copy(file, &copy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(0)
        .unwrap();
    copy
}

/// Waits until Loki holds every line of `all` once, stops the agent cleanly
/// and checks again.
async fn assert_each_once(loki: &LokiReceiver, all: &[String], agent: &mut Agent) {
    agent
        .assert_shipped_once(loki, SELECTOR, all, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    if let Err(e) = loki.exactly_once(SELECTOR, all) {
        panic!("after the agent stopped: {e}\nagent log:\n{}", agent.log());
    }
    assert_eq!(loki.stored_count(), all.len(), "nothing else is stored");
}

/// The first part of each test: `before` shipped, then the agent frozen and
/// `unread` appended, which it has not seen.
async fn shipped_then_frozen(
    loki: &LokiReceiver,
    setup: &Setup,
    file: &Path,
) -> (Agent, Vec<String>, Vec<String>) {
    let (agent, before) = shipped(loki, setup, file).await;
    agent.pause();
    let unread = lines("unread", 300, 1300);
    append(file, &unread);
    (agent, before, unread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_to_a_name_the_glob_misses_reads_the_unread_lines_from_the_copy() {
    let loki = LokiReceiver::start().await;
    let (setup, file) = narrow(&loki);
    let (mut agent, before, unread) = shipped_then_frozen(&loki, &setup, &file).await;
    let copy = copytruncate(&file);
    let after = lines("after", 1300, 1350);
    append(&file, &after);
    agent.resume();

    let all: Vec<String> = [before, unread, after].concat();
    assert_each_once(&loki, &all, &mut agent).await;
    let log = agent.log();
    assert!(
        log.contains(&format!("tailing {} from byte", copy.display())),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_right_after_a_copytruncate_loses_nothing_the_copy_holds() {
    let loki = LokiReceiver::start().await;
    let (setup, file) = narrow(&loki);
    let (mut agent, before, unread) = shipped_then_frozen(&loki, &setup, &file).await;
    // The issue's case: killed before it saw the copytruncate.
    let copy = copytruncate(&file);
    let after = lines("after", 1300, 1350);
    append(&file, &after);
    agent.kill9();

    let mut agent = setup.start();
    let all: Vec<String> = [before, unread, after].concat();
    agent
        .assert_shipped_once(&loki, SELECTOR, &all, DEADLINE)
        .await;
    assert!(
        agent
            .own_log()
            .contains(&format!("tailing {} from byte", copy.display())),
        "{}",
        agent.log()
    );
    // Killed again at once, before it can have forgotten anything: the copy,
    // read to its end, is not read again.
    agent.kill9();
    let more = lines("more", 1350, 1400);
    append(&file, &more);
    let mut agent = setup.start();
    let all: Vec<String> = [all, more].concat();
    assert_each_once(&loki, &all, &mut agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_out_of_the_glob_before_a_kill_9_is_read_to_its_end_after_it() {
    let loki = LokiReceiver::start().await;
    let (setup, file) = narrow(&loki);
    let (mut agent, before, unread) = shipped_then_frozen(&loki, &setup, &file).await;
    // Rename and create while the agent cannot look, then killed.
    let rotated = file.with_extension("log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let after = lines("after", 1300, 1350);
    append(&file, &after);
    agent.kill9();

    let mut agent = setup.start();
    let all: Vec<String> = [before, unread, after].concat();
    assert_each_once(&loki, &all, &mut agent).await;
    assert!(
        agent
            .log()
            .contains(&format!("tailing {} from byte", rotated.display())),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_or_a_compressed_file_beside_a_truncated_one_is_not_read_as_its_copy() {
    let loki = LokiReceiver::start().await;
    let (setup, file) = narrow(&loki);
    let (mut agent, before, unread) = shipped_then_frozen(&loki, &setup, &file).await;
    // The copy exists only out of reach: in another folder behind a link, and
    // under a compressed name (uncompressed here, so only the name tells).
    let elsewhere = setup.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(&file, elsewhere.join("app.log.1")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("app.log.1"), file.with_extension("log.1")).unwrap();
    std::fs::copy(&file, file.with_extension("log.2.gz")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let after = lines("after", 1300, 1350);
    append(&file, &after);
    agent.resume();

    let shipped: Vec<String> = [before.clone(), after.clone()].concat();
    agent
        .assert_shipped_once(&loki, SELECTOR, &shipped, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0));
    // The unread lines were only in files the agent may not take for a copy.
    let all: Vec<String> = [before, unread, after].concat();
    if let Err(e) = loki.at_most_once(SELECTOR, &all) {
        panic!("{e}");
    }
    assert_eq!(loki.stored_count(), shipped.len(), "{}", agent.log());
}

/// `paths = ["…/app.log*"]`: the copy a `copytruncate` makes is the globs' too.
/// It is taken with the truncation, its start in the same batch as the
/// original's new one: a `kill -9` right after the truncation is seen (before
/// any scan) does not read the copy again from its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_globs_match_is_taken_with_the_truncation_and_a_kill_9_reads_it_not_again() {
    let loki = LokiReceiver::start().await;
    let (setup, file) = tailing(&loki, "app.log*");
    let (agent, before) = shipped(&loki, &setup, &file).await;
    let copy = copytruncate(&file);
    // Taken with the truncation, or, when a scan meets the copy first, as a
    // copy of what the original was read up to: either way before the kill.
    let taken = format!("in its copy {}: reading them there", copy.display());
    let met_first = format!(
        "tailing {} from byte {} (where its original was read up to: a copy)",
        copy.display(),
        std::fs::metadata(&copy).unwrap().len()
    );
    assert!(
        support::wait_until(DEADLINE, || {
            let log = agent.log();
            log.contains(&taken) || log.contains(&met_first)
        })
        .await,
        "{}",
        agent.log()
    );
    killed_then_each_once(&loki, &setup, &file, agent, before).await;
}

/// The same copy met by a scan before the truncation is seen (copytruncate's
/// copy lands, then the original is cut): it is tailed from where its
/// original was read up to, and a `kill -9` right after the truncation reads
/// it not again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_a_scan_meets_before_the_truncation_and_a_kill_9_reads_it_not_again() {
    let loki = LokiReceiver::start().await;
    let (setup, file) = tailing(&loki, "app.log*");
    let (agent, before) = shipped(&loki, &setup, &file).await;
    let copy = file.with_extension("log.2");
    std::fs::copy(&file, &copy).unwrap();
    let met = format!(
        "tailing {} from byte {} (where its original was read up to: a copy)",
        copy.display(),
        std::fs::metadata(&copy).unwrap().len()
    );
    assert!(
        support::wait_until(DEADLINE, || agent.log().contains(&met)).await,
        "{}",
        agent.log()
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(
        support::wait_until(DEADLINE, || agent.log().contains("was truncated")).await,
        "{}",
        agent.log()
    );
    killed_then_each_once(&loki, &setup, &file, agent, before).await;
}
