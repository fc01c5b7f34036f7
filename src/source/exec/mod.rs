//! The daemon's side of `wisp-agent exec` (the command itself is in
//! `command/exec/`): the exec socket's server ([`server`]), which takes the
//! captures `exec` streams and makes their lines durable in the Loki spool,
//! the span of each finished run ([`spans`]), the cost a run's lines report
//! ([`cost`]) and the `wisp_exec_*` counters ([`metrics`]); and what both sides
//! share: the frames on the socket ([`protocol`]), the outbox a capture is
//! written to ([`outbox`]), HEAD's commit ([`git`]), and the bounds below.

pub mod cost;
pub mod git;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod spans;

use std::time::{SystemTime, UNIX_EPOCH};

/// The `job` label of a command run without `--name`.
pub const DEFAULT_JOB: &str = "exec";

/// A line longer than this is captured in pieces; it bounds what `exec` holds in
/// memory and, with [`protocol::LINES_FRAME_TARGET`], the size of a frame.
pub const MAX_PENDING_LINE: usize = 64 * 1024;

/// Now, in milliseconds since the epoch (0 before it): the times of a run's
/// `hello` and `end`, and of the runs the daemon handled.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
