//! Unit tests and properties of the multiline joiner.

use super::*;

fn settings(mode: Multiline) -> JoinerSettings {
    JoinerSettings {
        mode,
        max_lines: 500,
        max_bytes: 256 * 1024,
        timeout: Duration::from_secs(1),
    }
}

fn start(pattern: &str) -> Multiline {
    Multiline::Start(regex::Regex::new(pattern).expect("test pattern"))
}

/// Pushes `lines` (each `len + 1` bytes long with its newline) at `now`, then
/// flushes; returns the records' texts.
fn join_all(settings: JoinerSettings, lines: &[&str]) -> Vec<String> {
    let mut joiner = Joiner::new(settings);
    let mut out = Vec::new();
    let mut offset = 0;
    let now = Instant::now();
    for line in lines {
        offset += line.len() as u64 + 1;
        joiner.push(line.to_string(), offset, now, &mut out);
    }
    joiner.flush(&mut out);
    assert!(
        out.windows(2).all(|w| w[0].end_offset < w[1].end_offset),
        "records come out in order"
    );
    assert_eq!(
        out.last().map(|j| j.end_offset),
        Some(offset).filter(|_| !lines.is_empty())
    );
    out.into_iter().map(|j| j.text).collect()
}

#[test]
fn pino_pretty_blocks_are_one_record_each() {
    // As rendered from the fixture (colours removed).
    let lines = [
        "[22:59:44.776] TRACE (3859): loading config from /app/.env",
        "    module: \"boot\"",
        "[22:59:44.778] DEBUG (3859): config loaded",
        "    module: \"boot\"",
        "    keys: 42",
        "[22:59:44.778] INFO (3859): Nest application successfully started",
        "[22:59:44.778] INFO (3859): request received",
        "    reqId: \"req-7f3a\"",
        "    req: {",
        "      \"method\": \"POST\",",
        "      \"url\": \"/v1/canvas/sync\"",
        "    }",
        "    trace_id: \"4bf92f3577b34da6a3ce929d0e0e4736\"",
    ];
    let records = join_all(settings(Multiline::Auto), &lines);
    assert_eq!(
        records,
        [
            lines[0..2].join("\n"),
            lines[2..5].join("\n"),
            lines[5].to_string(),
            lines[6..].join("\n"),
        ]
    );
}

#[test]
fn a_node_stack_trace_is_one_record() {
    let lines = [
        "Error: redis connection lost",
        "    at Object.<anonymous> (/home/dev/refly-api/app.js:17:11)",
        "    at Module._compile (node:internal/modules/cjs/loader:1521:14)",
        "\tat node:internal/main/run_main_module:28:49",
        "server stopped",
    ];
    let records = join_all(settings(Multiline::Auto), &lines);
    assert_eq!(records, [lines[..4].join("\n"), lines[4].to_string()]);
}

#[test]
fn a_python_traceback_keeps_its_last_line_apart_with_auto_and_joins_it_with_start() {
    let lines = [
        "2026-11-22 22:59:44,776 ERROR worker failed",
        "Traceback (most recent call last):",
        "  File \"/app/worker.py\", line 12, in run",
        "    parse(payload)",
        "ValueError: x",
        "2026-11-22 22:59:45,001 INFO next job",
    ];
    let auto = join_all(settings(Multiline::Auto), &lines);
    assert_eq!(
        auto,
        [
            lines[0].to_string(),
            lines[1..4].join("\n"),
            lines[4].to_string(),
            lines[5].to_string(),
        ]
    );
    let by_date = join_all(settings(start(r"^\d{4}-\d\d-\d\d ")), &lines);
    assert_eq!(by_date, [lines[..5].join("\n"), lines[5].to_string()]);
}

