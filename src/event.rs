//! Warnings that can repeat as fast as someone else can cause them (a local
//! user opening connections in a loop): each cause is logged the first time,
//! then at most once per interval, with the count of those not logged since.
//! The log stays readable and small whatever the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval [`Repeated::new`] callers use unless they have a reason not to.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// See the module doc. Causes are `'static` names written in the code, so the
/// map is as small as the code's list of causes.
#[derive(Debug)]
pub struct Repeated {
    interval: Duration,
    causes: Mutex<HashMap<&'static str, Cause>>,
}

#[derive(Debug)]
struct Cause {
    logged: Instant,
    since: u64,
}

impl Default for Repeated {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl Repeated {
    pub fn new(interval: Duration) -> Self {
        Repeated {
            interval,
            causes: Mutex::new(HashMap::new()),
        }
    }

    /// Logs `message()` at WARN if `cause` was not logged within the interval
    /// (with how many were not logged since), else only counts it. Returns
    /// whether it logged.
    pub fn warn(&self, cause: &'static str, message: impl FnOnce() -> String) -> bool {
        let Some(skipped) = self.due(cause, Instant::now()) else {
            return false;
        };
        let message = message();
        match skipped {
            0 => tracing::warn!("{message}"),
            n => tracing::warn!(
                "{message} ({n} more like it in the last {} s, not logged)",
                self.interval.as_secs()
            ),
        }
        true
    }

    /// `Some(not logged since)` when `cause` is due to be logged at `now`.
    fn due(&self, cause: &'static str, now: Instant) -> Option<u64> {
        let mut causes = self.causes.lock().ok()?;
        match causes.get_mut(cause) {
            Some(c) if now.duration_since(c.logged) < self.interval => {
                c.since += 1;
                None
            }
            Some(c) => {
                let skipped = c.since;
                *c = Cause {
                    logged: now,
                    since: 0,
                };
                Some(skipped)
            }
            None => {
                causes.insert(
                    cause,
                    Cause {
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
}
