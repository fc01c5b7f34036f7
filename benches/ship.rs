//! End-to-end benchmark (issue 5): Pino lines of about 200 bytes (201 with the newline) appended to a file,
//! tailed, parsed, spooled (fsync per batch) and pushed as protobuf + snappy to the
//! fake Loki on loopback. The agent is the release binary, pinned to one core
//! (`taskset -c 0` when available); the receiver runs in this process.
//!
//! Prints lines/s end to end and per CPU-second of the agent (issue 25), the
//! agent's peak RSS while shipping (VmHWM) and its RSS at idle afterwards, and
//! the spool's fsync count. `cargo bench --bench ship`;
//! `WISP_BENCH_LINES` sets the line count (default 500000). `WISP_BENCH_ADMIN=1`
//! turns the admin endpoint on and scrapes `/metrics` when fresh, after the burst
//! and at idle, as Prometheus would (it is off otherwise). `WISP_BENCH_ALL=1`
//! runs the agent as its defaults do: the admin endpoint, the OTLP relay (its
//! receivers listening, exporting to a fake collector in this process) and host
//! metrics every 15 s, all on.
//!
//! It also prints when the pushes reached the receiver (the gaps between
//! them, and how long the last one waited); `WISP_BENCH_PUSHES=1` lists them.
//!
//! `WISP_BENCH_AGENT=/path/to/wisp-agent` runs another build of the agent
//! under this same driver (before/after comparisons).
//! `WISP_BENCH_BATCH_WAIT` sets `[loki] batch_max_wait` (default "1s", the
//! agent's default). While lines stream, pushes fill by size; the last,
//! partial one goes once the file is quiet for 20 ms (decision 033), so the
//! end-to-end time no longer includes `batch_max_wait`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The process's CPU time (user + system), from /proc/PID/stat, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = &text[text.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

/// The agent's threads, and each mapping holding 64 KiB or more (and how much of
/// that is anonymous), for `WISP_BENCH_SMAPS=1`: where idle memory goes.
fn print_memory_map(pid: u32) {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            eprintln!("thread: {}", comm.trim());
        }
    }
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return;
    };
    let mut name = String::new();
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
            // "start-end perms offset dev inode [path]"
            let perms = words.next().unwrap_or("");
            name = format!("{perms} {}", words.nth(3).unwrap_or("[anonymous]"));
        } else if first == "Rss:" {
            rss = kib();
        } else if first == "Anonymous:" && rss >= 64 {
            eprintln!("smaps: {rss:>6} KiB ({:>6} KiB anonymous) {name}", kib());
        }
    }
}

/// `GET path` over a fresh connection; the body, if the answer was 200.
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

/// One sample's value from a `/metrics` page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// When the pushes came (ms after the first line was written): the first, the
/// last, the gaps between them, and the wait before the last (the partial
/// batch). `WISP_BENCH_PUSHES=1` lists every one.
fn print_push_times(at: &[f64]) {
    let (Some(first), Some(last)) = (at.first(), at.last()) else {
        return;
    };
    let mut gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let before_last = gaps.last().copied().unwrap_or(0.0);
    gaps.sort_by(f64::total_cmp);
    let pick = |q: f64| gaps.get(((gaps.len() as f64 - 1.0) * q) as usize).copied();
    println!(
        "ship: pushes at {first:.0} ms (first) … {last:.0} ms (last); gaps median {:.1} ms, p90 {:.1} ms, max {:.1} ms; the last came {before_last:.1} ms after the one before",
        pick(0.5).unwrap_or(0.0),
        pick(0.9).unwrap_or(0.0),
        pick(1.0).unwrap_or(0.0),
    );
    if std::env::var_os("WISP_BENCH_PUSHES").is_some() {
        let list: Vec<String> = at.iter().map(|t| format!("{t:.1}")).collect();
        println!("ship: push times (ms): {}", list.join(" "));
    }
}