#[test]
fn json_lines_are_never_joined_and_never_wait() {
    let mut joiner = Joiner::new(settings(Multiline::Auto));
    let mut out = Vec::new();
    let now = Instant::now();
    joiner.push(r#"{"level":30,"msg":"a"}"#.into(), 23, now, &mut out);
    assert!(
        !joiner.has_pending(),
        "a complete JSON line is emitted at once"
    );
    joiner.push(r#"{"level":30,"msg":"b"}  "#.into(), 48, now, &mut out);
    // The rest of a line another writer interrupted stays apart from the JSON.
    joiner.push(r#" and finished later"}"#.into(), 70, now, &mut out);
    joiner.flush(&mut out);
    let texts: Vec<_> = out.iter().map(|j| j.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            r#"{"level":30,"msg":"a"}"#,
            r#"{"level":30,"msg":"b"}  "#,
            r#" and finished later"}"#
        ]
    );
    assert_eq!(out[0].end_offset, 23);
    assert_eq!(out[1].end_offset, 48);
}

#[test]
fn a_pretty_printed_json_object_stays_whole() {
    let lines = [
        "{",
        "  \"a\": 1,",
        "  \"b\": [",
        "    2",
        "  ]",
        "}",
        "after",
    ];
    let records = join_all(settings(Multiline::Auto), &lines);
    assert_eq!(records, [lines[..6].join("\n"), "after".to_string()]);
}

#[test]
fn lines_before_the_first_start_match_are_records_of_their_own() {
    let lines = [
        "  noise one",
        "noise two",
        "BEGIN a",
        "  a1",
        "a2",
        "BEGIN b",
        "b1",
    ];
    let records = join_all(settings(start("^BEGIN")), &lines);
    assert_eq!(
        records,
        [
            "  noise one",
            "noise two",
            "BEGIN a\n  a1\na2",
            "BEGIN b\nb1"
        ]
    );
}

#[test]
fn mode_none_emits_every_line_at_once() {
    let mut joiner = Joiner::new(settings(Multiline::None));
    let mut out = Vec::new();
    let now = Instant::now();
    for (i, line) in ["Error: x", "    at y", "    at z"].iter().enumerate() {
        joiner.push(line.to_string(), (i as u64 + 1) * 10, now, &mut out);
        assert!(!joiner.has_pending());
        assert_eq!(joiner.pending_start(), None);
        assert_eq!(joiner.deadline(), None);
    }
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].end_offset, 30);
}

