//! A fake Loki on 127.0.0.1: takes pushes (protobuf + snappy block, or JSON),
//! stores every entry per stream, and answers a minimal LogQL on `query_range`.
//!
//! Duplicates as a Loki 3.x shows them: one entry per identical (stream,
//! timestamp, line). Its ingesters may store a resent entry again (they drop
//! only one repeating the stream's last entry, grafana/loki#1519, or one found
//! in the unordered head block, grafana/loki#6642), but every query goes
//! through the queriers' merge iterator, which keeps one entry of those with
//! the same stream, timestamp and line, within one chunk or across chunks
//! (`pkg/iter/entry_iterator.go`, `fillBuffer`; `merge_dedup_test.go`).
//! Structured metadata is not compared. The same line at another timestamp,
//! or in another stream, is another entry: a line shipped by two paths with
//! two label sets shows twice.
//!
//! What Loki hides, the verdicts do not: every entry received again after it
//! was stored is counted ([`LokiReceiver::resent`]), and the delivery verdicts
//! ([`LokiReceiver::exactly_once`], [`LokiReceiver::wait_for_exactly_once`],
//! [`LokiReceiver::at_most_once`]) fail on it, since the agent promises not to
//! send again what Loki acknowledged.
//!
//! Fault injection: the next N pushes fail with a given status ([`LokiReceiver::fail_next`]),
//! a persistent [`Mode`] (or one per push for the next pushes,
//! [`LokiReceiver::next_modes`]), `/ready` answering 503, and [`LokiReceiver::stop`] /
//! [`LokiReceiver::restart`] to take the port away and bring it back, keeping what
//! was stored (a Loki with persistent storage).
//!
//! Refusals as Loki 3.7 makes them, when [`Limits`] are set; by default
//! everything is accepted (out-of-order entries too, as Loki 2.4+). Its
//! distributor refuses an entry older than `reject_old_samples_max_age` (or an
//! absolute oldest time), newer than `creation_grace_period`, longer than
//! `max_line_size`, or carrying structured metadata where that is disallowed;
//! an ingester then refuses, per stream, an entry older than the stream's
//! newest less the "too far behind" window (half of `max_chunk_age`), and a
//! new stream past `max_streams`. The other entries are stored. The answer
//! is Loki's: the ingester's text (`entry with timestamp … ignored, reason:
//! '…',` for at most `max_returned_errors` entries, then `user 'fake', total
//! ignored: N out of M for stream: {…}`; 429 for the stream limit) of the
//! last stream in the push, which says nothing of the distributor's
//! refusals; or, when that stream had none, the distributor's text (its
//! messages grouped, `N errors like: …`, joined by `; `); 400 either way.
//! Like Loki, an ingester drops in silence an entry identical to its
//! stream's last one.
//!
//! Query semantics kept deliberately small: stream selectors of `=` and `!=`
//! matchers, then any number of `|= "text"` / `!= "text"` line filters and
//! `| name="value"` / `| name!="value"` label filters (on the entry's
//! structured metadata, else its stream labels; absent is empty); `start`
//! (inclusive) and `end` (exclusive) as Loki takes them (nanoseconds, seconds
//! when 10 digits or fewer, float seconds, RFC 3339); `limit` (default 100);
//! `direction` `backward` (default) or `forward`. Entries come back as stored,
//! duplicates included; with `X-Loki-Response-Encoding-Flags: categorize-labels`
//! an entry's structured metadata comes as a third element of its value
//! (`{"structuredMetadata": {…}}`), without it as labels of its stream, as
//! Loki 3.x answers. As strict as Loki where a client depends on it: a `limit`
//! above Loki's default `max_entries_limit_per_query` (5000) or not positive, an
//! `end` before `start`, and a log query on the instant endpoint
//! `/loki/api/v1/query` (refused since Loki 3.2, grafana/loki#13421) are answered
//! 400 with Loki's message (newer Loki names the limit
//! `max_entries_limit_per_query` in it: match the start only). Kinder in one
//! way, which tests rely on: an absent `start` or `end` leaves the range
//! unbounded, where Loki takes `end` = now and `start` = `end` minus one hour,
//! so a client reading back what it pushed sends both (the probe does).
//! [`LokiReceiver::set_query_status`] makes every query answer a given status
//! (a read path the push credentials cannot reach), and
//! [`LokiReceiver::queries`] counts query requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wisp_agent::sink::loki::push_proto::PushRequest;

/// Label set of a stream, sorted by name.
pub type LabelMap = BTreeMap<String, String>;

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub labels: LabelMap,
    pub timestamp_ns: i64,
    pub line: String,
    pub metadata: BTreeMap<String, String>,
}

/// How every push is answered until changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answer every push with this status (and store nothing).
    Status(u16),
    /// Wait this long, then handle the push normally.
    Delay(Duration),
    /// Never answer (the client's timeout fires).
    Hang,
    /// Store the push, then never answer: Loki has the entries but the agent never
    /// hears so (an agent killed between push and acknowledgement).
    StoreThenHang,
    /// Store the push, then answer only once [`LokiReceiver::release_held`] is
    /// called (at once from then on): a Loki slow to answer, for as long as
    /// the test needs to look at the agent meanwhile.
    StoreThenHold,
}

