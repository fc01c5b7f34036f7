//! The pass before [`super::fast`], for the plainest lines, which are nearly all a
//! logger writes: one walk over the bytes, validating the object and reading
//! level, time and ids from it, without serde_json's machinery per member
//! (a visitor call, a key read, a value skipped through a generic path). Pino's
//! lines of about 200 bytes take about a third of the instructions.
//!
//! It answers only where [`super::fast`] would answer with the same fields, and
//! gives up on everything else, which then goes the way it went before: a
//! backslash or a control byte in any string, a number other than a plain
//! unsigned integer in a field it reads (level, time, ids), a container there
//! or under `log`, nesting deeper than [`MAX_NESTING`], any syntax error, text
//! after the object. Numbers in members it skips are checked against JSON's
//! grammar, as serde_json's own skip checks them (and no more: their value is
//! never computed). Configured label fields are not read here (the caller
//! gives those lines to [`super::fast`]).

use std::borrow::Cow;

use super::{classify, timestamp, Fields, Key, Level};

/// Containers nested deeper than this are left to serde_json (which bounds
/// depth as [`super::MAX_DEPTH`] says); far above what loggers write.
const MAX_NESTING: usize = 32;

/// Reads `line` (whose first non-space byte is `{`) into `out` (fresh); `false`
/// when the caller must read it with the other passes (`out` then holds
/// partial fields).
pub(super) fn read<'a>(line: &'a str, out: &mut Fields<'a>) -> bool {
    let mut s = Skim {
        b: line.as_bytes(),
        at: 0,
    };
    s.object_members(line, out).is_some() && {
        s.ws();
        s.at == s.b.len()
    }
}

/// A value as the fields read it.
enum Value {
    /// A string without escapes (its text is the line's, between the quotes).
    Str,
    /// An unsigned integer of at most 19 digits (so it fits a `u64`).
    Uint(u64),
    /// `true`, `false` or `null`.
    Literal,
    /// Any other number, or a container: the fields that read values leave these
    /// to serde_json.
    Other,
}

struct Skim<'b> {
    b: &'b [u8],
    at: usize,
}

