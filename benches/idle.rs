//! Idle footprint benchmark: the release agent as it runs in a VM most of the
//! time. It tails 10 files (20 lines each written at start, then nothing),
//! ships to the fake Loki in this process, relays OTLP (both receivers, gRPC and
//! HTTP, listening; host and agent metrics exported every 15 s to a fake
//! collector here), takes `exec` runs on its socket and serves the admin
//! endpoint: everything the defaults turn on.
//!
//! Once the lines have arrived and the agent has been quiet for 5 s, it prints
//! the resident memory from /proc/PID/smaps_rollup (anonymous against
//! file-backed, and the file-backed pages per file: the agent's code, read-only
//! data and relocated data, libc), the threads, then the CPU the agent used over
//! an idle window (30 s) and which threads used it.
//!
//! `cargo bench --bench idle`. `WISP_BENCH_AGENT=a,b` measures these agent
//! binaries instead of the one cargo built (to compare release profiles);
//! `WISP_BENCH_RUNS=N` runs N rounds, the binaries alternated in each, and
//! prints the median per binary; `WISP_BENCH_IDLE_SECS` sets the CPU window;
//! `WISP_BENCH_SMAPS=1` lists every mapping holding 64 KiB or more;
//! `WISP_BENCH_PARTS=1` also runs the first binary with one part turned off at a
//! time (OTLP relay, host and agent metrics, admin endpoint; 1 file instead
//! of 10) and prints what each part holds, by difference.
//!
//! For each binary it also prints how many of the functions listed in
//! `packaging/code-order.txt` it has (by `nm`, when binutils is there): the
//! list names a release build's functions by rustc and Cargo.lock, and a list
//! that matches little leaves the code that runs scattered over the binary,
//! about 3.5 MiB more resident (docs/decisions/041-code-in-the-order-it-runs.md).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 10;
const LINES_PER_FILE: usize = 20;

/// What runs besides the tailer and the Loki sink.
#[derive(Clone, Copy, Debug)]
struct Parts {
    otlp: bool,
    host_metrics: bool,
    admin: bool,
    files: usize,
}

impl Parts {
    const ALL: Parts = Parts {
        otlp: true,
        host_metrics: true,
        admin: true,
        files: FILES,
    };
}

/// One idle measurement.
#[derive(Clone, Debug, Default)]
struct Idle {
    rss_kib: u64,
    anon_kib: u64,
    /// File-backed resident KiB per mapped file (the agent's own binary split by
    /// permissions: `r-xp` code, `r--p` read-only data, `rw-p` relocated data).
    files: BTreeMap<String, u64>,
    threads: Vec<String>,
    cpu_percent: f64,
    /// Context switches per second over the window: how often it wakes.
    wakeups_per_s: f64,
    /// Per thread that woke over the window: µs of CPU used, wakeups.
    busy_threads: Vec<(String, u64, u64)>,
}

impl Idle {
    fn file_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.anon_kib)
    }
    fn binary_kib(&self) -> u64 {
        self.files
            .iter()
            .filter(|(k, _)| k.starts_with("agent "))
            .map(|(_, v)| v)
            .sum()
    }
}

fn rollup_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime in ticks from a /proc/.../stat file.
fn stat_ticks(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Per thread: name, CPU time in ns (schedstat: finer than the 10 ms ticks of
/// /proc/.../stat, which an idle agent uses a few of), context switches.
fn threads(pid: u32) -> BTreeMap<String, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(
            t.file_name().to_string_lossy().into_owned(),
            (comm.trim().to_string(), ns, switches),
        );
    }
    out
}

