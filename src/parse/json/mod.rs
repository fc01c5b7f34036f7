//! The hot path: one JSON object's top level read with serde_json, through a
//! visitor that picks out only the keys the agent needs (level, time, trace/span
//! ids, configured label fields, and `log` for a nested `log.level`). Nothing is
//! allocated and no tree is built.
//!
//! Two passes, the second paid only by the few lines the first hands over:
//! [`fast`] (borrowed `&str` keys, `IgnoredAny` for the members the agent skips,
//! level, time and ids read straight from serde_json's values) answers for nearly
//! every line a logger writes; the full reader here takes every key and value as a
//! borrowed `&RawValue` (serde_json's `ignore_value` underneath, as for
//! `IgnoredAny`, plus the slice it skipped) and reads the few values kept from the
//! line's own text, which is what escaped keys, numbers kept as written, errors,
//! depth and leniency need.
//!
//! Promises:
//! - The whole line is validated, so a truncated object or two writers' lines
//!   interleaved in one (`{"msg":"part{"level":30,…}`) is told apart from a valid
//!   object: [`scan`] returns [`Broken`], and what it read before the break stays
//!   in [`Fields`].
//! - Bounded depth: a value nested deeper than [`MAX_DEPTH`] makes the line broken.
//!   serde_json's own recursion limit (128 including the top-level object) never
//!   applies, as the reader recurses only into the top level and `log`; skipped
//!   values are bounded here instead ([`lenient::nests_deeper_than`]).
//! - Duplicate keys: the first occurrence wins (a later `"level"` cannot override the
//!   one the logger wrote first; Pino writes its own fields first).
//! - Lenient where leniency loses nothing: raw control characters inside strings and
//!   leading zeros in numbers are accepted (by a retry, see [`lenient`]).

mod fast;
mod lenient;
#[cfg(test)]
mod tests;
mod value;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::level::Level;
use super::timestamp;
use super::Fields;
pub(crate) use value::unescape;
use value::{level_of, Value};

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

// Inlined into the readers' key loops (18 instructions a line fewer on the
// bench's lines).
#[inline(always)]
fn classify(key: &[u8]) -> Key {
    // The spelling loggers write (lower case) first: a comparison of a few
    // bytes at once, where the case-blind one goes byte by byte.
    let ci = |name: &[u8]| key == name || key.eq_ignore_ascii_case(name);
    // Most keys are none of these: their length and first byte (ASCII letters
    // folded to lower case; `@` becomes a backquote) rule them out before any
    // comparison, and the others are compared with one or two names at most.
    let first = key.first().map_or(0, |b| b | 0x20);
    match (key.len(), first) {
        (2, b't') if ci(b"ts") => Key::Time,
        (3, b'l') if ci(b"lvl") => Key::Level,
        (3, b'l') if key == b"log" => Key::Log,
        (4, b't') if ci(b"time") => Key::Time,
        (5, b'l') if ci(b"level") => Key::Level,
        (6, b's') if key == b"spanId" => Key::SpanId,
        (7, b't') if key == b"traceId" => Key::TraceId,
        (7, b's') if key == b"span_id" => Key::SpanId,
        (8, b's') if ci(b"severity") => Key::Level,
        (8, b't') if key == b"trace_id" => Key::TraceId,
        (9, b'l') if ci(b"levelname") || ci(b"log.level") => Key::Level,
        (9, b't') if ci(b"timestamp") => Key::Time,
        (10, b'`') if ci(b"@timestamp") => Key::Time,
        _ => Key::Other,
    }
}

/// Reads `line` as one JSON object, filling `out` with the fields found.
/// `out.labels` must have one slot per `label_fields` entry.
pub fn scan<'a>(
    line: &'a str,
    label_fields: &[String],
    out: &mut Fields<'a>,
) -> Result<(), Broken> {
    let first = line
        .bytes()
        .find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(b'{') {
        return Err(Broken::NotAnObject);
    }
    if fast::read(line, label_fields, out) {
        return Ok(());
    }
    *out = Fields::new(label_fields.len());
    let failure = match read(line, line, label_fields, out) {
        Ok(()) => return Ok(()),
        Err(f) => f,
    };
    if let Failure::Syntax(_) = failure {
        if let Some(copy) = lenient::copy_for_retry(line) {
            *out = Fields::new(label_fields.len());
            return read(line, &copy, label_fields, out).map_err(|f| f.broken(&copy));
        }
    }
    Err(failure.broken(line))
}

