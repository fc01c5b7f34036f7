//! The exec runs the daemon knows, by run id, with the uid that ran each: what a
//! tailer asks before it leaves a marked line to `exec` ([`crate::source::terminal::mark`]).
//!
//! A run is known once the daemon has taken its `hello`: over the socket (the
//! uid is the kernel's word), from a capture in a user's outbox (the uid is the
//! file's owner), from the handled list or the spool's resume points at start.
//! A mark is trusted only for a known run of the file's owner, so a line that
//! prints a forged mark (a run id made up, or another user's) is shipped by the
//! tailer as any other line.
//!
//! Bounded: at most [`MAX_KNOWN`] runs, the oldest forgotten first (a
//! forgotten run's marked lines are then shipped by the tailer too: at worst
//! twice, never lost).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::source::terminal::mark::{run_id, RunId};

/// Runs remembered at most (about 40 bytes each).
pub const MAX_KNOWN: usize = 20_000;

/// See the module doc.
#[derive(Default)]
pub struct KnownRuns {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    owner: HashMap<RunId, u32>,
    order: VecDeque<RunId>,
}

impl std::fmt::Debug for KnownRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownRuns({})", self.len())
    }
}

impl KnownRuns {
    /// Remembers the run `trace_id` (hex) of `uid`; an invalid id is ignored,
    /// and so is a known run claimed again by another user (its first user
    /// keeps it: a user who learnt someone's run id cannot take it over).
    pub fn insert(&self, trace_id: &str, uid: u32) {
        let Some(id) = run_id(trace_id.as_bytes()) else {
            return;
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(e) = inner.owner.entry(id) {
            e.insert(uid);
            inner.order.push_back(id);
            while inner.order.len() > MAX_KNOWN {
                if let Some(old) = inner.order.pop_front() {
                    inner.owner.remove(&old);
                }
            }
        }
    }

    /// Who ran `id`, if the daemon knows the run.
    pub fn owner(&self, id: &RunId) -> Option<u32> {
        self.inner.lock().ok()?.owner.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.owner.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_run_is_known_with_its_user() {
        let k = KnownRuns::default();
        let id = run_id(R.as_bytes()).unwrap();
        assert_eq!(k.owner(&id), None);
        k.insert(R, 1000);
        assert_eq!(k.owner(&id), Some(1000));
        k.insert("not hex", 1);
        assert_eq!(k.len(), 1);
        k.insert(R, 1001);
        assert_eq!(k.owner(&id), Some(1000), "the first user keeps the run");
    }

    #[test]
    fn the_oldest_run_is_forgotten_past_the_bound() {
        let k = KnownRuns::default();
        for i in 0..=MAX_KNOWN {
            k.insert(&format!("{:032x}", i + 1), 1);
        }
        assert_eq!(k.len(), MAX_KNOWN);
        assert_eq!(
            k.owner(&run_id(b"00000000000000000000000000000001").unwrap()),
            None
        );
        assert_eq!(
            k.owner(&run_id(format!("{:032x}", MAX_KNOWN + 1).as_bytes()).unwrap()),
            Some(1)
        );
    }
}
