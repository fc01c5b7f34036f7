//! Log levels: the seven values of the `level` label, and how a field's value (a
//! Pino/bunyan number or a level name in any case, with its synonyms) maps to one.
//!
//! Promise: every input maps to a level, `Unknown` when nothing fits; no input
//! panics or allocates.

/// The `level` label's values. `Unknown` when the line names no level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
    Unknown,
}

impl Level {
    /// Every level, in the order of their discriminants (used to index caches).
    pub const ALL: [Level; 7] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
        Level::Unknown,
    ];

    /// The label value: `trace|debug|info|warn|error|fatal|unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
            Level::Unknown => "unknown",
        }
    }

    /// Pino and bunyan numbers: 10 trace, 20 debug, 30 info, 40 warn, 50 error,
    /// 60 fatal. A number in between (Pino custom levels such as `audit` = 35)
    /// takes the level below it; anything from 60 up is fatal. Below 10 there is
    /// no level below to take, so it is `Unknown`.
    pub fn from_number(n: i64) -> Level {
        match n {
            i64::MIN..=9 => Level::Unknown,
            10..=19 => Level::Trace,
            20..=29 => Level::Debug,
            30..=39 => Level::Info,
            40..=49 => Level::Warn,
            50..=59 => Level::Error,
            _ => Level::Fatal,
        }
    }

    /// A level name in any case, with the synonyms loggers use: `warning`→warn,
    /// `err`→error, `crit`/`critical`/`alert`/`emerg`/`panic`→fatal, `dbg`→debug,
    /// `information`/`notice`→info; also NestJS's `log` (info) and `verbose`
    /// (trace), winston's `silly` (trace). A numeric string (`"30"`) is read as a
    /// Pino number. Anything else is `None`.
    pub fn from_name(name: &str) -> Option<Level> {
        let name = name.trim();
        // The longest synonym is `information` (11 bytes): longer input is no name.
        if name.is_empty() || name.len() > 11 {
            return parse_small_int(name).map(Level::from_number);
        }
        let mut buf = [0u8; 11];
        for (d, s) in buf.iter_mut().zip(name.bytes()) {
            *d = s.to_ascii_lowercase();
        }
        let lower = &buf[..name.len()];
        let level = match lower {
            b"trace" | b"verbose" | b"silly" => Level::Trace,
            b"debug" | b"dbg" => Level::Debug,
            b"info" | b"information" | b"notice" | b"log" => Level::Info,
            b"warn" | b"warning" => Level::Warn,
            b"error" | b"err" => Level::Error,
            b"fatal" | b"crit" | b"critical" | b"alert" | b"emerg" | b"emergency" | b"panic" => {
                Level::Fatal
            }
            _ => return parse_small_int(name).map(Level::from_number),
        };
        Some(level)
    }

    /// Index of this level in [`Level::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decimal integer such as `"30"` or `"-5"`; saturates instead of overflowing
/// (a huge number is simply "very fatal").
fn parse_small_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: i64 = 0;
    for d in digits {
        n = n.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pino_numbers_map_to_levels_and_in_between_takes_the_level_below() {
        let table = [
            (10, Level::Trace),
            (15, Level::Trace),
            (20, Level::Debug),
            (30, Level::Info),
            (35, Level::Info),
            (40, Level::Warn),
            (49, Level::Warn),
            (50, Level::Error),
            (60, Level::Fatal),
            (100, Level::Fatal),
            (i64::MAX, Level::Fatal),
            (9, Level::Unknown),
            (0, Level::Unknown),
            (-30, Level::Unknown),
        ];
        for (n, want) in table {
            assert_eq!(Level::from_number(n), want, "number {n}");
        }
    }

    #[test]
    fn level_names_in_any_case_and_their_synonyms_are_normalised() {
        let table = [
            ("trace", Some(Level::Trace)),
            ("VERBOSE", Some(Level::Trace)),
            ("debug", Some(Level::Debug)),
            ("DBG", Some(Level::Debug)),
            ("Info", Some(Level::Info)),
            ("information", Some(Level::Info)),
            ("NOTICE", Some(Level::Info)),
            ("log", Some(Level::Info)),
            ("warn", Some(Level::Warn)),
            ("Warning", Some(Level::Warn)),
            ("error", Some(Level::Error)),
            ("ERR", Some(Level::Error)),
            ("fatal", Some(Level::Fatal)),
            ("crit", Some(Level::Fatal)),
            ("CRITICAL", Some(Level::Fatal)),
            ("alert", Some(Level::Fatal)),
            ("emerg", Some(Level::Fatal)),
            ("panic", Some(Level::Fatal)),
            (" info ", Some(Level::Info)),
            ("30", Some(Level::Info)),
            ("45", Some(Level::Warn)),
            ("99999999999999999999999", Some(Level::Fatal)),
            ("", None),
            ("informational-ish", None),
            ("bogus", None),
            ("ïnfo", None),
        ];
        for (name, want) in table {
            assert_eq!(Level::from_name(name), want, "name {name:?}");
        }
    }

    #[test]
    fn label_values_are_the_documented_strings() {
        let names: Vec<_> = Level::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(
            names,
            ["trace", "debug", "info", "warn", "error", "fatal", "unknown"]
        );
        for (i, l) in Level::ALL.iter().enumerate() {
            assert_eq!(l.index(), i);
        }
    }
}
