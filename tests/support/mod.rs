//! Shared test support: fake Loki and OTLP receivers on loopback, waiting on
//! conditions with a deadline (never sleep-and-hope), and the exactly-once
//! verdict delivery tests assert ([`exactly_once`], [`at_most_once`]).
//!
//! Each test crate includes this with `mod support;` and uses a part of it.
#![allow(dead_code)]

pub mod agent;
pub mod loki;
pub mod otlp;
pub mod tls;
pub mod tmux;
pub mod users;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A generous deadline for things that happen at once on a quiet machine but may
/// take a while on a loaded CI runner.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return cond();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// As [`wait_until`], for an async condition.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return cond().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `cond` holds, re-checking each time `changed` is notified, until
/// `timeout` passes; returns whether it held. The wake-up is registered before
/// each check, so a change between the check and the wait still wakes it.
pub async fn wait_notified(
    changed: &tokio::sync::Notify,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if cond() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return cond();
        }
    }
}

/// Binds `addr`, retrying briefly: a port just released may take a moment to be
/// free again.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..200 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
}

/// Serves an axum router (HTTP/1.1 and h2c) on `listener`. Aborting the returned
/// task closes the port and every open connection at once, as a host that went
/// away would; axum's own `serve` would leave kept-alive connections running.
pub fn serve(listener: TcpListener, router: axum::Router) -> JoinHandle<()> {
    serve_with(listener, router, None)
}

/// As [`serve`], over TLS: each connection begins with a handshake by `tls`
/// (one that fails, a client not trusting the certificate, ends that connection).
pub fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    tls: tokio_rustls::TlsAcceptor,
) -> JoinHandle<()> {
    serve_with(listener, router, Some(tls))
}

fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Dropped with this task: aborts every connection task.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = TowerToHyperService::new(router.clone());
                    let tls = tls.clone();
                    connections.spawn(async move {
                        let http = auto::Builder::new(TokioExecutor::new());
                        match tls {
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Some(tls) => {
                                let Ok(stream) = tls.accept(stream).await else { return };
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// Environment variables the agent reads (configuration, endpoints, proxies, its
/// log filter): tests clear them so the machine running the tests cannot steer
/// the agent they start.
pub const AGENT_ENV: [&str; 19] = [
    "WISP_HOST",
    "WISP_AGENT_CONFIG",
    "LOKI_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "RUST_LOG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "XDG_STATE_HOME",
    "WISP_BLESS",
];

/// Removes [`AGENT_ENV`] from `cmd`'s environment.
pub fn clear_agent_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for var in AGENT_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// The built `wisp-agent` binary, with a clean environment.
pub fn agent_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wisp-agent"));
    clear_agent_env(&mut cmd);
    cmd
}

/// Appends `lines` to `path` (created if missing), each with its newline, and
/// syncs: what a logging program writes.
pub fn append(path: &std::path::Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.sync_all().unwrap();
}

/// Lines quoted in a delivery verdict, per kind of fault.
const EXAMPLES: usize = 3;

/// Ok when `stored` holds exactly the lines of `expected`, each as many times as
/// it is expected (once, for distinct lines), in any order. Otherwise the error
/// says how many expected lines are missing, how many lines are stored more
/// often than expected (and how many extra entries that makes), and how many
/// stored lines were never expected, with a few examples of each.
pub fn exactly_once(stored: &[String], expected: &[String]) -> Result<(), String> {
    Tally::new(stored, expected).verdict(true)
}

/// As [`exactly_once`], but expected lines may be missing (lines a test knows
/// may be dropped): Ok when no line is stored more often than expected and
/// none is stored that was not expected.
pub fn at_most_once(stored: &[String], expected: &[String]) -> Result<(), String> {
    Tally::new(stored, expected).verdict(false)
}

/// Per distinct line: how often it was expected and how often it was stored,
/// in the order lines were first expected (then first stored).
struct Tally<'a> {
    counts: Vec<(&'a str, usize, usize)>,
    stored: usize,
    expected: usize,
}

impl<'a> Tally<'a> {
    fn new(stored: &'a [String], expected: &'a [String]) -> Self {
        let mut at: HashMap<&str, usize> = HashMap::new();
        let mut counts: Vec<(&str, usize, usize)> = Vec::new();
        for (line, is_expected) in expected
            .iter()
            .map(|l| (l, true))
            .chain(stored.iter().map(|l| (l, false)))
        {
            let i = *at.entry(line.as_str()).or_insert_with(|| {
                counts.push((line.as_str(), 0, 0));
                counts.len() - 1
            });
            if is_expected {
                counts[i].1 += 1;
            } else {
                counts[i].2 += 1;
            }
        }
        Tally {
            counts,
            stored: stored.len(),
            expected: expected.len(),
        }
    }

    fn verdict(&self, missing_is_a_fault: bool) -> Result<(), String> {
        let quote = |line: &str| {
            let mut q: String = line.chars().take(100).collect();
            if q.len() < line.len() {
                q.push('…');
            }
            format!("{q:?}")
        };
        let mut missing = (0, Vec::new());
        let mut doubled = (0, 0, Vec::new());
        let mut unexpected = (0, Vec::new());
        for &(line, want, got) in &self.counts {
            if got < want {
                missing.0 += want - got;
                if missing.1.len() < EXAMPLES {
                    missing.1.push(quote(line));
                }
            } else if got > want && want > 0 {
                doubled.0 += 1;
                doubled.1 += got - want;
                if doubled.2.len() < EXAMPLES {
                    doubled.2.push(format!("{} ×{got}", quote(line)));
                }
            } else if got > want {
                unexpected.0 += got;
                if unexpected.1.len() < EXAMPLES {
                    unexpected.1.push(quote(line));
                }
            }
        }
        let mut faults = Vec::new();
        if missing_is_a_fault && missing.0 > 0 {
            faults.push(format!(
                "{} missing, e.g. {}",
                missing.0,
                missing.1.join(", ")
            ));
        }
        if doubled.0 > 0 {
            faults.push(format!(
                "{} stored twice or more ({} extra entries), e.g. {}",
                doubled.0,
                doubled.1,
                doubled.2.join(", ")
            ));
        }
        if unexpected.0 > 0 {
            faults.push(format!(
                "{} stored but never expected, e.g. {}",
                unexpected.0,
                unexpected.1.join(", ")
            ));
        }
        if faults.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} lines expected, {} stored: {}",
            self.expected,
            self.stored,
            faults.join("; ")
        ))
    }
}

/// Pino lines numbered `from..to` (`msg` then the number), stamped now and a
/// millisecond apart, so Loki's window accepts them and their order shows.
pub fn pino_lines(level: u8, msg: &str, from: usize, to: usize) -> Vec<String> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    (from..to)
        .map(|i| {
            format!(
                r#"{{"level":{level},"time":{},"pid":4242,"hostname":"vm","msg":"{msg} {i:05}"}}"#,
                now_ms + i as u128
            )
        })
        .collect()
}

/// A small tmpfs mounted for the test's life, when the machine lets us (root):
/// a disk to fill.
pub struct TinyFs(tempfile::TempDir);

impl TinyFs {
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyFs(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Writes zeros to `path` until its file system is full.
pub fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}
