//! The local OTLP receiver: OTLP/gRPC (the three export services) and OTLP/HTTP
//! (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON) on loopback,
//! for programs in the VM, and the stage that makes what they send durable.
//!
//! Promises:
//! - **Answered success only once durable.** A request is answered success after
//!   its payload was appended to the OTLP spool and fsynced; a program that got
//!   its success never needs to send again, and the agent may then crash. If the
//!   spool cannot take it (a full disk) the answer is gRPC `UNAVAILABLE` / HTTP
//!   503 with `Retry-After`, which OTLP exporters retry.
//! - **Relayed as sent.** The payload stored is the request's protobuf encoding:
//!   OTLP/HTTP protobuf bodies byte for byte, JSON bodies converted to protobuf
//!   once, gRPC requests re-encoded from the message tonic decoded. A request is
//!   decoded only to check it is well formed (a bad one would be rejected by the
//!   collector later, after its sender was told it was delivered).
//! - **Bad input is an answer, not a crash.** A malformed body is answered 400
//!   (gRPC `INVALID_ARGUMENT`) with the decoder's reason; an unsupported content
//!   type or encoding 415. Requests with no data are answered success and not
//!   stored.
//! - **gzip taken.** `Content-Encoding: gzip` bodies (OTLP/HTTP) and gzip gRPC
//!   messages (`grpc-encoding: gzip`) are decompressed; what is stored is the
//!   uncompressed protobuf, as for any other request. A corrupt gzip body is
//!   answered 400 with the reason.
//! - **Bounded.** Bodies up to [`MAX_REQUEST_BYTES`], compressed and
//!   decompressed alike: decompression stops there, so a gzip bomb costs at
//!   most that much memory and is answered 413 (gRPC `RESOURCE_EXHAUSTED`); at most
//!   [`PENDING_REQUESTS`] requests wait for the spool, further ones wait in their
//!   connection (backpressure to the program, never unbounded memory).
//! - **Bounded across connections.** The request bytes held at once, over both
//!   listeners, are at most [`BODY_BYTES_IN_FLIGHT`]: each body's bytes as they
//!   arrive, what a gzip body inflates to, and what a gRPC request re-encodes to
//!   past its wire size, until the request is answered. A request that would
//!   pass it is answered at once HTTP 503 with `Retry-After: 1` (gRPC
//!   `RESOURCE_EXHAUSTED` with a `RetryInfo` of one second), which OTLP
//!   exporters retry; it is counted as refused. Each listener takes at most
//!   [`MAX_CONNECTIONS`] connections (more wait in the accept backlog), a
//!   request must start within 10 s of a connection's opening (HTTP/1: of its
//!   first byte), an idle connection is closed after 60 s and a request not
//!   answered within 30 s (a body trickling in) is cut ([`crate::listen`]).
//! - **Shutdown does not wait on clients.** When the cancellation token fires the
//!   listeners stop accepting; requests in flight get [`SHUTDOWN_GRACE`] to be
//!   answered, then their connections are dropped.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

use crate::config::ReceiverConfig;
use crate::listen::{ListenerCounters, ListenerLimits, Protocol};
use crate::record::{OtlpPayload, OtlpSignal};
use crate::spool::SpoolWriter;

/// The largest request body (or gRPC message) taken, compressed or not, and
/// the most a compressed one may decompress to.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Requests waiting for the spool at most; the bound on memory held for them.
pub const PENDING_REQUESTS: usize = 64;

/// The request bytes both listeners hold at once, at most: two requests of the
/// largest size, or one gzip body of it with what it inflates to. A greedy
/// client gets no more than this; others are answered 503 / `RESOURCE_EXHAUSTED`
/// and retry.
pub const BODY_BYTES_IN_FLIGHT: usize = 2 * MAX_REQUEST_BYTES;

/// Connections each listener (gRPC, HTTP) takes at once; more wait in the
/// kernel's accept backlog until one closes.
pub const MAX_CONNECTIONS: usize = 64;

/// After the cancellation token fired, how long requests in flight get to be
/// answered before their connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

const HTTP_LIMITS: ListenerLimits = ListenerLimits {
    name: "otlp http receiver",
    protocol: Protocol::Http1,
    max_connections: MAX_CONNECTIONS,
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    request_timeout: Duration::from_secs(30),
    shutdown_grace: SHUTDOWN_GRACE,
    on_timeout: crate::listen::http_timeout,
};

