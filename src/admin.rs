//! The admin endpoint (`[admin] listen`): `GET /metrics` in the Prometheus text
//! exposition format 0.0.4, and `GET /healthz`.
//!
//! Promises: the metrics are read from the counters the stages already keep (the
//! tailer's, the parser's, both spools' (told apart by a `spool` label), the
//! Loki sink's, the OTLP receiver's and exporter's), plus build, host and
//! process metrics read from `/proc` ([`crate::procfs`]); a scrape never blocks a stage.
//! Either pipeline may be off (`loki.enabled`, `otlp.enabled`): its metrics are
//! then absent, the rest is served. The
//! server is one task on the agent's runtime (no thread of its own) and stops with
//! the cancellation token. Other paths answer 404, other methods 405. At most 8
//! connections, each cut after 10 s without a request, 60 s idle, or 30 s for
//! one request ([`crate::listen`]), so no client holds the endpoint or the
//! shutdown.
//!
//! A listen address that does not parse is a configuration error (exit 2, from
//! validation). An address that parses but cannot be bound (the port is taken,
//! the address is not on this machine) does not stop the agent: an agent that
//! cannot serve its metrics should still ship logs. The error is logged once,
//! naming `admin.listen` and the fix, and the bind is retried every
//! [`BIND_RETRY`] in the background (quietly), so the endpoint comes up once
//! the port is free.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::discovery::Chosen;
use crate::listen::{ListenerCounters, ListenerLimits, Protocol};
use crate::parse::ParseCounters;
use crate::procfs::{Proc, ProcFs, ProcessStats};
use crate::sink::loki::sink::LokiCounters;
use crate::sink::otlp::OtlpCounters;
use crate::source::file::TailCounters;
use crate::source::otlp::ReceiverCounters;
use crate::spool::stage::BufferHealth;
use crate::spool::SpoolCounters;

/// How often a listen address that could not be bound is tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(5);

/// The endpoint's connection bound and timeouts (see [`crate::listen`]): a
/// scraper or two and a person with curl need a few connections; more wait in
/// the accept backlog. The grace is short: `run` waits a second for the
/// endpoint after the pipeline stopped.
const LIMITS: ListenerLimits = ListenerLimits {
    name: "admin endpoint",
    protocol: Protocol::Http1,
    max_connections: 8,
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    request_timeout: Duration::from_secs(30),
    shutdown_grace: Duration::from_millis(500),
    on_timeout: crate::listen::http_timeout,
};

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything `/metrics` and `/healthz` read: the stages' shared counters.
#[derive(Debug)]
pub struct Sources {
    /// The file logs to Loki; `None` with `loki.enabled = false`.
    pub logs: Option<LogSources>,
    /// The OTLP relay; `None` with `otlp.enabled = false`.
    pub relay: Option<RelaySources>,
    /// The host discovery chose, if any.
    pub host: watch::Receiver<Option<Chosen>>,
}

/// The counters of the file-log pipeline: tailer → parser → spool → Loki.
#[derive(Debug)]
pub struct LogSources {
    pub tail: Arc<TailCounters>,
    pub parse: Arc<ParseCounters>,
    pub spool: Arc<SpoolCounters>,
    pub loki: Arc<LokiCounters>,
    /// Whether the spool can append (`/healthz`).
    pub buffer: Arc<BufferHealth>,
    /// The spool's bound (its share of `buffer.max_bytes`), so a dashboard can
    /// show how full it is.
    pub spool_max_bytes: u64,
}

