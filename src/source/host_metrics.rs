//! Host metrics (`[host_metrics]`): every `interval` the VM's CPU, memory,
//! filesystem, disk and network figures, read from `/proc` by hand, go as one
//! OTLP `ExportMetricsServiceRequest` into the OTLP relay's spool
//! ([`Intake::store`]), so the exporter ships them to the host's collector with
//! retries, and nothing is lost while the host is away.
//!
//! Runs only with the relay (`[otlp] enabled = true`). One tokio task, no thread
//! of its own; the first sample is taken at start, then one per `interval`.
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
//! never the sample. The parsers are pure functions of the file's text.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::record::otlp_text as text;
use crate::record::{OtlpPayload, OtlpSignal};
use crate::relay::Intake;
use crate::relay::OtlpRelay;

/// The instrumentation scope of what this module sends.
const SCOPE: &str = "wisp-agent/host_metrics";

/// What the task needs besides the intake.
#[derive(Clone, Debug)]
pub struct HostMetricsSettings {
    pub interval: Duration,
    /// `service.name`, `host.name`, `os.type` and `otlp.resource_attributes`.
    pub resource: Resource,
    /// Where `/proc` is (a test may point it elsewhere).
    pub proc_root: std::path::PathBuf,
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
        }
    }
}

/// The shortest interval the task keeps.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

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

fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        _ => 0,
    }
}

/// One export request: the resource, the scope, the metrics.
pub fn request(resource: &Resource, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The `/proc` files read, each named once in the debug log when it cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
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
    told: HashSet<Source>,
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
        match std::fs::read_to_string(&path) {
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

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---- parsers: pure functions of a /proc file's text ----

/// The `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    /// All CPUs together.
    pub total: CpuTimes,
    /// The `cpuN` lines.
    pub logical_cpus: u32,
    /// `btime`: boot, in seconds since the epoch.
    pub boot_time: Option<u64>,
}

/// `/proc/stat`; `None` without a well-formed `cpu` line.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let mut total = None;
    let mut logical_cpus = 0;
    let mut boot_time = None;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => {
                let v: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
                // user nice system idle: every kernel; the rest since 2.6.11.
                if v.len() < 4 {
                    return None;
                }
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                total = Some(CpuTimes {
                    user: at(0),
                    nice: at(1),
                    system: at(2),
                    idle: at(3),
                    iowait: at(4),
                    irq: at(5),
                    softirq: at(6),
                    steal: at(7),
                });
            }
            Some(name) if name.starts_with("cpu") && name[3..].parse::<u32>().is_ok() => {
                logical_cpus += 1;
            }
            Some("btime") => boot_time = fields.next().and_then(|f| f.parse().ok()),
            _ => {}
        }
    }
    Some(Stat {
        total: total?,
        logical_cpus,
        boot_time,
    })
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_ascii_whitespace().map(|f| f.parse::<f64>().ok());
    let load = [f.next()??, f.next()??, f.next()??];
    load.iter()
        .all(|v| v.is_finite() && *v >= 0.0)
        .then_some(load)
}

/// `/proc/uptime`: seconds since boot.
pub fn parse_uptime(text: &str) -> Option<f64> {
    let up: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (up.is_finite() && up >= 0.0).then_some(up)
}

/// `/proc/meminfo`, in bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    /// Absent before Linux 3.14.
    pub available: Option<u64>,
    pub buffers: u64,
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// `None` without `MemTotal` (or with a zero one).
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut m = MemInfo::default();
    let mut total = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        let Some(Ok(n)) = f.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match f.next() {
            Some("kB") => n.saturating_mul(1024),
            None => n,
            Some(_) => continue,
        };
        match key {
            "MemTotal" => total = Some(bytes),
            "MemFree" => m.free = bytes,
            "MemAvailable" => m.available = Some(bytes),
            "Buffers" => m.buffers = bytes,
            "Cached" => m.cached = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    m.total = total.filter(|t| *t > 0)?;
    Some(m)
}

/// A filesystem worth reporting, from `/proc/self/mounts`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub read_only: bool,
}

