//! Joins physical lines into records (`[[files]].multiline`), and says how far the
//! source may checkpoint: never past the start of a record still waiting for its
//! continuation, so a restart neither loses it nor ships half of it twice.
//!
//! The modes (`crate::config::Multiline`):
//! - `none`: every line is a record, emitted at once; nothing is ever pending.
//! - `auto` (the default): a line that starts with a space or a tab joins the
//!   record before it (pino-pretty fields, `    at …` stack frames, the indented
//!   lines of a Python traceback); a line that starts with `}` or `]` joins too, so
//!   a pretty-printed JSON object (`{`, indented fields, `}`) stays whole; any other
//!   line starts a record. A line that starts with `{` always starts a record, and
//!   when it also ends with `}` it is a complete JSON document (a Pino line): it is
//!   emitted at once and nothing joins it, so JSON lines are never joined to each
//!   other nor to an indented line after them (such as the rest of a line two
//!   writers interleaved), and a stream of Pino lines never waits for a timeout.
//!   Note that a Python traceback's last line (`ValueError: x`) is not indented:
//!   with `auto` it is a record of its own; a `start` pattern that matches the
//!   program's log prefix joins it to the traceback.
//! - `{ start = REGEX }`: a record starts at a line matching the pattern; any other
//!   line joins the record before it. Lines before the first match are records of
//!   their own.
//!
//! A joined record is its lines joined with `\n`. Bounds: at most `max_lines`
//! lines and `max_bytes` bytes (newlines included). A line that would take a record
//! past either bound is neither cut nor dropped: the record is finished without it
//! and the line becomes the first line of the next record (which then collects the
//! continuation lines after it). A record that can no longer grow (it reached a
//! bound) is emitted at once instead of waiting. A single line longer than
//! `max_bytes` is a record by itself: cutting lines is the reader's job.
//!
//! A pending record is finished by the next line that starts a record, by
//! [`Joiner::flush_due`] once `timeout` has passed since its last line (the caller
//! wakes at [`Joiner::deadline`]), or by [`Joiner::flush`] at end of input or
//! shutdown. Time is passed in, so tests need no sleeping.
//!
//! Offsets: each line is pushed with its `end_offset` (just past its `\n`); a line
//! starts where the line pushed before it ended, and the first line after
//! [`Joiner::new`] starts at 0, after [`Joiner::reset`] at the offset given (a
//! checkpoint resumed, or a file truncated or replaced). Records are emitted in
//! the order of their lines, so their end offsets only grow, and
//! [`Joiner::pending_start`] is where the caller's checkpoint must stop.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{FileConfig, Multiline};

/// A finished record: its lines joined with `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub text: String,
    /// Byte offset in the source just past the record's last line (its newline).
    pub end_offset: u64,
}

/// Bounds of one record.
#[derive(Clone, Debug)]
pub struct JoinerSettings {
    pub mode: Multiline,
    /// At most this many lines in one record (`multiline_max_lines`).
    pub max_lines: usize,
    /// At most this many bytes in one record (`max_line_bytes`).
    pub max_bytes: usize,
    /// A pending record is finished after this silence (`multiline_timeout`).
    pub timeout: Duration,
}

impl JoinerSettings {
    /// The settings of one `[[files]]` entry.
    pub fn from_file_config(file: &FileConfig) -> Self {
        Self {
            mode: file.multiline.clone(),
            max_lines: file.multiline_max_lines,
            max_bytes: file.max_line_bytes.as_usize(),
            timeout: file.multiline_timeout.get(),
        }
    }
}

/// The joining state of one source (one file, or one exec stream).
#[derive(Debug)]
pub struct Joiner {
    settings: JoinerSettings,
    /// Where the next pushed line starts: the end of the line pushed before it.
    next_start: u64,
    /// `start` mode: has a line matched yet? Before that, lines stand alone.
    seen_start: bool,
    /// The record still open to continuation lines. Never one that cannot grow.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    text: String,
    lines: usize,
    /// Offset of the record's first line: checkpoints stop here.
    start: u64,
    end: u64,
    last_line_at: Instant,
}

/// What a line does to the record before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A record by itself, finished at once (mode `none`, a complete JSON line).
    Alone,
    /// Starts a record that later lines may join.
    Head,
    /// Joins the pending record, or heads one when there is none.
    Continuation,
}

impl Joiner {
    /// A joiner whose first line starts at offset 0; see [`Joiner::reset`] to start
    /// elsewhere.
    pub fn new(settings: JoinerSettings) -> Self {
        Self {
            settings,
            next_start: 0,
            seen_start: false,
            pending: None,
        }
    }

