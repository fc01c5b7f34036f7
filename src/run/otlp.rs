//! The OTLP pipeline as one value for `run`: the local receivers
//! ([`crate::source::otlp`]) → the OTLP spool (`state_dir/spool/otlp/`) → the
//! exporter ([`crate::sink::otlp`]) to the host's collector, with its counters.
//!
//! Started only with `[otlp] enabled = true`: with the export off, the receivers
//! do not listen either (accepting data that can go nowhere would only fill the
//! disk), and the log says so. [`OtlpPipeline::finish`]: the receivers stop
//! taking requests (those in flight get [`crate::source::otlp::SHUTDOWN_GRACE`]
//! to be answered, then their connections are dropped, so no client holds the
//! shutdown), the spool stage ends, and the exporter gets a grace period to
//! ship what is left; the rest waits in the spool.
//!
//! With `[otlp] logs_to_loki` (and `[loki]`), the receivers also store each logs
//! request's records in the Loki spool ([`crate::relay::to_loki`]), and the
//! exporter marks logs exports with `x-wisp-logs-in-loki: true`.
//!
//! A run's own spans and log records (`exec`'s command, its resource naming
//! the run) join the run's trace as the receivers take them
//! ([`crate::relay::run`]): what is stored, relayed and sent to Loki is the
//! rewritten request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Shipping;
use crate::admin::RelaySources;
use crate::config::{Config, FsyncPolicy};
use crate::discovery::{Chosen, HostHealth};
use crate::metric::Registry;
use crate::record::OtlpPayload;
use crate::relay::{Intake, LogsToLoki};
use crate::sink::otlp::{OtlpClient, OtlpCounters, OtlpService, OtlpSinkSettings};
use crate::sink::ship::{self, Shipper};
use crate::source::otlp::{ReceiverCounters, Receivers, PENDING_REQUESTS};
use crate::spool::stage::{self, BufferHealth, GroupLimits, OnFailure, StageSettings};
use crate::spool::{Spool, SpoolCounters, SpoolSettings};

/// The spool stage appends at most this many requests, and about this many
/// bytes (at least one request), with one fsync.
const GROUP_COMMIT: GroupLimits = GroupLimits {
    max_records: 256,
    max_bytes: 4 * 1024 * 1024,
};

/// The running OTLP pipeline; [`OtlpPipeline::finish`] once the cancellation
/// token fired.
pub struct OtlpPipeline {
    receivers: Receivers,
    /// Where the agent's own telemetry goes in: see [`OtlpPipeline::intake`].
    intake: Intake,
    spooling: JoinHandle<()>,
    exporting: Shipping,
    counters: StageCounters,
}

/// The counters of each stage of the OTLP pipeline.
struct StageCounters {
    receiver: Arc<ReceiverCounters>,
    spool: Arc<SpoolCounters>,
    exporter: Arc<OtlpCounters>,
    /// Whether the OTLP spool can append.
    buffer: Arc<BufferHealth>,
    /// The OTLP spool's bound (its share of `buffer.max_bytes`).
    spool_max_bytes: u64,
}

impl OtlpPipeline {
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
    ) -> Result<Option<OtlpPipeline>> {
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
        let chosen = host.borrow().as_ref().map(|c| c.address.to_string());
        tracing::info!(
            "otlp: relaying over {} to {}; buffer: {}{}",
            config.otlp.protocol,
            collector(&settings.endpoint, chosen.as_deref()),
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
            |_: &[OtlpPayload], _: &[(crate::record::Owner, usize)]| {},
        ));
        let receivers = match Receivers::start(
            &config.receiver,
            intake.clone(),
            to_loki,
            receiver_counters.clone(),
            cancel.clone(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                // The receivers bound already stop, and the spool stage ends,
                // closing the spool, before `run` may open it again (a reload
                // that goes back to the configuration before).
                cancel.cancel();
                drop(intake);
                let _ = spooling.await;
                return Err(e.into());
            }
        };
        let settings = OtlpSinkSettings {
            own_receivers: receivers.addrs().to_vec(),
            ..settings
        };
        let counters = Arc::new(OtlpCounters::default());
        let shipper = Shipper {
            settings: settings.ship_settings(),
            service: OtlpService::new(client, &settings, counters.clone()),
            reader,
            host,
            health,
        };
        let exporting = Shipping::start("the otlp collector", |drain, stop| {
            ship::run(shipper, drain, stop)
        });
        Ok(Some(OtlpPipeline {
            receivers,
            intake,
            spooling,
            exporting,
            counters: StageCounters {
                receiver: receiver_counters,
                spool: spool_counters,
                exporter: counters,
                buffer: buffer_health,
                spool_max_bytes: max_bytes,
            },
        }))
    }

    /// Registers each stage's metric readers: the receiver's, the OTLP
    /// spool's (`spool="otlp"`), the exporter's and the receiver's two
    /// listeners'.
    pub fn register_metrics(&self, metrics: &mut Registry) {
        let c = &self.counters;
        c.receiver.clone().register(metrics);
        c.spool.clone().register(metrics, "otlp", c.spool_max_bytes);
        c.exporter.clone().register(metrics);
        c.receiver
            .grpc_connections
            .clone()
            .register(metrics, "otlp_grpc");
        c.receiver
            .http_connections
            .clone()
            .register(metrics, "otlp_http");
    }

    /// What `/healthz` and `/status` read of it besides its metrics.
    pub fn sources(&self) -> RelaySources {
        RelaySources {
            exporter: self.counters.exporter.clone(),
            buffer: self.counters.buffer.clone(),
        }
    }

    /// Where the agent's own telemetry goes into the OTLP spool, as if received
    /// (but not counted as received: the receiver counters are programs' only).
    /// Whoever holds a clone must drop it once the cancellation token fired:
    /// the spool stage ends, and [`OtlpPipeline::finish`] returns, only then.
    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    /// After the cancellation token fired: waits (at most `grace`) for the
    /// receivers to stop, so that they let go of both spools' inputs (the Loki
    /// spool stage, which they feed with `logs_to_loki`, ends only then), then
    /// for the spool stage, then gives the exporter `grace` to ship what is left.
    pub async fn finish(self, grace: Duration) {
        self.receivers.join(grace).await;
        drop(self.intake);
        let _ = self.spooling.await;
        self.exporting.finish(grace).await;
    }
}

/// Where the exporter sends, for the log: the endpoint itself (password
/// redacted), the chosen host filled in; before a host is chosen, in words
/// rather than as the `{host}` template.
fn collector(endpoint: &str, host: Option<&str>) -> String {
    if !endpoint.contains("{host}") {
        return crate::config::redact_url(endpoint);
    }
    if let Some(host) = host {
        return crate::config::redact_url(&crate::config::fill_host(endpoint, host));
    }
    let port = reqwest::Url::parse(&crate::config::fill_host(endpoint, "host.invalid"))
        .ok()
        .and_then(|u| u.port_or_known_default());
    match port {
        Some(p) => format!("port {p} of the host, once discovery has chosen one"),
        None => "the host, once discovery has chosen one".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::collector;

    #[test]
    fn the_collector_is_named_without_a_template() {
        assert_eq!(
            collector("http://{host}:4317", None),
            "port 4317 of the host, once discovery has chosen one"
        );
        assert_eq!(
            collector("http://{host}:4318", Some("192.168.5.2")),
            "http://192.168.5.2:4318"
        );
        assert_eq!(
            collector("http://{host}:4317", Some("fd00::1")),
            "http://[fd00::1]:4317"
        );
        assert_eq!(
            collector("https://collector.example:4317", None),
            "https://collector.example:4317"
        );
    }
}
