//! The daemon's tap (`GET /tap`, `wisp-agent tap`): the log records the Loki
//! spool stage has just made durable, from files, `exec` runs and OTLP logs
//! alike, handed to whoever watches.
//!
//! Promises:
//! - **No cost when nobody taps.** [`Tap::publish`] is one atomic load then.
//! - **A tap never slows the pipeline.** Each tap has its own buffer of
//!   [`TAP_BUFFER`] records; when it is full (a reader that does not read),
//!   further records are dropped for that tap only, counted
//!   (`wisp_tap_records_dropped_total`), and the tap is told how many
//!   ([`Subscription::take_dropped`]). The stage never waits on a tap.
//! - **Filters run here**, before a record is queued: a record a tap does not
//!   want costs it no buffer and no bandwidth.
//! - **At most [`MAX_TAPS`] taps at once**; the next is refused until one ends.
//! - **A tap sees only what its user may see** ([`TapFilter::owner_uid`]): the
//!   admin endpoint sets it from the peer's uid (see `crate::admin`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::metric::{counter, encode, gauge, names, one, single, Family, Registry};
use crate::record::{LogRecord, Owner};

/// Taps open at once, at most: a few people watching, and a bound on the
/// copies one publish makes.
pub const MAX_TAPS: usize = 8;

/// Records queued for one tap, at most (about 1 MiB of Pino lines); past it
/// the tap loses records, the pipeline nothing.
pub const TAP_BUFFER: usize = 4096;

/// Where a record came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A tailed file (`[[files]]`).
    File,
    /// A `wisp-agent exec` run's output.
    Exec,
    /// An OTLP logs request (`otlp.logs_to_loki`).
    Otlp,
}

impl SourceKind {
    pub const ALL: [SourceKind; 3] = [SourceKind::File, SourceKind::Exec, SourceKind::Otlp];

    /// `file`, `exec` or `otlp`: the `source` of a tapped JSON line.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Exec => "exec",
            SourceKind::Otlp => "otlp",
        }
    }

    /// The kind named `s`, as [`SourceKind::as_str`] writes it.
    pub fn parse(s: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of the records of `owner`; `None` for other owners (the
    /// agent's own, an older spool's).
    pub fn of(owner: Owner) -> Option<SourceKind> {
        match owner.kind() {
            Some("file") => Some(SourceKind::File),
            Some("exec") => Some(SourceKind::Exec),
            Some("otlp") => Some(SourceKind::Otlp),
            _ => None,
        }
    }
}

/// What one tap wants; every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapFilter {
    pub source: Option<SourceKind>,
    /// The `job` label.
    pub job: Option<String>,
    /// The `level` label.
    pub level: Option<String>,
    /// Only records whose owner is this user: the user of a file, of an `exec`
    /// run, of an OTLP sender. `None`: every record (root, the service user).
    pub owner_uid: Option<u32>,
}

impl TapFilter {
    fn matches(&self, kind: SourceKind, owner: Owner, record: &LogRecord) -> bool {
        self.source.is_none_or(|s| s == kind)
            && self.owner_uid.is_none_or(|uid| owner.uid() == Some(uid))
            && self
                .job
                .as_deref()
                .is_none_or(|j| record.labels.get("job") == Some(j))
            && self
                .level
                .as_deref()
                .is_none_or(|l| record.labels.get("level") == Some(l))
    }
}

/// A record handed to taps, shared by every tap that wants it.
#[derive(Debug)]
pub struct Tapped {
    pub source: SourceKind,
    pub record: LogRecord,
}

struct Subscriber {
    filter: TapFilter,
    tx: mpsc::Sender<Arc<Tapped>>,
    dropped: Arc<AtomicU64>,
}

/// Where the Loki spool stage hands its records over to the taps open.
#[derive(Default)]
pub struct Tap {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Taps open: `publish` returns at once at zero.
    active: AtomicUsize,
    counters: TapCounters,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a tap was not opened.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_TAPS} taps are open, the most the daemon serves at once; end one and try again")]
pub struct TooManyTaps;

impl Tap {
    /// Opens a tap with `filter`, if fewer than [`MAX_TAPS`] are open. It ends
    /// when the [`Subscription`] is dropped.
    pub fn subscribe(self: &Arc<Self>, filter: TapFilter) -> Result<Subscription, TooManyTaps> {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|s| !s.tx.is_closed());
        if subscribers.len() >= MAX_TAPS {
            return Err(TooManyTaps);
        }
        let (tx, rx) = mpsc::channel(TAP_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        subscribers.push(Subscriber {
            filter,
            tx,
            dropped: dropped.clone(),
        });
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(Subscription {
            rx,
            dropped,
            tap: self.clone(),
        })
    }