fn main() {
    let n: usize = std::env::var("WISP_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let loki = rt.block_on(support::loki::LokiReceiver::start());
    loki.set_count_only(true);

    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("api.log");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::File::create(&file).unwrap();
    // A free port for the admin endpoint (bound and released: a small race,
    // fine for a benchmark).
    let all = std::env::var_os("WISP_BENCH_ALL").is_some();
    let collector = all.then(|| rt.block_on(support::otlp::OtlpReceiver::start()));
    let otlp_section = match &collector {
        Some(c) => format!(
            "[otlp]\nendpoint = \"{}\"\n[receiver]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[host_metrics]\nenabled = true",
            c.grpc_endpoint()
        ),
        None => "[otlp]\nenabled = false\n[receiver]\ngrpc = \"\"\nhttp = \"\"\n[host_metrics]\nenabled = false".into(),
    };
    let admin = (all || std::env::var_os("WISP_BENCH_ADMIN").is_some()).then(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    });
    let batch_wait = std::env::var("WISP_BENCH_BATCH_WAIT").unwrap_or_else(|_| "1s".into());
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
batch_max_wait = "{batch_wait}"
{otlp_section}
[admin]
listen = "{admin}"
[[files]]
name = "api"
paths = ["{file}"]
start_at = "beginning"
multiline = "none"
"#,
            state = dir.path().join("state").display(),
            port = loki.addr().port(),
            file = file.display(),
            admin = admin.map(|a| a.to_string()).unwrap_or_default(),
            batch_wait = batch_wait,
        ),
    )
    .unwrap();

    let bin = std::env::var("WISP_BENCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_wisp-agent").to_string());
    let bin = bin.as_str();
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", bin]);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&config)
        .env_remove("WISP_HOST")
        .env_remove("LOKI_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A fresh agent, started and idle: it has found the file, nothing to ship yet.
    std::thread::sleep(Duration::from_secs(3));
    if let Some(addr) = admin {
        assert!(
            http_get(addr, "/metrics").is_some(),
            "no /metrics on {addr}"
        );
    }
    let fresh = status_kib(pid, "VmRSS:");
    let started = Instant::now();
    {
        let mut w = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap(),
        );
        for i in 0..n {
            writeln!(
                w,
                r#"{{"level":30,"time":{},"pid":4242,"hostname":"refly-vm","reqId":"req-{:08}","msg":"request completed","res":{{"statusCode":200}},"responseTime":12,"url":"/v1/canvas/sync?canvasId=c-7f3a9b"}}"#,
                now_ms + (i as u128 / 1000),
                i
            )
            .unwrap();
        }
    }
    let bytes = std::fs::metadata(&file).unwrap().len();
    let done = rt.block_on(loki.wait_for_stored(n, Duration::from_secs(300)));
    let took = started.elapsed();
    let push_times: Vec<f64> = loki
        .push_times()
        .iter()
        .map(|t| t.saturating_duration_since(started).as_secs_f64() * 1e3)
        .collect();
    let peak = status_kib(pid, "VmHWM:");
    let cpu = cpu_seconds(pid);
    let receiver_cpu = cpu_seconds(std::process::id());
    if let Some(addr) = admin {
        let _ = http_get(addr, "/metrics");
    }
    // Idle: nothing written for a few seconds.
    std::thread::sleep(Duration::from_secs(5));
    let idle = status_kib(pid, "VmRSS:");
    let idle_anon = status_kib(pid, "RssAnon:");
    let page = admin.and_then(|addr| http_get(addr, "/metrics"));
    if std::env::var_os("WISP_BENCH_SMAPS").is_some() {
        print_memory_map(pid);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    println!("ship: {n} lines ({:.1} MB) file → tail → parse → spool (fsync per batch) → Loki protobuf+snappy on loopback", bytes as f64 / 1e6);
    if !done {
        println!(
            "ship: only {} of {n} lines arrived within 300 s",
            loki.stored_count()
        );
        std::process::exit(1);
    }
    println!(
        "ship: batch_max_wait = {batch_wait} (the last, partial push goes once the file is quiet for 20 ms)"
    );
    println!(
        "ship: {:.0} lines/s end to end ({:.2} s; the agent used {:.2} s of CPU: {:.0} lines per CPU-second){}",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        cpu.unwrap_or(0.0),
        n as f64 / cpu.unwrap_or(0.0).max(0.01),
        if pinned {
            ", agent pinned to one core"
        } else {
            ""
        }
    );
    println!(
        "ship: the fake Loki (this process: decoding, counting stored entries) used {:.2} s of CPU",
        receiver_cpu.unwrap_or(0.0)
    );
    println!(
        "ship: agent RSS {:.1} MiB fresh and idle, {:.1} MiB peak while shipping, {:.1} MiB idle 5 s after ({:.1} MiB of it anonymous, the rest the binary's pages); {} pushes",
        fresh.unwrap_or(0) as f64 / 1024.0,
        peak.unwrap_or(0) as f64 / 1024.0,
        idle.unwrap_or(0) as f64 / 1024.0,
        idle_anon.unwrap_or(0) as f64 / 1024.0,
        loki.pushes()
    );
    print_push_times(&push_times);
    match (admin, page) {
        (None, _) => println!("ship: admin endpoint off (WISP_BENCH_ADMIN=1 turns it on)"),
        (Some(addr), Some(page)) => println!(
            "ship: admin endpoint on {addr}, scraped fresh, after the burst and at idle; it reports {} records shipped, RSS {:.1} MiB",
            sample(&page, "wisp_loki_records_shipped_total").unwrap_or(-1.0),
            sample(&page, "process_resident_memory_bytes").unwrap_or(0.0) / 1048576.0
        ),
        (Some(addr), None) => println!("ship: admin endpoint on {addr} did not answer at idle"),
    }
    if let Some(c) = &collector {
        println!(
            "ship: WISP_BENCH_ALL: the OTLP relay and host metrics were on; the fake collector got {} export(s)",
            c.exports()
        );
    }
}