const GRPC_LIMITS: ListenerLimits = ListenerLimits {
    name: "otlp grpc receiver",
    protocol: Protocol::Http2,
    on_timeout: grpc_timeout,
    ..HTTP_LIMITS
};

fn grpc_timeout(limit: Duration) -> Response {
    tonic::Status::deadline_exceeded(format!(
        "the request was not received within {limit:?}: send it faster, or smaller"
    ))
    .into_http::<Body>()
}

/// The bytes of requests in flight, bounded by [`BODY_BYTES_IN_FLIGHT`]. Cheap
/// to clone; every clone shares the bound.
#[derive(Clone)]
pub(crate) struct BodyBudget(Arc<Semaphore>);

/// Bytes taken from a [`BodyBudget`]; given back when dropped.
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(Semaphore::new(bytes)))
    }

    /// Takes `bytes` more into `held`; false (and nothing taken) when the
    /// budget has not that much left.
    pub(crate) fn take(&self, held: &mut Held, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.0.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match &mut held.0 {
                    Some(h) => h.merge(p),
                    None => held.0 = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Held {
    pub(crate) fn none() -> Held {
        Held(None)
    }
}

/// The gRPC request's size on the wire, which its [`Held`] bytes already cover.
#[derive(Clone, Copy)]
struct WireBytes(usize);

/// The spool appends at most this many requests, and about this many bytes
/// (at least one request), with one fsync.
const GROUP_COMMIT_REQUESTS: usize = 256;
const GROUP_COMMIT_BYTES: usize = 4 * 1024 * 1024;

/// The receiver's counters (served by the admin endpoint).
#[derive(Debug, Default)]
pub struct ReceiverCounters {
    /// Requests made durable, per signal (traces, metrics, logs).
    pub requests_accepted: [AtomicU64; 3],
    pub bytes_accepted: AtomicU64,
    /// Requests answered 400 / 413 / 415 / `INVALID_ARGUMENT` (and gRPC
    /// `RESOURCE_EXHAUSTED` for a message past [`MAX_REQUEST_BYTES`] on the wire).
    pub requests_invalid: AtomicU64,
    /// Requests the spool could not take (answered 503 / `UNAVAILABLE`), or
    /// that would have passed [`BODY_BYTES_IN_FLIGHT`] (503 /
    /// `RESOURCE_EXHAUSTED`).
    pub requests_refused: AtomicU64,
    /// The HTTP and gRPC listeners' connections (open, closed by the agent).
    pub http_connections: Arc<ListenerCounters>,
    pub grpc_connections: Arc<ListenerCounters>,
    /// Why the OTLP spool cannot append (a full disk, an I/O error), while it
    /// cannot: the admin endpoint's `/healthz` reports it.
    buffer_error: Mutex<Option<String>>,
}

fn signal_index(s: OtlpSignal) -> usize {
    match s {
        OtlpSignal::Traces => 0,
        OtlpSignal::Metrics => 1,
        OtlpSignal::Logs => 2,
    }
}

impl ReceiverCounters {
    /// Why the OTLP spool cannot take requests now, if it cannot.
    pub fn buffer_error(&self) -> Option<String> {
        self.buffer_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_buffer_error(&self, error: Option<String>) {
        *self.buffer_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// `(name, value)` pairs in the admin endpoint's naming.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for s in OtlpSignal::ALL {
            out.push((
                format!(
                    "wisp_otlp_receiver_requests_total{{signal=\"{}\"}}",
                    s.as_str()
                ),
                self.requests_accepted[signal_index(s)].load(Ordering::Relaxed) as f64,
            ));
        }
        out.push((
            "wisp_otlp_receiver_bytes_total".into(),
            self.bytes_accepted.load(Ordering::Relaxed) as f64,
        ));
        out.push((
            "wisp_otlp_receiver_requests_invalid_total".into(),
            self.requests_invalid.load(Ordering::Relaxed) as f64,
        ));
        out.push((
            "wisp_otlp_receiver_requests_refused_total".into(),
            self.requests_refused.load(Ordering::Relaxed) as f64,
        ));
        out
    }
}

struct Pending {
    payload: OtlpPayload,
    done: oneshot::Sender<Result<(), String>>,
}

/// Hands requests to the OTLP spool and waits until they are durable. Cheap to
/// clone; the spool stage ends once every clone is gone.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Pending>,
    counters: Arc<ReceiverCounters>,
}

impl Intake {
    /// Starts the spool stage for `writer`. It appends requests in arrival order,
    /// a group of whatever queued meanwhile per append (one fsync per group), and
    /// ends when every [`Intake`] clone is dropped.
    pub fn start(
        writer: SpoolWriter<OtlpPayload>,
        counters: Arc<ReceiverCounters>,
    ) -> (Intake, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(PENDING_REQUESTS);
        let task = tokio::spawn(write_loop(rx, writer, counters.clone()));
        (Intake { tx, counters }, task)
    }

    /// The same spool, for the agent's own telemetry (host metrics, `exec`
    /// spans): what goes through it is not counted as received from programs.
    pub fn for_own_telemetry(&self) -> Intake {
        Intake {
            tx: self.tx.clone(),
            counters: Arc::default(),
        }
    }

    /// Stores one request; `Ok` once it is in the spool and fsynced.
    pub async fn store(&self, payload: OtlpPayload) -> Result<(), String> {
        let bytes = payload.body.len() as u64;
        let signal = payload.signal;
        let (done, answer) = oneshot::channel();
        let result = match self.tx.send(Pending { payload, done }).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err("the agent is stopping".to_string())),
            Err(_) => Err("the agent is stopping".to_string()),
        };
        match &result {
            Ok(()) => {
                self.counters.requests_accepted[signal_index(signal)]
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_accepted
                    .fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters
                    .requests_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Pending>,
    writer: SpoolWriter<OtlpPayload>,
    counters: Arc<ReceiverCounters>,
) {
    let mut writer = Some(writer);
    let mut failing = false;
    loop {
        let first = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(_) => {
                // A second without requests: do not keep a burst's buffer at idle.
                if let Some(w) = writer.as_mut() {
                    w.release_memory();
                }
                continue;
            }
        };
        let mut bytes = first.payload.body.len();
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT_REQUESTS && bytes < GROUP_COMMIT_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.body.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(mut w) = writer.take() else { break };
        let payloads: Vec<OtlpPayload> = group.iter().map(|p| p.payload.clone()).collect();
        // Appending blocks on the disk: a blocking-pool thread, which goes away
        // again when idle (no thread of its own for this stage).
        let appended = tokio::task::spawn_blocking(move || {
            let r = w.append(&payloads);
            (w, r)
        })
        .await;
        let result = match appended {
            Ok((w, r)) => {
                writer = Some(w);
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("the otlp buffer stopped: {e}")),
        };
        match &result {
            Ok(()) if failing => {
                tracing::info!("the otlp buffer takes requests again");
                counters.set_buffer_error(None);
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::error!(
                    "cannot buffer {} otlp request(s): {e}; senders are told to retry",
                    group.len()
                );
                counters.set_buffer_error(Some(e.clone()));
                failing = true;
            }
            Err(_) => {}
        }
        for p in group {
            let _ = p.done.send(result.clone());
        }
        if writer.is_none() {
            break;
        }
    }
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error(
        "cannot listen on {addr} for OTLP/{proto} ({key}): {source}; \
         another program (a local OpenTelemetry collector?) may hold the port: \
         set {key} to a free address, or \"\" to disable it"
    )]
    Bind {
        key: &'static str,
        proto: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// The receivers, listening; [`Receivers::join`] waits until they stopped.
pub struct Receivers {
    tasks: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl Receivers {
    /// Binds the configured listeners (an empty address disables one) and serves
    /// them until `cancel` fires. Each bound address is logged as
    /// `otlp receiver (grpc) listening on 127.0.0.1:4317`.
    pub async fn start(
        config: &ReceiverConfig,
        intake: Intake,
        cancel: CancellationToken,
    ) -> Result<Receivers, ReceiverError> {
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        let relay = Relay {
            intake,
            budget: BodyBudget::new(BODY_BYTES_IN_FLIGHT),
        };
        if !config.grpc.is_empty() {
            let listener = bind(&config.grpc, "receiver.grpc", "gRPC").await?;
            addrs.extend(listener.local_addr().ok());
            // tonic's services on the agent's own serve loop (crate::listen):
            // tonic's server has no connection bound nor header timeout.
            let router = tonic::service::Routes::new(
                TraceServiceServer::new(relay.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                MetricsServiceServer::new(relay.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                LogsServiceServer::new(relay.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(
                relay.clone(),
                grpc_within_budget,
            ));
            tasks.push(tokio::spawn(crate::listen::serve(
                listener,
                router,
                GRPC_LIMITS,
                relay.intake.counters.grpc_connections.clone(),
                cancel.clone(),
            )));
        }
        if !config.http.is_empty() {
            let listener = bind(&config.http, "receiver.http", "HTTP").await?;
            addrs.extend(listener.local_addr().ok());
            let app = Router::new()
                .route("/v1/traces", post(http_traces))
                .route("/v1/metrics", post(http_metrics))
                .route("/v1/logs", post(http_logs))
                .with_state(relay.clone());
            tasks.push(tokio::spawn(crate::listen::serve(
                listener,
                app,
                HTTP_LIMITS,
                relay.intake.counters.http_connections.clone(),
                cancel.clone(),
            )));
        }
        Ok(Receivers { tasks, addrs })
    }

    /// The addresses bound (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Waits until every listener stopped (after `cancel`: requests in flight are
    /// answered) and let go of its [`Intake`]; after `limit`, stops them outright
    /// (a client holding a request open must not hold up the shutdown).
    pub async fn join(self, limit: Duration) {
        for mut t in self.tasks {
            if tokio::time::timeout(limit, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }
}

async fn bind(
    addr: &str,
    key: &'static str,
    proto: &'static str,
) -> Result<TcpListener, ReceiverError> {
    let err = |source| ReceiverError::Bind {
        key,
        proto,
        addr: addr.to_string(),
        source,
    };
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an address such as 127.0.0.1:4317",
        ))
    })?;
    let listener = TcpListener::bind(parsed).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    let name = if key == "receiver.grpc" {
        "grpc"
    } else {
        "http"
    };
    tracing::info!("otlp receiver ({name}) listening on {local}");
    Ok(listener)
}

/// The services behind both listeners.
#[derive(Clone)]
struct Relay {
    intake: Intake,
    budget: BodyBudget,
}

impl Relay {
    fn invalid(&self) {
        self.intake
            .counters
            .requests_invalid
            .fetch_add(1, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.intake
            .counters
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// `wire`: what the request's bytes on the wire took of the budget; the
    /// re-encoded body takes only what it adds (a gzip request inflated).
    async fn store_grpc(
        &self,
        signal: OtlpSignal,
        wire: Option<WireBytes>,
        body: Vec<u8>,
    ) -> Result<(), tonic::Status> {
        if body.is_empty() {
            return Ok(());
        }
        let mut held = Held::none();
        let more = body.len().saturating_sub(wire.map_or(0, |w| w.0));
        if !self.budget.take(&mut held, more) {
            self.refused();
            return Err(busy_status());
        }
        self.intake
            .store(OtlpPayload {
                signal,
                body: body.into(),
            })
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot buffer the request: {e}")))?;
        drop(held);
        Ok(())
    }
}

#[tonic::async_trait]
impl TraceService for Relay {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let wire = request.extensions().get::<WireBytes>().copied();
        self.store_grpc(
            OtlpSignal::Traces,
            wire,
            request.into_inner().encode_to_vec(),
        )
        .await?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Relay {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let wire = request.extensions().get::<WireBytes>().copied();
        self.store_grpc(
            OtlpSignal::Metrics,
            wire,
            request.into_inner().encode_to_vec(),
        )
        .await?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Relay {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let wire = request.extensions().get::<WireBytes>().copied();
        self.store_grpc(OtlpSignal::Logs, wire, request.into_inner().encode_to_vec())
            .await?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

async fn http_traces(State(r): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    http_export(&r, OtlpSignal::Traces, &headers, body).await
}

async fn http_metrics(State(r): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    http_export(&r, OtlpSignal::Metrics, &headers, body).await
}

async fn http_logs(State(r): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    http_export(&r, OtlpSignal::Logs, &headers, body).await
}

/// Why a request body was not read to its end.
#[derive(Debug, thiserror::Error)]
enum BodyRefusal {
    #[error(
        "the request body is larger than {limit} bytes, the most this receiver takes: \
         send smaller batches (e.g. a lower max export batch size in the SDK)"
    )]
    TooLarge { limit: usize },
    #[error(
        "the receiver's requests in flight are at their bound ({BODY_BYTES_IN_FLIGHT} bytes): retry shortly"
    )]
    Busy,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// Reads `body` to its end, at most `limit` bytes, taking each piece from the
/// budget as it arrives: a slow body holds only what it sent.
async fn read_body(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    budget: &BodyBudget,
    held: &mut Held,
) -> Result<Bytes, BodyRefusal> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyRefusal::TooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut out: Vec<u8> = Vec::new();
    let mut first: Option<Bytes> = None;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| BodyRefusal::Read(e.to_string()))?;
        let len = out.len() + first.as_ref().map_or(0, Bytes::len) + piece.len();
        if len > limit {
            return Err(BodyRefusal::TooLarge { limit });
        }
        if !budget.take(held, piece.len()) {
            return Err(BodyRefusal::Busy);
        }
        // A body in one piece is kept as it came, without a copy.
        match first.take() {
            None if out.is_empty() => first = Some(piece),
            None => out.extend_from_slice(&piece),
            Some(f) => {
                let want = declared.map_or(len, |d| d as usize).clamp(len, limit);
                out.reserve_exact(want);
                out.extend_from_slice(&f);
                out.extend_from_slice(&piece);
            }
        }
    }
    Ok(first.unwrap_or_else(|| out.into()))
}

fn busy_response(message: String) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` of one second: the OTLP
/// specification's throttling answer, which exporters retry after the delay.
fn busy_status() -> tonic::Status {
    let retry = rpc::RetryInfo {
        retry_delay: Some(rpc::Duration {
            seconds: 1,
            nanos: 0,
        }),
    };
    let message = BodyRefusal::Busy.to_string();
    let details = rpc::Status {
        code: tonic::Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![rpc::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(
        tonic::Code::ResourceExhausted,
        message,
        details.encode_to_vec().into(),
    )
}

/// The few `google.rpc` messages a throttling answer carries, by hand (as
/// `sink/loki/push_proto.rs`): no `protoc`, no extra crate.
mod rpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// Reads a gRPC request's body within the budget before tonic decodes it (tonic
/// would buffer each message whole, 16 MiB per stream, with no bound across
/// streams), and holds its bytes until the request is answered.
async fn grpc_within_budget(State(relay): State<Relay>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let mut held = Held::none();
    // One message and its 5-byte frame header.
    let limit = MAX_REQUEST_BYTES + 5;
    let status = match read_body(body, None, limit, &relay.budget, &mut held).await {
        Ok(bytes) => {
            parts.extensions.insert(WireBytes(bytes.len()));
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(held);
            return response;
        }
        Err(BodyRefusal::Busy) => {
            relay.refused();
            busy_status()
        }
        Err(e @ BodyRefusal::TooLarge { .. }) => {
            relay.invalid();
            tonic::Status::resource_exhausted(e.to_string())
        }
        Err(e @ BodyRefusal::Read(_)) => tonic::Status::cancelled(e.to_string()),
    };
    status.into_http::<Body>()
}

/// How an OTLP/HTTP body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyEncoding {
    Protobuf,
    Json,
}

async fn http_export(
    relay: &Relay,
    signal: OtlpSignal,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "application/x-protobuf" | "application/protobuf" => BodyEncoding::Protobuf,
        "application/json" => BodyEncoding::Json,
        other => {
            relay.invalid();
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {other:?}: send application/x-protobuf or application/json"
                ),
            )
                .into_response();
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Held until the request is answered: its bytes count against the budget
    // while they are in memory.
    let mut held = Held::none();
    let body = match read_body(body, declared, MAX_REQUEST_BYTES, &relay.budget, &mut held).await {
        Ok(b) => b,
        Err(BodyRefusal::Busy) => {
            relay.refused();
            return busy_response(BodyRefusal::Busy.to_string());
        }
        Err(e @ BodyRefusal::TooLarge { .. }) => {
            relay.invalid();
            return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
        Err(e @ BodyRefusal::Read(_)) => {
            relay.invalid();
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let decoded = decode_content(content_encoding, body, MAX_REQUEST_BYTES, &mut |more| {
        relay.budget.take(&mut held, more)
    });
    let body = match decoded {
        Ok(b) => b,
        Err(ContentRefusal::Busy) => {
            relay.refused();
            return busy_response(ContentRefusal::Busy.to_string());
        }
        Err(refusal) => {
            relay.invalid();
            let status = match refusal {
                ContentRefusal::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ContentRefusal::Corrupt(_) => StatusCode::BAD_REQUEST,
                ContentRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ContentRefusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            };
            return (status, refusal.to_string()).into_response();
        }
    };
    let protobuf = match to_protobuf(signal, encoding, body) {
        Ok(p) => p,
        Err(reason) => {
            relay.invalid();
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot decode the {} export: {reason}", signal.as_str()),
            )
                .into_response();
        }
    };
    if !protobuf.is_empty() {
        if let Err(e) = relay
            .intake
            .store(OtlpPayload {
                signal,
                body: protobuf,
            })
            .await
        {
            return busy_response(format!("cannot buffer the request: {e}"));
        }
    }
    drop(held);
    // The full-success response has no fields set: `{}` in JSON, no bytes in
    // protobuf.
    match encoding {
        BodyEncoding::Json => ([(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
        BodyEncoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::<u8>::new(),
        )
            .into_response(),
    }
}

/// Why a body's `Content-Encoding` could not be undone.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ContentRefusal {
    #[error(
        "Content-Encoding {0:?} is not supported by this receiver: send the body as gzip or uncompressed"
    )]
    Unsupported(String),
    #[error("cannot decompress the gzip body: {0}")]
    Corrupt(String),
    #[error(
        "the gzip body decompresses to more than {limit} bytes, the most this receiver takes: \
         send smaller batches (e.g. a lower max export batch size in the SDK)"
    )]
    TooLarge { limit: usize },
    #[error(
        "the receiver's requests in flight would pass their bound ({BODY_BYTES_IN_FLIGHT} bytes) \
         with this body inflated: retry shortly"
    )]
    Busy,
}

/// Undoes the body's `Content-Encoding` (none, `identity` or `gzip`). A gzip
/// body is inflated at most to `limit` bytes: memory stays bounded whatever the
/// body claims to hold (a gzip bomb is refused once past it, not read to the end).
/// Each allocation for the inflated body is first asked of `room` (the
/// receivers' shared budget); when it says no, the body is refused
/// [`ContentRefusal::Busy`].
pub(crate) fn decode_content(
    content_encoding: Option<&str>,
    body: Bytes,
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, ContentRefusal> {
    let encoding = content_encoding.unwrap_or("").trim();
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    if !encoding.eq_ignore_ascii_case("gzip") && !encoding.eq_ignore_ascii_case("x-gzip") {
        return Err(ContentRefusal::Unsupported(encoding.to_string()));
    }
    if body.is_empty() {
        return Ok(body);
    }
    // Several gzip members one after the other are one stream, as `gunzip` and
    // Go's reader take them.
    let mut decoder = flate2::read::MultiGzDecoder::new(&body[..]);
    // The last member's trailer says how long it inflates to (mod 2^32): an
    // honest sender's body lands in one allocation of its size. The claim is
    // not trusted: growth past it doubles, but never past `limit`.
    let claimed = match body.len().checked_sub(4).and_then(|at| body.get(at..)) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => 0,
    };
    let first = claimed.min(limit);
    if !room(first) {
        return Err(ContentRefusal::Busy);
    }
    let mut out: Vec<u8> = Vec::with_capacity(first);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ContentRefusal::Corrupt(e.to_string())),
        };
        let len = out.len() + n;
        if len > limit {
            return Err(ContentRefusal::TooLarge { limit });
        }
        if len > out.capacity() {
            let grown = (out.capacity() * 2).max(len).min(limit);
            if !room(grown - out.capacity()) {
                return Err(ContentRefusal::Busy);
            }
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out.into())
}

/// Checks an OTLP/HTTP body and returns its protobuf encoding: protobuf bodies as
/// they are, JSON bodies converted.
pub(crate) fn to_protobuf(
    signal: OtlpSignal,
    encoding: BodyEncoding,
    body: Bytes,
) -> Result<Bytes, String> {
    match signal {
        OtlpSignal::Traces => convert::<ExportTraceServiceRequest>(encoding, body),
        OtlpSignal::Metrics => convert::<ExportMetricsServiceRequest>(encoding, body),
        OtlpSignal::Logs => convert::<ExportLogsServiceRequest>(encoding, body),
    }
}

fn convert<M>(encoding: BodyEncoding, body: Bytes) -> Result<Bytes, String>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        BodyEncoding::Protobuf => {
            M::decode(body.clone()).map_err(|e| e.to_string())?;
            Ok(body)
        }
        BodyEncoding::Json => {
            let m: M = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok(m.encode_to_vec().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_bodies_are_kept_byte_for_byte() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![Default::default()],
        };
        let bytes = Bytes::from(req.encode_to_vec());
        let out = to_protobuf(OtlpSignal::Traces, BodyEncoding::Protobuf, bytes.clone()).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn json_bodies_become_protobuf() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        let out = to_protobuf(
            OtlpSignal::Traces,
            BodyEncoding::Json,
            Bytes::from_static(json),
        )
        .unwrap();
        let req = ExportTraceServiceRequest::decode(out).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "op");
        assert_eq!(span.trace_id.len(), 16);
    }

    fn gzip(data: &[u8]) -> Bytes {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn gzip_bodies_are_inflated_and_plain_ones_kept() {
        let data = b"hello otlp".repeat(1000);
        assert_eq!(
            decode_content(Some("gzip"), gzip(&data), 1 << 20, &mut |_| true).unwrap(),
            Bytes::from(data.clone())
        );
        assert_eq!(
            decode_content(Some(" GZIP "), gzip(&data), 1 << 20, &mut |_| true).unwrap(),
            Bytes::from(data.clone())
        );
        // Two members, one stream.
        let mut two = gzip(b"abc").to_vec();
        two.extend_from_slice(&gzip(b"def"));
        assert_eq!(
            decode_content(Some("gzip"), two.into(), 100, &mut |_| true).unwrap(),
            Bytes::from_static(b"abcdef")
        );
        for none in [None, Some(""), Some("identity")] {
            assert_eq!(
                decode_content(none, Bytes::from_static(b"x"), 100, &mut |_| true).unwrap(),
                Bytes::from_static(b"x")
            );
        }
    }

    #[test]
    fn a_body_that_inflates_past_the_limit_is_refused_at_the_limit() {
        let data = vec![0u8; 1 << 20];
        // Exactly at the limit is taken, one byte more is not.
        assert_eq!(
            decode_content(Some("gzip"), gzip(&data), 1 << 20, &mut |_| true)
                .unwrap()
                .len(),
            1 << 20
        );
        assert_eq!(
            decode_content(Some("gzip"), gzip(&data), (1 << 20) - 1, &mut |_| true),
            Err(ContentRefusal::TooLarge {
                limit: (1 << 20) - 1
            })
        );
    }

    #[test]
    fn corrupt_gzip_and_unknown_encodings_are_refused_with_a_reason() {
        let mut bad = gzip(b"some data to compress, some data to compress").to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let truncated = gzip(b"abcdef")[..8].to_vec();
        for body in [bad, truncated, b"not gzip at all".to_vec()] {
            assert!(
                matches!(
                    decode_content(Some("gzip"), body.clone().into(), 1 << 20, &mut |_| true),
                    Err(ContentRefusal::Corrupt(_))
                ),
                "{body:?}"
            );
        }
        let err =
            decode_content(Some("br"), Bytes::from_static(b"x"), 100, &mut |_| true).unwrap_err();
        assert_eq!(err, ContentRefusal::Unsupported("br".into()));
        assert!(err.to_string().contains("gzip or uncompressed"), "{err}");
    }

    #[test]
    fn malformed_bodies_are_an_error_not_a_panic() {
        for (enc, body) in [
            (BodyEncoding::Protobuf, &b"\xff\xff\xff\xff"[..]),
            (BodyEncoding::Json, &b"{\"resourceSpans\": 3}"[..]),
            (BodyEncoding::Json, &b"not json"[..]),
        ] {
            assert!(
                to_protobuf(OtlpSignal::Traces, enc, Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
    }
}
