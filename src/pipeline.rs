//! Wiring the stages: sources → transform (parse + labels) → sink.
//!
//! Every stage is a task joined to the next by a bounded channel, so a slow sink
//! slows the tailer instead of growing memory. Shutdown runs front to back: the
//! cancellation token stops the sources, each stage ends when its input channel
//! closes, and the last stage acknowledges what it made durable on its way out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Loaded};
use crate::parse::{ParseSettings, Transformer};
use crate::record::{Batch, SourceBatch};
use crate::source::file::{self, TailSettings};

/// Batches in flight between two stages (each at most ~1000 lines): the bound that
/// makes a slow stage push back on the one before it.
const CHANNEL_BATCHES: usize = 16;

/// Logs, per `[[files]]` entry, the files its patterns match now.
pub fn log_tailed_files(config: &Config) {
    if config.files.is_empty() {
        tracing::warn!("no [[files]] entries configured: nothing to tail");
    }
    for f in &config.files {
        let mut matched = Vec::new();
        for p in &f.paths {
            if let Ok(paths) = glob::glob(p) {
                matched.extend(paths.flatten().filter(|p| p.is_file()));
            }
        }
        let list = matched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            "tailing {} ({}): {} file(s) match now{}{}",
            f.name,
            f.paths.join(", "),
            matched.len(),
            if list.is_empty() { "" } else { ": " },
            list
        );
    }
}

/// Runs the transform stage: parses every source batch and passes it on. Ends when
/// its input closes or the next stage went away.
async fn transform(
    mut rx: mpsc::Receiver<SourceBatch>,
    tx: mpsc::Sender<Batch>,
    mut transformer: Transformer,
) {
    while let Some(batch) = rx.recv().await {
        if tx.send(transformer.transform(batch)).await.is_err() {
            return;
        }
    }
}

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
pub async fn run_dry(loaded: Loaded, cancel: CancellationToken) -> Result<ExitCode> {
    let config = loaded.config;
    let state = ThrowawayDir::create()?;
    tracing::info!(
        "dry run: printing records instead of shipping them; checkpoints go to {} and are discarded",
        state.0.display()
    );
    let (src_tx, src_rx) = mpsc::channel(CHANNEL_BATCHES);
    let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_BATCHES);
    let transformer = Transformer::new(ParseSettings::from_config(&config));
    let settings = TailSettings {
        files: config.files.clone(),
        state_dir: state.0.clone(),
    };
    let tail = tokio::spawn(file::run(settings, src_tx, cancel.clone()));
    let stage = tokio::spawn(transform(src_rx, batch_tx, transformer));
    let console = tokio::task::spawn_blocking(move || {
        crate::sink::console::run_blocking(batch_rx, std::io::stdout())
    });

    let printed = console.await.context("the console sink stopped")?;
    // The console ends first only when stdout went away (a closed pipe): stop the
    // sources then, there is no one left to print for.
    cancel.cancel();
    let tailed = tail.await.context("the file tailer stopped")?;
    let _ = stage.await;
    tailed.context("cannot tail files")?;
    match printed {
        Ok(n) => {
            tracing::info!("dry run done: {n} record(s) printed");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}
