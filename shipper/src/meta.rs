//! What the shipper reads from an episode's `meta.json`: `code_commit` and
//! `started_at`, for the `X-Code-Commit` and `X-Episode-Started-At` headers.
//!
//! Never fails: a missing, oversized or malformed `meta.json`, or a field of the
//! wrong shape, leaves that header out (with a warning naming the file and field)
//! and the receiver decides. `started_at` is normalized to RFC 3339.

use std::path::Path;

use episode_common::wire::{format_rfc3339, parse_started_at};
use serde_json::Value;

const META_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub code_commit: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    /// Why a field was left out, for the log.
    pub warnings: Vec<String>,
}

pub fn read(episode_dir: &Path) -> Meta {
    let path = episode_dir.join("meta.json");
    let mut meta = Meta::default();
    let bytes = match std::fs::metadata(&path) {
        Err(_) => {
            meta.warnings.push(format!("{}: missing", path.display()));
            return meta;
        }
        Ok(m) if m.len() > META_LIMIT => {
            meta.warnings
                .push(format!("{}: larger than 1 MiB, not read", path.display()));
            return meta;
        }
        Ok(_) => match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                meta.warnings.push(format!("{}: {e}", path.display()));
                return meta;
            }
        },
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            meta.warnings
                .push(format!("{}: malformed JSON: {e}", path.display()));
            return meta;
        }
    };
    parse(&value, &path.display().to_string(), &mut meta);
    meta
}

fn parse(value: &Value, file: &str, meta: &mut Meta) {
    match value.get("code_commit") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_header_safe(s) => meta.code_commit = Some(s.clone()),
        Some(other) => meta.warnings.push(format!(
            "{file}: code_commit {other} is not a short printable string"
        )),
    }
    let started = match value.get("started_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            meta.warnings.push(format!(
                "{file}: started_at {other} is neither a string nor a number"
            ));
            None
        }
    };
    if let Some(text) = started {
        match parse_started_at(&text) {
            Ok(t) => meta.started_at = Some(format_rfc3339(t)),
            Err(e) => meta.warnings.push(format!("{file}: started_at: {e}")),
        }
    }
}

fn is_header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Meta {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta.json"), text).unwrap();
        read(dir.path())
    }

    #[test]
    fn reads_both_fields_in_every_documented_form() {
        let m = read_text(r#"{"code_commit": "3f2c1e9a", "started_at": 1795341600}"#);
        assert_eq!(m.code_commit.as_deref(), Some("3f2c1e9a"));
        assert_eq!(m.started_at.as_deref(), Some("2026-11-22T10:00:00Z"));
        let m = read_text(r#"{"code_commit": "x", "started_at": "2026-11-22T11:00:00+01:00"}"#);
        assert_eq!(m.started_at.as_deref(), Some("2026-11-22T10:00:00Z"));
        let m = read_text(r#"{"started_at": "1795341600.25"}"#);
        assert_eq!(
            (m.code_commit, m.started_at.as_deref()),
            (None, Some("2026-11-22T10:00:00Z"))
        );
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn bad_input_drops_fields_with_a_warning_never_fails() {
        for text in [
            "{not json",
            "[]",
            r#"{"code_commit": 42}"#,
            r#"{"code_commit": "has space"}"#,
            r#"{"started_at": "soon"}"#,
            r#"{"started_at": {}}"#,
        ] {
            let m = read_text(text);
            assert_eq!(
                (m.code_commit.as_deref(), m.started_at.as_deref()),
                (None, None),
                "{text}"
            );
            if text != "[]" {
                assert!(!m.warnings.is_empty(), "{text}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let m = read(dir.path());
        assert!(m.warnings[0].contains("missing"));
    }
}
