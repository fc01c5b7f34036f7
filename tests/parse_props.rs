//! Property tests of the line parser: whatever bytes arrive, nothing panics and
//! every line is shipped exactly as it came; valid JSON objects are always read as
//! JSON with the level they hold, and cut-off objects are always parse misses.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use wisp_agent::config::LogFormat;
use wisp_agent::parse::{parse_line, Level, LineKind, ParseSettings, Transformer};
use wisp_agent::record::{Ack, SourceBatch, SourceInfo, SourceLine, Timestamp};

const FORMATS: [LogFormat; 5] = [
    LogFormat::Auto,
    LogFormat::Pino,
    LogFormat::Json,
    LogFormat::Logfmt,
    LogFormat::Text,
];

const READ_TIME: Timestamp = Timestamp(1_795_388_381_726_000_000);

fn transformer() -> Transformer {
    Transformer::new(ParseSettings {
        hostname: "vm1".into(),
        agent_labels: vec![("env".into(), "test".into())],
        max_label_values: 4,
        max_age: Duration::from_secs(7 * 86_400),
        max_ahead: Duration::from_secs(600),
    })
}

fn source(format: LogFormat) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        job: "props".into(),
        filename: Some("/tmp/props.log".into()),
        labels: vec![("team".into(), "core".into())],
        format,
        label_fields: vec!["service".into(), "msg".into()],
        trace_context: None,
        owner: wisp_agent::record::Owner::UNKNOWN,
    })
}

