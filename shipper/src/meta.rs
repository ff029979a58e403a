//! What the shipper reads from `meta.json` (`code_commit`, `started_at`) for its
//! headers. Never fails, never blocks, never follows a symlink: a bad file or field
//! leaves the header out with a warning naming it, and the receiver decides.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
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
    /// The size of a `meta.json` too large to read (over 1 MiB): its fields were not
    /// looked at, so a rejection for a missing header is about this, not about the
    /// recorder.
    pub oversized: Option<u64>,
}

impl Meta {
    /// What to tell an operator about a rejection of an episode sent with this
    /// `meta.json`, when the shipper itself left the headers out.
    pub fn explain_rejection(&self) -> Option<String> {
        self.oversized.map(|size| {
            format!(
                "meta.json is {size} bytes, over the {META_LIMIT}-byte limit the shipper reads, so it was not read and the episode was sent without X-Code-Commit and X-Episode-Started-At (whatever meta.json holds); make meta.json smaller, then requeue"
            )
        })
    }
}

pub fn read(episode_dir: &Path) -> Meta {
    let path = episode_dir.join("meta.json");
    let mut meta = Meta::default();
    let bytes = match read_limited(&path) {
        Ok(b) => b,
        Err((why, oversized)) => {
            meta.warnings.push(format!("{}: {why}", path.display()));
            meta.oversized = oversized;
            return meta;
        }
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

/// The bytes of a regular file of at most `META_LIMIT` bytes, or why not (and the
/// size of a file too large).
fn read_limited(path: &Path) -> Result<Vec<u8>, (String, Option<u64>)> {
    let plain = |why: String| (why, None);
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(plain("missing".into())),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(plain("a symlink, not a regular file; not read".into()));
        }
        Err(e) => return Err(plain(e.to_string())),
    };
    let metadata = file.metadata().map_err(|e| plain(e.to_string()))?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(plain(format!("{what}, not a regular file; not read")));
    }
    let claimed = metadata.len();
    let mut bytes = Vec::new();
    file.take(META_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| plain(e.to_string()))?;
    if bytes.len() as u64 > META_LIMIT {
        let size = claimed.max(bytes.len() as u64);
        return Err((
            format!("{size} bytes, larger than 1 MiB, not read"),
            Some(size),
        ));
    }
    Ok(bytes)
}

/// Reads the two fields from a parsed `meta.json`; `file` names it in warnings.
pub fn parse(value: &Value, file: &str, meta: &mut Meta) {
    match value.get("code_commit") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_header_safe(s.trim()) => {
            meta.code_commit = Some(s.trim().to_owned());
        }
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

    #[test]
    fn a_trailing_newline_does_not_drop_the_commit() {
        for text in [
            r#"{"code_commit": "abc\n"}"#,
            r#"{"code_commit": "  abc\t"}"#,
        ] {
            let m = read_text(text);
            assert_eq!(m.code_commit.as_deref(), Some("abc"), "{text}");
            assert!(m.warnings.is_empty(), "{text}: {:?}", m.warnings);
        }
        let m = read_text(r#"{"code_commit": " \n"}"#);
        assert_eq!(m.code_commit, None);
        assert!(!m.warnings.is_empty());
    }

    /// Runs `read` on a thread: a `read` that blocks fails the test instead of
    /// hanging it.
    fn read_within(dir: &Path) -> Meta {
        let dir = dir.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read(&dir));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("meta::read blocked")
    }

    #[test]
    fn a_fifo_is_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            std::ffi::CString::new(dir.path().join("meta.json").as_os_str().as_encoded_bytes())
                .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
        let m = read_within(dir.path());
        assert_eq!((m.code_commit, m.started_at), (None, None));
        assert!(
            m.warnings[0].contains("not a regular file"),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn a_symlink_to_an_endless_device_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("meta.json")).unwrap();
        let m = read_within(dir.path());
        assert!(m.warnings[0].contains("symlink"), "{:?}", m.warnings);
    }

    #[test]
    fn a_huge_file_is_malformed_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("meta.json")).unwrap();
        file.set_len(64 << 20).unwrap();
        let m = read_within(dir.path());
        assert!(
            m.warnings[0].contains("67108864 bytes, larger than 1 MiB"),
            "{:?}",
            m.warnings
        );
        assert_eq!(m.oversized, Some(64 << 20));
        let why = m.explain_rejection().unwrap();
        assert!(
            why.contains("meta.json is 67108864 bytes") && why.contains("not read"),
            "{why}"
        );
        // Exactly the limit is still read (and here is malformed JSON).
        let file = std::fs::File::create(dir.path().join("meta.json")).unwrap();
        file.set_len(META_LIMIT).unwrap();
        let m = read_within(dir.path());
        assert!(m.warnings[0].contains("malformed JSON"), "{:?}", m.warnings);
        assert_eq!((m.oversized, m.explain_rejection()), (None, None));
    }
}
