//! The shipper: one loop that drains a spool into a remote [`Service`] (Loki,
//! the OTLP collector), whatever the service's wire format.
//!
//! Promises:
//! - **Acknowledged only once taken.** Records leave the spool only when the
//!   service took them, or refused them for good (counted by the service, each
//!   cause logged once). A request the service took in part (Loki's 400) is
//!   settled by the service ([`Service::settle`]): it says which records to
//!   send again, changed or not, and what to mark the push in flight with
//!   before they go ([`SpoolReader::mark_in_flight`]), so that a restart's
//!   check finds them in their new form. Everything else (no host found yet, a refused
//!   connection, a timeout, 429, 5xx) is retried with capped exponential backoff
//!   and full jitter, honouring `Retry-After` ([`crate::sink::retry`]); the
//!   spool keeps taking records meanwhile, bounded by its size.
//! - **Batches.** A batch is read from the spool up to [`BatchLimits`], waiting
//!   at most `max_wait` after its first record for more to fill it (less once
//!   the spool is quiet, when the batch holds half a full one or ends
//!   a burst: `read.rs`), then split and encoded by the service into one
//!   request per part, sent in order. While a request waits for its answer
//!   the next batch is read (and, once full, split and its first request
//!   encoded: [`Service::prepare_ahead`]), so that it goes when the answer
//!   comes; one batch at most. It is neither in flight nor acknowledged
//!   until its own push begins: at a stop it stays in the spool.
//! - **Exactly once, where the service can tell** ([`Service::CHECKS_STORED`]):
//!   before a batch is first sent its end is recorded in the spool
//!   ([`SpoolReader::begin_push`]), its acknowledgement is written with the next
//!   batch's record (or after [`ACK_SAVE_DELAY`] idle), and what was in flight at
//!   the last stop, or what a try may have left stored, is first checked with
//!   [`Service::without_stored`] and only the rest sent. Other services are
//!   acknowledged after each batch (at least once).
//! - **Shutdown.** `drain` means no more records are coming: the loop ends once
//!   the spool is caught up. `stop` ends it at once; what is unshipped stays in
//!   the spool for the next start.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::discovery::{Chosen, HostHealth};
use crate::event::Repeated;
use crate::sink::retry::Backoff;
pub use crate::sink::retry::{Cause, Outcome, Partial};
use crate::spool::{ReadBatch, SpoolError, SpoolPosition, SpoolReader, SpoolRecord};

mod deliver;
mod read;

use deliver::deliver_group;
use read::{next_batch, read_in_flight, Pace, ReadAhead};

/// How long an acknowledgement waits for the next push to be written with it.
pub const ACK_SAVE_DELAY: Duration = Duration::from_secs(1);

/// How much one batch read from the spool holds at most.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_records: usize,
    /// Bytes of records, as the spool counts them (at least one record).
    pub max_bytes: usize,
    /// How long a batch waits after its first record for more to fill it.
    pub max_wait: Duration,
}

/// How the shipper reaches the service and paces itself.
#[derive(Clone, Debug)]
pub struct ShipSettings {
    /// The URL or endpoint, with `{host}` in it.
    pub url: String,
    pub batch: BatchLimits,
    /// The backoff's cap.
    pub max_backoff: Duration,
}

/// How the log speaks of a service.
#[derive(Clone, Copy, Debug)]
pub struct Wording {
    /// "loki", "the otlp collector".
    pub name: &'static str,
    /// A request failing, before the URL: "push to loki at", "otlp export to".
    pub sending: &'static str,
    /// One request: "push", "export".
    pub request: &'static str,
    /// Requests: "pushes", "exports".
    pub requests: &'static str,
    /// What waits while it is away: "lines wait", "data waits".
    pub waiting: &'static str,
    /// Its spool: "the spool", "the otlp spool".
    pub spool: &'static str,
}

/// How a request taken in part was settled: what to send next.
#[derive(Debug)]
pub struct Settled<R> {
    /// Records to send again (changed or not), in order; empty when done.
    pub resend: Vec<R>,
    /// Put on the push in flight before `resend` goes.
    pub mark: Option<u64>,
    /// Wait before sending `resend`: the backoff's next delay, and at least
    /// the answer's `Retry-After`.
    pub wait: bool,
}

