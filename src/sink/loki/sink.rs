//! The Loki sink's loop: reads batches from the spool, pushes them to the host
//! discovery chose, and acknowledges them in the spool once Loki took them.
//!
//! Promises: a batch leaves the spool only when Loki answered 2xx, or when it
//! answered a 4xx that no retry can fix (counted per status, the reason logged once
//! per cause). Everything else (429, 5xx, timeouts, refused connections, no host
//! found) is retried with capped exponential backoff and full jitter, honouring
//! `Retry-After`; meanwhile the spool keeps taking lines, bounded by its size.
//!
//! Exactly once across a crash: before a push is first sent, its end is recorded
//! in the spool ([`SpoolReader::begin_push`]); it is acknowledged right after the
//! answer. A start that finds a recorded push unacknowledged
//! ([`SpoolReader::in_flight`]) asks Loki which of its records it already holds
//! ([`replay::check`], bounded by `loki.timeout`) and sends only the others. When
//! Loki cannot be read with the push's credentials, the records are sent whole and
//! counted in `wisp_loki_records_possibly_duplicated_total`; while Loki cannot be
//! reached at all, the check waits for it, as a push would.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{fill_host, redact_url, LokiConfig, LokiEncoding};
use crate::discovery::{current_host, Chosen, HostHealth};
use crate::record::LogRecord;
use crate::sink::loki::encode::{encode, EncodedPush};
use crate::sink::loki::replay::{self, CheckError};
use crate::sink::loki::service::LokiClient;
use crate::sink::retry::{Backoff, PushOutcome};
use crate::spool::{ReadBatch, SpoolError, SpoolPosition, SpoolReader};

/// How the loop batches and paces pushes (from `[loki]`).
#[derive(Clone, Debug)]
pub struct LokiSinkSettings {
    /// The push URL with `{host}` in it.
    pub url: String,
    pub encoding: LokiEncoding,
    /// A push holds at most about this many bytes of lines.
    pub batch_max_bytes: usize,
    /// A push waits at most this long for more lines to fill it.
    pub batch_max_wait: Duration,
    /// The backoff's cap.
    pub max_backoff: Duration,
    /// `loki.timeout`: the client's per-request timeout, and the bound on the
    /// whole check after a restart of what Loki already holds.
    pub timeout: Duration,
}

impl LokiSinkSettings {
    pub fn from_config(c: &LokiConfig) -> Self {
        Self {
            url: c.url.clone(),
            encoding: c.encoding,
            batch_max_bytes: c.batch_max_bytes.as_usize().max(1),
            batch_max_wait: c.batch_max_wait.get(),
            max_backoff: c.max_backoff.get(),
            timeout: c.timeout.get(),
        }
    }
}

/// How long an acknowledgement waits for the next push to be written with it.
const ACK_SAVE_DELAY: Duration = Duration::from_secs(1);

/// At most this many records in one push, whatever their size.
const BATCH_MAX_RECORDS: usize = 10_000;

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
    /// Records dropped because Loki rejected them, by HTTP status.
    pub records_dropped: Mutex<BTreeMap<u16, u64>>,
    pub batches_dropped: Mutex<BTreeMap<u16, u64>>,
    /// Records of the push in flight at the last stop that were sent again
    /// without knowing whether Loki had them (it could not be queried).
    pub records_possibly_duplicated: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl LokiCounters {
    /// `(name{labels}, value)` pairs in the admin endpoint's naming
    /// (`wisp_loki_last_push_timestamp_seconds` is a gauge).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = vec![
            (
                "wisp_loki_records_shipped_total".to_string(),
                self.records_shipped.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_loki_batches_shipped_total".to_string(),
                self.batches_shipped.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_loki_bytes_shipped_total".to_string(),
                self.bytes_shipped.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_loki_retries_total".to_string(),
                self.retries.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_loki_pushes_total".to_string(),
                self.pushes.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_loki_push_seconds_total".to_string(),
                self.push_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "wisp_loki_last_push_timestamp_seconds".to_string(),
                self.last_push_unix_millis.load(Ordering::Relaxed) as f64 / 1e3,
            ),
            (
                "wisp_loki_records_possibly_duplicated_total".to_string(),
                self.records_possibly_duplicated.load(Ordering::Relaxed) as f64,
            ),
        ];
        if let Ok(m) = self.records_dropped.lock() {
            for (status, n) in m.iter() {
                out.push((
                    format!("wisp_loki_records_dropped_total{{reason=\"{status}\"}}"),
                    *n as f64,
                ));
            }
        }
        if let Ok(m) = self.batches_dropped.lock() {
            for (status, n) in m.iter() {
                out.push((
                    format!("wisp_loki_batches_dropped_total{{reason=\"{status}\"}}"),
                    *n as f64,
                ));
            }
        }
        out
    }

    fn set_last_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }
}

