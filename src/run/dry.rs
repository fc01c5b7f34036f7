//! `run --dry-run`: tails as `run` would and prints each record it would ship
//! as one JSON line on stdout, through the console sink, after saying once
//! which host it would ship to.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::logs::{transform, CHANNEL_BATCHES};
use crate::config::{self, Loaded};
use crate::discovery::{self, Discovery, Inputs, Resolution};
use crate::parse::{ParseSettings, Transformer};
use crate::shutdown::Reloads;
use crate::source::file::{self, TailSettings};

/// A state directory that lives as long as a dry run: real checkpoints stay
/// untouched, so a dry run never makes the daemon skip lines.
struct ThrowawayDir(PathBuf);

impl ThrowawayDir {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("wisp-agent-dry-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for ThrowawayDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `run --dry-run`: tails as `run` would and prints each record it would ship as
/// one JSON line on stdout. Checkpoints go to a throwaway directory, so with
/// `start_at = "end"` only lines written while it runs are shown.
pub async fn run(
    loaded: Loaded,
    mut reloads: Reloads,
    cancel: CancellationToken,
) -> Result<ExitCode> {
    // The daemon's discovery runs in the background and logs its choice; a
    // dry run ships nothing, so it only says once which host it would use.
    let discovery = discovery::discover(&loaded.config, &Inputs::default()).await;
    log_discovery(&discovery);
    let config = loaded.config;
    let state = ThrowawayDir::create()?;
    tracing::info!(
        "dry run: printing records instead of shipping them; checkpoints go to {} and are discarded",
        state.0.display()
    );
    let (src_tx, src_rx) = mpsc::channel(CHANNEL_BATCHES);
    let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_BATCHES);
    let transformer = Transformer::new(ParseSettings::from_config(&config));
    let settings = TailSettings::new(config.files.clone(), state.0.clone());
    let tail = tokio::spawn(file::run(settings, src_tx, cancel.clone()));
    let stage = tokio::spawn(transform(src_rx, batch_tx, transformer));
    let console = tokio::task::spawn_blocking(move || {
        crate::sink::console::run_blocking(batch_rx, std::io::stdout())
    });

    // A SIGHUP does not reload a dry run (it would print what it printed
    // already, or skip what the new entries hold): it says so and goes on.
    let hups = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = reloads.next() => tracing::warn!(
                        "SIGHUP: a dry run does not reload its configuration; stop it and start it again"
                    ),
                }
            }
        })
    };
    let printed = console.await.context("the console sink stopped")?;
    hups.abort();
    // The console ends first only when stdout went away (a closed pipe): stop the
    // sources then, there is no one left to print for.
    cancel.cancel();
    let tailed = tail.await.context("the file tailer stopped")?;
    let _ = stage.await;
    tailed.context("cannot tail files")?;
    finished(printed)
}

/// How a dry run ends once its console sink returned: `printed` records, or
/// stdout gone (a closed pipe is no failure: nobody is left to print for).
pub(super) fn finished(printed: std::io::Result<u64>) -> Result<ExitCode> {
    match printed {
        Ok(n) => {
            tracing::info!("dry run done: {n} record(s) printed");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// Logs what discovery found, in one line per candidate.
fn log_discovery(d: &Discovery) {
    for c in &d.candidates {
        let resolved = match &c.resolution {
            Resolution::Failed { reason } => {
                let reason = config::redact_text(reason);
                tracing::debug!(candidate = %c.name, "{reason}");
                continue;
            }
            r => r.to_string(),
        };
        tracing::debug!(candidate = %c.name, %resolved, loki = %c.services.loki.check, "candidate checked");
    }
    match &d.chosen {
        Some(ch) => tracing::info!("host: {} ({}) answers", ch.name, ch.address),
        None => tracing::warn!(
            "host: none answers (tried {}); run `wisp-agent probe` to see why",
            d.candidates
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
