//! Reading the shipper's batches from the spool.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    save_ack, spool_error, BatchLimits, PrepareAhead, Prepared, Service, Shipper, ACK_SAVE_DELAY,
};
use crate::spool::{ReadBatch, SpoolError, SpoolPosition, SpoolReader, SpoolRecord};

/// The reads that make one batch, joined once at the end: growing the first
/// read's records read by read copied them over and over (a large realloc
/// each time the spool had a little more).
struct Gather<R> {
    reads: Vec<ReadBatch<R>>,
    records: usize,
    bytes: u64,
}

impl<R> Gather<R> {
    fn new() -> Self {
        Self {
            reads: Vec::new(),
            records: 0,
            bytes: 0,
        }
    }

    fn push(&mut self, read: ReadBatch<R>) {
        self.records += read.records.len();
        self.bytes += read.bytes;
        self.reads.push(read);
    }

    fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    fn counts(&self) -> (usize, usize) {
        (self.records, self.bytes as usize)
    }

    /// Whether it holds a full batch: `max_records` records or `max_bytes`.
    fn is_full(&self, limits: BatchLimits) -> bool {
        let (have, have_bytes) = self.counts();
        have >= limits.max_records || have_bytes >= limits.max_bytes
    }

    fn finish(mut self) -> Option<ReadBatch<R>> {
        let last = self.reads.pop()?;
        if self.reads.is_empty() {
            return Some(last);
        }
        let mut records = Vec::with_capacity(self.records);
        for r in self.reads {
            records.extend(r.records);
        }
        records.extend(last.records);
        Some(ReadBatch {
            records,
            end: last.end,
            bytes: self.bytes,
        })
    }
}

/// Reads the records up to `end` (the in-flight push), bounded as a batch is.
/// One record per read, so the batch never reaches past `end`. `None` when the
/// spool holds nothing more of the range.
pub(super) fn read_in_flight<S: Service>(
    sh: &mut Shipper<S>,
    end: SpoolPosition,
) -> Result<Option<ReadBatch<S::Record>>, SpoolError> {
    let limits = sh.settings.batch;
    let mut batch = Gather::new();
    while sh.reader.position() < end {
        if batch.is_full(limits) {
            break;
        }
        let Some(more) = sh.reader.next_batch(1, 1)? else {
            break;
        };
        batch.push(more);
    }
    Ok(batch.finish())
}

/// How long the spool must have had no new record before a batch worth a push
/// goes without waiting out `max_wait` (decision 033). Longer than the gaps
/// between a streaming source's appends (a group's parse and fsync), far
/// shorter than any `max_wait` a user sets.
pub(super) const QUIET: Duration = Duration::from_millis(20);

/// What the batches before say about the sources' pace.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// The last batch went full: the sources were writing a burst, whose
    /// tail goes once they are quiet (once: the batch after it waits as any).
    after_full: bool,
}

impl Pace {
    /// Whether a partial batch of `have` records and `have_bytes` goes after
    /// [`QUIET`] rather than at its deadline: it holds half a full push, or it
    /// is the tail of a burst. A trickle's batch is neither, and waits out
    /// `max_wait` as before (one push per `max_wait`); a steadier source
    /// pushes at most twice as often as full pushes would.
    fn goes_when_quiet(&self, limits: BatchLimits, have: usize, have_bytes: usize) -> bool {
        self.after_full
            || have.saturating_mul(2) >= limits.max_records
            || have_bytes.saturating_mul(2) >= limits.max_bytes
    }

    /// A batch read ahead full went ([`ReadAhead::take_ready`]): as
    /// [`Pace::sent`] says of a full one.
    pub(super) fn sent_full(&mut self) {
        self.after_full = true;
    }

    fn sent<R>(&mut self, limits: BatchLimits, batch: Gather<R>) -> Option<ReadBatch<R>> {
        self.after_full = batch.is_full(limits);
        batch.finish()
    }
}

/// A batch being read: its reads, when its first and its last came. It may
/// be started while the push before it waits for its answer
/// ([`Filling::read_ahead`]); [`next_batch`] goes on from there.
pub(super) struct Filling<R> {
    batch: Gather<R>,
    /// `max_wait` after its first record.
    deadline: Option<tokio::time::Instant>,
    /// When a read last brought records (the writer's append, or later).
    last_record: tokio::time::Instant,
    /// A read ahead failed: [`next_batch`] reports it as its own read's.
    failed: Option<SpoolError>,
}

impl<R: SpoolRecord> Filling<R> {
    fn new() -> Self {
        Self {
            batch: Gather::new(),
            deadline: None,
            last_record: tokio::time::Instant::now(),
            failed: None,
        }
    }

    fn is_full(&self, limits: BatchLimits) -> bool {
        self.batch.is_full(limits)
    }

    /// One read of what the spool holds, up to the batch's limits; whether it
    /// brought records.
    fn read(
        &mut self,
        reader: &mut SpoolReader<R>,
        limits: BatchLimits,
    ) -> Result<bool, SpoolError> {
        let (have, have_bytes) = self.batch.counts();
        let Some(more) = reader.next_batch(
            limits.max_records.saturating_sub(have),
            limits.max_bytes.saturating_sub(have_bytes),
        )?
        else {
            return Ok(false);
        };
        self.last_record = tokio::time::Instant::now();
        if self.batch.is_empty() {
            self.deadline = Some(self.last_record + limits.max_wait);
        }
        self.batch.push(more);
        Ok(true)
    }

