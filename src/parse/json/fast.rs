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

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

use super::lenient::nests_deeper_than;
use super::{classify, keep, object_at, wanted, Fields, Key, LogObject, Origin, MAX_DEPTH};

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
        // Just after the previous key's closing quote.
        let mut after_key = None::<usize>;
        // Keys with an escape come as an owned string: an error, and the full
        // reader decodes them.
        while let Some(key) = map.next_key::<&'de str>()? {
            let start = (key.as_ptr() as usize).wrapping_sub(self.at.base);
            if let Some(prev) = after_key {
                if may_nest_too_deep(text.get(prev..start.saturating_sub(1))) {
                    return Err(serde::de::Error::custom("may nest too deep"));
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
            } else if wanted(kind, key, self.label_fields) {
                let raw: &'de RawValue = map.next_value()?;
                keep(self.at, self.label_fields, self.out, key, kind, raw.get());
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(after_key.unwrap_or(0))
    }
}
