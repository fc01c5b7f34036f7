//! Benchmark of the line parser (issue 3): level + timestamp extraction on Pino
//! lines of about 200 bytes, beside a full `serde_json::Value` parse of the same
//! lines, and the whole transform stage (parse + labels + records).
//!
//! `cargo bench --bench parse`; prints lines per second on one core (one thread).
//! A figure, not a test: nothing here asserts a speed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wisp_agent::config::LogFormat;
use wisp_agent::parse::{parse_line, ParseSettings, Transformer};
use wisp_agent::record::{Ack, SourceBatch, SourceInfo, SourceLine, Timestamp};

const LINES: usize = 100_000;
const ROUNDS: usize = 7;
const READ_TIME: Timestamp = Timestamp(1_795_388_400_000_000_000);

/// Pino lines as a Node service writes them, ~200 bytes each, levels and
/// messages varying.
fn pino_lines() -> Vec<String> {
    let levels = [30, 30, 30, 20, 40, 50, 30, 10];
    (0..LINES)
        .map(|i| {
            format!(
                r#"{{"level":{},"time":{},"pid":3846,"hostname":"refly-vm","module":"canvas","reqId":"req-{:05x}","req":{{"method":"POST","url":"/v1/canvas/sync"}},"durationMs":{},"msg":"request completed {}"}}"#,
                levels[i % levels.len()],
                1_795_388_381_726u64 + i as u64,
                i,
                i % 2000,
                i
            )
        })
        .collect()
}

/// Runs `f` over all lines `ROUNDS` times; the best round's lines per second.
fn measure(lines: &[String], mut f: impl FnMut(&str) -> u64) -> (f64, Duration) {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut acc = 0u64;
        for l in lines {
            acc = acc.wrapping_add(f(l));
        }
        black_box(acc);
        best = best.min(start.elapsed());
    }
    (lines.len() as f64 / best.as_secs_f64(), best)
}

fn report(name: &str, lines_per_sec: f64, bytes_per_line: f64) {
    println!(
        "{name:<44} {:>10.0} lines/s  {:>7.1} MB/s",
        lines_per_sec,
        lines_per_sec * bytes_per_line / 1e6
    );
}

fn main() {
    let lines = pino_lines();
    let avg = lines.iter().map(String::len).sum::<usize>() as f64 / lines.len() as f64;
    println!(
        "{} Pino lines, {avg:.0} bytes on average, best of {ROUNDS} rounds, one thread",
        lines.len()
    );

    let (ours, _) = measure(&lines, |l| {
        let p = parse_line(l, LogFormat::Pino, &[]);
        p.level as u64 ^ p.timestamp.map_or(0, |t| t.0 as u64)
    });
    report("level + time: wisp (serde_json visitor)", ours, avg);

    let (auto, _) = measure(&lines, |l| {
        let p = parse_line(l, LogFormat::Auto, &[]);
        p.level as u64 ^ p.timestamp.map_or(0, |t| t.0 as u64)
    });
    report("level + time: wisp, format = auto", auto, avg);

    let (serde, _) = measure(&lines, |l| {
        let v: serde_json::Value = match serde_json::from_str(l) {
            Ok(v) => v,
            Err(_) => return 0,
        };
        v.get("level").and_then(|l| l.as_u64()).unwrap_or(0)
            ^ v.get("time").and_then(|t| t.as_u64()).unwrap_or(0)
    });
    report("level + time: serde_json::Value (baseline)", serde, avg);
    println!("speed-up over serde_json::Value: {:.1}x", ours / serde);

    // The whole stage: parse, label (cached), build records, in batches of 1024.
    let mut transformer = Transformer::new(ParseSettings {
        hostname: "vm1".into(),
        agent_labels: vec![("env".into(), "local".into())],
        max_label_values: 50,
        max_age: Duration::from_secs(7 * 86_400),
        max_ahead: Duration::from_secs(600),
    });
    let source = Arc::new(SourceInfo {
        job: "refly-api".into(),
        filename: Some("/tmp/alloy/logs/refly/api.log".into()),
        labels: vec![],
        format: LogFormat::Auto,
        label_fields: vec![],
        trace_context: None,
        owner: wisp_agent::record::Owner::UNKNOWN,
    });
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        // Building the input batches (cloning lines) is the source's cost: untimed.
        let batches: Vec<SourceBatch> = lines
            .chunks(1024)
            .map(|chunk| SourceBatch {
                source: source.clone(),
                lines: chunk
                    .iter()
                    .map(|l| SourceLine {
                        text: l.clone(),
                        read_time: READ_TIME,
                    })
                    .collect(),
                ack: Ack::none(),
            })
            .collect();
        let start = Instant::now();
        let mut n = 0;
        for b in batches {
            let out = transformer.transform(b);
            n += out.records.len();
            out.ack.done();
            black_box(out.records);
        }
        best = best.min(start.elapsed());
        assert_eq!(n, lines.len());
    }
    report(
        "Transformer::transform (parse + labels)",
        lines.len() as f64 / best.as_secs_f64(),
        avg,
    );
}
