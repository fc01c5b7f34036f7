//! The admin endpoint (`[admin] listen`): `GET /metrics` in the Prometheus text
//! exposition format 0.0.4, `GET /healthz`, `GET /status` (JSON, for
//! `wisp-agent status`; `status.rs`) and `GET /tap` (the records the daemon
//! ships, streamed, for `wisp-agent tap`; `tap.rs`).
//!
//! Promises: the metrics are read from the counters the stages already keep,
//! through the readers each stage registered ([`crate::metric::Registry`]:
//! the tailer's, the parser's, both spools' (told apart by a `spool` label),
//! the Loki sink's, the OTLP receiver's and exporter's, the listeners', exec's,
//! build and host), plus the endpoint's own connections and the process
//! figures read from `/proc` ([`crate::procfs`]), which it registers itself; a
//! scrape never blocks a stage. `metrics.rs` renders a reading with one
//! `prometheus-client` collector; `/status` is built from the same reading;
//! the same reading is pushed over OTLP (the host-metrics task), the endpoint
//! on or off.
//! Either pipeline may be off (`loki.enabled`, `otlp.enabled`): its metrics are
//! then absent, the rest is served. The
//! server is one task on the agent's runtime (no thread of its own) and stops with
//! the cancellation token. Other paths answer 404, other methods 405. At most 8
//! connections, each cut after 10 s without a request, 60 s idle, or 30 s for
//! one request ([`crate::listen`]), so no client holds the endpoint or the
//! shutdown; a tap's answer streams past those (it counts as a request in
//! flight until it ends), at most [`crate::tap::MAX_TAPS`] at once, and ends
//! when the token fires.
//!
//! A listen address that does not parse is a configuration error (exit 2, from
//! validation). An address that parses but cannot be bound (the port is taken,
//! the address is not on this machine) does not stop the agent: an agent that
//! cannot serve its metrics should still ship logs. The error is logged once,
//! naming `admin.listen` and the fix, and the bind is retried every
//! [`BIND_RETRY`] in the background (quietly), so the endpoint comes up once
//! the port is free.

mod metrics;
mod status;
mod tap;
#[cfg(test)]
mod tests;

pub use status::snapshots as status_snapshots;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::listen::{ListenerCounters, ListenerLimits, Protocol};
use crate::metric::{AgentMetrics, Registry};
use crate::procfs::{ProcFs, ProcessStats};
use crate::sink::loki::LokiCounters;
use crate::sink::otlp::OtlpCounters;
use crate::spool::stage::BufferHealth;

/// How often a listen address that could not be bound is tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(5);

/// The endpoint's connection bound and timeouts (see [`crate::listen`]): a
/// scraper or two and a person with curl need a few connections, but any local
/// user can open many and send nothing; so there are slots for hundreds, a
/// connection must send its request within 2 s, and an idle one is closed
/// after 15 s: `status` and `/healthz` still answer beside 100 idle
/// connections. More wait in the accept backlog. The grace is short: `run`
/// waits a second for the endpoint after the pipeline stopped.
const LIMITS: ListenerLimits = ListenerLimits {
    name: "admin endpoint",
    protocol: Protocol::Http1,
    max_connections: 256,
    header_timeout: Duration::from_secs(2),
    idle_timeout: Duration::from_secs(15),
    request_timeout: Duration::from_secs(30),
    shutdown_grace: Duration::from_millis(500),
    on_timeout: crate::listen::http_timeout,
};

/// What `/healthz` and `/status` read beyond the metrics: each pipeline's
/// buffer and its sink's last error.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The file logs to Loki; `None` with `loki.enabled = false`.
    pub logs: Option<LogSources>,
    /// The OTLP relay; `None` with `otlp.enabled = false`.
    pub relay: Option<RelaySources>,
}

/// The file-log pipeline as `/healthz` and `/status` see it.
#[derive(Clone, Debug)]
pub struct LogSources {
    /// The Loki sink's counters (its last error).
    pub loki: Arc<LokiCounters>,
    /// Whether the spool can append (`/healthz`).
    pub buffer: Arc<BufferHealth>,
    /// What the spool appends, for `GET /tap`.
    pub tap: Arc<crate::tap::Tap>,
}

/// The OTLP relay as `/healthz` and `/status` see it.
#[derive(Clone, Debug)]
pub struct RelaySources {
    /// The exporter's counters (its last error).
    pub exporter: Arc<OtlpCounters>,
    /// Whether the OTLP spool can append (`/healthz`).
    pub buffer: Arc<BufferHealth>,
}

