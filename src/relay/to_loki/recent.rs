//! Logs requests whose storing did not finish with an answer, by digest, and how
//! far each got: the OTLP spool (for the collector) and the Loki spool are two
//! appends, so an attempt can end between them (the second spool refused, the
//! sender's request timed out and was cut while an append waited for disk).
//! The sender's retry of the same request (the same bytes) then stores only
//! what is not durable yet, or waits for an append still pending, instead of
//! storing the request once more where it already is.
//!
//! An attempt answered success forgets its request: the sender got its answer
//! and will not retry, so a program that sends the same bytes again later (a
//! request without timestamps) is stored again. Bounded: [`MAX_REMEMBERED`]
//! requests, the oldest forgotten past it. Memory only: after a crash between
//! the two appends, the retry stores the request in the OTLP spool again (the
//! collector gets it twice; the Loki spool took it once or not at all).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::record::Ack;

/// Unfinished requests remembered at most.
pub const MAX_REMEMBERED: usize = 1024;

/// A request's bytes, hashed twice with independent random keys: 128 bits no
/// sender can aim at.
pub(crate) type Digest = (u64, u64);

/// The requests remembered (see the module doc).
#[derive(Debug)]
pub(crate) struct Recent {
    keys: (RandomState, RandomState),
    inner: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    by_digest: HashMap<Digest, Arc<Progress>>,
    /// Oldest first; may name digests forgotten since (skipped when evicting).
    order: VecDeque<Digest>,
}

/// How far one request got in each spool.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub otlp: Leg,
    pub loki: Leg,
}

/// One spool's append of a request: not tried (or failed), pending, durable.
#[derive(Debug, Default)]
pub(crate) struct Leg(Mutex<Option<watch::Receiver<bool>>>);

/// What an attempt does about a [`Leg`].
pub(crate) enum Turn {
    /// Durable already: nothing to store.
    Done,
    /// Another attempt's append is pending: wait for it ([`wait`]).
    Wait(watch::Receiver<bool>),
    /// This attempt stores it, with this ack joined to its batch's.
    Mine(Ack),
}

impl Recent {
    pub(crate) fn new() -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            inner: Mutex::new(Remembered::default()),
        }
    }

    pub(crate) fn digest(&self, body: &[u8]) -> Digest {
        (self.keys.0.hash_one(body), self.keys.1.hash_one(body))
    }

    /// The progress of the request with this digest; a new one if unknown.
    pub(crate) fn get(&self, digest: Digest) -> Arc<Progress> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = r.by_digest.get(&digest) {
            return p.clone();
        }
        while r.by_digest.len() >= MAX_REMEMBERED {
            match r.order.pop_front() {
                Some(old) => {
                    r.by_digest.remove(&old);
                }
                None => break,
            }
        }
        // `order` only grows with insertions and is trimmed with them: bounded
        // by MAX_REMEMBERED plus the digests forgotten since their insertion.
        if r.order.len() >= 2 * MAX_REMEMBERED {
            let Remembered { by_digest, order } = &mut *r;
            order.retain(|d| by_digest.contains_key(d));
        }
        let p = Arc::new(Progress::default());
        r.by_digest.insert(digest, p.clone());
        r.order.push_back(digest);
        p
    }

    /// The request was answered success: its sender will not retry it.
    pub(crate) fn forget(&self, digest: Digest) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.by_digest.remove(&digest);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_digest
            .len()
    }
}

impl Leg {
    pub(crate) fn is_durable(&self) -> bool {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// What this attempt does (see [`Turn`]). A pending append is one whose
    /// ack was neither called nor dropped yet.
    pub(crate) fn turn(&self) -> Turn {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = g.as_ref() {
            if *rx.borrow() {
                return Turn::Done;
            }
            // Err: the sender (held by the ack) is gone without marking it
            // durable: that append failed, try again.
            if rx.has_changed().is_ok() {
                return Turn::Wait(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(false);
        *g = Some(rx);
        Turn::Mine(Ack::new(move || {
            let _ = tx.send(true);
        }))
    }
}

/// Waits for another attempt's append: `Ok` once durable, `Err` if it failed
/// (the sender retries, and that retry tries again).
pub(crate) async fn wait(mut rx: watch::Receiver<bool>) -> Result<(), String> {
    rx.wait_for(|durable| *durable)
        .await
        .map(|_| ())
        .map_err(|_| "an earlier attempt of this request could not be stored".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_leg_is_stored_once_waited_for_while_pending_and_tried_again_after_a_failure() {
        let leg = Leg::default();
        let Turn::Mine(first) = leg.turn() else {
            panic!("nothing stored yet: this attempt's turn")
        };
        let Turn::Wait(rx) = leg.turn() else {
            panic!("pending: wait for it")
        };
        assert!(!leg.is_durable());
        first.done();
        assert_eq!(wait(rx).await, Ok(()));
        assert!(leg.is_durable());
        assert!(matches!(leg.turn(), Turn::Done));

        let failing = Leg::default();
        let Turn::Mine(ack) = failing.turn() else {
            panic!()
        };
        let Turn::Wait(rx) = failing.turn() else {
            panic!()
        };
        ack.fail("disk full");
        assert!(wait(rx).await.is_err());
        assert!(matches!(failing.turn(), Turn::Mine(_)), "failed: try again");
    }

    #[test]
    fn requests_are_told_apart_by_their_bytes_forgotten_once_answered_and_bounded() {
        let recent = Recent::new();
        let a = recent.digest(b"request a");
        assert_eq!(a, recent.digest(b"request a"));
        assert_ne!(a, recent.digest(b"request b"));
        let p = recent.get(a);
        assert!(Arc::ptr_eq(&p, &recent.get(a)));
        recent.forget(a);
        assert!(!Arc::ptr_eq(&p, &recent.get(a)));
        for i in 0..3 * MAX_REMEMBERED {
            recent.get(recent.digest(&i.to_le_bytes()));
        }
        assert_eq!(recent.len(), MAX_REMEMBERED);
        assert!(recent.inner.lock().unwrap().order.len() <= 2 * MAX_REMEMBERED);
    }
}
