//! Understanding each line: its kind (JSON, logfmt, text), its level, its own
//! timestamp, the fields promoted to labels and the trace/span ids; and the
//! transform stage that turns a source's raw lines into labelled records.
//!
//! Promises:
//! - Every line is shipped, unchanged, whatever it holds: a line that starts with
//!   `{` but is not a valid JSON object (truncated, two writers interleaved) is
//!   shipped as text and counted as a parse miss; what was read before the break
//!   (a level, a time) is kept, else the text rules give the level.
//! - The hot path ([`json::scan`]) reads only the keys it needs and never builds a
//!   JSON tree; the common line costs one `Arc` clone for its labels.
//! - Nothing here panics on any input, and all state is bounded (see
//!   [`labels`]).
//!
//! Rules, in one place: level per [`level`] (field values) and [`text`] (plain
//! lines); time per [`timestamp`]; a time outside `[read_time - max_age,
//! read_time + max_ahead]` falls back to the read time and is counted.

pub mod json;
pub mod labels;
pub mod level;
pub mod logfmt;
pub mod text;
pub mod timestamp;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, LogFormat};
use crate::record::{Batch, LogRecord, SourceBatch, Timestamp};

pub use level::Level;

use labels::{Admitted, CardinalityGuard, LabelCache, OVERFLOW_VALUE};

/// What the transform stage needs from the configuration.
#[derive(Clone, Debug)]
pub struct ParseSettings {
    /// The `host` label.
    pub hostname: String,
    /// `[agent].labels`: on every stream.
    pub agent_labels: Vec<(String, String)>,
    /// At most this many distinct values per promoted label.
    pub max_label_values: usize,
    /// A line's timestamp older than this (relative to its read time) is not used.
    pub max_age: Duration,
    /// A line's timestamp further ahead than this is not used.
    pub max_ahead: Duration,
}

impl ParseSettings {
    /// From the configuration; an empty `agent.hostname` means the VM's hostname.
    pub fn from_config(config: &Config) -> Self {
        let hostname = if config.agent.hostname.is_empty() {
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            config.agent.hostname.clone()
        };
        Self {
            hostname,
            agent_labels: config
                .agent
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_label_values: config.agent.max_label_values,
            max_age: config.agent.timestamp_max_age.get(),
            max_ahead: config.agent.timestamp_max_ahead.get(),
        }
    }
}

/// How a line was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineKind {
    /// A valid JSON object.
    Json,
    /// `key=value` pairs.
    Logfmt,
    /// Plain text.
    Text,
    /// Meant to be JSON (starts with `{`, or the source's format is `json`/`pino`)
    /// but is not a valid object: shipped as text, counted as a parse miss.
    JsonMiss,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Json => "json",
            LineKind::Logfmt => "logfmt",
            LineKind::Text => "text",
            LineKind::JsonMiss => "json-miss",
        }
    }
}

/// The fields a structured line yields, filled as a scanner meets them (the first
/// occurrence of a key wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub level: Option<Level>,
    pub time: Option<Timestamp>,
    pub trace_id: Option<Cow<'a, str>>,
    pub span_id: Option<Cow<'a, str>>,
    /// One slot per configured label field, in the order configured.
    pub labels: Vec<Option<Cow<'a, str>>>,
}

impl Fields<'_> {
    pub fn new(label_fields: usize) -> Self {
        Self {
            labels: vec![None; label_fields],
            ..Self::default()
        }
    }
}

/// What [`parse_line`] found in a line. Borrows from the line where it can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub kind: LineKind,
    pub level: Level,
    /// The line's own timestamp, not yet checked against the window.
    pub timestamp: Option<Timestamp>,
    /// Values of the configured label fields, one slot per field (`None`: absent,
    /// or not a string, number or boolean).
    pub label_values: Vec<Option<Cow<'a, str>>>,
    /// Structured metadata `trace_id` (from `traceId` or `trace_id`).
    pub trace_id: Option<Cow<'a, str>>,
    /// Structured metadata `span_id` (from `spanId` or `span_id`).
    pub span_id: Option<Cow<'a, str>>,
}

/// Reads one line as `format` says. `auto` decides per line: a first non-space
/// byte `{` means JSON, a leading `key=` pair logfmt, anything else text. `json`
/// and `pino` (the same rules; Pino is JSON with numeric levels) treat every line
/// as JSON and count those that are not as misses. `logfmt` reads pairs where
/// there are any and treats other lines (stack traces, banners) as text.
pub fn parse_line<'a>(text: &'a str, format: LogFormat, label_fields: &[String]) -> Parsed<'a> {
    let opens_object = text.trim_start().starts_with('{');
    let kind = match format {
        LogFormat::Text => LineKind::Text,
        LogFormat::Json | LogFormat::Pino => LineKind::Json,
        LogFormat::Auto if opens_object => LineKind::Json,
        LogFormat::Auto | LogFormat::Logfmt if logfmt::looks_like_logfmt(text) => LineKind::Logfmt,
        LogFormat::Auto | LogFormat::Logfmt => LineKind::Text,
    };
    let mut fields = Fields::new(label_fields.len());
    let kind = match kind {
        LineKind::Json => match json::scan(text, label_fields, &mut fields) {
            Ok(()) => LineKind::Json,
            Err(_) => LineKind::JsonMiss,
        },
        LineKind::Logfmt => {
            logfmt::scan(text, label_fields, &mut fields);
            LineKind::Logfmt
        }
        other => other,
    };
    let level = match (kind, fields.level) {
        (_, Some(level)) => level,
        // A valid object that names no level has none: its text is data, not prose.
        (LineKind::Json, None) => Level::Unknown,
        _ => text::level_of_text(text),
    };
    Parsed {
        kind,
        level,
        timestamp: fields.time,
        label_values: fields.labels,
        trace_id: fields.trace_id,
        span_id: fields.span_id,
    }
}