/// Kernel filesystems that hold no user data, memory-backed ones, overlays,
/// read-only images and network filesystems: not reported.
const SKIPPED_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "cgroup",
    "cgroup2",
    "overlay",
    "aufs",
    "squashfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "rpc_pipefs",
    "efivarfs",
    "selinuxfs",
    "nfs",
    "nfs4",
    "nfsd",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "virtiofs",
    "ceph",
    "glusterfs",
    "iso9660",
    "udf",
    "shiftfs",
    "zonefs",
];

/// Local filesystems whose device is not a `/dev` path.
const LOCAL_FS: &[&str] = &["zfs", "btrfs", "bcachefs"];

/// `/proc/self/mounts` → the real, local filesystems, each device once (the
/// first mount of it: bind mounts and subvolumes report the same figures).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(device), Some(mountpoint), Some(fstype), Some(options)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if SKIPPED_FS.contains(&fstype) || fstype.starts_with("fuse") {
            continue;
        }
        if !(device.starts_with("/dev/") || LOCAL_FS.contains(&fstype)) {
            continue;
        }
        if !seen.insert(device.to_string()) {
            continue;
        }
        out.push(Mount {
            device: unescape_mount(device),
            mountpoint: unescape_mount(mountpoint),
            fstype: fstype.to_string(),
            read_only: options.split(',').any(|o| o == "ro"),
        });
    }
    out
}

/// Undoes the kernel's octal escapes in `/proc/self/mounts` (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let oct = b
                .get(i + 1..i + 4)
                .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
            if let Some(o) = oct {
                let v = u32::from(o[0] - b'0') * 64
                    + u32::from(o[1] - b'0') * 8
                    + u32::from(o[2] - b'0');
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// One device's counters from `/proc/diskstats`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskStats {
    pub name: String,
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
}

/// `/proc/diskstats` → devices that did any I/O, without loop, RAM and optical
/// devices. Sectors here are always 512 bytes.
pub fn parse_diskstats(text: &str) -> Vec<DiskStats> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let name = f[2];
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(reads), Some(read_sectors), Some(writes), Some(write_sectors)) =
            (n(3), n(5), n(7), n(9))
        else {
            continue;
        };
        if ["loop", "ram", "zram", "sr", "fd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        if reads == 0 && writes == 0 {
            continue;
        }
        out.push(DiskStats {
            name: name.to_string(),
            reads,
            read_bytes: read_sectors.saturating_mul(512),
            writes,
            write_bytes: write_sectors.saturating_mul(512),
        });
    }
    out
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// `/proc/net/dev` → interfaces but `lo` that moved any bytes; `None` when the
/// header is not the known one.
pub fn parse_net_dev(text: &str) -> Option<Vec<NetDev>> {
    let mut lines = text.lines();
    let header = lines.nth(1)?;
    if !header.contains("|bytes") {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let v: Vec<u64> = rest
            .split_ascii_whitespace()
            .map_while(|f| f.parse().ok())
            .collect();
        if v.len() < 16 || name == "lo" {
            continue;
        }
        if v[0] == 0 && v[8] == 0 {
            continue;
        }
        out.push(NetDev {
            name: name.to_string(),
            rx_bytes: v[0],
            rx_errors: v[2],
            rx_dropped: v[3],
            tx_bytes: v[8],
            tx_errors: v[10],
            tx_dropped: v[11],
        });
    }
    Some(out)
}

// ---- metrics from parsed figures ----

