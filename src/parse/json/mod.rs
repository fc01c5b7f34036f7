//! The hot path: a single-pass scanner over a JSON object's top level that picks out
//! only the keys the agent needs (level, time, trace/span ids, configured label
//! fields, and `log` for a nested `log.level`) and skips every other value without
//! allocating or building a tree.
//!
//! Promises:
//! - It validates the whole line as it goes, so a truncated object or two writers'
//!   lines interleaved in one (`{"msg":"part{"level":30,…}`) is told apart from a
//!   valid object: [`scan`] returns [`Broken`], and what it read before the break
//!   stays in [`Fields`].
//! - No recursion: nested containers are skipped by an iterative loop with a bounded
//!   depth ([`MAX_DEPTH`]); deeper nesting counts as broken, as in serde_json.
//! - Duplicate keys: the first occurrence wins (a later `"level"` cannot override the
//!   one the logger wrote first; Pino writes its own fields first).
//! - Lenient where leniency loses nothing: raw control characters inside strings and
//!   leading zeros in numbers are accepted.

use std::borrow::Cow;

use memchr::memchr2;

use super::level::Level;
use super::timestamp;
use super::Fields;

/// Containers nested deeper than this make the line broken (bounded work, and
/// nothing a logger writes goes this deep).
pub const MAX_DEPTH: usize = 128;

/// Why a line is not a JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The first non-space byte is not `{`.
    NotAnObject,
    /// The line ended inside the object.
    Truncated,
    /// A byte that cannot appear where it does (at this offset).
    Unexpected(usize),
    /// Nesting beyond [`MAX_DEPTH`].
    TooDeep,
    /// Text after the object's closing brace.
    TrailingText(usize),
}

/// What a key at the top level means to the agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Level,
    Time,
    TraceId,
    SpanId,
    /// `log`: may hold a nested `{"level": …}` (Elastic Common Schema).
    Log,
    Other,
}

fn classify(key: &[u8]) -> Key {
    let ci = |name: &[u8]| key.eq_ignore_ascii_case(name);
    match key.len() {
        2 if ci(b"ts") => Key::Time,
        3 if ci(b"lvl") => Key::Level,
        3 if key == b"log" => Key::Log,
        4 if ci(b"time") => Key::Time,
        5 if ci(b"level") => Key::Level,
        6 if key == b"spanId" => Key::SpanId,
        7 if key == b"traceId" => Key::TraceId,
        7 if key == b"span_id" => Key::SpanId,
        8 if ci(b"severity") => Key::Level,
        8 if key == b"trace_id" => Key::TraceId,
        9 if ci(b"levelname") || ci(b"log.level") => Key::Level,
        9 if ci(b"timestamp") => Key::Time,
        10 if ci(b"@timestamp") => Key::Time,
        _ => Key::Other,
    }
}

/// Scans `line` as one JSON object, filling `out` with the fields found.
/// `out.labels` must have one slot per `label_fields` entry.
pub fn scan<'a>(
    line: &'a str,
    label_fields: &[String],
    out: &mut Fields<'a>,
) -> Result<(), Broken> {
    let mut c = Cursor {
        s: line,
        b: line.as_bytes(),
        pos: 0,
    };
    c.skip_ws();
    if c.peek() != Some(b'{') {
        return Err(Broken::NotAnObject);
    }
    c.pos += 1;
    c.skip_ws();
    if c.peek() == Some(b'}') {
        c.pos += 1;
    } else {
        loop {
            c.skip_ws();
            c.expect(b'"')?;
            let (kstart, kend, kesc) = c.string()?;
            c.skip_ws();
            c.expect(b':')?;
            c.skip_ws();
            let raw_key = &line[kstart..kend];
            let key: Cow<'a, str> = if kesc {
                Cow::Owned(unescape(raw_key))
            } else {
                Cow::Borrowed(raw_key)
            };
            c.field(&key, label_fields, out)?;
            c.skip_ws();
            match c.next()? {
                b',' => continue,
                b'}' => break,
                _ => return Err(Broken::Unexpected(c.pos - 1)),
            }
        }
    }
    c.skip_ws();
    if c.pos < c.b.len() {
        return Err(Broken::TrailingText(c.pos));
    }
    Ok(())
}

