//! The wire contract of protocol v1: header names, routes, JSON bodies and the index
//! row, plus the time formats they carry.
//!
//! Pure data and parsing; no clock is read here (callers pass `now`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::digest::Sha256;
use crate::id::{EpisodeId, HostId};

/// The `schema_version` of the health body and index rows.
pub const SCHEMA_VERSION: u32 = 1;

pub mod header {
    pub const REPR_DIGEST: &str = "repr-digest";
    pub const CONTENT_DIGEST: &str = "content-digest";
    /// Legacy hex sha256 sent by the cron-script peer; accepted, never sent.
    pub const X_CONTENT_SHA256: &str = "x-content-sha256";
    pub const X_TAR_DIGEST: &str = "x-tar-digest";
    pub const X_HOST_ID: &str = "x-host-id";
    pub const X_CODE_COMMIT: &str = "x-code-commit";
    pub const X_EPISODE_STARTED_AT: &str = "x-episode-started-at";
}

/// Media types a PUT body may be declared as.
pub const ARCHIVE_CONTENT_TYPES: &[&str] = &["application/zstd", "application/octet-stream"];

/// The archive suffix in the store and the outbox.
pub const ARCHIVE_SUFFIX: &str = ".tar.zst";

pub fn episode_path(host_id: &HostId, episode_id: &EpisodeId) -> String {
    format!("/v1/episodes/{host_id}/{episode_id}")
}

/// How a stored archive came to be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stored {
    Created,
    AlreadyPresent,
}

/// The body of a 200 or 201 to a PUT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBody {
    pub host_id: HostId,
    pub episode_id: EpisodeId,
    pub sha256: Sha256,
    pub bytes: u64,
    pub code_commit: Option<String>,
    pub stored: Stored,
    pub received_at: String,
}

/// The body of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthBody {
    pub ok: bool,
    pub schema_version: u32,
    pub host_id: Option<String>,
    pub version: String,
    pub server_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of the receiver's JSONL index: one per stored `(host_id, episode_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    pub host_id: HostId,
    pub episode_id: EpisodeId,
    pub sha256: Sha256,
    pub tar_sha256: Option<Sha256>,
    pub bytes: u64,
    pub code_commit: Option<String>,
    pub started_at: Option<String>,
    pub received_at: String,
    pub client: Option<String>,
}

/// RFC 3339 in UTC with second precision: `2026-11-22T10:00:00Z`.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither RFC 3339 nor Unix seconds")]
pub struct TimeParseError(pub String);

/// A start time as `meta.json` or `X-Episode-Started-At` carries it: RFC 3339, or Unix
/// seconds (integer or fractional).
pub fn parse_started_at(text: &str) -> Result<OffsetDateTime, TimeParseError> {
    let s = text.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let err = || TimeParseError(text.to_owned());
    if let Some(nanos) = decimal_nanos(s) {
        return OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| err());
    }
    // Other number forms (`1.7e9`): through f64, exact to the second in this era.
    let seconds: f64 = s.parse().map_err(|_| err())?;
    if !seconds.is_finite() {
        return Err(err());
    }
    let nanos = (seconds * 1e9) as i128;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| err())
}

/// `[-]digits[.digits]` seconds as exact nanoseconds (digits past the ninth
/// decimal dropped). f64 would move an instant far from 1970 by a second.
fn decimal_nanos(s: &str) -> Option<i128> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 20 || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let mut nanos = whole.parse::<i128>().ok()? * 1_000_000_000;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += i128::from(digit - b'0') * 10i128.pow(8 - i as u32);
    }
    Some(if negative { -nanos } else { nanos })
}

