//! The spool stage: one task per spool that appends what its sources hand it
//! and only then acknowledges it (the commit point of the delivery guarantee).
//! File logs and OTLP requests go through the same stage; they differ only in
//! their [`StageSettings`].
//!
//! Promises:
//! - **Group commit.** Whatever else is already queued when a batch arrives goes
//!   into the same append and the same fsync (up to [`GroupLimits`]), so a fast
//!   source pays one fsync per group, not per batch. Each batch's resume points
//!   go into the same commit as its records, and its [`Owner`] too (whose
//!   share of the spool the records take).
//! - **Acknowledged only once durable.** A batch's [`Ack`] is called after the
//!   append (and, with `buffer.fsync = "batch"`, the fsync) succeeded.
//! - **A failed append** (a full disk, an I/O error) is reported once in the log
//!   and in the spool's [`BufferHealth`] (which `/healthz` reads), then either
//!   retried until it succeeds, holding back the sources
//!   ([`OnFailure::Hold`]: a batch is never skipped, because acknowledging a
//!   later one would move a file checkpoint past it), or answered with the
//!   error ([`OnFailure::Refuse`]: an OTLP sender is told to retry).
//! - **Idle.** After a second without batches the writer gives back a burst's
//!   buffer, and an fsync due under `buffer.fsync = "interval"` is made. An
//!   append that leaves nothing unsynced and little buffered (a metrics
//!   sample) gives its buffer back at once: no wakeup a second later.
//! - **Blocking I/O off the runtime.** Appends and fsyncs run on the blocking
//!   pool (no thread of the stage's own); the stage ends when every sender is
//!   dropped, with a last fsync.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::record::{Ack, Batch, LogRecord, OtlpPayload, Owner};
use crate::spool::{SpoolError, SpoolRecord, SpoolWriter};

/// The size of a record, as group commit counts it.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for LogRecord {
    fn weight(&self) -> usize {
        self.line.len()
    }
}

impl Weigh for OtlpPayload {
    fn weight(&self) -> usize {
        self.body.len()
    }
}

/// How much one append takes at most (at least one batch, whatever its size).
#[derive(Clone, Copy, Debug)]
pub struct GroupLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// What a failed append does to the batches it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Tried again every half second until it succeeds or the agent stops
    /// (then left unacknowledged, to be read again at the next start).
    Hold,
    /// Each batch's ack is told the error ([`Ack::fail`]).
    Refuse,
}

/// How a spool stage behaves.
#[derive(Clone, Debug)]
pub struct StageSettings {
    /// How the log names the spool: "the buffer", "the otlp buffer".
    pub name: &'static str,
    /// What its records are, for the log: "record(s)", "otlp request(s)".
    pub what: &'static str,
    /// What a failure means for the sources, for the log.
    pub meanwhile: &'static str,
    pub group: GroupLimits,
    pub on_failure: OnFailure,
}

/// A spool's health: why it cannot append, while it cannot. The one place the
/// admin endpoint's `/healthz` reads a buffer's state from.
#[derive(Debug)]
pub struct BufferHealth {
    /// How `/healthz` names the spool and what its failure means, e.g. "the log
    /// buffer (spool/loki) cannot write: {error}; reading files is paused, …".
    label: &'static str,
    consequence: &'static str,
    error: Mutex<Option<String>>,
}

impl BufferHealth {
    pub fn new(label: &'static str, consequence: &'static str) -> Self {
        Self {
            label,
            consequence,
            error: Mutex::new(None),
        }
    }

    /// The buffer of file logs (`spool/loki`).
    pub fn logs() -> Self {
        Self::new(
            "the log buffer (spool/loki)",
            "reading files is paused, nothing is lost",
        )
    }

    /// The OTLP relay's buffer (`spool/otlp`).
    pub fn otlp() -> Self {
        Self::new(
            "the otlp buffer (spool/otlp)",
            "OTLP senders are answered 503 / UNAVAILABLE and retry, nothing is lost",
        )
    }