/// Loki's limits, as its distributor and ingesters apply them; off by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `max_line_size` (Loki's default is 256KB): a longer entry is refused.
    pub max_line_bytes: Option<usize>,
    /// Entries older than this (ns) are refused as too old.
    pub oldest_ns: Option<i64>,
    /// `reject_old_samples_max_age`: entries older than the push's arrival
    /// less this are refused as too old (Loki's default is 7 days).
    pub reject_old_samples_max_age: Option<Duration>,
    /// `creation_grace_period`: entries newer than the push's arrival plus
    /// this are refused as too new (Loki's default is 10 minutes).
    pub creation_grace_period: Option<Duration>,
    /// Half of `max_chunk_age` (Loki's default is 1 h): an entry older than
    /// its stream's newest less this is refused as too far behind.
    pub too_far_behind: Option<Duration>,
    /// `max_streams_per_user`: a push creating a stream past this many gets a
    /// 429 for that stream.
    pub max_streams: Option<usize>,
    /// `max_returned_stream_errors`: an ingester lists this many refused entries.
    pub max_returned_errors: usize,
    /// Loki's `allow_structured_metadata` (false before Loki 3.0).
    pub allow_structured_metadata: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: None,
            oldest_ns: None,
            reject_old_samples_max_age: None,
            creation_grace_period: None,
            too_far_behind: None,
            max_streams: None,
            max_returned_errors: 10,
            allow_structured_metadata: true,
        }
    }
}

#[derive(Clone, Debug)]
struct Failure {
    status: u16,
    retry_after: Option<u64>,
    body: String,
}

/// Loki's default `max_entries_limit_per_query`.
pub const MAX_ENTRIES_LIMIT_PER_QUERY: usize = 5000;

#[derive(Default)]
struct Stream {
    /// In arrival order, one per identical (timestamp, line).
    entries: Vec<Entry>,
    /// The newest timestamp stored (for "too far behind").
    newest_ns: Option<i64>,
    /// The last entry appended: (timestamp, hash of the line).
    last: Option<(i64, u64)>,
    /// (timestamp, hash of the line) of each entry stored (also in count-only
    /// mode, where `entries` stays empty) → how many times it was received.
    seen: HashMap<(i64, u64), usize>,
}

struct Inner {
    streams: BTreeMap<LabelMap, Stream>,
    /// Entries decoded from pushes that were handled (not failed on purpose),
    /// duplicates and refused entries included.
    received: usize,
    /// Entries stored: received, less those refused and those identical to
    /// one stored before (same stream, timestamp and line).
    stored: usize,
    pushes: usize,
    /// When each push arrived, in order.
    push_times: Vec<std::time::Instant>,
    /// Query requests, on either endpoint, whatever their answer.
    queries: usize,
    /// Every query is answered this status while set.
    query_status: Option<u16>,
    last_headers: HeaderMap,
    failures: VecDeque<Failure>,
    /// Modes of the next pushes, one each, before `mode` applies again.
    next_modes: VecDeque<Mode>,
    mode: Mode,
    ready: bool,
    /// Every push's answer, in order (status codes), for asserting retries.
    answers: Vec<u16>,
    limits: Limits,
    /// Keep counts only (no entries): for benchmarks pushing millions of lines.
    count_only: bool,
    /// Pushes stored in [`Mode::StoreThenHold`] and not answered yet.
    held: usize,
    /// [`LokiReceiver::release_held`] was called.
    released: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock already failed; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LokiReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Serves https with this when set ([`LokiReceiver::start_tls`]).
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl LokiReceiver {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let listener = super::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind loki receiver");
        Self::serve_on(listener, None)
    }

    /// Starts on 127.0.0.1 on a free port, serving https with `cert`'s
    /// certificate and key; [`url`](Self::url) and the others say `https`.
    pub async fn start_tls(cert: &super::tls::SelfSigned) -> Self {
        let listener = super::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind loki receiver");
        Self::serve_on(listener, Some(cert.acceptor()))
    }

