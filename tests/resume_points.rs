//! Where a tailed file resumes, with the real binary: the buffer's commits hold
//! each file's resume point; `positions.json` is a copy written after them. A
//! buffer that holds no file's point (deleted, or left by an agent that wrote
//! none) is handed what `positions.json` says at start, in one batch, so the
//! lines it once held are not read again, then or after a later `kill -9`.

mod support;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::{append, DEADLINE};

const SELECTOR: &str = r#"{job="app"}"#;

fn lines(tag: &str, from: usize, to: usize) -> Vec<String> {
    support::pino_lines(30, &format!("{tag} line"), from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_buffer_takes_the_resume_points_positions_json_holds() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let file = setup.log_path("app.log");
    let first = lines("first", 0, 20);
    append(&file, &first);
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, SELECTOR, &first, DEADLINE)
        .await;
    assert!(setup.wait_checkpointed(&file).await, "{}", agent.log());
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());

    // The buffer is gone; positions.json is all that says where the file ends.
    let state = setup.dir.path().join("state");
    std::fs::remove_dir_all(state.join("spool").join("loki")).unwrap();
    let mut agent = setup.start();
    let second = lines("second", 20, 30);
    append(&file, &second);
    let mut want = first.clone();
    want.extend(second);
    agent
        .assert_shipped_once(&loki, SELECTOR, &want, DEADLINE)
        .await;
    assert!(
        agent
            .log()
            .contains("the buffer holds no file's resume point"),
        "{}",
        agent.log()
    );

    // From then on the buffer holds the point: without positions.json, a
    // `kill -9` reads nothing again.
    agent.kill9();
    std::fs::remove_file(state.join("positions.json")).unwrap();
    let mut agent = setup.start();
    let third = lines("third", 30, 35);
    append(&file, &third);
    want.extend(third);
    agent
        .assert_shipped_once(&loki, SELECTOR, &want, DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    if let Err(e) = loki.exactly_once(SELECTOR, &want) {
        panic!("{e}\nagent log:\n{}", agent.log());
    }
}
