//! Wiring the stages: sources → transform (parse + labels) → sink.
//!
//! Every stage is a task joined to the next by a bounded channel, so a slow sink
//! slows the tailer instead of growing memory. Shutdown runs front to back: the
//! cancellation token stops the sources, each stage ends when its input channel
//! closes, and the last stage acknowledges what it made durable on its way out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, LogSources, RelaySources, Sources};
use crate::config::{Config, Loaded, ProcessEnv};
use crate::discovery::{self, Inputs};
use crate::metric::Registry;
use crate::parse::{ParseSettings, Transformer};
use crate::record::{Batch, SourceBatch};
use crate::relay::{LogsToLoki, OtlpRelay, ToLokiSettings};
use crate::sink::loki::sink::{self as loki_sink, LokiCounters, LokiService};
use crate::sink::loki::LokiClient;
use crate::sink::ship::{self, Shipper};
use crate::source::file::{self, TailSettings};
use crate::source::{exec, host_metrics};
use crate::spool::stage::{self, BufferHealth, GroupLimits, OnFailure, StageSettings};
use crate::spool::{Spool, SpoolError, SpoolReader, SpoolSettings, SpoolWriter};

/// Batches in flight between two stages (each at most 1000 lines or 1 MiB): the bound that
/// makes a slow stage push back on the one before it.
const CHANNEL_BATCHES: usize = 4;

/// Takes the state directory's lock (see [`crate::state_file::lock_dir`]): a
/// second daemon on one state directory is a configuration error naming the
/// first one's pid.
fn lock_state_dir(state_dir: &std::path::Path, origin: &str) -> Result<std::fs::File> {
    let why = match crate::state_file::lock_dir(state_dir) {
        Ok(Ok(lock)) => return Ok(lock),
        Ok(Err(Some(pid))) => format!("another wisp-agent (pid {pid}) runs on it"),
        Ok(Err(None)) => "another wisp-agent runs on it".to_string(),
        Err(e) => format!("cannot lock it: {e}"),
    };
    Err(crate::config::ConfigError::invalid(
        origin,
        "agent.state_dir",
        format!(
            "{} is in use: {why}; stop that one, or give this one its own agent.state_dir",
            state_dir.display()
        ),
    )
    .into())
}

