//! `wisp-agent run`, the daemon, top to bottom in [`daemon`]: check and lock
//! the state directory; then a generation of the pipelines on one
//! configuration ([`Generation`]): discovery (kept fresh in the background),
//! each enabled pipeline, the file logs to Loki ([`logs`]) and the OTLP relay
//! ([`otlp`]), each a value holding its counters; the exec server; the admin
//! endpoint with the periodic status line and host metrics; wait for a
//! signal; then the generation finishes, front to back: every source stops,
//! the tasks feeding the pipelines let go of them, each pipeline finishes (its
//! spool stage ends once nothing feeds it, its shipper gets [`DRAIN_GRACE`] to
//! ship what is left, the rest waits in the spool for the next start), and
//! the admin endpoint last. SIGTERM and SIGINT stop there; a SIGHUP with a
//! valid new configuration ([`reload`]) starts the next generation on it,
//! which resumes from the spools' commit frames as a restart does, in the same
//! process, with the same lock and, while `admin.listen` stays, the same
//! admin endpoint.
//!
//! `run --dry-run` is [`dry`]: the tailer and the parser, printing instead of
//! shipping; `run --stdin --dry-run` is [`stdin`]: standard input instead of
//! the tailer.

mod dry;
mod families;
mod logs;
mod otlp;
pub(crate) mod reload;
mod stdin;

pub use families::metric_families;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Sources};
use crate::cli::RunArgs;
use crate::config::{Config, ConfigError, Loaded, ProcessEnv};
use crate::discovery::{self, Inputs};
use crate::metric::Registry;
use crate::record::SourceBatch;
use crate::relay::Intake;
use crate::shutdown::Reloads;
use crate::source::exec::metrics::ExecCounters;
use crate::source::known_runs::KnownRuns;
use crate::source::{exec, host_metrics};
use crate::spool::ResumeState;
use logs::{LogsInput, OpenLogs};
use otlp::OtlpPipeline;
use reload::ConfigState;

/// After the sources stopped, each task feeding the pipelines, and each
/// pipeline's receivers, get this long to stop; then each shipper gets this
/// long to ship what is left: whatever it could not ship stays in the spool
/// for the next start.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// After the token fired, a scrape of the admin endpoint still in flight gets
/// this long.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// `run`: the daemon, or with `--dry-run` the tailer printing what it would
/// ship, until SIGTERM or SIGINT; SIGHUP reloads the configuration.
pub async fn run(loaded: Loaded, args: RunArgs) -> Result<ExitCode> {
    tracing::info!(
        "wisp-agent {} starting; configuration: {} (sha256 {})",
        env!("CARGO_PKG_VERSION"),
        loaded.origin,
        reload::short(&loaded.sha256)
    );
    if !args.stdin {
        logs::log_tailed_files(&loaded.config, &loaded.origin, args.dry_run);
    }
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone())
        .context("cannot install the signal handlers")?;
    let reloads = Reloads::catch().context("cannot install the signal handlers")?;
    if args.stdin {
        // Standard input is read once: a SIGHUP, caught, is ignored.
        let _ignored = reloads;
        stdin::run(loaded.config, args.job, cancel).await
    } else if args.dry_run {
        dry::run(loaded, reloads, cancel).await
    } else {
        daemon(loaded, reloads, cancel).await
    }
}

