//! `wisp-agent config check`: loads the configuration as `run` would, checks
//! what `run` would refuse at start ([`preflight`], which `probe` runs too),
//! and prints the configuration in effect, passwords redacted, with where it
//! came from and which environment variables changed it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::config::{self, Loaded, ProcessEnv};

/// What `run` would refuse at start, found without starting: both sinks off, an
/// unusable state directory (nothing is created), a credential or CA file that
/// cannot be read. `config check` and `probe` exit 2 on these, as `run` does.
pub fn preflight(loaded: &Loaded) -> Result<()> {
    let config = &loaded.config;
    let origin = loaded.origin.to_string();
    config.check_sinks(&origin)?;
    let (state_dir, _) = config.resolve_state_dir(&ProcessEnv);
    config::check_state_dir(&state_dir, &origin, false)?;
    if config.loki.enabled {
        crate::sink::loki::LokiClient::new(&config.loki)?;
    }
    Ok(())
}

/// `config check`: [`preflight`], then the configuration on stdout.
pub fn check(loaded: &Loaded) -> Result<ExitCode> {
    preflight(loaded)?;
    let mut shown = loaded.config.clone();
    shown.loki.url = config::redact_url(&shown.loki.url);
    shown.otlp.endpoint = config::redact_url(&shown.otlp.endpoint);
    let text = toml::to_string_pretty(&shown).context("cannot print the configuration")?;
    let (state_dir, note) = loaded.config.resolve_state_dir(&ProcessEnv);
    let mut out = std::io::stdout().lock();
    writeln!(out, "# configuration is valid")?;
    writeln!(out, "# read from: {}", loaded.origin)?;
    if !loaded.env_overrides.is_empty() {
        writeln!(
            out,
            "# overridden by the environment: {}",
            loaded.env_overrides.join(", ")
        )?;
    }
    if !loaded.expanded.is_empty() {
        writeln!(
            out,
            "# environment variables expanded in it: {}",
            loaded.expanded.join(", ")
        )?;
    }
    writeln!(out, "# state directory in use: {}", state_dir.display())?;
    if let Some(note) = note {
        writeln!(out, "# note: {note}")?;
    }
    writeln!(out)?;
    out.write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