    /// Hands `records` (whose owners are `owners`, as runs of that many
    /// records) to each tap that wants them; never waits.
    pub fn publish(&self, records: &[LogRecord], owners: &[(Owner, usize)]) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|s| !s.tx.is_closed());
        let mut start = 0usize;
        for &(owner, n) in owners {
            let run = records.get(start..start.saturating_add(n)).unwrap_or(&[]);
            start = start.saturating_add(n);
            let Some(kind) = SourceKind::of(owner) else {
                continue;
            };
            for record in run {
                let mut shared: Option<Arc<Tapped>> = None;
                for s in subscribers.iter() {
                    if !s.filter.matches(kind, owner, record) {
                        continue;
                    }
                    let item = shared
                        .get_or_insert_with(|| {
                            Arc::new(Tapped {
                                source: kind,
                                record: record.clone(),
                            })
                        })
                        .clone();
                    match s.tx.try_send(item) {
                        Ok(()) => {
                            self.counters.records.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
    }

    /// Taps open now.
    pub fn open(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Registers the tap's families ([`TapCounters::FAMILIES`]).
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add("tap", names(TapCounters::FAMILIES), move |out| {
            let counters = TapCounters {
                open: AtomicU64::new(self.open() as u64),
                records: AtomicU64::new(self.counters.records.load(Ordering::Relaxed)),
                dropped: AtomicU64::new(self.counters.dropped.load(Ordering::Relaxed)),
            };
            encode(out, TapCounters::FAMILIES, &single(&counters))
        });
    }
}

/// One open tap: the records it wants, in the order the spool took them.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Tapped>>,
    dropped: Arc<AtomicU64>,
    tap: Arc<Tap>,
}

impl Subscription {
    /// The next record; `None` once the pipeline ended.
    pub async fn recv(&mut self) -> Option<Arc<Tapped>> {
        self.rx.recv().await
    }

    /// A record already queued, if any.
    pub fn try_recv(&mut self) -> Option<Arc<Tapped>> {
        self.rx.try_recv().ok()
    }

    /// Records dropped for this tap since the last call (its buffer was full).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::AcqRel)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rx.close();
        self.tap.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tap's counters, as `/metrics` serves them.
#[derive(Debug, Default)]
pub struct TapCounters {
    /// Taps open (read at a scrape).
    open: AtomicU64,
    /// Records queued for a tap.
    records: AtomicU64,
    /// Records a tap lost: its buffer was full.
    dropped: AtomicU64,
}

impl TapCounters {
    /// The tap's metric families, the one place their names and help live.
    pub const FAMILIES: &'static [Family<TapCounters>] = &[
        gauge(
            "wisp_tap_clients",
            "Taps open now (wisp-agent tap, GET /tap); at most 8.",
            |c| one(c.open.load(Ordering::Relaxed)),
        ),
        counter(
            "wisp_tap_records_total",
            "Records queued for a tap (one per tap that wanted it).",
            |c| one(c.records.load(Ordering::Relaxed)),
        ),
        counter(
            "wisp_tap_records_dropped_total",
            "Records a tap lost because its reader fell 4096 records behind; the pipeline loses nothing.",
            |c| one(c.dropped.load(Ordering::Relaxed)),
        ),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Labels, Timestamp};

    fn record(job: &str, level: &str, line: &str) -> LogRecord {
        LogRecord {
            timestamp: Timestamp(1),
            labels: Labels::from_pairs([("job", job), ("level", level)]),
            structured_metadata: Vec::new(),
            line: line.into(),
        }
    }

    #[test]
    fn publishing_with_no_tap_open_queues_nothing() {
        let tap = Arc::new(Tap::default());
        tap.publish(&[record("a", "info", "x")], &[(Owner::file(0, 0), 1)]);
        assert_eq!(tap.counters.records.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn each_tap_gets_what_its_filter_and_user_allow() {
        let tap = Arc::new(Tap::default());
        let mut all = tap.subscribe(TapFilter::default()).unwrap();
        let mut errors = tap
            .subscribe(TapFilter {
                level: Some("error".into()),
                ..TapFilter::default()
            })
            .unwrap();
        let mut exec = tap
            .subscribe(TapFilter {
                source: Some(SourceKind::Exec),
                ..TapFilter::default()
            })
            .unwrap();
        let mut user = tap
            .subscribe(TapFilter {
                owner_uid: Some(1000),
                ..TapFilter::default()
            })
            .unwrap();
        let records = [
            record("a", "info", "root's file"),
            record("a", "error", "user's file"),
            record("b", "info", "user's run"),
            record("c", "info", "unknown sender"),
        ];
        tap.publish(
            &records,
            &[
                (Owner::file(0, 0), 1),
                (Owner::file(1, 1000), 1),
                (Owner::exec(1000), 1),
                (Owner::otlp(None), 1),
            ],
        );
        let lines = |s: &mut Subscription| {
            std::iter::from_fn(|| s.try_recv())
                .map(|t| format!("{}:{}", t.source.as_str(), t.record.line))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines(&mut all),
            [
                "file:root's file",
                "file:user's file",
                "exec:user's run",
                "otlp:unknown sender"
            ]
        );
        assert_eq!(lines(&mut errors), ["file:user's file"]);
        assert_eq!(lines(&mut exec), ["exec:user's run"]);
        assert_eq!(lines(&mut user), ["file:user's file", "exec:user's run"]);
    }

    #[tokio::test]
    async fn a_full_tap_loses_records_and_says_how_many_others_do_not() {
        let tap = Arc::new(Tap::default());
        let slow = tap.subscribe(TapFilter::default()).unwrap();
        let mut fast = tap.subscribe(TapFilter::default()).unwrap();
        let records: Vec<LogRecord> = (0..TAP_BUFFER + 10)
            .map(|i| record("a", "info", &i.to_string()))
            .collect();
        for chunk in records.chunks(100) {
            tap.publish(chunk, &[(Owner::file(0, 0), chunk.len())]);
            while fast.try_recv().is_some() {}
        }
        assert_eq!(slow.take_dropped(), 10);
        assert_eq!(slow.take_dropped(), 0);
        assert_eq!(fast.take_dropped(), 0);
        assert_eq!(tap.counters.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn taps_are_bounded_in_number_and_a_closed_one_frees_its_place() {
        let tap = Arc::new(Tap::default());
        let mut open: Vec<Subscription> = (0..MAX_TAPS)
            .map(|_| tap.subscribe(TapFilter::default()).unwrap())
            .collect();
        assert!(tap.subscribe(TapFilter::default()).is_err());
        open.pop();
        assert_eq!(tap.open(), MAX_TAPS - 1);
        assert!(tap.subscribe(TapFilter::default()).is_ok());
    }
}
