//! A line's own timestamp: epoch numbers (seconds, milliseconds, microseconds or
//! nanoseconds, told apart by magnitude) and RFC 3339 strings with any offset; and
//! the window outside which a timestamp is not trusted.
//!
//! Promise: pure functions, no allocation, no panic on any input; a value that is
//! not a timestamp, or one beyond what nanoseconds in an `i64` can hold (after
//! 2262), is `None` and the caller falls back to the read time.

use std::time::Duration;

use crate::record::Timestamp;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A decimal number of seconds, milliseconds, microseconds or nanoseconds since
/// the epoch, as JSON or a numeric string holds it (`1795388381726`,
/// `1795388381.726`, `"1795388381726000"`). The unit is told by the magnitude of
/// the integer part: below 10^11 seconds (10^11 s is the year 5138, while 10^11 ms
/// is 1973), below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds.
/// Negative values (before 1970) are not accepted.
/// An epoch time given as an integer (a JSON number the reader already
/// decoded): the same as [`from_epoch_number`] of its digits, without writing
/// them out again.
pub fn from_epoch_integer(int: u64) -> Option<Timestamp> {
    let (scale, _) = unit_of(int);
    Some(Timestamp(i64::try_from(int).ok()?.checked_mul(scale)?))
}

/// Nanoseconds per unit of an epoch integer (its unit told by its size:
/// seconds, milliseconds, microseconds, nanoseconds), and how many fraction
/// digits carry below the unit.
fn unit_of(int: u64) -> (i64, usize) {
    if int < 100_000_000_000 {
        (NANOS_PER_SEC, 9)
    } else if int < 100_000_000_000_000 {
        (1_000_000, 6)
    } else if int < 100_000_000_000_000_000 {
        (1_000, 3)
    } else {
        (1, 0)
    }
}

pub fn from_epoch_number(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if int_len == 0 {
        return None;
    }
    let (int_digits, rest) = b.split_at(int_len);
    let (frac_digits, rest) = match rest {
        [b'.', frac @ ..] => {
            let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            frac.split_at(n)
        }
        _ => (&[][..], rest),
    };
    if !rest.is_empty() {
        // An exponent (`1.7e9`): rare enough to go through a float.
        return from_epoch_float(text);
    }
    let int = digits_value(int_digits)?;
    let (scale, frac_places) = unit_of(int);
    let mut frac: i64 = 0;
    for i in 0..frac_places {
        let d = frac_digits.get(i).map_or(0, |d| i64::from(d - b'0'));
        frac = frac * 10 + d;
    }
    let nanos = i64::try_from(int)
        .ok()?
        .checked_mul(scale)?
        .checked_add(frac)?;
    Some(Timestamp(nanos))
}

/// `1.7953883e9` and the like.
fn from_epoch_float(text: &str) -> Option<Timestamp> {
    let v: f64 = text.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let scale = if v < 1e11 {
        1e9
    } else if v < 1e14 {
        1e6
    } else if v < 1e17 {
        1e3
    } else {
        1.0
    };
    let nanos = v * scale;
    if nanos >= i64::MAX as f64 {
        return None;
    }
    // In range and finite: the cast is exact enough (f64 has ~16 digits).
    Some(Timestamp(nanos as i64))
}

/// The value of a run of ASCII digits; `None` on overflow.
fn digits_value(digits: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// RFC 3339 as loggers write it: `2026-11-21T10:00:00Z`,
/// `2026-11-21T10:00:00.123456+02:00`, with a lower-case `t`/`z`, a space instead
/// of the `T`, a `+0200` offset. Without an offset the time is read as UTC (the VMs
/// this agent runs in keep UTC; a local time without its offset is ambiguous
/// anyway). Fractions beyond nanoseconds are cut.
pub fn from_rfc3339(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let year = fixed_digits(b, 0, 4)?;
    let month = fixed_digits(b, 5, 2)?;
    let day = fixed_digits(b, 8, 2)?;
    let hour = fixed_digits(b, 11, 2)?;
    let minute = fixed_digits(b, 14, 2)?;
    let second = fixed_digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // 60: a leap second, which rolls into the next minute.
        || second > 60
    {
        return None;
    }
    let mut pos = 19;
    let mut frac: i64 = 0;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while let Some(d) = b.get(pos).filter(|d| d.is_ascii_digit()) {
            if pos - start < 9 {
                frac = frac * 10 + i64::from(d - b'0');
            }
            pos += 1;
        }
        let n = pos - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            frac *= 10;
        }
    }
    let offset_secs: i64 = match &b[pos..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2] => (two_digits(*h1, *h2)?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (two_digits(*h1, *h2)?, two_digits(*m1, *m2)?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h) * 3600 + i64::from(m) * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_secs;
    let nanos = secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac)?;
    Some(Timestamp(nanos))
}

/// A string field's timestamp: a numeric string is an epoch number, anything else
/// RFC 3339.
pub fn from_string(text: &str) -> Option<Timestamp> {
    match text.as_bytes().first() {
        Some(c) if c.is_ascii_digit() && !text.contains(['-', ':', 'T', ' ']) => {
            from_epoch_number(text)
        }
        _ => from_rfc3339(text),
    }
}