impl<R> Settled<R> {
    /// Nothing more to send.
    pub fn done() -> Self {
        Settled {
            resend: Vec::new(),
            mark: None,
            wait: false,
        }
    }
}

/// What the shipper tells a service to count.
pub enum Event<'a, Q> {
    /// A request was taken; `took` is its round trip.
    Delivered { request: &'a Q, took: Duration },
    /// A request was refused for good: the service counts it and logs it
    /// (once per cause); `shown` is where it was sent, as the log may show it.
    Rejected {
        request: &'a Q,
        cause: Cause,
        reason: &'a str,
        shown: &'a str,
    },
    /// A try failed and will be retried.
    Retried { reason: &'a str },
    /// A batch of `bytes` (as the spool counts them) was shipped.
    Acknowledged { bytes: u64 },
    /// The spool could not be read.
    SpoolError { error: &'a str },
}

/// A batch split into its groups, the first encoded ([`Service::prepare_ahead`]).
pub struct Prepared<R, Q> {
    pub groups: Vec<Vec<R>>,
    /// `None`: the group is encoded when its turn comes ([`Service::encode`]).
    pub first: Option<Q>,
}

/// Splits a batch read ahead and encodes its first group, while the service
/// is busy with the request before it ([`Service::prepare_ahead`]).
pub type PrepareAhead<R, Q> = Box<dyn Fn(Vec<R>) -> Prepared<R, Q> + Send + Sync>;

/// Why [`Service::without_stored`] is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The push in flight when the agent last stopped.
    Restart,
    /// A push whose last try may have reached the service, before it is tried
    /// again.
    Retry,
    /// A push the service took in part, whose answer does not say which part.
    Partial,
}

impl Check {
    pub fn what(self) -> &'static str {
        match self {
            Check::Restart => "the push in flight when the agent stopped",
            Check::Retry => "a push whose last try may have reached it",
            Check::Partial => "a push it took in part",
        }
    }
}

/// Where a [`Service::without_stored`] check may wait for the host.
pub struct Reach<'a> {
    pub url: &'a str,
    pub host: &'a mut watch::Receiver<Option<Chosen>>,
    pub health: &'a HostHealth,
    pub stop: &'a CancellationToken,
    /// The mark on the push in flight at the last stop
    /// ([`SpoolReader::mark_in_flight`]), for [`Check::Restart`].
    pub mark: Option<u64>,
}

/// A remote service the shipper drains a spool into: how records become
/// requests, how one is sent and its answer classified, what is counted.
pub trait Service: Send {
    type Record: SpoolRecord + Send + 'static;
    type Request: Send + Sync;

    /// Whether the service can be asked which records it already holds
    /// ([`Service::without_stored`]): then pushes are recorded in flight and
    /// acknowledgements written with the next push.
    const CHECKS_STORED: bool = false;

    /// How the log speaks of the service.
    const WORDING: Wording;

    /// Splits a batch into the groups that each become one request (in order).
    fn split(&self, records: Vec<Self::Record>) -> Vec<Vec<Self::Record>> {
        vec![records]
    }

    /// Encodes one group; `None` drops it (the service logs and counts why).
    fn encode(&self, records: &[Self::Record]) -> Option<Self::Request>;

    /// How a full batch read ahead is split and its first group encoded
    /// while the request before it is in flight (the service is busy sending
    /// it meanwhile): as [`Service::split`] and [`Service::encode`] would, but
    /// silent: a group that cannot be encoded gets no request, and
    /// [`Service::encode`] reports it when its turn comes. `None` (the
    /// default): a batch is split and encoded when its turn comes.
    fn prepare_ahead(&self) -> Option<PrepareAhead<Self::Record, Self::Request>> {
        None
    }

    /// Sends one request to `url` (the settings' URL with the host filled in).
    fn send(&mut self, url: &str, request: &Self::Request) -> impl Future<Output = Outcome> + Send;

