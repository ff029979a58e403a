//! Config primitives: durations ("250ms", "5s", "10m", "1h", "30d") and sizes
//! (integer bytes, "512MiB", "16GiB", "1GB"), with serde support, and the one way a
//! config file is read so that both daemons report errors alike.
//!
//! Parsing is pure; `parse_toml` takes the text and the path only to name it in errors.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A configured duration. Written as one or more `<number><unit>` groups, units
/// `ms`, `s`, `m`, `h`, `d` (`"1h30m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// A configured size in bytes. Binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal
/// (`KB`, `MB`, `GB`, `TB`) units, or a bare integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid duration {0:?}: expected e.g. \"250ms\", \"5s\", \"10m\", \"1h\", \"30d\"")]
    Duration(String),
    #[error("invalid size {0:?}: expected bytes or e.g. \"512MiB\", \"16GiB\"")]
    Size(String),
}

impl Dur {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let err = || ParseError::Duration(text.to_owned());
        let s = text.trim();
        if s.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            // The short units of the specs, and the words journalctl and people use.
            let per_unit = match unit {
                "ms" | "msec" => Duration::from_millis(1),
                "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(1),
                "m" | "min" | "mins" | "minute" | "minutes" => Duration::from_secs(60),
                "h" | "hr" | "hrs" | "hour" | "hours" => Duration::from_secs(3600),
                "d" | "day" | "days" => Duration::from_secs(86_400),
                "w" | "week" | "weeks" => Duration::from_secs(7 * 86_400),
                _ => return Err(err()),
            };
            // In milliseconds, so any count that `Display` may show ("<ms>ms") reads back.
            let part = u64::try_from(per_unit.as_millis())
                .ok()
                .and_then(|ms| n.checked_mul(ms))
                .map(Duration::from_millis)
                .ok_or_else(err)?;
            total = total.checked_add(part).ok_or_else(err)?;
        }
        if u64::try_from(total.as_millis()).is_err() {
            return Err(err());
        }
        Ok(Dur(total))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Dur {
    /// The shortest exact form in one unit: "250ms", "5s", "10m", "1h", "30d".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let err = || ParseError::Size(text.to_owned());
        let s = text.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = s[..digits].parse().map_err(|_| err())?;
        let unit = s[digits..].trim();
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "t" | "tb" => 1000 * 1000 * 1000 * 1000,
            "tib" => 1 << 40,
            _ => return Err(err()),
        };
        n.checked_mul(multiplier).map(ByteSize).ok_or_else(err)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// Human form with one decimal in binary units: "512 B", "1.5 MiB", "16.0 GiB".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        let mut value = n as f64;
        for unit in ["KiB", "MiB", "GiB", "TiB"] {
            value /= 1024.0;
            if value < 1024.0 || unit == "TiB" {
                return write!(f, "{value:.1} {unit}");
            }
        }
        unreachable!("the loop returns at TiB")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"5s\", \"10m\", \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: integer bytes or a string like \"512MiB\", \"16GiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A config file that could not be used. Its `Display` names the file, and toml's
/// message names the key, line and column.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &Path, message: impl fmt::Display) -> Self {
        Self {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

/// Parses config text read from `path` (the path is only used in errors). Unknown
/// keys are errors when `T` says `deny_unknown_fields`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::new(path, e.to_string().trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_reads_back_from_how_it_is_shown() {
        // Found by the config_toml fuzz target: a duration of more than 2^32 ms
        // not a whole second was shown as "<ms>ms", which did not parse.
        for text in [
            "49d 1m49d 1ms",
            "5000000000ms",
            "50d 1ms",
            "18446744073709551615ms",
        ] {
            let d = Dur::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                Dur::parse(&d.to_string()).ok(),
                Some(d),
                "{text:?} shows as {d}"
            );
        }
        // A total beyond u64 milliseconds could not be shown that way.
        assert!(Dur::parse("18446744073709551615ms 1ms").is_err());
    }

    #[test]
    fn parses_durations() {
        let table = [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("30d", Duration::from_secs(30 * 86_400)),
            ("0s", Duration::ZERO),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("10min", Duration::from_secs(600)),
            ("5 s", Duration::from_secs(5)),
            ("2 days", Duration::from_secs(2 * 86_400)),
            ("1 hour 30 minutes", Duration::from_secs(5400)),
            (" 2s ", Duration::from_secs(2)),
        ];
        for (text, want) in table {
            assert_eq!(Dur::parse(text), Ok(Dur(want)), "{text}");
        }
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-5s",
            "1.5s",
            "5 parsecs",
            "999999999999d",
        ] {
            assert!(Dur::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn displays_durations_in_the_config_form() {
        for text in ["250ms", "5s", "10m", "1h", "30d", "0s", "90s"] {
            assert_eq!(Dur::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn parses_sizes() {
        let table = [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("1KiB", 1024),
            ("512MiB", 512 << 20),
            ("16GiB", 16 << 30),
            ("16gib", 16 << 30),
            ("1GB", 1_000_000_000),
            ("2 TiB", 2 << 40),
        ];
        for (text, want) in table {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(want)), "{text}");
        }
        for bad in ["", "GiB", "1.5GiB", "-1", "1PiB", "99999999999TiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_deserialize_from_integers_and_strings() {
        #[derive(Debug, Deserialize)]
        struct C {
            a: ByteSize,
            b: ByteSize,
            d: Dur,
        }
        let c: C = serde_json::from_str(r#"{"a": 100, "b": "1MiB", "d": "5s"}"#).unwrap();
        assert_eq!(
            (c.a.0, c.b.0, c.d.0),
            (100, 1 << 20, Duration::from_secs(5))
        );
        let err = serde_json::from_str::<C>(r#"{"a": -1, "b": "1MiB", "d": "5s"}"#).unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = serde_json::from_str::<C>(r#"{"a": 1, "b": "1MiB", "d": 5}"#).unwrap_err();
        assert!(err.to_string().contains("duration"), "{err}");
    }

    #[test]
    fn displays_sizes_for_humans() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(16 << 30).to_string(), "16.0 GiB");
    }
}
