//! `--since`: how far back the journal is read ("10min", "10m", "1h", "30s",
//! "2d", "1h30m").
//!
//! Owns parsing the window and turning it into the arguments journalctl gets.
//! Pure: the caller passes "now". Accepts journalctl's own unit words (min, sec,
//! hour, day…) as well as the shipper config's short units, so a person can type
//! what they would type to journalctl.

use std::time::Duration;

/// Parses "10min", "1h30m", "2 days", "30s" (the shipper's duration syntax, which
/// also takes journalctl's unit words). Zero and empty are errors.
pub fn parse(text: &str) -> Result<Duration, String> {
    let window = episode_common::Dur::parse(text)
        .map_err(|_| {
            format!(
                "invalid --since {text:?}: expected a duration like \"10min\", \"30s\", \"1h\", \"2d\" or \"1h30m\""
            )
        })?
        .get();
    if window.is_zero() {
        return Err(format!("invalid --since {text:?}: must be more than 0s"));
    }
    Ok(window)
}

/// A short label for a window: "10m", "1h30m", "2d".
pub fn label(window: Duration) -> String {
    let mut secs = window.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// The oldest journal timestamp (Unix microseconds) inside the window.
pub fn cutoff_us(now_unix_us: i64, window: Duration) -> i64 {
    now_unix_us.saturating_sub(i64::try_from(window.as_micros()).unwrap_or(i64::MAX))
}

/// journalctl's `--since` for a cutoff: "@<unix seconds>" (systemd.time(7)), exact
/// and free of time zones.
pub fn journalctl_since(cutoff_us: i64) -> String {
    format!("--since=@{}", cutoff_us.div_euclid(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let table = [
            ("10min", 600),
            ("10m", 600),
            ("1h", 3600),
            ("30s", 30),
            ("2d", 172_800),
            ("1h30m", 5400),
            ("1h 30min", 5400),
            ("90 seconds", 90),
            ("1w", 604_800),
        ];
        for (text, want) in table {
            assert_eq!(parse(text), Ok(Duration::from_secs(want)), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for text in ["", "10", "min", "10 parsecs", "0s", "-5m", "1.5h", "10m x"] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with("invalid --since"), "{text}: {e}");
        }
    }

    #[test]
    fn labels_and_cutoffs() {
        assert_eq!(label(Duration::from_secs(600)), "10m");
        assert_eq!(label(Duration::from_secs(5400)), "1h30m");
        assert_eq!(label(Duration::from_secs(172_800)), "2d");
        assert_eq!(cutoff_us(10_000_000, Duration::from_secs(4)), 6_000_000);
        assert_eq!(journalctl_since(6_500_000), "--since=@6");
    }
}
