//! The command line as a user meets it: the built binary, real files, exit codes.

mod support;

use std::path::Path;
use std::process::{Command, Output};

/// The agent binary with a clean environment, discovery pinned to loopback.
fn agent() -> Command {
    let mut cmd = support::agent_command();
    cmd.env("WISP_HOST", "127.0.0.1");
    cmd
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let o = agent().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("wisp-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_command() {
    let o = agent().arg("--help").output().unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    for cmd in ["run", "probe", "exec", "config"] {
        assert!(text.contains(cmd), "help lacks {cmd}: {text}");
    }
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        "[agent]\nlabels = { env = \"x\" }\nbogus = 1\n",
    );
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("agent.bogus"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn a_config_that_is_no_regular_file_or_too_large_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    for (path, why) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "FIFO, not a regular file"),
        (big.as_path(), "larger than 1024 KiB"),
    ] {
        let started = std::time::Instant::now();
        let o = agent()
            .args(["config", "check", "--config"])
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", path.display());
        let err = stderr(&o);
        assert!(
            err.contains(why) && err.contains(&path.display().to_string()),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[test]
fn a_bad_duration_says_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        "[loki]\nbatch_max_wait = \"soon\"\n",
    );
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("loki.batch_max_wait"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn environment_variables_expand_in_string_values_and_secrets_stay_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "env.toml",
        "[loki]
url = \"${LOKI_PUSH}\"\nbatch_max_wait = \"${WAIT:-250ms}\"\n\
         [agent]\nhostname = \"$${NOT_EXPANDED}\"\n",
    );
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .env(
            "LOKI_PUSH",
            "https://user:hunter2@loki.example:3100/loki/api/v1/push",
        )
        .env_remove("WAIT")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(
        out.contains("# environment variables expanded in it: LOKI_PUSH, WAIT"),
        "{out}"
    );
    assert!(out.contains("loki.example:3100"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("batch_max_wait = \"250ms\""), "{out}");
    assert!(out.contains("hostname = \"${NOT_EXPANDED}\""), "{out}");
    // Unset, without a default: exit 2, the variable and the key named.
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .env_remove("LOKI_PUSH")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("LOKI_PUSH") && err.contains("loki.url") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_a_configuration_error_naming_it() {
    let o = agent()
        .args(["config", "check", "--config", "/nonexistent/wisp.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/wisp.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_check_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ok.toml",
        "[loki]\nurl = \"https://user:hunter2@loki.example:3100/loki/api/v1/push\"\n\
         [otlp]\nheaders = { authorization = \"Bearer s3cret\" }\n",
    );
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("# configuration is valid"), "{out}");
    assert!(out.contains("loki.example"), "{out}");
    assert!(!out.contains("hunter2"), "password leaked: {out}");
    assert!(!out.contains("s3cret"), "header leaked: {out}");
    // The printed configuration is itself a valid configuration.
    let printed = write(dir.path(), "printed.toml", &out);
    let again = agent()
        .args(["config", "check", "--config"])
        .arg(&printed)
        .output()
        .unwrap();
    assert!(again.status.success(), "stderr: {}", stderr(&again));
}

#[test]
fn environment_overrides_are_applied_and_reported() {
    let o = agent()
        .args(["config", "check", "--config", "/dev/null"])
        .env("LOKI_URL", "http://10.0.0.5:3100")
        .output()
        .unwrap();
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("http://10.0.0.5:3100/loki/api/v1/push"),
        "{out}"
    );
    assert!(out.contains("LOKI_URL"), "{out}");
}

#[test]
fn run_with_a_missing_token_file_is_a_configuration_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "token.toml",
        &format!(
            "[agent]\nstate_dir = \"{}\"\n[loki]\nbearer_token_file = \"/nonexistent/token\"\n\
             [otlp]\nenabled = false\n[receiver]\ngrpc = \"\"\nhttp = \"\"\n",
            dir.path().join("state").display()
        ),
    );
    let o = agent()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("loki.bearer_token_file"), "{err}");
    assert!(err.contains("/nonexistent/token"), "{err}");
}

