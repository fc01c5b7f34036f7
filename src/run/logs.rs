//! The file-log pipeline as one value for `run`: tailer → transform (parse +
//! labels) → spool stage → shipper with `LokiService` (the same spool stage
//! and shipper as the OTLP pipeline's), with its counters.
//!
//! Every stage is a task joined to the next by a bounded channel, so a slow sink
//! slows the tailer instead of growing memory. The exec server's lines join at
//! the transform ([`OpenLogs::lines`]), the OTLP receivers' log records (with
//! `otlp.logs_to_loki`) at the spool stage ([`LogsInput::to_loki`]).
//! [`LogsPipeline::finish`] runs front to back: each stage ends when its input
//! channel closes, and the shipper gets a grace period to ship what is left.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Shipping;
use crate::admin::LogSources;
use crate::config::Config;
use crate::discovery::{Chosen, HostHealth};
use crate::metric::Registry;
use crate::parse::{ParseCounters, ParseSettings, Transformer};
use crate::record::{Batch, SourceBatch};
use crate::relay::{LogsToLoki, ToLokiSettings};
use crate::sink::loki::LokiClient;
use crate::sink::loki::{self as loki_sink, LokiCounters, LokiService};
use crate::sink::ship::{self, Shipper};
use crate::source::file::{self, TailCounters, TailError, TailSettings};
use crate::source::known_runs::KnownRuns;
use crate::spool::stage::{self, BufferHealth, GroupLimits, OnFailure, StageSettings};
use crate::spool::{
    ResumeState, Spool, SpoolCounters, SpoolError, SpoolReader, SpoolSettings, SpoolWriter,
};

/// Batches in flight between two stages (each at most 1000 lines or 1 MiB): the bound that
/// makes a slow stage push back on the one before it.
pub(super) const CHANNEL_BATCHES: usize = 4;

/// The spool stage appends at most about this many records (and bytes of lines)
/// with one fsync. The byte bound keeps a group's encoding (lines, labels and
/// frames: about 1.15 times the lines' bytes for Pino lines) under the 1 MiB
/// the spool writer keeps between appends: a larger group had the writer drop
/// its buffer and grow a new one by reallocation at every append.
const GROUP_COMMIT: GroupLimits = GroupLimits {
    max_records: 4096,
    max_bytes: 768 * 1024,
};

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
pub(super) async fn transform(
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

/// The Loki spool stage's input, made before anything that feeds it: with
/// `otlp.logs_to_loki` the OTLP receivers store logs records through it, and
/// they start before the Loki spool is open.
pub struct LogsInput {
    tx: mpsc::Sender<Batch>,
    rx: mpsc::Receiver<Batch>,
    /// Whether the Loki spool can append.
    health: Arc<BufferHealth>,
}

impl LogsInput {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        Self {
            tx,
            rx,
            health: Arc::new(BufferHealth::logs()),
        }
    }

    /// The OTLP receivers' way into the Loki spool stage (`otlp.logs_to_loki`).
    pub fn to_loki(&self, config: &Config) -> LogsToLoki {
        LogsToLoki::new(
            &ToLokiSettings::from_config(config),
            self.tx.clone(),
            self.health.clone(),
        )
    }
}

impl Default for LogsInput {
    fn default() -> Self {
        Self::new()
    }
}

/// The file-log pipeline with its spool open and its counters made, not
/// reading yet: [`OpenLogs::start`] starts it.
pub struct OpenLogs {
    input: LogsInput,
    writer: SpoolWriter,
    reader: SpoolReader,
    transformer: Transformer,
    tail: TailSettings,
    service: LokiService,
    src_tx: mpsc::Sender<SourceBatch>,
    src_rx: mpsc::Receiver<SourceBatch>,
    counters: StageCounters,
}

/// The counters of each stage of the file-log pipeline.
struct StageCounters {
    tail: Arc<TailCounters>,
    parse: Arc<ParseCounters>,
    spool: Arc<SpoolCounters>,
    loki: Arc<LokiCounters>,
    /// The spool's bound (its share of `buffer.max_bytes`).
    spool_max_bytes: u64,
}

impl OpenLogs {
    /// Opens the Loki spool (bounded by `max_bytes`) and makes each stage's
    /// counters. `None` when `cancel` fired while a full disk was waited out.
    pub async fn open(
        config: &Config,
        state_dir: &Path,
        max_bytes: u64,
        input: LogsInput,
        cancel: &CancellationToken,
    ) -> Result<Option<OpenLogs>> {
        let client = LokiClient::new(&config.loki)?;
        let spool_settings = SpoolSettings {
            fsync_interval: config.buffer.fsync_interval.get(),
            ..SpoolSettings::new(
                state_dir.join("spool").join("loki"),
                max_bytes,
                config.buffer.fsync,
            )
        };
        let Some((writer, reader)) = open_spool(spool_settings, cancel).await? else {
            return Ok(None);
        };
        tracing::info!("buffer: {}", writer.dir().display());
        let loki_counters = Arc::new(LokiCounters::default());
        let mut transformer = Transformer::new(ParseSettings::from_config(config));
        // Each source's clock as the spool's last commit left it: lines read after
        // a crash never take a timestamp the spool's records already carry.
        transformer.restore_clocks(writer.resume_state());
        let tail = TailSettings {
            resume: Some(writer.resume_state().clone()),
            ..TailSettings::new(config.files.clone(), state_dir.to_path_buf())
        };
        let counters = StageCounters {
            tail: tail.counters.clone(),
            parse: transformer.counters(),
            spool: writer.counters(),
            loki: loki_counters.clone(),
            spool_max_bytes: max_bytes,
        };
        let (src_tx, src_rx) = mpsc::channel(CHANNEL_BATCHES);
        Ok(Some(OpenLogs {
            input,
            writer,
            reader,
            transformer,
            tail,
            service: LokiService::new(client, &config.loki, loki_counters),
            src_tx,
            src_rx,
            counters,
        }))
    }