fn cpu_metrics(stat: &Stat, ticks_per_second: f64, start: u64, now: u64) -> Vec<Metric> {
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

fn memory_metrics(m: &MemInfo, start: u64, now: u64) -> Vec<Metric> {
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

fn filesystem_metrics(fs: &[(Mount, Option<FsUsage>)], start: u64, now: u64) -> Vec<Metric> {
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

fn disk_metrics(disks: &[DiskStats], start: u64, now: u64) -> Vec<Metric> {
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

fn network_metrics(nets: &[NetDev], start: u64, now: u64) -> Vec<Metric> {
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

// ---- OTLP building blocks ----

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn int_point(attributes: Vec<KeyValue>, v: i64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

fn double_point(attributes: Vec<KeyValue>, v: f64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn sum(
    name: &str,
    description: &str,
    unit: &str,
    monotonic: bool,
    data_points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, description: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge { data_points })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;

    // Captured from a 2-CPU VM (Linux 6.x); see tests/fixtures/proc/.
    const STAT: &str = include_str!("../../tests/fixtures/proc/stat");
    const LOADAVG: &str = include_str!("../../tests/fixtures/proc/loadavg");
    const MEMINFO: &str = include_str!("../../tests/fixtures/proc/meminfo");
    const UPTIME: &str = include_str!("../../tests/fixtures/proc/uptime");
    const DISKSTATS: &str = include_str!("../../tests/fixtures/proc/diskstats");
    const NET_DEV: &str = include_str!("../../tests/fixtures/proc/net_dev");
    const MOUNTS: &str = include_str!("../../tests/fixtures/proc/mounts");

    #[test]
    fn stat_gives_the_total_cpu_times_the_cpu_count_and_boot() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s.total,
            CpuTimes {
                user: 313235,
                nice: 25583,
                system: 59160,
                idle: 169683,
                iowait: 2232,
                irq: 0,
                softirq: 447,
                steal: 143,
            }
        );
        assert_eq!(s.logical_cpus, 2);
        assert_eq!(s.boot_time, Some(1795945397));
    }

    #[test]
    fn an_old_or_odd_stat_is_read_as_far_as_it_goes() {
        // Before 2.6.11: four columns only.
        let s = parse_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(s.total.idle, 4);
        assert_eq!(s.total.steal, 0);
        assert_eq!(s.boot_time, None);
        for odd in [
            "",
            "cpu\n",
            "cpu 1 2 x 4\n",
            "intr 1 2\nbtime 5\n",
            "cpu 1 2 3\n",
        ] {
            assert_eq!(parse_stat(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(parse_loadavg(LOADAVG), Some([1.55, 1.73, 2.44]));
        assert_eq!(parse_uptime(UPTIME), Some(2865.22));
        for odd in ["", "1.0 2.0", "a b c", "-1 0 0", "NaN 1 1"] {
            assert_eq!(parse_loadavg(odd), None, "{odd:?}");
        }
        for odd in ["", "x", "-5 1", "inf"] {
            assert_eq!(parse_uptime(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 24684092 * 1024);
        assert_eq!(m.free, 5974192 * 1024);
        assert_eq!(m.available, Some(23835116 * 1024));
        assert_eq!(m.buffers, 57920 * 1024);
        assert_eq!(m.cached, 17555920 * 1024);
        assert_eq!(m.swap_total, 0);
        assert_eq!(parse_meminfo("MemFree: 10 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 0 kB\n"), None);
        assert_eq!(parse_meminfo("garbage\n\n:::\nMemTotal: x kB\n"), None);
    }

    fn value(p: &NumberDataPoint) -> f64 {
        match p.value {
            Some(number_data_point::Value::AsInt(v)) => v as f64,
            Some(number_data_point::Value::AsDouble(v)) => v,
            None => f64::NAN,
        }
    }

    fn attr<'a>(p: &'a NumberDataPoint, key: &str) -> &'a str {
        p.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match &kv.value.as_ref()?.value {
                Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or("")
    }

    fn points(m: &Metric) -> &[NumberDataPoint] {
        match &m.data {
            Some(metric::Data::Sum(s)) => &s.data_points,
            Some(metric::Data::Gauge(g)) => &g.data_points,
            _ => &[],
        }
    }

    #[test]
    fn used_memory_is_total_minus_available_and_falls_back_without_it() {
        let m = parse_meminfo(MEMINFO).unwrap();
        let metrics = memory_metrics(&m, 1, 2);
        let usage = &metrics[0];
        assert_eq!(usage.name, "system.memory.usage");
        let used = points(usage)
            .iter()
            .find(|p| attr(p, "system.memory.state") == "used")
            .unwrap();
        assert_eq!(value(used), ((24684092 - 23835116) * 1024) as f64);
        assert_eq!(used.start_time_unix_nano, 1);
        assert_eq!(used.time_unix_nano, 2);
        // No swap: no paging metric.
        assert!(metrics.iter().all(|m| m.name != "system.paging.usage"));

        let old = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n",
        )
        .unwrap();
        let metrics = memory_metrics(&old, 0, 0);
        let used = points(&metrics[0])
            .iter()
            .find(|p| attr(p, "system.memory.state") == "used")
            .map(value);
        assert_eq!(used, Some(600.0 * 1024.0));
        let paging = metrics
            .iter()
            .find(|m| m.name == "system.paging.usage")
            .unwrap();
        let swap_used = points(paging)
            .iter()
            .find(|p| attr(p, "system.paging.state") == "used")
            .map(value);
        assert_eq!(swap_used, Some(6.0 * 1024.0));
    }

    #[test]
    fn mounts_keep_real_local_filesystems_once() {
        let m = parse_mounts(MOUNTS);
        assert_eq!(
            m,
            vec![Mount {
                device: "/dev/vda".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                read_only: false,
            }]
        );
        let text = "/dev/sda1 /mnt/my\\040disk ext4 ro,relatime 0 0\n\
                    rpool/home /home zfs rw 0 0\n\
                    overlay /var/lib/docker/x overlay rw 0 0\n\
                    host:/export /nfs nfs4 rw 0 0\n\
                    /dev/loop3 /snap/core/1 squashfs ro 0 0\n\
                    /dev/fuse /f fuse.sshfs rw 0 0\n\
                    short line\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].mountpoint, "/mnt/my disk");
        assert!(m[0].read_only);
        assert_eq!(m[1].fstype, "zfs");
        assert_eq!(unescape_mount("a\\134b\\"), "a\\b\\");
        assert_eq!(unescape_mount("a\\999b\\77"), "a\\999b\\77");
    }

    #[test]
    fn filesystem_usage_from_statvfs() {
        // 100 blocks of 4 KiB, 30 free of which 20 for users.
        let u = FsUsage::from_statvfs(100, 30, 20, 4096).unwrap();
        assert_eq!(u.used, 70 * 4096);
        assert_eq!(u.free, 20 * 4096);
        assert_eq!(u.reserved, 10 * 4096);
        assert!((u.utilization() - 70.0 / 90.0).abs() < 1e-9);
        assert_eq!(FsUsage::from_statvfs(0, 0, 0, 4096), None);
        // Inconsistent figures are clamped, not underflowed.
        let u = FsUsage::from_statvfs(10, 50, 60, 1).unwrap();
        assert_eq!((u.used, u.free, u.reserved), (0, 10, 0));
    }

    #[test]
    fn diskstats_skip_idle_loop_and_ram_devices() {
        let d = parse_diskstats(DISKSTATS);
        assert_eq!(
            d,
            vec![DiskStats {
                name: "vda".into(),
                reads: 517689,
                read_bytes: 22744778 * 512,
                writes: 187457,
                write_bytes: 109171136 * 512,
            }]
        );
        assert!(parse_diskstats("8 0 sda x y\n\n 8 1 sda1 1 2 3\n").is_empty());
    }

    #[test]
    fn net_dev_skips_lo_and_idle_interfaces() {
        let n = parse_net_dev(NET_DEV).unwrap();
        assert_eq!(
            n,
            vec![NetDev {
                name: "eth0".into(),
                rx_bytes: 70244141,
                tx_bytes: 194007,
                ..Default::default()
            }]
        );
        assert_eq!(parse_net_dev(""), None);
        assert_eq!(parse_net_dev("a\nb\neth0: 1 2 3\n"), None);
    }

    #[test]
    fn cpu_time_is_in_seconds_per_mode_from_boot() {
        let s = parse_stat(STAT).unwrap();
        let metrics = cpu_metrics(&s, 100.0, 7, 9);
        let cpu = &metrics[0];
        assert_eq!(
            (cpu.name.as_str(), cpu.unit.as_str()),
            ("system.cpu.time", "s")
        );
        let Some(metric::Data::Sum(sum)) = &cpu.data else {
            panic!("a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let modes: Vec<(&str, f64)> = sum
            .data_points
            .iter()
            .map(|p| (attr(p, "cpu.mode"), value(p)))
            .collect();
        assert_eq!(
            modes,
            vec![
                ("user", 3132.35),
                ("nice", 255.83),
                ("system", 591.6),
                ("idle", 1696.83),
                ("iowait", 22.32),
                ("interrupt", 4.47),
                ("steal", 1.43),
            ]
        );
        assert!(sum.data_points.iter().all(|p| p.start_time_unix_nano == 7));
        assert_eq!(metrics[1].name, "system.cpu.logical.count");
    }

    fn fake_proc(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn names(metrics: &[Metric]) -> Vec<&str> {
        metrics.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn a_sample_from_a_whole_proc_names_every_metric() {
        let dir = fake_proc(&[
            ("stat", STAT),
            ("loadavg", LOADAVG),
            ("meminfo", MEMINFO),
            ("uptime", UPTIME),
            ("diskstats", DISKSTATS),
            ("net/dev", NET_DEV),
            // `/` exists everywhere, whatever its device.
            ("self/mounts", "/dev/vda / ext4 rw 0 0\n"),
        ]);
        let mut c = Collector::new(dir.path().to_path_buf());
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let metrics = c.collect(now);
        assert_eq!(
            names(&metrics),
            vec![
                "system.uptime",
                "system.cpu.time",
                "system.cpu.logical.count",
                "system.cpu.load_average.1m",
                "system.cpu.load_average.5m",
                "system.cpu.load_average.15m",
                "system.memory.usage",
                "system.memory.limit",
                "system.memory.utilization",
                "system.filesystem.usage",
                "system.filesystem.utilization",
                "system.disk.io",
                "system.disk.operations",
                "system.network.io",
                "system.network.errors",
                "system.network.packet.dropped",
            ]
        );
        for m in &metrics {
            for p in points(m) {
                assert_eq!(p.time_unix_nano, 1_800_000_000_000_000_000, "{}", m.name);
                if matches!(m.data, Some(metric::Data::Sum(_))) {
                    assert_eq!(
                        p.start_time_unix_nano, 1_795_945_397_000_000_000,
                        "{}",
                        m.name
                    );
                }
            }
        }
        let request = request(&Resource::default(), metrics);
        let bytes = request.encode_to_vec();
        assert_eq!(
            ExportMetricsServiceRequest::decode(&bytes[..]).unwrap(),
            request
        );
    }

    #[test]
    fn missing_or_odd_files_skip_their_metrics_only() {
        let dir = fake_proc(&[
            ("stat", "nonsense\n"),
            ("loadavg", "x y z\n"),
            ("meminfo", MEMINFO),
            ("net/dev", "\u{0}\u{1}garbage"),
            ("diskstats", "1 2 3\n"),
        ]);
        let mut c = Collector::new(dir.path().to_path_buf());
        let metrics = c.collect(SystemTime::now());
        assert_eq!(
            names(&metrics),
            vec![
                "system.memory.usage",
                "system.memory.limit",
                "system.memory.utilization"
            ]
        );
        // Each problem is told once.
        assert_eq!(c.told.len(), 6, "{:?}", c.told);
        let again = c.collect(SystemTime::now());
        assert_eq!(again.len(), 3);
        let empty = tempfile::tempdir().unwrap();
        assert!(Collector::new(empty.path().to_path_buf())
            .collect(SystemTime::now())
            .is_empty());
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_a_parser_panic(text in "\\PC*(\n\\PC*){0,4}") {
            let _ = parse_stat(&text);
            let _ = parse_loadavg(&text);
            let _ = parse_uptime(&text);
            let _ = parse_meminfo(&text);
            let _ = parse_mounts(&text);
            let _ = parse_diskstats(&text);
            let _ = parse_net_dev(&text);
            let _ = unescape_mount(&text);
        }
    }
}