/// The daemon: tails the configured files into the Loki spool and ships it to
/// Loki, and relays local OTLP to the host's collector, until `cancel` fires;
/// then finishes both (see [`DRAIN_GRACE`]) and returns.
///
/// A SIGHUP with a valid new configuration ([`reload`]) finishes the
/// pipelines as shutdown does (sources stop, spools take what was read,
/// shippers get their grace, the rest waits in the spool) and starts them
/// again on it, resuming from the resume points in the spools' commit frames,
/// as a restart does; the process, its lock on the state directory and the
/// admin endpoint (when `admin.listen` is unchanged) stay.
async fn daemon(
    loaded: Loaded,
    mut reloads: Reloads,
    cancel: CancellationToken,
) -> Result<ExitCode> {
    let started = SystemTime::now();
    let origin = loaded.origin.to_string();

    // The state directory: checked, and locked until `run` returns.
    loaded.config.check_sinks(&origin)?;
    let (state_dir, _lock) = claim_state_dir(&loaded.config, &origin)?;
    let config_state = ConfigState::new(&loaded);
    let shared = Shared {
        state_dir,
        started,
        config: config_state.clone(),
        cancel: cancel.clone(),
        tap: Arc::new(crate::tap::Tap::default()),
    };

    let mut loaded = loaded;
    // The configuration before a reload, while the pipelines start on the
    // new one: should they fail to, they start again on it.
    let mut previous: Option<Loaded> = None;
    let mut admin: Option<AdminEndpoint> = None;
    let mut continued = BTreeSet::new();
    loop {
        let generation = cancel.child_token();
        let started = Generation::start(&loaded, &shared, continued, &mut admin, &generation).await;
        let mut running = match (started, previous.take()) {
            (Ok(Some(running)), previous) => {
                if previous.is_some() {
                    config_state.count(reload::Outcome::Ok, Some(&loaded));
                    tracing::info!(
                        "SIGHUP: {} (sha256 {}) is in effect",
                        loaded.origin,
                        reload::short(&loaded.sha256)
                    );
                }
                running
            }
            (Ok(None), _) => {
                tracing::info!("stopped before the buffer could be opened");
                break;
            }
            (Err(e), Some(before)) => {
                tracing::error!(
                    "SIGHUP: cannot start the pipelines on {}: {e:#}; starting them again on the \
                     configuration before (sha256 {})",
                    loaded.origin,
                    reload::short(&before.sha256)
                );
                config_state.count(reload::Outcome::Failed, None);
                generation.cancel();
                continued = before.config.files.iter().map(|f| f.name.clone()).collect();
                loaded = before;
                continue;
            }
            (Err(e), None) => return Err(e),
        };
        crate::notify::notify("READY=1");

        // Wait: for SIGTERM or SIGINT, the tailer stopping on its own (it
        // could not start), or a SIGHUP with a new configuration.
        let next = loop {
            tokio::select! {
                _ = cancel.cancelled() => break None,
                _ = running.tailer_stopped() => break None,
                _ = reloads.next() => {
                    if let Some(new) = reload::read_again(&loaded, &config_state) {
                        break Some(new);
                    }
                }
            }
        };
        if let Some(new) = &next {
            crate::notify::notify("RELOADING=1");
            tracing::info!(
                "SIGHUP: reloading {} (sha256 {}, {}): finishing the pipelines, then starting them again",
                new.origin,
                reload::short(&new.sha256),
                reload::files_changed(&loaded.config, &new.config)
            );
        }
        generation.cancel();
        running.finish().await?;
        let Some(new) = next else {
            break;
        };
        if cancel.is_cancelled() {
            // SIGTERM during the reload: the new configuration never ran.
            break;
        }
        continued = continued_entries(&loaded.config, &new.config);
        logs::log_tailed_files(&new.config, &new.origin, false);
        previous = Some(std::mem::replace(&mut loaded, new));
    }
    if let Some(admin) = admin {
        admin.finish().await;
    }
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// The `[[files]]` entries of `now` that ran in `was` with the same patterns
/// (by name): `start_at` does not apply to them again (see
/// [`crate::source::file::TailSettings::continued`]).
fn continued_entries(was: &Config, now: &Config) -> BTreeSet<String> {
    now.files
        .iter()
        .filter(|f| {
            was.files
                .iter()
                .any(|w| w.name == f.name && w.paths == f.paths)
        })
        .map(|f| f.name.clone())
        .collect()
}

/// What every generation of the pipelines shares: it lives as long as `run`.
struct Shared {
    state_dir: PathBuf,
    /// The agent's start, where the pushed counters begin.
    started: SystemTime,
    config: Arc<ConfigState>,
    /// The daemon's token: SIGTERM or SIGINT.
    cancel: CancellationToken,
    /// What the Loki spool appends, for `GET /tap`: taps stay open across a
    /// reload.
    tap: Arc<crate::tap::Tap>,
}

/// The admin endpoint, kept across reloads while `admin.listen` stays: its
/// own token (a child of the daemon's), its task, and what it serves.
struct AdminEndpoint {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    served: admin::Served,
}

impl AdminEndpoint {
    /// Stops it, giving a scrape in flight [`ADMIN_GRACE`].
    async fn finish(self) {
        self.cancel.cancel();
        if let Some(task) = self.task {
            let _ = tokio::time::timeout(ADMIN_GRACE, task).await;
        }
    }
}

/// The pipelines on one configuration, from start to the next reload or the
/// shutdown: discovery, both pipelines, the exec server, host metrics and the
/// periodic status line, all stopped by one token.
struct Generation {
    /// Tasks feeding the pipelines besides their own sources (the exec
    /// server, host metrics): each ends soon after the token fires.
    feeding: Vec<JoinHandle<()>>,
    logs: Option<logs::LogsPipeline>,
    otlp: Option<OtlpPipeline>,
}

impl Generation {
    /// Starts the pipelines on `loaded` until `cancel` fires; `continued`:
    /// the `[[files]]` entries tailed before a reload. The admin endpoint is
    /// started, or kept and handed the new stages' readers when
    /// `admin.listen` did not change. `None` when `cancel` fired while a full
    /// disk was waited out.
    async fn start(
        loaded: &Loaded,
        shared: &Shared,
        continued: BTreeSet<String>,
        admin: &mut Option<AdminEndpoint>,
        cancel: &CancellationToken,
    ) -> Result<Option<Self>> {
        let config = &loaded.config;
        let origin = loaded.origin.to_string();
        let state_dir = &shared.state_dir;

        // Discover: the host, chosen and kept fresh in the background.
        let (host, health) = discovery::watch(config.clone(), Inputs::default(), cancel.clone());

        // Each enabled pipeline. The Loki spool stage's input comes first: with
        // `otlp.logs_to_loki` the OTLP receivers store logs records through it.
        let spool_bytes = spool_share(config);
        let logs_input = LogsInput::new(shared.tap.clone());
        let to_loki = config.logs_to_loki().then(|| logs_input.to_loki(config));
        let otlp = OtlpPipeline::start(
            config,
            state_dir,
            spool_bytes,
            host.clone(),
            health.clone(),
            to_loki,
            cancel.clone(),
        )
        .await?;
        let logs = if config.loki.enabled {
            let opened = OpenLogs::open(
                config,
                state_dir,
                spool_bytes,
                logs_input,
                continued,
                cancel,
            )
            .await;
            let opened = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    // The OTLP pipeline finishes first: a reload that goes
                    // back to the configuration before opens its spool again.
                    cancel.cancel();
                    if let Some(otlp) = otlp {
                        otlp.finish(DRAIN_GRACE).await;
                    }
                    return Err(e);
                }
            };
            let Some(logs) = opened else {
                if let Some(otlp) = otlp {
                    otlp.finish(DRAIN_GRACE).await;
                }
                return Ok(None);
            };
            Some(logs)
        } else {
            if !config.files.is_empty() {
                tracing::warn!(
                    "loki.enabled = false: the [[files]] entries are not tailed (file logs are shipped to Loki only); \
                     relaying OTLP only"
                );
            }
            None
        };
        // Taken only now: the OTLP pipeline finishes (above, when the Loki
        // one cannot open) once every way into it is let go of.
        let intake = otlp.as_ref().map(OtlpPipeline::intake);

        let mut feeding = Vec::new();

        // The exec server: a run's lines into the logs pipeline (acknowledged and
        // dropped without it: file logs go to Loki only), its span into the OTLP one.
        let exec_counters = Arc::new(ExecCounters::new(config.agent.max_label_values));
        let (lines, resume) = match &logs {
            Some(logs) => (logs.lines(), logs.resume().clone()),
            None => (discard_lines(), ResumeState::new()),
        };
        let known_runs = start_exec_server(
            config,
            state_dir,
            &resume,
            lines,
            intake.clone(),
            exec_counters.clone(),
            cancel,
        )
        .map(|(task, known)| {
            feeding.push(task);
            known
        });

        // The admin endpoint, the periodic status line and host metrics, once
        // every stage's counters exist: each registers its metric readers (the
        // page serves them in one order whatever the order here,
        // [`crate::metric::ORDER`]).
        let mut metrics = Registry::default();
        discovery::metrics::register(&mut metrics, host.clone());
        shared.config.register(&mut metrics);
        if let Some(logs) = &logs {
            logs.register_metrics(&mut metrics);
        }
        if let Some(otlp) = &otlp {
            otlp.register_metrics(&mut metrics);
        }
        exec_counters.register(&mut metrics);
        let sources = Sources {
            logs: logs.as_ref().map(OpenLogs::sources),
            relay: otlp.as_ref().map(OtlpPipeline::sources),
        };
        let status_sources = sources.clone();
        let agent_metrics = match admin.take() {
            Some(kept) if kept.served.listen() == config.admin.listen => {
                let m = kept.served.replace(sources, metrics);
                *admin = Some(kept);
                m
            }
            other => {
                if let Some(old) = other {
                    old.finish().await;
                }
                let admin_cancel = shared.cancel.child_token();
                let started = admin::start(
                    &config.admin.listen,
                    &origin,
                    sources,
                    metrics,
                    admin_cancel.clone(),
                )
                .await?;
                *admin = Some(AdminEndpoint {
                    cancel: admin_cancel,
                    task: started.task,
                    served: started.served,
                });
                started.metrics
            }
        };
        // The periodic status line (`agent.status_interval`; off at zero), from
        // the same readers as `/metrics`.
        crate::status::periodic::spawn(
            config.agent.status_interval.get(),
            admin::status_snapshots(status_sources, agent_metrics.clone()),
            cancel.clone(),
        );
        feeding.extend(host_metrics::spawn(
            config,
            intake,
            agent_metrics,
            shared.started,
            cancel.clone(),
        ));

        // The logs pipeline reads from here on.
        let logs = logs.map(|l| l.start(config, known_runs, host, health, cancel));
        Ok(Some(Self {
            feeding,
            logs,
            otlp,
        }))
    }

    /// Returns once the tailer stopped on its own (it could not start); never
    /// without a logs pipeline.
    async fn tailer_stopped(&mut self) {
        match self.logs.as_mut() {
            Some(logs) => logs.tailer_stopped().await,
            None => std::future::pending().await,
        }
    }

    /// Once its token fired, front to back: once the tasks feeding the
    /// pipelines let go of them, both pipelines finish side by side: the Loki
    /// spool stage ends only once the OTLP receivers let go of it too, which
    /// the OTLP pipeline's finish waits for. An error when the tailer could
    /// not run.
    async fn finish(self) -> Result<()> {
        for task in self.feeding {
            if tokio::time::timeout(DRAIN_GRACE, task).await.is_err() {
                tracing::warn!("a task feeding the pipelines did not stop within {DRAIN_GRACE:?}");
            }
        }
        let (tailed, ()) = tokio::join!(
            async {
                match self.logs {
                    Some(logs) => logs.finish(DRAIN_GRACE).await,
                    None => Ok(()),
                }
            },
            async {
                if let Some(otlp) = self.otlp {
                    otlp.finish(DRAIN_GRACE).await;
                }
            },
        );
        tailed
    }
}

