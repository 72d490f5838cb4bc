//! Value types of the config file that nginx users write as strings: durations (`"30s"`, `"7d"`) and
//! byte sizes (`"16k"`, `"20MB"`).

use serde::de::{Deserialize, Deserializer, Error as _};
use std::fmt;
use std::time::Duration;

/// A duration written like nginx's time values: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"7d"`, or
/// combinations such as `"1m 30s"` (parsed by `humantime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim()).map(Span).map_err(|e| {
            D::Error::custom(format!(
                "invalid duration {text:?}: {e} (expected e.g. \"500ms\", \"30s\", \"5m\", \"7d\")"
            ))
        })
    }
}

/// A byte count written like nginx's sizes: `"512"`, `"16k"`, `"8K"`, `"20m"`, `"20MB"`, `"1g"`, or a
/// bare integer. Units are powers of 1024, as in nginx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl Size {
    /// Parses the size syntax above; written by hand because it is six lines and nginx's suffixes
    /// (`k`, `m`, `g`, case-insensitive, optional `B`) differ from every size crate's.
    pub(crate) fn parse(text: &str) -> Option<Size> {
        let lower = text.trim().to_ascii_lowercase();
        let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
        let number: u64 = lower[..digits_end].parse().ok()?;
        let multiplier = match lower[digits_end..].trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return None,
        };
        number.checked_mul(multiplier).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16k\", \"20MB\" or a number of bytes")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v)
                    .ok_or_else(|| E::custom(format!("invalid size {v:?} (expected e.g. \"16k\", \"20MB\", \"1g\")")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_nginx_suffixes() {
        assert_eq!(Size::parse("512"), Some(Size(512)));
        assert_eq!(Size::parse("16k"), Some(Size(16 * 1024)));
        assert_eq!(Size::parse("20MB"), Some(Size(20 * 1024 * 1024)));
        assert_eq!(Size::parse("1g"), Some(Size(1 << 30)));
        assert_eq!(Size::parse("12 parsecs"), None);
        assert_eq!(Size::parse("k"), None);
        assert_eq!(Size::parse("99999999999999999999g"), None);
    }

    #[test]
    fn durations_accept_nginx_units() {
        let parse = |s: &str| humantime::parse_duration(s).unwrap();
        assert_eq!(parse("30s"), Duration::from_secs(30));
        assert_eq!(parse("7d"), Duration::from_secs(7 * 86400));
        assert_eq!(parse("500ms"), Duration::from_millis(500));
    }
}
