//! Serving the agent's listeners (OTLP/HTTP, OTLP/gRPC, the admin endpoint) so
//! that no client can hold the agent: a bound on connections, a header timeout,
//! an idle timeout, a whole-request timeout, and a shutdown with a deadline.
//!
//! Promises, per listener ([`ListenerLimits`]):
//! - **At most `max_connections` connections.** The next one is accepted only
//!   when one closes; until then it waits in the kernel's accept backlog.
//! - **A request must start within `header_timeout`.** From the connection's
//!   accept, and on HTTP/1 from the first byte of every later request, to its
//!   headers parsed; a client sending its headers a byte a second is closed
//!   then. (hyper's own `header_read_timeout` also runs while a kept-alive
//!   connection waits for its next request, which would make the idle timeout
//!   the header timeout; so the timer is kept here, from bytes read.)
//! - **Idle for `idle_timeout` at most.** A connection with no request in
//!   flight since its last answer is closed after that.
//! - **A request is answered within `request_timeout`**, its body read
//!   included: a body that trickles in is cut, answered with the listener's
//!   timeout response (HTTP 408 / gRPC `DEADLINE_EXCEEDED`). A response
//!   marked [`Streaming`] (the admin endpoint's `/tap`) is bounded there only
//!   until its head: its body lasts as long as the client reads, and counts as
//!   a request in flight (no idle cut) until it ends.
//! - **Shutdown within `shutdown_grace`.** When the cancellation token fires the
//!   listener stops accepting, each connection is told to finish (an idle one
//!   closes at once, one with a request in flight after its answer), and
//!   whatever is still open after the grace is dropped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metric::{counter, encode, gauge, labelled, names, one, Family, Registry};

/// The HTTP version a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 (OTLP/HTTP, the admin endpoint).
    Http1,
    /// HTTP/2 with prior knowledge (gRPC).
    Http2,
}

/// The bounds of one listener; see the module docs for what each promises.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerLimits {
    /// Names the listener in the log: `otlp http receiver`.
    pub name: &'static str,
    pub protocol: Protocol,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The answer to a request cut by `request_timeout`.
    pub on_timeout: fn(Duration) -> Response,
}

