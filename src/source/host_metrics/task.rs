//! The host-metrics task: one tokio interval task that, at each tick, samples
//! the host (`[host_metrics] enabled`) and reads the agent's own metrics
//! (`[host_metrics] agent_metrics`), encodes both into one request and stores
//! it through the relay's [`Intake`] until the token fires.

use std::time::SystemTime;

use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::agent::OwnMetrics;
use super::build::{data_points, request};
use super::collect::Collector;
use super::HostMetricsSettings;
use crate::config::Config;
use crate::event::Repeated;
use crate::metric::AgentMetrics;
use crate::record::{OtlpPayload, OtlpSignal};
use crate::relay::Intake;

/// The cause the sample task logs once while buffering fails.
const BUFFER: &str = "buffer";

/// Starts the task when `[host_metrics] enabled` or `agent_metrics` and the
/// relay runs (`intake`: where it stores); with `[otlp] enabled = false` there
/// is nowhere to send them, and the log says so (for the host metrics: the
/// agent's own are still on `/metrics`). `agent` is what `/metrics` serves; its
/// cumulative sums start at `started`, the agent's start. The task ends soon
/// after `cancel` fires, dropping its [`Intake`]: whoever runs the relay waits
/// for that before its spool stage can end.
pub fn spawn(
    config: &Config,
    intake: Option<Intake>,
    agent: AgentMetrics,
    started: SystemTime,
    cancel: CancellationToken,
) -> Option<JoinHandle<()>> {
    let (host, own) = (
        config.host_metrics.enabled,
        config.host_metrics.agent_metrics,
    );
    if !host && !own {
        return None;
    }
    let Some(intake) = intake else {
        if host {
            tracing::info!(
                "otlp.enabled = false: host metrics are not collected (they are shipped over OTLP only)"
            );
        }
        return None;
    };
    let settings = HostMetricsSettings::from_config(config);
    if host {
        tracing::info!("host metrics: a sample every {:?}", settings.interval);
    }
    if own {
        tracing::info!(
            "the agent's own metrics: pushed over OTLP every {:?}",
            settings.interval
        );
    }
    let own = own.then(|| OwnMetrics::new(agent, started));
    Some(tokio::spawn(run(settings, intake, own, cancel)))
}

/// Samples every `interval` (the first at once) until `cancel` fires: the
/// host when `settings.system`, the agent's own metrics when `own` is given.
pub async fn run(
    settings: HostMetricsSettings,
    intake: Intake,
    own: Option<OwnMetrics>,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut collector = settings
        .system
        .then(|| Collector::new(settings.proc_root.clone()));
    // Buffering samples failing: logged once until it works again.
    let failing = Repeated::once();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = SystemTime::now();
        let host = collector
            .as_mut()
            .map(|c| c.collect(now))
            .unwrap_or_default();
        let agent = own.as_ref().map(|o| o.collect(now)).unwrap_or_default();
        if host.is_empty() && agent.is_empty() {
            continue;
        }
        let host_points: usize = host.iter().map(data_points).sum();
        let agent_points: usize = agent.iter().map(data_points).sum();
        let body = request(&settings.resource, host, agent).encode_to_vec();
        let payload = OtlpPayload {
            signal: OtlpSignal::Metrics,
            body: body.into(),
        };
        let stored = tokio::select! {
            _ = cancel.cancelled() => break,
            stored = intake.store(payload, crate::record::Owner::AGENT) => stored,
        };
        match stored {
            Ok(()) => {
                tracing::debug!(
                    "host metrics: stored a sample of {host_points} host and {agent_points} agent data points"
                );
                if failing.ended(&BUFFER) {
                    tracing::info!("host metrics: samples are buffered again");
                }
            }
            Err(e) => {
                failing.warn(BUFFER, || {
                    format!("host metrics: cannot buffer a sample ({e}); it is skipped")
                });
            }
        }
    }
    drop(intake);
}