/// The creation time encoded in a ULID episode id (its first 10 Crockford base32
/// characters are milliseconds since the epoch); `None` for other ids.
pub fn ulid_time(episode_id: &str) -> Option<OffsetDateTime> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let bytes = episode_id.as_bytes();
    if bytes.len() != 26 {
        return None;
    }
    let mut all = bytes
        .iter()
        .map(|b| ALPHABET.iter().position(|a| a == &b.to_ascii_uppercase()));
    if !all.all(|p| p.is_some()) {
        return None;
    }
    let mut ms: u64 = 0;
    for &b in &bytes[..10] {
        let digit = ALPHABET.iter().position(|a| *a == b.to_ascii_uppercase())? as u64;
        ms = ms.checked_mul(32)?.checked_add(digit)?;
    }
    if ms >= 1 << 48 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// The `User-Agent` of our clients: `<name>/<version>`.
pub fn user_agent(name: &str, version: &str) -> String {
    format!("{name}/{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_times_in_both_forms() {
        let t = parse_started_at("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_795_341_600);
        assert_eq!(parse_started_at("1795341600").unwrap(), t);
        assert_eq!(parse_started_at("2026-11-22T11:00:00+01:00").unwrap(), t);
        assert_eq!(
            parse_started_at("1795341600.5").unwrap().unix_timestamp(),
            1_795_341_600
        );
        for bad in ["", "yesterday", "NaN", "inf", "2026-13-01T00:00:00Z"] {
            assert!(parse_started_at(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_seconds_are_exact_far_from_1970() {
        // Found by the meta_json fuzz target: through f64, -176082004582 became
        // -176082004583 (and a fraction could move the second anywhere past 2115).
        for secs in [
            -176_082_004_582i64,
            -4_700_000_001,
            9_999_999_999,
            253_402_300_799,
        ] {
            let t = parse_started_at(&secs.to_string()).unwrap();
            assert_eq!(t.unix_timestamp(), secs, "{secs}");
            assert_eq!(t.nanosecond(), 0, "{secs}");
        }
        let t = parse_started_at("-176082004582.25").unwrap();
        assert_eq!(t.unix_timestamp_nanos(), -176_082_004_582_250_000_000);
        let t = parse_started_at("4102444800.123456789123").unwrap();
        assert_eq!(t.unix_timestamp_nanos(), 4_102_444_800_123_456_789);
        assert_eq!(
            parse_started_at("1.7e9").unwrap().unix_timestamp(),
            1_700_000_000
        );
        assert_eq!(parse_started_at("5.").unwrap().unix_timestamp(), 5);
        assert!(parse_started_at("1-2").is_err());
    }

    #[test]
    fn formats_utc_seconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_341_600_123_000_000).unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-22T10:00:00Z");
    }

    #[test]
    fn reads_ulid_timestamps() {
        // 01ARZ3NDEK = 1469922850259 ms (decoded independently with Python).
        let t = ulid_time("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        assert_eq!(t.unix_timestamp_nanos() / 1_000_000, 1_469_922_850_259);
        assert_eq!(ulid_time("01EPISODE"), None);
        assert_eq!(ulid_time("01ARZ3NDEKTSV4RRFFQ69G5FAU!"), None);
        assert_eq!(ulid_time("01ARZ3NDEKTSV4RRFFQ69G5FA_"), None);
        assert_eq!(ulid_time("81ARZ3NDEKTSV4RRFFQ69G5FAV"), None);
    }

    #[test]
    fn index_rows_have_the_documented_fields() {
        let row = IndexRow {
            host_id: HostId::new("lab1").unwrap(),
            episode_id: EpisodeId::new("01EPISODE").unwrap(),
            sha256: Sha256::of(b"x"),
            tar_sha256: None,
            bytes: 1,
            code_commit: Some("abc".into()),
            started_at: None,
            received_at: "2026-11-22T10:00:00Z".into(),
            client: Some("lab1".into()),
        };
        let v = serde_json::to_value(&row).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bytes",
                "client",
                "code_commit",
                "episode_id",
                "host_id",
                "received_at",
                "sha256",
                "started_at",
                "tar_sha256"
            ]
        );
        assert_eq!(serde_json::from_value::<IndexRow>(v).unwrap(), row);
    }
}
