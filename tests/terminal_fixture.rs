//! The real tmux `pipe-pane` capture (`shared/fixtures/tmux/refly-api.log`) through
//! terminal rendering and the `auto` multi-line joiner, as the tailer feeds them:
//! what a user expects each record of that file to become.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use wisp_agent::config::Multiline;
use wisp_agent::source::multiline::{Joined, Joiner, JoinerSettings};
use wisp_agent::source::terminal::{render, RenderStats};

const MAX_LINE_BYTES: usize = 256 * 1024;

fn fixture() -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("tests/fixtures/tmux/refly-api.log"),
        root.join("../shared/fixtures/tmux/refly-api.log"),
    ];
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
    }
    panic!("fixture refly-api.log not found in any of {candidates:?}");
}

/// Cuts the fixture into lines as the tailer does (a last line without its newline
/// included, lines cut at `max_line_bytes`), renders and joins them.
fn records(mode: Multiline) -> (Vec<Joined>, RenderStats, u64) {
    let bytes = fixture();
    let mut joiner = Joiner::new(JoinerSettings {
        mode,
        max_lines: 500,
        max_bytes: MAX_LINE_BYTES,
        timeout: Duration::from_secs(1),
    });
    let mut stats = RenderStats::default();
    let mut out = Vec::new();
    let now = Instant::now();
    let mut offset = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = &line[..line.len().min(MAX_LINE_BYTES)];
        joiner.push(render(line, &mut stats), offset as u64, now, &mut out);
        if let Some(start) = joiner.pending_start() {
            assert!(start < offset as u64);
        }
    }
    joiner.flush(&mut out);
    (out, stats, bytes.len() as u64)
}

#[test]
fn every_record_of_the_capture_is_what_the_pane_showed() {
    let (records, stats, len) = records(Multiline::Auto);
    for r in &records {
        assert!(
            !r.text
                .chars()
                .any(|c| c.is_control() && c != '\t' && c != '\n'),
            "no escape sequence or carriage return shipped: {:?}",
            &r.text[..r.text.len().min(200)]
        );
    }
    assert_eq!(records.last().map(|r| r.end_offset), Some(len));
    assert!(records
        .windows(2)
        .all(|w| w[0].end_offset < w[1].end_offset));
    assert_eq!(stats.invalid_utf8_lines, 0);
    assert!(stats.sequences_stripped > 100);

    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    // The shell's prompt and the command it ran, colours and paste toggles gone.
    assert!(texts.contains(
        &"dev@refly-vm:/home/dev/refly-api$ node app.js 2>&1 | head -c 20000 | ./node_modules/.bin/pino-pretty"
    ));
    assert_eq!(texts.last(), Some(&"dev@refly-vm:/home/dev/refly-api$ "));
    // Nest text logs, one record a line.
    assert_eq!(texts.iter().filter(|t| t.starts_with("[Nest] ")).count(), 6);
    assert!(texts.contains(
        &"[Nest] 3846  - 11/22/2026, 10:00:00 PM     LOG [NestFactory] Starting Nest application..."
    ));
    // Each Pino JSON line is a record of its own.
    let json = texts
        .iter()
        .filter(|t| t.starts_with("{\"level\":"))
        .count();
    assert_eq!(json, 13);
    assert!(texts
        .iter()
        .filter(|t| t.starts_with('{'))
        .all(|t| !t.contains('\n')));
    // The rest of the line two writers interleaved is shipped once, apart.
    assert_eq!(
        texts
            .iter()
            .filter(|t| **t == " and finished later\"}")
            .count(),
        1
    );
    // Each pino-pretty record is its first line and its indented continuation.
    let pretty: Vec<&&str> = texts
        .iter()
        .filter(|t| t.starts_with("[22:59:44."))
        .collect();
    assert_eq!(pretty.len(), 8);
    assert_eq!(
        *pretty[0],
        "[22:59:44.776] TRACE (3859): loading config from /app/.env\n    module: \"boot\""
    );
    let error = pretty
        .iter()
        .find(|t| t.contains(" ERROR "))
        .expect("the ERROR record");
    assert!(error.contains("\n              at JSON.parse (<anonymous>)\n"));
    assert!(error.ends_with("\n    }"));
    assert_eq!(error.lines().count(), 20);
    let fatal = pretty
        .iter()
        .find(|t| t.contains(" FATAL "))
        .expect("the FATAL record");
    assert!(fatal.contains("redis connection lost\n              after 3 retries"));
}

#[test]
fn with_multiline_none_every_line_is_a_record() {
    let (records, _, _) = records(Multiline::None);
    assert_eq!(records.len(), fixture().split(|&b| b == b'\n').count());
}
