//! A shared VM: one user's output cannot take another's share of the daemon.
//! The buffer is shared by owners (a file entry and the file's owner, each
//! user's `exec` output, each OTLP sender), and when it is full the largest
//! loses first; `exec` runs' bookkeeping costs a line, not a rewrite; the
//! `job`/label guards are per user. The hostile user is `wisp-test-intruder`
//! (`setpriv`, root only: skipped with a message otherwise).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::agent::{metric, Relay, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::users::{self, INTRUDER};
use support::{append, wait_until, wait_until_async, DEADLINE};

/// `wisp-agent exec` as `who`, its outbox under `home`.
fn exec_as(who: (u32, u32), bin: &Path, config: &Path, home: &Path, args: &[&str]) -> Child {
    users::command_as(who, bin)
        .env("XDG_STATE_HOME", home)
        .env("HOME", home)
        .arg("exec")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` (at most `limit`); its exit code.
async fn exit_of(child: &mut Child, limit: Duration) -> Option<i32> {
    let mut code = None;
    wait_until(limit, || {
        code = child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1));
        code.is_some()
    })
    .await;
    let _ = child.kill();
    code
}

fn victim_lines(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("victim line {i:04} written by another user"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_flood_with_loki_away_leaves_every_line_of_another_user_delivered() {
    let Some(intruder) = users::intruder() else {
        return;
    };
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "\n[buffer]\nmax_bytes = \"4MiB\"\n");
    setup.set_admin_listen("127.0.0.1:0");
    users::open_up(setup.dir.path(), &[&setup.config]);
    let bin = users::shared_binary(setup.dir.path());
    let home = users::home_of(setup.dir.path(), intruder);
    loki.stop().await;
    let mut agent = setup.start();
    let admin = agent.admin_addr().await;
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );

    // Another user's lines (root's file), before and during the flood.
    let log = setup.log_path("app.log");
    let mut expected = victim_lines(0, 100);
    append(&log, &expected);
    // 16 connections, each run printing 2 MiB in lines of 4000 bytes: 32 MiB
    // against a 4 MiB buffer.
    let flood = r#"x=$(head -c 4000 /dev/zero | tr '\0' x); yes "$x" | head -n 524"#;
    let mut runs: Vec<Child> = (0..16)
        .map(|_| {
            exec_as(
                intruder,
                &bin,
                &setup.config,
                &home,
                &["--", "sh", "-c", flood],
            )
        })
        .collect();
    for chunk in 1..=10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let more = victim_lines(chunk * 10 + 90, 10);
        append(&log, &more);
        expected.extend(more);
    }
    for run in &mut runs {
        let code = exit_of(run, Duration::from_secs(120)).await;
        assert_eq!(code, Some(0), "{}", agent.log());
    }
    let owner = format!("exec:{}", intruder.0);
    let dropped = |who: String| {
        format!("wisp_spool_owner_records_dropped_total{{spool=\"loki\",owner=\"{who}\"}}")
    };
    let intruder_dropped = dropped(owner.clone());
    assert!(
        wait_until_async(Duration::from_secs(60), || async {
            metric(admin, &intruder_dropped).await.unwrap_or(0.0) > 0.0
        })
        .await,
        "the flood's drops are counted as the intruder's\n{}",
        agent.log()
    );
    // Every victim line is in the buffer before Loki comes back.
    assert!(setup.wait_checkpointed(&log).await, "{}", agent.log());
    let victim_dropped = metric(admin, &dropped("file[0]:0".into())).await;
    assert_eq!(victim_dropped.unwrap_or(0.0), 0.0);
    let lost = metric(admin, &intruder_dropped).await.unwrap_or(0.0);
    let peak = support::proc::peak_rss(agent.pid().unwrap());

    loki.restart().await;
    let back = Instant::now();
    let fresh = victim_lines(500, 1);
    append(&log, &fresh);
    expected.extend(fresh);
    let all_in = wait_until(Duration::from_secs(2), || {
        loki.lines(r#"{job="app"}"#).len() >= expected.len()
    })
    .await;
    let took = back.elapsed();
    assert!(
        all_in,
        "another user's lines arrive within 2 s of Loki's return ({} of {} after {took:?})\n{}",
        loki.lines(r#"{job="app"}"#).len(),
        expected.len(),
        agent.log()
    );
    loki.wait_for_exactly_once(r#"{job="app"}"#, &expected, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let peak = peak.max(support::proc::peak_rss(agent.pid().unwrap()));
    println!(
        "intruder records dropped: {lost}; victim's {} lines all delivered {took:?} after Loki's return; peak RSS {} KiB",
        expected.len(),
        peak / 1024
    );
    assert!(peak < 48 << 20, "peak RSS {} KiB", peak / 1024);
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_hundred_tiny_runs_write_little_and_each_gets_one_span() {
    const RUNS: usize = 900;
    let collector = OtlpReceiver::start().await;
    let loki = LokiReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let (agent, _, _) = relay.start().await;
    let socket = relay.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    let pid = agent.pid().unwrap();
    let before = support::proc::write_bytes(pid).unwrap();
    let script = format!(
        "for i in $(seq {RUNS}); do \"$0\" exec --config \"$1\" --name tiny -- true || exit 1; done"
    );
    let started = Instant::now();
    let mut cmd = Command::new("sh");
    support::clear_agent_env(&mut cmd);
    let status = cmd
        .args(["-c", &script, env!("CARGO_BIN_EXE_wisp-agent")])
        .arg(&relay.config)
        .env("XDG_STATE_HOME", relay.dir.path().join("xdg"))
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let ran = started.elapsed();
    assert!(
        collector
            .wait_for_spans(RUNS, Duration::from_secs(60))
            .await,
        "{} spans\n{}",
        collector.spans().len(),
        agent.log()
    );
    let written = support::proc::write_bytes(pid).unwrap() - before;
    // Nothing more comes: each run has exactly one span.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = collector.spans();
    let mut ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((spans.len(), ids.len()), (RUNS, RUNS));
    println!(
        "{RUNS} runs in {ran:?}: the daemon wrote {} KiB ({} bytes a run)",
        written / 1024,
        written / RUNS as u64
    );
    // A handful of fsynced pages a run (span, journal line, ack), not a
    // rewrite of the whole list: 576 MiB before.
    assert!(
        written < 24 << 20,
        "the daemon wrote {} KiB for {RUNS} runs",
        written / 1024
    );
}

/// An OTLP/HTTP JSON logs request of one record from `service`.
fn logs_json(service: &str, line: &str) -> String {
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeLogs":[{{"logRecords":[{{"severityNumber":9,"body":{{"stringValue":"{line}"}}}}]}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_service_names_from_one_user_do_not_push_another_users_job_into_other() {
    let Some(intruder) = users::intruder() else {
        return;
    };
    let collector = OtlpReceiver::start().await;
    let loki = LokiReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let (agent, _, http) = relay.start().await;
    // 55 junk service.names from the intruder, one connection each.
    let script = format!(
        r#"for i in $(seq 55); do curl -sf -X POST -H 'Content-Type: application/json' --data "{{\"resourceLogs\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"service.name\",\"value\":{{\"stringValue\":\"junk$i\"}}}}]}},\"scopeLogs\":[{{\"logRecords\":[{{\"body\":{{\"stringValue\":\"junk $i\"}}}}]}}]}}]}}" http://{http}/v1/logs >/dev/null || exit 1; done"#
    );
    let status = users::command_as(intruder, "sh")
        .args(["-c", &script])
        .current_dir("/")
        .status()
        .unwrap();
    assert!(status.success(), "{}", agent.log());
    assert!(
        loki.wait_for_entries("{job=\"other\"}", 5, DEADLINE).await,
        "the intruder's own bound holds"
    );
    // Another user's (root's) service keeps its name.
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("http://{http}/v1/logs"))
        .header("content-type", "application/json")
        .body(logs_json("billing", "an invoice was paid"))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    loki.wait_for_exactly_once(
        r#"{job="billing"}"#,
        &["an invoice was paid".to_string()],
        DEADLINE,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let junk_streams = loki
        .streams()
        .into_iter()
        .filter(|s| s.get("job").is_some_and(|j| j.starts_with("junk")))
        .count();
    assert_eq!(
        junk_streams, 50,
        "agent.max_label_values of the intruder's own"
    );
    assert!(
        agent.log().contains(&format!("uid {}", intruder.0)),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_exec_label_values_from_one_user_do_not_take_another_users_streams() {
    let Some(intruder) = users::intruder() else {
        return;
    };
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    users::open_up(setup.dir.path(), &[&setup.config]);
    let bin = users::shared_binary(setup.dir.path());
    let home = users::home_of(setup.dir.path(), intruder);
    let agent = setup.start();
    let admin = agent.admin_addr().await;
    let socket = setup.dir.path().join("exec.sock");
    assert!(
        wait_until(DEADLINE, || socket.exists()).await,
        "{}",
        agent.log()
    );
    for i in 0..55 {
        let iter = format!("iter={i}");
        let mut run = exec_as(
            intruder,
            &bin,
            &setup.config,
            &home,
            &["--name", "flood", "--label", &iter, "--", "echo", "flood"],
        );
        assert_eq!(exit_of(&mut run, DEADLINE).await, Some(0));
    }
    let out = support::agent_command()
        .args(["exec", "--config"])
        .arg(&setup.config)
        .args([
            "--name", "build", "--label", "iter=7", "--", "echo", "hello",
        ])
        .env("XDG_STATE_HOME", setup.dir.path().join("xdg"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let me = whoami();
    loki.wait_for_exactly_once(
        &format!(r#"{{job="build", iter="7", user="{me}"}}"#),
        &["hello".to_string()],
        DEADLINE,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(
        loki.wait_for_entries(
            &format!(r#"{{job="other", iter="other", user="{INTRUDER}"}}"#),
            5,
            DEADLINE
        )
        .await,
        "{}",
        agent.log()
    );
    let theirs = loki
        .streams()
        .into_iter()
        .filter(|s| s.get("user").map(String::as_str) == Some(INTRUDER))
        .count();
    assert_eq!(theirs, 51, "50 label sets and other");
    let relabelled = metric(admin, "wisp_exec_runs_relabelled_total").await;
    assert_eq!(relabelled, Some(5.0));
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
