//! Host metrics (`[host_metrics]`): every `interval` the VM's CPU, memory,
//! filesystem, disk and network figures, read from `/proc` by hand, go as one
//! OTLP `ExportMetricsServiceRequest` into the OTLP relay's spool
//! ([`Intake::store`]), so the exporter ships them to the host's collector with
//! retries, and nothing is lost while the host is away.
//!
//! Runs only with the relay (`[otlp] enabled = true`). One tokio task, no thread
//! of its own; the first sample is taken at start, then one per `interval`.
//!
//! The same task pushes the agent's own metrics (`[host_metrics]
//! agent_metrics`, on by default, with `enabled` on or off): every family
//! `/metrics` serves, read by the same code at each tick and sent in the same
//! request under the scope `wisp-agent` (`agent.rs` says the shape), so a
//! collector on the host gets the agent's health although it cannot scrape
//! the VM. The admin endpoint need not run for it.
//!
//! Names, units and attributes follow the OpenTelemetry semantic conventions for
//! system metrics (`system.*`, development status), as the collector's
//! `hostmetrics` receiver emits them:
//!
//! | metric | type | unit | attributes |
//! |---|---|---|---|
//! | `system.uptime` | Gauge (double) | `s` | |
//! | `system.cpu.time` | Sum, monotonic, cumulative (double) | `s` | `cpu.mode` (user, nice, system, idle, iowait, interrupt, steal) |
//! | `system.cpu.logical.count` | Sum, non-monotonic (int) | `{cpu}` | |
//! | `system.cpu.load_average.1m`, `.5m`, `.15m` | Gauge (double) | `{thread}` | |
//! | `system.memory.usage` | Sum, non-monotonic (int) | `By` | `system.memory.state` (used, free, buffers, cached) |
//! | `system.memory.limit` | Sum, non-monotonic (int) | `By` | |
//! | `system.memory.utilization` | Gauge (double) | `1` | `system.memory.state` |
//! | `system.paging.usage` | Sum, non-monotonic (int) | `By` | `system.paging.state` (used, free); only with swap |
//! | `system.filesystem.usage` | Sum, non-monotonic (int) | `By` | `system.device`, `system.filesystem.mountpoint`, `system.filesystem.type`, `system.filesystem.mode`, `system.filesystem.state` (used, free, reserved) |
//! | `system.filesystem.utilization` | Gauge (double) | `1` | as above, without the state |
//! | `system.disk.io` | Sum, monotonic, cumulative (int) | `By` | `system.device`, `disk.io.direction` (read, write) |
//! | `system.disk.operations` | Sum, monotonic, cumulative (int) | `{operation}` | `system.device`, `disk.io.direction` |
//! | `system.network.io` | Sum, monotonic, cumulative (int) | `By` | `network.interface.name`, `network.io.direction` (receive, transmit) |
//! | `system.network.errors` | Sum, monotonic, cumulative (int) | `{error}` | as above |
//! | `system.network.packet.dropped` | Sum, monotonic, cumulative (int) | `{packet}` | as above |
//!
//! `used` memory is `MemTotal - MemAvailable` (the convention's Linux formula).
//! Cumulative sums start at boot (`btime` in `/proc/stat`): the kernel counts from
//! there. Filesystems: local ones only (a block device or a local type), each
//! device once (bind mounts and subvolumes share its figures); pseudo, memory
//! (`tmpfs`), overlay, read-only image (`squashfs`) and network filesystems are
//! left out (a hung network mount must not stall the task). Disks: every device
//! in `/proc/diskstats` that did any I/O, but loop, RAM and optical devices.
//! Network: every interface but `lo` that moved any bytes.
//!
//! A missing or odd `/proc` file skips its metrics (said once at debug level),
//! never the sample; so does one over the read cap (1 MiB). The parsers are pure
//! functions of the file's text and live in [`crate::procfs`], the one place
//! that knows `/proc` file formats.
//!
//! `task.rs` is the loop, `collect.rs` reads a sample, `build.rs` turns it into
//! OTLP, `agent.rs` turns the agent's own metrics into OTLP, both from the
//! building blocks in `points.rs`.

use std::time::Duration;

use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::config::Config;
use crate::record::otlp_text as text;

mod agent;
mod build;
mod collect;
mod points;
mod task;
#[cfg(test)]
mod tests;

pub use agent::{OwnMetrics, SCOPE as AGENT_SCOPE};
pub use build::request;
pub use collect::Collector;
pub use task::{run, spawn};

/// What the task needs besides the intake.
#[derive(Clone, Debug)]
pub struct HostMetricsSettings {
    pub interval: Duration,
    /// `service.name`, `host.name`, `os.type` and `otlp.resource_attributes`.
    pub resource: Resource,
    /// Where `/proc` is (a test may point it elsewhere).
    pub proc_root: std::path::PathBuf,
    /// Whether the host's `system.*` metrics are sampled (`[host_metrics]
    /// enabled`); the agent's own are pushed beside them or alone.
    pub system: bool,
}

impl HostMetricsSettings {
    pub fn from_config(config: &Config) -> Self {
        let hostname = config.agent.effective_hostname();
        let mut attrs: Vec<(String, String)> = vec![
            ("service.name".into(), config.otlp.service_name.clone()),
            ("host.name".into(), hostname),
            ("os.type".into(), "linux".into()),
        ];
        // `otlp.resource_attributes` add to these, and win over them.
        for (k, v) in &config.otlp.resource_attributes {
            match attrs.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => attrs.push((k.clone(), v.clone())),
            }
        }
        Self {
            // A zero interval is refused by validation; never spin if one slips by.
            interval: config.host_metrics.interval.get().max(MIN_INTERVAL),
            resource: Resource {
                attributes: attrs.iter().map(|(k, v)| text(k, v)).collect(),
                ..Default::default()
            },
            proc_root: "/proc".into(),
            system: config.host_metrics.enabled,
        }
    }
}

/// The shortest interval the task keeps.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