/// Counters of the transform stage, for the admin endpoint.
#[derive(Debug, Default)]
pub struct ParseCounters {
    lines: AtomicU64,
    json: AtomicU64,
    logfmt: AtomicU64,
    text: AtomicU64,
    parse_misses: AtomicU64,
    timestamps_out_of_window: AtomicU64,
    label_values_overflowed: AtomicU64,
}

/// A point-in-time copy of [`ParseCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseCountersSnapshot {
    /// Lines transformed.
    pub lines: u64,
    /// Lines read as a JSON object.
    pub json: u64,
    /// Lines read as logfmt.
    pub logfmt: u64,
    /// Lines read as plain text (parse misses included).
    pub text: u64,
    /// Lines meant to be JSON that were not a valid object (shipped as text).
    pub parse_misses: u64,
    /// Lines whose own timestamp was outside the window: shipped at the read time.
    pub timestamps_out_of_window: u64,
    /// Promoted label values replaced by `other` (cardinality guard).
    pub label_values_overflowed: u64,
}

impl ParseCountersSnapshot {
    /// Each counter with its metric name, `wisp_parse_<what>_total`.
    pub fn metrics(&self) -> [(&'static str, u64); 7] {
        [
            ("wisp_parse_lines_total", self.lines),
            ("wisp_parse_json_lines_total", self.json),
            ("wisp_parse_logfmt_lines_total", self.logfmt),
            ("wisp_parse_text_lines_total", self.text),
            ("wisp_parse_misses_total", self.parse_misses),
            (
                "wisp_parse_timestamps_out_of_window_total",
                self.timestamps_out_of_window,
            ),
            (
                "wisp_parse_label_values_overflowed_total",
                self.label_values_overflowed,
            ),
        ]
    }
}

impl ParseCounters {
    pub fn snapshot(&self) -> ParseCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ParseCountersSnapshot {
            lines: get(&self.lines),
            json: get(&self.json),
            logfmt: get(&self.logfmt),
            text: get(&self.text),
            parse_misses: get(&self.parse_misses),
            timestamps_out_of_window: get(&self.timestamps_out_of_window),
            label_values_overflowed: get(&self.label_values_overflowed),
        }
    }

    fn add(&self, d: &ParseCountersSnapshot) {
        let add = |c: &AtomicU64, n: u64| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.lines, d.lines);
        add(&self.json, d.json);
        add(&self.logfmt, d.logfmt);
        add(&self.text, d.text);
        add(&self.parse_misses, d.parse_misses);
        add(&self.timestamps_out_of_window, d.timestamps_out_of_window);
        add(&self.label_values_overflowed, d.label_values_overflowed);
    }
}

/// The transform stage: raw lines in, labelled records out.
#[derive(Debug)]
pub struct Transformer {
    settings: ParseSettings,
    counters: Arc<ParseCounters>,
    guard: CardinalityGuard,
    cache: LabelCache,
}

impl Transformer {
    pub fn new(settings: ParseSettings) -> Self {
        Self {
            guard: CardinalityGuard::new(settings.max_label_values),
            settings,
            counters: Arc::default(),
            cache: LabelCache::default(),
        }
    }

    pub fn counters(&self) -> Arc<ParseCounters> {
        self.counters.clone()
    }

