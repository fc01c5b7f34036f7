//! The agent's own process figures from `/proc/self/{status,stat,limits}`,
//! `/proc/stat` and `/proc/self/fd`: what the admin endpoint serves as the
//! standard `process_*` families.

use super::{boot_time, Proc};
use crate::metric::{counter, encode, gauge, maybe, names, single, Family, Registry};

/// `USER_HZ`, the unit of the CPU times in `/proc/<pid>/stat`: 100 on every
/// architecture the agent runs on (the kernel fixes it for user space; the
/// Prometheus Go client's procfs assumes the same).
const USER_HZ: f64 = 100.0;

/// One reading of the agent's process figures; each `None` when its file
/// could not be read or is not in the expected format.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    /// `VmRSS` of `/proc/self/status`.
    pub resident_memory_bytes: Option<u64>,
    /// `VmSize` of `/proc/self/status`.
    pub virtual_memory_bytes: Option<u64>,
    /// User and system time of `/proc/self/stat`.
    pub cpu_seconds: Option<f64>,
    /// Since the Unix epoch: `btime` of `/proc/stat` plus the start time of
    /// `/proc/self/stat`.
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    /// The soft limit of `/proc/self/limits`.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// The process's own figures, as the Prometheus clients name them.
    pub const FAMILIES: &'static [Family<ProcessStats>] = &[
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            |p| maybe(p.resident_memory_bytes),
        ),
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            |p| maybe(p.virtual_memory_bytes),
        ),
        counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            |p| maybe(p.cpu_seconds),
        ),
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            |p| maybe(p.start_time_seconds),
        ),
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            |p| maybe(p.open_fds),
        ),
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
            |p| maybe(p.max_fds),
        ),
    ];

    /// Registers the process families, read from `proc` at each reading
    /// (each left out while its file cannot be read).
    pub fn register(metrics: &mut Registry, proc: Box<dyn Proc>) {
        metrics.add("process", names(Self::FAMILIES), move |out| {
            encode(out, Self::FAMILIES, &single(&Self::read(proc.as_ref())))
        });
    }

    /// Reads each file once, in the order the families are served.
    pub fn read(proc: &dyn Proc) -> ProcessStats {
        let mut p = ProcessStats::default();
        if let Some(status) = proc.read("/proc/self/status") {
            p.resident_memory_bytes =
                status_kib(&status, "VmRSS:").map(|kb| kb.saturating_mul(1024));
            p.virtual_memory_bytes =
                status_kib(&status, "VmSize:").map(|kb| kb.saturating_mul(1024));
        }
        if let Some(t) = proc.read("/proc/self/stat").and_then(|s| stat_times(&s)) {
            p.cpu_seconds = Some(t.utime.saturating_add(t.stime) as f64 / USER_HZ);
            p.start_time_seconds = proc
                .read("/proc/stat")
                .and_then(|s| boot_time(&s))
                .map(|boot| boot as f64 + t.starttime as f64 / USER_HZ);
        }
        p.open_fds = proc.open_fds();
        p.max_fds = proc
            .read("/proc/self/limits")
            .and_then(|l| max_open_files(&l));
        p
    }
}

/// A `Key:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

struct StatTimes {
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// utime, stime and starttime (fields 14, 15 and 22) of `/proc/self/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted
/// from its closing parenthesis, the last one of the line.
fn stat_times(stat: &str) -> Option<StatTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatTimes {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The soft limit on open files from `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_odd_self_stat_gives_no_times() {
        assert!(stat_times("garbage").is_none());
        assert!(stat_times("1 (x) S 1 2").is_none());
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_a_process_parser_panic(text in "\\PC*(\n\\PC*){0,4}") {
            let _ = status_kib(&text, "VmRSS:");
            let _ = stat_times(&text);
            let _ = boot_time(&text);
            let _ = max_open_files(&text);
        }
    }
}