#[test]
fn the_packaged_example_configurations_are_valid() {
    for example in ["quickstart.toml", "full.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/examples")
            .join(example);
        let o = agent()
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{example}: {}", stderr(&o));
        assert!(
            stdout(&o).starts_with("# configuration is valid"),
            "{example}"
        );
    }
}

/// Runs `run`, `config check` and `probe` on `cfg`; each must exit 2 with a
/// message naming every one of `named`.
fn assert_config_error_everywhere(cfg: &Path, named: &[&str]) {
    for args in [&["run"][..], &["config", "check"][..], &["probe"][..]] {
        let o = agent()
            .args(args)
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}: stdout: {}\nstderr: {err}",
            args.join(" "),
            stdout(&o)
        );
        for n in named {
            assert!(err.contains(n), "{}: {n} not named: {err}", args.join(" "));
        }
    }
}

/// A configuration that would otherwise run: loopback only, nothing listening.
fn runnable(dir: &Path, state_dir: &Path, extra: &str) -> std::path::PathBuf {
    write(
        dir,
        "agent.toml",
        &format!(
            "[agent]\nstate_dir = \"{}\"\n[receiver]\ngrpc = \"\"\nhttp = \"\"\n\
             [admin]\nlisten = \"\"\n{extra}",
            state_dir.display()
        ),
    )
}

#[test]
fn loki_and_otlp_both_disabled_is_a_configuration_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = runnable(
        dir.path(),
        &dir.path().join("state"),
        "[loki]\nenabled = false\n[otlp]\nenabled = false\n",
    );
    assert_config_error_everywhere(&cfg, &["loki.enabled", "otlp.enabled = true"]);
}

#[test]
fn a_state_dir_that_is_a_file_is_a_configuration_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "not-a-dir", "x");
    let cfg = runnable(dir.path(), &file, "");
    assert_config_error_everywhere(&cfg, &["agent.state_dir", "is not a directory"]);
    // Beneath a file, too.
    let cfg = runnable(dir.path(), &file.join("state"), "");
    assert_config_error_everywhere(&cfg, &["agent.state_dir", "is not a directory"]);
}

#[test]
fn a_state_dir_other_users_may_write_to_is_a_configuration_error_everywhere() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let chmod = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // The folder itself open to all: anyone could plant files in it.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let cfg = runnable(dir.path(), &open, "");
    assert_config_error_everywhere(
        &cfg,
        &["agent.state_dir", "writable by other users", "chmod 700"],
    );
    // Inside a folder open to all without the sticky bit: anyone could
    // rename it away and put their own in its place.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let cfg = runnable(dir.path(), &shared.join("state"), "");
    assert_config_error_everywhere(&cfg, &["agent.state_dir", "no sticky bit"]);
    // With the sticky bit (as /tmp has) it is fine.
    chmod(&shared, 0o1777);
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// As installed: the unit runs as `wisp-agent` and owns its state directory,
/// and the admin asks as root. `config check` and `probe` accept it; `run` as
/// root refuses a directory another user could change.
#[test]
fn a_state_dir_of_the_service_user_passes_config_check_as_root_and_run_refuses_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root to give a folder to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(500), Some(500)).unwrap();
    let cfg = runnable(dir.path(), &state, "");
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = agent()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("belongs to uid 500"), "{err}");
}

#[test]
fn a_state_dir_that_cannot_be_created_is_a_configuration_error_everywhere() {
    // /proc refuses new directories to root as well.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = runnable(cfg_dir.path(), Path::new("/proc/wisp-agent-state"), "");
    assert_config_error_everywhere(&cfg, &["agent.state_dir", "/proc/wisp-agent-state"]);
    assert!(!Path::new("/proc/wisp-agent-state").exists());
}

