//! The local OTLP receiver: OTLP/gRPC (the three export services) and OTLP/HTTP
//! (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON) on loopback,
//! for programs in the VM; what they send goes into the OTLP spool through the
//! relay's [`Intake`] (the spool stage, [`crate::spool::stage`]).
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
//!   decoded to check it is well formed (a bad one would be rejected by the
//!   collector later, after its sender was told it was delivered), and, for
//!   traces and logs, to put a run's spans and log records in the run's trace
//!   ([`crate::relay::run`]): only then is an OTLP/HTTP protobuf body encoded
//!   again, the request stored being the rewritten one (in both spools).
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
//!   arrive, what a gzip body inflates to, and what a request re-encodes to
//!   past its size as read (a gRPC request, a run's request grown by its
//!   joined ids), until the request is answered. A request whose new encoding
//!   would be over [`MAX_REQUEST_BYTES`] is answered 413 (gRPC
//!   `RESOURCE_EXHAUSTED`). A request that would
//!   pass it is answered at once HTTP 503 with `Retry-After: 1` (gRPC
//!   `RESOURCE_EXHAUSTED` with a `RetryInfo` of one second), which OTLP
//!   exporters retry; it is counted as refused. Each listener takes at most
//!   [`MAX_CONNECTIONS`] connections (more wait in the accept backlog), a
//!   request must start within 10 s of a connection's opening (HTTP/1: of its
//!   first byte), an idle connection is closed after 60 s and a request not
//!   answered within 30 s (a body trickling in) is cut ([`crate::listen`]).
//! - **Logs to Loki too** (`otlp.logs_to_loki`, with `[loki]`): a logs request
//!   is answered success only once it is durable in the OTLP spool (for the
//!   collector) and its records, one entry each ([`crate::relay::to_loki`]),
//!   in the Loki spool, in that order. While the Loki spool cannot append, logs
//!   requests it does not hold are answered 503 / `UNAVAILABLE` before anything
//!   is stored. An attempt cut between the two (the sender gave up, the Loki
//!   spool refused) is remembered by the request's bytes, and the sender's retry
//!   stores only what is not durable yet (a crash in between still makes the
//!   retry store the OTLP copy again). A request with no records stores nothing
//!   in the Loki spool.
//! - **Shutdown does not wait on clients.** When the cancellation token fires the
//!   listeners stop accepting; requests in flight get [`SHUTDOWN_GRACE`] to be
//!   answered, then their connections are dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

use crate::config::ReceiverConfig;
use crate::listen::{ListenerCounters, ListenerLimits, Peer, Protocol};
use crate::metric::{counter, encode, labelled, load, names, one, single, Family, Registry};
use crate::record::{Ack, OtlpPayload, OtlpSignal, Owner, Timestamp};
use crate::relay::to_loki::{wait, Turn};
use crate::relay::{Intake, LogsToLoki};

mod budget;
mod grpc;
pub(crate) mod http;

use budget::BodyBudget;

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
    on_timeout: grpc::timeout,
    ..HTTP_LIMITS
};

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
    /// Log records stored in the Loki spool (`otlp.logs_to_loki`).
    pub logs_to_loki: AtomicU64,
    /// The HTTP and gRPC listeners' connections (open, closed by the agent).
    pub http_connections: Arc<ListenerCounters>,
    pub grpc_connections: Arc<ListenerCounters>,
}

fn signal_index(s: OtlpSignal) -> usize {
    match s {
        OtlpSignal::Traces => 0,
        OtlpSignal::Metrics => 1,
        OtlpSignal::Logs => 2,
    }
}

impl ReceiverCounters {
    /// Registers the receiver's families ([`ReceiverCounters::FAMILIES`]);
    /// its listeners' connections are registered as listeners
    /// ([`ListenerCounters::register`]).
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add("otlp_receiver", names(Self::FAMILIES), move |out| {
            encode(out, Self::FAMILIES, &single(self.as_ref()))
        });
    }

    /// The receiver's metric families: the one place their names and help
    /// live (its listeners' are [`ListenerCounters::FAMILIES`]).
    pub(crate) const FAMILIES: &'static [Family<ReceiverCounters>] = &[
        counter("wisp_otlp_receiver_requests_total", "OTLP requests received and made durable (answered success), by signal.", |c| {
            OtlpSignal::ALL
                .iter()
                .map(|s| labelled([("signal", s.as_str().into())], load(&c.requests_accepted[signal_index(*s)])))
                .collect()
        }),
        counter("wisp_otlp_receiver_bytes_total", "Protobuf bytes of the OTLP requests made durable.", |c| one(load(&c.bytes_accepted))),
        counter("wisp_otlp_receiver_requests_invalid_total", "OTLP requests refused as malformed or unsupported (HTTP 400, 413, 415; gRPC INVALID_ARGUMENT).", |c| one(load(&c.requests_invalid))),
        counter("wisp_otlp_receiver_requests_refused_total", "OTLP requests the buffer could not take (HTTP 503, gRPC UNAVAILABLE), or that would have passed the 32 MiB bound on request bytes in flight (HTTP 503, gRPC RESOURCE_EXHAUSTED): the sender retries.", |c| one(load(&c.requests_refused))),
        counter("wisp_otlp_logs_to_loki_total", "Log records received over OTLP and stored for Loki as one entry each (otlp.logs_to_loki).", |c| one(load(&c.logs_to_loki))),
    ];
}

/// Why a request's new encoding (a run's telemetry joined to its trace, a
/// JSON body converted, a gRPC request re-encoded) is not stored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Oversize {
    #[error(
        "the request is larger than {limit} bytes once encoded for the collector (a run's \
         spans and log records joined to its trace): send smaller batches (e.g. a lower max \
         export batch size in the SDK)"
    )]
    TooLarge { limit: usize },
    #[error(
        "the receiver's requests in flight would pass their bound ({BODY_BYTES_IN_FLIGHT} bytes) \
         with this request encoded: retry shortly"
    )]
    Busy,
}

