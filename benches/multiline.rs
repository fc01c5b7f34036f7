//! Throughput of terminal rendering and multi-line joining, as the tailer runs
//! them on every line: `cargo bench --bench multiline`. Prints lines per second;
//! issue 7 asks `multiline = "auto"` on Pino JSON lines to stay within 10% of
//! `multiline = "none"`. A benchmark, not a test: it only checks that every line came out as one record.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wisp_agent::config::Multiline;
use wisp_agent::source::multiline::{Joined, Joiner, JoinerSettings};
use wisp_agent::source::terminal::{render, RenderStats};

const LINES: usize = 200_000;
const ROUNDS: usize = 7;

/// Pino JSON lines of about 200 bytes, ending in `\r` as a tmux pane writes them.
fn pino_lines() -> Vec<Vec<u8>> {
    (0..LINES)
        .map(|i| {
            format!(
                "{{\"level\":{},\"time\":{},\"pid\":3846,\"hostname\":\"refly-vm\",\"service\":\"refly-api\",\"reqId\":\"req-{:05x}\",\"req\":{{\"method\":\"POST\",\"url\":\"/v1/canvas/sync\"}},\"durationMs\":{},\"msg\":\"request completed\"}}\r",
                [30, 30, 30, 40, 50][i % 5],
                1_795_388_381_727u64 + i as u64,
                i,
                i % 1000
            )
            .into_bytes()
        })
        .collect()
}

/// Coloured pino-pretty and Nest lines, as in the tmux fixture.
fn coloured_lines() -> Vec<Vec<u8>> {
    (0..LINES)
        .map(|i| match i % 3 {
            0 => format!("[22:59:44.{:03}] \x1b[32mINFO\x1b[39m (3859): \x1b[36mrequest {i} received from the canvas sync endpoint\x1b[39m\r", i % 1000),
            1 => format!("    \x1b[35mreqId\x1b[39m: \"req-{i:05x}\"\r"),
            _ => format!("\x1b[32m[Nest] 3846  - \x1b[39m11/22/2026, 10:00:00 PM \x1b[32m    LOG\x1b[39m \x1b[33m[RouterExplorer]\x1b[39m \x1b[32mMapped {{/v1/canvas/{i}, POST}} route\x1b[39m\r"),
        }
        .into_bytes())
        .collect()
}

fn settings(mode: Multiline) -> JoinerSettings {
    JoinerSettings {
        mode,
        max_lines: 500,
        max_bytes: 256 * 1024,
        timeout: Duration::from_secs(1),
    }
}

/// Renders and joins every line; returns the time taken and the records emitted.
fn render_and_join(lines: &[Vec<u8>], mode: Multiline) -> (Duration, usize) {
    let mut joiner = Joiner::new(settings(mode));
    let mut stats = RenderStats::default();
    let mut out: Vec<Joined> = Vec::with_capacity(1024);
    let mut records = 0;
    let mut offset = 0u64;
    let started = Instant::now();
    // The tailer reads the clock once per chunk read, not once per line.
    for chunk in lines.chunks(512) {
        let now = tokio::time::Instant::now();
        for line in chunk {
            offset += line.len() as u64 + 1;
            joiner.push(render(line, &mut stats), offset, now, &mut out);
        }
        joiner.flush_due(now, &mut out);
        records += out.len();
        black_box(&out);
        out.clear();
    }
    joiner.flush(&mut out);
    records += out.len();
    (started.elapsed(), records)
}

fn render_only(lines: &[Vec<u8>]) -> Duration {
    let mut stats = RenderStats::default();
    let started = Instant::now();
    for line in lines {
        black_box(render(black_box(line), &mut stats));
    }
    started.elapsed()
}

fn per_sec(lines: usize, took: Duration) -> f64 {
    lines as f64 / took.as_secs_f64()
}

fn mib_per_sec(lines: &[Vec<u8>], took: Duration) -> f64 {
    let bytes: usize = lines.iter().map(Vec::len).sum();
    bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
}

fn main() {
    let pino = pino_lines();
    let coloured = coloured_lines();
    let avg = |lines: &[Vec<u8>]| lines.iter().map(Vec::len).sum::<usize>() / lines.len();
    println!(
        "{LINES} lines a run, best of {ROUNDS} runs; pino lines {} bytes on average, coloured lines {}",
        avg(&pino),
        avg(&coloured)
    );

    // Alternate the modes so that noise from other work on the machine hits both.
    let (mut best_none, mut best_auto) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let (took, records) = render_and_join(&pino, Multiline::None);
        assert_eq!(records, LINES);
        best_none = best_none.min(took);
        let (took, records) = render_and_join(&pino, Multiline::Auto);
        assert_eq!(records, LINES);
        best_auto = best_auto.min(took);
    }
    let none = per_sec(LINES, best_none);
    let auto = per_sec(LINES, best_auto);
    println!("render + join, pino json, multiline = none: {none:>12.0} lines/s");
    println!("render + join, pino json, multiline = auto: {auto:>12.0} lines/s");
    println!(
        "auto / none: {:.3} (issue 7 asks at least 0.90)",
        auto / none
    );

    let best = |lines: &[Vec<u8>]| {
        (0..ROUNDS)
            .map(|_| render_only(lines))
            .min()
            .unwrap_or_default()
    };
    let plain = best(&pino);
    println!(
        "render alone, plain (pino) lines:            {:>12.0} lines/s  {:>7.0} MiB/s",
        per_sec(LINES, plain),
        mib_per_sec(&pino, plain)
    );
    let colours = best(&coloured);
    println!(
        "render alone, coloured lines:                {:>12.0} lines/s  {:>7.0} MiB/s",
        per_sec(LINES, colours),
        mib_per_sec(&coloured, colours)
    );
}