/// A shipper on a task of its own, and how it ends: `drain` asks it to ship
/// what the spool holds and return, `stop` to return at once.
struct Shipping {
    task: JoinHandle<()>,
    drain: CancellationToken,
    stop: CancellationToken,
    /// Where it ships, for the log: `loki`, `the otlp collector`.
    to: &'static str,
}

impl Shipping {
    /// Spawns `ship(drain, stop)`.
    fn start<F>(
        to: &'static str,
        ship: impl FnOnce(CancellationToken, CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(ship(drain.clone(), stop.clone()));
        Self {
            task,
            drain,
            stop,
            to,
        }
    }

    /// Once its spool stage ended: gives it `grace` to ship what is left, then
    /// stops it; the rest waits in the spool for the next start.
    async fn finish(self, grace: Duration) {
        self.drain.cancel();
        let mut task = self.task;
        tokio::select! {
            _ = &mut task => {}
            _ = tokio::time::sleep(grace) => {
                tracing::info!(
                    "{} did not take everything within {grace:?}; the rest waits in the buffer for the next start",
                    self.to
                );
                self.stop.cancel();
                let _ = task.await;
            }
        }
    }
}

/// The state directory `run` keeps its spools and checkpoints in, checked
/// (created if missing), with its lock: held until it is dropped.
fn claim_state_dir(config: &Config, origin: &str) -> Result<(PathBuf, std::fs::File)> {
    let (state_dir, note) = config.resolve_state_dir(&ProcessEnv);
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    crate::config::check_state_dir(&state_dir, origin, true)?;
    let lock = lock_state_dir(&state_dir, origin)?;
    Ok((state_dir, lock))
}

/// Each spool's bound: the two share `buffer.max_bytes` half and half when
/// both run.
fn spool_share(config: &Config) -> u64 {
    let max_bytes = config.buffer.max_bytes.bytes();
    if config.loki.enabled && config.otlp.enabled {
        max_bytes / 2
    } else {
        max_bytes
    }
}

/// Takes the state directory's lock (see [`crate::state_file::lock_dir`]): a
/// second daemon on one state directory is a configuration error naming the
/// first one's pid.
fn lock_state_dir(state_dir: &Path, origin: &str) -> Result<std::fs::File> {
    let why = match crate::state_file::lock_dir(state_dir) {
        Ok(Ok(lock)) => return Ok(lock),
        Ok(Err(Some(pid))) => format!("another wisp-agent (pid {pid}) runs on it"),
        Ok(Err(None)) => "another wisp-agent runs on it".to_string(),
        Err(e) => format!("cannot lock it: {e}"),
    };
    Err(ConfigError::invalid(
        origin,
        "agent.state_dir",
        format!(
            "{} is in use: {why}; stop that one, or give this one its own agent.state_dir",
            state_dir.display()
        ),
    )
    .into())
}

/// Where exec's lines go with `loki.enabled = false`: acknowledged at once and
/// dropped (file logs go to Loki only; a run's span goes on).
fn discard_lines() -> mpsc::Sender<SourceBatch> {
    let (tx, mut rx) = mpsc::channel::<SourceBatch>(logs::CHANNEL_BATCHES);
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            batch.ack.done();
        }
    });
    tx
}

