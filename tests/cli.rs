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
