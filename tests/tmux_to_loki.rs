//! The case the agent exists for, end to end: a real tmux pane piped into a file
//! with `pipe-pane -o`, a program printing Pino JSON in it and then the same
//! records through a formatter that prints multi-line records (as pino-pretty
//! does), and `wisp-agent run` shipping the file to the fake Loki. Every record
//! arrives once, with its level, without terminal sequences, a pretty record as
//! one entry.

mod support;

use std::process::Command;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::tmux::TmuxServer;
use support::DEADLINE;

/// The program in the pane: Pino JSON at each level, then the same records
/// pretty-printed with indented fields and colours (what pino-pretty prints).
const PROGRAM: &str = r#"
import json, sys, time
levels = [(10, "TRACE"), (20, "DEBUG"), (30, "INFO"), (40, "WARN"), (50, "ERROR"), (60, "FATAL")]
now = int(time.time() * 1000)
for i in range(60):
    num, _ = levels[i % 6]
    print(json.dumps({"level": num, "time": now + i, "pid": 42, "msg": "json record %02d" % i}, separators=(",", ":")))
for i in range(12):
    num, name = levels[i % 6]
    print("[12:00:00.%03d] \x1b[32m%s\x1b[39m (42): \x1b[36mpretty record %02d\x1b[39m" % (i, name, i))
    print("    \x1b[35mreqId\x1b[39m: \"req-%d\"" % i)
    print("    \x1b[35mstack\x1b[39m:")
    print("        at handler (/app/src/api.ts:%d:7)" % (10 + i))
sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tmux_pane_piped_to_a_file_reaches_loki_record_by_record_with_levels() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed (apt-get install tmux; .ci/run does)");
        return;
    }
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "multiline_timeout = \"300ms\"");
    let log = setup.log_path("refly-api.log");
    let socket = format!("wisp-e2e-{}", std::process::id());
    let server = TmuxServer::start(&socket, setup.dir.path()).expect("a tmux server starts");
    let agent = setup.start();
    server.tmux(&[
        "pipe-pane",
        "-o",
        "-t",
        "pane",
        &format!("cat >> {}", log.display()),
    ]);
    let program = setup.dir.path().join("app.py");
    std::fs::write(&program, PROGRAM).unwrap();
    server.type_line(&format!("python3 {}", program.display()));

    let levels = ["trace", "debug", "info", "warn", "error", "fatal"];
    let all_arrived = support::wait_until(DEADLINE, || {
        let lines = loki.lines(r#"{job="app"}"#);
        (0..60).all(|i| {
            lines
                .iter()
                .any(|l| l.contains(&format!("json record {i:02}")))
        }) && (0..12).all(|i| {
            lines
                .iter()
                .any(|l| l.contains(&format!("pretty record {i:02}")))
        })
    })
    .await;
    assert!(
        all_arrived,
        "not every record arrived: {:#?}\nagent log:\n{}",
        loki.all_entries()
            .iter()
            .map(|e| (&e.labels["level"], &e.line))
            .collect::<Vec<_>>(),
        agent.log()
    );
    let entries = loki.all_entries();
    // Whatever else the pane printed (the command typed, the prompt), nothing
    // arrives twice.
    let lines: Vec<String> = entries.iter().map(|e| e.line.clone()).collect();
    let mut distinct = lines.clone();
    distinct.sort();
    distinct.dedup();
    if let Err(e) = support::exactly_once(&lines, &distinct) {
        panic!("{e}\nagent log:\n{}", agent.log());
    }
    for i in 0..60 {
        let tag = format!("json record {i:02}");
        let found: Vec<_> = entries.iter().filter(|e| e.line.contains(&tag)).collect();
        assert_eq!(found.len(), 1, "{tag} arrived {} times", found.len());
        assert_eq!(
            found[0].labels["level"],
            levels[i % 6],
            "{tag}: {:?}",
            found[0]
        );
        assert!(found[0].line.starts_with('{'), "{:?}", found[0].line);
    }
    for i in 0..12 {
        let tag = format!("pretty record {i:02}");
        let found: Vec<_> = entries.iter().filter(|e| e.line.contains(&tag)).collect();
        assert_eq!(found.len(), 1, "{tag} arrived {} times", found.len());
        let e = found[0];
        assert_eq!(e.labels["level"], levels[i % 6], "{tag}: {:?}", e.line);
        // One entry: the header and its indented lines, joined with \n.
        assert_eq!(e.line.lines().count(), 4, "{:?}", e.line);
        assert!(e
            .line
            .contains(&format!("at handler (/app/src/api.ts:{}:7)", 10 + i)));
    }
    for e in &entries {
        assert!(
            !e.line.contains('\u{1b}'),
            "escape sequence shipped: {:?}",
            e.line
        );
        assert!(
            !e.line.contains('\r'),
            "carriage return shipped: {:?}",
            e.line
        );
    }
    drop(server);
}
