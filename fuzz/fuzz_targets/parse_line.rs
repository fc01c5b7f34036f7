//! Fuzzes the line parser (`src/parse/line.rs` and the scanners it calls) with
//! arbitrary bytes, decoded lossily as the tailer decodes them. Checks, beyond
//! "never panics": a line serde_json accepts as an object is never a parse miss,
//! the label slots match the configured fields, and a line that does not open
//! with `{` is never taken for JSON in `auto`.
//!
//! The parser's source files are compiled straight into this target (below), with
//! two small stand-ins for the agent's `record::Timestamp` and
//! `config::LogFormat`: depending on the whole agent would build its network
//! stack (tokio, reqwest, tonic, rustls) with fuzzing instrumentation, which takes
//! minutes; this builds in seconds. A variant added to the real `LogFormat` and
//! handled in `line.rs` fails this build until it is added here too.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/parse/json/mod.rs"]
mod json;
#[path = "../../src/parse/level.rs"]
mod level;
#[path = "../../src/parse/line.rs"]
mod line;
#[path = "../../src/parse/logfmt.rs"]
mod logfmt;
#[path = "../../src/parse/text.rs"]
mod text;
#[path = "../../src/parse/timestamp.rs"]
mod timestamp;

use line::{parse_line, Fields, LineKind};

/// Stand-in for `wisp_agent::record`.
mod record {
    /// Nanoseconds since the Unix epoch.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct Timestamp(pub i64);
}

/// Stand-in for `wisp_agent::config`.
mod config {
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub enum LogFormat {
        #[default]
        Auto,
        Pino,
        Json,
        Logfmt,
        Text,
    }
}

use config::LogFormat;

const FORMATS: [LogFormat; 5] = [
    LogFormat::Auto,
    LogFormat::Pino,
    LogFormat::Json,
    LogFormat::Logfmt,
    LogFormat::Text,
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fields = [
        "service".to_string(),
        "level".to_string(),
        "a.b".to_string(),
    ];
    let is_object = matches!(
        serde_json::from_str::<serde_json::Value>(&text),
        Ok(serde_json::Value::Object(_))
    );
    for format in FORMATS {
        let parsed = parse_line(&text, format, &fields);
        assert_eq!(parsed.label_values.len(), fields.len());
        let json_format = matches!(format, LogFormat::Auto | LogFormat::Json | LogFormat::Pino);
        if is_object && json_format {
            assert_eq!(
                parsed.kind,
                LineKind::Json,
                "valid object counted as a miss"
            );
        }
        if format == LogFormat::Auto && !text.trim_start().starts_with('{') {
            assert!(matches!(parsed.kind, LineKind::Text | LineKind::Logfmt));
        }
        if format == LogFormat::Text {
            assert_eq!(parsed.kind, LineKind::Text);
        }
    }
    // The JSON reader alone, on the raw text: never panics, whatever it returns.
    let mut out = Fields::new(fields.len());
    let _ = json::scan(&text, &fields, &mut out);
});