/// Ships `lines` through a transformer and checks each record against its line.
fn ship_and_check(lines: &[String], format: LogFormat) -> Result<(), TestCaseError> {
    let mut t = transformer();
    let batch = t.transform(SourceBatch {
        source: source(format),
        lines: lines
            .iter()
            .map(|l| SourceLine {
                text: l.clone(),
                read_time: READ_TIME,
            })
            .collect(),
        ack: Ack::none(),
    });
    prop_assert_eq!(batch.records.len(), lines.len());
    for (record, line) in batch.records.iter().zip(lines) {
        prop_assert_eq!(&record.line, line);
        let level = record.labels.get("level").unwrap_or("missing");
        prop_assert!(
            Level::ALL.iter().any(|l| l.as_str() == level),
            "level label {level:?}"
        );
        for (name, value) in record.labels.iter() {
            let b = name.as_bytes();
            prop_assert!(!b.is_empty() && !b[0].is_ascii_digit(), "name {name:?}");
            prop_assert!(b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_'));
            prop_assert!(!value.is_empty() && value.len() <= 1024);
        }
    }
    let counts = t.counters().snapshot();
    prop_assert_eq!(counts.lines, lines.len() as u64);
    prop_assert_eq!(counts.json + counts.logfmt + counts.text, counts.lines);
    Ok(())
}

fn is_level_key(k: &str) -> bool {
    ["level", "lvl", "severity", "levelname", "log.level", "log"]
        .iter()
        .any(|l| l.eq_ignore_ascii_case(k))
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("msg".to_string()),
        Just("time".to_string()),
        Just("traceId".to_string()),
        Just("service".to_string()),
        "[a-zA-Z_@.]{1,10}",
        any::<String>(),
    ]
    .prop_filter("not a level key", |k| !is_level_key(k))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[{}\\[\\]\":,\\\\ ]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The level field of a generated object, and the level it must give.
fn level_field() -> impl Strategy<Value = (Option<Value>, Level)> {
    prop_oneof![
        Just((None, Level::Unknown)),
        any::<i64>().prop_map(|n| (Some(json!(n)), Level::from_number(n))),
        prop::sample::select(vec![
            ("info", Level::Info),
            ("WARNING", Level::Warn),
            ("Err", Level::Error),
            ("crit", Level::Fatal),
            ("dbg", Level::Debug),
            ("TRACE", Level::Trace),
            ("nonsense", Level::Unknown),
        ])
        .prop_map(|(s, l)| (Some(json!(s)), l)),
    ]
}

fn object() -> impl Strategy<Value = (Map<String, Value>, Level)> {
    (
        prop::collection::btree_map(key(), json_value(), 0..8),
        level_field(),
    )
        .prop_map(|(fields, (level, want))| {
            let mut m = Map::new();
            if let Some(l) = level {
                m.insert("level".into(), l);
            }
            m.extend(fields);
            (m, want)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_are_shipped_unchanged(
        bytes in prop::collection::vec(any::<u8>(), 0..400)
    ) {
        let line = String::from_utf8_lossy(&bytes).into_owned();
        for format in FORMATS {
            let p = parse_line(&line, format, &["service".to_string()]);
            prop_assert_eq!(p.label_values.len(), 1);
        }
        for format in FORMATS {
            ship_and_check(std::slice::from_ref(&line), format)?;
        }
    }

    #[test]
    fn arbitrary_strings_never_panic_and_are_shipped_unchanged(
        lines in prop::collection::vec(any::<String>(), 0..8)
    ) {
        ship_and_check(&lines, LogFormat::Auto)?;
    }

    #[test]
    fn valid_objects_are_json_with_the_level_they_hold((obj, want) in object(), pretty in any::<bool>()) {
        let line = if pretty {
            serde_json::to_string_pretty(&obj).unwrap()
        } else {
            serde_json::to_string(&obj).unwrap()
        };
        for format in [LogFormat::Auto, LogFormat::Json, LogFormat::Pino] {
            let p = parse_line(&line, format, &[]);
            prop_assert_eq!(p.kind, LineKind::Json, "{}", line);
            prop_assert_eq!(p.level, want, "{}", line);
        }
        ship_and_check(&[line], LogFormat::Auto)?;
    }

    #[test]
    fn cut_off_objects_are_misses_and_shipped_unchanged(
        (obj, _) in object(),
        cut in any::<prop::sample::Index>(),
    ) {
        let line = serde_json::to_string(&obj).unwrap();
        let mut at = cut.index(line.len());
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        let cut_line = &line[..at];
        let p = parse_line(cut_line, LogFormat::Auto, &[]);
        if cut_line.is_empty() {
            prop_assert_eq!(p.kind, LineKind::Text);
        } else {
            prop_assert_eq!(p.kind, LineKind::JsonMiss, "{}", cut_line);
        }
        ship_and_check(&[cut_line.to_string()], LogFormat::Auto)?;
    }

    #[test]
    fn interleaved_writers_are_shipped_unchanged(
        (a, _) in object(),
        (b, _) in object(),
        at in any::<prop::sample::Index>(),
    ) {
        let a = serde_json::to_string(&a).unwrap();
        let b = serde_json::to_string(&b).unwrap();
        let mut at = at.index(a.len());
        while !a.is_char_boundary(at) {
            at -= 1;
        }
        let line = format!("{}{}{}", &a[..at], b, &a[at..]);
        ship_and_check(&[line], LogFormat::Auto)?;
    }

    #[test]
    fn pino_lines_give_their_level_and_time(
        level in 0i64..100,
        ms in 1_700_000_000_000i64..1_900_000_000_000,
        msg in any::<String>(),
    ) {
        let line = json!({"level": level, "time": ms, "pid": 1, "msg": msg}).to_string();
        let p = parse_line(&line, LogFormat::Auto, &[]);
        prop_assert_eq!(p.kind, LineKind::Json);
        prop_assert_eq!(p.level, Level::from_number(level));
        prop_assert_eq!(p.timestamp, Some(Timestamp(ms * 1_000_000)));
    }
}

#[test]
fn deeply_nested_and_huge_lines_are_shipped_without_blowing_the_stack() {
    let deep = format!("{{\"level\":50,\"a\":{}", "[".repeat(1_000_000));
    let huge_number = format!("{{\"level\":{}}}", "9".repeat(100_000));
    let nuls = "{\"level\":40,\"msg\":\"\0\0\0\"}\0".to_string();
    let lines = vec![deep, huge_number, nuls];
    let mut t = transformer();
    let batch = t.transform(SourceBatch {
        source: source(LogFormat::Auto),
        lines: lines
            .iter()
            .map(|l| SourceLine {
                text: l.clone(),
                read_time: READ_TIME,
            })
            .collect(),
        ack: Ack::none(),
    });
    let levels: Vec<_> = batch
        .records
        .iter()
        .map(|r| r.labels.get("level").unwrap_or(""))
        .collect();
    assert_eq!(levels, ["error", "fatal", "warn"]);
    for (r, l) in batch.records.iter().zip(&lines) {
        assert_eq!(&r.line, l);
    }
    assert_eq!(t.counters().snapshot().parse_misses, 2);
}

/// The members of an object as written, duplicate keys and all, with the keys the
/// parser looks for in several spellings.
fn members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "level",
            "LEVEL",
            "lvl",
            "severity",
            "time",
            "ts",
            "Timestamp",
            "traceId",
            "trace_id",
            "spanId",
            "span_id",
            "msg",
            "pid",
        ])
        .prop_map(str::to_string),
        key(),
    ];
    let value = prop_oneof![
        prop::sample::select(vec!["info", "warn", "ERROR", "dbg", "nonsense", "abc-123"])
            .prop_map(|s| json!(s)),
        (0i64..100).prop_map(|n| json!(n)),
        (1_700_000_000_000i64..1_900_000_000_000).prop_map(|n| json!(n)),
        Just(json!("2026-11-22T22:59:41.726Z")),
        json_value(),
    ];
    prop::collection::vec((key, value), 0..10)
}

