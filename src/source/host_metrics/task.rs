//! The host-metrics task: one tokio interval task that samples, encodes and
//! stores each sample through the relay's [`Intake`] until the token fires.

use std::time::SystemTime;

use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::build::{data_points, request};
use super::collect::Collector;
use super::HostMetricsSettings;
use crate::config::Config;
use crate::record::{OtlpPayload, OtlpSignal};
use crate::relay::Intake;
use crate::relay::OtlpRelay;

/// Starts the host-metrics task when `[host_metrics] enabled` and the relay runs;
/// with `[otlp] enabled = false` there is nowhere to send them, and the log says
/// so. The task ends soon after `cancel` fires, dropping its [`Intake`]: hand it
/// to [`OtlpRelay::add_producer`] so the relay waits for that before its spool.
pub fn spawn(
    config: &Config,
    relay: Option<&OtlpRelay>,
    cancel: CancellationToken,
) -> Option<JoinHandle<()>> {
    if !config.host_metrics.enabled {
        return None;
    }
    let Some(relay) = relay else {
        tracing::info!(
            "otlp.enabled = false: host metrics are not collected (they are shipped over OTLP only)"
        );
        return None;
    };
    let settings = HostMetricsSettings::from_config(config);
    tracing::info!("host metrics: a sample every {:?}", settings.interval);
    Some(tokio::spawn(run(settings, relay.intake(), cancel)))
}

/// Samples every `interval` (the first at once) until `cancel` fires.
pub async fn run(settings: HostMetricsSettings, intake: Intake, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut collector = Collector::new(settings.proc_root.clone());
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let metrics = collector.collect(SystemTime::now());
        if metrics.is_empty() {
            continue;
        }
        let points: usize = metrics.iter().map(data_points).sum();
        let body = request(&settings.resource, metrics).encode_to_vec();
        let payload = OtlpPayload {
            signal: OtlpSignal::Metrics,
            body: body.into(),
        };
        let stored = tokio::select! {
            _ = cancel.cancelled() => break,
            stored = intake.store(payload) => stored,
        };
        match stored {
            Ok(()) => {
                tracing::debug!("host metrics: stored a sample of {points} data points");
                if failing {
                    tracing::info!("host metrics: samples are buffered again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("host metrics: cannot buffer a sample ({e}); it is skipped");
                    failing = true;
                }
            }
        }
    }
    drop(intake);
}