/// A JSON value as the scanner met it: a string's raw content (escapes not yet
/// decoded) or the text of a number or literal.
enum Value<'a> {
    Str { raw: &'a str, escaped: bool },
    Number(&'a str),
    Literal(&'a str),
    Container,
}

impl<'a> Value<'a> {
    fn text(&self) -> Option<Cow<'a, str>> {
        match *self {
            Value::Str { raw, escaped: true } => Some(Cow::Owned(unescape(raw))),
            Value::Str {
                raw,
                escaped: false,
            } => Some(Cow::Borrowed(raw)),
            _ => None,
        }
    }
}

struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn next(&mut self) -> Result<u8, Broken> {
        let c = self.peek().ok_or(Broken::Truncated)?;
        self.pos += 1;
        Ok(c)
    }

    fn expect(&mut self, want: u8) -> Result<(), Broken> {
        match self.peek() {
            Some(c) if c == want => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(Broken::Unexpected(self.pos)),
            None => Err(Broken::Truncated),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// After an opening quote: the string's content range and whether it holds
    /// escapes; the cursor ends after the closing quote.
    fn string(&mut self) -> Result<(usize, usize, bool), Broken> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            let i = memchr2(b'"', b'\\', &self.b[self.pos..]).ok_or(Broken::Truncated)?;
            self.pos += i;
            if self.b[self.pos] == b'"' {
                let end = self.pos;
                self.pos += 1;
                return Ok((start, end, escaped));
            }
            escaped = true;
            match self.b.get(self.pos + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                Some(b'u') => {
                    let hex = self
                        .b
                        .get(self.pos + 2..self.pos + 6)
                        .ok_or(Broken::Truncated)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Broken::Unexpected(self.pos));
                    }
                    self.pos += 6;
                }
                Some(_) => return Err(Broken::Unexpected(self.pos)),
                None => return Err(Broken::Truncated),
            }
        }
    }

    /// A number's text: `-? digits (. digits)? ([eE] [+-]? digits)?`.
    fn number(&mut self) -> Result<&'a str, Broken> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        self.digits()?;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        Ok(&self.s[start..self.pos])
    }

    fn digits(&mut self) -> Result<(), Broken> {
        let n = self.b[self.pos..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if n == 0 {
            return Err(if self.pos >= self.b.len() {
                Broken::Truncated
            } else {
                Broken::Unexpected(self.pos)
            });
        }
        self.pos += n;
        Ok(())
    }

    fn literal(&mut self, word: &'static str) -> Result<&'a str, Broken> {
        let end = self.pos + word.len();
        match self.b.get(self.pos..end) {
            Some(w) if w == word.as_bytes() => {
                let text = &self.s[self.pos..end];
                self.pos = end;
                Ok(text)
            }
            Some(_) => Err(Broken::Unexpected(self.pos)),
            None if word.as_bytes().starts_with(&self.b[self.pos..]) => Err(Broken::Truncated),
            None => Err(Broken::Unexpected(self.pos)),
        }
    }

    /// One value of any kind; containers are skipped (and validated) whole.
    fn value(&mut self) -> Result<Value<'a>, Broken> {
        match self.peek().ok_or(Broken::Truncated)? {
            b'"' => {
                self.pos += 1;
                let (start, end, escaped) = self.string()?;
                Ok(Value::Str {
                    raw: &self.s[start..end],
                    escaped,
                })
            }
            b'{' | b'[' => {
                self.skip_container()?;
                Ok(Value::Container)
            }
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            b't' => self.literal("true").map(Value::Literal),
            b'f' => self.literal("false").map(Value::Literal),
            b'n' => self.literal("null").map(Value::Literal),
            _ => Err(Broken::Unexpected(self.pos)),
        }
    }

    /// Skips an object or array (cursor on its opening bracket), validating its
    /// structure without recursion: a bit per open level says object or array.
    fn skip_container(&mut self) -> Result<(), Broken> {
        // Bit i set: level i is an object.
        let mut kinds: u128 = 0;
        let mut depth: usize = 0;
        let open = |kinds: &mut u128, depth: &mut usize, is_obj: bool| {
            if *depth >= MAX_DEPTH {
                return Err(Broken::TooDeep);
            }
            if is_obj {
                *kinds |= 1 << *depth;
            } else {
                *kinds &= !(1 << *depth);
            }
            *depth += 1;
            Ok(())
        };
        let first = self.next()?;
        open(&mut kinds, &mut depth, first == b'{')?;
        // True right after an opening bracket, where a closing one may follow.
        let mut fresh = true;
        loop {
            self.skip_ws();
            let is_obj = kinds & (1 << (depth - 1)) != 0;
            let close = if is_obj { b'}' } else { b']' };
            if fresh && self.peek() == Some(close) {
                self.pos += 1;
                depth -= 1;
            } else {
                if is_obj {
                    self.expect(b'"')?;
                    self.string()?;
                    self.skip_ws();
                    self.expect(b':')?;
                    self.skip_ws();
                }
                match self.peek().ok_or(Broken::Truncated)? {
                    c @ (b'{' | b'[') => {
                        self.pos += 1;
                        open(&mut kinds, &mut depth, c == b'{')?;
                        fresh = true;
                        continue;
                    }
                    _ => {
                        self.value()?;
                    }
                }
            }
            // After a value (or an emptied container): a comma or closing brackets.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.skip_ws();
                let is_obj = kinds & (1 << (depth - 1)) != 0;
                match self.next()? {
                    b',' => {
                        fresh = false;
                        break;
                    }
                    b'}' if is_obj => depth -= 1,
                    b']' if !is_obj => depth -= 1,
                    _ => return Err(Broken::Unexpected(self.pos - 1)),
                }
            }
        }
    }

    /// One top-level member's value, cursor on it; records it in `out` when the
    /// key is one the agent wants.
    fn field(
        &mut self,
        key: &str,
        label_fields: &[String],
        out: &mut Fields<'a>,
    ) -> Result<(), Broken> {
        let kind = classify(key.as_bytes());
        if kind == Key::Log && self.peek() == Some(b'{') {
            return self.log_object(out);
        }
        let value = self.value()?;
        match kind {
            Key::Level if out.level.is_none() => out.level = level_of(&value),
            Key::Time if out.time.is_none() => {
                out.time = match &value {
                    Value::Number(n) => timestamp::from_epoch_number(n),
                    v => v.text().and_then(|t| timestamp::from_string(&t)),
                }
            }
            Key::TraceId if out.trace_id.is_none() => out.trace_id = value.text(),
            Key::SpanId if out.span_id.is_none() => out.span_id = value.text(),
            _ => {}
        }
        for (slot, name) in out.labels.iter_mut().zip(label_fields) {
            if slot.is_none() && name == key {
                *slot = match value {
                    Value::Number(t) | Value::Literal(t) if t != "null" => Some(Cow::Borrowed(t)),
                    ref v => v.text(),
                };
            }
        }
        Ok(())
    }

    /// `"log": { "level": "info", … }`: the nested level, one level down only.
    fn log_object(&mut self, out: &mut Fields<'a>) -> Result<(), Broken> {
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.expect(b'"')?;
            let (kstart, kend, _) = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value()?;
            if out.level.is_none() && self.b[kstart..kend].eq_ignore_ascii_case(b"level") {
                out.level = level_of(&value);
            }
            self.skip_ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(()),
                _ => return Err(Broken::Unexpected(self.pos - 1)),
            }
        }
    }
}

