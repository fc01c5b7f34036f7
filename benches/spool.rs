//! Spool throughput: appends batches of ~200-byte Pino records with each fsync policy,
//! then reads and acknowledges them back, and prints the figures (records/s, MB/s,
//! fsync cost per batch). Run with `cargo bench --bench spool`; set
//! `WISP_BENCH_DIR` to measure a particular disk (default: the system temp dir).

use std::time::{Duration, Instant};

use wisp_agent::config::FsyncPolicy;
use wisp_agent::record::{Labels, LogRecord, Timestamp};
use wisp_agent::spool::{Spool, SpoolSettings};

const RECORDS: usize = 200_000;

fn records(batch: usize, size: usize) -> Vec<LogRecord> {
    let labels = [
        Labels::from_pairs([("job", "refly-api"), ("host", "vm1"), ("level", "info")]),
        Labels::from_pairs([("job", "refly-api"), ("host", "vm1"), ("level", "error")]),
    ];
    (0..size)
        .map(|i| {
            let n = batch * size + i;
            LogRecord {
                timestamp: Timestamp(1_795_388_381_726_000_000 + n as i64),
                labels: labels[usize::from(n.is_multiple_of(10))].clone(),
                structured_metadata: vec![],
                line: format!(
                    r#"{{"level":30,"time":{},"pid":4242,"hostname":"vm1","reqId":"req-{n:08}","req":{{"method":"GET","url":"/v1/items/{n}"}},"msg":"request completed","res":{{"statusCode":200}},"responseTime":12.5}}"#,
                    1_795_388_381_726u64 + n as u64
                ),
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn run(policy: FsyncPolicy, batch_size: usize, base: &std::path::Path) {
    let batch_count = RECORDS / batch_size;
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let settings = SpoolSettings {
        dir: dir.path().to_path_buf(),
        max_bytes: 4 << 30,
        segment_bytes: SpoolSettings::DEFAULT_SEGMENT_BYTES,
        fsync: policy,
        fsync_interval: Duration::from_secs(1),
    };
    let (mut w, mut r) = Spool::open(settings).expect("open spool");
    let counters = w.counters();
    let batches: Vec<Vec<LogRecord>> = (0..batch_count).map(|b| records(b, batch_size)).collect();
    let line_bytes: usize = batches.iter().flatten().map(|r| r.line.len()).sum();

    let mut append_times = Vec::with_capacity(batch_count);
    let mut fsync_times = Vec::with_capacity(batch_count);
    let started = Instant::now();
    for batch in &batches {
        let before = counters.snapshot().fsync_time;
        let t = Instant::now();
        w.append(batch).expect("append");
        append_times.push(t.elapsed());
        fsync_times.push(counters.snapshot().fsync_time - before);
    }
    w.sync().expect("sync");
    let elapsed = started.elapsed();
    let snap = counters.snapshot();
    let n = (RECORDS) as f64;
    append_times.sort();
    fsync_times.sort();
    let fsync_mean = fsync_times.iter().sum::<Duration>() / batch_count as u32;
    println!(
        "append, fsync={policy:?}: {batch_count} batches of {batch_size} records (~{} B lines)",
        line_bytes / (RECORDS)
    );
    println!(
        "  {:>10.0} records/s  {:>7.1} MB/s of lines  {:>7.1} MB/s on disk",
        n / elapsed.as_secs_f64(),
        line_bytes as f64 / elapsed.as_secs_f64() / 1e6,
        snap.bytes_appended as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  append per batch: mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
        micros(append_times.iter().sum::<Duration>() / batch_count as u32),
        micros(percentile(&append_times, 0.5)),
        micros(percentile(&append_times, 0.99))
    );
    println!(
        "  fsync per batch:  mean {:.0} µs, p99 {:.0} µs ({} fsyncs, {:.1} ms in total)",
        micros(fsync_mean),
        micros(percentile(&fsync_times, 0.99)),
        snap.fsyncs,
        snap.fsync_time.as_secs_f64() * 1e3
    );

    // Read back in sink-sized batches (~1 MiB, as a Loki push), acknowledging each.
    let mut read = 0usize;
    let mut acks = 0usize;
    let (mut read_time, mut ack_time) = (Duration::ZERO, Duration::ZERO);
    loop {
        let t = Instant::now();
        let Some(b) = r.next_batch(100_000, 1 << 20).expect("read") else {
            break;
        };
        read_time += t.elapsed();
        read += b.records.len();
        let t = Instant::now();
        r.ack(b.end).expect("ack");
        ack_time += t.elapsed();
        acks += 1;
    }
    assert_eq!(read, RECORDS, "every record read back");
    let elapsed = read_time + ack_time;
    println!(
        "  read + ack: {:>10.0} records/s  {:>7.1} MB/s of lines; reading alone {:.0} records/s; {acks} acks of ~1 MiB, {:.0} µs each",
        read as f64 / elapsed.as_secs_f64(),
        line_bytes as f64 / elapsed.as_secs_f64() / 1e6,
        read as f64 / read_time.as_secs_f64(),
        micros(ack_time / acks.max(1) as u32)
    );
}

fn main() {
    let base = std::env::var_os("WISP_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("spool benchmark in {}", base.display());
    run(FsyncPolicy::Batch, 500, &base);
    run(FsyncPolicy::Batch, 2000, &base);
    run(FsyncPolicy::Interval, 500, &base);
}
