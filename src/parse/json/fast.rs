//! The first pass over a line, which reads nearly every line a logger writes:
//! keys as serde_json's borrowed `&str` (no escapes), the members the agent has no
//! use for skipped as `IgnoredAny` (no raw capture), the few it reads taken as
//! `&RawValue` and read as the full reader reads them.
//!
//! It answers only for a line the full reader ([`super::read`]) would accept, with
//! the same fields; for anything else (a key with an escape, any error serde_json
//! reports, a value that may nest too deep) it gives up and the caller reads the
//! line again with the full reader, which decides (and keeps its own rules for
//! leniency, escaped keys and where a line breaks).
//!
//! Depth: serde_json skips an `IgnoredAny` iteratively (`ignore_value`, a frame
//! stack with no limit; its recursion limit of 128 guards only the recursive
//! `deserialize_map`/`seq`), so the bound is kept here: the text between one key
//! and the next (or the object's end) holds the previous value, and only a stretch
//! longer than `2 * MAX_DEPTH` bytes can nest that deep, so only such a stretch is
//! scanned.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

use super::lenient::nests_deeper_than;
use super::{
    classify, keep, object_at, timestamp, Fields, Key, Level, LogObject, Origin, MAX_DEPTH,
};

/// Reads `line`, a JSON object, into `out` (fresh); `false` when the caller must
/// read it again with the full reader (`out` then holds partial fields).
pub(super) fn read<'a>(line: &'a str, label_fields: &[String], out: &mut Fields<'a>) -> bool {
    let mut de = serde_json::Deserializer::from_str(line);
    let top = TopLevel {
        at: Origin {
            line,
            base: line.as_ptr() as usize,
        },
        label_fields,
        out,
    };
    match (&mut de).deserialize_map(top) {
        Ok(end) => de.end().is_ok() && !may_nest_too_deep(line.get(end..)),
        Err(_) => false,
    }
}

/// Whether `stretch` (text between members) could hold a value nested deeper
/// than [`MAX_DEPTH`]; `None` (not reached) counts as could.
fn may_nest_too_deep(stretch: Option<&str>) -> bool {
    stretch.is_none_or(|s| s.len() > 2 * MAX_DEPTH && nests_deeper_than(s, MAX_DEPTH))
}

struct TopLevel<'a, 'o> {
    at: Origin<'a>,
    label_fields: &'o [String],
    out: &'o mut Fields<'a>,
}

impl<'de, 'a> Visitor<'de> for TopLevel<'a, '_> {
    /// The offset just after the last key's closing quote (0 for `{}`).
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<usize, M::Error> {
        let text = self.at.line;
        // A line no longer than a value that deep holds none: nothing to scan.
        let may_nest = text.len() > 2 * MAX_DEPTH;
        // Just after the previous key's closing quote.
        let mut after_key = None::<usize>;
        // Keys with an escape come as an owned string: an error, and the full
        // reader decodes them.
        while let Some(key) = map.next_key::<&'de str>()? {
            let start = (key.as_ptr() as usize).wrapping_sub(self.at.base);
            if let (true, Some(prev)) = (may_nest, after_key) {
                if may_nest_too_deep(text.get(prev..start.saturating_sub(1))) {
                    return Err(M::Error::custom("may nest too deep"));
                }
            }
            let end = start.saturating_add(key.len()).saturating_add(1);
            after_key = Some(end);
            let kind = classify(key.as_bytes());
            if kind == Key::Log && object_at(text, end) {
                map.next_value_seed(LogObject {
                    at: self.at,
                    out: self.out,
                    too_deep: &mut false,
                })?;
            } else if self.label_fields.iter().any(|name| name == key) {
                let raw: &'de RawValue = map.next_value()?;
                keep(self.at, self.label_fields, self.out, key, kind, raw.get());
            } else {
                let out = &mut *self.out;
                match kind {
                    Key::Level if out.level.is_none() => {
                        out.level = map.next_value_seed(LevelOf)?
                    }
                    Key::Time if out.time.is_none() => out.time = map.next_value_seed(TimeOf)?,
                    Key::TraceId if out.trace_id.is_none() => {
                        out.trace_id = map.next_value_seed(TextOf(self.at))?;
                    }
                    Key::SpanId if out.span_id.is_none() => {
                        out.span_id = map.next_value_seed(TextOf(self.at))?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
        }
        Ok(after_key.unwrap_or(0))
    }
}

/// The error by which a value seed hands the line to the full reader: a value
/// whose meaning depends on its text as written (a fraction, an exponent, an
/// integer too large for 64 bits), or one the agent reads as nothing but must
/// bound (a container).
fn hand_over<E: serde::de::Error>() -> E {
    E::custom("read by the full reader")
}

macro_rules! hand_over_the_rest {
    () => {
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(hand_over())
        }

        fn visit_map<M: MapAccess<'de>>(self, _: M) -> Result<Self::Value, M::Error> {
            Err(hand_over())
        }

        fn visit_seq<S: serde::de::SeqAccess<'de>>(self, _: S) -> Result<Self::Value, S::Error> {
            Err(hand_over())
        }
    };
}

/// A level field's value, read as [`super::value::level_of`] reads its text.
struct LevelOf;

impl<'de> DeserializeSeed<'de> for LevelOf {
    type Value = Option<Level>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LevelOf {
    type Value = Option<Level>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a level")
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
        // Its digits, read by `Level::from_name`, saturate the same way.
        Ok(Some(Level::from_number(
            i64::try_from(n).unwrap_or(i64::MAX),
        )))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(Level::from_number(n)))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Level::from_name(s))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    hand_over_the_rest!();
}

/// A time field's value, read as the full reader reads its text.
struct TimeOf;

impl<'de> DeserializeSeed<'de> for TimeOf {
    type Value = Option<crate::record::Timestamp>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TimeOf {
    type Value = Option<crate::record::Timestamp>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a time")
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
        // serde_json read it from digits without a sign or leading zeros.
        Ok(timestamp::from_epoch_integer(n))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        // A negative number: no epoch time (`from_epoch_number` wants a digit first).
        Ok(None)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(timestamp::from_string(s))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    hand_over_the_rest!();
}

/// A trace or span id: a string's text (borrowed from the line when it has no
/// escapes), nothing for any other value.
struct TextOf<'a>(Origin<'a>);

impl<'de, 'a> DeserializeSeed<'de> for TextOf<'a> {
    type Value = Option<Cow<'a, str>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for TextOf<'a> {
    type Value = Option<Cow<'a, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        // A slice of the line itself (serde_json reads `line`): the same text, with
        // the line's lifetime.
        let start = (s.as_ptr() as usize).wrapping_sub(self.0.base);
        Ok(self
            .0
            .line
            .get(start..start.saturating_add(s.len()))
            .map(Cow::Borrowed))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(s.to_owned())))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<M: MapAccess<'de>>(self, _: M) -> Result<Self::Value, M::Error> {
        Err(hand_over())
    }

    fn visit_seq<S: serde::de::SeqAccess<'de>>(self, _: S) -> Result<Self::Value, S::Error> {
        Err(hand_over())
    }
}
