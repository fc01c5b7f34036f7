//! One line, read: its kind (JSON object, logfmt, text), level, own timestamp,
//! configured label fields and trace/span ids. Pure and allocation-light: the
//! result borrows from the line where it can.
//!
//! This file depends only on its sibling scanners, `record::Timestamp` and
//! `config::LogFormat`, so the fuzz target (`fuzz/`) can compile it without the
//! rest of the agent.

use std::borrow::Cow;

use super::level::Level;
use super::{json, logfmt, text};
use crate::config::LogFormat;
use crate::record::Timestamp;

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
