//! The Loki service for the shipper ([`crate::sink::ship`]): a batch of the
//! log spool becomes one push ([`encode()`]), sent with [`LokiClient`].
//!
//! Promises (with the shipper's): a batch leaves the spool only when Loki
//! answered 2xx, or settled a push it took in part (below), or answered a 4xx
//! that no retry can fix (counted per status, the reason logged once per
//! cause). Everything else (429, 5xx, timeouts, refused connections, no host
//! found) is retried with capped exponential backoff and full jitter,
//! honouring `Retry-After`.
//!
//! A push Loki took in part (a 400; a 429 telling of its per-stream rate or
//! stream limits, which an ingester answers after storing the rest) is
//! settled ([`Service::settle`]): Loki's answer says which entries it refused
//! and why ([`super::refusal`]) when it leaves no doubt; else Loki is asked which it
//! holds (the check below) and the answer gives the causes. The entries stored
//! count as shipped, the refused ones by cause, and each has its end
//! ([`super::settle`]): sent again at a new time, cut, sent again later, or
//! dropped.
//!
//! Exactly once across a crash: Loki can be asked what it holds
//! ([`Service::CHECKS_STORED`]), so the shipper records each push in flight in
//! the spool, and a start that finds one unacknowledged asks Loki which of its
//! records it already holds ([`replay::check`], bounded by `loki.timeout`) and
//! sends only the others; so does a retry after a try that may have reached
//! Loki. Entries sent again in another form are found in it: the push is
//! marked with the time they were first sent at a new time before they go.
//! When Loki cannot be read with the push's credentials, the records are
//! sent whole and counted in `wisp_loki_records_possibly_duplicated_total`;
//! while Loki cannot be reached at all, the check waits for it, as a push would.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{fill_host, redact_url, LokiConfig, LokiEncoding, RefusedEntries};
use crate::discovery::current_host;
use crate::event::Repeated;
use crate::metric::{self, by, counter, gauge, load, names, one, single, Family, Registry};
use crate::record::{LogRecord, Timestamp};
use crate::sink::loki::client::LokiClient;
use crate::sink::loki::encode::{encode, EncodedPush};
use crate::sink::loki::refusal::{Answer, Cause as Refusal};
use crate::sink::loki::replay::{self, CheckError};
use crate::sink::loki::settle::{self, Fate, RefusalLog};
use crate::sink::retry::Backoff;
use crate::sink::ship::{
    BatchLimits, Cause, Check, Event, Outcome, Partial, PrepareAhead, Prepared, Reach, Service,
    Settled, ShipSettings, Wording,
};

/// At most this many records in one push, whatever their size.
const BATCH_MAX_RECORDS: usize = 10_000;

/// How the shipper batches and paces pushes to Loki (from `[loki]`).
pub fn ship_settings(c: &LokiConfig) -> ShipSettings {
    ShipSettings {
        url: c.url.clone(),
        batch: BatchLimits {
            max_records: BATCH_MAX_RECORDS,
            max_bytes: c.batch_max_bytes.as_usize().max(1),
            max_wait: c.batch_max_wait.get(),
        },
        max_backoff: c.max_backoff.get(),
    }
}

/// The Loki sink's counters (served by the admin endpoint).
#[derive(Debug, Default)]
pub struct LokiCounters {
    pub records_shipped: AtomicU64,
    pub batches_shipped: AtomicU64,
    pub bytes_shipped: AtomicU64,
    pub retries: AtomicU64,
    /// Push round trips that got an answer, and their total time.
    pub pushes: AtomicU64,
    pub push_micros: AtomicU64,
    /// When Loki last took a push (2xx), in milliseconds since the Unix epoch;
    /// 0 until the first one.
    pub last_push_unix_millis: AtomicU64,
    /// Records lost because Loki refused them for good: by HTTP status for a
    /// push refused whole (`"400"`; `"0"`: could not be encoded), by cause for
    /// entries refused one by one (`"too_old"`, `"other"`, …).
    pub records_dropped: Mutex<BTreeMap<String, u64>>,
    pub batches_dropped: Mutex<BTreeMap<u16, u64>>,
    /// Entries Loki refused, by cause, each time it refused one.
    pub records_refused: Mutex<BTreeMap<Refusal, u64>>,
    /// Refused entries sent again changed (a new time, a cut line), by cause.
    pub records_rewritten: Mutex<BTreeMap<Refusal, u64>>,
    /// Records of the push in flight at the last stop that were sent again
    /// without knowing whether Loki had them (it could not be queried).
    pub records_possibly_duplicated: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When `last_error` was set, in milliseconds since the Unix epoch; 0 before.
    pub last_error_unix_millis: AtomicU64,
}

