//! A JSON value as the reader meets it, taken from the line's own text: a
//! string's raw content (escapes not yet decoded) or the text of a number or
//! literal; what a level field's value means; and the escape decoder for the few
//! strings the agent keeps.

use std::borrow::Cow;

use memchr::memchr;

use super::Level;

/// One value, classified by its first byte (the text is serde_json-validated).
pub(super) enum Value<'a> {
    Str { raw: &'a str, escaped: bool },
    Number(&'a str),
    Literal(&'a str),
    Container,
}

impl<'a> Value<'a> {
    /// `raw`: a whole JSON value's text, as serde_json's `RawValue` gives it.
    pub(super) fn of(raw: &'a str) -> Self {
        match raw.as_bytes().first() {
            Some(b'"') => {
                let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
                Value::Str {
                    raw: inner,
                    escaped: memchr(b'\\', inner.as_bytes()).is_some(),
                }
            }
            Some(b'-' | b'0'..=b'9') => Value::Number(raw),
            Some(b'{' | b'[') => Value::Container,
            _ => Value::Literal(raw),
        }
    }

    pub(super) fn text(&self) -> Option<Cow<'a, str>> {
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

/// A level field's value: a Pino number (fractions cut, huge values saturate) or
/// a name.
pub(super) fn level_of(value: &Value<'_>) -> Option<Level> {
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
/// Only called on strings serde_json has validated, and only for the few fields
/// the agent keeps.
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