    /// Starts on a listener the test bound (another loopback address, a port
    /// shared with other servers); [`restart`](Self::restart) binds its address
    /// again.
    pub fn start_on(listener: std::net::TcpListener) -> Self {
        listener
            .set_nonblocking(true)
            .expect("a nonblocking listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        Self::serve_on(listener, None)
    }

    fn serve_on(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                streams: BTreeMap::new(),
                received: 0,
                stored: 0,
                pushes: 0,
                push_times: Vec::new(),
                queries: 0,
                query_status: None,
                last_headers: HeaderMap::new(),
                failures: VecDeque::new(),
                next_modes: VecDeque::new(),
                mode: Mode::Normal,
                ready: true,
                answers: Vec::new(),
                limits: Limits::default(),
                count_only: false,
                held: 0,
                released: false,
            }),
            changed: Notify::new(),
        });
        let server = serve(listener, router(shared.clone()), &tls);
        LokiReceiver {
            addr,
            shared,
            tls,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` when started with [`start_tls`](Self::start_tls), else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The base URL, `http://127.0.0.1:PORT` (what `LOKI_URL` takes).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// The full push URL.
    pub fn push_url(&self) -> String {
        format!("{}/loki/api/v1/push", self.url())
    }

    /// The IP alone, for a `{host}` placeholder; the port is the template's, so
    /// tests that need this receiver's port use [`url`](Self::url) instead.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The next `n` pushes are answered `status` (with `Retry-After: secs` when
    /// given, and `body`), storing nothing.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>, body: &str) {
        let mut inner = self.shared.lock();
        for _ in 0..n {
            inner.failures.push_back(Failure {
                status,
                retry_after,
                body: body.to_string(),
            });
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// The next pushes are handled in these modes, one each (after any
    /// [`fail_next`](Self::fail_next)), then the persistent mode again.
    pub fn next_modes(&self, modes: &[Mode]) {
        self.shared.lock().next_modes.extend(modes.iter().copied());
    }

    /// Validates entries from now on as Loki would with these limits.
    pub fn set_limits(&self, limits: Limits) {
        self.shared.lock().limits = limits;
    }

    /// Counts stored and received entries without keeping them (`entries` and
    /// `lines` stay empty; an entry is still stored once per identical
    /// (stream, timestamp, line), compared by timestamp and a hash of the
    /// line): cheap enough not to be the bottleneck of a benchmark.
    pub fn set_count_only(&self, on: bool) {
        self.shared.lock().count_only = on;
    }

    /// Every query, on either endpoint, is answered `status` (with its
    /// reason phrase as the body) while `Some`: a Loki whose read path the push
    /// credentials cannot reach answers 401 or 403. Pushes are not affected.
    pub fn set_query_status(&self, status: Option<u16>) {
        self.shared.lock().query_status = status;
    }

    /// `/ready` answers 200 "ready" or 503 "Ingester not ready".
    pub fn set_ready(&self, ready: bool) {
        self.shared.lock().ready = ready;
    }

    /// Closes the port and every open connection: new connections are refused.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port, with what was stored before.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = super::bind(self.addr).await.expect("rebind loki receiver");
        let server = serve(listener, router(self.shared.clone()), &self.tls);
        *self.server.lock().unwrap() = Some(server);
    }

    /// Entries of the streams matching `selector` (LogQL: a stream selector and
    /// optional line filters), in timestamp order (arrival order on ties).
    pub fn entries(&self, selector: &str) -> Vec<Entry> {
        let query = LogQuery::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
        let inner = self.shared.lock();
        let mut out: Vec<Entry> = inner
            .streams
            .iter()
            .filter(|(labels, _)| query.matches_stream(labels))
            .flat_map(|(_, s)| s.entries.iter().filter(|e| query.matches_entry(e)))
            .cloned()
            .collect();
        out.sort_by_key(|e| e.timestamp_ns);
        out
    }

    /// Every stored entry, in timestamp order.
    pub fn all_entries(&self) -> Vec<Entry> {
        let inner = self.shared.lock();
        let mut out: Vec<Entry> = inner
            .streams
            .values()
            .flat_map(|s| s.entries.iter().cloned())
            .collect();
        out.sort_by_key(|e| e.timestamp_ns);
        out
    }

    /// The lines of [`entries`](Self::entries).
    pub fn lines(&self, selector: &str) -> Vec<String> {
        self.entries(selector).into_iter().map(|e| e.line).collect()
    }

    /// Label sets of all streams.
    pub fn streams(&self) -> Vec<LabelMap> {
        self.shared.lock().streams.keys().cloned().collect()
    }

    /// Entries stored, in every stream: one per identical (stream, timestamp,
    /// line), as Loki's queries show them.
    pub fn stored_count(&self) -> usize {
        self.shared.lock().stored
    }

    /// Entries received in pushes the fake handled (not those failed on
    /// purpose by [`fail_next`](Self::fail_next) or [`Mode::Status`]): what
    /// was stored, what was refused by [`Limits`], and what was received again
    /// after being stored ([`resent`](Self::resent)).
    pub fn received_count(&self) -> usize {
        self.shared.lock().received
    }

    /// Push requests received, whatever their answer.
    pub fn pushes(&self) -> usize {
        self.shared.lock().pushes
    }

    /// When each push arrived, in order, whatever its answer.
    pub fn push_times(&self) -> Vec<std::time::Instant> {
        self.shared.lock().push_times.clone()
    }

    /// Query requests received (`query_range` and `query`), whatever their
    /// answer.
    pub fn queries(&self) -> usize {
        self.shared.lock().queries
    }

    /// The entries of the streams matching `selector` that were received
    /// again after being stored (same stream, timestamp and line: Loki shows
    /// them once), each with how many times it was received in all, in
    /// timestamp order.
    pub fn resent(&self, selector: &str) -> Vec<(Entry, usize)> {
        let query = LogQuery::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
        let inner = self.shared.lock();
        let mut out: Vec<(Entry, usize)> = inner
            .streams
            .iter()
            .filter(|(labels, _)| query.matches_stream(labels))
            .flat_map(|(_, s)| {
                s.entries.iter().filter_map(|e| {
                    let times = s.seen[&(e.timestamp_ns, line_hash(&e.line))];
                    (times > 1 && query.matches_entry(e)).then(|| (e.clone(), times))
                })
            })
            .collect();
        out.sort_by_key(|(e, _)| e.timestamp_ns);
        out
    }

    /// Ok when the lines of the streams matching `selector` are exactly
    /// `expected`, each stored as often as it is expected (once, for distinct
    /// lines), and none was sent again once stored; otherwise says how many
    /// are missing, how many are stored twice or more (at other timestamps),
    /// how many were never expected ([`super::exactly_once`]) and how many
    /// were received again ([`resent`](Self::resent)), with examples.
    pub fn exactly_once(&self, selector: &str, expected: &[String]) -> Result<(), String> {
        let stored = super::exactly_once(&self.lines(selector), expected);
        self.with_resent(selector, stored)
    }

    /// As [`exactly_once`](Self::exactly_once), but expected lines may be
    /// missing (a test that knows some were dropped): no line stored or sent
    /// twice, none stored that was not expected.
    pub fn at_most_once(&self, selector: &str, expected: &[String]) -> Result<(), String> {
        let stored = super::at_most_once(&self.lines(selector), expected);
        self.with_resent(selector, stored)
    }

    /// `verdict`, also failed when an entry of `selector` was resent.
    fn with_resent(&self, selector: &str, verdict: Result<(), String>) -> Result<(), String> {
        let resent = self.resent(selector);
        let mut faults: Vec<String> = verdict.err().into_iter().collect();
        if !resent.is_empty() {
            let extra: usize = resent.iter().map(|(_, n)| n - 1).sum();
            let examples: Vec<String> = resent
                .iter()
                .take(3)
                .map(|(e, n)| {
                    let mut q: String = e.line.chars().take(100).collect();
                    if q.len() < e.line.len() {
                        q.push('…');
                    }
                    format!("{q:?} ×{n}")
                })
                .collect();
            faults.push(format!(
                "{} sent again after Loki stored them ({extra} extra entries Loki hides: same stream, timestamp and line), e.g. {}",
                resent.len(),
                examples.join(", ")
            ));
        }
        if faults.is_empty() {
            Ok(())
        } else {
            Err(format!("{selector}: {}", faults.join("; ")))
        }
    }

    /// Waits until every line of `expected` is stored in the streams matching
    /// `selector` (as often as it is expected), or `timeout` passes; then
    /// returns the verdict of [`exactly_once`](Self::exactly_once). A
    /// duplicate that arrives later is not seen: a test that can, checks
    /// again once the agent has stopped.
    pub async fn wait_for_exactly_once(
        &self,
        selector: &str,
        expected: &[String],
        timeout: Duration,
    ) -> Result<(), String> {
        let arrived = super::wait_notified(&self.shared.changed, timeout, || {
            holds_all(&self.lines(selector), expected)
        })
        .await;
        self.exactly_once(selector, expected).map_err(|e| {
            if arrived {
                e
            } else {
                format!("after {timeout:?}, {e}")
            }
        })
    }

    /// Answers the pushes held by [`Mode::StoreThenHold`], and any later one
    /// in that mode at once.
    pub fn release_held(&self) {
        self.shared.lock().released = true;
        self.shared.changed.notify_waiters();
    }

    /// Waits until `n` pushes are stored and held unanswered
    /// ([`Mode::StoreThenHold`]); false on timeout.
    pub async fn wait_for_held(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |inner| inner.held >= n).await
    }

    /// The status of every push answered so far, in order.
    pub fn answers(&self) -> Vec<u16> {
        self.shared.lock().answers.clone()
    }

    /// Request headers of the last push.
    pub fn last_headers(&self) -> HeaderMap {
        self.shared.lock().last_headers.clone()
    }

    /// One request header of the last push, as text.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .last_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Waits until at least `n` entries are stored ([`stored_count`](Self::stored_count):
    /// duplicates count, so this is not "n distinct lines arrived"); false on
    /// timeout.
    pub async fn wait_for_stored(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |inner| inner.stored >= n).await
    }

    /// Waits until at least `n` pushes arrived; false on timeout.
    pub async fn wait_for_pushes(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |inner| inner.pushes >= n).await
    }

    /// Waits until `selector` has at least `n` entries (duplicates count);
    /// false on timeout.
    pub async fn wait_for_entries(&self, selector: &str, n: usize, timeout: Duration) -> bool {
        super::wait_notified(&self.shared.changed, timeout, || {
            self.entries(selector).len() >= n
        })
        .await
    }

    async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Inner) -> bool) -> bool {
        super::wait_notified(&self.shared.changed, timeout, || cond(&self.shared.lock())).await
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        if let Ok(mut server) = self.server.lock() {
            if let Some(s) = server.take() {
                s.abort();
            }
        }
    }
}

