//! Wiring the stages: sources → transform (parse + labels) → sinks.

use std::process::ExitCode;

use anyhow::Result;

use crate::config::{Config, Loaded};

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
        tracing::info!(
            "tailing {} ({}): {} file(s) match now{}",
            f.name,
            f.paths.join(", "),
            matched.len(),
            if matched.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    matched
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
}

/// `run --dry-run`: not yet wired.
pub async fn run_dry(_loaded: Loaded) -> Result<ExitCode> {
    anyhow::bail!("`run --dry-run` needs the file tailer, which is not built yet")
}