    /// Parses and labels every line of `batch`; the ack passes through. Each
    /// record keeps its line exactly as the source gave it.
    pub fn transform(&mut self, batch: SourceBatch) -> Batch {
        let src = batch.source;
        let mut counts = ParseCountersSnapshot::default();
        let entry = self
            .cache
            .source(&src, &self.settings.hostname, &self.settings.agent_labels);
        let mut records = Vec::with_capacity(batch.lines.len());
        for line in batch.lines {
            let (timestamp, labels, structured_metadata) = {
                let parsed = parse_line(&line.text, src.format, &src.label_fields);
                counts.lines += 1;
                match parsed.kind {
                    LineKind::Json => counts.json += 1,
                    LineKind::Logfmt => counts.logfmt += 1,
                    LineKind::Text => counts.text += 1,
                    LineKind::JsonMiss => {
                        counts.text += 1;
                        counts.parse_misses += 1;
                    }
                }
                let timestamp = match parsed.timestamp {
                    Some(ts)
                        if timestamp::within_window(
                            ts,
                            line.read_time,
                            self.settings.max_age,
                            self.settings.max_ahead,
                        ) =>
                    {
                        ts
                    }
                    Some(_) => {
                        counts.timestamps_out_of_window += 1;
                        line.read_time
                    }
                    None => line.read_time,
                };
                let labels = if parsed.label_values.iter().all(Option::is_none) {
                    entry.labels(parsed.level, &[])
                } else {
                    let mut promoted: Vec<Option<&str>> =
                        Vec::with_capacity(parsed.label_values.len());
                    for (name, value) in entry.promoted_names.iter().zip(&parsed.label_values) {
                        let value = value.as_deref().map(labels::label_value);
                        promoted.push(match value {
                            None | Some("") => None,
                            Some(v) => match self.guard.admit(name, v) {
                                Admitted::Value(v) => Some(v),
                                Admitted::Overflow { first } => {
                                    counts.label_values_overflowed += 1;
                                    if first {
                                        tracing::warn!(
                                            label = %name,
                                            limit = self.settings.max_label_values,
                                            "label {name} has more distinct values than \
                                             agent.max_label_values allows; further values \
                                             are shipped as \"{OVERFLOW_VALUE}\""
                                        );
                                    }
                                    Some(OVERFLOW_VALUE)
                                }
                            },
                        });
                    }
                    entry.labels(parsed.level, &promoted)
                };
                let mut metadata = Vec::new();
                if let Some(t) = parsed.trace_id.filter(|t| !t.is_empty()) {
                    metadata.push(("trace_id".to_owned(), t.into_owned()));
                }
                if let Some(s) = parsed.span_id.filter(|s| !s.is_empty()) {
                    metadata.push(("span_id".to_owned(), s.into_owned()));
                }
                (timestamp, labels, metadata)
            };
            records.push(LogRecord {
                timestamp,
                labels,
                structured_metadata,
                line: line.text,
            });
        }
        self.counters.add(&counts);
        Batch {
            records,
            ack: batch.ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Parsed<'_> {
        parse_line(line, LogFormat::Auto, &[])
    }

    #[test]
    fn auto_decides_per_line_between_json_logfmt_and_text() {
        let table = [
            (r#"{"level":40,"msg":"x"}"#, LineKind::Json, Level::Warn),
            (r#"  {"level":"error"}"#, LineKind::Json, Level::Error),
            ("level=debug msg=hi", LineKind::Logfmt, Level::Debug),
            (
                "ts=1 msg=\"no level\" ERROR",
                LineKind::Logfmt,
                Level::Error,
            ),
            ("WARN disk", LineKind::Text, Level::Warn),
            (
                r#"{"level":50,"msg":"trunc"#,
                LineKind::JsonMiss,
                Level::Error,
            ),
            (r#"{"msg":"ERROR","#, LineKind::JsonMiss, Level::Unknown),
            ("{ ERROR: not json", LineKind::JsonMiss, Level::Error),
            (
                r#"{"msg":"ERROR: inside data"}"#,
                LineKind::Json,
                Level::Unknown,
            ),
            ("[1,2,3]", LineKind::Text, Level::Unknown),
            ("", LineKind::Text, Level::Unknown),
        ];
        for (line, kind, level) in table {
            let p = parse(line);
            assert_eq!((p.kind, p.level), (kind, level), "{line:?}");
        }
    }

    #[test]
    fn explicit_formats_override_the_guess() {
        let p = parse_line("level=warn x", LogFormat::Text, &[]);
        assert_eq!((p.kind, p.level), (LineKind::Text, Level::Unknown));
        let p = parse_line("WARN not json", LogFormat::Json, &[]);
        assert_eq!((p.kind, p.level), (LineKind::JsonMiss, Level::Warn));
        let p = parse_line(r#"{"level":20}"#, LogFormat::Pino, &[]);
        assert_eq!((p.kind, p.level), (LineKind::Json, Level::Debug));
        let p = parse_line(r#"{"level":"warn"}"#, LogFormat::Logfmt, &[]);
        assert_eq!((p.kind, p.level), (LineKind::Text, Level::Unknown));
        let p = parse_line("    at foo (x.js:1:1)", LogFormat::Logfmt, &[]);
        assert_eq!(p.kind, LineKind::Text);
        let p = parse_line(r#"{"level":"warn"}"#, LogFormat::Text, &[]);
        assert_eq!((p.kind, p.level), (LineKind::Text, Level::Unknown));
    }

    #[test]
    fn trace_and_span_ids_in_either_spelling_are_found() {
        let p = parse(r#"{"traceId":"t1","spanId":"s1"}"#);
        assert_eq!(
            (p.trace_id.as_deref(), p.span_id.as_deref()),
            (Some("t1"), Some("s1"))
        );
        let p = parse(r#"{"trace_id":"t2","span_id":"s2"}"#);
        assert_eq!(
            (p.trace_id.as_deref(), p.span_id.as_deref()),
            (Some("t2"), Some("s2"))
        );
    }
}