/// Serves `router`, over TLS when `tls` is set.
fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: &Option<tokio_rustls::TlsAcceptor>,
) -> JoinHandle<()> {
    match tls {
        Some(tls) => super::serve_tls(listener, router, tls.clone()),
        None => super::serve(listener, router),
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/loki/api/v1/push", post(push))
        .route("/ready", get(ready))
        .route("/loki/api/v1/query_range", get(query_range))
        .route("/loki/api/v1/query", get(query_instant))
        .with_state(shared)
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.lock().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Ingester not ready\n").into_response()
    }
}

async fn push(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (failure, mode) = {
        let mut inner = shared.lock();
        inner.pushes += 1;
        inner.push_times.push(std::time::Instant::now());
        inner.last_headers = headers.clone();
        let failure = inner.failures.pop_front();
        let mode = match failure {
            Some(_) => inner.mode,
            None => inner.next_modes.pop_front().unwrap_or(inner.mode),
        };
        (failure, mode)
    };
    shared.changed.notify_waiters();
    let response = if let Some(f) = failure {
        failure_response(f.status, f.retry_after, &f.body)
    } else {
        match mode {
            Mode::Status(status) => failure_response(status, None, "injected failure"),
            Mode::Hang => std::future::pending().await,
            Mode::StoreThenHang => {
                let _ = accept(&shared, &headers, &body);
                shared.changed.notify_waiters();
                std::future::pending().await
            }
            Mode::StoreThenHold => {
                let response = accept(&shared, &headers, &body);
                shared.lock().held += 1;
                shared.changed.notify_waiters();
                loop {
                    let released = shared.changed.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if shared.lock().released {
                        break;
                    }
                    released.await;
                }
                shared.lock().held -= 1;
                response
            }
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                accept(&shared, &headers, &body)
            }
            Mode::Normal => accept(&shared, &headers, &body),
        }
    };
    shared.lock().answers.push(response.status().as_u16());
    shared.changed.notify_waiters();
    response
}

