//! The OTLP relay as one unit for `run`: the local receivers
//! ([`crate::source::otlp`]) → the OTLP spool (`state_dir/spool/otlp/`) → the
//! exporter ([`crate::sink::otlp`]) to the host's collector.
//!
//! Started only with `[otlp] enabled = true`: with the export off, the receivers
//! do not listen either (accepting data that can go nowhere would only fill the
//! disk), and the log says so. Shutdown: the receivers stop taking requests
//! (those in flight get [`crate::source::otlp::SHUTDOWN_GRACE`] to be answered,
//! then their connections are dropped, so no client holds the shutdown), the
//! spool stage ends, and the exporter gets a grace period to ship what is left;
//! the rest waits in the spool.
//!
//! With `[otlp] logs_to_loki` (and `[loki]`), the receivers also store each logs
//! request's records in the Loki spool ([`to_loki`]), and the exporter marks
//! logs exports with `x-wisp-logs-in-loki: true`.
//!
//! A run's own spans and log records (`exec`'s command, its resource naming
//! the run) join the run's trace as the receivers take them ([`run`]): what is
//! stored, relayed and sent to Loki is the rewritten request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FsyncPolicy};
use crate::discovery::{Chosen, HostHealth};
use crate::metric::Registry;
use crate::record::OtlpPayload;
use crate::sink::otlp::{OtlpClient, OtlpCounters, OtlpService, OtlpSinkSettings};
use crate::sink::ship::{self, Shipper};
use crate::source::otlp::{ReceiverCounters, Receivers, PENDING_REQUESTS};
use crate::spool::stage::{self, BufferHealth, GroupLimits, OnFailure, StageSettings};
use crate::spool::{Spool, SpoolCounters, SpoolSettings};

mod intake;
pub mod run;
pub mod to_loki;

pub use intake::Intake;
pub use to_loki::{LogsToLoki, ToLokiSettings};

/// The spool stage appends at most this many requests, and about this many
/// bytes (at least one request), with one fsync.
const GROUP_COMMIT: GroupLimits = GroupLimits {
    max_records: 256,
    max_bytes: 4 * 1024 * 1024,
};

/// The running relay; [`OtlpRelay::finish`] after the cancellation token fired.
pub struct OtlpRelay {
    /// `None` once [`OtlpRelay::close_receivers`] waited for them.
    receivers: Option<Receivers>,
    /// For the agent's own telemetry (host metrics, `exec` spans): see
    /// [`OtlpRelay::intake`].
    intake: Intake,
    /// Tasks holding clones of `intake`, awaited (they end with the cancellation
    /// token) before the spool stage is.
    producers: Vec<JoinHandle<()>>,
    spooling: JoinHandle<()>,
    exporting: JoinHandle<()>,
    drain: CancellationToken,
    stop: CancellationToken,
    pub receiver_counters: Arc<ReceiverCounters>,
    pub counters: Arc<OtlpCounters>,
    /// The OTLP spool's counters (`wisp_spool_*` with `spool="otlp"`).
    pub spool_counters: Arc<SpoolCounters>,
    /// Whether the OTLP spool can append.
    pub buffer_health: Arc<BufferHealth>,
    /// The OTLP spool's bound.
    max_bytes: u64,
}