    fn count(&self, event: Event<'_, Self::Request>);

    /// The records the service does not hold yet (only called when
    /// [`Service::CHECKS_STORED`]); `None` when `reach.stop` fired first.
    fn without_stored(
        &mut self,
        records: Vec<Self::Record>,
        why: Check,
        reach: Reach<'_>,
    ) -> impl Future<Output = Option<Vec<Self::Record>>> + Send {
        let _ = (why, reach);
        async move { Some(records) }
    }

    /// Settles a request taken in part ([`Outcome::Partial`]; `records` are
    /// the request's): counts what was taken and refused, and says what to
    /// send next. `None` when `reach.stop` fired first. Only a service that
    /// answers [`Outcome::Partial`] is asked.
    fn settle(
        &mut self,
        records: Vec<Self::Record>,
        answer: Partial,
        reach: Reach<'_>,
    ) -> impl Future<Output = Option<Settled<Self::Record>>> + Send {
        let _ = (records, answer, reach);
        async move { Some(Settled::done()) }
    }
}

/// The loop's inputs.
pub struct Shipper<S: Service> {
    pub settings: ShipSettings,
    pub service: S,
    pub reader: SpoolReader<S::Record>,
    pub host: watch::Receiver<Option<Chosen>>,
    pub health: HostHealth,
}

/// Runs until `drain` fires and the spool is caught up, or until `stop` fires
/// (the shutdown grace period ran out: what is unshipped stays in the spool).
pub async fn run<S: Service>(
    mut shipper: Shipper<S>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    ship(&mut shipper, &drain, &stop).await;
    save_ack(&mut shipper);
}

/// The state of one shipping loop.
struct Loop {
    backoff: Backoff,
    /// Notes (partial successes), each logged once per key.
    notes: Repeated<String>,
    /// The spool's in-flight record failing ([`BEGIN_PUSH`], [`MARK`]): logged
    /// once until it works again.
    failing: Repeated,
    /// The end of the push in flight at the last stop, while the reader is not
    /// past it.
    in_flight: Option<SpoolPosition>,
    /// What the batches before say about the sources' pace.
    pace: Pace,
}

/// Causes of [`Loop::failing`].
const BEGIN_PUSH: &str = "begin push";
const MARK: &str = "mark in flight";

async fn ship<S: Service>(
    sh: &mut Shipper<S>,
    drain: &CancellationToken,
    stop: &CancellationToken,
) {
    let mut state = Loop {
        backoff: Backoff::new(Duration::from_millis(250), sh.settings.max_backoff),
        notes: Repeated::once(),
        failing: Repeated::once(),
        in_flight: if S::CHECKS_STORED {
            sh.reader.in_flight()
        } else {
            None
        },
        pace: Pace::default(),
    };
    // The next batch, read while the push before waits for its answer.
    let mut ahead = ReadAhead::new(sh.service.prepare_ahead());
    loop {
        let next = match state.in_flight {
            Some(end) => {
                let read = tokio::task::block_in_place(|| read_in_flight(sh, end));
                match read {
                    Ok(Some(b)) => {
                        if sh.reader.position() >= end {
                            state.in_flight = None;
                        }
                        Next::Read(b, true)
                    }
                    Ok(None) => {
                        state.in_flight = None;
                        continue;
                    }
                    Err(e) => {
                        // Read normally from here (which retries the spool); the
                        // records left of the range are then sent unchecked.
                        spool_error(sh, &e);
                        state.in_flight = None;
                        continue;
                    }
                }
            }
            None => match ahead.take_ready() {
                Some(ready) => {
                    state.pace.sent_full();
                    Next::Ready(ready)
                }
                None => {
                    let filling = ahead.take_filling();
                    let batch = tokio::select! {
                        b = next_batch(sh, &mut state.pace, drain, filling) => b,
                        _ = stop.cancelled() => return,
                    };
                    let Some(batch) = batch else { return };
                    Next::Read(batch, false)
                }
            },
        };
        let (groups, mut first, end, bytes) = match next {
            Next::Read(batch, replayed) => {
                let ReadBatch {
                    mut records,
                    end,
                    bytes,
                } = batch;
                if replayed {
                    let Some(missing) = without_stored(sh, records, Check::Restart, stop).await
                    else {
                        return; // stopped: the range is checked again at the next start
                    };
                    records = missing;
                }
                let groups = (!records.is_empty()).then(|| sh.service.split(records));
                (groups, None, end, bytes)
            }
            Next::Ready(r) => (Some(r.groups), r.first, r.end, r.bytes),
        };
        if let Some(groups) = groups {
            if S::CHECKS_STORED {
                begin_push(sh, &mut state, end);
            }
            // While this push waits for its answer, the next batch is read
            // (not past the range in flight at the last stop: that is read up
            // to its end, to be checked first).
            if state.in_flight.is_none() {
                ahead.start();
            }
            for group in groups {
                let encoded = first.take();
                if !deliver_group(sh, &mut state, group, encoded, stop, &mut ahead).await {
                    // Stopped with the batch unshipped: it stays in the spool
                    // (and, recorded in flight, is checked at the next start).
                    return;
                }
            }
            sh.service.count(Event::Acknowledged { bytes });
        }
        acknowledge(sh, end);
    }
}

/// The next batch to push.
enum Next<R, Q> {
    /// Read from the spool; `true`: of the range in flight at the last stop.
    Read(ReadBatch<R>, bool),
    /// Read ahead full and prepared.
    Ready(read::ReadyBatch<R, Q>),
}

/// Records the end of the push about to be sent (with the last acknowledgement).
fn begin_push<S: Service>(sh: &mut Shipper<S>, state: &mut Loop, end: SpoolPosition) {
    match tokio::task::block_in_place(|| sh.reader.begin_push(end)) {
        Ok(()) => state.failing.clear(&BEGIN_PUSH),
        Err(e) => {
            // Pushing anyway keeps the lines flowing; only a stop before this
            // push's answer would then re-send it unchecked.
            state.failing.warn(BEGIN_PUSH, || {
                format!(
                    "cannot record the {} {} in flight in {} ({e}); should the agent stop \
                     before it answers, the {} is sent again without checking what it already has",
                    S::WORDING.name,
                    S::WORDING.request,
                    S::WORDING.spool,
                    S::WORDING.request,
                )
            });
        }
    }
}

async fn without_stored<S: Service>(
    sh: &mut Shipper<S>,
    records: Vec<S::Record>,
    why: Check,
    stop: &CancellationToken,
) -> Option<Vec<S::Record>> {
    if !S::CHECKS_STORED {
        return Some(records);
    }
    let mark = match why {
        Check::Restart => sh.reader.in_flight_mark(),
        Check::Retry | Check::Partial => None,
    };
    let reach = Reach {
        url: &sh.settings.url,
        host: &mut sh.host,
        health: &sh.health,
        stop,
        mark,
    };
    sh.service.without_stored(records, why, reach).await
}

/// Acknowledges in the spool what the service took: at once, or (for a
/// service that checks what it holds) written with the next push's in-flight
/// record, or by [`save_ack`] once idle. Until then a restart checks those
/// records against the service, which holds them, and sends none again.
fn acknowledge<S: Service>(sh: &mut Shipper<S>, end: SpoolPosition) {
    if S::CHECKS_STORED {
        sh.reader.ack_later(end);
    } else if let Err(e) = tokio::task::block_in_place(|| sh.reader.ack(end)) {
        tracing::warn!(
            "cannot record the {} acknowledgement in the spool: {e}",
            S::WORDING.name
        );
    }
}

/// Writes a waiting acknowledgement to the spool's `ack` file.
pub(super) fn save_ack<S: Service>(sh: &mut Shipper<S>) {
    if let Err(e) = tokio::task::block_in_place(|| sh.reader.save_ack()) {
        // The records were delivered; an ack that did not persist means they are
        // checked against what the service holds after a restart.
        tracing::warn!(
            "cannot record the {} acknowledgement in the spool: {e}",
            S::WORDING.name
        );
    }
}

pub(super) fn spool_error<S: Service>(sh: &Shipper<S>, e: &SpoolError) {
    tracing::error!("cannot read {}: {e}", S::WORDING.spool);
    sh.service.count(Event::SpoolError {
        error: &e.to_string(),
    });
}