/// The loop's inputs besides its settings.
pub struct LokiSink {
    pub settings: LokiSinkSettings,
    pub client: LokiClient,
    pub reader: SpoolReader,
    pub host: watch::Receiver<Option<Chosen>>,
    pub health: HostHealth,
    pub counters: Arc<LokiCounters>,
}

/// Runs until `drain` fires and the spool is caught up, or until `stop` fires
/// (the shutdown grace period ran out: what is unshipped stays in the spool).
/// `drain` means "no more records are coming" (the spool writer has finished).
pub async fn run(mut sink: LokiSink, drain: CancellationToken, stop: CancellationToken) {
    ship(&mut sink, &drain, &stop).await;
    save_ack(&mut sink.reader);
}

async fn ship(sink: &mut LokiSink, drain: &CancellationToken, stop: &CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(250), sink.settings.max_backoff);
    let mut logged_causes: HashSet<(u16, &'static str)> = HashSet::new();
    let mut in_flight = InFlight {
        upto: sink.reader.in_flight(),
        unchecked: false,
    };
    let mut begin_push_failing = false;
    loop {
        let (mut batch, replayed) = match in_flight.upto {
            Some(end) => {
                let read = tokio::task::block_in_place(|| read_in_flight(sink, end));
                match read {
                    Ok(Some(b)) => {
                        if sink.reader.position() >= end {
                            in_flight.upto = None;
                        }
                        (b, true)
                    }
                    Ok(None) => {
                        in_flight.upto = None;
                        continue;
                    }
                    Err(e) => {
                        // Read normally from here (which retries the spool); the
                        // records left of the range are then sent unchecked.
                        tracing::error!("cannot read the spool: {e}");
                        sink.counters.set_last_error(&e.to_string());
                        in_flight.upto = None;
                        continue;
                    }
                }
            }
            None => {
                let batch = tokio::select! {
                    b = next_batch(sink, drain) => b,
                    _ = stop.cancelled() => return,
                };
                let Some(batch) = batch else { return };
                (batch, false)
            }
        };
        if replayed {
            let records = std::mem::take(&mut batch.records);
            let Some(missing) =
                without_stored(sink, records, Check::Restart, &mut in_flight, stop).await
            else {
                return; // stopped: the range is checked again at the next start
            };
            batch.records = missing;
            if batch.records.is_empty() {
                ack(&mut sink.reader, batch.end);
                continue;
            }
        }
        let Some(mut push) = encode_or_drop(sink, &batch.records) else {
            ack(&mut sink.reader, batch.end);
            continue;
        };
        match tokio::task::block_in_place(|| sink.reader.begin_push(batch.end)) {
            Ok(()) => begin_push_failing = false,
            Err(e) => {
                // Pushing anyway keeps the lines flowing; only a stop before
                // this push's answer would then re-send it unchecked.
                if !begin_push_failing {
                    tracing::warn!(
                        "cannot record the Loki push in flight in the spool ({e}); \
                         should the agent stop before Loki answers, the push is sent again \
                         without checking what Loki already has"
                    );
                }
                begin_push_failing = true;
            }
        }
        let mut records = batch.records;
        loop {
            match deliver(sink, &push, &mut backoff, &mut logged_causes, stop).await {
                Delivery::Done => break,
                // Stopped with the batch unshipped: it stays in the spool (and,
                // recorded in flight, is checked against Loki at the next start).
                Delivery::Stopped => return,
                Delivery::MaybeStored => {
                    // The last try may have reached Loki (a timeout, a dropped
                    // connection, a 5xx after a partial write): what Loki holds
                    // is not sent again.
                    let Some(missing) =
                        without_stored(sink, records, Check::Retry, &mut in_flight, stop).await
                    else {
                        return;
                    };
                    records = missing;
                    if records.is_empty() {
                        break;
                    }
                    match encode_or_drop(sink, &records) {
                        Some(p) => push = p,
                        None => break,
                    }
                }
            }
        }
        sink.counters
            .bytes_shipped
            .fetch_add(batch.bytes, Ordering::Relaxed);
        ack(&mut sink.reader, batch.end);
    }
}

