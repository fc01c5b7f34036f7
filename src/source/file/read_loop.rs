//! The read loop's steps: reading every file in turn, sending batches (a full
//! channel holds the reading), flushing what timed out, closing drained files,
//! writing the checkpoints, and the bounded shutdown.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::record::{Ack, SourceBatch};

use super::checkpoint;
use super::open;
use super::reader::{FileState, Tailed};
use super::{Closing, Flow, Tailer};

/// At shutdown, how long to wait for the last batches to be taken and acknowledged.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from one file before the others get their turn.
const FILE_TURN_BYTES: usize = 8 << 20;

impl Tailer {
    /// Reads what is new in every file, oldest first, sending batches as they
    /// fill; a full channel holds the reading here. One turn per file: returns
    /// [`Flow::More`] when some file has more to read, so that timers, rescans and
    /// checkpoints get their turn during a long catch-up.
    pub(super) async fn pump(
        &mut self,
        tx: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
    ) -> Flow {
        let mut more = false;
        let seqs: Vec<u64> = self.files.keys().copied().collect();
        for seq in seqs {
            let mut turn = 0usize;
            while let Some(t) = self.files.get_mut(&seq) {
                match t.check_truncated(false, &self.counters, &mut self.out) {
                    Ok(None) => {}
                    Ok(Some(before)) => self.on_truncation(seq, before),
                    Err(e) => {
                        t.report_error(format!(
                            "cannot stat {}: {}",
                            t.path.display(),
                            open::describe(&e)
                        ));
                        break;
                    }
                }
                let Some(t) = self.files.get_mut(&seq) else {
                    break;
                };
                let n = match t.read_available(
                    &mut self.chunk,
                    FILE_TURN_BYTES - turn,
                    &self.counters,
                    &mut self.out,
                ) {
                    Ok(n) => n,
                    Err(e) => {
                        t.report_error(format!(
                            "cannot read {}: {}",
                            t.path.display(),
                            open::describe(&e)
                        ));
                        break;
                    }
                };
                turn += n;
                if n == 0 || turn >= FILE_TURN_BYTES {
                    t.take_batch(&mut self.out);
                }
                if self.send_out(tx, cancel).await == Flow::Stop {
                    return Flow::Stop;
                }
                if n == 0 {
                    break;
                }
                if turn >= FILE_TURN_BYTES {
                    more = true;
                    break;
                }
            }
        }
        if more {
            Flow::More
        } else {
            Flow::Go
        }
    }