/// A level field's value: a Pino number (fractions cut, huge values saturate) or
/// a name.
fn level_of(value: &Value<'_>) -> Option<Level> {
    match value {
        Value::Number(n) => {
            let int = n.split(['.', 'e', 'E']).next().unwrap_or(n);
            if n.contains(['e', 'E']) {
                let f: f64 = n.parse().ok()?;
                // `as` saturates, and NaN cannot come out of a parsed number.
                Some(Level::from_number(f as i64))
            } else {
                Level::from_name(int)
            }
        }
        v => v.text().and_then(|t| Level::from_name(&t)),
    }
}

/// Decodes a JSON string's escapes. Invalid or lone surrogates become U+FFFD.
/// Only called on strings the scanner has validated, and only for the few fields
/// it keeps.
pub(crate) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest[i + 1..];
        let mut chars = esc.chars();
        let (ch, used) = match chars.next() {
            Some('"') => ('"', 1),
            Some('\\') => ('\\', 1),
            Some('/') => ('/', 1),
            Some('b') => ('\u{8}', 1),
            Some('f') => ('\u{c}', 1),
            Some('n') => ('\n', 1),
            Some('r') => ('\r', 1),
            Some('t') => ('\t', 1),
            Some('u') => decode_u(esc),
            Some(c) => (c, c.len_utf8()),
            None => ('\\', 0),
        };
        out.push(ch);
        rest = &esc[used..];
    }
    out.push_str(rest);
    out
}

/// `esc` starts at the `u` of `\uXXXX`: the character and the bytes used after the
/// backslash, joining a surrogate pair `\uD83D\uDE00` into one character.
fn decode_u(esc: &str) -> (char, usize) {
    let hex4 = |s: &str| s.get(..4).and_then(|h| u32::from_str_radix(h, 16).ok());
    let Some(hi) = esc.get(1..).and_then(hex4) else {
        return ('\u{FFFD}', 1);
    };
    if (0xD800..0xDC00).contains(&hi) {
        if let Some(lo) = esc
            .get(5..)
            .filter(|s| s.starts_with("\\u"))
            .and_then(|s| s.get(2..))
            .and_then(hex4)
            .filter(|lo| (0xDC00..0xE000).contains(lo))
        {
            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
            return (char::from_u32(c).unwrap_or('\u{FFFD}'), 11);
        }
    }
    (char::from_u32(hi).unwrap_or('\u{FFFD}'), 5)
}

#[cfg(test)]
mod tests;
