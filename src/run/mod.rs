//! `wisp-agent run`, the daemon, top to bottom in [`daemon`]: check and lock
//! the state directory; discover the host (kept fresh in the background);
//! start each enabled pipeline, the file logs to Loki ([`logs`]) and the OTLP
//! relay ([`otlp`]), each a value holding its counters; the exec server; the
//! admin endpoint with the periodic status line and host metrics; wait for a
//! signal; then one shutdown, front to back: every source stops, the tasks
//! feeding the pipelines let go of them, each pipeline finishes (its spool
//! stage ends once nothing feeds it, its shipper gets [`DRAIN_GRACE`] to ship
//! what is left, the rest waits in the spool for the next start), and the
//! admin endpoint last.
//!
//! `run --dry-run` is [`dry`]: the tailer and the parser, printing instead of
//! shipping.

mod dry;
mod families;
mod logs;
mod otlp;

pub use families::metric_families;

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
use crate::source::exec::metrics::ExecCounters;
use crate::source::known_runs::KnownRuns;
use crate::source::{exec, host_metrics};
use crate::spool::ResumeState;
use logs::{LogsInput, OpenLogs};
use otlp::OtlpPipeline;

/// After the sources stopped, each task feeding the pipelines, and each
/// pipeline's receivers, get this long to stop; then each shipper gets this
/// long to ship what is left: whatever it could not ship stays in the spool
/// for the next start.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// After the token fired, a scrape of the admin endpoint still in flight gets
/// this long.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// `run`: the daemon, or with `--dry-run` the tailer printing what it would
/// ship, until SIGTERM or SIGINT.
pub async fn run(loaded: Loaded, args: RunArgs) -> Result<ExitCode> {
    tracing::info!(
        "wisp-agent {} starting; configuration: {}",
        env!("CARGO_PKG_VERSION"),
        loaded.origin
    );
    logs::log_tailed_files(&loaded.config, &loaded.origin, args.dry_run);
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone())
        .context("cannot install the signal handlers")?;
    if args.dry_run {
        dry::run(loaded, cancel).await
    } else {
        daemon(loaded, cancel).await
    }
}

/// The daemon: tails the configured files into the Loki spool and ships it to
/// Loki, and relays local OTLP to the host's collector, until `cancel` fires;
/// then finishes both (see [`DRAIN_GRACE`]) and returns.
async fn daemon(loaded: Loaded, cancel: CancellationToken) -> Result<ExitCode> {
    let started = SystemTime::now();
    let config = &loaded.config;
    let origin = loaded.origin.to_string();

    // The state directory: checked, and locked until `run` returns.
    config.check_sinks(&origin)?;
    let (state_dir, _lock) = claim_state_dir(config, &origin)?;

    // Discover: the host, chosen and kept fresh in the background.
    let (host, health) = discovery::watch(config.clone(), Inputs::default(), cancel.clone());

    // Each enabled pipeline. The Loki spool stage's input comes first: with
    // `otlp.logs_to_loki` the OTLP receivers store logs records through it.
    let spool_bytes = spool_share(config);
    let logs_input = LogsInput::new();
    let to_loki = config.logs_to_loki().then(|| logs_input.to_loki(config));
    let otlp = OtlpPipeline::start(
        config,
        &state_dir,
        spool_bytes,
        host.clone(),
        health.clone(),
        to_loki,
        cancel.clone(),
    )
    .await?;
    let intake = otlp.as_ref().map(OtlpPipeline::intake);
    let logs = if config.loki.enabled {
        let opened = OpenLogs::open(config, &state_dir, spool_bytes, logs_input, &cancel).await?;
        let Some(logs) = opened else {
            tracing::info!("stopped before the buffer could be opened");
            return Ok(ExitCode::SUCCESS);
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

    // Tasks feeding the pipelines besides their own sources (the exec server,
    // host metrics): each ends soon after `cancel` fires, letting go of them.
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
        &state_dir,
        &resume,
        lines,
        intake.clone(),
        exec_counters.clone(),
        &cancel,
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
    let admin = start_admin(config, &origin, sources, metrics, intake, started, &cancel).await?;
    feeding.extend(admin.host_metrics);

    // The logs pipeline reads from here on.
    let mut logs = logs.map(|l| l.start(config, known_runs, host, health, &cancel));
    crate::notify::ready_until(&cancel);

    // Wait: for SIGTERM or SIGINT, or the tailer stopping on its own (it
    // could not start).
    match logs.as_mut() {
        Some(logs) => tokio::select! {
            _ = cancel.cancelled() => {}
            _ = logs.tailer_stopped() => {}
        },
        None => cancel.cancelled().await,
    }

    // Shutdown, front to back. The token stops every source (the tailer, the
    // receivers, the exec server, host metrics); once the tasks feeding the
    // pipelines let go of them, both pipelines finish side by side: the Loki
    // spool stage ends only once the OTLP receivers let go of it too, which the
    // OTLP pipeline's finish waits for.
    cancel.cancel();
    for task in feeding {
        if tokio::time::timeout(DRAIN_GRACE, task).await.is_err() {
            tracing::warn!("a task feeding the pipelines did not stop within {DRAIN_GRACE:?}");
        }
    }
    let (tailed, ()) = tokio::join!(
        async {
            match logs {
                Some(logs) => logs.finish(DRAIN_GRACE).await,
                None => Ok(()),
            }
        },
        async {
            if let Some(otlp) = otlp {
                otlp.finish(DRAIN_GRACE).await;
            }
        },
    );
    if let Some(admin) = admin.task {
        let _ = tokio::time::timeout(ADMIN_GRACE, admin).await;
    }
    tailed?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
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

/// The admin endpoint's task (`None` when `admin.listen` is empty) and the
/// host-metrics task (`None` when off).
struct Admin {
    task: Option<JoinHandle<()>>,
    host_metrics: Option<JoinHandle<()>>,
}

/// Starts the admin endpoint on `sources` and the host-metrics task, which
/// pushes the host's metrics and the agent's own (the families `/metrics`
/// serves, read by the same code, the endpoint on or off) into the OTLP
/// pipeline's `intake`. Here, once every stage's counters exist; `started` is
/// the agent's start, where the pushed counters begin.
async fn start_admin(
    config: &Config,
    origin: &str,
    sources: Sources,
    metrics: Registry,
    intake: Option<Intake>,
    started: SystemTime,
    cancel: &CancellationToken,
) -> Result<Admin> {
    let status_sources = sources.clone();
    let admin = admin::start(
        &config.admin.listen,
        origin,
        sources,
        metrics,
        cancel.clone(),
    )
    .await?;
    // The periodic status line (`agent.status_interval`; off at zero), from
    // the same readers as `/metrics`.
    crate::status::periodic::spawn(
        config.agent.status_interval.get(),
        admin::status_snapshots(status_sources, admin.metrics.clone()),
        cancel.clone(),
    );
    let host_metrics = host_metrics::spawn(config, intake, admin.metrics, started, cancel.clone());
    Ok(Admin {
        task: admin.task,
        host_metrics,
    })
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
