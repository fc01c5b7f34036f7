//! Tail throughput: ~200-byte Pino lines appended to several files, read by the
//! real tailer (read + cut + render + batch) and passed through the transform
//! stage, all on one core (a current-thread runtime). Prints lines per second and
//! the peak RSS after a small and after a large run: the peak must not grow with
//! the size of the files.
//!
//! Run: `cargo bench --bench tail`

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wisp_agent::config::{Config, FileConfig, Multiline, Span, StartAt};
use wisp_agent::parse::{ParseSettings, Transformer};
use wisp_agent::source::file::{self, TailSettings};

const FILES: usize = 4;

fn pino(i: usize) -> String {
    format!(
        r#"{{"level":30,"time":1795388381726,"pid":4242,"hostname":"vm1","reqId":"req-{i:08}","req":{{"method":"GET","url":"/api/v1/items/{i}","remoteAddress":"127.0.0.1"}},"responseTime":12,"msg":"request completed"}}"#
    )
}

fn write_files(dir: &Path, lines_per_file: usize) -> u64 {
    let mut bytes = 0u64;
    for f in 0..FILES {
        let file = std::fs::File::create(dir.join(format!("app-{f}.log"))).unwrap();
        let mut w = BufWriter::with_capacity(1 << 20, file);
        for i in 0..lines_per_file {
            let line = pino(i);
            bytes += line.len() as u64 + 1;
            w.write_all(line.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
        }
        w.flush().unwrap();
    }
    bytes
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn run_once(lines_per_file: usize, multiline: Multiline) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let bytes = write_files(&logs, lines_per_file);
    let total = lines_per_file * FILES;
    let mode = format!("{multiline:?}");
    let entry = FileConfig {
        name: "bench".into(),
        paths: vec![logs.join("*.log").display().to_string()],
        start_at: StartAt::Beginning,
        poll_interval: Span::secs(1),
        multiline,
        ..FileConfig::default()
    };
    let settings = TailSettings::new(vec![entry], dir.path().join("state"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let mut transformer = Transformer::new(ParseSettings::from_config(&Config::default()));
        let start = Instant::now();
        let task = tokio::spawn(file::run(settings, tx, cancel.clone()));
        let mut n = 0usize;
        while n < total {
            let Some(batch) = rx.recv().await else { break };
            n += batch.lines.len();
            let out = transformer.transform(batch);
            std::hint::black_box(&out.records);
            out.ack.done();
        }
        let secs = start.elapsed().as_secs_f64();
        cancel.cancel();
        let _ = task.await;
        println!(
            "tail {FILES} files x {lines_per_file} lines (multiline {mode}): {n} lines, {:.1} MiB in {secs:.2}s = {:.0} lines/s, {:.0} MiB/s; peak RSS so far {} KiB",
            bytes as f64 / (1 << 20) as f64,
            n as f64 / secs,
            bytes as f64 / (1 << 20) as f64 / secs,
            peak_rss_kib()
        );
    });
}

fn main() {
    // Small files first, then files ten times larger: the peak RSS printed after
    // each must stay about the same.
    run_once(25_000, Multiline::None);
    run_once(250_000, Multiline::None);
    run_once(250_000, Multiline::Auto);
}