/// The counters of the OTLP relay: receiver → spool → exporter.
#[derive(Debug)]
pub struct RelaySources {
    pub receiver: Arc<ReceiverCounters>,
    pub exporter: Arc<OtlpCounters>,
    pub spool: Arc<SpoolCounters>,
    /// Whether the OTLP spool can append (`/healthz`).
    pub buffer: Arc<BufferHealth>,
    /// The OTLP spool's bound (its share of `buffer.max_bytes`).
    pub spool_max_bytes: u64,
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

/// Starts the endpoint on `listen` (`""`: disabled, returns `None`). Binding
/// happens now, so a failure is reported at startup; see the module docs for
/// what a failure does. `listen` with port 0 binds a free port, which is logged.
pub async fn start(
    listen: &str,
    origin: &str,
    sources: Sources,
    cancel: CancellationToken,
) -> Result<Option<JoinHandle<()>>, ConfigError> {
    if listen.is_empty() {
        tracing::info!("admin endpoint disabled (admin.listen = \"\")");
        return Ok(None);
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
    let router = router(Arc::new(sources)).layer(Extension(connections.clone()));
    let first = TcpListener::bind(addr).await;
    Ok(Some(tokio::spawn(async move {
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
    })))
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

fn router(sources: Arc<Sources>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(sources)
}

/// The endpoint's own connection counts come as an extension: `router` is
/// also served without them, in the unit tests.
async fn metrics(
    State(sources): State<Arc<Sources>>,
    own: Option<Extension<Arc<ListenerCounters>>>,
) -> Response {
    let body = render(&sources, own.as_ref().map(|o| o.0.as_ref()), &ProcFs);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn healthz(State(sources): State<Arc<Sources>>) -> Response {
    match sources.problem() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("{p}\n")).into_response(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Every metric family the endpoint serves: name, type, help. A family missing
/// here is still served (typed by its `_total` suffix), but a unit test fails.
const FAMILIES: &[(&str, Kind, &str)] = &[
    ("wisp_build_info", Kind::Gauge, "The agent's version, as a label; always 1."),
    ("wisp_host_info", Kind::Gauge, "The host discovery chose: the candidate as configured and its address; always 1, absent while none answers."),
    ("wisp_host_chosen", Kind::Gauge, "1 while discovery has a host to ship to, 0 while no candidate answered yet."),
    // Tailer.
    ("wisp_file_bytes_read_total", Kind::Counter, "Bytes read from tailed files."),
    ("wisp_file_lines_read_total", Kind::Counter, "Lines read from tailed files (a partial line flushed after a silence counts as one)."),
    ("wisp_file_lines_cut_total", Kind::Counter, "Lines longer than max_line_bytes, cut there."),
    ("wisp_file_invalid_utf8_lines_total", Kind::Counter, "Lines with invalid UTF-8, shipped with U+FFFD in its place."),
    ("wisp_file_escape_sequences_stripped_total", Kind::Counter, "Terminal escape sequences removed from lines."),
    ("wisp_file_controls_dropped_total", Kind::Counter, "Control characters removed from lines (NUL, BEL, DEL, stray C1)."),
    ("wisp_file_files_open", Kind::Gauge, "Files tailed now."),
    ("wisp_file_rotations_total", Kind::Counter, "Files renamed away from their path (rename-and-create rotation)."),
    ("wisp_file_truncations_total", Kind::Counter, "Files found truncated or rewritten (copytruncate)."),
    ("wisp_file_deletions_total", Kind::Counter, "Tailed files deleted."),
    ("wisp_file_checkpoint_write_errors_total", Kind::Counter, "Failed writes of the file positions (positions.json)."),
    // Parser.
    ("wisp_parse_lines_total", Kind::Counter, "Lines parsed and labelled."),
    ("wisp_parse_json_lines_total", Kind::Counter, "Lines read as a JSON object."),
    ("wisp_parse_logfmt_lines_total", Kind::Counter, "Lines read as logfmt."),
    ("wisp_parse_text_lines_total", Kind::Counter, "Lines read as plain text (parse misses included)."),
    ("wisp_parse_misses_total", Kind::Counter, "Lines meant to be JSON that were not a valid object, shipped as text."),
    ("wisp_parse_timestamps_out_of_window_total", Kind::Counter, "Lines whose own timestamp was too old or too far ahead: shipped at the read time."),
    ("wisp_parse_label_values_overflowed_total", Kind::Counter, "Promoted label values replaced by \"other\" by the cardinality guard."),
    // Spools: each sample has `spool="loki"` (file logs) or `spool="otlp"` (the relay).
    ("wisp_spool_records_appended_total", Kind::Counter, "Records written to the buffer."),
    ("wisp_spool_bytes_appended_total", Kind::Counter, "Bytes written to the buffer."),
    ("wisp_spool_bytes_buffered", Kind::Gauge, "Bytes in the buffer not yet acknowledged by the sink."),
    ("wisp_spool_max_bytes", Kind::Gauge, "The buffer's bound, its share of buffer.max_bytes; past it the oldest data is dropped."),
    ("wisp_spool_segments", Kind::Gauge, "Segment files of the buffer on disk."),
    ("wisp_spool_records_dropped_total", Kind::Counter, "Records dropped unshipped because the buffer reached buffer.max_bytes."),
    ("wisp_spool_bytes_dropped_total", Kind::Counter, "Bytes dropped unshipped because the buffer reached buffer.max_bytes."),
    ("wisp_spool_records_oversize_total", Kind::Counter, "Records too large for a buffer frame, dropped."),
    ("wisp_spool_records_corrupt_total", Kind::Counter, "Records skipped in the buffer because their checksum did not match."),
    ("wisp_spool_torn_tails_total", Kind::Counter, "Torn segment tails and unreadable segment files discarded at recovery."),
    ("wisp_spool_bytes_discarded_total", Kind::Counter, "Bytes of torn tails and unreadable segment files discarded."),
    ("wisp_spool_records_read_total", Kind::Counter, "Records read from the buffer by the sink (a retried push reads once)."),
    ("wisp_spool_fsyncs_total", Kind::Counter, "fsyncs of buffer segment files."),
    ("wisp_spool_fsync_seconds_total", Kind::Counter, "Time spent in fsyncs of buffer segment files."),
    // Loki sink.
    ("wisp_loki_records_shipped_total", Kind::Counter, "Log entries Loki took (2xx)."),
    ("wisp_loki_batches_shipped_total", Kind::Counter, "Pushes Loki took (2xx)."),
    ("wisp_loki_bytes_shipped_total", Kind::Counter, "Bytes of buffered records Loki took."),
    ("wisp_loki_retries_total", Kind::Counter, "Pushes retried (429, 5xx, timeouts, connection errors)."),
    ("wisp_loki_pushes_total", Kind::Counter, "Pushes Loki answered with a final status (taken or rejected)."),
    ("wisp_loki_push_seconds_total", Kind::Counter, "Time spent in pushes Loki answered with a final status."),
    ("wisp_loki_last_push_timestamp_seconds", Kind::Gauge, "When Loki last took a push, in seconds since the Unix epoch; 0 until the first."),
    ("wisp_loki_records_dropped_total", Kind::Counter, "Log entries dropped because Loki rejected them for good, by HTTP status (0: could not be encoded)."),
    ("wisp_loki_batches_dropped_total", Kind::Counter, "Pushes Loki rejected for good, by HTTP status."),
    ("wisp_loki_records_possibly_duplicated_total", Kind::Counter, "Log entries of a push in flight at the last stop sent again unchecked, because Loki could not be queried with the push's credentials: each may now be stored twice."),
    // OTLP receiver.
    ("wisp_otlp_receiver_requests_total", Kind::Counter, "OTLP requests received and made durable (answered success), by signal."),
    ("wisp_otlp_receiver_bytes_total", Kind::Counter, "Protobuf bytes of the OTLP requests made durable."),
    ("wisp_otlp_receiver_requests_invalid_total", Kind::Counter, "OTLP requests refused as malformed or unsupported (HTTP 400, 413, 415; gRPC INVALID_ARGUMENT)."),
    ("wisp_otlp_receiver_requests_refused_total", Kind::Counter, "OTLP requests the buffer could not take (HTTP 503, gRPC UNAVAILABLE), or that would have passed the 32 MiB bound on request bytes in flight (HTTP 503, gRPC RESOURCE_EXHAUSTED): the sender retries."),
    // Listeners.
    ("wisp_listener_connections", Kind::Gauge, "Connections open now, by listener (otlp_grpc, otlp_http, admin); at most 64 per OTLP listener and 8 for admin, more wait in the accept backlog."),
    ("wisp_listener_connections_closed_total", Kind::Counter, "Connections the agent closed, by listener and reason: slow_headers (headers not in within 10 s), no_request (none within 10 s of opening), idle (60 s), request_timeout (not answered within 30 s), shutdown_deadline."),
    // OTLP exporter.
    ("wisp_otlp_requests_shipped_total", Kind::Counter, "Received OTLP requests the collector took (several may travel in one export)."),
    ("wisp_otlp_exports_total", Kind::Counter, "Exports the collector took."),
    ("wisp_otlp_bytes_shipped_total", Kind::Counter, "Bytes of buffered OTLP requests the collector took."),
    ("wisp_otlp_retries_total", Kind::Counter, "Exports retried (UNAVAILABLE, 429, 5xx, timeouts, connection errors)."),
    ("wisp_otlp_requests_dropped_total", Kind::Counter, "Received OTLP requests dropped because the collector refused them for good, by cause."),
    ("wisp_otlp_items_rejected_total", Kind::Counter, "Spans, data points or log records the collector rejected in a partial success, by signal."),
    // Process.
    ("process_resident_memory_bytes", Kind::Gauge, "Resident memory size in bytes."),
    ("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size in bytes."),
    ("process_cpu_seconds_total", Kind::Counter, "Total user and system CPU time spent in seconds."),
    ("process_start_time_seconds", Kind::Gauge, "Start time of the process since the Unix epoch in seconds."),
    ("process_open_fds", Kind::Gauge, "Number of open file descriptors."),
    ("process_max_fds", Kind::Gauge, "Maximum number of open file descriptors (the soft limit)."),
];

fn describe(family: &str) -> (Kind, &'static str) {
    match FAMILIES.iter().find(|(name, _, _)| *name == family) {
        Some((_, kind, help)) => (*kind, help),
        None if family.ends_with("_total") => (Kind::Counter, "Undocumented counter."),
        None => (Kind::Gauge, "Undocumented gauge."),
    }
}

/// Writes the exposition text: `# HELP` and `# TYPE` once before the first
/// sample of each family.
#[derive(Default)]
struct Exposition {
    out: String,
    family: String,
}

impl Exposition {
    /// One sample; `name` may carry its labels already (`name{k="v"}`, values
    /// escaped), as the Loki sink's labelled counters do.
    fn sample(&mut self, name: &str, value: f64) {
        let family = name.split('{').next().unwrap_or(name);
        if family != self.family {
            let (kind, help) = describe(family);
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(self.out, "# HELP {family} {}", escape_help(help));
            let _ = writeln!(self.out, "# TYPE {family} {kind}");
            self.family = family.to_string();
        }
        let _ = writeln!(self.out, "{name} {}", format_value(value));
    }

    /// One sample with labels whose values still need escaping.
    fn labelled(&mut self, family: &str, labels: &[(&str, &str)], value: f64) {
        let mut name = String::from(family);
        name.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                name.push(',');
            }
            let _ = write!(name, "{k}=\"{}\"", escape_label_value(v));
        }
        name.push('}');
        self.sample(&name, value);
    }
}

/// A label value as the text format wants it: backslash, double quote and line
/// feed escaped.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Whole numbers without a fraction (counters are integers but for the
/// seconds); everything else as Go's `ParseFloat` reads it.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The whole `/metrics` page.
fn render(s: &Sources, admin: Option<&ListenerCounters>, proc: &dyn Proc) -> String {
    let mut e = Exposition::default();
    e.labelled(
        "wisp_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let chosen = s.host.borrow().clone();
    e.sample("wisp_host_chosen", if chosen.is_some() { 1.0 } else { 0.0 });
    if let Some(c) = chosen {
        e.labelled(
            "wisp_host_info",
            // A candidate is a name or an address as configured; should one be
            // written as a URL with credentials, they stay out of the scrape.
            &[
                ("candidate", &crate::config::redact_text(&c.name)),
                ("host", &c.address.to_string()),
            ],
            1.0,
        );
    }
    if let Some(logs) = &s.logs {
        for (name, v) in logs.tail.snapshot().metrics() {
            e.sample(name, v as f64);
        }
        for (name, v) in logs.parse.snapshot().metrics() {
            e.sample(name, v as f64);
        }
    }
    spool_metrics(&mut e, s);
    if let Some(logs) = &s.logs {
        for (name, v) in logs.loki.metrics() {
            e.sample(&name, v);
        }
    }
    if let Some(relay) = &s.relay {
        for (name, v) in relay.receiver.metrics() {
            e.sample(&name, v);
        }
        for (name, v) in relay.exporter.metrics() {
            e.sample(&name, v);
        }
    }
    listener_metrics(&mut e, s, admin);
    process_metrics(&mut e, proc);
    e.out
}

/// Each listener's connections: open now, and closed by the agent by reason.
fn listener_metrics(e: &mut Exposition, s: &Sources, admin: Option<&ListenerCounters>) {
    let mut listeners: Vec<(&str, &ListenerCounters)> = Vec::new();
    if let Some(relay) = &s.relay {
        listeners.push(("otlp_grpc", &relay.receiver.grpc_connections));
        listeners.push(("otlp_http", &relay.receiver.http_connections));
    }
    if let Some(a) = admin {
        listeners.push(("admin", a));
    }
    for (name, c) in &listeners {
        e.labelled(
            "wisp_listener_connections",
            &[("listener", name)],
            c.open() as f64,
        );
    }
    for (name, c) in &listeners {
        for (reason, n) in c.closed() {
            e.labelled(
                "wisp_listener_connections_closed_total",
                &[("listener", name), ("reason", reason)],
                n as f64,
            );
        }
    }
}

/// The `wisp_spool_*` families of both spools, each family's samples together
/// (`spool="loki"`, then `spool="otlp"`).
fn spool_metrics(e: &mut Exposition, s: &Sources) {
    let mut spools = Vec::new();
    if let Some(logs) = &s.logs {
        spools.push((
            "loki",
            logs.spool.snapshot().metrics(),
            logs.spool_max_bytes,
        ));
    }
    if let Some(relay) = &s.relay {
        spools.push((
            "otlp",
            relay.spool.snapshot().metrics(),
            relay.spool_max_bytes,
        ));
    }
    let Some((_, first, _)) = spools.first() else {
        return;
    };
    for (i, (name, _)) in first.iter().enumerate() {
        for (spool, metrics, _) in &spools {
            if let Some((_, v)) = metrics.get(i) {
                e.labelled(name, &[("spool", spool)], *v);
            }
        }
        if *name == "wisp_spool_bytes_buffered" {
            for (spool, _, max_bytes) in &spools {
                e.labelled(
                    "wisp_spool_max_bytes",
                    &[("spool", spool)],
                    *max_bytes as f64,
                );
            }
        }
    }
}

/// The standard `process_*` families, from [`ProcessStats`]: each left out
/// when its file could not be read.
fn process_metrics(e: &mut Exposition, proc: &dyn Proc) {
    let p = ProcessStats::read(proc);
    let samples = [
        (
            "process_resident_memory_bytes",
            p.resident_memory_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            p.virtual_memory_bytes.map(|v| v as f64),
        ),
        ("process_cpu_seconds_total", p.cpu_seconds),
        ("process_start_time_seconds", p.start_time_seconds),
        ("process_open_fds", p.open_fds.map(|v| v as f64)),
        ("process_max_fds", p.max_fds.map(|v| v as f64)),
    ];
    for (name, value) in samples {
        if let Some(v) = value {
            e.sample(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::Ordering;

    struct FakeProc;

    impl Proc for FakeProc {
        fn read(&self, path: &str) -> Option<String> {
            Some(
                match path {
                    "/proc/self/status" => {
                        "Name:\twisp-agent\nVmSize:\t  123456 kB\nVmRSS:\t    7040 kB\nThreads:\t5\n"
                    }
                    // A command name with a space and a parenthesis.
                    "/proc/self/stat" => {
                        "4242 (wisp) agent) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 5 0 12345 0 0"
                    }
                    "/proc/stat" => "cpu  1 2 3\nbtime 1764400000\nprocesses 42\n",
                    "/proc/self/limits" => {
                        "Limit                     Soft Limit           Hard Limit           Units\n\
                         Max open files            1024                 524288               files\n"
                    }
                    _ => return None,
                }
                .to_string(),
            )
        }

        fn open_fds(&self) -> Option<u64> {
            Some(17)
        }
    }

    fn sources(chosen: Option<Chosen>) -> Sources {
        let (_tx, host) = watch::channel(chosen);
        Sources {
            logs: Some(LogSources {
                tail: Arc::default(),
                parse: Arc::default(),
                spool: Arc::default(),
                loki: Arc::default(),
                buffer: Arc::new(BufferHealth::logs()),
                spool_max_bytes: 256 << 20,
            }),
            relay: Some(RelaySources {
                receiver: Arc::default(),
                exporter: Arc::default(),
                spool: Arc::default(),
                buffer: Arc::new(BufferHealth::otlp()),
                spool_max_bytes: 256 << 20,
            }),
            host,
        }
    }

    /// Parses the text format strictly: every sample line `name{labels} value`,
    /// a HELP and a TYPE before the first sample of each family, each family's
    /// samples together. Returns samples by their full `name{labels}`.
    fn parse_strictly(text: &str) -> HashMap<String, f64> {
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut helped = std::collections::HashSet::new();
        let mut done = std::collections::HashSet::new();
        let mut current = String::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("help text");
                assert!(helped.insert(name.to_string()), "second HELP for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(typed.insert(name.into(), kind.into()).is_none(), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else {
                let (name, value) = line.rsplit_once(' ').expect("name value");
                let family = name.split('{').next().unwrap();
                assert!(
                    family
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(typed.contains_key(family), "no TYPE for {line}");
                if family != current {
                    assert!(done.insert(family.to_string()), "{family} split: {line}");
                    current = family.to_string();
                }
                let v: f64 = value.parse().expect("a number");
                assert!(samples.insert(name.to_string(), v).is_none(), "{line}");
            }
        }
        samples
    }

    #[test]
    fn every_metric_has_help_and_a_type_and_the_page_parses() {
        let s = sources(Some(Chosen {
            name: "host.lima.internal".into(),
            address: IpAddr::V4(Ipv4Addr::new(192, 168, 5, 2)),
        }));
        let logs = s.logs.as_ref().unwrap();
        logs.loki.records_shipped.store(7, Ordering::Relaxed);
        logs.loki.records_dropped.lock().unwrap().insert(400, 3);
        logs.loki.batches_dropped.lock().unwrap().insert(400, 1);
        let relay = s.relay.as_ref().unwrap();
        relay.receiver.requests_accepted[0].store(4, Ordering::Relaxed);
        relay.exporter.requests_shipped.store(4, Ordering::Relaxed);
        relay
            .exporter
            .requests_dropped
            .lock()
            .unwrap()
            .insert("http_400".into(), 2);
        relay
            .exporter
            .items_rejected
            .lock()
            .unwrap()
            .insert("traces", 5);
        let text = render(&s, None, &FakeProc);
        let samples = parse_strictly(&text);
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(!line.contains("Undocumented"), "{line}");
        }
        assert_eq!(
            samples[&format!(
                "wisp_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )],
            1.0
        );
        assert_eq!(
            samples["wisp_host_info{candidate=\"host.lima.internal\",host=\"192.168.5.2\"}"],
            1.0
        );
        assert_eq!(samples["wisp_host_chosen"], 1.0);
        assert_eq!(samples["wisp_loki_records_shipped_total"], 7.0);
        assert_eq!(
            samples["wisp_loki_records_dropped_total{reason=\"400\"}"],
            3.0
        );
        assert_eq!(
            samples["wisp_spool_max_bytes{spool=\"loki\"}"],
            (256u64 << 20) as f64
        );
        assert_eq!(
            samples["wisp_spool_max_bytes{spool=\"otlp\"}"],
            (256u64 << 20) as f64
        );
        assert_eq!(
            samples["wisp_spool_records_appended_total{spool=\"otlp\"}"],
            0.0
        );
        assert_eq!(
            samples["wisp_otlp_receiver_requests_total{signal=\"traces\"}"],
            4.0
        );
        assert_eq!(samples["wisp_otlp_requests_shipped_total"], 4.0);
        assert_eq!(
            samples["wisp_otlp_requests_dropped_total{reason=\"http_400\"}"],
            2.0
        );
        // Every spool sample names its spool.
        for name in samples.keys().filter(|n| n.starts_with("wisp_spool_")) {
            assert!(
                name.ends_with("{spool=\"loki\"}") || name.ends_with("{spool=\"otlp\"}"),
                "{name}"
            );
        }
        assert_eq!(samples["process_resident_memory_bytes"], 7040.0 * 1024.0);
        assert_eq!(samples["process_virtual_memory_bytes"], 123456.0 * 1024.0);
        assert_eq!(samples["process_cpu_seconds_total"], 3.0);
        assert!((samples["process_start_time_seconds"] - 1764400123.45).abs() < 1e-3);
        assert_eq!(samples["process_open_fds"], 17.0);
        assert_eq!(samples["process_max_fds"], 1024.0);
        // Every family in the table is served (the dropped ones once Loki
        // rejected something).
        for (name, _, _) in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn either_pipeline_alone_serves_its_own_metrics_and_not_the_others() {
        let mut otlp_only = sources(None);
        otlp_only.logs = None;
        let text = render(&otlp_only, None, &FakeProc);
        let samples = parse_strictly(&text);
        assert!(
            !text.contains("wisp_file_") && !text.contains("wisp_loki_"),
            "{text}"
        );
        assert!(!text.contains("spool=\"loki\""), "{text}");
        assert_eq!(samples["wisp_spool_segments{spool=\"otlp\"}"], 0.0);
        assert_eq!(samples["wisp_otlp_exports_total"], 0.0);

        let mut loki_only = sources(None);
        loki_only.relay = None;
        let text = render(&loki_only, None, &FakeProc);
        let samples = parse_strictly(&text);
        assert!(!text.contains("wisp_otlp_"), "{text}");
        assert!(!text.contains("spool=\"otlp\""), "{text}");
        assert_eq!(samples["wisp_spool_segments{spool=\"loki\"}"], 0.0);
        assert_eq!(samples["wisp_file_lines_read_total"], 0.0);
    }

    #[test]
    fn either_buffer_failing_is_a_problem_naming_it() {
        let s = sources(None);
        assert_eq!(s.problem(), None);
        let relay = s.relay.as_ref().unwrap();
        relay
            .buffer
            .set(Some("no space left on device (os error 28)".into()));
        let p = s.problem().unwrap();
        assert!(
            p.contains("otlp buffer") && p.contains("os error 28"),
            "{p}"
        );
        let logs = s.logs.as_ref().unwrap();
        logs.buffer.set(Some("an i/o error".into()));
        let p = s.problem().unwrap();
        assert!(p.contains("log buffer") && p.contains("otlp buffer"), "{p}");
        relay.buffer.set(None);
        logs.buffer.set(None);
        assert_eq!(s.problem(), None);
    }

    #[test]
    fn no_host_chosen_is_a_zero_and_no_info_sample() {
        let text = render(&sources(None), None, &FakeProc);
        let samples = parse_strictly(&text);
        assert_eq!(samples["wisp_host_chosen"], 0.0);
        assert!(!text.contains("wisp_host_info{"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.labelled("wisp_host_info", &[("candidate", "a\\b\"c\nd")], 1.0);
        assert!(
            e.out
                .ends_with("wisp_host_info{candidate=\"a\\\\b\\\"c\\nd\"} 1\n"),
            "{}",
            e.out
        );
    }

    #[test]
    fn values_print_as_prometheus_reads_them() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(12345678.0), "12345678");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1764400123.45), "1764400123.45");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn unreadable_proc_files_leave_their_metrics_out() {
        struct NoProc;
        impl Proc for NoProc {
            fn read(&self, _: &str) -> Option<String> {
                None
            }
            fn open_fds(&self) -> Option<u64> {
                None
            }
        }
        let text = render(&sources(None), None, &NoProc);
        parse_strictly(&text);
        assert!(!text.contains("process_"), "{text}");
    }

    #[tokio::test]
    async fn healthz_answers_503_with_the_reason_while_the_buffer_cannot_write() {
        let s = sources(None);
        let health = s.logs.as_ref().unwrap().buffer.clone();
        let app = router(Arc::new(s));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/healthz");
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok\n");

        health.set(Some("no space left on device (os error 28)".into()));
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body = r.text().await.unwrap();
        assert!(body.contains("no space left on device"), "{body}");

        health.set(None);
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