fn failure_response(status: u16, retry_after: Option<u64>, body: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.to_string()).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// A decoded push: per stream, its labels and (timestamp, line, metadata).
type Decoded = Vec<(LabelMap, Vec<(i64, String, BTreeMap<String, String>)>)>;

fn accept(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let decoded = if content_type.starts_with("application/x-protobuf") {
        decode_protobuf(body)
    } else if content_type.starts_with("application/json") {
        decode_json(body)
    } else {
        Err(format!("unsupported Content-Type {content_type:?}"))
    };
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let now = wisp_agent::record::Timestamp::now().as_nanos();
    let mut inner = shared.lock();
    let limits = inner.limits;
    let count_only = inner.count_only;

    // The distributor: each entry validated, the refusals' messages kept.
    let mut refused = Vec::new();
    let mut valid = Vec::new();
    for (labels, entries) in decoded {
        inner.received += entries.len();
        let stream = selector(&labels);
        let ok: Vec<_> = entries
            .into_iter()
            .filter(|(ts, line, metadata)| {
                match validate(&limits, &stream, now, *ts, line, metadata) {
                    Some(why) => {
                        refused.push(why);
                        false
                    }
                    None => true,
                }
            })
            .collect();
        if !ok.is_empty() {
            valid.push((labels, stream, ok));
        }
    }

    // The ingester, stream by stream: only the last stream's error is told.
    let mut told: Option<(StatusCode, String)> = None;
    for (labels, stream_name, entries) in valid {
        if !inner.streams.contains_key(&labels)
            && limits
                .max_streams
                .is_some_and(|max| inner.streams.len() >= max)
        {
            told = Some((
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Maximum active stream limit exceeded when trying to create stream {stream_name}, reduce the number of active streams (reduce labels or reduce label values), or contact your Loki administrator to see if the limit can be increased, user: 'fake'"
                ),
            ));
            continue;
        }
        let stream = inner.streams.entry(labels.clone()).or_default();
        let total = entries.len();
        let mut failed: Vec<(i64, String)> = Vec::new();
        let mut added = 0;
        for (ts, line, metadata) in entries {
            let hash = line_hash(&line);
            // Loki's ingester drops an entry repeating its stream's last.
            if stream.last == Some((ts, hash)) {
                *stream.seen.entry((ts, hash)).or_insert(0) += 1;
                continue;
            }
            if let (Some(window), Some(newest)) = (limits.too_far_behind, stream.newest_ns) {
                let cutoff = newest.saturating_sub(window.as_nanos() as i64);
                if ts < cutoff {
                    failed.push((
                        ts,
                        format!(
                            "entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}",
                            rfc3339_seconds(ts),
                            rfc3339_seconds(cutoff)
                        ),
                    ));
                    continue;
                }
            }
            stream.newest_ns = Some(stream.newest_ns.map_or(ts, |n| n.max(ts)));
            stream.last = Some((ts, hash));
            // Loki's queries show one entry per identical (stream,
            // timestamp, line); what was received again is counted.
            let times = stream.seen.entry((ts, hash)).or_insert(0);
            *times += 1;
            if *times > 1 {
                continue;
            }
            added += 1;
            if !count_only {
                stream.entries.push(Entry {
                    labels: labels.clone(),
                    timestamp_ns: ts,
                    line,
                    metadata,
                });
            }
        }
        inner.stored += added;
        told = (!failed.is_empty()).then(|| {
            let mut body = String::new();
            for (ts, why) in failed.iter().take(limits.max_returned_errors.max(1)) {
                body.push_str(&format!(
                    "entry with timestamp {} ignored, reason: '{why}',\n",
                    go_time(*ts)
                ));
            }
            body.push_str(&format!(
                "user 'fake', total ignored: {} out of {total} for stream: {stream_name}",
                failed.len()
            ));
            (StatusCode::BAD_REQUEST, body)
        });
    }
    if let Some((status, body)) = told {
        return (status, format!("{body}\n")).into_response();
    }
    if refused.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    (StatusCode::BAD_REQUEST, format!("{}\n", grouped(&refused))).into_response()
}

