//! `TestEnv`: one test's private directory tree, PKI, and receiver configs.
//!
//! Owns the temp root (removed with the env unless `E2E_KEEP=1`), the PKI under
//! `<root>/pki/`, log file names for children under `<root>/logs/`, and writing
//! receiver configs. Starting processes lives in `process` and `receiver`. Invariant:
//! two envs never share a path or a port, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pki::Pki;

pub struct TestEnv {
    root: PathBuf,
    /// Keeps the directory alive; `None` when kept on purpose (`E2E_KEEP=1`).
    _dir: Option<tempfile::TempDir>,
    pub pki: Pki,
    n_logs: AtomicUsize,
    n_sockets: AtomicUsize,
}

impl TestEnv {
    /// A fresh env named after the test. Set `E2E_KEEP=1` to keep its directory.
    pub fn new(name: &str) -> Self {
        let short: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(24)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{short}-"))
            .tempdir()
            .expect("create temp dir");
        let root = dir.path().to_owned();
        let keep = std::env::var_os("E2E_KEEP").is_some_and(|v| v == "1");
        let dir = if keep {
            eprintln!("E2E_KEEP=1: keeping {}", root.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        std::fs::create_dir_all(root.join("logs")).expect("create logs dir");
        let pki = Pki::new(&root.join("pki"));
        Self {
            root,
            _dir: dir,
            pki,
            n_logs: AtomicUsize::new(0),
            n_sockets: AtomicUsize::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<name>`, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).expect("create env subdir");
        dir
    }

    /// Fresh stdout/stderr file paths for a child labelled `label`.
    pub fn log_paths(&self, label: &str) -> (PathBuf, PathBuf) {
        let n = self.n_logs.fetch_add(1, Ordering::Relaxed);
        let logs = self.root.join("logs");
        (
            logs.join(format!("{n:02}-{label}.stdout")),
            logs.join(format!("{n:02}-{label}.stderr")),
        )
    }

    /// A fresh path for a notify socket (short enough for `sun_path`).
    pub fn notify_socket_path(&self) -> PathBuf {
        let n = self.n_sockets.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!("notify-{n}.sock"))
    }

    /// Writes `<root>/<name>/receiver.toml`: store, incoming and index under
    /// `<root>/<name>/`, `free_space_reserve = "1MiB"`, and with `mtls` a `[tls]`
    /// table using the test PKI (client certificates required).
    ///
    /// `extra_toml` may hold top-level keys and tables: its top-level lines (those
    /// before its first `[table]` header) are placed with the generated top-level
    /// keys, its tables after the generated `[tls]` table. A top-level key in
    /// `extra_toml` replaces the generated one of the same name.
    pub fn receiver_config(&self, name: &str, mtls: bool, extra_toml: &str) -> PathBuf {
        let dir = self.dir(name);
        let (extra_top, extra_tables) = split_top_level(extra_toml);
        let overridden = |key: &str| sets_key(extra_top, key);
        let mut text = String::new();
        for (key, value) in [
            ("store_root", toml_str(&dir.join("store"))),
            ("incoming_root", toml_str(&dir.join("incoming"))),
            ("index_path", toml_str(&dir.join("index.jsonl"))),
            ("free_space_reserve", "\"1MiB\"".to_owned()),
        ] {
            if !overridden(key) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(extra_top);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if mtls {
            text.push_str(&format!(
                "\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n",
                toml_str(&self.pki.server_cert),
                toml_str(&self.pki.server_key),
                toml_str(&self.pki.ca),
            ));
        }
        if !extra_tables.is_empty() {
            text.push('\n');
            text.push_str(extra_tables);
            text.push('\n');
        }
        let path = dir.join("receiver.toml");
        std::fs::write(&path, text).expect("write receiver.toml");
        path
    }
}

/// A path as a TOML basic string.
pub fn toml_str(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("utf-8 path"))
}

/// True if the top-level TOML `text` assigns `key` (a line `key = …`).
pub(crate) fn sets_key(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        l.split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !l.trim_start().starts_with('#'))
    })
}

/// Splits TOML text at its first table header: (top-level part, tables part).
pub(crate) fn split_top_level(text: &str) -> (&str, &str) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            return (&text[..offset], &text[offset..]);
        }
        offset += line.len();
    }
    (text, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_configs_take_extra_keys_and_tables() {
        let env = TestEnv::new("config-writer");
        let path = env.receiver_config(
            "r",
            true,
            "free_space_reserve = \"0\"\nmax_episode_bytes = \"1MiB\"\n[window]\nmax_age = \"1d\"\n[auth]\nbearer_token_file = \"/t\"\n",
        );
        let table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        assert_eq!(table["free_space_reserve"].as_str(), Some("0"));
        assert_eq!(table["max_episode_bytes"].as_str(), Some("1MiB"));
        assert_eq!(
            table["store_root"].as_str().map(Path::new),
            Some(env.root().join("r/store").as_path())
        );
        assert_eq!(
            table["tls"]["client_ca"].as_str().map(Path::new),
            Some(env.pki.ca.as_path())
        );
        assert_eq!(table["window"]["max_age"].as_str(), Some("1d"));
        assert_eq!(table["auth"]["bearer_token_file"].as_str(), Some("/t"));
        let plain: toml::Table = std::fs::read_to_string(env.receiver_config("p", false, ""))
            .unwrap()
            .parse()
            .unwrap();
        assert!(!plain.contains_key("tls"));
        assert_eq!(plain["free_space_reserve"].as_str(), Some("1MiB"));
    }

    #[test]
    fn splits_top_level_keys_from_tables() {
        assert_eq!(split_top_level("a = 1\n"), ("a = 1\n", ""));
        assert_eq!(
            split_top_level("a = 1\n[window]\nmax_age = \"1d\"\n"),
            ("a = 1\n", "[window]\nmax_age = \"1d\"\n")
        );
        assert_eq!(split_top_level("  [auth]\nx = 1"), ("", "  [auth]\nx = 1"));
    }
}
