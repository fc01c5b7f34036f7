//! The OTLP side of host metrics: parsed `/proc` figures → `system.*`
//! metrics (names, units and attributes as the module docs' table says), and
//! one `ExportMetricsServiceRequest` per sample, with the agent's own metrics
//! beside them.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{metric, Metric, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::points::{double_point, gauge, int_point, sum, to_i64};
use crate::procfs::{DiskStats, MemInfo, Mount, NetDev, Stat};
use crate::record::otlp_text as text;

/// The instrumentation scope of what this module sends.
const SCOPE: &str = "wisp-agent/host_metrics";

pub(super) fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        _ => 0,
    }
}

/// One export request: the resource, then the host's `system.*` metrics and
/// the agent's own ([`super::agent`]), each under its scope; an empty list
/// leaves its scope out.
pub fn request(
    resource: &Resource,
    host: Vec<Metric>,
    agent: Vec<Metric>,
) -> ExportMetricsServiceRequest {
    let scope = |name: &str, metrics: Vec<Metric>| ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        metrics,
        ..Default::default()
    };
    let scope_metrics = [(SCOPE, host), (super::agent::SCOPE, agent)]
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(name, m)| scope(name, m))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics,
            ..Default::default()
        }],
    }
}

pub(super) fn cpu_metrics(stat: &Stat, ticks_per_second: f64, start: u64, now: u64) -> Vec<Metric> {
    let t = &stat.total;
    let secs = |ticks: u64| ticks as f64 / ticks_per_second;
    let modes = [
        ("user", t.user),
        ("nice", t.nice),
        ("system", t.system),
        ("idle", t.idle),
        ("iowait", t.iowait),
        ("interrupt", t.irq.saturating_add(t.softirq)),
        ("steal", t.steal),
    ];
    let points = modes
        .iter()
        .map(|(mode, ticks)| double_point(vec![text("cpu.mode", mode)], secs(*ticks), start, now))
        .collect();
    let mut out = vec![sum(
        "system.cpu.time",
        "Seconds the CPUs spent in each mode.",
        "s",
        true,
        points,
    )];
    if stat.logical_cpus > 0 {
        out.push(sum(
            "system.cpu.logical.count",
            "The number of logical CPUs.",
            "{cpu}",
            false,
            vec![int_point(
                Vec::new(),
                i64::from(stat.logical_cpus),
                start,
                now,
            )],
        ));
    }
    out
}

pub(super) fn memory_metrics(m: &MemInfo, start: u64, now: u64) -> Vec<Metric> {
    let used = match m.available {
        Some(available) => m.total.saturating_sub(available),
        // Before MemAvailable: the older formula.
        None => m
            .total
            .saturating_sub(m.free)
            .saturating_sub(m.buffers)
            .saturating_sub(m.cached),
    };
    let states = [
        ("used", used),
        ("free", m.free),
        ("buffers", m.buffers),
        ("cached", m.cached),
    ];
    let usage = states
        .iter()
        .map(|(s, v)| int_point(vec![text("system.memory.state", s)], to_i64(*v), start, now))
        .collect();
    let utilization = states
        .iter()
        .map(|(s, v)| {
            double_point(
                vec![text("system.memory.state", s)],
                *v as f64 / m.total as f64,
                0,
                now,
            )
        })
        .collect();
    let mut out = vec![
        sum(
            "system.memory.usage",
            "Memory in use by state.",
            "By",
            false,
            usage,
        ),
        sum(
            "system.memory.limit",
            "Total memory available to the system.",
            "By",
            false,
            vec![int_point(Vec::new(), to_i64(m.total), start, now)],
        ),
        gauge(
            "system.memory.utilization",
            "Fraction of memory in each state.",
            "1",
            utilization,
        ),
    ];
    if m.swap_total > 0 {
        let free = m.swap_free.min(m.swap_total);
        let points = [("used", m.swap_total - free), ("free", free)]
            .iter()
            .map(|(s, v)| int_point(vec![text("system.paging.state", s)], to_i64(*v), start, now))
            .collect();
        out.push(sum(
            "system.paging.usage",
            "Swap usage.",
            "By",
            false,
            points,
        ));
    }
    out
}