/// Warns when there is nothing to tail. What each entry's patterns match is
/// logged by the tailer after its first walk (bounded, as every walk is: a
/// `glob` here would follow `ln -s . a` under a `**` without end).
pub fn log_tailed_files(config: &Config) {
    if config.files.is_empty() {
        tracing::warn!("no [[files]] entries configured: nothing to tail");
    }
    for f in &config.files {
        for p in f.paths.iter().filter(|p| !p.starts_with('/')) {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            tracing::warn!(
                "[[files]] {}: {p:?} is a relative path, found from the working directory \
                 ({cwd}; under systemd that is /): write it from /",
                f.name
            );
        }
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
    let settings = TailSettings::new(config.files.clone(), state.0.clone());
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

/// The spool stage appends at most about this many records (and bytes of lines)
/// with one fsync. The byte bound keeps a group's encoding (lines, labels and
/// frames: about 1.15 times the lines' bytes for Pino lines) under the 1 MiB
/// the spool writer keeps between appends: a larger group had the writer drop
/// its buffer and grow a new one by reallocation at every append.
const GROUP_COMMIT: GroupLimits = GroupLimits {
    max_records: 4096,
    max_bytes: 768 * 1024,
};

/// After the sources stopped, the Loki sink gets this long to ship what is left;
/// whatever it could not ship stays in the spool for the next start.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// `run`: tails the configured files into the spool and ships the spool to Loki,
/// and relays local OTLP to the host's collector ([`OtlpRelay`]), until `cancel`
/// fires; then drains both (see [`DRAIN_GRACE`]) and returns.
pub async fn run(loaded: Loaded, cancel: CancellationToken) -> Result<ExitCode> {
    let started = SystemTime::now();
    let config = loaded.config;
    let origin = loaded.origin.to_string();
    config.check_sinks(&origin)?;
    let (state_dir, note) = config.resolve_state_dir(&ProcessEnv);
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    crate::config::check_state_dir(&state_dir, &origin, true)?;
    // Held until `run` returns.
    let _lock = lock_state_dir(&state_dir, &origin)?;
    let (host, health) = discovery::watch(config.clone(), Inputs::default(), cancel.clone());
    // The OTLP relay (receivers → its own spool → exporter); the two spools
    // share `buffer.max_bytes` half and half when both run.
    let max_bytes = config.buffer.max_bytes.bytes();
    let spool_bytes = if config.loki.enabled && config.otlp.enabled {
        max_bytes / 2
    } else {
        max_bytes
    };
    // The Loki spool stage's input, made before the relay: with
    // `otlp.logs_to_loki` the receivers store logs records through it too (the
    // stage itself starts once the Loki spool is open).
    let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_BATCHES);
    let buffer_health = Arc::new(BufferHealth::logs());
    let to_loki = config.logs_to_loki().then(|| {
        LogsToLoki::new(
            &ToLokiSettings::from_config(&config),
            batch_tx.clone(),
            buffer_health.clone(),
        )
    });
    let mut otlp = OtlpRelay::start(
        &config,
        &state_dir,
        spool_bytes,
        host.clone(),
        health.clone(),
        to_loki,
        cancel.clone(),
    )
    .await?;
    let exec_counters = Arc::new(exec::metrics::ExecCounters::new(
        config.agent.max_label_values,
    ));
    if !config.loki.enabled {
        // File logs go to Loki only: exec output is dropped (acknowledged at
        // once), its spans go on.
        let (tx, mut rx) = mpsc::channel::<SourceBatch>(CHANNEL_BATCHES);
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                batch.ack.done();
            }
        });
        let _ = start_exec_server(
            &config,
            &state_dir,
            &crate::spool::ResumeState::new(),
            tx,
            otlp.as_mut(),
            exec_counters.clone(),
            &cancel,
        );
        let mut metrics = Registry::default();
        discovery::metrics::register(&mut metrics, host);
        let sources = Sources {
            logs: None,
            relay: relay_sources(otlp.as_ref(), &mut metrics),
        };
        exec_counters.register(&mut metrics);
        return run_otlp_only(
            &config,
            &loaded.origin.to_string(),
            otlp,
            sources,
            metrics,
            started,
            cancel,
        )
        .await;
    }
    let client = LokiClient::new(&config.loki)?;
    let spool_settings = SpoolSettings {
        fsync_interval: config.buffer.fsync_interval.get(),
        ..SpoolSettings::new(
            state_dir.join("spool").join("loki"),
            spool_bytes,
            config.buffer.fsync,
        )
    };
    let Some((writer, reader)) = open_spool(spool_settings, &cancel).await? else {
        tracing::info!("stopped before the buffer could be opened");
        return Ok(ExitCode::SUCCESS);
    };
    tracing::info!("buffer: {}", writer.dir().display());

    let loki_counters = Arc::new(LokiCounters::default());
    let mut transformer = Transformer::new(ParseSettings::from_config(&config));
    // Each source's clock as the spool's last commit left it: lines read after
    // a crash never take a timestamp the spool's records already carry.
    transformer.restore_clocks(writer.resume_state());
    let (src_tx, src_rx) = mpsc::channel(CHANNEL_BATCHES);
    let known_runs = start_exec_server(
        &config,
        &state_dir,
        writer.resume_state(),
        src_tx.clone(),
        otlp.as_mut(),
        exec_counters.clone(),
        &cancel,
    );
    let settings = TailSettings {
        resume: writer.resume_state().clone(),
        known_runs,
        ..TailSettings::new(config.files.clone(), state_dir.clone())
    };
    // Each stage's metric readers; the page serves them in one order
    // whatever the order here ([`crate::metric::ORDER`]).
    let mut metrics = Registry::default();
    discovery::metrics::register(&mut metrics, host.clone());
    settings.counters.clone().register(&mut metrics);
    transformer.counters().register(&mut metrics);
    writer
        .counters()
        .register(&mut metrics, "loki", spool_bytes);
    loki_counters.clone().register(&mut metrics);
    let relay = relay_sources(otlp.as_ref(), &mut metrics);
    exec_counters.register(&mut metrics);
    let admin = start_admin(
        &config,
        &loaded.origin.to_string(),
        Sources {
            logs: Some(LogSources {
                loki: loki_counters.clone(),
                buffer: buffer_health.clone(),
            }),
            relay,
        },
        metrics,
        otlp.as_mut(),
        started,
        &cancel,
    )
    .await?;
    let shipper = Shipper {
        settings: loki_sink::ship_settings(&config.loki),
        service: LokiService::new(client, &config.loki, loki_counters),
        reader,
        host,
        health,
    };
    let drain = CancellationToken::new();
    let stop = CancellationToken::new();
    let shipping = tokio::spawn(ship::run(shipper, drain.clone(), stop.clone()));

    let tail = tokio::spawn(file::run(settings, src_tx, cancel.clone()));
    let stage = tokio::spawn(transform(src_rx, batch_tx, transformer));
    let spooling = tokio::spawn(stage::run(
        batch_rx,
        writer,
        StageSettings {
            name: "the buffer",
            what: "record(s)",
            meanwhile: "reading is paused and nothing is lost",
            group: GROUP_COMMIT,
            on_failure: OnFailure::Hold,
        },
        buffer_health,
        cancel.clone(),
    ));
    crate::notify::ready_until(&cancel);

    let tailed = tail.await.context("the file tailer stopped")?;
    // The receivers (and exec's server) feed the Loki spool stage too: it ends
    // once they let go of it.
    if let Some(otlp) = otlp.as_mut() {
        otlp.close_receivers(DRAIN_GRACE).await;
    }
    let _ = stage.await;
    let _ = spooling.await;
    drain.cancel();
    let loki_drained = async {
        let grace = tokio::time::sleep(DRAIN_GRACE);
        tokio::pin!(grace);
        let mut shipping = shipping;
        tokio::select! {
            _ = &mut shipping => {}
            _ = &mut grace => {
                tracing::info!(
                    "loki did not take everything within {DRAIN_GRACE:?}; the rest waits in the buffer for the next start"
                );
                stop.cancel();
                let _ = shipping.await;
            }
        }
    };
    let otlp_drained = async {
        if let Some(otlp) = otlp {
            otlp.finish(DRAIN_GRACE).await;
        }
    };
    tokio::join!(loki_drained, otlp_drained);
    if let Some(admin) = admin {
        // It stopped with `cancel`; a scrape still in flight gets a moment.
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    tailed.context("cannot tail files")?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// Opens the Loki spool. A full disk is waited out (nothing is read until there
/// is room, so nothing is lost), checking every second; other errors end `run`.
/// `None` when `cancel` fired first.
async fn open_spool(
    settings: SpoolSettings,
    cancel: &CancellationToken,
) -> Result<Option<(SpoolWriter, SpoolReader)>> {
    let mut logged = false;
    loop {
        let s = settings.clone();
        match tokio::task::spawn_blocking(move || Spool::open(s))
            .await
            .context("the spool stopped while opening")?
        {
            Ok(halves) => {
                if logged {
                    tracing::info!("the buffer has room again");
                }
                return Ok(Some(halves));
            }
            Err(e @ SpoolError::DiskFull { .. }) => {
                if !logged {
                    tracing::error!(
                        "cannot open the buffer: {e} (free space there, or lower buffer.max_bytes); \
                         files are not read until it opens, so nothing is lost"
                    );
                    logged = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `run` with `loki.enabled = false`: only the OTLP relay runs, and the admin
/// endpoint with its metrics. File logs go to Loki only, so `[[files]]` are not
/// tailed then (the log says so).
async fn run_otlp_only(
    config: &Config,
    origin: &str,
    mut otlp: Option<OtlpRelay>,
    sources: Sources,
    metrics: Registry,
    started: SystemTime,
    cancel: CancellationToken,
) -> Result<ExitCode> {
    if !config.files.is_empty() {
        tracing::warn!(
            "loki.enabled = false: the [[files]] entries are not tailed (file logs are shipped to Loki only); \
             relaying OTLP only"
        );
    }
    let admin = start_admin(
        config,
        origin,
        sources,
        metrics,
        otlp.as_mut(),
        started,
        &cancel,
    )
    .await?;
    crate::notify::ready_until(&cancel);
    cancel.cancelled().await;
    if let Some(otlp) = otlp {
        otlp.finish(DRAIN_GRACE).await;
    }
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// Starts the admin endpoint on `sources` and the host-metrics task, which
/// pushes the host's metrics and the agent's own (the families `/metrics`
/// serves, read by the same code, the endpoint on or off) into the relay's
/// spool. Here, once every stage's counters exist; `started` is the agent's
/// start, where the pushed counters begin.
async fn start_admin(
    config: &Config,
    origin: &str,
    sources: Sources,
    metrics: Registry,
    relay: Option<&mut OtlpRelay>,
    started: SystemTime,
    cancel: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
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
    let push = host_metrics::spawn(
        config,
        relay.as_deref(),
        admin.metrics,
        started,
        cancel.clone(),
    );
    if let (Some(task), Some(relay)) = (push, relay) {
        relay.add_producer(task);
    }
    Ok(admin.task)
}

/// Registers the relay's metric readers, if it runs, and what `/healthz` and
/// `/status` read of it.
fn relay_sources(relay: Option<&OtlpRelay>, metrics: &mut Registry) -> Option<RelaySources> {
    let relay = relay?;
    relay.register_metrics(metrics);
    Some(RelaySources {
        exporter: relay.counters.clone(),
        buffer: relay.buffer_health.clone(),
    })
}

/// Starts the exec socket server ([`exec::server`]): its lines go into `tx`
/// (the transform stage), its spans into the relay's spool. A socket that cannot
/// be bound is warned about; the daemon runs on without it. Returns the runs
/// the server knows, for the tailer (see [`crate::source::known_runs`]).
fn start_exec_server(
    config: &Config,
    state_dir: &std::path::Path,
    resume: &crate::spool::ResumeState,
    tx: mpsc::Sender<SourceBatch>,
    relay: Option<&mut OtlpRelay>,
    counters: Arc<exec::metrics::ExecCounters>,
    cancel: &CancellationToken,
) -> Option<Arc<crate::source::known_runs::KnownRuns>> {
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
        intake: relay.as_ref().map(|r| r.intake()),
        counters,
        max_label_sets: config.agent.max_label_values,
    };
    let resume = resume.clone();
    let cancel = cancel.clone();
    let task = tokio::spawn(async move {
        exec::server::run(listener, settings, startup, &resume, tx, cancel).await;
    });
    if let Some(relay) = relay {
        relay.add_producer(task);
    }
    Some(known)
}

/// Every family `/metrics` can serve, with its type, in the order served
/// ([`crate::metric::ORDER`]): the tables the stages register, so the
/// reference can be checked against them.
pub fn metric_families() -> Vec<(&'static str, &'static str)> {
    use crate::metric::{Family, Kind};
    fn of<T>(f: &[Family<T>]) -> impl Iterator<Item = (&'static str, Kind)> + '_ {
        f.iter().map(|f| (f.name, f.kind))
    }
    let (spool_a, spool_b) = crate::spool::SpoolCountersSnapshot::split();
    of(discovery::metrics::FAMILIES)
        .chain(of(file::TailStats::FAMILIES))
        .chain(of(crate::parse::ParseCountersSnapshot::FAMILIES))
        .chain(of(spool_a))
        .chain(of(crate::spool::SPOOL_MAX_BYTES))
        .chain(of(spool_b))
        .chain(of(LokiCounters::FAMILIES))
        .chain(of(crate::source::otlp::ReceiverCounters::FAMILIES))
        .chain(of(crate::sink::otlp::OtlpCounters::FAMILIES))
        .chain(of(crate::listen::ListenerCounters::FAMILIES))
        .chain(of(exec::metrics::ExecCounters::FAMILIES))
        .chain(of(crate::procfs::ProcessStats::FAMILIES))
        .map(|(name, kind)| (name, kind.as_str()))
        .collect()
}