impl Skim<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(c)).then(|| self.at += 1)
    }

    /// The top-level object, from its `{`: each member's value read into `out`
    /// where its key says so.
    fn object_members<'a>(&mut self, line: &'a str, out: &mut Fields<'a>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let key = self.string_body()?;
            self.eat(b':')?;
            self.ws();
            let kind = classify(&self.b[key.0..key.1]);
            let start = self.at;
            let value = self.value(0)?;
            let text = |(a, b): (usize, usize)| line.get(a..b);
            match (kind, value) {
                (Key::Other, _) => {}
                // A nested `log.level`, or a container where a field is read: for
                // serde_json's passes.
                (_, Value::Other) => return None,
                (Key::Log, _) => {}
                (Key::Level, v) if out.level.is_none() => {
                    out.level = match v {
                        Value::Uint(n) => {
                            Some(Level::from_number(i64::try_from(n).unwrap_or(i64::MAX)))
                        }
                        Value::Str => Level::from_name(text(str_at(start, self.at))?),
                        _ => None,
                    }
                }
                (Key::Time, v) if out.time.is_none() => {
                    out.time = match v {
                        Value::Uint(n) => timestamp::from_epoch_integer(n),
                        Value::Str => timestamp::from_string(text(str_at(start, self.at))?),
                        _ => None,
                    }
                }
                (Key::TraceId, v) if out.trace_id.is_none() => {
                    out.trace_id = match v {
                        Value::Str => Some(Cow::Borrowed(text(str_at(start, self.at))?)),
                        _ => None,
                    }
                }
                (Key::SpanId, v) if out.span_id.is_none() => {
                    out.span_id = match v {
                        Value::Str => Some(Cow::Borrowed(text(str_at(start, self.at))?)),
                        _ => None,
                    }
                }
                _ => {}
            }
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// After an opening quote: up to and past the closing one; the text's range.
    /// Gives up on an escape or a control byte.
    fn string_body(&mut self) -> Option<(usize, usize)> {
        let start = self.at;
        let rest = self.b.get(start..)?;
        let end = start + memchr::memchr(b'"', rest)?;
        let body = &self.b[start..end];
        if body.iter().any(|&c| c < 0x20 || c == b'\\') {
            return None;
        }
        self.at = end + 1;
        Some((start, end))
    }

    /// One value (after leading space); `depth`: containers around it below the
    /// top level.
    fn value(&mut self, depth: usize) -> Option<Value> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string_body()?;
                Some(Value::Str)
            }
            b'{' => {
                self.container(depth, b'}', true)?;
                Some(Value::Other)
            }
            b'[' => {
                self.container(depth, b']', false)?;
                Some(Value::Other)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<Value> {
        let end = self.at + word.len();
        (self.b.get(self.at..end)? == word).then(|| {
            self.at = end;
            Value::Literal
        })
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<Value> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let int_end = self.at;
        let mut plain = !negative;
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
            plain = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
            plain = false;
        }
        let int = &self.b[int_start..int_end];
        if plain && int.len() <= 19 {
            let n = int.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            Some(Value::Uint(n))
        } else {
            Some(Value::Other)
        }
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// An object's or array's members, from its opening bracket, validated and
    /// skipped.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= MAX_NESTING {
            return None;
        }
        self.at += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.at += 1;
            return Some(());
        }
        loop {
            if keyed {
                self.eat(b'"')?;
                self.string_body()?;
                self.eat(b':')?;
            }
            self.ws();
            self.value(depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.ws();
                }
                c if c == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// The text range of the string value that ran from `start` (its opening quote)
/// to `end` (just past its closing quote).
fn str_at(start: usize, end: usize) -> (usize, usize) {
    (start + 1, end - 1)
}

#[cfg(test)]
mod tests {
    use super::super::fast;
    use super::*;

    /// Whatever `read` answers, `fast::read` answers the same.
    fn agrees(line: &str) -> bool {
        let mut skimmed = Fields::new(0);
        if !read(line, &mut skimmed) {
            return false;
        }
        let mut fast_out = Fields::new(0);
        assert!(fast::read(line, &[], &mut fast_out), "fast gave up: {line}");
        assert_eq!(skimmed, fast_out, "{line}");
        true
    }

    #[test]
    fn plain_lines_are_read_as_the_fast_pass_reads_them() {
        for line in [
            r#"{"level":30,"time":1795388381726,"pid":4242,"hostname":"h","reqId":"req-1","msg":"request completed","res":{"statusCode":200},"responseTime":12,"url":"/v1/x?y=z"}"#,
            r#"{}"#,
            r#"  { "level" : "warn" , "time" : "2026-11-21T10:00:00Z" }  "#,
            r#"{"level":"audit","severity":"error"}"#,
            r#"{"level":null,"lvl":"dbg"}"#,
            r#"{"level":50,"level":10}"#,
            r#"{"trace_id":"abc","span_id":"","traceId":"x"}"#,
            r#"{"traceId":12,"spanId":true,"trace_id":"t"}"#,
            r#"{"a":[1,2.5,-3e+2,{"b":[]},[],"s",true,false,null],"level":"info"}"#,
            r#"{"log":"just a string","level":9223372036854775807}"#,
            r#"{"level":1234567890123456789}"#,
            r#"{"time":0,"ts":5}"#,
            r#"{"msg":"level 50","nested":{"level":50}}"#,
            r#"{"msg":"ünïcödé ✓","level":"INFO"}"#,
        ] {
            assert!(agrees(line), "gave up on {line}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_other_passes() {
        for line in [
            r#"{"level":"\u0077arn"}"#,
            r#"{"msg":"a\nb"}"#,
            "{\"msg\":\"raw\ttab\"}",
            r#"{"le\"vel":1}"#,
            r#"{"level":30.5}"#,
            r#"{"level":-1}"#,
            r#"{"level":99999999999999999999}"#,
            r#"{"level":4e1}"#,
            r#"{"level":{"x":1}}"#,
            r#"{"log":{"level":"warn"}}"#,
            r#"{"time":[1]}"#,
            r#"{"n":01}"#,
            r#"{"n":1.}"#,
            r#"{"n":-}"#,
            r#"{"n":1e}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1}x"#,
            r#"{"a":1"#,
            r#"{"a":tru}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"msg":"part{"level":30}"#,
        ] {
            let mut out = Fields::new(0);
            assert!(!read(line, &mut out), "answered {line}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert!(!read(&deep, &mut Fields::new(0)));
        let shallow = format!("{{\"a\":{}{}}}", "[".repeat(20), "]".repeat(20));
        assert!(agrees(&shallow));
    }

    #[test]
    fn generated_lines_agree_with_the_fast_pass_whenever_answered() {
        // Lines assembled from JSON fragments, many of them broken on purpose:
        // where the skim answers, the fast pass must answer the same.
        let parts = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"level\"",
            "\"time\"",
            "\"ts\"",
            "\"trace_id\"",
            "\"spanId\"",
            "\"log\"",
            "\"msg\"",
            "\"a\"",
            "30",
            "0",
            "-1",
            "1.5",
            "2e3",
            "01",
            "\"info\"",
            "\"2026-11-21T10:00:00Z\"",
            "true",
            "null",
            "\"x\\n\"",
            "1795388381726",
            "18446744073709551615",
            "\"\"",
            "\t",
            "\n",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut answered = 0;
        for _ in 0..200_000 {
            let mut line = String::from("{");
            for _ in 0..(next() % 12) {
                line.push_str(parts[(next() % parts.len() as u64) as usize]);
            }
            if next() % 2 == 0 {
                line.push('}');
            }
            answered += usize::from(agrees(&line));
        }
        // Also well-formed members in every order.
        let members = [
            "\"level\":30",
            "\"level\":\"warn\"",
            "\"time\":1795388381726",
            "\"ts\":\"x\"",
            "\"trace_id\":\"t1\"",
            "\"span_id\":\"s1\"",
            "\"log\":\"l\"",
            "\"a\":{\"b\":[1,2]}",
            "\"level\":null",
            "\"time\":true",
            "\"traceId\":5",
            "\"msg\":\"m\"",
        ];
        for _ in 0..20_000 {
            let n = next() % 6;
            let line: Vec<&str> = (0..n)
                .map(|_| members[(next() % members.len() as u64) as usize])
                .collect();
            let line = format!("{{{}}}", line.join(","));
            assert!(agrees(&line), "gave up on {line}");
            answered += 1;
        }
        assert!(answered > 20_000);
    }
}
