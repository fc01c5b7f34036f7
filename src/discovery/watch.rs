//! The daemon's view of the host: discovery in the background, its choice on a
//! `tokio::sync::watch` channel, and a [`HostHealth`] handle through which the
//! sinks say whether the chosen host still answers.
//!
//! Promises: the choice only changes when another candidate answers (a failed
//! round keeps the previous choice, so sinks keep retrying where data last went
//! rather than dropping it); rediscovery runs every `host.rediscover_interval`
//! (every [`UNCHOSEN_RETRY`] at most while no host is chosen), and sooner when the
//! chosen host has failed [`FAILURES_BEFORE_REDISCOVERY`] times in a row or for
//! [`FAILING_FOR`], at most once per [`MIN_TRIGGERED_GAP`] so a dead host cannot
//! make it spin. It stops when the cancellation token fires.
//!
//! During an outage the log says so once at WARN ("keeps failing", "no
//! candidate answers"), then at DEBUG on every further round, and once at INFO
//! when a host answers again: an outage of an hour is three lines, not one
//! every few seconds.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch as channel, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{discover, Chosen, Inputs};
use crate::config::Config;
use crate::event::Repeated;

/// Consecutive failures of the chosen host that trigger a rediscovery.
pub const FAILURES_BEFORE_REDISCOVERY: u32 = 3;
/// Failing for this long (whatever the count) triggers a rediscovery too.
pub const FAILING_FOR: Duration = Duration::from_secs(30);
/// Failure-triggered rediscoveries are at least this far apart.
pub const MIN_TRIGGERED_GAP: Duration = Duration::from_secs(5);
/// While no host is chosen, discovery runs again at least this often.
pub const UNCHOSEN_RETRY: Duration = Duration::from_secs(10);

/// What the sinks tell discovery about the chosen host. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HostHealth {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    state: Mutex<HealthState>,
    rediscover: Notify,
}

#[derive(Debug, Default)]
struct HealthState {
    consecutive_failures: u32,
    failing_since: Option<Instant>,
}

impl HostHealth {
    fn state(&self) -> MutexGuard<'_, HealthState> {
        // A poisoned lock only means another thread panicked mid-update of two
        // counters; the counters are still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request to the chosen host failed (connection error, timeout, 5xx).
    pub fn report_failure(&self) {
        let now = Instant::now();
        let trigger = {
            let mut s = self.state();
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            let since = *s.failing_since.get_or_insert(now);
            s.consecutive_failures >= FAILURES_BEFORE_REDISCOVERY
                || now.duration_since(since) >= FAILING_FOR
        };
        if trigger {
            self.inner.rediscover.notify_one();
        }
    }

    /// A request to the chosen host succeeded.
    pub fn report_success(&self) {
        let mut s = self.state();
        s.consecutive_failures = 0;
        s.failing_since = None;
    }

    fn reset(&self) {
        self.report_success();
    }
}

/// Starts discovery in the background (on the current tokio runtime).
///
/// The receiver holds `None` until a first host answers, then the chosen host;
/// it changes only to another host that answers.
pub fn watch(
    config: Config,
    inputs: Inputs,
    cancel: CancellationToken,
) -> (channel::Receiver<Option<Chosen>>, HostHealth) {
    let (tx, rx) = channel::channel(None);
    let health = HostHealth::default();
    let task_health = health.clone();
    tokio::spawn(async move {
        rediscover_loop(config, inputs, cancel, tx, task_health).await;
    });
    (rx, health)
}