/// Messages as Loki's `GroupedErrors` writes them: one per wording, with how
/// many entries it stands for when that is more than one or there are several
/// wordings, joined by `; `.
fn grouped(messages: &[String]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for m in messages {
        match counts.iter_mut().find(|(t, _)| *t == m.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((m, 1)),
        }
    }
    let several = counts.len() > 1;
    counts
        .iter()
        .map(|(m, n)| {
            if several || *n > 1 {
                format!("{n} errors like: {m}")
            } else {
                m.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A time as Go's `time.Format(time.RFC3339)` writes it in UTC:
/// `2026-11-01T10:00:00Z`.
pub fn rfc3339_seconds(ns: i64) -> String {
    let t = wisp_agent::record::Timestamp(ns).to_system_time();
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time as Go's `time.Time.String()` writes it in UTC:
/// `2026-11-01 10:00:00.123456789 +0000 UTC` (no fraction when it is zero).
pub fn go_time(ns: i64) -> String {
    let t = wisp_agent::record::Timestamp(ns).to_system_time();
    let full = humantime::format_rfc3339_nanos(t).to_string();
    let (date, time) = (&full[..10], &full[11..19]);
    let fraction = full[20..29].trim_end_matches('0');
    if fraction.is_empty() {
        format!("{date} {time} +0000 UTC")
    } else {
        format!("{date} {time}.{fraction} +0000 UTC")
    }
}

/// Does `stored` hold every line of `expected`, as many times as expected?
fn holds_all(stored: &[String], expected: &[String]) -> bool {
    let mut want: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for line in expected {
        *want.entry(line).or_default() += 1;
    }
    for line in stored {
        if let Some(n) = want.get_mut(line.as_str()) {
            *n = n.saturating_sub(1);
        }
    }
    want.values().all(|&n| n == 0)
}

fn line_hash(line: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    line.hash(&mut h);
    h.finish()
}

/// Why Loki's distributor would refuse this entry (`now` is the push's
/// arrival), in Loki's words; None when it is taken. Checked in Loki's order:
/// age, then the future, then length, then structured metadata.
fn validate(
    limits: &Limits,
    stream: &str,
    now: i64,
    ts: i64,
    line: &str,
    metadata: &BTreeMap<String, String>,
) -> Option<String> {
    let by_age = limits
        .reject_old_samples_max_age
        .map(|age| now.saturating_sub(age.as_nanos() as i64));
    let oldest = match (limits.oldest_ns, by_age) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if let Some(oldest) = oldest {
        if ts < oldest {
            return Some(format!(
                "entry for stream '{stream}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
                rfc3339_seconds(ts),
                rfc3339_seconds(oldest)
            ));
        }
    }
    if let Some(grace) = limits.creation_grace_period {
        if ts > now.saturating_add(grace.as_nanos() as i64) {
            return Some(format!(
                "entry for stream '{stream}' has timestamp too new: {}",
                rfc3339_seconds(ts)
            ));
        }
    }
    if let Some(max) = limits.max_line_bytes {
        if line.len() > max {
            return Some(format!(
                "Max entry size '{max}' bytes exceeded for stream '{stream}' while adding an entry with length '{}' bytes",
                line.len()
            ));
        }
    }
    if !limits.allow_structured_metadata && !metadata.is_empty() {
        return Some(format!(
            "stream '{stream}' includes structured metadata, but this feature is disallowed. Please see `limits_config.allow_structured_metadata` or contact your Loki administrator to enable it."
        ));
    }
    None
}

/// A label set in Loki's selector form, `{job="api", level="info"}`.
pub fn selector(labels: &LabelMap) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn decode_protobuf(body: &[u8]) -> Result<Decoded, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let req = PushRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    req.streams
        .into_iter()
        .map(|s| {
            let labels = parse_labels(&s.labels)?;
            let entries = s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = e.timestamp.map(|t| t.to_nanos()).unwrap_or(0);
                    let md = e
                        .structured_metadata
                        .into_iter()
                        .map(|p| (p.name, p.value))
                        .collect();
                    (ts, e.line, md)
                })
                .collect();
            Ok((labels, entries))
        })
        .collect()
}

fn decode_json(body: &[u8]) -> Result<Decoded, String> {
    #[derive(serde::Deserialize)]
    struct Push {
        streams: Vec<JsonStream>,
    }
    #[derive(serde::Deserialize)]
    struct JsonStream {
        stream: BTreeMap<String, String>,
        values: Vec<Vec<serde_json::Value>>,
    }
    let push: Push = serde_json::from_slice(body).map_err(|e| format!("json: {e}"))?;
    push.streams
        .into_iter()
        .map(|s| {
            check_labels(&s.stream)?;
            let entries = s
                .values
                .into_iter()
                .map(|v| {
                    let ts = v
                        .first()
                        .and_then(|t| t.as_str())
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or("timestamp must be a string of nanoseconds")?;
                    let line = v
                        .get(1)
                        .and_then(|l| l.as_str())
                        .ok_or("line must be a string")?
                        .to_string();
                    let md = match v.get(2) {
                        None => BTreeMap::new(),
                        Some(m) => serde_json::from_value(m.clone())
                            .map_err(|e| format!("structured metadata: {e}"))?,
                    };
                    if v.len() > 3 {
                        return Err("too many elements in a value".to_string());
                    }
                    Ok((ts, line, md))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((s.stream, entries))
        })
        .collect()
}

fn check_labels(labels: &LabelMap) -> Result<(), String> {
    if labels.is_empty() {
        return Err("error at least one label pair is required per stream".into());
    }
    for name in labels.keys() {
        let mut chars = name.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!("invalid label name {name:?}"));
        }
    }
    Ok(())
}

/// Parses a label set in selector form, `{a="b", c="d"}`, as Loki does for pushes.
pub fn parse_labels(s: &str) -> Result<LabelMap, String> {
    let q = LogQuery::parse(s)?;
    if !q.filters.is_empty() || !q.label_filters.is_empty() || q.matchers.iter().any(|m| !m.equal) {
        return Err(format!("error parsing labels {s:?}: not a label set"));
    }
    let labels: LabelMap = q.matchers.into_iter().map(|m| (m.name, m.value)).collect();
    check_labels(&labels)?;
    Ok(labels)
}

#[derive(Debug, Clone)]
struct Matcher {
    name: String,
    value: String,
    equal: bool,
}

#[derive(Debug, Clone)]
struct Filter {
    text: String,
    contains: bool,
}

/// A stream selector with line filters and label filters.
#[derive(Debug, Clone)]
struct LogQuery {
    matchers: Vec<Matcher>,
    filters: Vec<Filter>,
    /// `| name="value"` and `| name!="value"`.
    label_filters: Vec<Matcher>,
}

impl LogQuery {
    fn parse(s: &str) -> Result<Self, String> {
        let mut p = Parser { s, pos: 0 };
        p.ws();
        p.expect("{")?;
        let mut matchers = Vec::new();
        loop {
            p.ws();
            if p.eat("}") {
                break;
            }
            if !matchers.is_empty() {
                p.expect(",")?;
                p.ws();
            }
            let name = p.ident()?;
            p.ws();
            let equal = if p.eat("!=") {
                false
            } else if p.eat("=") {
                true
            } else {
                return Err(format!("expected = or != at {} in {s:?}", p.pos));
            };
            p.ws();
            let value = p.string()?;
            matchers.push(Matcher { name, value, equal });
        }
        let mut filters = Vec::new();
        let mut label_filters = Vec::new();
        loop {
            p.ws();
            if p.pos == s.len() {
                break;
            }
            let contains = if p.eat("|=") {
                true
            } else if p.eat("!=") {
                false
            } else if p.eat("|") {
                p.ws();
                let name = p.ident()?;
                p.ws();
                let equal = if p.eat("!=") {
                    false
                } else if p.eat("=") {
                    true
                } else {
                    return Err(format!("unsupported label filter at {} in {s:?}", p.pos));
                };
                p.ws();
                let value = p.string()?;
                label_filters.push(Matcher { name, value, equal });
                continue;
            } else {
                return Err(format!("unsupported LogQL at {} in {s:?}", p.pos));
            };
            p.ws();
            filters.push(Filter {
                text: p.string()?,
                contains,
            });
        }
        Ok(LogQuery {
            matchers,
            filters,
            label_filters,
        })
    }

    fn matches_stream(&self, labels: &LabelMap) -> bool {
        self.matchers.iter().all(|m| {
            let v = labels.get(&m.name).map(String::as_str).unwrap_or("");
            (v == m.value) == m.equal
        })
    }

    fn matches_entry(&self, e: &Entry) -> bool {
        self.filters
            .iter()
            .all(|f| e.line.contains(&f.text) == f.contains)
            && self.label_filters.iter().all(|m| {
                let v = e
                    .metadata
                    .get(&m.name)
                    .or_else(|| e.labels.get(&m.name))
                    .map(String::as_str)
                    .unwrap_or("");
                (v == m.value) == m.equal
            })
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }
    fn eat(&mut self, t: &str) -> bool {
        if self.rest().starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: &str) -> Result<(), String> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(format!("expected {t:?} at {} in {:?}", self.pos, self.s))
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!(
                "expected a label name at {} in {:?}",
                self.pos, self.s
            ));
        }
        let id = self.rest()[..len].to_string();
        self.pos += len;
        Ok(id)
    }
    /// A double-quoted string with Go/JSON escapes, or a backquoted raw string.
    fn string(&mut self) -> Result<String, String> {
        if self.eat("`") {
            let end = self.rest().find('`').ok_or("unterminated raw string")?;
            let v = self.rest()[..end].to_string();
            self.pos += end + 1;
            return Ok(v);
        }
        if !self.rest().starts_with('"') {
            return Err(format!("expected a string at {} in {:?}", self.pos, self.s));
        }
        let bytes = self.rest().as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    let quoted = &self.rest()[..=i];
                    let v: String =
                        serde_json::from_str(quoted).map_err(|e| format!("{quoted}: {e}"))?;
                    self.pos += i + 1;
                    return Ok(v);
                }
                _ => i += 1,
            }
        }
        Err(format!("unterminated string in {:?}", self.s))
    }
}

