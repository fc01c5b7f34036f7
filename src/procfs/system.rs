//! The system-wide `/proc` files host metrics read: `stat`, `loadavg`,
//! `uptime`, `meminfo`, `self/mounts`, `diskstats` and `net/dev`. Each parser
//! is a pure function of the file's text: `None` (or nothing) for a file not in
//! the expected format, never a panic.
//!
//! What a parser returns is what the agent reports: the mounts, disks and
//! interfaces host metrics leave out (pseudo and network filesystems, loop
//! devices, `lo`, idle devices) are left out here, so no caller sees them.

use std::collections::HashSet;

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

/// The `btime` line of `/proc/stat` alone: boot time, seconds since the Unix
/// epoch. Unlike [`parse_stat`] it needs no well-formed `cpu` line: the admin
/// endpoint's `process_start_time_seconds` wants only this.
pub fn boot_time(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

#[cfg(test)]
mod tests;