/// `request`'s protobuf encoding, at most `limit` bytes. `had` bytes of the
/// request are held in the receivers' budget already; what the encoding needs
/// past them is first asked of `room`. Nothing is allocated for a refused one.
pub(crate) fn encode_within<M: prost::Message>(
    request: &M,
    had: usize,
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, Oversize> {
    let len = request.encoded_len();
    if len > limit {
        return Err(Oversize::TooLarge { limit });
    }
    if !room(len.saturating_sub(had)) {
        return Err(Oversize::Busy);
    }
    Ok(request.encode_to_vec())
}

/// Why a receiver could not start: a configuration error (exit 2), since the
/// address is the configuration's and a restart meets the same holder. The OS
/// error is part of the message, not a `source`, so it is printed once.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error(
        "cannot listen on {addr} for OTLP/{proto} ({key}): {error}{}: \
         set {key} to a free address, or \"\" to disable it",
        if error.kind() == std::io::ErrorKind::AddrInUse {
            "; another program (a local OpenTelemetry collector, or another wisp-agent) \
             holds the port"
        } else {
            ""
        }
    )]
    Bind {
        key: &'static str,
        proto: &'static str,
        addr: String,
        error: std::io::Error,
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
        to_loki: Option<LogsToLoki>,
        counters: Arc<ReceiverCounters>,
        cancel: CancellationToken,
    ) -> Result<Receivers, ReceiverError> {
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        let relay = Relay {
            intake,
            to_loki,
            counters,
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
                grpc::within_budget,
            ));
            tasks.push(tokio::spawn(crate::listen::serve(
                listener,
                router,
                GRPC_LIMITS,
                relay.counters.grpc_connections.clone(),
                cancel.clone(),
            )));
        }
        if !config.http.is_empty() {
            let listener = bind(&config.http, "receiver.http", "HTTP").await?;
            addrs.extend(listener.local_addr().ok());
            let app = Router::new()
                .route("/v1/traces", post(http::traces))
                .route("/v1/metrics", post(http::metrics))
                .route("/v1/logs", post(http::logs))
                .with_state(relay.clone());
            tasks.push(tokio::spawn(crate::listen::serve(
                listener,
                app,
                HTTP_LIMITS,
                relay.counters.http_connections.clone(),
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
    let err = |error| ReceiverError::Bind {
        key,
        proto,
        addr: addr.to_string(),
        error,
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
    /// With `otlp.logs_to_loki`: where logs requests' records go too.
    to_loki: Option<LogsToLoki>,
    counters: Arc<ReceiverCounters>,
    budget: BodyBudget,
}

impl Relay {
    fn invalid(&self) {
        self.counters
            .requests_invalid
            .fetch_add(1, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.counters
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Stores one request in the OTLP spool, and a logs request's records in the
    /// Loki spool too with `logs_to_loki`; `Ok` once all of it is durable.
    /// Counted as accepted (per signal, with its bytes) or refused.
    /// `peer`: the connection's, whose user owns what it sends (its share of
    /// the buffers, its `job` values in Loki).
    async fn store(&self, payload: OtlpPayload, peer: Option<&Peer>) -> Result<(), String> {
        let bytes = payload.body.len() as u64;
        let signal = payload.signal;
        let uid = peer.and_then(Peer::uid);
        let result = match (&self.to_loki, signal) {
            (Some(to_loki), OtlpSignal::Logs) => self.store_with_loki(to_loki, payload, uid).await,
            _ => self.intake.store(payload, Owner::otlp(uid)).await,
        };
        match &result {
            Ok(()) => {
                self.counters.requests_accepted[signal_index(signal)]
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_accepted
                    .fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => self.refused(),
        }
        result
    }
}

impl Relay {
    /// A logs request with `logs_to_loki`: into the OTLP spool, then its records
    /// into the Loki spool, each only where an earlier unanswered attempt of the
    /// same request did not store it already (`relay::to_loki`'s `recent`);
    /// refused at once while the Loki spool cannot append and does not hold it.
    async fn store_with_loki(
        &self,
        to_loki: &LogsToLoki,
        payload: OtlpPayload,
        uid: Option<u32>,
    ) -> Result<(), String> {
        let owner = Owner::otlp(uid);
        let (digest, progress) = to_loki.progress(&payload.body);
        if !progress.loki.is_durable() {
            if let Some(e) = to_loki.refusing() {
                return Err(format!("the log buffer cannot take logs for loki: {e}"));
            }
        }
        let body = payload.body.clone();
        match progress.otlp.turn() {
            Turn::Done => {}
            Turn::Wait(pending) => wait(pending).await?,
            Turn::Mine(ack) => self.intake.store_acked(payload, ack, owner).await?,
        }
        match progress.loki.turn() {
            Turn::Done => {}
            Turn::Wait(pending) => wait(pending).await?,
            Turn::Mine(ack) => {
                let records = to_loki
                    .convert(&body, Timestamp::now(), uid)
                    .map_err(|e| format!("cannot read the logs request for loki: {e}"))?;
                // Counted once durable, even if this attempt is cut before.
                let n = records.len() as u64;
                let counters = self.counters.clone();
                let counted = Ack::new(move || {
                    counters.logs_to_loki.fetch_add(n, Ordering::Relaxed);
                });
                to_loki
                    .store(records, ack.and(counted), owner)
                    .await
                    .map_err(|e| format!("cannot store the logs for loki: {e}"))?;
            }
        }
        to_loki.answered(digest);
        Ok(())
    }
}
