//! The receiver's configuration file (receiver.md, "Config"): schema (unknown keys
//! are errors), defaults, and the checks possible without serving (`check_paths`);
//! every error names the file and key, which `main` makes exit 78.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use episode_common::config::{ConfigError, parse_toml};
use episode_common::{ByteSize, Dur};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/episode-receiver/receiver.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    #[serde(default = "defaults::store_root")]
    pub store_root: PathBuf,
    #[serde(default = "defaults::incoming_root")]
    pub incoming_root: PathBuf,
    #[serde(default = "defaults::index_path")]
    pub index_path: PathBuf,
    #[serde(default = "defaults::max_episode_bytes")]
    pub max_episode_bytes: ByteSize,
    #[serde(default = "defaults::yes")]
    pub require_code_commit: bool,
    #[serde(default = "defaults::free_space_reserve")]
    pub free_space_reserve: ByteSize,
    #[serde(default = "defaults::max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    #[serde(default = "defaults::max_uploads_per_host")]
    pub max_uploads_per_host: usize,
    #[serde(default = "defaults::body_idle_timeout")]
    pub body_idle_timeout: Dur,
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Dur,
    /// Time allowed for a client to send its request headers.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Time allowed for a TLS handshake.
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: Dur,
    /// Open connections in total; further clients wait in the listen backlog.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// The ops listener (observability.md): /metrics, /livez, /readyz, the fleet page.
    pub metrics_listen: Option<SocketAddr>,
    /// Present: the ops listener wants `Authorization: Bearer <token>` but on
    /// `/livez` and `/readyz`.
    pub ops_token_file: Option<PathBuf>,
    #[serde(default)]
    pub fleet: FleetConfig,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    pub window: Option<WindowConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// A host with no stored episode for this long is `stale`.
    #[serde(default = "defaults::stale_after")]
    pub stale_after: StaleAfter,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            stale_after: defaults::stale_after(),
        }
    }
}

/// `[fleet] stale_after`, with its text as written (shown as such by `/api/hosts`).
#[derive(Debug, Clone)]
pub struct StaleAfter {
    pub dur: Dur,
    pub text: String,
}

impl<'de> Deserialize<'de> for StaleAfter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let dur = Dur::parse(&text).map_err(serde::de::Error::custom)?;
        Ok(StaleAfter { dur, text })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Present: a client certificate chaining to it is required.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(default = "defaults::max_age")]
    pub max_age: Dur,
    #[serde(default = "defaults::max_future")]
    pub max_future: Dur,
}

mod defaults {
    use super::*;
    use std::time::Duration;

