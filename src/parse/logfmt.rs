//! logfmt lines (`time=2026-11-21T10:00:00Z level=warn msg="disk low" trace_id=ab`),
//! as Go's `log/slog` text handler, logrus and Heroku-style tools write them.
//!
//! Promise: single pass, no allocation unless a wanted value holds escapes, no
//! panic; an unterminated quoted value runs to the end of the line. Duplicate
//! keys: the first wins, as in JSON.

use std::borrow::Cow;

use super::level::Level;
use super::timestamp;
use super::Fields;

/// Whether the line opens with a `key=` pair (after optional spaces), the test
/// `auto` uses. Keys are `[A-Za-z0-9_.@/-]+` and start with a letter, `_` or `@`,
/// so a URL (`http://…`), a path or a sentence does not qualify.
pub fn looks_like_logfmt(line: &str) -> bool {
    let b = line.trim_start().as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b'@' => {}
        _ => return false,
    }
    let key_len = b.iter().take_while(|c| is_key_byte(**c)).count();
    b.get(key_len) == Some(&b'=')
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'@' | b'/' | b'-')
}

/// Scans every `key=value` pair of `line` into `out`. Bare words without `=` are
/// skipped.
pub fn scan<'a>(line: &'a str, label_fields: &[String], out: &mut Fields<'a>) {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let kstart = i;
        while i < b.len() && b[i] != b'=' && b[i] != b' ' {
            i += 1;
        }
        let key = &line[kstart..i];
        if b.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        let value: Cow<'a, str> = if b.get(i) == Some(&b'"') {
            i += 1;
            let vstart = i;
            let mut escaped = false;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    escaped = true;
                    i += 1;
                }
                i += 1;
            }
            let raw = &line[vstart..i.min(b.len())];
            i += 1;
            if escaped {
                Cow::Owned(unescape(raw))
            } else {
                Cow::Borrowed(raw)
            }
        } else {
            let vstart = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            Cow::Borrowed(&line[vstart..i])
        };
        record(key, value, label_fields, out);
    }
}

fn record<'a>(key: &str, value: Cow<'a, str>, label_fields: &[String], out: &mut Fields<'a>) {
    let kb = key.as_bytes();
    let ci = |name: &[u8]| kb.eq_ignore_ascii_case(name);
    if ci(b"level") || ci(b"lvl") || ci(b"severity") || ci(b"levelname") || ci(b"log.level") {
        if out.level.is_none() {
            out.level = Level::from_name(&value);
        }
    } else if ci(b"time") || ci(b"ts") || ci(b"timestamp") || ci(b"@timestamp") {
        if out.time.is_none() {
            out.time = timestamp::from_string(&value);
        }
    } else if key == "trace_id" || key == "traceId" {
        if out.trace_id.is_none() && !value.is_empty() {
            out.trace_id = Some(value.clone());
        }
    } else if (key == "span_id" || key == "spanId") && out.span_id.is_none() && !value.is_empty() {
        out.span_id = Some(value.clone());
    }
    for (slot, name) in out.labels.iter_mut().zip(label_fields) {
        if slot.is_none() && name == key {
            *slot = Some(value.clone());
        }
    }
}

/// logfmt quoting as Go's `strconv.Quote` writes it: `\"`, `\\`, `\n`, `\t`, `\r`;
/// any other escaped character stands for itself.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Timestamp;

    #[test]
    fn logfmt_is_recognised_by_a_leading_key_value_pair() {
        let table = [
            ("level=info msg=hi", true),
            ("  time=2026-11-21T10:00:00Z level=WARN", true),
            ("@timestamp=1 x", true),
            ("log.level=warn", true),
            ("a=b", true),
            ("http://example.com/?a=b", false),
            ("=x", false),
            ("1=2", false),
            ("plain text a=b", false),
            ("{\"a\":1}", false),
            ("", false),
        ];
        for (line, want) in table {
            assert_eq!(looks_like_logfmt(line), want, "{line:?}");
        }
    }

    #[test]
    fn logfmt_pairs_give_level_time_ids_and_label_fields() {
        let fields = vec!["service".to_string(), "missing".to_string()];
        let line = r#"time=2026-11-22T22:59:41.726Z level=WARN msg="disk \"low\"" bare service=api trace_id=abc spanId=def level=error"#;
        let mut out = Fields::new(fields.len());
        scan(line, &fields, &mut out);
        assert_eq!(out.level, Some(Level::Warn));
        assert_eq!(out.time, Some(Timestamp(1_795_388_381_726_000_000)));
        assert_eq!(out.trace_id.as_deref(), Some("abc"));
        assert_eq!(out.span_id.as_deref(), Some("def"));
        assert_eq!(out.labels[0].as_deref(), Some("api"));
        assert_eq!(out.labels[1], None);
    }

    #[test]
    fn odd_logfmt_never_panics_and_unterminated_quotes_run_to_the_end() {
        for line in [
            "a=\"unterminated",
            "a=\"ends in backslash\\",
            "a=",
            "a==b",
            "level=\"ERROR\" =x",
            "x=1  level=  ",
            "k=\u{FFFD} level=é",
        ] {
            let mut out = Fields::new(0);
            scan(line, &[], &mut out);
        }
        let mut out = Fields::new(0);
        scan("msg=\"a b level=error", &[], &mut out);
        assert_eq!(out.level, None);
        let mut out = Fields::new(0);
        scan("level=\"ERROR\"", &[], &mut out);
        assert_eq!(out.level, Some(Level::Error));
    }
}