impl Sources {
    /// What is wrong with the agent, if anything: each buffer that cannot write.
    fn problem(&self) -> Option<String> {
        let problems: Vec<String> = [
            self.logs.as_ref().map(|l| &l.buffer),
            self.relay.as_ref().map(|r| &r.buffer),
        ]
        .into_iter()
        .flatten()
        .filter_map(|b| b.problem())
        .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// The admin endpoint as started: its task, and the agent's metrics it
/// serves (to push them as well, [`AgentMetrics`]).
#[derive(Debug)]
pub struct Admin {
    /// `None` with `admin.listen = ""`.
    pub task: Option<JoinHandle<()>>,
    /// Every family `/metrics` serves (or would serve, with the endpoint off).
    pub metrics: AgentMetrics,
    /// What it serves, replaced when `run` reloads its configuration.
    pub served: Served,
}

/// What a running endpoint serves: replaced as a whole by [`Served::replace`]
/// when `run` restarts its pipelines on a new configuration, the listener,
/// its connections and their counters kept.
#[derive(Clone, Debug)]
pub struct Served {
    listen: String,
    /// The endpoint's connection counters; `None` with the endpoint off.
    connections: Option<Arc<ListenerCounters>>,
    current: Arc<RwLock<Arc<Endpoint>>>,
    /// The endpoint's own token (not a generation's): it ends the taps'
    /// answers, which go on across a reload.
    cancel: CancellationToken,
}

impl Served {
    /// `admin.listen` as the endpoint was started on.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    /// Serves `sources` and what the stages registered in `metrics` from now
    /// on, with the endpoint's own families (its connections, the process);
    /// returns every family, as [`start`] does.
    pub fn replace(&self, sources: Sources, mut metrics: Registry) -> AgentMetrics {
        if let Some(connections) = &self.connections {
            connections.clone().register(&mut metrics, "admin");
        }
        ProcessStats::register(&mut metrics, Box::new(ProcFs));
        let metrics = metrics.finish();
        let endpoint = Arc::new(Endpoint::new(sources, metrics.clone(), self.cancel.clone()));
        match self.current.write() {
            Ok(mut current) => *current = endpoint,
            Err(poisoned) => *poisoned.into_inner() = endpoint,
        }
        metrics
    }
}

/// Starts the endpoint on `listen` (`""`: disabled, no task; the metrics are
/// still read for the push), serving what the stages registered in `metrics`
/// and, registered here, the endpoint's own connections and the process
/// figures. Binding happens now, so a failure is reported at startup; see the
/// module docs for what a failure does. `listen` with port 0 binds a free
/// port, which is logged.
pub async fn start(
    listen: &str,
    origin: &str,
    sources: Sources,
    mut metrics: Registry,
    cancel: CancellationToken,
) -> Result<Admin, ConfigError> {
    if listen.is_empty() {
        tracing::info!("admin endpoint disabled (admin.listen = \"\")");
        ProcessStats::register(&mut metrics, Box::new(ProcFs));
        let metrics = metrics.finish();
        return Ok(Admin {
            task: None,
            served: Served {
                listen: String::new(),
                connections: None,
                current: Arc::new(RwLock::new(Arc::new(Endpoint::new(
                    sources,
                    metrics.clone(),
                    cancel.clone(),
                )))),
                cancel,
            },
            metrics,
        });
    }
    let addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Invalid {
        origin: origin.to_string(),
        line: None,
        key: "admin.listen".into(),
        message: format!(
            "expected an address such as \"127.0.0.1:9465\" or \"\" to disable, found {listen:?}"
        ),
    })?;
    let connections = Arc::new(ListenerCounters::default());
    connections.clone().register(&mut metrics, "admin");
    ProcessStats::register(&mut metrics, Box::new(ProcFs));
    let metrics = metrics.finish();
    let current = Arc::new(RwLock::new(Arc::new(Endpoint::new(
        sources,
        metrics.clone(),
        cancel.clone(),
    ))));
    let served = Served {
        listen: listen.to_string(),
        connections: Some(connections.clone()),
        current: current.clone(),
        cancel: cancel.clone(),
    };
    let router = router(current);
    let first = TcpListener::bind(addr).await;
    let task = tokio::spawn(async move {
        let listener = match first {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(
                    "cannot listen on admin.listen = \"{addr}\": {e}{}; logs are still shipped, \
                     but /metrics and /healthz are not served until it can (retrying every {}s); \
                     set admin.listen to a free address, or to \"\" to disable the endpoint",
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        " (another program, or another wisp-agent, holds the port)"
                    } else {
                        ""
                    },
                    BIND_RETRY.as_secs()
                );
                match retry_bind(addr, &cancel).await {
                    Some(l) => l,
                    None => return,
                }
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!("admin endpoint: http://{local}/metrics and http://{local}/healthz");
        crate::listen::serve(listener, router, LIMITS, connections, cancel).await;
    });
    Ok(Admin {
        task: Some(task),
        metrics,
        served,
    })
}

/// Tries to bind `addr` every [`BIND_RETRY`] until it works or `cancel` fires.
async fn retry_bind(addr: SocketAddr, cancel: &CancellationToken) -> Option<TcpListener> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(BIND_RETRY) => {}
        }
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => tracing::debug!("admin.listen = \"{addr}\" still cannot be bound: {e}"),
        }
    }
}

/// The endpoint's routes, serving what `current` holds at each request.
fn router(current: Arc<RwLock<Arc<Endpoint>>>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status::serve))
        .route("/tap", get(tap::serve))
        .with_state(current)
}

/// What the routes read: the buffers and last errors (for `/healthz` and
/// `/status`), the stages' readers (for `/status`) and the
/// `prometheus-client` registry that renders them (for `/metrics`).
#[derive(Debug)]
struct Endpoint {
    sources: Sources,
    metrics: AgentMetrics,
    page: prometheus_client::registry::Registry,
    /// Ends the taps' answers at shutdown (the endpoint's own token: a tap
    /// goes on across a reload).
    cancel: CancellationToken,
}

impl Endpoint {
    fn new(sources: Sources, metrics: AgentMetrics, cancel: CancellationToken) -> Self {
        Self {
            sources,
            page: metrics::registry(metrics.clone()),
            metrics,
            cancel,
        }
    }

    /// What a request reads now (one reload may replace it meanwhile).
    fn now(current: &RwLock<Arc<Endpoint>>) -> Arc<Endpoint> {
        match current.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

async fn serve_metrics(State(current): State<Arc<RwLock<Arc<Endpoint>>>>) -> Response {
    let endpoint = Endpoint::now(&current);
    let body = metrics::render(&endpoint.page);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

async fn healthz(State(current): State<Arc<RwLock<Arc<Endpoint>>>>) -> Response {
    let endpoint = Endpoint::now(&current);
    match endpoint.sources.problem() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("{p}\n")).into_response(),
    }
}