pub(super) fn filesystem_metrics(
    fs: &[(Mount, Option<FsUsage>)],
    start: u64,
    now: u64,
) -> Vec<Metric> {
    let mut usage = Vec::new();
    let mut utilization = Vec::new();
    for (m, u) in fs {
        let Some(u) = u else { continue };
        let attrs = || {
            vec![
                text("system.device", &m.device),
                text("system.filesystem.mountpoint", &m.mountpoint),
                text("system.filesystem.type", &m.fstype),
                text(
                    "system.filesystem.mode",
                    if m.read_only { "ro" } else { "rw" },
                ),
            ]
        };
        for (state, v) in [("used", u.used), ("free", u.free), ("reserved", u.reserved)] {
            let mut a = attrs();
            a.push(text("system.filesystem.state", state));
            usage.push(int_point(a, to_i64(v), start, now));
        }
        utilization.push(double_point(attrs(), u.utilization(), 0, now));
    }
    if usage.is_empty() {
        return Vec::new();
    }
    vec![
        sum(
            "system.filesystem.usage",
            "Filesystem space by state.",
            "By",
            false,
            usage,
        ),
        gauge(
            "system.filesystem.utilization",
            "Fraction of filesystem bytes used.",
            "1",
            utilization,
        ),
    ]
}

pub(super) fn disk_metrics(disks: &[DiskStats], start: u64, now: u64) -> Vec<Metric> {
    if disks.is_empty() {
        return Vec::new();
    }
    let points = |f: fn(&DiskStats) -> (u64, u64)| {
        disks
            .iter()
            .flat_map(|d| {
                let (read, write) = f(d);
                [("read", read), ("write", write)].map(|(dir, v)| {
                    int_point(
                        vec![
                            text("system.device", &d.name),
                            text("disk.io.direction", dir),
                        ],
                        to_i64(v),
                        start,
                        now,
                    )
                })
            })
            .collect()
    };
    vec![
        sum(
            "system.disk.io",
            "Disk bytes transferred.",
            "By",
            true,
            points(|d| (d.read_bytes, d.write_bytes)),
        ),
        sum(
            "system.disk.operations",
            "Disk operations count.",
            "{operation}",
            true,
            points(|d| (d.reads, d.writes)),
        ),
    ]
}

pub(super) fn network_metrics(nets: &[NetDev], start: u64, now: u64) -> Vec<Metric> {
    if nets.is_empty() {
        return Vec::new();
    }
    let points = |f: fn(&NetDev) -> (u64, u64)| {
        nets.iter()
            .flat_map(|n| {
                let (rx, tx) = f(n);
                [("receive", rx), ("transmit", tx)].map(|(dir, v)| {
                    int_point(
                        vec![
                            text("network.interface.name", &n.name),
                            text("network.io.direction", dir),
                        ],
                        to_i64(v),
                        start,
                        now,
                    )
                })
            })
            .collect()
    };
    vec![
        sum(
            "system.network.io",
            "Bytes transmitted and received.",
            "By",
            true,
            points(|n| (n.rx_bytes, n.tx_bytes)),
        ),
        sum(
            "system.network.errors",
            "Network errors detected.",
            "{error}",
            true,
            points(|n| (n.rx_errors, n.tx_errors)),
        ),
        sum(
            "system.network.packet.dropped",
            "Packets dropped without an error.",
            "{packet}",
            true,
            points(|n| (n.rx_dropped, n.tx_dropped)),
        ),
    ]
}

/// One filesystem's space, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FsUsage {
    pub used: u64,
    /// Free for unprivileged users.
    pub free: u64,
    /// Free for root only.
    pub reserved: u64,
}

impl FsUsage {
    /// From `statvfs` figures (blocks of `frsize` bytes).
    pub fn from_statvfs(blocks: u64, bfree: u64, bavail: u64, frsize: u64) -> Option<FsUsage> {
        if blocks == 0 {
            return None;
        }
        let bfree = bfree.min(blocks);
        let bavail = bavail.min(bfree);
        Some(FsUsage {
            used: (blocks - bfree).saturating_mul(frsize),
            free: bavail.saturating_mul(frsize),
            reserved: (bfree - bavail).saturating_mul(frsize),
        })
    }

    /// As `df` shows it: used / (used + free to users).
    pub fn utilization(&self) -> f64 {
        let room = self.used.saturating_add(self.free);
        if room == 0 {
            0.0
        } else {
            self.used as f64 / room as f64
        }
    }
}