impl LokiCounters {
    /// Registers the Loki sink's families ([`LokiCounters::FAMILIES`]).
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add("loki", names(Self::FAMILIES), move |out| {
            metric::encode(out, Self::FAMILIES, &single(self.as_ref()))
        });
    }

    /// The Loki sink's metric families: the one place their names and help live.
    pub(crate) const FAMILIES: &'static [Family<LokiCounters>] = &[
        counter("wisp_loki_records_shipped_total", "Log entries Loki took (2xx, or stored of a push it took in part).", |c| one(load(&c.records_shipped))),
        counter("wisp_loki_batches_shipped_total", "Pushes Loki took (2xx).", |c| one(load(&c.batches_shipped))),
        counter("wisp_loki_bytes_shipped_total", "Bytes of buffered records Loki took.", |c| one(load(&c.bytes_shipped))),
        counter("wisp_loki_retries_total", "Pushes retried (429, 5xx, timeouts, connection errors).", |c| one(load(&c.retries))),
        counter("wisp_loki_pushes_total", "Pushes Loki answered with a final status (taken, taken in part, or rejected).", |c| one(load(&c.pushes))),
        counter("wisp_loki_push_seconds_total", "Time spent in pushes Loki answered with a final status.", |c| one(load(&c.push_micros) as f64 / 1e6)),
        gauge("wisp_loki_last_push_timestamp_seconds", "When Loki last took a push, in seconds since the Unix epoch; 0 until the first.", |c| one(load(&c.last_push_unix_millis) as f64 / 1e3)),
        counter("wisp_loki_records_possibly_duplicated_total", "Log entries of a push in flight at the last stop sent again unchecked, because Loki could not be queried with the push's credentials: each may now be stored twice.", |c| one(load(&c.records_possibly_duplicated))),
        counter("wisp_loki_records_refused_total", "Log entries Loki refused one by one, by cause (too_old, too_far_behind, too_long, rate_limited, stream_limit, other), each time it refused one, as Loki's loki_discarded_samples_total counts them (a refusal whose cause Loki did not tell counts once it tells it); what became of them is in wisp_loki_records_rewritten_total, wisp_loki_records_dropped_total, or they were sent again unchanged (rate_limited, stream_limit).", |c| by("reason", &c.records_refused)),
        counter("wisp_loki_records_rewritten_total", "Log entries Loki refused that were sent again changed, by cause: at the time Loki refused them, their own time in the structured metadata original_timestamp (too_old, too_far_behind), or cut to Loki's line limit (too_long).", |c| by("reason", &c.records_rewritten)),
        counter("wisp_loki_records_dropped_total", "Log entries lost because Loki refused them for good: by HTTP status for a push rejected whole (0: could not be encoded), by cause for entries refused one by one (too_old, too_far_behind, too_long, other).", |c| by("reason", &c.records_dropped)),
        counter("wisp_loki_batches_dropped_total", "Pushes Loki rejected for good, by HTTP status.", |c| by("reason", &c.batches_dropped)),
    ];

    fn set_last_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
        self.last_error_unix_millis
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    }

    fn add(map: &Mutex<BTreeMap<Refusal, u64>>, from: &BTreeMap<Refusal, u64>) {
        if let Ok(mut m) = map.lock() {
            for (&cause, &n) in from {
                *m.entry(cause).or_default() += n;
            }
        }
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Loki as the shipper's [`Service`].
pub struct LokiService {
    pub client: LokiClient,
    pub encoding: LokiEncoding,
    /// `loki.timeout`: the bound on the whole check of what Loki holds.
    pub timeout: Duration,
    /// The check's backoff cap (`loki.max_backoff`).
    pub max_backoff: Duration,
    pub counters: Arc<LokiCounters>,
    /// Loki could not be read (no access to the query API): what would be
    /// checked goes unchecked from then on, without asking (or logging) again.
    unchecked: bool,
    /// `loki.refused_entries`.
    refused_entries: RefusedEntries,
    /// Records of the batch being shipped that were sent again for Loki to
    /// say why it refused them ([`settle::plan`]); emptied with each batch.
    /// Behind a lock, as the log below, only because counting (which empties
    /// it) takes `&self`; never contended.
    looked: Mutex<HashSet<u64>>,
    refusals: Mutex<RefusalLog>,
    /// Pushes rejected whole, logged once per status and kind of reason.
    rejections: Repeated<(u16, &'static str)>,
}

/// What a check of what Loki holds came to.
enum Asked {
    /// Per record, in order: whether Loki holds it.
    Stored(Vec<bool>),
    /// Loki cannot be read with the push's credentials.
    Unreadable,
    Stopped,
}

impl LokiService {
    pub fn new(client: LokiClient, c: &LokiConfig, counters: Arc<LokiCounters>) -> Self {
        Self {
            client,
            encoding: c.encoding,
            timeout: c.timeout.get(),
            max_backoff: c.max_backoff.get(),
            counters,
            unchecked: false,
            refused_entries: c.refused_entries,
            looked: Mutex::new(HashSet::new()),
            refusals: Mutex::new(RefusalLog::default()),
            rejections: Repeated::once(),
        }
    }

    /// Asks Loki (`query_range`) which of `records` it holds. While Loki is
    /// away, slow or failing, asks again with backoff; when it cannot be read
    /// at all, says so (and does not ask again this run). `consequence` says in
    /// the log what is done then.
    async fn ask_stored(
        &mut self,
        records: &[LogRecord],
        why: Check,
        reach: Reach<'_>,
        consequence: &str,
    ) -> Asked {
        if self.unchecked {
            return Asked::Unreadable;
        }
        let budget = self.timeout;
        let mut backoff = Backoff::new(Duration::from_millis(250), self.max_backoff);
        loop {
            let Some(host) = current_host(reach.host, reach.stop).await else {
                return Asked::Stopped;
            };
            let url = fill_host(reach.url, &host);
            let rewritten_since = reach.mark.and_then(|m| i64::try_from(m).ok());
            let checked = tokio::select! {
                r = tokio::time::timeout(budget, replay::check(&self.client, &url, records, rewritten_since)) => {
                    r.unwrap_or(Err(CheckError::TimedOut(budget)))
                }
                _ = reach.stop.cancelled() => return Asked::Stopped,
            };
            match checked {
                Ok(stored) => {
                    reach.health.report_success();
                    let held = stored.iter().filter(|&&s| s).count();
                    let (shown, n, other) = (redact_url(&url), records.len(), records.len() - held);
                    match why {
                        Check::Partial => tracing::info!(
                            "loki at {shown} holds {held} of the {n} records of {}; it refused the other {other}",
                            why.what()
                        ),
                        _ => tracing::info!(
                            "loki at {shown} already has {held} of the {n} records of {}; sending the other {other}",
                            why.what()
                        ),
                    }
                    return Asked::Stored(stored);
                }
                Err(e) if !e.is_lasting() => {
                    // Loki is away, slow or failing (a push would be retried too):
                    // wait and ask again, rather than guess what it holds.
                    reach.health.report_failure();
                    let delay = backoff.next_delay();
                    if backoff.attempts() <= 1 {
                        tracing::warn!(
                            "cannot ask loki at {} which records of {} it already has ({e}); \
                             asking again with backoff, lines wait in the buffer",
                            redact_url(&url),
                            why.what()
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = reach.stop.cancelled() => return Asked::Stopped,
                    }
                }
                Err(e) => {
                    // Asking again would not help (no read access, no query path):
                    // no more checks this run.
                    self.unchecked = true;
                    tracing::warn!(
                        "cannot check which of the {} records of {} loki at {} already has: {e}; \
                         {consequence}; the check needs read access to the query api with the \
                         push's credentials; not checking again",
                        records.len(),
                        why.what(),
                        redact_url(&url)
                    );
                    return Asked::Unreadable;
                }
            }
        }
    }
}

impl Service for LokiService {
    type Record = LogRecord;
    type Request = EncodedPush;
    const CHECKS_STORED: bool = true;

    const WORDING: Wording = Wording {
        name: "loki",
        sending: "push to loki at",
        request: "push",
        requests: "pushes",
        waiting: "lines wait",
        spool: "the spool",
    };

    /// An error cannot happen for records that came through the spool; never
    /// wedge on it: the records are dropped, counted under status 0.
    fn encode(&self, records: &[LogRecord]) -> Option<EncodedPush> {
        match encode(records, self.encoding) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(
                    "cannot encode a Loki push, dropping {} record(s): {e}",
                    records.len()
                );
                count_drop(&self.counters, 0, records.len());
                None
            }
        }
    }

    /// One group per batch (`split` is the default); a batch that cannot be
    /// encoded gets no request here, and `encode` reports it in its turn.
    fn prepare_ahead(&self) -> Option<PrepareAhead<LogRecord, EncodedPush>> {
        let encoding = self.encoding;
        Some(Box::new(move |records| {
            let first = encode(&records, encoding).ok();
            Prepared {
                groups: vec![records],
                first,
            }
        }))
    }

    async fn send(&mut self, url: &str, push: &EncodedPush) -> Outcome {
        self.client.send(url, push).await
    }

    fn count(&self, event: Event<'_, EncodedPush>) {
        let c = &self.counters;
        match event {
            Event::Delivered { request, took } => {
                c.pushes.fetch_add(1, Ordering::Relaxed);
                c.push_micros
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                c.records_shipped
                    .fetch_add(request.entries as u64, Ordering::Relaxed);
                c.batches_shipped.fetch_add(1, Ordering::Relaxed);
                c.last_push_unix_millis
                    .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
                if let Ok(mut log) = self.refusals.lock() {
                    log.summary_if_due();
                }
            }
            Event::Rejected {
                request,
                cause,
                reason,
                shown: _,
            } => {
                c.pushes.fetch_add(1, Ordering::Relaxed);
                let status = match cause {
                    Cause::Status(status) => status,
                    _ => 0,
                };
                count_drop(c, status, request.entries);
                c.set_last_error(&format!("status {cause}: {reason}"));
                let kind = cause_of(reason);
                self.rejections.warn((status, kind), || {
                    format!(
                        "loki rejected a push of {} entries with status {status} ({kind}); \
                         dropping it, further rejections for this cause are only counted: {reason}",
                        request.entries
                    )
                });
            }
            Event::Retried { reason } => {
                c.retries.fetch_add(1, Ordering::Relaxed);
                c.set_last_error(reason);
            }
            Event::Acknowledged { bytes } => {
                c.bytes_shipped.fetch_add(bytes, Ordering::Relaxed);
                // The batch is done: what was looked at twice is settled.
                if let Ok(mut looked) = self.looked.lock() {
                    looked.clear();
                }
            }
            Event::SpoolError { error } => c.set_last_error(error),
        }
    }

    /// Asks Loki (`query_range`) which of `records` it holds, and returns the
    /// others. While Loki is away, slow or failing, asks again with backoff;
    /// when it cannot be read at all, returns them all (counted).
    async fn without_stored(
        &mut self,
        records: Vec<LogRecord>,
        why: Check,
        reach: Reach<'_>,
    ) -> Option<Vec<LogRecord>> {
        let consequence = "sending them all, so those it had are stored twice (counted in \
                           wisp_loki_records_possibly_duplicated_total)";
        match self.ask_stored(&records, why, reach, consequence).await {
            Asked::Stopped => None,
            Asked::Stored(stored) => Some(
                records
                    .into_iter()
                    .zip(stored)
                    .filter_map(|(r, held)| (!held).then_some(r))
                    .collect(),
            ),
            Asked::Unreadable => {
                self.counters
                    .records_possibly_duplicated
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                Some(records)
            }
        }
    }

    /// Reads Loki's answer to a push it took in part; asks Loki what it holds
    /// when the answer leaves doubt; counts, logs, and says what to send again.
    async fn settle(
        &mut self,
        records: Vec<LogRecord>,
        answer: Partial,
        reach: Reach<'_>,
    ) -> Option<Settled<LogRecord>> {
        let read = Answer::parse(answer.status, &answer.body, !answer.complete);
        let fates: Vec<Fate> = match read.read_exactly(&records) {
            Some(causes) => causes
                .into_iter()
                .map(|c| c.map_or(Fate::Stored, Fate::Refused))
                .collect(),
            None => {
                let consequence = "reading its answer alone: the entries it does not name \
                                   as refused are taken as stored";
                match self
                    .ask_stored(&records, Check::Partial, reach, consequence)
                    .await
                {
                    Asked::Stopped => return None,
                    Asked::Stored(stored) => records
                        .iter()
                        .zip(stored)
                        .map(|(r, held)| match (held, read.attribute(r)) {
                            (true, _) => Fate::Stored,
                            (false, Some(cause)) => Fate::Refused(cause),
                            (false, None) => Fate::Unexplained,
                        })
                        .collect(),
                    // Without Loki's word, its answer's: what it names is
                    // refused; the rest was stored, unless the answer tells of
                    // no refusal at all (then nothing was).
                    Asked::Unreadable => records
                        .iter()
                        .map(|r| match read.attribute(r) {
                            Some(cause) => Fate::Refused(cause),
                            None if read.tells_refusals() => Fate::Stored,
                            None => Fate::Refused(Refusal::Other),
                        })
                        .collect(),
                }
            }
        };
        let entries = records.len();
        let line_limit = read.line_limit();
        let mut looked = self.looked.lock().unwrap_or_else(|e| e.into_inner());
        let plan = settle::plan(
            records,
            fates,
            line_limit,
            self.refused_entries,
            Timestamp::now(),
            &mut looked,
        );
        drop(looked);
        let c = &self.counters;
        let counts = &plan.counts;
        c.pushes.fetch_add(1, Ordering::Relaxed);
        c.records_shipped
            .fetch_add(counts.shipped, Ordering::Relaxed);
        if counts.shipped > 0 {
            c.last_push_unix_millis
                .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
        }
        LokiCounters::add(&c.records_refused, &counts.refused);
        LokiCounters::add(&c.records_refused, &counts.hidden);
        LokiCounters::add(&c.records_rewritten, &counts.rewritten);
        if let Ok(mut m) = c.records_dropped.lock() {
            for (cause, &n) in &counts.dropped {
                *m.entry(cause.to_string()).or_default() += n;
            }
        }
        if plan.wait {
            c.retries.fetch_add(1, Ordering::Relaxed);
        }
        let error = self
            .refusals
            .lock()
            .ok()
            .and_then(|mut log| log.note(counts, &read, &answer.body, entries, line_limit));
        if let Some(error) = error {
            c.set_last_error(&error);
        } else if counts.second_looks > 0 {
            tracing::debug!(
                "loki refused {} entries of a push without saying why: sending them again \
                 for it to say",
                counts.second_looks
            );
        }
        Some(Settled {
            resend: plan.resend,
            mark: plan.mark,
            wait: plan.wait,
        })
    }
}

fn count_drop(counters: &LokiCounters, status: u16, records: usize) {
    if let Ok(mut m) = counters.records_dropped.lock() {
        *m.entry(status.to_string()).or_default() += records as u64;
    }
    if let Ok(mut m) = counters.batches_dropped.lock() {
        *m.entry(status).or_default() += 1;
    }
}

/// The short name of a rejection's cause, so each is logged once.
fn cause_of(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("too far behind") || r.contains("too old") {
        "too old"
    } else if r.contains("too far in the future") || r.contains("too new") {
        "too new"
    } else if r.contains("out of order") {
        "out of order"
    } else if r.contains("rate limit") {
        "rate limited"
    } else if r.contains("line too long") || r.contains("exceeds") || r.contains("max entry size") {
        "too long"
    } else if r.contains("label") {
        "labels"
    } else {
        "other"
    }
}