/// Encodes a push. An error cannot happen for records that came through the
/// spool; never wedge on it: the records are dropped, counted under status 0.
fn encode_or_drop(sink: &LokiSink, records: &[LogRecord]) -> Option<EncodedPush> {
    match encode(records, sink.settings.encoding) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(
                "cannot encode a Loki push, dropping {} record(s): {e}",
                records.len()
            );
            count_drop(&sink.counters, 0, records.len());
            None
        }
    }
}

/// Acknowledges in the spool what Loki took. The position is written with the
/// next push's in-flight record (one write per push), or by [`save_ack`] once
/// the sink has nothing to send: until then a restart checks those records
/// against Loki, which holds them, and sends none again.
fn ack(reader: &mut SpoolReader, end: SpoolPosition) {
    reader.ack_later(end);
}

/// Writes a waiting acknowledgement to the spool's `ack` file.
fn save_ack(reader: &mut SpoolReader) {
    if let Err(e) = tokio::task::block_in_place(|| reader.save_ack()) {
        // The records were delivered; an ack that did not persist means they are
        // checked against what Loki holds after a restart.
        tracing::warn!("cannot record the Loki acknowledgement in the spool: {e}");
    }
}

/// The push that was in flight when the agent last stopped.
struct InFlight {
    /// Its end, while the reader is not past it.
    upto: Option<SpoolPosition>,
    /// Loki could not be read (no access to the query API): what would be
    /// checked goes unchecked from then on, without asking (or logging) again.
    unchecked: bool,
}

/// Why records are checked against what Loki holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The push in flight when the agent last stopped.
    Restart,
    /// A push whose last try may have reached Loki, before it is tried again.
    Retry,
}

impl Check {
    fn what(self) -> &'static str {
        match self {
            Check::Restart => "the push in flight when the agent stopped",
            Check::Retry => "a push whose last try may have reached it",
        }
    }
}

/// How [`deliver`] ended.
enum Delivery {
    /// Loki took the push, or refused it for good (counted).
    Done,
    /// `stop` fired first.
    Stopped,
    /// A try failed in a way that may have left the push (or part of it) stored;
    /// the backoff delay has been waited. Check before trying again.
    MaybeStored,
}

/// Reads the records up to `end` (the in-flight push), bounded as a push is.
/// One record per read, so the batch never reaches past `end`. `None` when the
/// spool holds nothing more of the range.
fn read_in_flight(
    sink: &mut LokiSink,
    end: SpoolPosition,
) -> Result<Option<ReadBatch>, SpoolError> {
    let mut batch: Option<ReadBatch> = None;
    while sink.reader.position() < end {
        let (have, have_bytes) = batch
            .as_ref()
            .map_or((0, 0), |b| (b.records.len(), b.bytes as usize));
        if have >= BATCH_MAX_RECORDS || have_bytes >= sink.settings.batch_max_bytes {
            break;
        }
        let Some(more) = sink.reader.next_batch(1, 1)? else {
            break;
        };
        match &mut batch {
            Some(b) => {
                b.records.extend(more.records);
                b.end = more.end;
                b.bytes += more.bytes;
            }
            None => batch = Some(more),
        }
    }
    Ok(batch)
}

