//! The agent's internal events that can repeat: each cause is logged the first
//! time, then at most once per interval (or never again, for [`Repeated::once`]),
//! with the count of those not logged since; a cause's counter, where it has
//! one, is bumped every time ([`Repeated::counted`]). Every stage that would
//! otherwise keep a "warned already" flag uses this, so the log stays readable
//! and small whatever the rate (a local user opening connections in a loop, a
//! disk that stays full).
//!
//! Causes are keys the code chooses (`'static` names, a status, a user): the map
//! holds one entry per cause seen, so a key drawn from outside must come from a
//! bounded set.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval [`Repeated::new`] callers use unless they have a reason not to.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// How loud an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// See the module doc.
#[derive(Debug)]
pub struct Repeated<K = &'static str> {
    /// `None`: a cause is logged once, then only counted (until [`Repeated::clear`]).
    interval: Option<Duration>,
    causes: Mutex<HashMap<K, Seen>>,
}

#[derive(Debug)]
struct Seen {
    logged: Instant,
    since: u64,
}

impl<K: Hash + Eq> Default for Repeated<K> {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl<K: Hash + Eq> Repeated<K> {
    /// Each cause logged at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Repeated {
            interval: Some(interval),
            causes: Mutex::new(HashMap::new()),
        }
    }

    /// Each cause logged once, then only counted, until [`Repeated::clear`]
    /// (the condition ended: the next time it starts is logged again).
    pub fn once() -> Self {
        Repeated {
            interval: None,
            causes: Mutex::new(HashMap::new()),
        }
    }

    /// Logs `message()` at WARN if `cause` is due (see the module doc), else
    /// only counts it. Returns whether it logged.
    pub fn warn(&self, cause: K, message: impl FnOnce() -> String) -> bool {
        self.log(Level::Warn, cause, message)
    }

    /// As [`Repeated::warn`], at ERROR.
    pub fn error(&self, cause: K, message: impl FnOnce() -> String) -> bool {
        self.log(Level::Error, cause, message)
    }

    /// As [`Repeated::warn`], bumping `counter` every time.
    pub fn counted(&self, counter: &AtomicU64, cause: K, message: impl FnOnce() -> String) -> bool {
        counter.fetch_add(1, Ordering::Relaxed);
        self.warn(cause, message)
    }

    /// Logs `message()` at `level` if `cause` is due, with how many were not
    /// logged since. Returns whether it logged.
    pub fn log(&self, level: Level, cause: K, message: impl FnOnce() -> String) -> bool {
        let Some(skipped) = self.due(cause, Instant::now()) else {
            return false;
        };
        let message = match (skipped, self.interval) {
            (0, _) | (_, None) => message(),
            (n, Some(every)) => format!(
                "{} ({n} more like it in the last {} s, not logged)",
                message(),
                every.as_secs()
            ),
        };
        match level {
            Level::Info => tracing::info!("{message}"),
            Level::Warn => tracing::warn!("{message}"),
            Level::Error => tracing::error!("{message}"),
        }
        true
    }

    /// The condition behind `cause` ended: the next time is logged at once.
    pub fn clear(&self, cause: &K) {
        if let Ok(mut causes) = self.causes.lock() {
            causes.remove(cause);
        }
    }

    /// As [`Repeated::clear`]; returns whether `cause` had been logged (so the
    /// caller may say the condition ended).
    pub fn ended(&self, cause: &K) -> bool {
        self.causes
            .lock()
            .map(|mut c| c.remove(cause).is_some())
            .unwrap_or(false)
    }

    /// `Some(not logged since)` when `cause` is due to be logged at `now`.
    fn due(&self, cause: K, now: Instant) -> Option<u64> {
        let mut causes = self.causes.lock().ok()?;
        match causes.get_mut(&cause) {
            Some(c) => match self.interval {
                Some(every) if now.duration_since(c.logged) >= every => {
                    let skipped = c.since;
                    *c = Seen {
                        logged: now,
                        since: 0,
                    };
                    Some(skipped)
                }
                _ => {
                    c.since += 1;
                    None
                }
            },
            None => {
                causes.insert(
                    cause,
                    Seen {
                        logged: now,
                        since: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_logged_once_per_interval_with_the_count_of_the_rest() {
        let r = Repeated::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(r.due("refused", t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(r.due("refused", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(r.due("other", t0), Some(0), "causes are counted apart");
        assert_eq!(r.due("refused", t0 + Duration::from_secs(61)), Some(1000));
        assert_eq!(r.due("refused", t0 + Duration::from_secs(62)), None);
    }

    #[test]
    fn a_cause_logged_once_is_logged_again_only_once_cleared() {
        let r = Repeated::once();
        let t0 = Instant::now();
        assert_eq!(r.due("full", t0), Some(0));
        assert_eq!(r.due("full", t0 + Duration::from_secs(3600)), None);
        assert!(r.ended(&"full"), "it had been logged");
        assert!(!r.ended(&"full"), "and is no more");
        assert_eq!(r.due("full", t0 + Duration::from_secs(3601)), Some(0));
    }

    #[test]
    fn a_counted_event_bumps_its_counter_every_time() {
        let r: Repeated = Repeated::once();
        let counter = AtomicU64::new(0);
        assert!(r.counted(&counter, "bound", || "x".into()));
        assert!(!r.counted(&counter, "bound", || "x".into()));
        assert_eq!(counter.load(Ordering::Relaxed), 2);
    }
}