    /// Appends fail with `error` (`None`: they succeed again).
    pub(crate) fn set(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// The last append's error, while appends fail.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What `/healthz` says of this buffer, if anything is wrong.
    pub fn problem(&self) -> Option<String> {
        self.error()
            .map(|e| format!("{} cannot write: {e}; {}", self.label, self.consequence))
    }
}

/// Runs the stage until every sender of `rx` is gone (then fsyncs and returns),
/// or, while an append fails under [`OnFailure::Hold`], until `cancel` fires.
/// `appended` sees each group once it is appended, with its owners as runs
/// (the Loki spool's tap, [`crate::tap`]); it must not wait.
pub async fn run<R, F>(
    mut rx: mpsc::Receiver<Batch<R>>,
    writer: SpoolWriter<R>,
    settings: StageSettings,
    health: Arc<BufferHealth>,
    cancel: CancellationToken,
    mut appended: F,
) where
    R: SpoolRecord + Weigh + Send + 'static,
    F: FnMut(&[R], &[(Owner, usize)]) + Send,
{
    let mut writer = Some(writer);
    let failing = crate::event::Repeated::once();
    // With `buffer.fsync = "interval"` an idle spool still gets its fsync: wake
    // up once a second after records to see whether one is due, until the
    // writer holds nothing unsynced and has handed its buffers back; then
    // sleep until the next records (an idle agent does not wake for this).
    let tick = Duration::from_secs(1);
    let mut settled = false;
    'batches: loop {
        let next = if settled {
            Ok(rx.recv().await)
        } else {
            tokio::time::timeout(tick, rx.recv()).await
        };
        let first = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(_) => {
                // A second without records: the burst is over. Freeing the
                // buffers is no I/O: only a due fsync goes to the blocking pool.
                let name = settings.name;
                match writer.as_mut() {
                    Some(w) if !w.sync_pending() => w.release_memory(),
                    _ => {
                        writer = blocking(writer, move |w| {
                            w.release_memory();
                            if let Err(e) = w.sync_if_due() {
                                tracing::warn!("cannot fsync {name}: {e}");
                            }
                        })
                        .await;
                    }
                }
                match &writer {
                    Some(w) => settled = !w.sync_pending(),
                    None => break,
                }
                continue;
            }
        };
        settled = false;
        let limits = settings.group;
        let weigh = |b: &Batch<R>| -> usize { b.records.iter().map(Weigh::weight).sum() };
        let (mut count, mut bytes) = (first.records.len(), weigh(&first));
        let mut batches = vec![first];
        while count < limits.max_records && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(more) => {
                    count += more.records.len();
                    bytes += weigh(&more);
                    batches.push(more);
                }
                Err(_) => break,
            }
        }
        // Whose the records are, as runs, for the spool's fair shares.
        let mut owners: Vec<(Owner, usize)> = Vec::with_capacity(batches.len());
        for b in &batches {
            match owners.last_mut() {
                Some((o, n)) if *o == b.owner => *n += b.records.len(),
                _ => owners.push((b.owner, b.records.len())),
            }
        }
        // One allocation of the group's size: growing the first batch's records
        // batch by batch copied them over and over.
        let (records, mut ack) = match batches.len() {
            1 => batches
                .pop()
                .map(|b| (b.records, b.ack))
                .unwrap_or_else(|| (Vec::new(), Ack::none())),
            _ => {
                let mut records = Vec::with_capacity(count);
                let mut ack = Ack::none();
                for b in batches {
                    records.extend(b.records);
                    ack = ack.and(b.ack);
                }
                (records, ack)
            }
        };
        let resume = ack.take_resume();
        let mut group = Some((records, resume, owners));
        loop {
            let (Some(mut w), Some((records, resume, owners))) = (writer.take(), group.take())
            else {
                break 'batches;
            };
            let name = settings.name;
            let done = tokio::task::spawn_blocking(move || {
                let r = w.append_owned(&records, &resume, &owners);
                if r.is_ok() {
                    if let Err(e) = w.sync_if_due() {
                        tracing::warn!("cannot fsync {name}: {e}");
                    }
                }
                (w, records, resume, owners, r)
            })
            .await;
            let (count, result) = match done {
                Ok((w, records, resume, owners, r)) => {
                    writer = Some(w);
                    let count = records.len();
                    if r.is_err() {
                        group = Some((records, resume, owners));
                    } else {
                        appended(&records, &owners);
                    }
                    (count, r)
                }
                Err(e) => {
                    tracing::error!("{} stopped: {e}", settings.name);
                    break 'batches;
                }
            };
            match result {
                Ok(()) => {
                    if failing.ended(&"buffer") {
                        tracing::info!("{} takes {} again", settings.name, settings.what);
                        health.set(None);
                    }
                    ack.done();
                    settled = settle_at_once(writer.as_mut());
                    break;
                }
                Err(e) => {
                    let hint = match e {
                        SpoolError::DiskFull { .. } => {
                            " (free space there, or lower buffer.max_bytes)"
                        }
                        _ => "",
                    };
                    let told = failing.error("buffer", || {
                        format!(
                            "cannot buffer {} {}: {e}{hint}; {}",
                            count, settings.what, settings.meanwhile
                        )
                    });
                    if told {
                        health.set(Some(format!("{e}{hint}")));
                    }
                    match settings.on_failure {
                        OnFailure::Refuse => {
                            ack.fail(&format!("{e}{hint}"));
                            break;
                        }
                        OnFailure::Hold => {
                            if cancel.is_cancelled() {
                                // Unacknowledged: the source reads these again next start.
                                break 'batches;
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                _ = cancel.cancelled() => break 'batches,
                            }
                        }
                    }
                }
            }
        }
    }
    let name = settings.name;
    blocking(writer, move |w| {
        if let Err(e) = w.sync() {
            tracing::warn!("cannot fsync {name} at shutdown: {e}");
        }
    })
    .await;
}

/// What a writer may keep between appends and still settle at once after one:
/// a lone small append (a metrics sample, a few lines) is not a burst.
const SETTLES_AT_ONCE_BYTES: usize = 64 * 1024;

/// After an append: whether the writer is settled already (nothing to fsync,
/// buffers no larger than [`SETTLES_AT_ONCE_BYTES`], handed back now), so the
/// stage sleeps until the next records instead of waking a second later.
fn settle_at_once<R: SpoolRecord>(writer: Option<&mut SpoolWriter<R>>) -> bool {
    match writer {
        Some(w) if !w.sync_pending() && w.held_bytes() <= SETTLES_AT_ONCE_BYTES => {
            w.release_memory();
            true
        }
        _ => false,
    }
}

/// Runs `f` on the writer on the blocking pool; `None` if the pool task died
/// (or there was no writer).
async fn blocking<R>(
    writer: Option<SpoolWriter<R>>,
    f: impl FnOnce(&mut SpoolWriter<R>) + Send + 'static,
) -> Option<SpoolWriter<R>>
where
    R: SpoolRecord + Send + 'static,
{
    let mut w = writer?;
    tokio::task::spawn_blocking(move || {
        f(&mut w);
        w
    })
    .await
    .ok()
}
