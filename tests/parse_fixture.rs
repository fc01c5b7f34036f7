//! The real `tmux pipe-pane` capture (`tests/fixtures/tmux/refly-api.log`, a copy of `../shared/fixtures/tmux/`):
//! each record gets the level a user expects, its own timestamp where it has one,
//! its trace ids as structured metadata, and is shipped unchanged.
//!
//! The lines below are the fixture's, as the source hands them over (terminal
//! sequences and `\r` removed). The whole-file test reads the capture itself when
//! it is there, joining indented lines as `multiline = "auto"` does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wisp_agent::config::LogFormat;
use wisp_agent::parse::{parse_line, Level, LineKind, ParseSettings, Transformer};
use wisp_agent::record::{Ack, Batch, SourceBatch, SourceInfo, SourceLine, Timestamp};

/// 2026-11-22T23:00:00Z: the capture's Pino times are a few seconds before.
const READ_TIME: Timestamp = Timestamp(1_795_388_400_000_000_000);

fn ms(ms: i64) -> Option<Timestamp> {
    Some(Timestamp(ms * 1_000_000))
}

#[test]
fn fixture_lines_get_the_level_kind_and_time_a_user_expects() {
    use Level::*;
    use LineKind::*;
    let table: &[(&str, LineKind, Level, Option<Timestamp>)] = &[
        ("cd /home/dev/refly-api && node app.js", Text, Unknown, None),
        (
            "[Nest] 3846  - 11/22/2026, 10:00:00 PM     LOG [NestFactory] Starting Nest application...",
            Text,
            Info,
            None,
        ),
        (
            r#"{"level":10,"time":1795388381726,"pid":3846,"hostname":"refly-vm","module":"boot","msg":"loading config from /app/.env"}"#,
            Json,
            Trace,
            ms(1795388381726),
        ),
        (
            r#"{"level":20,"time":1795388381727,"pid":3846,"hostname":"refly-vm","module":"boot","keys":42,"msg":"config loaded"}"#,
            Json,
            Debug,
            ms(1795388381727),
        ),
        (
            r#"{"level":35,"time":1795388381727,"pid":3846,"hostname":"refly-vm","user":"u-123","action":"login","msg":"audit event"}"#,
            Json,
            Info,
            ms(1795388381727),
        ),
        (
            r#"{"level":40,"time":1795388381727,"pid":3846,"hostname":"refly-vm","reqId":"req-7f3a","req":{"method":"POST","url":"/v1/canvas/sync"},"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b8","durationMs":1532,"msg":"slow request"}"#,
            Json,
            Warn,
            ms(1795388381727),
        ),
        (
            r#"{"level":60,"time":1795388381728,"pid":3846,"hostname":"refly-vm","err":{"type":"Error","message":"redis connection lost\n    after 3 retries","stack":"Error: redis connection lost\n    after 3 retries\n    at Object.<anonymous> (/home/dev/refly-api/app.js:17:11)"},"msg":"shutting down worker"}"#,
            Json,
            Fatal,
            ms(1795388381728),
        ),
        (
            "[Nest] 3846  - 11/22/2026, 10:00:05 PM    WARN [RoutesResolver] Deprecated route /v0/ still mapped",
            Text,
            Warn,
            None,
        ),
        ("Error: ECONNREFUSED 127.0.0.1:5432", Text, Error, None),
        ("plain text without a level", Text, Unknown, None),
        (
            r#"{"level":30,"time":1795388381732,"msg":"written in two parts{"level":30,"time":1795388381729,"pid":3846,"hostname":"refly-vm","msg2":"ünïcödé ✓ 日本語 🚀","emptyish":"","nested":{"a":{"b":{"c":[1,2,{"d":null}]}}},"msg":"unicode and nesting"}"#,
            JsonMiss,
            Info,
            ms(1795388381732),
        ),
        (
            "dev@refly-vm:/home/dev/refly-api$ node app.js 2>&1 | head -c 20000 | ./node_modules/.bin/pino-pretty",
            Text,
            Unknown,
            None,
        ),
        ("[22:59:44.776] TRACE (3859): loading config from /app/.env\n    module: \"boot\"", Text, Trace, None),
        ("[22:59:44.778] DEBUG (3859): config loaded", Text, Debug, None),
        ("[22:59:44.778] INFO (3859): Nest application successfully started", Text, Info, None),
        ("[22:59:44.778] USERLVL (3859): audit event\n    user: \"u-123\"", Text, Unknown, None),
        ("[22:59:44.778] WARN (3859): slow request", Text, Warn, None),
        (
            "[22:59:44.778] ERROR (3859): failed to parse canvas payload\n    err: {\n      \"type\": \"SyntaxError\",",
            Text,
            Error,
            None,
        ),
        ("[22:59:44.779] FATAL (3859): shutting down worker", Text, Fatal, None),
        ("dev@refly-vm:/home/dev/refly-api$ ", Text, Unknown, None),
    ];
    for (line, kind, level, ts) in table {
        let p = parse_line(line, LogFormat::Auto, &[]);
        assert_eq!(
            (p.kind, p.level, p.timestamp),
            (*kind, *level, *ts),
            "{line}"
        );
    }
}