    pub fn listen() -> SocketAddr {
        "0.0.0.0:8443".parse().expect("valid literal")
    }
    pub fn store_root() -> PathBuf {
        "/var/lib/episode-receiver/store".into()
    }
    pub fn incoming_root() -> PathBuf {
        "/var/lib/episode-receiver/incoming".into()
    }
    pub fn index_path() -> PathBuf {
        "/var/lib/episode-receiver/index.jsonl".into()
    }
    pub fn max_episode_bytes() -> ByteSize {
        ByteSize(16 << 30)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn free_space_reserve() -> ByteSize {
        ByteSize(1 << 30)
    }
    pub fn max_concurrent_uploads() -> usize {
        64
    }
    pub fn max_uploads_per_host() -> usize {
        4
    }
    pub fn body_idle_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn shutdown_grace() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn header_read_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn handshake_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn max_connections() -> usize {
        1024
    }
    pub fn stale_after() -> StaleAfter {
        StaleAfter {
            dur: Dur(Duration::from_secs(86_400)),
            text: "24h".into(),
        }
    }
    pub fn max_age() -> Dur {
        Dur(Duration::from_secs(30 * 86_400))
    }
    pub fn max_future() -> Dur {
        Dur(Duration::from_secs(3600))
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        let config: Config = parse_toml(path, &text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks what a schema cannot: numbers in range and files that must be readable.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(path, format!("{key}: {msg}"));
        if self.max_concurrent_uploads == 0 {
            return Err(err("max_concurrent_uploads", "must be at least 1".into()));
        }
        if self.max_uploads_per_host == 0 {
            return Err(err("max_uploads_per_host", "must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(err("max_connections", "must be at least 1".into()));
        }
        if self.fleet.stale_after.dur.get().is_zero() {
            return Err(err("fleet.stale_after", "must be more than 0s".into()));
        }
        if self.body_idle_timeout.get().is_zero() {
            return Err(err("body_idle_timeout", "must be more than 0s".into()));
        }
        for (key, dir) in [
            ("store_root", &self.store_root),
            ("incoming_root", &self.incoming_root),
        ] {
            if dir.as_os_str().is_empty() {
                return Err(err(key, "must not be empty".into()));
            }
        }
        if self.index_path.file_name().is_none() {
            return Err(err(
                "index_path",
                format!("{} is not a file path", self.index_path.display()),
            ));
        }
        let mut files: Vec<(&str, &Path)> = Vec::new();
        if let Some(tls) = &self.tls {
            files.push(("tls.cert", &tls.cert));
            files.push(("tls.key", &tls.key));
            if let Some(ca) = &tls.client_ca {
                files.push(("tls.client_ca", ca));
            }
        }
        if let Some(token) = &self.auth.bearer_token_file {
            files.push(("auth.bearer_token_file", token));
        }
        if let Some(token) = &self.ops_token_file {
            files.push(("ops_token_file", token));
        }
        for (key, file) in files {
            if let Err(e) = std::fs::File::open(file) {
                return Err(err(key, format!("cannot read {}: {e}", file.display())));
            }
        }
        Ok(())
    }

    /// Creates the directory of `index_path` (the file itself is created and locked
    /// by `open`, before anything else is touched).
    pub fn prepare_index_dir(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(parent) = self
            .index_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                ConfigError::new(
                    path,
                    format!("index_path: cannot create {}: {e}", parent.display()),
                )
            })?;
        }
        Ok(())
    }

    /// Creates `store_root` and `incoming_root` and proves an upload can be
    /// published by rename: both on one filesystem, and a probe file renamed from
    /// one into the other (two bind mounts of one filesystem share a device number,
    /// yet a rename between them fails with EXDEV). The probe is a dot-file, a name
    /// no archive or host directory can have, and is removed at once.
    pub fn prepare_dirs(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(path, format!("{key}: {msg}"));
        self.check_paths(path)?;
        for (key, dir) in [
            ("store_root", &self.store_root),
            ("incoming_root", &self.incoming_root),
        ] {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(key, format!("cannot create {}: {e}", dir.display())))?;
        }
        self.check_same_filesystem(path)?;
        let (from, to) = (
            self.incoming_root.join(RENAME_PROBE),
            self.store_root.join(RENAME_PROBE),
        );
        let _ = std::fs::remove_file(&to); // left by a crash during a probe
        std::fs::File::create(&from).map_err(|e| {
            err(
                "incoming_root",
                format!(
                    "cannot create a file in {}: {e}",
                    self.incoming_root.display()
                ),
            )
        })?;
        let renamed = episode_common::fsx::rename_noreplace(&from, &to);
        let _ = std::fs::remove_file(&from);
        match renamed {
            Ok(()) => std::fs::remove_file(&to)
                .map_err(|e| err("store_root", format!("cannot remove {}: {e}", to.display()))),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(err(
                "incoming_root",
                format!(
                    "{} and store_root {} are on different mounts (a rename between them fails: {e}); \
                     uploads are published by rename, so put both under one mount",
                    self.incoming_root.display(),
                    self.store_root.display()
                ),
            )),
            Err(e) => Err(err(
                "store_root",
                format!(
                    "cannot move a file from incoming_root {} into {}: {e}",
                    self.incoming_root.display(),
                    self.store_root.display()
                ),
            )),
        }
    }