/// A query time as Loki parses it: integer nanoseconds, or seconds when it has
/// 10 digits or fewer; float seconds; RFC 3339.
fn parse_time(v: &str) -> Option<i64> {
    if let Ok(n) = v.parse::<i64>() {
        return Some(if v.trim_start_matches('-').len() <= 10 {
            n.saturating_mul(1_000_000_000)
        } else {
            n
        });
    }
    if let Ok(f) = v.parse::<f64>() {
        return Some((f * 1e9) as i64);
    }
    let t = humantime::parse_rfc3339_weak(v).ok()?;
    Some(wisp_agent::record::Timestamp::from_system_time(t).as_nanos())
}

/// Counts the query and answers the injected status, if any.
fn query_received(shared: &Shared) -> Option<Response> {
    let status = {
        let mut inner = shared.lock();
        inner.queries += 1;
        inner.query_status
    };
    shared.changed.notify_waiters();
    let status = StatusCode::from_u16(status?).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("injected failure");
    Some((status, format!("{reason}\n")).into_response())
}

/// `/loki/api/v1/query`: every query this fake parses is a log query, which
/// Loki 3.2+ refuses on the instant endpoint.
async fn query_instant(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(injected) = query_received(&shared) {
        return injected;
    }
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg).into_response();
    let Some(q) = params.get("query") else {
        return bad("query is required".into());
    };
    if let Err(e) = LogQuery::parse(q) {
        return bad(format!("parse error: {e}"));
    }
    bad("log queries are not supported as an instant query type, please change your query to a range query type".into())
}