/// Why [`read`] stopped.
enum Failure {
    /// A value nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// serde_json's error inside the object.
    Syntax(serde_json::Error),
    /// serde_json's error after it.
    Trailing(serde_json::Error),
}

impl Failure {
    /// `text`: what serde_json read (its positions are in it).
    fn broken(self, text: &str) -> Broken {
        let (e, trailing) = match self {
            Failure::TooDeep => return Broken::TooDeep,
            Failure::Syntax(e) => (e, false),
            Failure::Trailing(e) => (e, true),
        };
        let at = offset(text, e.line(), e.column());
        // A container too deep before the error is what breaks the line; serde_json
        // skipped through it to the error beyond.
        if lenient::nests_deeper_than(text.get(..at).unwrap_or(text), MAX_DEPTH + 1) {
            return Broken::TooDeep;
        }
        if e.is_eof() || number_cut_off(text, at, &e) {
            Broken::Truncated
        } else if trailing {
            Broken::TrailingText(at)
        } else {
            Broken::Unexpected(start_of_token(text, at, &e))
        }
    }
}

/// serde_json calls `-`, `1.` or `1e+` at the end of the line an invalid number;
/// it is a cut-off line.
fn number_cut_off(text: &str, at: usize, e: &serde_json::Error) -> bool {
    at + 1 == text.len()
        && matches!(
            text.as_bytes().get(at),
            Some(b'-' | b'.' | b'e' | b'E' | b'+')
        )
        && e.to_string().starts_with("invalid number")
}

/// The offset [`Broken::Unexpected`] names for a bad escape or literal (the
/// escape's backslash, the literal's first letter, as before issue 14), where
/// serde_json gives the byte it stopped at. (Its error kinds are not public;
/// their messages are stable.)
fn start_of_token(text: &str, at: usize, e: &serde_json::Error) -> usize {
    let b = text.as_bytes();
    let message = e.to_string();
    if message.starts_with("invalid escape") {
        // serde_json stops after `\x`, or after the four bytes of `\uXXXX`.
        match at.checked_sub(5) {
            Some(u) if b.get(u) == Some(&b'\\') && b.get(u + 1) == Some(&b'u') => u,
            _ => at.saturating_sub(1),
        }
    } else if message.starts_with("expected ident") {
        let mut start = at;
        while start > 0 && b.get(start - 1).is_some_and(u8::is_ascii_lowercase) {
            start -= 1;
        }
        start
    } else {
        at
    }
}

/// The byte offset of serde_json's (1-based line, column) position: the last
/// byte it read.
fn offset(text: &str, line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', text.as_bytes())
            .nth(line - 2)
            .map_or(text.len(), |nl| nl + 1)
    };
    (line_start + column).saturating_sub(1).min(text.len())
}

/// One pass of serde_json over `text`, which is `line` or its same-length
/// [`lenient`] copy; the fields kept are taken from `line`.
fn read<'a>(
    line: &'a str,
    text: &str,
    label_fields: &[String],
    out: &mut Fields<'a>,
) -> Result<(), Failure> {
    let mut too_deep = false;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = TopLevel {
        at: Origin {
            line,
            base: text.as_ptr() as usize,
        },
        text,
        label_fields,
        out,
        too_deep: &mut too_deep,
    };
    match (&mut de).deserialize_map(top) {
        Ok(()) => de.end().map_err(Failure::Trailing),
        Err(_) if too_deep => Err(Failure::TooDeep),
        Err(e) => Err(Failure::Syntax(e)),
    }
}

/// Maps a slice of the text serde_json reads back onto the original line.
#[derive(Clone, Copy)]
struct Origin<'a> {
    line: &'a str,
    base: usize,
}

impl<'a> Origin<'a> {
    /// The original text of the value or key whose JSON text is `raw`.
    fn value(self, raw: &str) -> Value<'a> {
        let start = (raw.as_ptr() as usize).wrapping_sub(self.base);
        let mut start_num = start;
        let b = self.line.as_bytes();
        if matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9')) {
            // A number whose leading zeros the lenient copy blanked out.
            while start_num > 0 && matches!(b.get(start_num - 1), Some(b'-' | b'0'..=b'9')) {
                start_num -= 1;
            }
        }
        match self.line.get(start_num..start.saturating_add(raw.len())) {
            Some(original) => Value::of(original),
            // Not reached: serde_json's slices are of the text it was given.
            None => Value::Container,
        }
    }
}

