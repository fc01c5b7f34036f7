//! The status line `run` logs every `agent.status_interval` (at info, to its
//! own log), e.g. `status: host 192.168.5.2 (host.lima.internal), 3 files,
//! 12034 lines read, loki 12030 shipped 0 B buffered, last push 2 s ago, …`:
//! [`render::line`] of the same [`Status`] `GET /status` serves.
//!
//! Promises: one small task, no thread; the first line one interval after the
//! start (the start itself is logged already); a zero interval starts nothing;
//! it stops with the cancellation token.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{render, Status};

/// Starts the task: every `interval`, `snapshot()` is logged as one line.
/// `None` when `interval` is zero (`status_interval = "0s"`: off).
pub fn spawn(
    interval: Duration,
    snapshot: impl Fn() -> Status + Send + 'static,
    cancel: CancellationToken,
) -> Option<JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // A runtime too busy to tick on time logs once late, not a burst.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => tracing::info!("{}", render::line(&snapshot())),
            }
        }
    }))
}