/// A connection closed for a timeout still gets this long to say goodbye
/// (hyper's graceful close: an HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2 pings an idle peer this often and closes the connection when one is
/// not answered within [`PING_TIMEOUT`]: a peer gone without a FIN.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams (requests) one HTTP/2 connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Serves `router` on `listener` within `limits` until `cancel` fires, then
/// returns once every connection is closed (at most `shutdown_grace` later).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    counters: Arc<ListenerCounters>,
    cancel: CancellationToken,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        (limits, counters.clone()),
        track_request,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut full_logged = false;
    loop {
        if slots.available_permits() == 0 && !full_logged {
            tracing::warn!(
                "{}: {} connections open, the most it takes; further ones wait until one closes",
                limits.name,
                limits.max_connections
            );
            full_logged = true;
        } else if slots.available_permits() > limits.max_connections / 2 {
            full_logged = false;
        }
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning.
                    tracing::warn!("{}: cannot accept a connection: {e}", limits.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let cancel = cancel.clone();
        let counters = counters.clone();
        connections.spawn(async move {
            counters.open.fetch_add(1, Ordering::Relaxed);
            let peer = Arc::new(Peer::new(peer, stream.local_addr().ok()));
            if let Some(cut) = serve_connection(stream, peer, router, limits, cancel).await {
                counters.cut(cut);
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    // Closing the socket refuses new connections while the open ones finish.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Who is at the other end of a connection: the local user whose socket it
/// is (the kernel's `/proc/net/tcp`), looked up once, when a request first
/// asks. Each request of the connection finds it in its extensions.
#[derive(Debug)]
pub(crate) struct Peer {
    remote: SocketAddr,
    local: Option<SocketAddr>,
    uid: std::sync::OnceLock<Option<u32>>,
}

impl Peer {
    pub(crate) fn new(remote: SocketAddr, local: Option<SocketAddr>) -> Peer {
        Peer {
            remote,
            local,
            uid: std::sync::OnceLock::new(),
        }
    }

    /// The uid of the sender's socket, `None` for a sender on another host or
    /// one the tables do not list.
    pub(crate) fn uid(&self) -> Option<u32> {
        *self
            .uid
            .get_or_init(|| crate::procfs::tcp_socket_uid(self.remote, self.local?))
    }
}

/// What a connection is doing, shared by its reads, its requests and its
/// driver. Times are milliseconds since `opened`.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// When the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte arrived while no request was in flight: a request
    /// head being read. [`NONE`] when there is none.
    head_since: AtomicU64,
    changed: Notify,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            let _ = self.head_since.compare_exchange(
                NONE,
                self.now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.changed.notify_waiters();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// When this connection is to be closed if nothing changes, and why; `None`
    /// while a request is in flight (its own timeout bounds it).
    fn deadline(&self, limits: &ListenerLimits) -> Option<(Instant, Cut)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        // HTTP/2 reads pings and settings while idle: only HTTP/1 bytes begin a
        // request head.
        if head != NONE && limits.protocol == Protocol::Http1 {
            return Some((self.at(head) + limits.header_timeout, Cut::SlowHeaders));
        }
        let idle = self.at(self.idle_since.load(Ordering::Acquire));
        if self.requests.load(Ordering::Acquire) == 0 {
            Some((idle + limits.header_timeout, Cut::NoRequest))
        } else {
            Some((idle + limits.idle_timeout, Cut::Idle))
        }
    }
}

/// Why the agent closed a connection (the `reason` label of
/// `wisp_listener_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// HTTP/1 request headers not complete within the header timeout.
    SlowHeaders,
    /// No request within the header timeout of the connection's opening.
    NoRequest,
    /// No request for the idle timeout after the last answer.
    Idle,
    /// A request not answered within the request timeout (its body trickled).
    RequestTimeout,
    /// Still open when the shutdown grace ran out.
    ShutdownDeadline,
}

impl Cut {
    const ALL: [Cut; 5] = [
        Cut::SlowHeaders,
        Cut::NoRequest,
        Cut::Idle,
        Cut::RequestTimeout,
        Cut::ShutdownDeadline,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Cut::SlowHeaders => "slow_headers",
            Cut::NoRequest => "no_request",
            Cut::Idle => "idle",
            Cut::RequestTimeout => "request_timeout",
            Cut::ShutdownDeadline => "shutdown_deadline",
        }
    }

    fn limit(self, limits: &ListenerLimits) -> Duration {
        match self {
            Cut::SlowHeaders | Cut::NoRequest => limits.header_timeout,
            Cut::Idle => limits.idle_timeout,
            Cut::RequestTimeout => limits.request_timeout,
            Cut::ShutdownDeadline => limits.shutdown_grace,
        }
    }
}

/// One listener's connection counts, for the admin endpoint.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    open: AtomicU64,
    closed: [AtomicU64; Cut::ALL.len()],
}

impl ListenerCounters {
    /// Registers this listener's connections as an instance of
    /// [`ListenerCounters::FAMILIES`], each sample labelled `listener=name`.
    pub fn register(self: Arc<Self>, metrics: &mut Registry, name: &'static str) {
        metrics.add("listener", names(Self::FAMILIES), move |out| {
            encode(
                out,
                Self::FAMILIES,
                &[(vec![("listener", name.into())], self.as_ref())],
            )
        });
    }

    /// A listener's metric families, the one place their names and help live;
    /// the admin endpoint serves them for every listener, each sample labelled
    /// `listener="otlp_grpc"|"otlp_http"|"admin"`.
    pub(crate) const FAMILIES: &'static [Family<ListenerCounters>] = &[
        gauge("wisp_listener_connections", "Connections open now, by listener (otlp_grpc, otlp_http, admin); at most 64 per OTLP listener and 256 for admin, more wait in the accept backlog.", |c| one(c.open())),
        counter("wisp_listener_connections_closed_total", "Connections the agent closed, by listener and reason: slow_headers (headers not in within 10 s), no_request (none within 10 s of opening), idle (60 s), request_timeout (not answered within 30 s), shutdown_deadline.", |c| {
            c.closed()
                .into_iter()
                .map(|(reason, n)| labelled([("reason", reason.into())], n))
                .collect()
        }),
    ];

    fn cut(&self, why: Cut) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections the agent closed, by reason (`slow_headers`, `no_request`,
    /// `idle`, `request_timeout`, `shutdown_deadline`).
    pub fn closed(&self) -> Vec<(&'static str, u64)> {
        Cut::ALL
            .iter()
            .map(|c| (c.as_str(), self.closed[*c as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A request in flight on a connection; its end starts the idle time.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_waiters();
    }
}

/// The connection's socket, telling [`Activity`] when bytes arrive.
struct Metered {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves one connection until it ends; what cut it, if the agent did.
async fn serve_connection(
    stream: TcpStream,
    peer: Arc<Peer>,
    router: Router,
    limits: ListenerLimits,
    cancel: CancellationToken,
) -> Option<Cut> {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Metered {
        stream,
        activity: activity.clone(),
    });
    let service = TowerToHyperService::new(
        router
            .layer(Extension(activity.clone()))
            .layer(Extension(peer)),
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match limits.protocol {
        Protocol::Http1 => {
            builder = builder.http1_only();
            // The header timer is ours (see the module docs); no hyper default.
            builder.http1().header_read_timeout(None).keep_alive(true);
        }
        Protocol::Http2 => {
            builder = builder.http2_only();
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT)
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        }
    }
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Once set, the connection was asked to close (and why) and is dropped at
    // this time.
    let mut closing: Option<(Instant, Option<Cut>)> = None;
    loop {
        let changed = activity.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let deadline = match closing {
            Some((at, _)) => Some(at),
            None => activity.deadline(&limits).map(|(at, _)| at),
        };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("{}: a connection ended: {e}", limits.name);
                }
                return closing.and_then(|(_, why)| why);
            }
            _ = cancel.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some((Instant::now() + limits.shutdown_grace, None));
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                if let Some((_, why)) = closing {
                    tracing::debug!("{}: a connection still open at its deadline is dropped", limits.name);
                    return Some(why.unwrap_or(Cut::ShutdownDeadline));
                }
                // Re-checked: a request may have begun since the deadline was read.
                if let Some((at, why)) = activity.deadline(&limits) {
                    if at <= Instant::now() {
                        tracing::debug!(
                            "{}: closing a connection: {} after {:?}",
                            limits.name,
                            why.as_str(),
                            why.limit(&limits)
                        );
                        conn.as_mut().graceful_shutdown();
                        closing = Some((Instant::now() + CLOSE_GRACE, Some(why)));
                    }
                }
            }
            _ = &mut changed => {}
        }
    }
}

