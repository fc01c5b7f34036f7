//! What each command does: the glue between the command line and the library.
//! Errors become exit codes here: 2 for a configuration error, 1 otherwise.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, ConfigCommand, ExecArgs, ProbeArgs, RunArgs};
use crate::config::{self, ConfigError, Loaded, ProcessEnv};
use crate::discovery::{self, Discovery, Inputs, Resolution};

/// Runs a parsed command line; never panics on bad input, returns the exit status.
pub fn main(cli: Cli) -> ExitCode {
    crate::log::init(cli.log_level.as_deref());
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wisp-agent: {e:#}");
            // A credential or CA file named by the configuration that cannot be
            // used is a configuration error too: restarting will not fix it.
            let config_error = e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<crate::sink::loki::LokiClientError>()
                    .is_some_and(|e| !matches!(e, crate::sink::loki::LokiClientError::Build(_)))
                || e.downcast_ref::<crate::sink::otlp::OtlpClientError>()
                    .is_some_and(|e| !matches!(e, crate::sink::otlp::OtlpClientError::Build(_)));
            if config_error {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let path = cli.config.as_deref();
    match cli.command {
        Command::Exec(args) => exec(path, args),
        Command::Config(ConfigCommand::Check) => {
            let loaded = config::load(path, &ProcessEnv)?;
            preflight(&loaded)?;
            config_check(&loaded)
        }
        Command::Run(args) => {
            let loaded = config::load(path, &ProcessEnv)?;
            runtime()?.block_on(run(loaded, args))
        }
        Command::Status(args) => {
            let loaded = config::load(path, &ProcessEnv)?;
            Ok(runtime()?.block_on(crate::command::status::run(&loaded, args.json)))
        }
        Command::Probe(args) => {
            let loaded = config::load(path, &ProcessEnv)?;
            preflight(&loaded)?;
            runtime()?.block_on(probe(loaded, args))
        }
    }
}

/// What `run` would refuse at start, found without starting: both sinks off, an
/// unusable state directory (nothing is created), a credential or CA file that
/// cannot be read. `config check` and `probe` exit 2 on these, as `run` does.
fn preflight(loaded: &Loaded) -> Result<()> {
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn config_check(loaded: &Loaded) -> Result<ExitCode> {
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

/// Logs what discovery found, in one line per candidate.
fn log_discovery(d: &Discovery) {
    for c in &d.candidates {
        let resolved = match &c.resolution {
            Resolution::Failed { reason } => {
                let reason = config::redact_text(reason);
                tracing::debug!(candidate = %c.name, "{reason}");
                continue;
            }
            r => describe_resolution(r),
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

fn describe_resolution(r: &Resolution) -> String {
    r.to_string()
}

async fn run(loaded: Loaded, args: RunArgs) -> Result<ExitCode> {
    tracing::info!(
        "wisp-agent {} starting; configuration: {}",
        env!("CARGO_PKG_VERSION"),
        loaded.origin
    );
    crate::pipeline::log_tailed_files(&loaded.config);
    let cancel = tokio_util::sync::CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone())
        .context("cannot install the signal handlers")?;
    if args.dry_run {
        // The daemon's discovery runs in the background and logs its choice; a
        // dry run ships nothing, so it only says once which host it would use.
        let discovery = discovery::discover(&loaded.config, &Inputs::default()).await;
        log_discovery(&discovery);
        crate::pipeline::run_dry(loaded, cancel).await
    } else {
        crate::pipeline::run(loaded, cancel).await
    }
}

async fn probe(loaded: Loaded, args: ProbeArgs) -> Result<ExitCode> {
    Ok(discovery::probe(&loaded, &args, &Inputs::default()).await?)
}

/// `exec`: telemetry never stops the command, so a configuration that cannot be
/// loaded is a warning here, not exit 2, and the command runs uncaptured.
fn exec(config_path: Option<&std::path::Path>, args: ExecArgs) -> Result<ExitCode> {
    let config = match config::load(config_path, &crate::source::exec::ConfigEnv) {
        Ok(loaded) => Some(loaded.config),
        Err(e) if args.flush => {
            eprintln!("wisp-agent exec: {e}");
            None
        }
        Err(e) => {
            eprintln!("wisp-agent exec: {e}; running the command without capturing its output");
            None
        }
    };
    if args.flush {
        return Ok(crate::source::exec::flush(config));
    }
    Ok(runtime()?.block_on(crate::source::exec::run(config, args)))
}