#[test]
fn config_check_and_probe_leave_a_missing_state_dir_uncreated() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a/b/state");
    let cfg = runnable(dir.path(), &state, "");
    for args in [&["config", "check"][..], &["probe"][..]] {
        let o = agent()
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    assert!(!dir.path().join("a").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_missing_basic_auth_password_file_is_a_configuration_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = runnable(
        dir.path(),
        &dir.path().join("state"),
        "[loki]\nbasic_auth = { username = \"u\", password_file = \"/nonexistent/loki.pass\" }\n",
    );
    assert_config_error_everywhere(
        &cfg,
        &["loki.basic_auth.password_file", "/nonexistent/loki.pass"],
    );
}

#[test]
fn an_unreadable_bearer_token_file_is_a_configuration_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the token file should be: unreadable as a file, for
    // root as well.
    let token = dir.path().join("token.d");
    std::fs::create_dir(&token).unwrap();
    let cfg = runnable(
        dir.path(),
        &dir.path().join("state"),
        &format!("[loki]\nbearer_token_file = \"{}\"\n", token.display()),
    );
    assert_config_error_everywhere(&cfg, &["loki.bearer_token_file", "token.d"]);
}

#[test]
fn a_missing_ca_file_is_a_configuration_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = runnable(
        dir.path(),
        &dir.path().join("state"),
        "[loki]\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert_config_error_everywhere(&cfg, &["loki.ca_file", "/nonexistent/ca.pem"]);
}

#[test]
fn a_ca_file_without_a_certificate_is_a_configuration_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", "not a certificate\n");
    let cfg = runnable(
        dir.path(),
        &dir.path().join("state"),
        &format!("[loki]\nca_file = \"{}\"\n", ca.display()),
    );
    assert_config_error_everywhere(&cfg, &["loki.ca_file", "ca.pem"]);
}

// ---------------------------------------------------------------- probe --push

