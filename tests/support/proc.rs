//! What a running agent costs, read from `/proc`: memory, CPU time, and the
//! inotify watches it holds (the kernel's own count, not the agent's word).

use std::time::Duration;

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

/// Resident memory now.
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// The most resident memory the process ever had.
pub fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// User and system CPU time the process has used.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // `pid (comm) state ppid …`: utime and stime are fields 14 and 15, the
    // 12th and 13th after the `)`.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f[11] + f[12];
    let per_sec = rustix::param::clock_ticks_per_second();
    Duration::from_nanos(ticks * 1_000_000_000 / per_sec)
}

/// inotify watches the process holds: the `inotify wd:` lines of the fdinfo
/// of each of its inotify descriptors.
pub fn inotify_watches(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify")
        })
        .filter_map(|fd| {
            std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()
        })
        .map(|info| {
            info.lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count()
        })
        .sum()
}

/// Bytes process `pid` caused to be written to storage (`write_bytes` of
/// `/proc/PID/io`).
pub fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// How many times the process's threads have been switched out so far (each
/// went to sleep or was preempted): the sum over `/proc/PID/task/*/status` of
/// `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches`. About one per
/// wakeup; threads that ended are not counted.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    let v = l
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))?;
                    v.trim().parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The ids of the process's threads now (`/proc/PID/task`): a thread started
/// since an earlier call shows as an id that call did not see.
pub fn thread_ids(pid: u32) -> std::collections::BTreeSet<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}