/// The top-level object.
struct TopLevel<'a, 'o> {
    at: Origin<'a>,
    /// What serde_json reads.
    text: &'o str,
    label_fields: &'o [String],
    out: &'o mut Fields<'a>,
    too_deep: &'o mut bool,
}

impl<'a> TopLevel<'a, '_> {
    fn field(&mut self, key: &str, kind: Key, raw: &str) {
        if !wanted(kind, key, self.label_fields) {
            // Most members: nothing to read.
            return;
        }
        keep(self.at, self.label_fields, self.out, key, kind, raw);
    }

    /// Whether the value after the key whose JSON text is `raw_key` opens an
    /// object (serde_json, which reads it next, has no peek).
    fn object_follows(&self, raw_key: &str) -> bool {
        let end = (raw_key.as_ptr() as usize)
            .wrapping_sub(self.at.base)
            .saturating_add(raw_key.len());
        object_at(self.text, end)
    }
}

/// Whether the member whose key is `key` (of kind `kind`) holds a value the agent
/// reads.
fn wanted(kind: Key, key: &str, label_fields: &[String]) -> bool {
    kind != Key::Other || label_fields.iter().any(|name| name == key)
}

/// Whether `text` from byte `end` (just after a key's closing quote) holds `:`
/// and then an object.
fn object_at(text: &str, end: usize) -> bool {
    let rest = text.get(end..).unwrap_or_default();
    let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    rest.trim_start_matches(ws)
        .strip_prefix(':')
        .is_some_and(|v| v.trim_start_matches(ws).starts_with('{'))
}

/// Fills `out` from one member the agent reads: key `key` (decoded) of kind
/// `kind`, its value's JSON text `raw` (a slice of what serde_json reads).
fn keep<'a>(
    at: Origin<'a>,
    label_fields: &[String],
    out: &mut Fields<'a>,
    key: &str,
    kind: Key,
    raw: &str,
) {
    let value = at.value(raw);
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
}

impl<'de, 'a> Visitor<'de> for TopLevel<'a, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(mut self, mut map: M) -> Result<(), M::Error> {
        while let Some(raw_key) = map.next_key::<&'de RawValue>()? {
            // Escapes decoded by `unescape` (a lone surrogate becomes U+FFFD,
            // where serde_json's own decoding refuses the line).
            let key = match self.at.value(raw_key.get()) {
                Value::Str { raw, escaped: true } => Cow::Owned(unescape(raw)),
                Value::Str { raw, .. } => Cow::Borrowed(raw),
                _ => Cow::Borrowed(""),
            };
            let kind = classify(key.as_bytes());
            if kind == Key::Log && self.object_follows(raw_key.get()) {
                // `"log": { "level": "info", … }`: the nested level, one level
                // down only, read member by member (a level before a break counts).
                map.next_value_seed(LogObject {
                    at: self.at,
                    out: self.out,
                    too_deep: self.too_deep,
                })?;
                continue;
            }
            let raw: &'de RawValue = map.next_value()?;
            let raw = raw.get();
            if too_deep(raw) {
                *self.too_deep = true;
                return Err(de::Error::custom("nested too deep"));
            }
            self.field(&key, kind, raw);
        }
        Ok(())
    }
}

/// Whether a value's JSON text nests deeper than [`MAX_DEPTH`] (a container that
/// deep takes more than `2 * MAX_DEPTH` bytes: shorter ones are not scanned).
fn too_deep(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'{' | b'['))
        && raw.len() > 2 * MAX_DEPTH
        && lenient::nests_deeper_than(raw, MAX_DEPTH)
}

/// The `log` object's members.
struct LogObject<'a, 'o> {
    at: Origin<'a>,
    out: &'o mut Fields<'a>,
    too_deep: &'o mut bool,
}

impl<'de> DeserializeSeed<'de> for LogObject<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LogObject<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(raw_key) = map.next_key::<&'de RawValue>()? {
            let raw: &'de RawValue = map.next_value()?;
            let raw = raw.get();
            if too_deep(raw) {
                *self.too_deep = true;
                return Err(de::Error::custom("nested too deep"));
            }
            // The key as written, escapes undecoded (as before issue 14).
            let key = raw_key.get();
            let key = key.get(1..key.len().saturating_sub(1)).unwrap_or_default();
            if self.out.level.is_none() && key.eq_ignore_ascii_case("level") {
                self.out.level = level_of(&self.at.value(raw));
            }
        }
        Ok(())
    }
}