async fn rediscover_loop(
    config: Config,
    inputs: Inputs,
    cancel: CancellationToken,
    tx: channel::Sender<Option<Chosen>>,
    health: HostHealth,
) {
    let interval = config.host.rediscover_interval.get();
    let mut last_triggered: Option<Instant> = None;
    // "failing" (the chosen host) and "none" (no candidate answers): each said
    // once at WARN per outage, cleared when a host answers.
    let outage: Repeated = Repeated::once();
    loop {
        let round = tokio::select! {
            _ = cancel.cancelled() => return,
            d = discover(&config, &inputs) => d,
        };
        // An explicit `host.address` is the one place to send: it is kept even
        // while it does not answer yet, so the sinks retry there (data waits in
        // the buffer) instead of waiting for discovery to pick it.
        let explicit = (config.host.address != "auto")
            .then(|| round.candidates.first())
            .flatten()
            .and_then(|c| {
                c.address.map(|address| Chosen {
                    name: c.name.clone(),
                    address,
                })
            });
        let answered = round.chosen.is_some();
        match round.chosen.or(explicit) {
            Some(new) => {
                let changed = tx.send_if_modified(|current| {
                    if current.as_ref() == Some(&new) {
                        false
                    } else {
                        *current = Some(new.clone());
                        true
                    }
                });
                let outage_ended = answered && {
                    let failing = outage.ended(&"failing");
                    outage.ended(&"none") || failing
                };
                if changed && answered {
                    tracing::info!(
                        "host: {} ({}) answers; sending there",
                        new.name,
                        new.address
                    );
                    health.reset();
                } else if outage_ended {
                    tracing::info!("host: {} ({}) answers again", new.name, new.address);
                } else if changed {
                    tracing::warn!(
                        "host: {} ({}) is set explicitly but does not answer yet; sending there \
                         anyway, lines wait in the buffer (run `wisp-agent probe` to see why)",
                        new.name,
                        new.address
                    );
                    health.reset();
                }
            }
            None => {
                let tried: Vec<&str> = round.candidates.iter().map(|c| c.name.as_str()).collect();
                let message = match tx.borrow().as_ref() {
                    Some(kept) => format!(
                        "host: no candidate answers (tried {}); keeping {} ({})",
                        tried.join(", "),
                        kept.name,
                        kept.address
                    ),
                    None => format!(
                        "host: no candidate answers (tried {}); run `wisp-agent probe` to see why",
                        tried.join(", ")
                    ),
                };
                if !outage.warn("none", || message.clone()) {
                    tracing::debug!("{message}");
                }
            }
        }
        let wait = if tx.borrow().is_none() {
            interval.min(UNCHOSEN_RETRY)
        } else {
            interval
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = health.inner.rediscover.notified() => {
                if let Some(at) = last_triggered {
                    let ready = at + MIN_TRIGGERED_GAP;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(ready) => {}
                    }
                }
                last_triggered = Some(Instant::now());
                let message = match tx.borrow().as_ref() {
                    Some(c) => format!(
                        "host: the chosen host {} ({}) keeps failing; looking for another \
                         (said once until a host answers again)",
                        c.name, c.address
                    ),
                    None => "host: the chosen host keeps failing; looking for another".into(),
                };
                if !outage.warn("failing", || message.clone()) {
                    tracing::debug!("{message}");
                }
                health.reset();
            }
        }
    }
}

/// The chosen host's address as text; waits while none is chosen, and gives
/// `None` once `stop` fires or discovery has ended.
pub async fn current_host(
    host: &mut channel::Receiver<Option<Chosen>>,
    stop: &CancellationToken,
) -> Option<String> {
    loop {
        if let Some(c) = host.borrow_and_update().as_ref() {
            return Some(c.address.to_string());
        }
        tokio::select! {
            changed = host.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            _ = stop.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Is a rediscovery pending? (A stored permit makes `notified` ready at once.)
    async fn pending(h: &HostHealth) -> bool {
        tokio::time::timeout(Duration::ZERO, h.inner.rediscover.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn three_failures_in_a_row_ask_for_rediscovery_and_a_success_resets_the_count() {
        let h = HostHealth::default();
        h.report_failure();
        h.report_failure();
        h.report_success();
        h.report_failure();
        h.report_failure();
        assert!(!pending(&h).await);
        h.report_failure();
        assert!(pending(&h).await);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_for_long_enough_asks_for_rediscovery_even_with_few_failures() {
        let h = HostHealth::default();
        h.report_failure();
        tokio::time::advance(FAILING_FOR).await;
        h.report_failure();
        assert!(pending(&h).await);
    }
}