async fn query_range(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let categorized = headers
        .get("x-loki-response-encoding-flags")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|f| f.trim() == "categorize-labels"));
    if let Some(injected) = query_received(&shared) {
        return injected;
    }
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg).into_response();
    let Some(q) = params.get("query") else {
        return bad("query is required".into());
    };
    let query = match LogQuery::parse(q) {
        Ok(q) => q,
        Err(e) => return bad(format!("parse error: {e}")),
    };
    let time = |name: &str, default: i64| -> Result<i64, String> {
        params
            .get(name)
            .map(|v| parse_time(v).ok_or_else(|| format!("invalid {name} {v:?}")))
            .unwrap_or(Ok(default))
    };
    let limit = params
        .get("limit")
        .map(|v| v.parse::<i64>().map_err(|e| format!("limit: {e}")))
        .unwrap_or(Ok(100));
    // Unbounded when absent, where Loki takes the hour before now (see the
    // module's doc).
    let (start, end, limit) = match (time("start", i64::MIN), time("end", i64::MAX), limit) {
        (Ok(s), Ok(e), Ok(l)) => (s, e, l),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    if limit <= 0 {
        return bad("limit must be a positive value".into());
    }
    let limit = limit as usize;
    if limit > MAX_ENTRIES_LIMIT_PER_QUERY {
        return bad(format!(
            "max entries limit per query exceeded, limit > max_entries_limit ({limit} > {MAX_ENTRIES_LIMIT_PER_QUERY})"
        ));
    }
    if end < start {
        return bad("end timestamp must not be before or equal to start time".into());
    }
    let forward = match params.get("direction").map(String::as_str) {
        None | Some("backward") | Some("BACKWARD") => false,
        Some("forward") | Some("FORWARD") => true,
        Some(d) => return bad(format!("invalid direction {d:?}")),
    };
    let mut hits: Vec<Entry> = {
        let inner = shared.lock();
        inner
            .streams
            .iter()
            .filter(|(labels, _)| query.matches_stream(labels))
            .flat_map(|(_, s)| s.entries.iter())
            .filter(|e| e.timestamp_ns >= start && e.timestamp_ns < end)
            .filter(|e| query.matches_entry(e))
            .cloned()
            .collect()
    };
    hits.sort_by_key(|e| e.timestamp_ns);
    if !forward {
        hits.reverse();
    }
    hits.truncate(limit);
    let mut streams: BTreeMap<LabelMap, Vec<serde_json::Value>> = BTreeMap::new();
    for e in hits {
        let (stream, value) = if categorized {
            let value = if e.metadata.is_empty() {
                serde_json::json!([e.timestamp_ns.to_string(), e.line])
            } else {
                serde_json::json!([
                    e.timestamp_ns.to_string(),
                    e.line,
                    {"structuredMetadata": e.metadata}
                ])
            };
            (e.labels, value)
        } else {
            // Structured metadata shows as labels of the stream.
            let mut stream = e.labels;
            stream.extend(e.metadata);
            (
                stream,
                serde_json::json!([e.timestamp_ns.to_string(), e.line]),
            )
        };
        streams.entry(stream).or_default().push(value);
    }
    let result: Vec<serde_json::Value> = streams
        .into_iter()
        .map(|(stream, values)| serde_json::json!({"stream": stream, "values": values}))
        .collect();
    let mut data = serde_json::json!({"resultType": "streams", "result": result, "stats": {}});
    if categorized {
        data["encodingFlags"] = serde_json::json!(["categorize-labels"]);
    }
    let body = serde_json::json!({"status": "success", "data": data});
    ([("content-type", "application/json")], body.to_string()).into_response()
}