    /// The read-only checks of the paths that `check` and `run` share, so they
    /// cannot disagree: every path writable (`check_writable`) and `incoming_root`
    /// on `store_root`'s filesystem (`check_same_filesystem`).
    pub fn check_paths(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_writable(path)?;
        self.check_same_filesystem(path)
    }

    /// Read-only: `store_root`, `incoming_root` and the
    /// directory of `index_path` (or, not created yet, their nearest existing
    /// ancestor) can be written, so a read-only filesystem fails both the same way.
    pub fn check_writable(&self, path: &Path) -> Result<(), ConfigError> {
        let index_dir = self
            .index_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (key, dir) in [
            ("store_root", self.store_root.as_path()),
            ("incoming_root", self.incoming_root.as_path()),
            ("index_path", index_dir),
        ] {
            let existing = nearest_existing(dir);
            let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
                existing.as_os_str(),
            ))
            .map_err(|e| ConfigError::new(path, format!("{key}: {e}")))?;
            // SAFETY: a valid NUL-terminated path; access only reads it.
            if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
                let e = std::io::Error::last_os_error();
                let why = match e.raw_os_error() {
                    Some(libc::EROFS) => "is on a read-only filesystem".to_owned(),
                    _ => format!("is not writable: {e}"),
                };
                return Err(ConfigError::new(
                    path,
                    format!("{key}: {} {why}", existing.display()),
                ));
            }
        }
        Ok(())
    }

    /// Read-only: `incoming_root` and `store_root` are on one filesystem (for a
    /// directory not created yet, the nearest existing ancestor stands in).
    pub fn check_same_filesystem(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::MetadataExt as _;
        let err = |key: &str, msg: String| ConfigError::new(path, format!("{key}: {msg}"));
        let dev = |key: &str, dir: &Path| {
            let existing = nearest_existing(dir);
            std::fs::metadata(existing)
                .map(|m| m.dev())
                .map_err(|e| err(key, format!("cannot stat {}: {e}", existing.display())))
        };
        if dev("store_root", &self.store_root)? != dev("incoming_root", &self.incoming_root)? {
            return Err(err(
                "incoming_root",
                format!(
                    "{} is not on the same filesystem as store_root {}; uploads are published by rename",
                    self.incoming_root.display(),
                    self.store_root.display()
                ),
            ));
        }
        Ok(())
    }
}

/// The file `prepare_dirs` renames from `incoming_root` into `store_root` and removes.
const RENAME_PROBE: &str = ".episode-receiver-rename-probe";