impl OtlpRelay {
    /// Opens the OTLP spool (bounded by `max_bytes`), starts the exporter and
    /// binds the receivers. `None` when `[otlp]` is disabled. The receivers stop
    /// when `cancel` fires. With `to_loki` the receivers also store logs in the
    /// Loki spool, and logs exports carry `x-wisp-logs-in-loki: true`.
    pub async fn start(
        config: &Config,
        state_dir: &Path,
        max_bytes: u64,
        host: watch::Receiver<Option<Chosen>>,
        health: HostHealth,
        to_loki: Option<LogsToLoki>,
        cancel: CancellationToken,
    ) -> Result<Option<OtlpRelay>> {
        if !config.otlp.enabled {
            if !config.receiver.grpc.is_empty() || !config.receiver.http.is_empty() {
                tracing::info!(
                    "otlp.enabled = false: the local OTLP receivers (receiver.grpc, receiver.http) are not started"
                );
            }
            return Ok(None);
        }
        let settings = OtlpSinkSettings {
            logs_in_loki: to_loki.is_some(),
            ..OtlpSinkSettings::from_config(&config.otlp)
        };
        let client = OtlpClient::new(&settings)?;
        // Always fsynced per group, whatever `buffer.fsync` says: a program's
        // request cannot be read again the way a file line can.
        let spool_settings = SpoolSettings {
            fsync_interval: config.buffer.fsync_interval.get(),
            ..SpoolSettings::new(
                state_dir.join("spool").join("otlp"),
                max_bytes,
                FsyncPolicy::Batch,
            )
        };
        let (writer, reader) =
            tokio::task::spawn_blocking(move || Spool::open_for::<OtlpPayload>(spool_settings))
                .await
                .context("the otlp spool stopped while opening")??;
        tracing::info!(
            "otlp: relaying to {} ({:?}); buffer: {}{}",
            crate::config::redact_url(&settings.endpoint),
            config.otlp.protocol,
            writer.dir().display(),
            if to_loki.is_some() {
                "; received logs also go to loki (otlp.logs_to_loki)"
            } else {
                ""
            }
        );

        let spool_counters = writer.counters();
        // The receivers first: the exporter must know their bound addresses to
        // refuse exporting to them.
        let receiver_counters = Arc::new(ReceiverCounters::default());
        let buffer_health = Arc::new(BufferHealth::otlp());
        let (tx, rx) = tokio::sync::mpsc::channel(PENDING_REQUESTS);
        let intake = Intake::new(tx);
        let spooling = tokio::spawn(stage::run(
            rx,
            writer,
            StageSettings {
                name: "the otlp buffer",
                what: "otlp request(s)",
                meanwhile: "senders are told to retry",
                group: GROUP_COMMIT,
                on_failure: OnFailure::Refuse,
            },
            buffer_health.clone(),
            cancel.clone(),
        ));
        let receivers = Receivers::start(
            &config.receiver,
            intake.clone(),
            to_loki,
            receiver_counters.clone(),
            cancel,
        )
        .await?;
        let settings = OtlpSinkSettings {
            own_receivers: receivers.addrs().to_vec(),
            ..settings
        };
        let counters = Arc::new(OtlpCounters::default());
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        let exporting = tokio::spawn(ship::run(
            Shipper {
                settings: settings.ship_settings(),
                service: OtlpService::new(client, &settings, counters.clone()),
                reader,
                host,
                health,
            },
            drain.clone(),
            stop.clone(),
        ));
        Ok(Some(OtlpRelay {
            receivers: Some(receivers),
            intake,
            producers: Vec::new(),
            spooling,
            exporting,
            drain,
            stop,
            receiver_counters,
            counters,
            spool_counters,
            buffer_health,
            max_bytes,
        }))
    }

    /// Registers the relay's metric readers: the receiver's, the OTLP
    /// spool's (`spool="otlp"`), the exporter's and the receiver's two
    /// listeners'.
    pub fn register_metrics(&self, metrics: &mut Registry) {
        self.receiver_counters.clone().register(metrics);
        self.spool_counters
            .clone()
            .register(metrics, "otlp", self.max_bytes);
        self.counters.clone().register(metrics);
        let receiver = &self.receiver_counters;
        receiver
            .grpc_connections
            .clone()
            .register(metrics, "otlp_grpc");
        receiver
            .http_connections
            .clone()
            .register(metrics, "otlp_http");
    }

    /// Where the agent's own telemetry goes into the OTLP spool, as if received
    /// (but not counted as received: the receiver counters are programs' only).
    /// Whoever holds a clone must drop it once the cancellation token fired: the
    /// spool stage ends, and [`OtlpRelay::finish`] returns, only then.
    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    /// A task that holds an [`OtlpRelay::intake`] clone and ends once the
    /// cancellation token fired: [`OtlpRelay::finish`] waits for it.
    pub fn add_producer(&mut self, task: JoinHandle<()>) {
        self.producers.push(task);
    }

    /// After the cancellation token fired: waits (at most `grace` each) for the
    /// producers and the receivers to stop, so that they no longer hold the
    /// spools' senders: the Loki spool stage, which the receivers feed with
    /// `logs_to_loki`, ends only then. [`OtlpRelay::finish`] does it if not
    /// done before.
    pub async fn close_receivers(&mut self, grace: Duration) {
        for p in self.producers.drain(..) {
            if tokio::time::timeout(grace, p).await.is_err() {
                tracing::warn!("an otlp producer did not stop within {grace:?}");
            }
        }
        if let Some(receivers) = self.receivers.take() {
            receivers.join(grace).await;
        }
    }

    /// After the cancellation token fired: waits for the receivers and the spool
    /// stage, then gives the exporter `grace` to ship what is left.
    pub async fn finish(mut self, grace: Duration) {
        self.close_receivers(grace).await;
        drop(self.intake);
        let _ = self.spooling.await;
        self.drain.cancel();
        let mut exporting = self.exporting;
        tokio::select! {
            _ = &mut exporting => {}
            _ = tokio::time::sleep(grace) => {
                tracing::info!(
                    "the otlp collector did not take everything within {grace:?}; the rest waits in the buffer for the next start"
                );
                self.stop.cancel();
                let _ = exporting.await;
            }
        }
    }
}
