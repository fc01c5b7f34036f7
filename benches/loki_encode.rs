//! Encoding throughput of a Loki push: `cargo bench --bench loki_encode`.
//!
//! A plain timing loop (no harness crate): a batch shaped like a busy tmux pane of
//! Pino JSON (a few streams, a quarter with trace ids) encoded again and again;
//! prints records per second and the body size per encoding.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wisp_agent::config::LokiEncoding;
use wisp_agent::record::{Labels, LogRecord, Timestamp};
use wisp_agent::sink::loki::encode;

fn batch(n: usize) -> Vec<LogRecord> {
    let levels = ["info", "info", "info", "debug", "warn", "error"];
    let streams: Vec<Labels> = levels
        .iter()
        .map(|level| {
            Labels::from_pairs([
                ("job", "refly-api"),
                ("host", "vm1"),
                ("filename", "/tmp/alloy/logs/refly/api.log"),
                ("level", level),
                ("env", "local"),
            ])
        })
        .collect();
    (0..n)
        .map(|i| LogRecord {
            timestamp: Timestamp(1_795_388_381_726_000_000 + (i as i64) * 1_000),
            labels: streams[i % streams.len()].clone(),
            structured_metadata: if i % 4 == 0 {
                vec![
                    ("trace_id".into(), "0af7651916cd43dd8448eb211c80319c".into()),
                    ("span_id".into(), "b7ad6b7169203331".into()),
                ]
            } else {
                Vec::new()
            },
            line: format!(
                r#"{{"level":30,"time":{},"pid":4242,"hostname":"vm1","reqId":"req-{i}","msg":"request completed","res":{{"statusCode":200}},"responseTime":{}.5}}"#,
                1_795_388_381_726u64 + i as u64,
                i % 97
            ),
        })
        .collect()
}

fn main() {
    let records = batch(5_000);
    let raw: usize = records.iter().map(|r| r.line.len()).sum();
    for (name, encoding) in [
        ("protobuf+snappy", LokiEncoding::Protobuf),
        ("json", LokiEncoding::Json),
    ] {
        // Warm up, then run for about a second.
        let size = encode(&records, encoding).expect("encode").body.len();
        let start = Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            black_box(encode(black_box(&records), encoding).expect("encode"));
            rounds += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let per_sec = (rounds as f64 * records.len() as f64) / secs;
        println!(
            "{name:>16}: {:>10.0} records/s, {:>7.1} MiB/s of lines, body {size} bytes for {} bytes of lines ({:.0}%)",
            per_sec,
            per_sec * (raw as f64 / records.len() as f64) / (1024.0 * 1024.0),
            raw,
            100.0 * size as f64 / raw as f64
        );
    }
}
