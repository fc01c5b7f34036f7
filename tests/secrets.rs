//! Secrets never printed: a password in `LOKI_URL` / `OTEL_EXPORTER_OTLP_ENDPOINT`
//! userinfo and an `authorization` header from `OTEL_EXPORTER_OTLP_HEADERS` appear
//! in no log line (debug level included), no error, no `probe` output (text and
//! `--json`) and no `config check` output; the redacted URL does.

mod support;

use std::process::{Command, Stdio};

use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;
use support::{wait_until, DEADLINE};

const PASSWORD: &str = "s3cr3t-pw";
const TOKEN: &str = "s3cr3t-tok";

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD) && !text.contains(TOKEN) && !text.contains("s3cr3t"),
        "{what} shows a secret:\n{text}"
    );
}

/// The agent with the secrets in its environment, and a config pinning the host.
struct Secrets {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    loki_url: String,
    otlp_endpoint: String,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`; gRPC when unset.
    otlp_protocol: Option<&'static str>,
}

impl Secrets {
    fn new(loki_port: u16, otlp_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, "hello from a test\n").unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{}\"\n[host]\naddress = \"127.0.0.1\"\nprobe_timeout = \"500ms\"\n\
                 [receiver]\ngrpc = \"\"\nhttp = \"\"\n[admin]\nlisten = \"\"\n\
                 [loki]\nbatch_max_wait = \"100ms\"\nmax_backoff = \"200ms\"\n\
                 [otlp]\nmax_backoff = \"200ms\"\n\
                 [host_metrics]\ninterval = \"100ms\"\n\
                 [exec]\nsocket = \"{}\"\n\
                 [[files]]\nname = \"app\"\npaths = [\"{}\"]\nstart_at = \"beginning\"\n",
                dir.path().join("state").display(),
                dir.path().join("exec.sock").display(),
                log.display()
            ),
        )
        .unwrap();
        Secrets {
            dir,
            config,
            loki_url: format!("http://user:{PASSWORD}@127.0.0.1:{loki_port}"),
            otlp_endpoint: format!("http://u:{PASSWORD}@127.0.0.1:{otlp_port}"),
            otlp_protocol: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = support::agent_command();
        cmd.args(["--log-level", "debug"])
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("LOKI_URL", &self.loki_url)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &self.otlp_endpoint)
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer {TOKEN}"),
            );
        if let Some(p) = self.otlp_protocol {
            cmd.env("OTEL_EXPORTER_OTLP_PROTOCOL", p);
        }
        cmd
    }

    fn output(&self, args: &[&str]) -> String {
        let o = self.command(args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// `run` until both sinks have logged a failure, then SIGTERM; the whole log.
    async fn run_until_failures_logged(&self) -> String {
        let log_path = self.dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = self
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let both = wait_until(DEADLINE, || {
            let l = read();
            l.contains("push to loki at") && l.contains("otlp export to")
        })
        .await;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let text = read();
        assert!(both, "the sinks logged no failure:\n{text}");
        text
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn run_against_unreachable_sinks_logs_no_credentials() {
    let s = Secrets::new(free_port(), free_port());
    let log = s.run_until_failures_logged().await;
    assert_no_secret("run's log", &log);
    assert!(log.contains("user:<redacted>@127.0.0.1"), "{log}");
    assert!(log.contains("u:<redacted>@127.0.0.1"), "{log}");
}

#[tokio::test]
async fn run_against_failing_sinks_logs_no_credentials() {
    let loki = LokiReceiver::start().await;
    loki.fail_next(10_000, 500, None, "boom");
    let collector = OtlpReceiver::start().await;
    collector.set_unavailable(true);
    let s = Secrets::new(loki.addr().port(), collector.grpc_addr().port());
    let log = s.run_until_failures_logged().await;
    assert_no_secret("run's log", &log);
    assert!(log.contains("user:<redacted>@127.0.0.1"), "{log}");
    assert!(log.contains("u:<redacted>@127.0.0.1"), "{log}");
    assert!(loki.pushes() > 0 && collector.exports() > 0, "{log}");
}

#[tokio::test]
async fn run_against_a_failing_otlp_http_collector_logs_no_credentials() {
    let collector = OtlpReceiver::start().await;
    collector.set_unavailable(true);
    let mut s = Secrets::new(free_port(), collector.http_addr().port());
    s.otlp_protocol = Some("http/protobuf");
    let log = s.run_until_failures_logged().await;
    assert_no_secret("run's log", &log);
    assert!(log.contains("u:<redacted>@127.0.0.1"), "{log}");
    assert!(collector.exports() > 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_text_and_json_show_no_credentials() {
    let loki = LokiReceiver::start().await;
    loki.fail_next(10_000, 500, None, "boom");
    let s = Secrets::new(loki.addr().port(), free_port());
    // The text report names ports, not URLs; the JSON one names each target.
    for args in [&["probe"][..], &["probe", "--push"][..]] {
        assert_no_secret(&args.join(" "), &s.output(args));
    }
    for args in [&["probe", "--json"][..], &["probe", "--json", "--push"][..]] {
        let out = s.output(args);
        assert_no_secret(&args.join(" "), &out);
        assert!(
            out.contains("user:<redacted>@127.0.0.1"),
            "{}: {out}",
            args.join(" ")
        );
    }
}

#[test]
fn config_check_shows_no_credentials() {
    let s = Secrets::new(free_port(), free_port());
    let out = s.output(&["config", "check"]);
    assert_no_secret("config check", &out);
    assert!(out.contains("user:<redacted>@127.0.0.1"), "{out}");
    assert!(out.contains("u:<redacted>@127.0.0.1"), "{out}");
}