/// Starts the exec socket server ([`exec::server`]): its lines go into `tx`
/// (the transform stage), its spans into the OTLP pipeline's `intake`. A
/// socket that cannot be bound is warned about; the daemon runs on without
/// it. Returns its task and the runs the server knows, for the tailer (see
/// [`crate::source::known_runs`]).
fn start_exec_server(
    config: &Config,
    state_dir: &Path,
    resume: &ResumeState,
    tx: mpsc::Sender<SourceBatch>,
    intake: Option<Intake>,
    counters: Arc<ExecCounters>,
    cancel: &CancellationToken,
) -> Option<(JoinHandle<()>, Arc<KnownRuns>)> {
    let socket = config.exec.daemon_socket(&ProcessEnv);
    let listener = match exec::server::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "cannot listen on {} ({e}): `wisp-agent exec` keeps its output in each user's outbox \
                 until a daemon listens there",
                socket.display()
            );
            return None;
        }
    };
    let startup = exec::server::startup(state_dir, resume);
    let known = startup.known.clone();
    let settings = exec::server::ExecServerSettings {
        socket,
        state_dir: state_dir.to_path_buf(),
        span: exec::spans::SpanSettings {
            hostname: config.agent.effective_hostname(),
            resource_attributes: config
                .otlp
                .resource_attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
        intake,
        counters,
        max_label_sets: config.agent.max_label_values,
    };
    let resume = resume.clone();
    let cancel = cancel.clone();
    let task = tokio::spawn(async move {
        exec::server::run(listener, settings, startup, &resume, tx, cancel).await;
    });
    Some((task, known))
}
