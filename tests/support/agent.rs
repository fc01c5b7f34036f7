//! The agent binary as a child process, with a configuration pointed at the fake
//! Loki (`Setup`) or the fake OTLP collector (`Relay`) and a temp dir, for tests
//! that drive `wisp-agent run` end to end.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::loki::LokiReceiver;
use super::otlp::OtlpReceiver;
use super::{wait_until, DEADLINE};

/// A running agent; killed on drop so a failing test leaves no process behind.
pub struct Agent {
    child: Option<Child>,
    stderr: PathBuf,
    /// Where this agent's part of the log starts (a restart appends to it).
    log_start: usize,
}

impl Agent {
    pub fn start(config: &Path, stderr: &Path) -> Agent {
        Self::spawn(super::agent_command(), config, stderr)
    }

    /// As [`Agent::start`], with the agent running as user `uid` and group `gid`
    /// with no supplementary groups (`setpriv`, from util-linux): for tests of
    /// what an unprivileged agent may not read. The caller must be root.
    pub fn start_as(config: &Path, stderr: &Path, uid: u32, gid: u32) -> Agent {
        let mut cmd = Command::new("setpriv");
        super::clear_agent_env(&mut cmd);
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_wisp-agent"));
        Self::spawn(cmd, config, stderr)
    }

    /// An agent started by the test itself (say `run --dry-run`), its stderr
    /// going to `stderr`.
    pub fn adopt(child: Child, stderr: &Path) -> Agent {
        Agent {
            child: Some(child),
            stderr: stderr.to_path_buf(),
            log_start: 0,
        }
    }

    /// Runs `cmd run --log-level debug --config CONFIG`, its stderr appended to
    /// `stderr`.
    fn spawn(mut cmd: Command, config: &Path, stderr: &Path) -> Agent {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .unwrap();
        let log_start = log.metadata().map_or(0, |m| m.len() as usize);
        let child = cmd
            .args(["run", "--log-level", "debug", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            stderr: stderr.to_path_buf(),
            log_start,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// This agent's part of the log (a restarted agent appends to its
    /// predecessor's).
    pub fn own_log(&self) -> String {
        let log = self.log();
        log.get(self.log_start..).unwrap_or_default().to_string()
    }

    /// SIGTERM, then waits for the exit status (bounded).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `loki` holds every line of `want` in the streams matching
    /// `selector`, then panics, with this agent's log, unless each is there
    /// exactly once ([`LokiReceiver::wait_for_exactly_once`]).
    pub async fn assert_shipped_once(
        &self,
        loki: &LokiReceiver,
        selector: &str,
        want: &[String],
        timeout: Duration,
    ) {
        if let Err(e) = loki.wait_for_exactly_once(selector, want, timeout).await {
            panic!("{e}\nagent log:\n{}", self.log());
        }
    }

    /// SIGSTOP: the agent is frozen (reads nothing) until [`Agent::resume`];
    /// for tests that need files to change under it before it looks. Returns
    /// once every thread of it is stopped (the signal alone takes a moment).
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.pid().expect("the agent runs");
        let stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|t| {
                // `pid (comm) S …`: the state follows the last `)`.
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                })
            })
        };
        let deadline = std::time::Instant::now() + DEADLINE;
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent (pid {pid}) did not stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGHUP: reload the configuration.
    pub fn hup(&self) {
        self.signal("-HUP");
    }

    /// Waits until this agent's part of the log holds `text` `n` times or
    /// more; false after [`DEADLINE`] × 2.
    pub async fn wait_logged(&self, text: &str, n: usize) -> bool {
        wait_until(DEADLINE * 2, || self.own_log().matches(text).count() >= n).await
    }

    /// Whether the process still runs (has not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGCONT, after [`Agent::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the agent runs");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// `kill -9`: no drain, no checkpoint, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(loki: &LokiReceiver, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let config = dir.path().join("agent.toml");
        let text = format!(
            r#"[agent]
state_dir = "{state}"
hostname = "vm-test"

[host]
address = "127.0.0.1"

[loki]
url = "{scheme}://{{host}}:{port}/loki/api/v1/push"
batch_max_wait = "100ms"
timeout = "1s"
max_backoff = "300ms"

[otlp]
enabled = false

[receiver]
grpc = ""
http = ""

[host_metrics]
enabled = false
agent_metrics = false

[admin]
listen = ""

[exec]
socket = "{socket}"

[[files]]
name = "app"
paths = ["{logs}/*.log"]
start_at = "beginning"
poll_interval = "100ms"
{extra}
"#,
            socket = dir.path().join("exec.sock").display(),
            state = dir.path().join("state").display(),
            scheme = loki.scheme(),
            port = loki.addr().port(),
            logs = logs.display(),
        );
        std::fs::write(&config, text).unwrap();
        Setup { dir, config }
    }

    /// Sets `[admin] listen` (the harness default is `""`, disabled).
    pub fn set_admin_listen(&self, listen: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("[admin]\nlisten = \"\""), "{text}");
        let text = text.replacen(
            "[admin]\nlisten = \"\"",
            &format!("[admin]\nlisten = {listen:?}"),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Adds `keys` (TOML lines) to the `[loki]` section.
    pub fn add_loki_keys(&self, keys: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("\n[loki]\n"), "{text}");
        let text = text.replacen("\n[loki]\n", &format!("\n[loki]\n{keys}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Rewrites the configuration file with `edit` (a test then sends SIGHUP).
    pub fn edit(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(name)
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("agent.stderr")
    }

    pub fn start(&self) -> Agent {
        Agent::start(&self.config, &self.stderr_path())
    }

    /// Waits until the tailer's checkpoint (`positions.json`) holds an offset at
    /// `file`'s end: everything in it is acknowledged, so a restart does not read
    /// it again. False on timeout.
    pub async fn wait_checkpointed(&self, file: &Path) -> bool {
        let positions = self.dir.path().join("state").join("positions.json");
        wait_checkpointed_at(&positions, || std::fs::metadata(file).map(|m| m.len()).ok()).await
    }
}

/// Waits until the tailer's checkpoint file `positions` holds the offset
/// `want()` says (read anew each time; `None`: not yet known). False on timeout.
pub async fn wait_checkpointed_at(positions: &Path, want: impl Fn() -> Option<u64>) -> bool {
    fn has_offset(v: &serde_json::Value, want: u64) -> bool {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .any(|(k, v)| (k == "offset" && v.as_u64() == Some(want)) || has_offset(v, want)),
            serde_json::Value::Array(a) => a.iter().any(|v| has_offset(v, want)),
            _ => false,
        }
    }
    wait_until(DEADLINE, || {
        let Some(want) = want() else {
            return false;
        };
        std::fs::read(positions)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| has_offset(&v, want))
    })
    .await
}

