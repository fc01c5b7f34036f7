//! The batches of one file that are out downstream, and the offset before
//! which all of them are acknowledged: what advances a file's checkpoint.
//! Shared between the tailer and the batches' acks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The batches of one file that are out downstream, and the offset before which
/// everything has been acknowledged. Shared between the tailer and the acks.
#[derive(Debug)]
pub(crate) struct Commits {
    /// Bumped when the file is truncated: acks of batches read before that no
    /// longer say anything about the file's new content.
    epoch: u64,
    /// Sequence number of `pending[0]`.
    first_seq: u64,
    /// End offset of each batch out, and what became of it.
    pending: VecDeque<(u64, Slot)>,
    committed: u64,
}

/// A handle to one file's [`Commits`].
pub(crate) type SharedCommits = Arc<Mutex<Commits>>;

impl Commits {
    pub(crate) fn new(committed: u64) -> SharedCommits {
        Arc::new(Mutex::new(Self {
            epoch: 0,
            first_seq: 0,
            pending: VecDeque::new(),
            committed,
        }))
    }

    /// Registers a batch ending at `end`; returns the ticket its ack presents.
    pub(crate) fn register(&mut self, end: u64) -> (u64, u64) {
        let seq = self.first_seq + self.pending.len() as u64;
        self.pending.push_back((end, Slot::Out));
        (self.epoch, seq)
    }

    /// Acknowledges one batch. The checkpoint moves over the acknowledged prefix
    /// only: acks come in order from the FIFO stages after the tailer, but a batch
    /// whose ack was dropped must hold the checkpoint back.
    pub(crate) fn ack(&mut self, epoch: u64, seq: u64) {
        self.settle(epoch, seq, Slot::Acked);
        while let Some(&(end, Slot::Acked)) = self.pending.front() {
            self.committed = self.committed.max(end);
            self.pending.pop_front();
            self.first_seq += 1;
        }
    }

    /// A batch's ack was dropped uncalled: not acknowledged, ever. The checkpoint
    /// stays before it, and nothing waits for it any more.
    pub(crate) fn dropped(&mut self, epoch: u64, seq: u64) {
        self.settle(epoch, seq, Slot::Dropped);
    }

    fn settle(&mut self, epoch: u64, seq: u64, to: Slot) {
        if epoch != self.epoch || seq < self.first_seq {
            return;
        }
        let Ok(i) = usize::try_from(seq - self.first_seq) else {
            return;
        };
        if let Some(slot) = self.pending.get_mut(i) {
            if slot.1 == Slot::Out {
                slot.1 = to;
            }
        }
    }

    /// The file was truncated: forget what is out and start again at `committed`.
    pub(crate) fn reset(&mut self, committed: u64) {
        self.epoch += 1;
        self.first_seq = 0;
        self.pending.clear();
        self.committed = committed;
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }

    /// Batches out whose ack has neither been called nor dropped yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.pending.iter().filter(|(_, s)| *s == Slot::Out).count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Out,
    Acked,
    Dropped,
}

/// What a batch's [`crate::record::Ack`] holds: calling it acknowledges the batch;
/// dropping it uncalled tells the file the batch will never be acknowledged.
pub(crate) struct AckTicket {
    commits: SharedCommits,
    epoch: u64,
    seq: u64,
    done: bool,
}

impl AckTicket {
    pub(crate) fn register(commits: &SharedCommits, end: u64) -> Self {
        let (epoch, seq) = lock(commits).register(end);
        Self {
            commits: commits.clone(),
            epoch,
            seq,
            done: false,
        }
    }

    pub(crate) fn ack(mut self) {
        lock(&self.commits).ack(self.epoch, self.seq);
        self.done = true;
    }
}

impl Drop for AckTicket {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.commits).dropped(self.epoch, self.seq);
        }
    }
}

/// Locks a file's commits; a poisoned lock (a panic elsewhere) still holds valid
/// offsets, so it is used as it is.
pub(crate) fn lock(c: &SharedCommits) -> std::sync::MutexGuard<'_, Commits> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}