/// File-backed resident KiB per mapped file, the agent binary split by
/// permissions; with `list`, every mapping of 64 KiB or more is printed.
fn mappings(pid: u32, bin: &Path, list: bool) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return out;
    };
    let bin = bin.canonicalize().unwrap_or_else(|_| bin.to_path_buf());
    let (mut perms, mut path, mut size) = (String::new(), String::new(), 0u64);
    let mut rss = 0u64;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        let kib = || -> u64 {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if first.contains('-') && !first.ends_with(':') {
            perms = words.next().unwrap_or("").to_string();
            path = words.nth(3).unwrap_or("").to_string();
        } else if first == "Size:" {
            size = kib();
        } else if first == "Rss:" {
            rss = kib();
        } else if first == "Anonymous:" {
            let anon = kib();
            if list && rss >= 64 {
                let shown = if path.is_empty() {
                    "[anonymous]"
                } else {
                    &path
                };
                eprintln!("  smaps: {rss:>6} KiB of {size:>6} KiB ({anon:>6} KiB anonymous) {perms} {shown}");
            }
            let is_bin = Path::new(&path) == bin;
            if is_bin && anon > 0 {
                // Pages the loader wrote relocations into: copies, anonymous.
                *out.entry("relocated".to_string()).or_default() += anon;
            }
            let file = rss.saturating_sub(anon);
            if file == 0 || path.is_empty() || path.starts_with('[') {
                continue;
            }
            let key = if is_bin {
                format!("agent {perms}")
            } else {
                Path::new(&path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.clone())
            };
            *out.entry(key).or_default() += file;
        }
    }
    out
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn measure(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    parts: Parts,
    window: Duration,
    list: bool,
) -> Option<Idle> {
    let loki = rt.block_on(support::loki::LokiReceiver::start());
    loki.set_count_only(true);
    let collector = rt.block_on(support::otlp::OtlpReceiver::start());
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    for f in 0..parts.files {
        let mut w = std::fs::File::create(logs.join(format!("app-{f}.log"))).unwrap();
        for i in 0..LINES_PER_FILE {
            writeln!(
                w,
                r#"{{"level":30,"time":{now_ms},"pid":4242,"hostname":"vm","reqId":"req-{f}-{i}","msg":"request completed","res":{{"statusCode":200}},"responseTime":12}}"#,
            )
            .unwrap();
        }
    }
    let admin = parts.admin.then(free_port);
    let otlp = if parts.otlp {
        format!(
            "[otlp]\nendpoint = \"{}\"\n[receiver]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[host_metrics]\nenabled = {}\nagent_metrics = {}",
            collector.grpc_endpoint(),
            parts.host_metrics,
            parts.host_metrics
        )
    } else {
        "[otlp]\nenabled = false\n[receiver]\ngrpc = \"\"\nhttp = \"\"".into()
    };
    // The exec socket is always on; in the temporary directory, not to meet
    // a daemon of this machine.
    let exec_socket = dir.path().join("exec.sock").display().to_string();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
state_dir = "{state}"
hostname = "bench"
[host]
address = "127.0.0.1"
[loki]
url = "http://{{host}}:{port}/loki/api/v1/push"
{otlp}
[admin]
listen = "{admin}"
[exec]
socket = "{exec_socket}"
[[files]]
name = "app"
paths = ["{logs}/*.log"]
start_at = "beginning"
multiline = "none"
"#,
            state = dir.path().join("state").display(),
            port = loki.addr().port(),
            logs = logs.display(),
            admin = admin.map(|a| a.to_string()).unwrap_or_default(),
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&config)
        .env_remove("WISP_HOST")
        .env_remove("LOKI_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let want = parts.files * LINES_PER_FILE;
    let arrived = rt.block_on(loki.wait_for_stored(want, Duration::from_secs(60)));
    let answered = admin.is_none_or(|a| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if http_get(a, "/metrics").is_some() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let result = (arrived && answered).then(|| {
        // Quiet: buffers handed back (1 s), jemalloc's decay (1 s).
        std::thread::sleep(Duration::from_secs(5));
        let before = threads(pid);
        let ticks0 = stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0);
        let started = Instant::now();
        std::thread::sleep(window);
        let secs = started.elapsed().as_secs_f64();
        let ticks1 = stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0);
        let after = threads(pid);
        let mut switches = 0u64;
        let mut ns = 0u64;
        let mut busy = Vec::new();
        for (tid, (name, t1, s1)) in &after {
            let (t0, s0) = before.get(tid).map(|(_, t, s)| (*t, *s)).unwrap_or((0, 0));
            let woke = s1.saturating_sub(s0);
            ns += t1.saturating_sub(t0);
            switches += woke;
            if woke > 0 {
                busy.push((name.clone(), t1.saturating_sub(t0) / 1000, woke));
            }
        }
        let rss_kib = rollup_kib(pid, "Rss:").unwrap_or(0);
        let anon_kib = rollup_kib(pid, "Anonymous:").unwrap_or(0);
        if list {
            eprintln!(
                "  threads: {:?}",
                after.values().map(|v| &v.0).collect::<Vec<_>>()
            );
        }
        Idle {
            rss_kib,
            anon_kib,
            files: mappings(pid, bin, list),
            threads: after.into_values().map(|v| v.0).collect(),
            // A thread that ended in the window took its schedstat along; the
            // process's ticks still count it.
            cpu_percent: (ns as f64 / 1e9).max(ticks1.saturating_sub(ticks0) as f64 / 100.0) / secs
                * 100.0,
            wakeups_per_s: switches as f64 / secs,
            busy_threads: busy,
        }
    });
    if !arrived {
        eprintln!(
            "idle: only {} of {want} lines reached the fake Loki within 60 s",
            loki.stored_count()
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    result
}

/// How many of the functions `packaging/code-order.txt` lists `bin` has, of
/// how many; `None` without `nm` or the list.
fn code_order_found(bin: &Path) -> Option<(usize, usize)> {
    let list = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/code-order.txt"
    ))
    .ok()?;
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(bin)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let defined: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let listed: Vec<&str> = list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    Some((
        listed.iter().filter(|n| defined.contains(*n)).count(),
        listed.len(),
    ))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print(label: &str, m: &Idle) {
    let others: u64 = m
        .files
        .iter()
        .filter(|(k, _)| !k.starts_with("agent ") && !k.starts_with("libc") && *k != "relocated")
        .map(|(_, v)| v)
        .sum();
    let libc: u64 = m
        .files
        .iter()
        .filter(|(k, _)| k.starts_with("libc"))
        .map(|(_, v)| v)
        .sum();
    let seg = |p: &str| m.files.get(&format!("agent {p}")).copied().unwrap_or(0);
    println!(
        "idle: {label}: RSS {:.2} MiB = {:.2} anonymous (relocated data of the binary {:.2}) + {:.2} file-backed (binary {:.2}: code {:.2}, read-only {:.2}, data {:.2}; libc {:.2}; other {:.2}); {} threads; CPU {:.3} % ({:.1} wakeups/s){}",
        mib(m.rss_kib),
        mib(m.anon_kib),
        mib(m.files.get("relocated").copied().unwrap_or(0)),
        mib(m.file_kib()),
        mib(m.binary_kib()),
        mib(seg("r-xp")),
        mib(seg("r--p")),
        mib(seg("rw-p")),
        mib(libc),
        mib(others),
        m.threads.len(),
        m.cpu_percent,
        m.wakeups_per_s,
        if m.busy_threads.is_empty() {
            String::new()
        } else {
            format!(
                "; per thread (CPU µs/wakeups): {}",
                m.busy_threads
                    .iter()
                    .map(|(n, t, w)| format!("{n} {t}/{w}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let bins: Vec<PathBuf> = match std::env::var("WISP_BENCH_AGENT") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => vec![PathBuf::from(env!("CARGO_BIN_EXE_wisp-agent"))],
    };
    let runs: usize = std::env::var("WISP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 50);
    let window = Duration::from_secs(
        std::env::var("WISP_BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let list = std::env::var_os("WISP_BENCH_SMAPS").is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "idle: {FILES} files tailed, Loki sink, OTLP gRPC and HTTP receivers, host metrics, exec socket and admin endpoint on; CPU over {} s",
        window.as_secs()
    );
    for bin in &bins {
        if let Some((found, listed)) = code_order_found(bin) {
            println!(
                "idle: {}: {found} of the {listed} functions of packaging/code-order.txt (it names those of the release build and of the bench's: about 2,650 in either)",
                bin.display()
            );
        }
    }
    let mut all: Vec<Vec<Idle>> = vec![Vec::new(); bins.len()];
    for round in 0..runs {
        for (i, bin) in bins.iter().enumerate() {
            match measure(&rt, bin, Parts::ALL, window, list) {
                Some(m) => {
                    print(&format!("{} run {}", bin.display(), round + 1), &m);
                    all[i].push(m);
                }
                None => {
                    println!("idle: {} run {}: failed", bin.display(), round + 1);
                    std::process::exit(1);
                }
            }
        }
    }
    if runs > 1 {
        for (bin, ms) in bins.iter().zip(&all) {
            let med = |f: &dyn Fn(&Idle) -> f64| median(ms.iter().map(f).collect());
            println!(
                "idle: median of {runs}, {}: RSS {:.2} MiB, anonymous {:.2}, file-backed {:.2} (binary {:.2}), CPU {:.3} %",
                bin.display(),
                med(&|m| mib(m.rss_kib)),
                med(&|m| mib(m.anon_kib)),
                med(&|m| mib(m.file_kib())),
                med(&|m| mib(m.binary_kib())),
                med(&|m| m.cpu_percent),
            );
        }
    }
    if std::env::var_os("WISP_BENCH_PARTS").is_some() {
        let bin = &bins[0];
        let variants = [
            ("all on", Parts::ALL),
            (
                "OTLP relay off (receivers, exporter, host and agent metrics)",
                Parts {
                    otlp: false,
                    host_metrics: false,
                    ..Parts::ALL
                },
            ),
            (
                "host and agent metrics off",
                Parts {
                    host_metrics: false,
                    ..Parts::ALL
                },
            ),
            (
                "admin endpoint off",
                Parts {
                    admin: false,
                    ..Parts::ALL
                },
            ),
            (
                "1 file instead of 10",
                Parts {
                    files: 1,
                    ..Parts::ALL
                },
            ),
        ];
        let mut base: Option<Idle> = None;
        for (name, parts) in variants {
            let Some(m) = measure(&rt, bin, parts, window, false) else {
                println!("idle: parts: {name}: failed");
                continue;
            };
            print(&format!("parts: {name}"), &m);
            if let Some(b) = &base {
                println!(
                    "idle: parts: {name}: {:+.2} MiB anonymous, {:+.2} MiB file-backed, {:+} threads",
                    (m.anon_kib as f64 - b.anon_kib as f64) / 1024.0,
                    (m.file_kib() as f64 - b.file_kib() as f64) / 1024.0,
                    m.threads.len() as i64 - b.threads.len() as i64
                );
            } else {
                base = Some(m);
            }
        }
    }
}