/// The records of the in-flight push that Loki does not hold yet. `None` when
/// `stop` fired first.
async fn without_stored(
    sink: &mut LokiSink,
    records: Vec<LogRecord>,
    why: Check,
    in_flight: &mut InFlight,
    stop: &CancellationToken,
) -> Option<Vec<LogRecord>> {
    if in_flight.unchecked {
        sink.counters
            .records_possibly_duplicated
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        return Some(records);
    }
    let budget = sink.settings.timeout;
    let mut backoff = Backoff::new(Duration::from_millis(250), sink.settings.max_backoff);
    loop {
        let host = current_host(&mut sink.host, stop).await?;
        let url = fill_host(&sink.settings.url, &host);
        let checked = tokio::select! {
            r = tokio::time::timeout(budget, replay::check(&sink.client, &url, &records)) => {
                r.unwrap_or(Err(CheckError::TimedOut(budget)))
            }
            _ = stop.cancelled() => return None,
        };
        match checked {
            Ok(stored) => {
                sink.health.report_success();
                let held = stored.iter().filter(|&&s| s).count();
                tracing::info!(
                    "loki at {} already has {held} of the {} records of {}; sending the other {}",
                    redact_url(&url),
                    records.len(),
                    why.what(),
                    records.len() - held
                );
                return Some(
                    records
                        .into_iter()
                        .zip(stored)
                        .filter_map(|(r, held)| (!held).then_some(r))
                        .collect(),
                );
            }
            Err(e) if !e.is_lasting() => {
                // Loki is away, slow or failing (a push would be retried too):
                // wait and ask again, rather than send what it may hold.
                sink.health.report_failure();
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
                    _ = stop.cancelled() => return None,
                }
            }
            Err(e) => {
                // Asking again would not help (no read access, no query path):
                // no more checks this run.
                in_flight.unchecked = true;
                sink.counters
                    .records_possibly_duplicated
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    "cannot check which of the {} records of {} loki at {} already has: {e}; \
                     sending them all, so those it had are stored twice (counted in \
                     wisp_loki_records_possibly_duplicated_total); the check needs read access \
                     to the query api with the push's credentials; not checking again",
                    records.len(),
                    why.what(),
                    redact_url(&url)
                );
                return Some(records);
            }
        }
    }
}

fn count_drop(counters: &LokiCounters, status: u16, records: usize) {
    if let Ok(mut m) = counters.records_dropped.lock() {
        *m.entry(status).or_default() += records as u64;
    }
    if let Ok(mut m) = counters.batches_dropped.lock() {
        *m.entry(status).or_default() += 1;
    }
}

