//! SIGHUP reloads the configuration of the running agent, driven as a user
//! does (edit the file, `kill -HUP`): a new configuration takes effect with
//! no line lost or doubled (lines written before, during and after it arrive
//! once); an entry removed is no longer tailed; an entry added honours its
//! `start_at`; an invalid file is logged and the configuration in effect
//! keeps shipping; `/status` and `wisp-agent status` show the new hash and
//! load time; two SIGHUPs in a row and a SIGTERM during a reload lose
//! nothing; the OTLP receivers listen again and each span is relayed once; a
//! configuration whose receiver port is taken gives way to the one before;
//! a dry run survives SIGHUP and leaves no throwaway directory.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::agent::{listening, Agent, Relay, Setup};
use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::{append, wait_until, DEADLINE};

/// What the agent logs once the pipelines run on a reloaded configuration.
const IN_EFFECT: &str = "is in effect";

/// A thread appending numbered lines to `path` until stopped (at most
/// `MAX` lines): what a program logging through a reload does.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Writer {
    const MAX: usize = 20_000;

    fn start(path: std::path::PathBuf, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                while !stop.load(Ordering::Relaxed) && lines.len() < Self::MAX {
                    let line = format!("{prefix} line {:05}", lines.len());
                    append(&path, std::slice::from_ref(&line));
                    lines.push(line);
                    written.store(lines.len(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
                lines
            })
        };
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits until `n` more lines are written than now.
    async fn wait_more(&self, n: usize) {
        let from = self.written();
        assert!(
            wait_until(DEADLINE, || self.written() >= from + n).await,
            "the writer stalled"
        );
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Appends the last of `so_far` to `app` and waits until Loki holds each of
/// `so_far` (every line written to it) exactly once, under `{job="app"}`.
async fn append_and_see_once(
    agent: &Agent,
    loki: &LokiReceiver,
    app: &std::path::Path,
    so_far: &[&str],
) {
    let lines: Vec<String> = so_far.iter().map(|l| l.to_string()).collect();
    append(app, &lines[lines.len() - 1..]);
    agent
        .assert_shipped_once(loki, r#"{job="app"}"#, &lines, DEADLINE)
        .await;
}

/// A `[[files]]` entry named `name` over `dir/*.log`.
fn entry(name: &str, dir: &std::path::Path, start_at: &str) -> String {
    format!(
        "\n[[files]]\nname = \"{name}\"\npaths = [\"{}/*.log\"]\nstart_at = \"{start_at}\"\npoll_interval = \"100ms\"\n",
        dir.display()
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_before_during_and_after_a_reload_arrive_once() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let second = setup.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let mut agent = setup.start();
    let app = setup.log_path("app.log");

    let writer = Writer::start(app.clone(), "app");
    writer.wait_more(100).await;
    // A label for the entry that runs, and a second entry.
    setup.edit(|text| {
        format!(
            "{text}labels = {{ env = \"b\" }}\n{}",
            entry("second", &second, "beginning")
        )
    });
    agent.hup();
    assert!(agent.wait_logged(IN_EFFECT, 1).await, "{}", agent.log());
    writer.wait_more(100).await;
    append(&second.join("s.log"), &["second entry line".to_string()]);
    let lines = writer.finish();

    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines, DEADLINE * 3)
        .await;
    agent
        .assert_shipped_once(
            &loki,
            r#"{job="second"}"#,
            &["second entry line".to_string()],
            DEADLINE,
        )
        .await;
    let last = lines.last().unwrap();
    let labelled = loki.lines(r#"{job="app", env="b"}"#);
    assert!(
        labelled.contains(last),
        "lines read after the reload carry the new label"
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    loki.exactly_once(r#"{job="app"}"#, &lines).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_entry_stops_being_tailed_and_an_added_one_honours_start_at() {
    let loki = LokiReceiver::start().await;
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let old_entry = entry("old", old.path(), "beginning");
    let setup = Setup::new(&loki, &old_entry);
    let mut agent = setup.start();
    append(&old.path().join("o.log"), &["old before".to_string()]);
    agent
        .assert_shipped_once(
            &loki,
            r#"{job="old"}"#,
            &["old before".to_string()],
            DEADLINE,
        )
        .await;
    // Lines the new entry finds at its start: `start_at = "end"` skips them.
    let n = new.path().join("n.log");
    append(&n, &["history".to_string()]);

    setup.edit(|text| text.replace(&old_entry, &entry("new", new.path(), "end")));
    agent.hup();
    assert!(agent.wait_logged(IN_EFFECT, 1).await, "{}", agent.log());
    let tailing = format!("tailing {} from byte", n.display());
    assert!(agent.wait_logged(&tailing, 1).await, "{}", agent.log());
    assert!(
        agent.own_log().contains("(the end: start_at = end)"),
        "{}",
        agent.log()
    );

    append(&old.path().join("o.log"), &["old after".to_string()]);
    append(&n, &["fresh".to_string()]);
    append(&setup.log_path("app.log"), &["barrier".to_string()]);
    agent
        .assert_shipped_once(&loki, r#"{job="new"}"#, &["fresh".to_string()], DEADLINE)
        .await;
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &["barrier".to_string()], DEADLINE)
        .await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert_eq!(
        loki.lines(r#"{job="old"}"#),
        ["old before"],
        "the removed entry's file is no longer tailed"
    );
    assert_eq!(loki.lines(r#"{job="new"}"#), ["fresh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_logged_and_the_one_in_effect_keeps_shipping() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let app = setup.log_path("app.log");
    append_and_see_once(&agent, &loki, &app, &["before"]).await;

    let good = std::fs::read_to_string(&setup.config).unwrap();
    setup.edit(|text| text.replace("batch_max_wait = \"100ms\"", "batch_max_wait = \"soon\""));
    agent.hup();
    let line = good
        .lines()
        .position(|l| l.starts_with("batch_max_wait"))
        .unwrap()
        + 1;
    let expected = format!(
        "SIGHUP: invalid configuration: {} line {line}: key `loki.batch_max_wait`",
        setup.config.display()
    );
    assert!(agent.wait_logged(&expected, 1).await, "{}", agent.log());
    assert!(agent.own_log().contains("is kept"), "{}", agent.log());
    assert!(agent.own_log().contains("ERROR"), "{}", agent.log());

    append_and_see_once(&agent, &loki, &app, &["before", "after"]).await;
    assert!(!agent.own_log().contains(IN_EFFECT), "{}", agent.log());
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_hash_and_load_time_of_the_configuration_in_effect() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    let mut agent = setup.start();
    let addr = agent.admin_addr().await;
    let status = || async move {
        let body = reqwest::get(format!("http://{addr}/status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let first = status().await;
    let hash = sha256_hex(&std::fs::read(&setup.config).unwrap());
    assert_eq!(first["config"]["sha256"], hash.as_str(), "{first}");
    let loaded_at = first["config"]["loaded_at"].as_f64().unwrap();
    assert!(loaded_at > 0.0, "{first}");

    // The same file: nothing to reload.
    agent.hup();
    assert!(
        agent.wait_logged("is unchanged", 1).await,
        "{}",
        agent.log()
    );

    setup.edit(|text| format!("{text}labels = {{ env = \"b\" }}\n"));
    let new_hash = sha256_hex(&std::fs::read(&setup.config).unwrap());
    agent.hup();
    assert!(agent.wait_logged(IN_EFFECT, 1).await, "{}", agent.log());
    // The endpoint stays where it was (`listen` unchanged, port 0 included).
    let (get, want) = (&status, new_hash.as_str());
    let shown = support::wait_until_async(DEADLINE, || async move {
        get().await["config"]["sha256"] == want
    })
    .await;
    let now = status().await;
    assert!(shown, "{now}");
    assert!(
        now["config"]["loaded_at"].as_f64().unwrap() > loaded_at,
        "{now}"
    );
    assert_eq!(now["config"]["last_reload_ok"], true, "{now}");
    assert_eq!(now["config"]["reloads"]["ok"], 1, "{now}");
    assert_eq!(now["config"]["reloads"]["unchanged"], 1, "{now}");
    assert_eq!(
        support::agent::metric(addr, r#"wisp_config_reloads_total{result="ok"}"#).await,
        Some(1.0)
    );

    // A refused reload says so, and the hash stays.
    setup.edit(|text| format!("{text}no_such_key = 1\n"));
    agent.hup();
    assert!(agent.wait_logged("is kept", 1).await, "{}", agent.log());
    let after = status().await;
    assert_eq!(after["config"]["sha256"], new_hash.as_str(), "{after}");
    assert_eq!(after["config"]["last_reload_ok"], false, "{after}");

    // `wisp-agent status` prints it (asked on the port the agent chose).
    let asked = setup.dir.path().join("ask.toml");
    std::fs::write(&asked, format!("[admin]\nlisten = \"{addr}\"\n")).unwrap();
    let out = support::agent_command()
        .args(["status", "--config"])
        .arg(&asked)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("config:  sha256 {}", &new_hash[..12])),
        "{text}"
    );
    assert!(text.contains("the last reload was refused"), "{text}");
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sighups_in_a_row_then_a_sigterm_during_a_reload_lose_nothing() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let mut agent = setup.start();
    let app = setup.log_path("app.log");
    let writer = Writer::start(app.clone(), "app");
    writer.wait_more(50).await;

    setup.edit(|text| format!("{text}labels = {{ env = \"b\" }}\n"));
    agent.hup();
    agent.hup();
    assert!(agent.wait_logged(IN_EFFECT, 1).await, "{}", agent.log());
    assert!(agent.running(), "{}", agent.log());
    writer.wait_more(50).await;

    setup.edit(|text| text.replace("env = \"b\"", "env = \"c\""));
    agent.hup();
    assert!(
        agent.wait_logged("SIGHUP: reloading", 2).await,
        "{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    let lines = writer.finish();

    // What was not read before the SIGTERM is read by the next start.
    let mut agent = setup.start();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines, DEADLINE * 3)
        .await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    loki.exactly_once(r#"{job="app"}"#, &lines).unwrap();
}

/// One span named `name`, as OTLP/HTTP JSON.
fn span_json(name: &str) -> String {
    serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0123456789abcdef0123456789abcdef",
        "spanId": "0123456789abcdef",
        "name": name,
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
    }]}]}]})
    .to_string()
}

async fn send_span(http: std::net::SocketAddr, name: &str) {
    let answer = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(span_json(name))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_relay_listens_again_after_a_reload_and_relays_each_span_once() {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (mut agent, _, http) = relay.start().await;
    send_span(http, "before").await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "{}",
        agent.log()
    );

    let text = std::fs::read_to_string(&relay.config).unwrap();
    std::fs::write(
        &relay.config,
        text.replace(
            "\"x-relay-test\" = \"yes\"",
            "\"x-relay-test\" = \"reloaded\"",
        ),
    )
    .unwrap();
    let before = agent.own_log().len();
    agent.hup();
    assert!(agent.wait_logged(IN_EFFECT, 1).await, "{}", agent.log());
    // The receivers are bound again (on new ports: `127.0.0.1:0`).
    let mut http = None;
    let bound = wait_until(DEADLINE, || {
        let log = agent.own_log();
        http = listening(&log[before..], "otlp receiver (http) listening on ");
        http.is_some()
    })
    .await;
    assert!(bound, "{}", agent.log());
    send_span(http.unwrap(), "after").await;
    assert!(
        collector.wait_for_spans(2, DEADLINE).await,
        "{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    let names: Vec<String> = collector.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_whose_pipelines_cannot_start_gives_way_to_the_one_before() {
    let loki = LokiReceiver::start().await;
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", Some(&loki));
    let (mut agent, _, _) = relay.start().await;
    let app = relay.dir.path().join("logs").join("app.log");
    append_and_see_once(&agent, &loki, &app, &["before"]).await;

    // Valid, but its receiver's port is taken: found only when it binds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&relay.config).unwrap();
    let text = text.replace(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&relay.config, text).unwrap();
    let before = agent.own_log().len();
    agent.hup();
    assert!(
        agent
            .wait_logged("SIGHUP: cannot start the pipelines on", 1)
            .await,
        "{}",
        agent.log()
    );
    let mut http = None;
    let bound = wait_until(DEADLINE, || {
        let log = agent.own_log();
        http = listening(&log[before..], "otlp receiver (http) listening on ");
        http.is_some()
    })
    .await;
    assert!(bound, "{}", agent.log());
    assert_ne!(http.unwrap().port(), port);

    append_and_see_once(&agent, &loki, &app, &["before", "after"]).await;
    send_span(http.unwrap(), "relayed").await;
    assert!(
        collector.wait_for_spans(1, DEADLINE).await,
        "{}",
        agent.log()
    );
    assert!(agent.running(), "{}", agent.log());
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_survives_sighup_and_leaves_no_throwaway_directory() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let tmp = tempfile::tempdir().unwrap();
    let stderr = setup.stderr_path();
    let child = support::agent_command()
        .args(["run", "--dry-run", "--config"])
        .arg(&setup.config)
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut agent = Agent::adopt(child, &stderr);
    let throwaway = tmp.path().join(format!("wisp-agent-dry-run-{pid}"));
    assert!(
        agent.wait_logged("dry run: printing records", 1).await,
        "{}",
        agent.log()
    );
    assert!(throwaway.is_dir());

    agent.hup();
    assert!(
        agent.wait_logged("a dry run does not reload", 1).await,
        "{}",
        agent.log()
    );
    assert!(
        agent.running(),
        "SIGHUP ended the dry run:\n{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert!(!throwaway.exists(), "{} left behind", throwaway.display());
}
