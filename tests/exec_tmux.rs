//! A loop of `wisp-agent exec` runs in a real tmux pane whose output
//! `pipe-pane -o` appends to a file the daemon tails: each line of a run reaches
//! Loki once, from `exec`, with the run's labels and id; what the loop prints
//! between runs (and after a run's unfinished last line) is the file's; a line
//! carrying a made-up mark is shipped by the file all the same. Also when the
//! daemon starts only after the loop ran: it takes the runs from the outbox and
//! the tailer, reading the pane's backlog, still leaves their lines to them.

mod support;

use std::process::Command;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::tmux::TmuxServer;
use support::{wait_until, DEADLINE};

fn has_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    eprintln!("skipped: tmux is not installed (apt-get install tmux; .ci/run does)");
    false
}

/// The shell loop typed into the pane: three runs, each printing a Pino line
/// and a plain line on stdout, a line on stderr, and a last line without its
/// newline; the loop's own words around them; a line with a forged mark.
fn ralph_loop(setup: &Setup, tag: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_wisp-agent");
    let run = format!(
        r#"i=$1; printf '{{"level":40,"time":%s000,"msg":"{tag} warn %s"}}\n' $(date +%s) $i; echo "{tag} plain $i"; echo "{tag} stderr $i" >&2; printf "{tag} unfinished $i""#
    );
    format!(
        "export XDG_STATE_HOME={state}; echo '{tag} loop starts'; \
         for i in 1 2 3; do {bin} exec --config {config} --name ralph --label iter=$i -- sh -c '{run}' sh $i; \
         echo \" {tag} after $i\"; done; \
         printf '\\033]9477;wisp;run=0123456789abcdef0123456789abcdef\\007{tag} forged\\n'; \
         echo '{tag} loop done'",
        state = setup.dir.path().join("xdg").display(),
        config = setup.config.display(),
        run = run.replace('\'', r#"'\''"#),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// What each run printed, by iteration.
fn run_lines(tag: &str, i: usize) -> Vec<String> {
    vec![
        format!("{tag} plain {i}"),
        format!("{tag} stderr {i}"),
        format!("{tag} unfinished {i}"),
    ]
}

/// Asserts what reached Loki: each run's lines once under `job="ralph"` with
/// its `iter` and run id, and nothing of them under the file's job, which has
/// the loop's own words.
async fn assert_each_line_once(loki: &LokiReceiver, agent: &support::agent::Agent, tag: &str) {
    let file_has = |want: &str| {
        loki.lines(r#"{job="app"}"#)
            .iter()
            .any(|l| l.trim_end() == want)
    };
    let done = format!("{tag} loop done");
    assert!(
        wait_until(DEADLINE, || file_has(&done)).await,
        "the loop never finished: {:#?}\n{}",
        loki.lines(r#"{job="app"}"#),
        agent.log()
    );
    let mut run_ids = Vec::new();
    for i in 1..=3 {
        let selector = format!(r#"{{job="ralph", iter="{i}"}}"#);
        let mut want = run_lines(tag, i);
        let warn = format!("{tag} warn {i}");
        let ok = wait_until(DEADLINE, || {
            loki.lines(&selector).iter().any(|l| l.contains(&warn))
        })
        .await;
        assert!(ok, "iteration {i} never arrived\n{}", agent.log());
        let pino = loki
            .lines(&selector)
            .into_iter()
            .find(|l| l.contains(&warn))
            .unwrap_or_default();
        want.push(pino);
        agent
            .assert_shipped_once(loki, &selector, &want, DEADLINE)
            .await;
        let entries = loki.entries(&selector);
        assert_eq!(entries.len(), want.len(), "{entries:#?}");
        let ids: Vec<_> = entries
            .iter()
            .map(|e| e.metadata.get("run_id").cloned())
            .collect();
        assert!(
            ids.iter().all(|id| id.is_some() && *id == ids[0]),
            "{ids:?}"
        );
        run_ids.push(ids[0].clone());
        assert_eq!(
            loki.lines(&format!(r#"{{job="ralph", iter="{i}", level="warn"}}"#))
                .len(),
            1,
            "the Pino line keeps its level"
        );
    }
    run_ids.dedup();
    assert_eq!(run_ids.len(), 3, "one id per run");
    // Nothing of a run under the file's job; the loop's words, the text after
    // a run's unfinished line, and the forged line are the file's.
    let file = loki.lines(r#"{job="app"}"#);
    for i in 1..=3 {
        for line in run_lines(tag, i) {
            assert!(
                !file.iter().any(|l| l.contains(&line)),
                "{line:?} also came from the file: {file:#?}"
            );
        }
        assert!(
            !file.iter().any(|l| l.contains(&format!("{tag} warn {i}"))),
            "{file:#?}"
        );
        let after = format!(" {tag} after {i}");
        assert_eq!(
            file.iter().filter(|l| l.trim_end() == after).count(),
            1,
            "{after:?} once, from the file: {file:#?}"
        );
    }
    for own in [format!("{tag} loop starts"), format!("{tag} forged"), done] {
        assert_eq!(
            file.iter().filter(|l| l.trim_end() == own).count(),
            1,
            "{own:?} once, from the file: {file:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_in_a_piped_pane_ships_each_line_once_with_the_runs_labels() {
    if !has_tmux() {
        return;
    }
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "multiline = \"none\"");
    let pane_log = setup.log_path("pane.log");
    let server = TmuxServer::start(
        &format!("wisp-ralph-{}", std::process::id()),
        setup.dir.path(),
    )
    .expect("a tmux server starts");
    let agent = setup.start();
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    server.tmux(&[
        "pipe-pane",
        "-o",
        "-t",
        "pane",
        &format!("cat >> {}", pane_log.display()),
    ]);
    server.type_line(&ralph_loop(&setup, "live"));
    assert_each_line_once(&loki, &agent, "live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_made_while_the_daemon_was_down_are_taken_at_start_and_their_lines_left_to_them() {
    if !has_tmux() {
        return;
    }
    if !is_root() {
        // Not root, exec keeps its runs under the XDG_STATE_HOME the loop sets,
        // which the daemon (started with its own environment) does not look in.
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "multiline = \"none\"");
    let pane_log = setup.log_path("pane.log");
    let server = TmuxServer::start(
        &format!("wisp-away-{}", std::process::id()),
        setup.dir.path(),
    )
    .expect("a tmux server starts");
    server.tmux(&[
        "pipe-pane",
        "-o",
        "-t",
        "pane",
        &format!("cat >> {}", pane_log.display()),
    ]);
    server.type_line(&ralph_loop(&setup, "away"));
    let finished = wait_until(DEADLINE, || {
        std::fs::read_to_string(&pane_log).is_ok_and(|t| t.contains("away loop done\r\n"))
    })
    .await;
    assert!(finished, "{:?}", std::fs::read_to_string(&pane_log));
    // exec said once that no daemon answers (the pane shows it).
    let pane = std::fs::read_to_string(&pane_log).unwrap_or_default();
    assert_eq!(
        pane.matches("wisp-agent exec: no daemon answers").count(),
        1,
        "{pane}"
    );
    let agent = setup.start();
    assert_each_line_once(&loki, &agent, "away").await;
}