    /// Registers each stage's metric readers: the tailer's, the parser's, the
    /// Loki spool's (`spool="loki"`) and the Loki sink's.
    pub fn register_metrics(&self, metrics: &mut Registry) {
        let c = &self.counters;
        c.tail.clone().register(metrics);
        c.parse.clone().register(metrics);
        c.spool.clone().register(metrics, "loki", c.spool_max_bytes);
        c.loki.clone().register(metrics);
    }

    /// What `/healthz` and `/status` read of it besides its metrics.
    pub fn sources(&self) -> LogSources {
        LogSources {
            loki: self.counters.loki.clone(),
            buffer: self.input.health.clone(),
        }
    }

    /// The resume points the spool's commits hold (the tailer's, the exec
    /// server's).
    pub fn resume(&self) -> &ResumeState {
        self.writer.resume_state()
    }

    /// Where other sources' lines join the tailer's, before the transform (the
    /// exec server's).
    pub fn lines(&self) -> mpsc::Sender<SourceBatch> {
        self.src_tx.clone()
    }

    /// Starts the shipper, then the tailer, the transform and the spool stage.
    /// `known_runs`: the exec runs the daemon knows, whose marked lines the
    /// tailer leaves to `exec`. The tailer and the spool stage stop when `cancel`
    /// fires.
    pub fn start(
        self,
        config: &Config,
        known_runs: Option<Arc<KnownRuns>>,
        host: watch::Receiver<Option<Chosen>>,
        health: HostHealth,
        cancel: &CancellationToken,
    ) -> LogsPipeline {
        let shipper = Shipper {
            settings: loki_sink::ship_settings(&config.loki),
            service: self.service,
            reader: self.reader,
            host,
            health,
        };
        let shipping = Shipping::start("loki", |drain, stop| ship::run(shipper, drain, stop));
        let tail = TailSettings {
            known_runs,
            ..self.tail
        };
        let tailing = tokio::spawn(file::run(tail, self.src_tx, cancel.clone()));
        let transforming = tokio::spawn(transform(self.src_rx, self.input.tx, self.transformer));
        let spooling = tokio::spawn(stage::run(
            self.input.rx,
            self.writer,
            StageSettings {
                name: "the buffer",
                what: "record(s)",
                meanwhile: "reading is paused and nothing is lost",
                group: GROUP_COMMIT,
                on_failure: OnFailure::Hold,
            },
            self.input.health,
            cancel.clone(),
        ));
        LogsPipeline {
            tailing,
            tailed: None,
            transforming,
            spooling,
            shipping,
        }
    }
}

/// The running file-log pipeline; [`LogsPipeline::finish`] once the
/// cancellation token fired.
pub struct LogsPipeline {
    tailing: JoinHandle<Result<(), TailError>>,
    /// How the tailer ended, once [`LogsPipeline::tailer_stopped`] saw it.
    tailed: Option<Result<Result<(), TailError>, tokio::task::JoinError>>,
    transforming: JoinHandle<()>,
    spooling: JoinHandle<()>,
    shipping: Shipping,
}

impl LogsPipeline {
    /// Returns once the tailer stopped: after the cancellation token fired, or
    /// on its own when it could not start.
    pub async fn tailer_stopped(&mut self) {
        if self.tailed.is_none() {
            self.tailed = Some((&mut self.tailing).await);
        }
    }

    /// After the cancellation token fired, and once the other sources feeding
    /// it (the exec server, the OTLP receivers) let go of it: waits for the
    /// tailer, the transform and the spool stage to end, then gives the shipper
    /// `grace` to ship what is left. Whatever it could not ship stays in the
    /// spool for the next start. An error when the tailer could not run.
    pub async fn finish(mut self, grace: Duration) -> Result<()> {
        self.tailer_stopped().await;
        let _ = self.transforming.await;
        let _ = self.spooling.await;
        self.shipping.finish(grace).await;
        match self.tailed {
            Some(tailed) => tailed
                .context("the file tailer stopped")?
                .context("cannot tail files"),
            None => Ok(()),
        }
    }
}

/// Opens the Loki spool. A full disk is waited out (nothing is read until there
/// is room, so nothing is lost), checking every second; other errors end `run`.
/// `None` when `cancel` fired first.
async fn open_spool(
    settings: SpoolSettings,
    cancel: &CancellationToken,
) -> Result<Option<(SpoolWriter, SpoolReader)>> {
    let full = crate::event::Repeated::once();
    loop {
        let s = settings.clone();
        match tokio::task::spawn_blocking(move || Spool::open(s))
            .await
            .context("the spool stopped while opening")?
        {
            Ok(halves) => {
                if full.ended(&"disk full") {
                    tracing::info!("the buffer has room again");
                }
                return Ok(Some(halves));
            }
            Err(e @ SpoolError::DiskFull { .. }) => {
                full.error("disk full", || {
                    format!(
                        "cannot open the buffer: {e} (free space there, or lower buffer.max_bytes); \
                         files are not read until it opens, so nothing is lost"
                    )
                });
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
