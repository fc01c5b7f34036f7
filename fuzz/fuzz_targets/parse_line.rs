//! Fuzzes the line parser and the transform stage with arbitrary bytes, decoded
//! lossily as the tailer decodes them. Checks, beyond "never panics": every line is
//! shipped unchanged, and a line serde_json accepts as an object is never a miss.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use wisp_agent::config::LogFormat;
use wisp_agent::parse::{parse_line, LineKind, ParseSettings, Transformer};
use wisp_agent::record::{Ack, SourceBatch, SourceInfo, SourceLine, Timestamp};

const FORMATS: [LogFormat; 5] = [
    LogFormat::Auto,
    LogFormat::Pino,
    LogFormat::Json,
    LogFormat::Logfmt,
    LogFormat::Text,
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let fields = vec!["service".to_string(), "level".to_string(), "a.b".to_string()];
    let is_object = matches!(
        serde_json::from_str::<serde_json::Value>(&text),
        Ok(serde_json::Value::Object(_))
    );
    for format in FORMATS {
        let parsed = parse_line(&text, format, &fields);
        assert_eq!(parsed.label_values.len(), fields.len());
        if is_object && matches!(format, LogFormat::Auto | LogFormat::Json | LogFormat::Pino) {
            assert_eq!(parsed.kind, LineKind::Json, "valid object counted as a miss");
        }
    }

    let mut transformer = Transformer::new(ParseSettings {
        hostname: "vm1".into(),
        agent_labels: vec![("env".into(), "fuzz".into())],
        max_label_values: 3,
        max_age: std::time::Duration::from_secs(7 * 86_400),
        max_ahead: std::time::Duration::from_secs(600),
    });
    let source = Arc::new(SourceInfo {
        job: "fuzz".into(),
        filename: Some("/tmp/fuzz.log".into()),
        labels: Vec::new(),
        format: LogFormat::Auto,
        label_fields: fields,
    });
    let batch = transformer.transform(SourceBatch {
        source,
        lines: vec![SourceLine {
            text: text.clone(),
            read_time: Timestamp(1_795_388_381_726_000_000),
        }],
        ack: Ack::none(),
    });
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].line, text);
    batch.ack.done();
});
