//! The words of Loki's answers: label sets as Loki writes them (Go-quoted
//! values), Go's times, an ingester's line for a refused entry, and the
//! distributor's grouped text split on `; `.

use super::{Cause, LabelSet, Listed};
use crate::parse::timestamp::from_rfc3339;
use crate::record::Labels;

pub(super) const NS: i64 = 1_000_000_000;

/// Whether `theirs` (a label set from Loki's text, which may have labels of
/// Loki's own such as `service_name`) is the stream of `ours`.
pub(super) fn covers(theirs: &LabelSet, ours: &Labels) -> bool {
    ours.iter().all(|(k, v)| {
        let found = theirs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        found.unwrap_or("") == v
    })
}

/// `entry with timestamp T ignored, reason: 'R',` (and, before 3.0, `… 'R' for
/// stream: {…},`).
pub(super) fn parse_listed(line: &str) -> Option<Listed> {
    let rest = line.strip_prefix("entry with timestamp ")?;
    let (time, reason) = rest.split_once(" ignored, reason: '")?;
    let timestamp_ns = go_time_ns(time)?;
    let cause = if reason.contains("too far behind") || reason.contains("entry out of order") {
        Cause::TooFarBehind
    } else if reason.contains("rate limit") {
        Cause::RateLimited
    } else if reason.contains("Max entry size") {
        Cause::TooLong
    } else if reason.contains("too old") {
        Cause::TooOld
    } else {
        Cause::Other
    };
    let cutoff_s = after(reason, "oldest acceptable timestamp is: ").and_then(rfc3339_s);
    Some(Listed {
        timestamp_ns,
        cause,
        cutoff_s,
    })
}

/// A Go `time.Time.String()`: `2026-11-01 10:00:00.123456789 +0000 UTC` (no
/// fraction when it is zero; a monotonic reading `m=+…` may follow).
pub(super) fn go_time_ns(text: &str) -> Option<i64> {
    let mut words = text.split_whitespace();
    let (date, time, offset) = (words.next()?, words.next()?, words.next()?);
    from_rfc3339(&format!("{date}T{time}{offset}")).map(|t| t.as_nanos())
}

/// An RFC 3339 time at the start of `text`, to the second (floored).
pub(super) fn rfc3339_s(text: &str) -> Option<i64> {
    let word = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '\'' || c == ';')
        .next()?;
    from_rfc3339(word).map(|t| t.as_nanos().div_euclid(NS))
}

pub(super) fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|at| &text[at + marker.len()..])
}

pub(super) fn number_before_quote(text: &str) -> Option<usize> {
    text.split('\'').next()?.parse().ok()
}

/// Splits the distributor's grouped text on `; `, outside quoted label values.
pub(super) fn split_grouped(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted && bytes.get(i + 1) == Some(&b' ') => {
                parts.push(text[start..i].trim());
                start = i + 2;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// A label set `{a="b", c="d"}` at the start of `text` (Go-quoted values).
pub(super) fn parse_label_set(text: &str) -> Option<LabelSet> {
    let mut rest = text.trim_start().strip_prefix('{')?;
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.starts_with('}') {
            return Some(out);
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_string();
        let (value, used) = go_unquote(rest[eq + 1..].trim_start())?;
        let skipped = rest[eq + 1..].len() - rest[eq + 1..].trim_start().len();
        rest = &rest[eq + 1 + skipped + used..];
        out.push((name, value));
    }
}

/// A Go double-quoted string at the start of `text`: its value and how many
/// bytes it took.
pub(super) fn go_unquote(text: &str) -> Option<(String, usize)> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                let hex = |chars: &mut std::str::CharIndices, n: usize| -> Option<char> {
                    let digits: String = (0..n)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
                };
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'v' => '\u{b}',
                    'x' => hex(&mut chars, 2)?,
                    'u' => hex(&mut chars, 4)?,
                    'U' => hex(&mut chars, 8)?,
                    other => other,
                });
            }
            c => out.push(c),
        }
    }
    None
}
