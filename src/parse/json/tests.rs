//! Unit tests of the JSON line reader (those of the hand-written scanner it
//! replaced, unchanged).

use super::*;
use crate::record::Timestamp;

fn scan_all<'a>(line: &'a str, fields: &[String]) -> (Result<(), Broken>, Fields<'a>) {
    let mut out = Fields::new(fields.len());
    let r = scan(line, fields, &mut out);
    (r, out)
}

fn level(line: &str) -> Option<Level> {
    scan_all(line, &[]).1.level
}

#[test]
fn level_keys_numbers_and_strings_are_found() {
    let table = [
        (r#"{"level":30,"msg":"x"}"#, Some(Level::Info)),
        (r#"{"level":35}"#, Some(Level::Info)),
        (r#"{"level":30.5}"#, Some(Level::Info)),
        (r#"{"level":4e1}"#, Some(Level::Warn)),
        (r#"{"level":-1}"#, Some(Level::Unknown)),
        (
            r#"{"level":99999999999999999999999999}"#,
            Some(Level::Fatal),
        ),
        (r#"{"level":"WARNING"}"#, Some(Level::Warn)),
        (r#"{"Level":"Error"}"#, Some(Level::Error)),
        (r#"{"lvl":"dbg"}"#, Some(Level::Debug)),
        (r#"{"severity":"CRITICAL"}"#, Some(Level::Fatal)),
        (r#"{"levelname":"INFO"}"#, Some(Level::Info)),
        (r#"{"log.level":"notice"}"#, Some(Level::Info)),
        (
            r#"{"log":{"logger":"x","level":"warn"}}"#,
            Some(Level::Warn),
        ),
        (r#"{"log":"just a string"}"#, None),
        (r#"{"level":"\u0077arn"}"#, Some(Level::Warn)),
        (r#"{"msg":"level 50","nested":{"level":50}}"#, None),
        (
            r#"{"level":"audit","severity":"error"}"#,
            Some(Level::Error),
        ),
        (r#"{"level":null}"#, None),
        (r#"{"level":{"x":1}}"#, None),
    ];
    for (line, want) in table {
        let (r, out) = scan_all(line, &[]);
        assert_eq!(r, Ok(()), "{line}");
        assert_eq!(out.level, want, "{line}");
    }
}

#[test]
fn duplicate_keys_keep_the_first_value() {
    assert_eq!(level(r#"{"level":50,"level":10}"#), Some(Level::Error));
}

#[test]
fn time_keys_hold_epoch_numbers_or_rfc3339_strings() {
    let t = Some(Timestamp(1_795_388_381_726_000_000));
    let table = [
        r#"{"time":1795388381726}"#,
        r#"{"ts":1795388381.726}"#,
        r#"{"timestamp":"2026-11-22T22:59:41.726Z"}"#,
        r#"{"@timestamp":"2026-11-23T00:59:41.726+02:00"}"#,
        r#"{"time":"1795388381726"}"#,
        r#"{"time":"garbage","ts":1795388381726}"#,
    ];
    for line in table {
        assert_eq!(scan_all(line, &[]).1.time, t, "{line}");
    }
}

#[test]
fn trace_ids_and_label_fields_are_picked_out() {
    let fields = vec!["service".to_string(), "code".to_string(), "gone".into()];
    let (r, out) = scan_all(
        r#"{"service":"a\"pi","traceId":"abc","span_id":"def","code":404,"gone":null}"#,
        &fields,
    );
    assert_eq!(r, Ok(()));
    assert_eq!(out.trace_id.as_deref(), Some("abc"));
    assert_eq!(out.span_id.as_deref(), Some("def"));
    assert_eq!(out.labels[0].as_deref(), Some("a\"pi"));
    assert_eq!(out.labels[1].as_deref(), Some("404"));
    assert_eq!(out.labels[2], None);
}

#[test]
fn valid_objects_of_every_shape_are_accepted() {
    let table = [
        "{}",
        "  { }  ",
        r#"{"a":[1,[2,[3,{"b":[]}]],{}],"c":{"d":{"e":null}},"f":true,"g":false}"#,
        r#"{"s":"esc \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00"}"#,
        r#"{"n":-0.5e-10,"m":1E+3,"k":0}"#,
        "{\"raw tab\":\"a\tb\"}",
        "{\"nul\":\"a\u{0}b\"}",
        "{\"repl\":\"\u{FFFD}\"}",
        "{\n\"a\" : 1 ,\r\n\"b\":2}",
    ];
    for line in table {
        assert_eq!(scan_all(line, &[]).0, Ok(()), "{line}");
    }
}

#[test]
fn broken_objects_are_told_apart() {
    let table = [
        ("", Broken::NotAnObject),
        ("[1,2]", Broken::NotAnObject),
        ("42", Broken::NotAnObject),
        (r#""str""#, Broken::NotAnObject),
        (r#"{"level":30,"msg":"trunc"#, Broken::Truncated),
        (r#"{"level":30,"#, Broken::Truncated),
        (r#"{"a":[1,2"#, Broken::Truncated),
        (r#"{"a":tru"#, Broken::Truncated),
        (r#"{"a":1}{"b":2}"#, Broken::TrailingText(7)),
        (r#"{"a":1} junk"#, Broken::TrailingText(8)),
        (r#"{"a":1,}"#, Broken::Unexpected(7)),
        (r#"{"a" 1}"#, Broken::Unexpected(5)),
        (r#"{"a":[1,]}"#, Broken::Unexpected(8)),
        (r#"{"a":[1}"#, Broken::Unexpected(7)),
        (r#"{"a":{"b":1]}"#, Broken::Unexpected(11)),
        (r#"{"a":"\x"}"#, Broken::Unexpected(6)),
        (r#"{"a":"\u12G4"}"#, Broken::Unexpected(6)),
        (r#"{"a":-}"#, Broken::Unexpected(6)),
        (r#"{"a":nul}"#, Broken::Unexpected(5)),
        (r#"{a:1}"#, Broken::Unexpected(1)),
    ];
    for (line, want) in table {
        assert_eq!(scan_all(line, &[]).0, Err(want), "{line}");
    }
}

#[test]
fn interleaved_writers_break_the_object_but_keep_the_level_read_before() {
    let line = r#"{"level":50,"time":1795388381732,"msg":"written in two parts{"level":30,"time":1795388381729,"msg":"x"}"#;
    let (r, out) = scan_all(line, &[]);
    assert!(matches!(r, Err(Broken::Unexpected(_))), "{r:?}");
    assert_eq!(out.level, Some(Level::Error));
}

#[test]
fn deep_nesting_is_bounded_not_recursive() {
    let ok = format!(
        "{{\"a\":{}{}}}",
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    assert_eq!(scan_all(&ok, &[]).0, Ok(()));
    let deep = format!(
        "{{\"a\":{}{}}}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(scan_all(&deep, &[]).0, Err(Broken::TooDeep));
    let huge = format!("{{\"level\":40,\"a\":{}", "[{\"b\":".repeat(100_000));
    let (r, out) = scan_all(&huge, &[]);
    assert_eq!(r, Err(Broken::TooDeep));
    assert_eq!(out.level, Some(Level::Warn));
}

#[test]
fn unescape_decodes_every_escape_and_replaces_lone_surrogates() {
    assert_eq!(unescape(r#"a\"b\\c\/d\n\t"#), "a\"b\\c/d\n\t");
    assert_eq!(unescape(r"\u00e9\ud83d\ude00"), "é😀");
    assert_eq!(unescape(r"\ud83d x"), "\u{FFFD} x");
    assert_eq!(unescape(r"\ude00"), "\u{FFFD}");
}

#[test]
fn a_too_deep_value_before_other_members_breaks_the_line_there() {
    let line = format!(
        "{{\"level\":40,\"a\":{}{},\"time\":1795388381726}}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    let (r, out) = scan_all(&line, &[]);
    assert_eq!(r, Err(Broken::TooDeep));
    assert_eq!(out.level, Some(Level::Warn));
    assert_eq!(out.time, None);
}

/// The fields the full reader finds in `line`, or `None` when it refuses it.
fn full_read<'a>(line: &'a str, fields: &[String]) -> Option<Fields<'a>> {
    let mut out = Fields::new(fields.len());
    read(line, line, fields, &mut out).ok().map(|()| out)
}

/// The fast pass's fields, or `None` when it hands the line to the full reader.
fn fast_read<'a>(line: &'a str, fields: &[String]) -> Option<Fields<'a>> {
    let mut out = Fields::new(fields.len());
    fast::read(line, fields, &mut out).then_some(out)
}

const LABELS: [&str; 4] = ["service", "code", "msg", "log"];

#[test]
fn the_fast_pass_hands_over_what_only_the_full_reader_reads() {
    let labels: Vec<String> = LABELS.map(String::from).to_vec();
    let deep = |tail: &str| {
        format!(
            "{{\"a\":{}{}{tail}}}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        )
    };
    let table = [
        r#"{"le\u0076el":30}"#.to_string(),
        r#"{"\ud800":1,"level":30}"#.to_string(),
        "{\"level\":30,\"msg\":\"a\tb\"}".to_string(),
        r#"{"level":30,"code":007}"#.to_string(),
        r#"{"level":30,"msg":"cut"#.to_string(),
        r#"{"level":30} tail"#.to_string(),
        deep(""),
        deep(",\"level\":30"),
    ];
    for line in &table {
        assert_eq!(fast_read(line, &labels), None, "{line}");
    }
}

#[test]
fn the_fast_pass_reads_what_the_full_reader_reads() {
    let labels: Vec<String> = LABELS.map(String::from).to_vec();
    let table = [
        r#"{"level":30,"time":1795388381726,"pid":1,"msg":"hi","req":{"a":[1,{"b":"c"}]}}"#,
        r#"{"Level":"Error","TS":"2026-11-22T22:59:41.726Z","service":"a\"pi","code":404}"#,
        r#"{"log":{"logger":"x","level":"warn"},"msg":"\u00e9"}"#,
        r#"{"log":"text","traceId":"abc","span_id":"d\u0065f","code":null,"msg":true}"#,
        r#"{"level":30,"level":50,"service":"a","service":"b"}"#,
        r#"{"levelname":"INFO","code":-1.5e3,"log.level":"warn"}"#,
        " { \"level\" : 30 , \"msg\" : [ ] } ",
        "{}",
    ];
    for line in table {
        let fast = fast_read(line, &labels);
        assert!(fast.is_some(), "{line}");
        assert_eq!(fast, full_read(line, &labels), "{line}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Objects put together from keys, values and separators (valid or not) that
    /// the two passes treat differently: whenever the fast pass answers, the full
    /// reader gives the same answer.
    #[test]
    fn the_fast_pass_never_answers_otherwise_than_the_full_reader(
        members in proptest::collection::vec(
            (0..KEYS.len(), 0..VALUES.len(), 0..SEPARATORS.len()),
            0..8,
        ),
    ) {
        let labels: Vec<String> = LABELS.map(String::from).to_vec();
        let mut line = String::from("{");
        for (i, &(k, v, s)) in members.iter().enumerate() {
            if i > 0 {
                line.push_str(SEPARATORS[s]);
            }
            line.push_str(KEYS[k]);
            line.push(':');
            line.push_str(VALUES[v]);
        }
        line.push('}');
        // Label fields that are also level or time keys are read as written.
        let with_level: Vec<String> = ["level", "ts", "msg"].map(String::from).to_vec();
        for labels in [&labels, &with_level] {
            if let Some(fast) = fast_read(&line, labels) {
                proptest::prop_assert_eq!(Some(fast), full_read(&line, labels), "{}", line);
            }
        }
    }
}

const KEYS: [&str; 13] = [
    "\"level\"",
    "\"LEVEL\"",
    "\"time\"",
    "\"ts\"",
    "\"log\"",
    "\"msg\"",
    "\"service\"",
    "\"code\"",
    "\"traceId\"",
    "\"spanId\"",
    "\"le\\u0076el\"",
    "\"\\ud800\"",
    "\"x\"",
];

const VALUES: [&str; 23] = [
    "30",
    "-5",
    "0",
    "30.5",
    "99999999999999999999999",
    "1795388381.726",
    "\"\\u0077arn\"",
    "\"1795388381726\"",
    "\"warn\"",
    "1795388381726",
    "\"2026-11-22T22:59:41Z\"",
    "-1.5e3",
    "007",
    "null",
    "true",
    "\"a\tb\"",
    "\"\\u00e9\\\"\"",
    "\"\\udc00\"",
    "{\"level\":\"error\"}",
    "[1,{}]",
    "{\"level\":[{}]",
    "\"x\"",
    "{}",
];

const SEPARATORS: [&str; 5] = [",", ",", ", ", ",,", " "];

/// The names each kind of key answers to, spelled as the module's docs list
/// them: [`classify`] is checked against this list, not against itself.
fn kind_by_name(key: &[u8]) -> Key {
    let ci = |names: &[&str]| names.iter().any(|n| key.eq_ignore_ascii_case(n.as_bytes()));
    let exact = |names: &[&str]| names.iter().any(|n| key == n.as_bytes());
    if ci(&["ts", "time", "timestamp", "@timestamp"]) {
        Key::Time
    } else if ci(&["lvl", "level", "severity", "levelname", "log.level"]) {
        Key::Level
    } else if exact(&["log"]) {
        Key::Log
    } else if exact(&["traceId", "trace_id"]) {
        Key::TraceId
    } else if exact(&["spanId", "span_id"]) {
        Key::SpanId
    } else {
        Key::Other
    }
}

#[test]
fn keys_are_classified_by_name_in_any_case_where_the_name_allows() {
    let names = [
        "ts",
        "time",
        "timestamp",
        "@timestamp",
        "lvl",
        "level",
        "severity",
        "levelname",
        "log.level",
        "log",
        "traceId",
        "trace_id",
        "spanId",
        "span_id",
    ];
    for name in names {
        for key in [
            name.to_owned(),
            name.to_ascii_uppercase(),
            name.to_ascii_lowercase(),
            name[..1].to_ascii_uppercase() + &name[1..],
        ] {
            assert!(
                classify(key.as_bytes()) == kind_by_name(key.as_bytes()),
                "{key:?}"
            );
        }
    }
    for key in [
        "",
        "t",
        "msg",
        "pid",
        "tS",
        "Log",
        "LOG",
        "traceid",
        "TRACE_ID",
        "span",
        "`timestamp",
        "@Timestamp",
        "log_level",
        "log\x0elevel",
        "Level ",
        "levels",
        "time\u{130}",
    ] {
        assert!(
            classify(key.as_bytes()) == kind_by_name(key.as_bytes()),
            "{key:?}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_key_is_classified_as_by_its_name(key in "[@`.tTsSlLeEvViImMpPgG_dDnNrRaAcCyY]{0,11}") {
        proptest::prop_assert!(classify(key.as_bytes()) == kind_by_name(key.as_bytes()), "{:?}", key);
    }
}