    /// Sends the batches waiting in `out`, in order. Stops (keeping the batch) when
    /// cancelled, or when the receiver is gone.
    pub(super) async fn send_out(
        &mut self,
        tx: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
    ) -> Flow {
        while !self.out.is_empty() {
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Flow::Stop,
                p = tx.reserve() => p,
            };
            let Ok(permit) = permit else {
                tracing::warn!("the pipeline stopped taking lines: the file tailer stops");
                return Flow::Stop;
            };
            if let Some(b) = self.out.pop_front() {
                permit.send(b);
                self.moved = true;
            }
        }
        Flow::Go
    }

    /// Flushes timed-out partial lines and records, and closes drained files.
    pub(super) fn flush_due(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (seq, t) in self.files.iter_mut() {
            t.flush_due(now, &self.counters, &mut self.out);
            if let FileState::Draining { until, .. } = t.state {
                // Closed only once read to its end (a blocked channel may have held
                // the reading back past the grace period).
                if now >= until && t.size().is_ok_and(|size| size <= t.offset) {
                    done.push(*seq);
                }
            }
        }
        for seq in done {
            self.close(seq);
        }
        for t in self.files.values_mut() {
            t.take_batch(&mut self.out);
        }
    }

    /// Closes a drained file; its checkpoint is kept until its last acks are in.
    fn close(&mut self, seq: u64) {
        let Some(mut t) = self.files.remove(&seq) else {
            return;
        };
        self.moved = true;
        self.by_id.remove(&t.id);
        t.finish(&self.counters, &mut self.out);
        let deleted = matches!(t.state, FileState::Draining { deleted: true, .. });
        tracing::info!(
            "closed {} at byte {}{}",
            t.path.display(),
            t.offset,
            if deleted { " (deleted)" } else { "" }
        );
        self.counters.files_open.fetch_sub(1, Ordering::Relaxed);
        self.closing.push(Closing {
            id: t.id,
            path: t.path.clone(),
            fingerprint: t.fingerprint,
            commits: t.commits.clone(),
            deleted,
        });
    }

    /// The periodic fallback: asks for a sweep of the globs, and checks every
    /// open file for a truncation by size and by its first bytes. Reading
    /// follows in `pump`.
    pub(super) fn poll(&mut self) {
        self.want_sweep();
        let seqs: Vec<u64> = self.files.keys().copied().collect();
        for seq in seqs {
            let Some(t) = self.files.get_mut(&seq) else {
                continue;
            };
            match t.check_truncated(true, &self.counters, &mut self.out) {
                Ok(None) => {}
                Ok(Some(before)) => self.on_truncation(seq, before),
                Err(e) => t.report_error(format!(
                    "cannot check {}: {}",
                    t.path.display(),
                    open::describe(&e)
                )),
            }
        }
    }

    /// The earliest moment a file needs attention without new data.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.files.values().filter_map(Tailed::deadline).min()
    }

    /// Writes the acknowledged offsets, if any moved (or `force`).
    pub(super) fn save(&mut self, force: bool) {
        let mut changed = force;
        let mut forgotten = Vec::new();
        for t in self.files.values() {
            changed |= self
                .store
                .update(t.id, &t.path, t.fingerprint, t.committed());
        }
        self.closing.retain(|c| {
            let (committed, outstanding) = {
                let g = checkpoint::lock(&c.commits);
                (g.committed(), g.outstanding())
            };
            if c.deleted && outstanding == 0 {
                // Gone for good and fully handed on: nothing left to resume.
                self.store.remove(c.id);
                forgotten.push(c.id);
                changed = true;
            } else {
                changed |= self.store.update(c.id, &c.path, c.fingerprint, committed);
            }
            outstanding > 0
        });
        if !changed {
            return;
        }
        forgotten.extend(self.store.prune(SystemTime::now()));
        if !forgotten.is_empty() {
            // The spool keeps a resume point until told to forget it.
            self.out.push_back(SourceBatch {
                source: self.marker_source.clone(),
                lines: Vec::new(),
                ack: forgotten.into_iter().fold(Ack::none(), |a, id| {
                    a.with_resume(checkpoint::forget_point(id))
                }),
            });
        }
        match self.store.save() {
            Ok(()) => {
                if self.save_failing.ended(&"save") {
                    tracing::info!(
                        "checkpoint file {} written again",
                        self.store.path().display()
                    );
                }
            }
            Err(e) => {
                self.save_failing
                    .counted(&self.counters.checkpoint_write_errors, "save", || {
                        format!(
                            "cannot write checkpoint file {}: {e}; will retry",
                            self.store.path().display()
                        )
                    });
            }
        }
    }

    /// Stops reading, hands on every finished record, waits (bounded) for the acks,
    /// and writes the checkpoints. Unfinished lines and records are not flushed:
    /// the checkpoint stays before them, and a restart reads them whole.
    pub(super) async fn shut_down(&mut self, tx: &mpsc::Sender<SourceBatch>) {
        self.counters
            .files_open
            .fetch_sub(self.files.len() as u64, Ordering::Relaxed);
        for t in self.files.values_mut() {
            t.take_batch(&mut self.out);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while let Some(b) = self.out.pop_front() {
            match tokio::time::timeout_at(deadline, tx.send(b)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(
                        "file tailer: the pipeline did not take the last lines; they are read \
                         again at the next start"
                    );
                    self.out.clear();
                    break;
                }
            }
        }
        while Instant::now() < deadline && self.outstanding() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.save(false);
    }

    pub(super) fn outstanding(&self) -> usize {
        self.files.values().map(Tailed::outstanding).sum::<usize>()
            + self
                .closing
                .iter()
                .map(|c| checkpoint::lock(&c.commits).outstanding())
                .sum::<usize>()
    }
}