/// `probe --json --push` on `cfg` (host pinned to loopback): the report.
fn probe_push(cfg: &Path) -> serde_json::Value {
    let o = agent()
        .args(["probe", "--json", "--push", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout: {}\nstderr: {}", stdout(&o), stderr(&o)))
}

/// The configuration of a `probe --push` test: Loki and OTLP on loopback.
fn push_config(dir: &Path, loki: &str, otlp: &str) -> std::path::PathBuf {
    runnable(
        dir,
        &dir.join("state"),
        &format!("[host]\nprobe_timeout = \"500ms\"\n{loki}{otlp}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_push_ships_the_test_line_as_run_would_with_the_configured_encoding_and_credentials()
{
    let loki = support::loki::LokiReceiver::start().await;
    let otlp = support::otlp::OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pass = write(dir.path(), "loki.pass", "hunter2\n");
    let cfg = push_config(
        dir.path(),
        &format!(
            "[agent.labels]\nenv = \"ci\"\n\
             [loki]\nurl = \"http://{{host}}:{}/loki/api/v1/push\"\nencoding = \"protobuf\"\n\
             tenant = \"team-a\"\nbasic_auth = {{ username = \"probe\", password_file = \"{}\" }}\n",
            loki.addr().port(),
            pass.display()
        ),
        &format!("[otlp]\nendpoint = \"{}\"\n", otlp.grpc_endpoint()),
    );

    let r = probe_push(&cfg);

    assert_eq!(r["push"]["loki"]["status"], "ok", "{r:#}");
    assert_eq!(r["verdict"]["ok"], true, "{r:#}");
    // Sent as `run` sends: protobuf + snappy (which the fake decoded to store
    // it), the tenant, the credentials from the file.
    assert_eq!(
        loki.last_header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(loki.last_header("x-scope-orgid").as_deref(), Some("team-a"));
    assert_eq!(
        loki.last_header("authorization").as_deref(),
        Some("Basic cHJvYmU6aHVudGVyMg==") // probe:hunter2
    );
    // With the labels `run` gives a line: [agent].labels, job, host, level.
    let token = r["push"]["token"].as_str().unwrap();
    let line = format!("wisp-agent probe test line {token}");
    assert_eq!(
        loki.exactly_once(
            "{job=\"wisp-agent-probe\", env=\"ci\", level=\"unknown\"}",
            &[line]
        ),
        Ok(())
    );
    assert!(loki.queries() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_push_sends_the_test_span_over_each_otlp_protocol_with_the_configured_headers() {
    use support::otlp::Transport;
    for (protocol, transport) in [
        ("grpc", Transport::Grpc),
        ("http/protobuf", Transport::HttpProtobuf),
        ("http/json", Transport::HttpJson),
    ] {
        let loki = support::loki::LokiReceiver::start().await;
        let otlp = support::otlp::OtlpReceiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let endpoint = if transport == Transport::Grpc {
            otlp.grpc_endpoint()
        } else {
            otlp.http_endpoint()
        };
        let cfg = push_config(
            dir.path(),
            &format!(
                "[loki]\nurl = \"http://{{host}}:{}/loki/api/v1/push\"\n",
                loki.addr().port()
            ),
            &format!(
                "[otlp]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n\
                 headers = {{ x-probe-test = \"yes\" }}\n"
            ),
        );

        let r = probe_push(&cfg);

        assert_eq!(r["push"]["otlp"]["status"], "ok", "{protocol}: {r:#}");
        // The readiness check exports an empty request the same way first.
        let transports = otlp.transports();
        assert!(
            !transports.is_empty() && transports.iter().all(|t| *t == transport),
            "{protocol}: {transports:?}"
        );
        let spans = otlp.spans();
        assert_eq!(spans.len(), 1, "{protocol}");
        assert_eq!(spans[0].name, "wisp-agent probe");
        assert_eq!(
            spans[0]
                .attributes
                .get("wisp.probe.token")
                .map(String::as_str),
            r["push"]["token"].as_str(),
            "{protocol}"
        );
        assert_eq!(
            otlp.last_headers()
                .get("x-probe-test")
                .and_then(|v| v.to_str().ok()),
            Some("yes"),
            "{protocol}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_state_dir_exits_2_naming_the_first() {
    let loki = support::loki::LokiReceiver::start().await;
    let setup = support::agent::Setup::new(&loki, "");
    let first = setup.start();
    let lock = setup.dir.path().join("state").join("lock");
    let pid = first.pid().unwrap();
    assert!(
        support::wait_until(support::DEADLINE, || {
            std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid.to_string())
        })
        .await,
        "{}",
        first.log()
    );
    let second = agent()
        .args(["run", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let err = stderr(&second);
    assert!(
        err.contains("agent.state_dir") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
}

#[test]
fn bad_values_that_would_spin_or_silence_the_agent_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent()
        .args([
            "--log-level",
            "verbose",
            "config",
            "check",
            "--config",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("possible values: error, warn, info, debug, trace"),
        "{}",
        stderr(&o)
    );
    // The same word in RUST_LOG would be a target name to tracing: the agent's
    // own log, warnings included, would be empty.
    let o = agent()
        .env("RUST_LOG", "verbose")
        .args(["config", "check", "--config", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("RUST_LOG=\"verbose\"") && stderr(&o).contains("--log-level LEVEL"),
        "{}",
        stderr(&o)
    );
    // exec runs its command whatever RUST_LOG holds (it is the command's too).
    let o = agent()
        .env("RUST_LOG", "verbose")
        .env("HOME", dir.path())
        .env("XDG_STATE_HOME", dir.path().join("xdg"))
        .args(["exec", "--config", "/dev/null", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (table, key) in [
        ("host", "rediscover_interval"),
        ("loki", "max_backoff"),
        ("otlp", "timeout"),
    ] {
        let cfg = write(
            dir.path(),
            "zero.toml",
            &format!("[{table}]\n{key} = \"0s\"\n"),
        );
        let o = agent()
            .args(["config", "check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{table}.{key}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{table}.{key}")) && err.contains("at least"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_that_matches_nothing_and_a_relative_path_are_warned_about_once() {
    let loki = support::loki::LokiReceiver::start().await;
    let setup = support::agent::Setup::new(&loki, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        format!(
            "{text}\n[[files]]\nname = \"typo\"\npaths = [\"logs/nope/*.log\"]\npoll_interval = \"50ms\"\n"
        ),
    )
    .unwrap();
    let agent = setup.start();
    let warned = |log: &str| {
        log.contains("\"logs/nope/*.log\" is a relative path")
            && log.contains("tailing typo (logs/nope/*.log): nothing matches yet")
            && log.contains("tailing app (")
    };
    assert!(
        support::wait_until(support::DEADLINE, || warned(&agent.log())).await,
        "{}",
        agent.log()
    );
    // Once each (app, whose folder was empty at start, and typo): later walks
    // say nothing more.
    support::append(&setup.log_path("a.log"), &["one".to_string()]);
    agent
        .assert_shipped_once(
            &loki,
            r#"{job="app"}"#,
            &["one".to_string()],
            support::DEADLINE,
        )
        .await;
    assert_eq!(
        agent.log().matches("nothing matches yet").count(),
        2,
        "{}",
        agent.log()
    );
}

/// `agent.log_format = "json"`: `run`'s log is one JSON object a line, each
/// with its time, level and message, for a pipeline that reads JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_format_json_run_logs_one_json_object_a_line() {
    let loki = support::loki::LokiReceiver::start().await;
    let setup = support::agent::Setup::new(&loki, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains("[agent]\n"), "{text}");
    std::fs::write(
        &setup.config,
        text.replacen("[agent]\n", "[agent]\nlog_format = \"json\"\n", 1),
    )
    .unwrap();
    let daemon = setup.start();
    support::append(&setup.log_path("a.log"), &["one".to_string()]);
    daemon
        .assert_shipped_once(
            &loki,
            r#"{job="app"}"#,
            &["one".to_string()],
            support::DEADLINE,
        )
        .await;
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\n{log}"));
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .contains(&event["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(event["message"].is_string(), "{line}");
    }
    // A bad value names the key and what it takes.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "bad.toml", "[agent]\nlog_format = \"xml\"\n");
    let o = agent()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("log_format") && err.contains("json"), "{err}");
}

/// Runs `cmd` with stderr piped until a line of it satisfies `done` or
/// `deadline` passes, then kills it; returns the stderr read and whether `done`
/// was met.
fn stderr_until(
    mut cmd: Command,
    deadline: std::time::Duration,
    done: impl Fn(&str) -> bool,
) -> (String, bool) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = std::time::Instant::now() + deadline;
    let mut seen = String::new();
    let mut met = false;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if done(&line) {
                    met = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (seen, met)
}

#[test]
fn completions_are_printed_for_each_shell_and_parse() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = agent().args(["completions", shell]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        // Every command is offered.
        for command in ["run", "probe", "exec", "status", "config", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
        let checker = match shell {
            "bash" | "zsh" | "fish" => shell,
            _ => continue,
        };
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "completion", &script);
        match Command::new(checker).arg("-n").arg(&file).output() {
            Ok(check) => assert!(
                check.status.success(),
                "{shell} -n refuses the completion: {}",
                stderr(&check)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: {checker} not installed, its completion not parsed")
            }
            Err(e) => panic!("{checker}: {e}"),
        }
    }
    let o = agent().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("possible values"), "{}", stderr(&o));
}

#[test]
fn the_man_page_has_every_command_its_options_and_examples() {
    let o = agent().arg("manpage").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH wisp-agent 1 "), "{page}");
    for section in [
        "NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXAMPLES", "FILES",
    ] {
        assert!(
            page.lines().any(|l| l == format!(".SH {section}")),
            "no {section}"
        );
    }
    for command in [
        "run",
        "probe",
        "exec",
        "status",
        "config check",
        "completions",
    ] {
        assert!(
            page.contains(&format!(".SS wisp\\-agent {}", command.replace('-', "\\-"))),
            "no {command}"
        );
    }
    // The hidden command is not offered in --help.
    assert!(!stdout(&agent().arg("--help").output().unwrap()).contains("manpage"));
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "wisp-agent.1", &page);
    match Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&file)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
    {
        Ok(man) => {
            assert!(man.status.success(), "man -l: {}", stderr(&man));
            assert_eq!(stderr(&man), "", "man reports troff warnings");
            let text = stdout(&man);
            // Unfilled: each example on its own line.
            assert!(
                text.lines()
                    .any(|l| l.trim() == "wisp-agent exec -- make test"),
                "{text}"
            );
            assert!(text.contains("--dry-run"), "{text}");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: man not installed, the page not rendered")
        }
        Err(e) => panic!("man: {e}"),
    }
}

#[test]
fn help_shows_examples_for_each_command() {
    for command in [
        &["run"][..],
        &["probe"],
        &["exec"],
        &["status"],
        &["config", "check"],
        &["completions"],
    ] {
        let o = agent().args(command).arg("--help").output().unwrap();
        assert_eq!(o.status.code(), Some(0));
        let help = stdout(&o);
        let example = format!("  wisp-agent {}", command.join(" "));
        assert!(
            help.contains("Examples:") && help.contains(&example),
            "{command:?} --help:\n{help}"
        );
    }
}

/// What `exec --help` says the command's environment gets is what `exec`
/// sets: every `OTEL_*` variable and `TRACEPARENT` a command sees.
#[test]
fn exec_help_names_every_variable_exec_sets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "agent.toml",
        &format!(
            "[agent]\nstate_dir = \"{}\"\n[exec]\nsocket = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("exec.sock").display()
        ),
    );
    let o = agent()
        .env("HOME", dir.path())
        .env("XDG_STATE_HOME", dir.path().join("xdg"))
        .args(["exec", "--label", "iter=1", "--config"])
        .arg(&cfg)
        .args(["--", "env"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let set: Vec<String> = stdout(&o)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .filter(|k| k.starts_with("OTEL_") || k == "TRACEPARENT")
        .collect();
    assert!(set.len() >= 4, "exec set only {set:?}");
    let help = stdout(&agent().args(["exec", "--help"]).output().unwrap());
    for var in &set {
        assert!(
            help.contains(var.as_str()),
            "exec --help does not name {var}:\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_log_names_the_collector_and_protocol_as_a_person_reads_them() {
    let collector = support::otlp::OtlpReceiver::start().await;
    let relay = support::agent::Relay::new(&collector, "grpc", None);
    let (agent, _, _) = relay.start().await;
    assert!(
        support::wait_until(support::DEADLINE, || agent
            .log()
            .contains("otlp: relaying over gRPC to "))
        .await,
        "{}",
        agent.log()
    );
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("otlp: relaying"))
        .unwrap_or("");
    assert!(!line.contains("{host}") && !line.contains("Grpc"), "{line}");
    assert!(
        line.contains(&collector.grpc_endpoint()),
        "the endpoint is set in full, it is shown as it is: {line}"
    );
}

/// A host that stays down: "keeps failing" is said once at WARN, later rounds
/// at DEBUG only, and the end of the outage once at INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_warned_about_once_and_its_end_said() {
    let loki = support::loki::LokiReceiver::start().await;
    let setup = support::agent::Setup::new(&loki, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replacen(
            "[host]\naddress = \"127.0.0.1\"\n",
            "[host]\naddress = \"127.0.0.1\"\nrediscover_interval = \"1s\"\n",
            1,
        ),
    )
    .unwrap();
    let agent = setup.start();
    support::append(&setup.log_path("a.log"), &["before".to_string()]);
    agent
        .assert_shipped_once(
            &loki,
            r#"{job="app"}"#,
            &["before".to_string()],
            support::DEADLINE,
        )
        .await;
    loki.stop().await;
    let during: Vec<String> = (0..50).map(|i| format!("during {i}")).collect();
    support::append(&setup.log_path("a.log"), &during);
    let failing = |log: &str| log.lines().filter(|l| l.contains("keeps failing")).count();
    // Two rediscoveries the failures triggered (at least 5 s apart).
    assert!(
        support::wait_until(std::time::Duration::from_secs(40), || failing(&agent.log())
            >= 2)
        .await,
        "{}",
        agent.log()
    );
    let log = agent.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keeps failing") && l.contains(" WARN "))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("keeps failing"))
            .skip(1)
            .all(|l| l.contains("DEBUG")),
        "{log}"
    );
    loki.restart().await;
    let all: Vec<String> = std::iter::once("before".to_string())
        .chain(during)
        .collect();
    agent
        .assert_shipped_once(
            &loki,
            r#"{job="app"}"#,
            &all,
            std::time::Duration::from_secs(30),
        )
        .await;
    assert!(
        support::wait_until(support::DEADLINE, || agent
            .log()
            .contains("host: 127.0.0.1 (127.0.0.1) answers again"))
        .await,
        "{}",
        agent.log()
    );
}

#[test]
fn run_without_files_says_so_naming_the_file_or_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "otlp-only.toml", "[agent]\nhostname = \"t\"\n");
    let mut cmd = agent();
    cmd.args(["run", "--dry-run", "--config"]).arg(&cfg);
    let (err, met) = stderr_until(cmd, support::DEADLINE, |l| l.contains("[[files]]"));
    assert!(met, "{err}");
    assert!(
        err.contains(&format!("{} has no [[files]] entries", cfg.display()))
            && err.contains("nothing will be printed"),
        "{err}"
    );
    // No file at all: the message says where the agent looked.
    if Path::new("/etc/wisp-agent/config.toml").exists() {
        eprintln!("skipped: /etc/wisp-agent/config.toml exists here, the built-in defaults cannot be tried");
        return;
    }
    let mut cmd = agent();
    cmd.current_dir(dir.path()).args(["run", "--dry-run"]);
    let (err, met) = stderr_until(cmd, support::DEADLINE, |l| l.contains("[[files]]"));
    assert!(met, "{err}");
    assert!(
        err.contains("no configuration file")
            && err.contains("WISP_AGENT_CONFIG")
            && err.contains("/etc/wisp-agent/config.toml")
            && err.contains("--config FILE"),
        "{err}"
    );
}

/// The quickstart's sample line, run as its comment says, is shown with its
/// own time whenever the test runs (a fixed time would age past
/// `agent.timestamp_max_age` and take the read time).
#[test]
fn the_quickstart_sample_line_keeps_its_own_time() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("wisp-quickstart");
    std::fs::create_dir(&folder).unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples/quickstart.toml"),
    )
    .unwrap()
    .replace("/tmp/wisp-quickstart", &folder.display().to_string());
    let echo = example
        .lines()
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("echo "))
        .expect("quickstart.toml shows an echo command");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("echo {echo}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let line = std::fs::read_to_string(folder.join("app.log")).unwrap();
    let time: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let ms = time["time"].as_u64().expect("a time in milliseconds");
    let cfg = write(dir.path(), "quickstart.toml", &example);

    let mut child = agent()
        .args(["run", "--dry-run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut first);
        let _ = tx.send(first);
    });
    let record = rx.recv_timeout(support::DEADLINE).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let shown = humantime::parse_rfc3339(record["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(
        shown,
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        "{record}"
    );
}
