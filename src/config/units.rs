//! Durations (`"500ms"`, `"30s"`, `"5m"`, `"7d"`) and sizes (`"64KiB"`, `"512MiB"`)
//! as they are written in the configuration file.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string with a unit, e.g. `"1s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(s: u64) -> Self {
        Span(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Span(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`, `"7d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(
            "expected a duration such as \"500ms\", \"30s\" or \"5m\", found an empty string"
                .into(),
        );
    }
    humantime::parse_duration(s).map_err(|_| {
        format!("expected a duration such as \"500ms\", \"30s\" or \"5m\", found {s:?}")
    })
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration string such as \"30s\""))?;
        parse_duration(&s)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes, written `"64KiB"`, `"1MiB"`, `"512MiB"`, `"1GB"` or a bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    pub const fn kib(n: u64) -> Self {
        Size(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        Size(n * 1024 * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// As `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// Parses `"64KiB"`, `"512MiB"`, `"1GB"`, `"100"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let expected = || format!("expected a size such as \"64KiB\" or \"512MiB\", found {s:?}");
    if t.is_empty() || t.starts_with('-') {
        return Err(expected());
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| expected())
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("B", 1),
        ];
        for (name, n) in UNITS {
            if self.0 >= n && self.0.is_multiple_of(n) {
                return write!(f, "{}{}", self.0 / n, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"64KiB\" or a number of bytes")
        })? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        for (s, d) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("7d", Duration::from_secs(7 * 86400)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for bad in ["", "5", "fast", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        for (s, n) in [
            ("64KiB", 64 * 1024),
            ("512MiB", 512 << 20),
            ("1MiB", 1 << 20),
            ("1GB", 1_000_000_000),
            ("100", 100),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "lots", "-1KiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_print_back_in_the_largest_exact_unit() {
        assert_eq!(Size::mib(512).to_string(), "512MiB");
        assert_eq!(Size::kib(256).to_string(), "256KiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }
}