#[test]
fn both_trace_id_spellings_become_structured_metadata() {
    let mut t = transformer();
    let batch = ship(
        &mut t,
        &[
            r#"{"level":30,"time":1795388381727,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","trace_flags":"01","msg":"request received"}"#,
            r#"{"level":40,"time":1795388381727,"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b8","msg":"slow request"}"#,
            "plain text without a level",
        ],
        &[],
    );
    let meta: Vec<_> = batch
        .records
        .iter()
        .map(|r| r.structured_metadata.clone())
        .collect();
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        meta,
        [
            vec![
                pair("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
                pair("span_id", "00f067aa0ba902b7")
            ],
            vec![
                pair("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
                pair("span_id", "00f067aa0ba902b8")
            ],
            vec![],
        ]
    );
    // Unbounded ids never become labels.
    assert!(batch.records[0].labels.get("trace_id").is_none());
}

fn transformer() -> Transformer {
    Transformer::new(ParseSettings {
        hostname: "vm1".into(),
        agent_labels: vec![],
        max_label_values: 50,
        max_age: Duration::from_secs(7 * 86_400),
        max_ahead: Duration::from_secs(600),
    })
}

fn ship(t: &mut Transformer, lines: &[&str], label_fields: &[&str]) -> Batch {
    t.transform(SourceBatch {
        source: Arc::new(SourceInfo {
            job: "refly-api".into(),
            filename: Some("/tmp/alloy/logs/refly/api.log".into()),
            labels: vec![],
            format: LogFormat::Auto,
            label_fields: label_fields.iter().map(|f| f.to_string()).collect(),
            trace_context: None,
            owner: wisp_agent::record::Owner::UNKNOWN,
        }),
        lines: lines
            .iter()
            .map(|l| SourceLine {
                text: l.to_string(),
                read_time: READ_TIME,
            })
            .collect(),
        ack: Ack::none(),
    })
}

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tmux/refly-api.log")
}

/// What the source does before the transform stage, just enough for this file:
/// drop CSI and OSC sequences, keep what follows the last `\r`, join indented
/// lines to the record before (a line starting with `{` always starts one).
fn records_as_the_source_hands_them(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut records: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = strip_sequences(line);
        let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
        if line.is_empty() {
            continue;
        }
        match records.last_mut() {
            Some(prev) if line.starts_with([' ', '\t']) => {
                prev.push('\n');
                prev.push_str(line);
            }
            _ => records.push(line.to_string()),
        }
    }
    records
}

fn strip_sequences(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_whole_capture_is_labelled_as_its_readme_says() {
    let path = fixture_path();
    let raw = std::fs::read(&path).expect("the fixture is part of the repository");
    let records = records_as_the_source_hands_them(&raw);
    let lines: Vec<&str> = records.iter().map(String::as_str).collect();
    let mut t = transformer();
    let batch = ship(&mut t, &lines, &["hostname"]);
    let got: Vec<(&str, bool)> = batch
        .records
        .iter()
        .map(|r| {
            (
                r.labels.get("level").unwrap_or("none"),
                // Read-time stamps are the read time plus a nanosecond per
                // line before them (they are unique within the source).
                r.timestamp.0.abs_diff(READ_TIME.0) >= 1_000,
            )
        })
        .collect();
    let (own, read) = (true, false);
    #[rustfmt::skip]
    let want = vec![
        ("unknown", read),                                  // cd … && node app.js
        ("info", read), ("info", read),                     // Nest LOG
        ("trace", own), ("debug", own), ("info", own),      // Pino 10, 20, 30
        ("info", own), ("info", own), ("warn", own),        // 35 (audit), 30, 40
        ("error", own), ("fatal", own),                     // 50, 60
        ("warn", read),                                     // Nest WARN
        ("error", read),                                    // Error: ECONNREFUSED
        ("unknown", read),                                  // plain text
        ("info", own),                                      // interleaved: miss
        ("info", own),                                      // huge line + the interleaved tail: miss
        ("info", own),                                      // bye
        ("unknown", read),                                  // prompt + pino-pretty command
        ("info", read), ("info", read),                     // Nest LOG
        ("trace", read), ("debug", read), ("info", read),   // pino-pretty
        ("unknown", read),                                  // USERLVL (custom level)
        ("info", read), ("warn", read), ("error", read), ("fatal", read),
        ("warn", read),                                     // Nest WARN
        ("error", read),                                    // Error: ECONNREFUSED
        ("unknown", read),                                  // plain text
        ("info", own),                                      // interleaved: miss
        ("info", own),                                      // huge line cut off: miss
        ("unknown", read),                                  // the final prompt
    ];
    assert_eq!(got, want);
    for (r, l) in batch.records.iter().zip(&records) {
        assert_eq!(&r.line, l);
    }
    let c = t.counters().snapshot();
    assert_eq!((c.lines, c.json, c.parse_misses), (34, 9, 4));
    assert_eq!(c.timestamps_out_of_window, 0);
    // The configured field is promoted where the line has it, and only there.
    assert_eq!(batch.records[3].labels.get("hostname"), Some("refly-vm"));
    assert_eq!(batch.records[1].labels.get("hostname"), None);
}