/// Whether `ts` may be shipped as the entry's time: not older than `max_age` and
/// not further ahead than `max_ahead`, relative to when the line was read. Loki
/// rejects entries far in the past ("entry too far behind") or future; such a line
/// is better shipped at its read time than lost.
pub fn within_window(
    ts: Timestamp,
    read_time: Timestamp,
    max_age: Duration,
    max_ahead: Duration,
) -> bool {
    let age = i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX);
    let ahead = i64::try_from(max_ahead.as_nanos()).unwrap_or(i64::MAX);
    let oldest = read_time.0.saturating_sub(age);
    let newest = read_time.0.saturating_add(ahead);
    (oldest..=newest).contains(&ts.0)
}

fn fixed_digits(b: &[u8], at: usize, len: usize) -> Option<u32> {
    let mut n = 0u32;
    for d in b.get(at..at + len)? {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(d - b'0');
    }
    Some(n)
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    if a.is_ascii_digit() && b.is_ascii_digit() {
        Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
    } else {
        None
    }
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_reads_as_its_digits_do() {
        let mut values = vec![0, 1, u64::MAX, i64::MAX as u64, i64::MAX as u64 + 1];
        for edge in [
            100_000_000_000u64,
            100_000_000_000_000,
            100_000_000_000_000_000,
        ] {
            values.extend([edge - 1, edge, edge + 1]);
        }
        values.extend([1_795_388_381, 1_795_388_381_726, 1_795_388_381_726_123]);
        values.push(1_795_388_381_726_123_456);
        for n in values {
            assert_eq!(
                from_epoch_integer(n),
                from_epoch_number(&n.to_string()),
                "{n}"
            );
        }
    }

    const T: i64 = 1_795_388_381_726_000_000; // 2026-11-22T22:59:41.726Z

    #[test]
    fn epoch_numbers_are_told_apart_by_magnitude() {
        let table = [
            ("1795388381", Some(1_795_388_381_000_000_000)),
            ("1795388381.726", Some(T)),
            ("1795388381726", Some(T)),
            ("1795388381726.5", Some(T + 500_000)),
            ("1795388381726000", Some(T)),
            ("1795388381726000001", Some(T + 1)),
            ("1.795388381726e9", Some(T)),
            ("0", Some(0)),
            ("99999999999999999999", None),
            ("-1795388381", None),
            ("", None),
            ("abc", None),
            ("12abc", None),
        ];
        for (text, want) in table {
            let got = from_epoch_number(text).map(|t| t.0);
            match (got, want) {
                // Through a float: within a microsecond is exact enough.
                (Some(g), Some(w)) if text.contains('e') => {
                    assert!((g - w).abs() < 1_000, "{text}: {g} vs {w}")
                }
                _ => assert_eq!(got, want, "{text}"),
            }
        }
    }

    #[test]
    fn rfc3339_strings_with_offsets_fractions_and_variants_parse() {
        let table = [
            ("2026-11-22T22:59:41.726Z", Some(T)),
            ("2026-11-22T22:59:41.726z", Some(T)),
            ("2026-11-22t22:59:41.726Z", Some(T)),
            ("2026-11-22 22:59:41.726Z", Some(T)),
            ("2026-11-23T00:59:41.726+02:00", Some(T)),
            ("2026-11-23T00:59:41.726+0200", Some(T)),
            ("2026-11-22T20:59:41.726-02:00", Some(T)),
            ("2026-11-23T04:29:41.726+05:30", Some(T)),
            ("2026-11-22T22:59:41.726", Some(T)),
            ("2026-11-22T22:59:41.726000000999Z", Some(T)),
            ("2026-11-22T22:59:41Z", Some(T - 726_000_000)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000_000_000)),
            ("2023-02-29T00:00:00Z", None),
            ("2026-13-01T00:00:00Z", None),
            ("2026-11-22T24:00:00Z", None),
            ("2026-11-22T22:59:41.Z", None),
            ("2026-11-22T22:59:41+2", None),
            ("2026-11-22T22:59:41Zjunk", None),
            ("2026/11/22 22:59:41", None),
            ("9999-12-31T23:59:59Z", None),
            ("not a time", None),
            ("2026-11-22T22:59:4", None),
        ];
        for (text, want) in table {
            assert_eq!(from_rfc3339(text).map(|t| t.0), want, "{text}");
        }
    }

    #[test]
    fn string_fields_hold_either_numbers_or_rfc3339() {
        assert_eq!(from_string("1795388381726").map(|t| t.0), Some(T));
        assert_eq!(
            from_string("2026-11-22T22:59:41.726Z").map(|t| t.0),
            Some(T)
        );
        assert_eq!(from_string("yesterday"), None);
    }

    #[test]
    fn window_accepts_recent_and_rejects_too_old_or_too_far_ahead() {
        let read = Timestamp(T);
        let day = 86_400 * NANOS_PER_SEC;
        let age = Duration::from_secs(7 * 86_400);
        let ahead = Duration::from_secs(600);
        assert!(within_window(read, read, age, ahead));
        assert!(within_window(Timestamp(T - 6 * day), read, age, ahead));
        assert!(!within_window(Timestamp(T - 8 * day), read, age, ahead));
        assert!(within_window(
            Timestamp(T + 599 * NANOS_PER_SEC),
            read,
            age,
            ahead
        ));
        assert!(!within_window(
            Timestamp(T + 601 * NANOS_PER_SEC),
            read,
            age,
            ahead
        ));
        assert!(!within_window(Timestamp(0), read, age, ahead));
    }
}