/// Reads the next batch: waits for the first record, then up to
/// `batch_max_wait` for more to fill the push. `None` once drained and caught up.
async fn next_batch(sink: &mut LokiSink, drain: &CancellationToken) -> Option<ReadBatch> {
    let max_bytes = sink.settings.batch_max_bytes;
    let mut batch: Option<ReadBatch> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let have = batch.as_ref().map_or(0, |b| b.records.len());
        let have_bytes = batch.as_ref().map_or(0, |b| b.bytes as usize);
        if have >= BATCH_MAX_RECORDS || have_bytes >= max_bytes {
            return batch;
        }
        let read = tokio::task::block_in_place(|| {
            sink.reader
                .next_batch(BATCH_MAX_RECORDS - have, max_bytes - have_bytes)
        });
        match read {
            Ok(Some(more)) => {
                match &mut batch {
                    Some(b) => {
                        b.records.extend(more.records);
                        b.end = more.end;
                        b.bytes += more.bytes;
                    }
                    None => {
                        deadline = Some(tokio::time::Instant::now() + sink.settings.batch_max_wait);
                        batch = Some(more);
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("cannot read the spool: {e}");
                sink.counters.set_last_error(&e.to_string());
                if batch.is_some() {
                    return batch;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = drain.cancelled() => return None,
                }
                continue;
            }
        }
        // Caught up with the writer.
        if drain.is_cancelled() {
            return batch;
        }
        match deadline {
            Some(d) => {
                tokio::select! {
                    _ = sink.reader.wait() => {}
                    _ = tokio::time::sleep_until(d) => return batch,
                    _ = drain.cancelled() => {}
                }
            }
            None => {
                // Nothing to send: the last acknowledgement goes to disk with
                // the next push, or after a moment without one (a burst pays
                // one ack-file write per push, an idle sink one in all).
                tokio::select! {
                    _ = sink.reader.wait() => {}
                    _ = drain.cancelled() => {}
                    _ = tokio::time::sleep(ACK_SAVE_DELAY), if sink.reader.ack_pending() => {
                        save_ack(&mut sink.reader);
                    }
                }
            }
        }
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
    } else if r.contains("line too long") || r.contains("exceeds") {
        "too long"
    } else if r.contains("label") {
        "labels"
    } else {
        "other"
    }
}

/// Pushes one batch until Loki takes it or rejects it for good, or until a try
/// fails in a way that may have left it stored (the caller checks, then calls
/// again with what Loki lacks).
async fn deliver(
    sink: &mut LokiSink,
    push: &EncodedPush,
    backoff: &mut Backoff,
    logged: &mut HashSet<(u16, &'static str)>,
    stop: &CancellationToken,
) -> Delivery {
    loop {
        let host = match current_host(&mut sink.host, stop).await {
            Some(h) => h,
            None => return Delivery::Stopped,
        };
        let url = fill_host(&sink.settings.url, &host);
        let started = Instant::now();
        let (outcome, maybe_stored) = tokio::select! {
            o = sink.client.push_reporting(&url, push) => o,
            _ = stop.cancelled() => return Delivery::Stopped,
        };
        let took = started.elapsed();
        match outcome {
            PushOutcome::Delivered => {
                let c = &sink.counters;
                c.pushes.fetch_add(1, Ordering::Relaxed);
                c.push_micros
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                c.records_shipped
                    .fetch_add(push.entries as u64, Ordering::Relaxed);
                c.batches_shipped.fetch_add(1, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                c.last_push_unix_millis.store(now, Ordering::Relaxed);
                if backoff.attempts() > 0 {
                    tracing::info!("loki at {} takes pushes again", redact_url(&url));
                }
                backoff.reset();
                sink.health.report_success();
                return Delivery::Done;
            }
            PushOutcome::Rejected { status, reason } => {
                sink.counters.pushes.fetch_add(1, Ordering::Relaxed);
                count_drop(&sink.counters, status, push.entries);
                let cause = cause_of(&reason);
                if logged.insert((status, cause)) {
                    tracing::warn!(
                        "loki rejected a push of {} entries with status {status} ({cause}); \
                         dropping it, further rejections for this cause are only counted: {reason}",
                        push.entries
                    );
                }
                sink.counters
                    .set_last_error(&format!("status {status}: {reason}"));
                backoff.reset();
                sink.health.report_success();
                return Delivery::Done;
            }
            PushOutcome::Retry { after, reason } => {
                sink.counters.retries.fetch_add(1, Ordering::Relaxed);
                sink.counters.set_last_error(&reason);
                sink.health.report_failure();
                let delay = after.unwrap_or_default().max(backoff.next_delay());
                if backoff.attempts() <= 1 {
                    tracing::warn!(
                        "push to loki at {} failed ({reason}); retrying with backoff, lines wait in the buffer",
                        redact_url(&url)
                    );
                } else {
                    tracing::debug!(
                        "push to loki at {} failed again ({reason}); next try in {delay:?}",
                        redact_url(&url)
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Delivery::Stopped,
                }
                if maybe_stored {
                    return Delivery::MaybeStored;
                }
            }
        }
    }
}