/// What a level or time member's value gives, read from serde_json's `Value`
/// (a fraction is cut, a huge number saturates).
fn level_from(v: &Value) -> Option<Level> {
    match v {
        Value::String(s) => Level::from_name(s),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Level::from_number),
        _ => None,
    }
}

fn time_from(v: &Value) -> Option<Timestamp> {
    use wisp_agent::parse::timestamp::{from_epoch_number, from_string};
    match v {
        Value::String(s) => from_string(s),
        Value::Number(n) => from_epoch_number(&n.to_string()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The parser beside serde_json on valid objects written member by member:
    /// level, time and ids are those of the first member that gives one, whatever
    /// follows (a later duplicate never overrides), and the line is JSON.
    #[test]
    fn valid_objects_read_as_serde_json_reads_them_first_occurrence_winning(
        members in members()
    ) {
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
            .collect();
        let line = format!("{{{}}}", body.join(","));
        let reparsed: Value = serde_json::from_str(&line).unwrap();
        prop_assert!(reparsed.is_object());
        let first = |keys: &[&str], ci: bool, get: &dyn Fn(&Value) -> Option<String>| {
            members.iter().find_map(|(k, v)| {
                let hit = keys.iter().any(|w| if ci { w.eq_ignore_ascii_case(k) } else { w == k });
                if hit { get(v) } else { None }
            })
        };
        let level = members.iter().find_map(|(k, v)| {
            ["level", "lvl", "severity"].iter().any(|w| w.eq_ignore_ascii_case(k))
                .then(|| level_from(v)).flatten()
        });
        let time = members.iter().find_map(|(k, v)| {
            ["time", "ts", "timestamp"].iter().any(|w| w.eq_ignore_ascii_case(k))
                .then(|| time_from(v)).flatten()
        });
        let string = |v: &Value| v.as_str().map(str::to_string);
        let trace_id = first(&["traceId", "trace_id"], false, &string);
        let span_id = first(&["spanId", "span_id"], false, &string);
        let service = first(&["service"], false, &|v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
            _ => None,
        });

        let p = parse_line(&line, LogFormat::Auto, &["service".to_string()]);
        prop_assert_eq!(p.kind, LineKind::Json, "{}", line);
        prop_assert_eq!(p.level, level.unwrap_or(Level::Unknown), "{}", line);
        prop_assert_eq!(p.timestamp, time, "{}", line);
        prop_assert_eq!(p.trace_id.as_deref(), trace_id.as_deref(), "{}", line);
        prop_assert_eq!(p.span_id.as_deref(), span_id.as_deref(), "{}", line);
        prop_assert_eq!(p.label_values[0].as_deref(), service.as_deref(), "{}", line);
    }
}