/// The HTTP/1 answer to a request cut by its timeout: 408, and the connection
/// closed (its body may be half read).
pub(crate) fn http_timeout(limit: Duration) -> Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let mut r = (
        StatusCode::REQUEST_TIMEOUT,
        format!("the request was not received within {limit:?}: send it faster, or smaller\n"),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Marks a response whose body streams for as long as the client listens
/// (`GET /tap`): its request stays in flight until the body ends, so the
/// connection's idle timeout does not cut it; the request timeout bounds only
/// the wait for the response's head. Such a body must end by itself when the
/// cancellation token fires: the shutdown grace still bounds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Streaming;

/// Marks the request in flight on its connection and bounds it in time.
async fn track_request(
    State((limits, counters)): State<(ListenerLimits, Arc<ListenerCounters>)>,
    request: Request,
    next: Next,
) -> Response {
    let in_flight = request
        .extensions()
        .get::<Arc<Activity>>()
        .map(Activity::request_started);
    let response = match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(
                "{}: a request not answered within {:?} is cut",
                limits.name,
                limits.request_timeout
            );
            counters.cut(Cut::RequestTimeout);
            (limits.on_timeout)(limits.request_timeout)
        }
    };
    match in_flight {
        // In flight until the body is dropped: ended, or the connection gone.
        Some(guard) if response.extensions().get::<Streaming>().is_some() => response.map(|body| {
            axum::body::Body::from_stream(futures_util::StreamExt::map(
                body.into_data_stream(),
                move |chunk| {
                    let _in_flight = &guard;
                    chunk
                },
            ))
        }),
        _ => response,
    }
}

#[cfg(test)]
mod tests;