/// `dir`, or its nearest ancestor that exists (`.` for a relative path with none).
fn nearest_existing(dir: &Path) -> &Path {
    let mut at = dir;
    while std::fs::symlink_metadata(at).is_err() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return Path::new("."),
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_toml(Path::new("r.toml"), text)
    }

    #[test]
    fn the_documented_example_parses_with_its_values() {
        let c = parse(
            r#"
listen = "0.0.0.0:8443"
store_root = "/s"
incoming_root = "/i"
index_path = "/x/index.jsonl"
max_episode_bytes = "16GiB"
require_code_commit = true
free_space_reserve = "1GiB"
max_concurrent_uploads = 64
max_uploads_per_host = 4
body_idle_timeout = "60s"
shutdown_grace = "30s"
metrics_listen = "127.0.0.1:9465"
ops_token_file = "/etc/episode-receiver/ops-token"
[fleet]
stale_after = "24h"
[tls]
cert = "/c.pem"
key = "/c.key"
client_ca = "/ca.pem"
[auth]
bearer_token_file = "/t"
[window]
max_age = "30d"
max_future = "1h"
"#,
        )
        .unwrap();
        assert_eq!(c.max_episode_bytes.0, 16 << 30);
        assert_eq!(c.window.unwrap().max_age.get().as_secs(), 30 * 86_400);
        assert_eq!(c.tls.unwrap().client_ca.unwrap(), Path::new("/ca.pem"));
        assert_eq!(c.metrics_listen.unwrap().port(), 9465);
        assert_eq!(c.fleet.stale_after.text, "24h");
        assert_eq!(c.fleet.stale_after.dur.get().as_secs(), 86_400);
        assert!(c.ops_token_file.is_some());
    }

    #[test]
    fn a_bad_stale_after_names_its_key() {
        let e = parse("[fleet]\nstale_after = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale_after"), "{e}");
        let e = parse("[fleet]\nstale_afterr = \"1h\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale_afterr"), "{e}");
        let c = parse("[fleet]\nstale_after = \"0s\"").unwrap();
        let e = c.validate(Path::new("r.toml")).unwrap_err().to_string();
        assert!(e.contains("fleet.stale_after"), "{e}");
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let c = parse("").unwrap();
        assert_eq!(c.max_uploads_per_host, 4);
        assert_eq!(c.free_space_reserve.0, 1 << 30);
        assert!(c.require_code_commit && c.tls.is_none() && c.window.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("listn = \"x\"").unwrap_err().to_string();
        assert!(
            e.contains("listn") && e.starts_with("config r.toml:"),
            "{e}"
        );
        let e = parse("max_episode_bytes = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_episode_bytes") && e.contains("invalid size"),
            "{e}"
        );
        let e = parse("[tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_cert = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_cert"), "{e}");
    }

    fn dirs_config(store: &Path, incoming: &Path, index: &Path) -> Config {
        parse(&format!(
            "store_root = {store:?}\nincoming_root = {incoming:?}\nindex_path = {index:?}\n"
        ))
        .unwrap()
    }

    #[test]
    fn prepare_dirs_proves_the_rename_and_leaves_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        let (store, incoming) = (dir.path().join("s/store"), dir.path().join("i/incoming"));
        let c = dirs_config(&store, &incoming, &dir.path().join("x/index.jsonl"));
        // Read-only before they exist: their ancestors stand in.
        c.check_same_filesystem(Path::new("r.toml")).unwrap();
        assert!(!store.exists() && !incoming.exists());
        c.prepare_dirs(Path::new("r.toml")).unwrap();
        for d in [&store, &incoming] {
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{}", d.display());
        }
    }

    #[test]
    fn incoming_on_another_filesystem_names_incoming_root() {
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("SKIPPED: no writable /dev/shm");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata(shm.path()).unwrap().dev()
            == std::fs::metadata(dir.path()).unwrap().dev()
        {
            eprintln!("SKIPPED: /dev/shm is on the temp dir's filesystem");
            return;
        }
        // Not created yet: check judges by the nearest existing ancestor.
        let c = dirs_config(
            &dir.path().join("store"),
            &shm.path().join("incoming"),
            &dir.path().join("index.jsonl"),
        );
        for result in [
            c.check_same_filesystem(Path::new("r.toml")),
            c.prepare_dirs(Path::new("r.toml")),
        ] {
            let e = result.unwrap_err().to_string();
            assert!(
                e.contains("incoming_root") && e.contains("store_root"),
                "{e}"
            );
        }
    }

    #[test]
    fn validate_names_unreadable_files_by_key() {
        let c = parse("[auth]\nbearer_token_file = \"/nonexistent/token\"").unwrap();
        let e = c.validate(Path::new("r.toml")).unwrap_err().to_string();
        assert!(
            e.contains("auth.bearer_token_file") && e.contains("/nonexistent/token"),
            "{e}"
        );
        let c = parse("max_uploads_per_host = 0").unwrap();
        let e = c.validate(Path::new("r.toml")).unwrap_err().to_string();
        assert!(e.contains("max_uploads_per_host"), "{e}");
    }
}