    /// Reads what the spool holds now, up to the batch's limits, without
    /// waiting for more: done while the push before waits for its answer, so
    /// that the next push is ready when it comes. Nothing read here is in
    /// flight or acknowledged until [`next_batch`] returns it and it is pushed;
    /// dropped (a stop), it stays in the spool for the next start.
    fn read_ahead(&mut self, reader: &mut SpoolReader<R>, limits: BatchLimits) {
        // Bounded: each read brings at least one record, up to the limits.
        while self.failed.is_none() && !self.is_full(limits) {
            match self.read(reader, limits) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => self.failed = Some(e),
            }
        }
    }
}

/// A full batch read ahead, split and its first group encoded: it goes as
/// soon as the push before it is answered.
pub(super) struct ReadyBatch<R, Q> {
    pub(super) end: SpoolPosition,
    pub(super) bytes: u64,
    pub(super) groups: Vec<Vec<R>>,
    /// The first group's request; `None`: encoded when its turn comes.
    pub(super) first: Option<Q>,
}

/// The batch after the one being pushed, read (and, once full, split and its
/// first group encoded: [`Service::prepare_ahead`]) while that push waits for
/// its answer. Bounded: one batch. Nothing here is in flight or acknowledged
/// until its own push begins; dropped at a stop, it stays in the spool.
pub(super) struct ReadAhead<R, Q> {
    prepare: Option<PrepareAhead<R, Q>>,
    /// The batch being read ahead; none while the range in flight at the last
    /// stop is sent (it is read up to its end, to be checked first).
    filling: Option<Filling<R>>,
    ready: Option<ReadyBatch<R, Q>>,
}

impl<R: SpoolRecord, Q> ReadAhead<R, Q> {
    pub(super) fn new(prepare: Option<PrepareAhead<R, Q>>) -> Self {
        Self {
            prepare,
            filling: None,
            ready: None,
        }
    }

    /// Reads the next batch ahead from now on (during the pushes of this one).
    pub(super) fn start(&mut self) {
        if self.filling.is_none() && self.ready.is_none() {
            self.filling = Some(Filling::new());
        }
    }

    /// While a push waits for its answer: reads what the spool holds, and
    /// prepares the batch once it is full (it would go at once anyway).
    pub(super) fn work(&mut self, reader: &mut SpoolReader<R>, limits: BatchLimits) {
        let Some(f) = self.filling.as_mut() else {
            return;
        };
        f.read_ahead(reader, limits);
        let (Some(prepare), true) = (&self.prepare, f.failed.is_none() && f.is_full(limits)) else {
            return;
        };
        let Some(batch) = self.filling.take().and_then(|f| f.batch.finish()) else {
            return;
        };
        let Prepared { groups, first } = prepare(batch.records);
        self.ready = Some(ReadyBatch {
            end: batch.end,
            bytes: batch.bytes,
            groups,
            first,
        });
    }

    /// The batch read ahead full and prepared, if there is one.
    pub(super) fn take_ready(&mut self) -> Option<ReadyBatch<R, Q>> {
        self.ready.take()
    }

    /// What was read ahead of the next batch, for [`next_batch`] to go on from.
    pub(super) fn take_filling(&mut self) -> Filling<R> {
        self.filling.take().unwrap_or_else(Filling::new)
    }
}

/// Reads the next batch, going on from `filling` (empty, or read ahead):
/// waits for the first record, then up to `max_wait` for more to fill it, or,
/// once the spool is quiet for [`QUIET`], less when the batch is worth a push
/// ([`Pace::goes_when_quiet`]). `None` once drained and caught up.
pub(super) async fn next_batch<S: Service>(
    sh: &mut Shipper<S>,
    pace: &mut Pace,
    drain: &CancellationToken,
    filling: Filling<S::Record>,
) -> Option<ReadBatch<S::Record>> {
    let limits = sh.settings.batch;
    let mut f = filling;
    loop {
        if f.is_full(limits) {
            return pace.sent(limits, f.batch);
        }
        let read = match f.failed.take() {
            Some(e) => Err(e),
            None => tokio::task::block_in_place(|| f.read(&mut sh.reader, limits)),
        };
        match read {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                spool_error(sh, &e);
                if !f.batch.is_empty() {
                    return pace.sent(limits, f.batch);
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
            return pace.sent(limits, f.batch);
        }
        match f.deadline {
            Some(d) => {
                let (have, have_bytes) = f.batch.counts();
                let until = if pace.goes_when_quiet(limits, have, have_bytes) {
                    d.min(f.last_record + QUIET)
                } else {
                    d
                };
                if tokio::time::Instant::now() >= until {
                    return pace.sent(limits, f.batch);
                }
                tokio::select! {
                    _ = sh.reader.wait() => {}
                    _ = tokio::time::sleep_until(until) => return pace.sent(limits, f.batch),
                    _ = drain.cancelled() => {}
                }
            }
            None => {
                // Nothing to send: a waiting acknowledgement goes to disk with
                // the next push, or after a moment without one (a burst pays
                // one ack-file write per push, an idle shipper one in all).
                tokio::select! {
                    _ = sh.reader.wait() => {}
                    _ = drain.cancelled() => {}
                    _ = tokio::time::sleep(ACK_SAVE_DELAY), if sh.reader.ack_pending() => {
                        save_ack(sh);
                    }
                }
            }
        }
    }
}