#[test]
fn max_lines_finishes_a_record_and_the_overflowing_line_heads_the_next() {
    let mut s = settings(Multiline::Auto);
    s.max_lines = 3;
    let lines = ["head", " 1", " 2", " 3", " 4", " 5", " 6", "next"];
    let records = join_all(s.clone(), &lines);
    assert_eq!(records, ["head\n 1\n 2", " 3\n 4\n 5", " 6", "next"]);

    // A record that reached the bound cannot grow: it is emitted at once.
    let mut joiner = Joiner::new(s);
    let mut out = Vec::new();
    let now = Instant::now();
    for (i, line) in ["head", " 1", " 2"].iter().enumerate() {
        joiner.push(line.to_string(), i as u64 + 1, now, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert!(!joiner.has_pending());
}

#[test]
fn max_bytes_finishes_a_record_and_the_overflowing_line_heads_the_next() {
    let mut s = settings(Multiline::Auto);
    s.max_bytes = 20;
    let lines = ["0123456789", " abcdefgh", " ijklmnop", " q"];
    let records = join_all(s.clone(), &lines);
    // 10 + 1 + 9 = 20 bytes fit; the next line would pass the bound.
    assert_eq!(records, ["0123456789\n abcdefgh", " ijklmnop\n q"]);
    assert!(records.iter().all(|r| r.len() <= 20));

    // A line longer than the bound is a record by itself, emitted at once.
    let mut joiner = Joiner::new(s);
    let mut out = Vec::new();
    joiner.push("x".repeat(30), 31, Instant::now(), &mut out);
    assert_eq!(out.len(), 1);
    assert!(!joiner.has_pending());
}

#[test]
fn a_pending_record_is_flushed_after_the_timeout_without_a_new_line() {
    let mut joiner = Joiner::new(settings(Multiline::Auto));
    let mut out = Vec::new();
    let t0 = Instant::now();
    joiner.push("Error: boom".into(), 12, t0, &mut out);
    assert_eq!(joiner.deadline(), Some(t0 + Duration::from_secs(1)));

    // A continuation line moves the deadline.
    let t1 = t0 + Duration::from_millis(800);
    joiner.push("    at main".into(), 24, t1, &mut out);
    assert_eq!(joiner.deadline(), Some(t1 + Duration::from_secs(1)));

    joiner.flush_due(t0 + Duration::from_millis(1500), &mut out);
    assert!(out.is_empty(), "not due yet");
    joiner.flush_due(t1 + Duration::from_secs(1), &mut out);
    assert_eq!(
        out,
        [Joined {
            text: "Error: boom\n    at main".into(),
            end_offset: 24
        }]
    );
    assert_eq!(joiner.deadline(), None);
    assert_eq!(joiner.pending_start(), None);
}

#[test]
fn pending_start_holds_checkpoints_at_the_start_of_the_open_record() {
    let mut joiner = Joiner::new(settings(Multiline::Auto));
    joiner.reset(1000); // resumed from a checkpoint
    let mut out = Vec::new();
    let now = Instant::now();
    assert_eq!(joiner.pending_start(), None);

    joiner.push("first".into(), 1006, now, &mut out);
    assert_eq!(joiner.pending_start(), Some(1000));
    joiner.push("  more".into(), 1013, now, &mut out);
    joiner.push("  and more".into(), 1024, now, &mut out);
    assert_eq!(joiner.pending_start(), Some(1000));
    assert!(out.is_empty());

    joiner.push("second".into(), 1031, now, &mut out);
    assert_eq!(joiner.pending_start(), Some(1024));
    assert_eq!(
        out,
        [Joined {
            text: "first\n  more\n  and more".into(),
            end_offset: 1024
        }]
    );

    // A complete JSON line finishes the open record and is emitted after it.
    joiner.push(r#"{"level":30}"#.into(), 1044, now, &mut out);
    assert_eq!(joiner.pending_start(), None);
    assert_eq!(out[1].end_offset, 1031);
    assert_eq!(out[2].end_offset, 1044);

    // After a truncation the file starts again at 0.
    joiner.push("  dangling".into(), 1055, now, &mut out);
    assert_eq!(joiner.pending_start(), Some(1044));
    joiner.reset(0);
    assert_eq!(joiner.pending_start(), None);
    joiner.push("fresh".into(), 6, now, &mut out);
    assert_eq!(joiner.pending_start(), Some(0));
}

#[test]
fn settings_come_from_the_file_entry() {
    let file = FileConfig::default();
    let s = JoinerSettings::from_file_config(&file);
    assert_eq!(s.mode, Multiline::Auto);
    assert_eq!(s.max_lines, 500);
    assert_eq!(s.max_bytes, 256 * 1024);
    assert_eq!(s.timeout, Duration::from_secs(1));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("head".to_string()),
            Just("    at frame".to_string()),
            Just("\tfield: 1".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(r#"{"level":30}"#.to_string()),
            Just("BEGIN x".to_string()),
            "[ -~]{0,40}",
        ]
    }

    fn mode() -> impl Strategy<Value = Multiline> {
        prop_oneof![
            Just(Multiline::Auto),
            Just(Multiline::None),
            Just(start("^BEGIN")),
        ]
    }

    proptest! {
        /// Every line comes out exactly once, in order, in records within the
        /// bounds, and a checkpoint at `pending_start` never skips a line that
        /// has not come out.
        #[test]
        fn nothing_is_lost_doubled_or_reordered(
            lines in proptest::collection::vec((line(), 0u64..3), 0..60),
            mode in mode(),
            max_lines in 1usize..6,
            max_bytes in 1usize..80,
            first in 0u64..1000,
        ) {
            let mut joiner = Joiner::new(JoinerSettings {
                mode,
                max_lines,
                max_bytes,
                timeout: Duration::from_secs(1),
            });
            joiner.reset(first);
            let mut out = Vec::new();
            let mut now = Instant::now();
            let mut offset = first;
            // (start, end) of each line not yet emitted.
            let mut waiting: Vec<(u64, u64)> = Vec::new();
            let mut shipped = 0usize;
            for (text, pause) in &lines {
                now += Duration::from_millis(600 * pause);
                joiner.flush_due(now, &mut out);
                let start = offset;
                offset += text.len() as u64 + 1;
                waiting.push((start, offset));
                joiner.push(text.clone(), offset, now, &mut out);
                for record in &out[shipped..] {
                    let n = record.text.split('\n').count();
                    prop_assert!(n <= waiting.len());
                    prop_assert_eq!(record.end_offset, waiting[n - 1].1);
                    prop_assert!(n <= max_lines);
                    prop_assert!(n == 1 || record.text.len() <= max_bytes);
                    waiting.drain(..n);
                }
                shipped = out.len();
                prop_assert_eq!(joiner.pending_start(), waiting.first().map(|w| w.0));
                prop_assert_eq!(joiner.has_pending(), !waiting.is_empty());
            }
            joiner.flush(&mut out);
            prop_assert_eq!(joiner.pending_start(), None);
            let all: Vec<&str> = out.iter().flat_map(|r| r.text.split('\n')).collect();
            let want: Vec<&str> = lines.iter().map(|(t, _)| t.as_str()).collect();
            prop_assert_eq!(all, want);
        }
    }
}