/// An agent configuration that relays OTLP to a fake collector, receivers on
/// free ports (`127.0.0.1:0`), the admin endpoint off unless
/// [`Relay::set_admin_listen`].
pub struct Relay {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Relay {
    /// `protocol` is the exporter's; `loki` enables the Loki sink as well
    /// (without it: `loki.enabled = false`, the OTLP-only mode).
    pub fn new(collector: &OtlpReceiver, protocol: &str, loki: Option<&LokiReceiver>) -> Relay {
        Relay::with_state_dir(collector, protocol, loki, None)
    }

    /// As [`Relay::new`], with `agent.state_dir` at `state` (default: in the
    /// temp dir).
    pub fn with_state_dir(
        collector: &OtlpReceiver,
        protocol: &str,
        loki: Option<&LokiReceiver>,
        state: Option<&Path>,
    ) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = match protocol {
            "grpc" => collector.grpc_endpoint(),
            _ => collector.http_endpoint(),
        };
        let loki_section = match loki {
            Some(l) => format!(
                "url = \"http://{{host}}:{}/loki/api/v1/push\"\nbatch_max_wait = \"100ms\"",
                l.addr().port()
            ),
            None => "enabled = false".to_string(),
        };
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let state = match state {
            Some(s) => s.to_path_buf(),
            None => dir.path().join("state"),
        };
        let text = format!(
            r#"[agent]
state_dir = "{state}"
hostname = "vm-test"

[host]
address = "127.0.0.1"

[loki]
{loki_section}

[otlp]
endpoint = "{endpoint}"
protocol = "{protocol}"
timeout = "2s"
max_backoff = "300ms"
headers = {{ "x-relay-test" = "yes" }}

[receiver]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"

[host_metrics]
enabled = false
agent_metrics = false

[admin]
listen = ""

[exec]
socket = "{socket}"

[[files]]
name = "app"
paths = ["{logs}/*.log"]
start_at = "beginning"
poll_interval = "100ms"
"#,
            socket = dir.path().join("exec.sock").display(),
            state = state.display(),
            logs = logs.display(),
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        Relay { dir, config }
    }

    /// Sets `[admin] listen` (default `""`, disabled).
    pub fn set_admin_listen(&self, listen: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("[admin]\nlisten = \"\""), "{text}");
        let text = text.replacen(
            "[admin]\nlisten = \"\"",
            &format!("[admin]\nlisten = {listen:?}"),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("agent.stderr")
    }

    /// Starts the agent and waits for both receivers' addresses in its log. A
    /// restart appends to the same log: the addresses are the last ones logged.
    pub async fn start(&self) -> (Agent, SocketAddr, SocketAddr) {
        let before = std::fs::read_to_string(self.stderr_path())
            .unwrap_or_default()
            .len();
        let agent = Agent::start(&self.config, &self.stderr_path());
        let mut addrs = (None, None);
        let found = wait_until(DEADLINE, || {
            let log = agent.log();
            let log = log.get(before..).unwrap_or("");
            addrs = (
                listening(log, "otlp receiver (grpc) listening on "),
                listening(log, "otlp receiver (http) listening on "),
            );
            addrs.0.is_some() && addrs.1.is_some()
        })
        .await;
        assert!(
            found,
            "receivers did not start; agent log:\n{}",
            agent.log()
        );
        (agent, addrs.0.unwrap(), addrs.1.unwrap())
    }
}

/// The address after the last `marker` in `log`.
pub fn listening(log: &str, marker: &str) -> Option<SocketAddr> {
    let at = log.rfind(marker)? + marker.len();
    log[at..].split_whitespace().next()?.parse().ok()
}

impl Agent {
    /// The address this agent logged for its admin endpoint (`listen` with
    /// port 0), once it did (not an earlier agent's, on a log a restart shares).
    pub async fn admin_addr(&self) -> SocketAddr {
        const MARK: &str = "admin endpoint: http://";
        let mut found = None;
        let logged = wait_until(DEADLINE, || {
            let log = self.own_log();
            found = log.rfind(MARK).and_then(|i| {
                let rest = &log[i + MARK.len()..];
                rest.split('/').next()?.parse().ok()
            });
            found.is_some()
        })
        .await;
        assert!(logged, "no admin address logged:\n{}", self.log());
        found.unwrap()
    }
}

/// One sample's value from the agent's `/metrics` at `addr` (`name` with its
/// labels as served, e.g. `wisp_spool_records_appended_total{spool="loki"}`).
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}
