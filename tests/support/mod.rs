//! Shared test support: fake Loki and OTLP receivers on loopback, and waiting on
//! conditions with a deadline (never sleep-and-hope).
//!
//! Each test crate includes this with `mod support;` and uses a part of it.
#![allow(dead_code)]

pub mod agent;
pub mod loki;
pub mod otlp;
pub mod tmux;

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
    tokio::spawn(async move {
        // Dropped with this task: aborts every connection task.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
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
