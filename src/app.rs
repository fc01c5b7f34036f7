//! The command line's dispatch: each command to its room ([`crate::command`],
//! [`crate::run`]), and errors to exit codes: 2 for a configuration error, 1
//! otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, ConfigCommand};
use crate::command;
use crate::config::{self, AgentLogFormat, ConfigError, ProcessEnv};
use crate::discovery::Inputs;

/// Runs a parsed command line; never panics on bad input, returns the exit status.
pub fn main(cli: Cli) -> ExitCode {
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
                    .is_some_and(|e| !matches!(e, crate::sink::otlp::OtlpClientError::Build(_)))
                // A receiver's address that cannot be bound: another program holds
                // the port the configuration names.
                || e.downcast_ref::<crate::source::otlp::ReceiverError>().is_some()
                || e.downcast_ref::<crate::log::BadLogFilter>().is_some();
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
    let level = cli.log_level.as_deref();
    // `exec` runs its command whatever its environment holds (a developer's
    // RUST_LOG is meant for the command); the generators log nothing.
    let logs = matches!(
        cli.command,
        Command::Run(_) | Command::Probe(_) | Command::Status(_) | Command::Config(_)
    );
    if level.is_none() && logs {
        if let Some(filter) = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            crate::log::check_env_filter(&filter)?;
        }
    }
    // `run`'s log takes `agent.log_format` (loading the configuration logs
    // nothing); every other command talks to a person, in text.
    if !matches!(cli.command, Command::Run(_)) {
        crate::log::init(level, AgentLogFormat::Text);
    }
    match cli.command {
        Command::Completions(args) => {
            let mut out = Vec::new();
            clap_complete::generate(
                args.shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "wisp-agent",
                &mut out,
            );
            print_all(&out)
        }
        Command::Manpage => {
            let page = command::manpage::render(<Cli as clap::CommandFactory>::command())
                .context("cannot render the man page")?;
            print_all(&page)
        }
        Command::Exec(args) => {
            let config = command::exec::load_config(path, &args);
            if args.flush {
                return Ok(command::exec::flush(config));
            }
            // One thread: exec waits on its command and copies two pipes; no
            // worker threads to start (and stop) around every command.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            Ok(runtime.block_on(command::exec::run(config, args)))
        }
        Command::Config(ConfigCommand::Check) => {
            command::config::check(&config::load(path, &ProcessEnv)?)
        }
        Command::Run(args) => {
            if args.stdin && !args.dry_run {
                eprintln!(
                    "wisp-agent: --stdin needs --dry-run: standard input is parsed and printed, \
                     never shipped (the daemon ships only the files it tails, whose positions it \
                     keeps); run `wisp-agent run --stdin --dry-run`"
                );
                return Ok(ExitCode::from(2));
            }
            let loaded = config::load(path, &ProcessEnv)?;
            crate::log::init(level, loaded.config.agent.log_format);
            let keep_alive = blocking_keep_alive(&loaded.config);
            runtime_with(keep_alive)?.block_on(crate::run::run(loaded, args))
        }
        Command::Status(args) => {
            let loaded = config::load(path, &ProcessEnv)?;
            Ok(runtime()?.block_on(command::status::run(&loaded, args.json)))
        }
        Command::Tap(args) => {
            let loaded = config::load(path, &ProcessEnv)?;
            Ok(runtime()?.block_on(command::tap::run(&loaded, &args)))
        }
        Command::Probe(args) => {
            let loaded = config::load(path, &ProcessEnv)?;
            command::config::preflight(&loaded)?;
            Ok(runtime()?.block_on(command::probe::probe(&loaded, &args, &Inputs::default()))?)
        }
    }
}

/// Writes a generated document to stdout in one go.
fn print_all(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(DEFAULT_KEEP_ALIVE)
}

/// tokio's own keep-alive of an idle thread of its blocking pool.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How long an idle thread of the blocking pool waits for work before it
/// ends, for `run`: past the host-metrics interval. Each sample hops to the
/// pool (the OTLP spool's append, the shipper's reads and acknowledgement);
/// with tokio's 10 s against the 15 s default interval, every sample started
/// a thread and another ended. A parked thread waits without waking
/// (docs/decisions/034-an-idle-agent-sleeps.md). Read once: a SIGHUP that
/// lengthens the interval keeps the keep-alive of the start.
fn blocking_keep_alive(config: &config::Config) -> Duration {
    let metrics = &config.host_metrics;
    if !(metrics.enabled || metrics.agent_metrics) || !config.otlp.enabled {
        return DEFAULT_KEEP_ALIVE;
    }
    DEFAULT_KEEP_ALIVE.max(metrics.interval.get().saturating_add(DEFAULT_KEEP_ALIVE))
}

fn runtime_with(keep_alive: Duration) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(keep_alive)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
