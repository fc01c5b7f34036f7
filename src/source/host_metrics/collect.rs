//! The sampling side of host metrics: which `/proc` files a sample reads
//! (through [`crate::procfs`], which knows their formats), what a missing or
//! odd one skips (said once, at debug level), and `statvfs` per filesystem.

use std::collections::HashSet;
use std::time::SystemTime;

use opentelemetry_proto::tonic::metrics::v1::Metric;

use super::build::{
    cpu_metrics, disk_metrics, filesystem_metrics, memory_metrics, network_metrics, FsUsage,
};
use super::points::{double_point, gauge, unix_nanos};
use crate::procfs::{
    parse_diskstats, parse_loadavg, parse_meminfo, parse_mounts, parse_net_dev, parse_stat,
    parse_uptime,
};

/// The `/proc` files read, each named once in the debug log when it cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Source {
    Uptime,
    Stat,
    LoadAvg,
    MemInfo,
    Mounts,
    DiskStats,
    NetDev,
}

impl Source {
    fn file(self) -> &'static str {
        match self {
            Source::Uptime => "uptime",
            Source::Stat => "stat",
            Source::LoadAvg => "loadavg",
            Source::MemInfo => "meminfo",
            Source::Mounts => "self/mounts",
            Source::DiskStats => "diskstats",
            Source::NetDev => "net/dev",
        }
    }

    fn skips(self) -> &'static str {
        match self {
            Source::Uptime => "system.uptime",
            Source::Stat => "system.cpu.time and system.cpu.logical.count",
            Source::LoadAvg => "system.cpu.load_average.*",
            Source::MemInfo => "system.memory.* and system.paging.usage",
            Source::Mounts => "system.filesystem.*",
            Source::DiskStats => "system.disk.*",
            Source::NetDev => "system.network.*",
        }
    }
}

/// Reads `/proc` and turns it into metrics; remembers which files it already
/// complained about.
pub struct Collector {
    root: std::path::PathBuf,
    pub(super) told: HashSet<Source>,
    /// `btime`, once known: the start of every cumulative sum.
    boot_ns: Option<u64>,
    ticks_per_second: f64,
}

impl Collector {
    pub fn new(root: std::path::PathBuf) -> Self {
        let ticks = rustix::param::clock_ticks_per_second();
        Self {
            root,
            told: HashSet::new(),
            boot_ns: None,
            ticks_per_second: if ticks == 0 { 100.0 } else { ticks as f64 },
        }
    }

    fn read(&mut self, source: Source) -> Option<String> {
        let path = self.root.join(source.file());
        match crate::procfs::read(&path) {
            Ok(text) => Some(text),
            Err(e) => {
                self.tell(source, &format!("cannot read {} ({e})", path.display()));
                None
            }
        }
    }

    fn tell(&mut self, source: Source, problem: &str) {
        if self.told.insert(source) {
            tracing::debug!("host metrics: {problem}: {} skipped", source.skips());
        }
    }

    fn odd(&mut self, source: Source) {
        let path = self.root.join(source.file());
        self.tell(
            source,
            &format!("{} is not in the expected format", path.display()),
        );
    }

    /// One sample, taken at `now`.
    pub fn collect(&mut self, now: SystemTime) -> Vec<Metric> {
        let now_ns = unix_nanos(now);
        let mut out = Vec::with_capacity(24);

        let uptime = self.read(Source::Uptime).and_then(|t| {
            let v = parse_uptime(&t);
            if v.is_none() {
                self.odd(Source::Uptime);
            }
            v
        });
        if let Some(up) = uptime {
            out.push(gauge(
                "system.uptime",
                "The time the system has been running.",
                "s",
                vec![double_point(Vec::new(), up, 0, now_ns)],
            ));
        }

        let stat = self.read(Source::Stat).and_then(|t| {
            let v = parse_stat(&t);
            if v.is_none() {
                self.odd(Source::Stat);
            }
            v
        });
        if self.boot_ns.is_none() {
            self.boot_ns = stat
                .as_ref()
                .and_then(|s| s.boot_time)
                .map(|s| s.saturating_mul(1_000_000_000))
                .or_else(|| uptime.map(|u| now_ns.saturating_sub((u * 1e9) as u64)));
        }
        let start = self.boot_ns.unwrap_or(0);
        if let Some(stat) = stat {
            out.extend(cpu_metrics(&stat, self.ticks_per_second, start, now_ns));
        }

        if let Some(text) = self.read(Source::LoadAvg) {
            match parse_loadavg(&text) {
                Some(load) => {
                    for (name, v) in ["1m", "5m", "15m"].iter().zip(load) {
                        out.push(gauge(
                            &format!("system.cpu.load_average.{name}"),
                            &format!("Average CPU load over {name}."),
                            "{thread}",
                            vec![double_point(Vec::new(), v, 0, now_ns)],
                        ));
                    }
                }
                None => self.odd(Source::LoadAvg),
            }
        }

        if let Some(text) = self.read(Source::MemInfo) {
            match parse_meminfo(&text) {
                Some(mem) => out.extend(memory_metrics(&mem, start, now_ns)),
                None => self.odd(Source::MemInfo),
            }
        }

        if let Some(text) = self.read(Source::Mounts) {
            let mounts = parse_mounts(&text);
            let usage = mounts
                .into_iter()
                .filter_map(|m| {
                    let st = rustix::fs::statvfs(m.mountpoint.as_str()).ok()?;
                    Some((
                        m,
                        FsUsage::from_statvfs(st.f_blocks, st.f_bfree, st.f_bavail, st.f_frsize),
                    ))
                })
                .collect::<Vec<_>>();
            out.extend(filesystem_metrics(&usage, start, now_ns));
        }

        if let Some(text) = self.read(Source::DiskStats) {
            let disks = parse_diskstats(&text);
            if disks.is_empty() && !text.trim().is_empty() {
                self.odd(Source::DiskStats);
            }
            out.extend(disk_metrics(&disks, start, now_ns));
        }

        if let Some(text) = self.read(Source::NetDev) {
            match parse_net_dev(&text) {
                Some(nets) => out.extend(network_metrics(&nets, start, now_ns)),
                None => self.odd(Source::NetDev),
            }
        }
        out
    }
}
