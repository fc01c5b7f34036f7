//! The case the agent exists for: a tmux pane piped into a file with
//! `pipe-pane -o`, Pino JSON printed in the pane, the tailer following the file.
//! Every line printed arrives once.

mod support;
mod tail_common;

use std::process::Command;

use support::tmux::TmuxServer;
use tail_common::*;

fn pino(i: usize) -> String {
    format!(
        r#"{{"level":30,"time":1795388381726,"pid":4242,"hostname":"vm1","reqId":"req-{i}","msg":"request completed {i}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pino_lines_printed_in_a_tmux_pane_piped_to_a_file_arrive_once_each() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let (dir, logs, state) = temp();
    let log = logs.join("refly/api.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let socket = format!("wisp-tail-test-{}", std::process::id());
    let server = TmuxServer::start(&socket, dir.path()).expect("a tmux server starts");

    let tail = start(vec![entry("refly-api", &logs.join("refly/*.log"))], &state);
    let pipe = format!("cat >> {}", log.display());
    server.tmux(&["pipe-pane", "-o", "-t", "pane", &pipe]);

    // A script prints the lines, so the command line echoed by the pane is short
    // and holds none of them.
    let n = 200;
    let script = dir.path().join("emit.sh");
    let body: String = (0..n)
        .map(|i| format!("printf '%s\\n' '{}'\n", pino(i)))
        .collect();
    std::fs::write(&script, body).unwrap();
    server.type_line(&format!("sh {}", script.display()));

    let want: Vec<String> = (0..n).map(pino).collect();
    let arrived = eventually("every pane line", || {
        let got = tail.texts();
        want.iter()
            .all(|w| got.iter().any(|g| g.contains(w.as_str())))
    })
    .await;
    let got = tail.texts();
    assert!(
        arrived,
        "not every line arrived; got {} lines: {got:?}",
        got.len()
    );
    for w in &want {
        let times = got.iter().filter(|g| g.contains(w.as_str())).count();
        assert_eq!(times, 1, "{w} arrived {times} times");
    }
    let r = tail.received();
    assert!(r
        .iter()
        .all(|l| l.job == "refly-api" && l.filename.ends_with("refly/api.log")));
    drop(server);
    tail.stop().await;
}