    /// Starts over at `start_offset` (a resumed checkpoint, a truncated or
    /// replaced file): the next line pushed starts there. A pending record is
    /// discarded, so call [`Joiner::flush`] first to ship it.
    pub fn reset(&mut self, start_offset: u64) {
        self.next_start = start_offset;
        self.seen_start = false;
        self.pending = None;
    }

    /// Feeds one line (already rendered, without its newline) that ends at
    /// `end_offset`; appends to `out` every record this line finishes (the pending
    /// one, and this line's own when it cannot grow).
    pub fn push(&mut self, text: String, end_offset: u64, now: Instant, out: &mut Vec<Joined>) {
        let start = std::mem::replace(&mut self.next_start, end_offset);
        match self.role(&text) {
            Role::Alone => {
                self.flush(out);
                out.push(Joined { text, end_offset });
            }
            Role::Head => {
                self.flush(out);
                self.begin(text, start, end_offset, now, out);
            }
            Role::Continuation => {
                let max_lines = self.settings.max_lines;
                let max_bytes = self.settings.max_bytes;
                match &mut self.pending {
                    Some(p)
                        if p.lines < max_lines && p.text.len() + 1 + text.len() <= max_bytes =>
                    {
                        p.text.push('\n');
                        p.text.push_str(&text);
                        p.lines += 1;
                        p.end = end_offset;
                        p.last_line_at = now;
                        if !self.can_grow() {
                            self.flush(out);
                        }
                    }
                    // Nothing to join, or past a bound: this line heads a record.
                    _ => {
                        self.flush(out);
                        self.begin(text, start, end_offset, now, out);
                    }
                }
            }
        }
    }

    /// Finishes the pending record if it has waited `timeout` since its last line.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<Joined>) {
        if self.deadline().is_some_and(|due| now >= due) {
            self.flush(out);
        }
    }

    /// Finishes the pending record now (end of input, shutdown).
    pub fn flush(&mut self, out: &mut Vec<Joined>) {
        if let Some(p) = self.pending.take() {
            out.push(Joined {
                text: p.text,
                end_offset: p.end,
            });
        }
    }

    /// When the pending record becomes due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.last_line_at + self.settings.timeout)
    }

    /// The offset where the pending record starts: checkpoints stop there.
    pub fn pending_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.start)
    }

    /// Is a record waiting for its continuation? A pending record can always still
    /// grow: one that cannot (a bound reached, mode `none`, a complete JSON line)
    /// is emitted at once. So when this is false, every line pushed so far has been
    /// emitted and nothing needs a timer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn role(&mut self, text: &str) -> Role {
        match &self.settings.mode {
            Multiline::None => Role::Alone,
            Multiline::Auto => match text.as_bytes().first() {
                Some(b' ' | b'\t' | b'}' | b']') => Role::Continuation,
                Some(b'{') if ends_with_brace(text) => Role::Alone,
                _ => Role::Head,
            },
            Multiline::Start(pattern) => {
                if pattern.is_match(text) {
                    self.seen_start = true;
                    Role::Head
                } else if self.seen_start {
                    Role::Continuation
                } else {
                    Role::Alone
                }
            }
        }
    }

    fn begin(
        &mut self,
        text: String,
        start: u64,
        end_offset: u64,
        now: Instant,
        out: &mut Vec<Joined>,
    ) {
        self.pending = Some(Pending {
            text,
            lines: 1,
            start,
            end: end_offset,
            last_line_at: now,
        });
        if !self.can_grow() {
            self.flush(out);
        }
    }

    /// Could a continuation line still join the pending record? The shortest one
    /// is `\n` plus one character in `auto` (it starts with a space), `\n` alone
    /// with a `start` pattern (an empty line may join).
    fn can_grow(&self) -> bool {
        let shortest = match self.settings.mode {
            Multiline::Start(_) => 1,
            _ => 2,
        };
        self.pending.as_ref().is_some_and(|p| {
            p.lines < self.settings.max_lines
                && p.text.len().saturating_add(shortest) <= self.settings.max_bytes
        })
    }
}

/// Does `text` end with `}`, trailing ASCII blanks aside? Looks at bytes from the
/// end only: this runs on every JSON line, and `auto` must cost next to nothing.
fn ends_with_brace(text: &str) -> bool {
    text.as_bytes()
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        == Some(&b'}')
}

#[cfg(test)]
mod tests {
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
}
