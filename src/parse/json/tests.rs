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
