//! Shutdown: one cancellation token, cancelled by SIGTERM or SIGINT; and
//! SIGHUP, which asks `run` to reload its configuration ([`Reloads`]).
//!
//! Every task takes a clone of the token (never a global). On the first signal
//! sources stop reading and the pipeline drains; a second signal exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM/SIGINT, telling systemd `STOPPING=1`
/// first; exits the process on the second.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            "{name} received: stopping sources and draining (send it again to exit at once)"
        );
        // Said here, before anything stops: a task waiting on the token to
        // say it could be dropped unpolled when a quick shutdown ends the
        // runtime first.
        crate::notify::notify("STOPPING=1");
        token.cancel();
        let code = tokio::select! {
            _ = term.recv() => 128 + 15,
            _ = int.recv() => 128 + 2,
        };
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(code);
    });
    Ok(())
}

/// SIGHUP, caught from the moment it is made (its default action ends the
/// process): `run` reloads its configuration at each [`Reloads::next`]. Signals
/// that arrive while one is being handled are coalesced by the kernel and
/// tokio into one more.
pub struct Reloads(tokio::signal::unix::Signal);

impl Reloads {
    pub fn catch() -> std::io::Result<Self> {
        signal(SignalKind::hangup()).map(Reloads)
    }

    /// Returns at the next SIGHUP (at once if one came since the last call).
    pub async fn next(&mut self) {
        // `None` only once the driver is gone, with the runtime: wait for the
        // shutdown then, as if no SIGHUP came.
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}
