//! The shipper's configuration file (shipper.md, "Config"): schema (unknown keys are
//! errors), defaults and range checks; every error names the file and the key.
//! Credential files need not exist yet (see `transport`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use episode_common::config::{ConfigError, parse_toml};
use episode_common::{ByteSize, Dur, HostId};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/episode-shipper/shipper.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub host_id: HostId,
    #[serde(default = "defaults::data_root")]
    pub data_root: PathBuf,
    #[serde(default = "defaults::scan_interval")]
    pub scan_interval: Dur,
    #[serde(default = "defaults::compression_level")]
    pub compression_level: i32,
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Dur,
    #[serde(default)]
    pub startup_jitter: Dur,
    /// Uploads in flight at once (each on its own keep-alive connection); keep it at
    /// or below the receiver's `max_uploads_per_host`.
    #[serde(default = "defaults::upload_concurrency")]
    pub upload_concurrency: usize,
    /// Bytes of packed archives kept in memory at once; an episode whose archive
    /// does not fit goes through `outbox/` (written, fsynced, read back).
    #[serde(default = "defaults::memory_budget")]
    pub memory_budget: ByteSize,
    pub receiver: ReceiverConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    #[serde(default)]
    pub shipped: ShippedConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[metrics]` (observability.md): where the shipper's metrics go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A node_exporter textfile (`*.prom`), rewritten atomically.
    pub textfile: Option<PathBuf>,
    /// Serve `GET /metrics` here (plain HTTP).
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub url: String,
    pub ca_bundle: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Dur,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "defaults::initial_backoff")]
    pub initial_backoff: Dur,
    #[serde(default = "defaults::max_backoff")]
    pub max_backoff: Dur,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    #[serde(default = "defaults::quarantine_keep_days")]
    pub keep_days: u32,
    #[serde(default = "defaults::cleanup_interval")]
    pub cleanup_interval: Dur,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippedConfig {
    #[serde(default)]
    pub keep_days: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: defaults::initial_backoff(),
            max_backoff: defaults::max_backoff(),
        }
    }
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            keep_days: defaults::quarantine_keep_days(),
            cleanup_interval: defaults::cleanup_interval(),
        }
    }
}

mod defaults {
    use super::*;

    pub fn data_root() -> PathBuf {
        "/var/lib/episode-shipper".into()
    }
    pub fn scan_interval() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn compression_level() -> i32 {
        3
    }
    pub fn shutdown_grace() -> Dur {
        Dur(Duration::from_secs(20))
    }
    pub fn upload_concurrency() -> usize {
        4
    }
    pub fn memory_budget() -> ByteSize {
        ByteSize(256 << 20)
    }
    pub fn connect_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn idle_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn initial_backoff() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn max_backoff() -> Dur {
        Dur(Duration::from_secs(600))
    }
    pub fn quarantine_keep_days() -> u32 {
        30
    }
    pub fn cleanup_interval() -> Dur {
        Dur(Duration::from_secs(3600))
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_toml(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::new(path, format!("{key}: {msg}")));
        let url = &self.receiver.url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return err(
                "receiver.url",
                format!("{url:?} must start with https:// (or http:// for loopback tests)"),
            );
        }
        if reqwest::Url::parse(url).is_err() {
            return err("receiver.url", format!("{url:?} is not a valid URL"));
        }
        if !(1..=22).contains(&self.compression_level) {
            return err(
                "compression_level",
                format!("{} is outside zstd's 1..=22", self.compression_level),
            );
        }
        if self.scan_interval.get().is_zero() {
            return err("scan_interval", "must be more than 0s".into());
        }
        if !(1..=64).contains(&self.upload_concurrency) {
            return err(
                "upload_concurrency",
                format!("{} is outside 1..=64", self.upload_concurrency),
            );
        }
        if self.retry.initial_backoff.get().is_zero() {
            return err("retry.initial_backoff", "must be more than 0s".into());
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return err(
                "retry.max_backoff",
                "must be at least retry.initial_backoff".into(),
            );
        }
        if let Some(textfile) = &self.metrics.textfile {
            let named = textfile
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".prom") && n.len() > ".prom".len());
            if !named {
                return err(
                    "metrics.textfile",
                    format!(
                        "{} must be a file named *.prom (node_exporter reads only those)",
                        textfile.display()
                    ),
                );
            }
        }
        if self.receiver.idle_timeout.get().is_zero() {
            return err("receiver.idle_timeout", "must be more than 0s".into());
        }
        if self.receiver.client_cert.is_some() != self.receiver.client_key.is_some() {
            let missing = if self.receiver.client_cert.is_some() {
                "receiver.client_key"
            } else {
                "receiver.client_cert"
            };
            return err(
                missing,
                "client_cert and client_key go together (both or neither)".into(),
            );
        }
        if self.data_root.as_os_str().is_empty() {
            return err("data_root", "must not be empty".into());
        }
        if !self.data_root.is_absolute() {
            return err(
                "data_root",
                format!(
                    "{:?} is a relative path; give an absolute one (the daemon's working directory is not the operator's)",
                    self.data_root
                ),
            );
        }
        Ok(())
    }

    /// Why a config read again on SIGHUP cannot replace this one while the daemon
    /// runs: the key it changes that only a restart may change, if any.
    pub fn unreloadable_change(&self, new: &Config) -> Option<&'static str> {
        if self.host_id != new.host_id {
            Some("host_id")
        } else if self.data_root != new.data_root {
            Some("data_root")
        } else {
            None
        }
    }

    /// The receiver URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.receiver.url.trim_end_matches('/')
    }
}

/// The key a config error is about, for a log field: the `key: …` our own
/// validations start with, or the field or line a TOML error names; "" if none.
pub fn error_key(error: &ConfigError) -> String {
    let message = error.message.as_str();
    let is_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
    };
    if let Some((head, _)) = message.split_once(": ")
        && is_key(head)
    {
        return head.to_owned();
    }
    for quote in ["field `", "key `"] {
        if let Some(rest) = message.split_once(quote).map(|(_, r)| r)
            && let Some((key, _)) = rest.split_once('`')
        {
            return key.to_owned();
        }
    }
    // toml shows the offending line as `N | key = value`.
    for line in message.lines() {
        if let Some((_, code)) = line.split_once(" | ")
            && let Some((key, _)) = code.split_once('=')
            && is_key(key.trim())
        {
            return key.trim().to_owned();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
host_id = "lab1"
data_root = "/var/lib/episode-shipper"
scan_interval = "5s"
compression_level = 3
shutdown_grace = "20s"
startup_jitter = "0s"

[receiver]
url = "https://collector.example:8443"
ca_bundle = "/etc/episode-shipper/ca.pem"
client_cert = "/etc/episode-shipper/client.pem"
client_key = "/etc/episode-shipper/client.key"
bearer_token_file = "/etc/episode-shipper/token"
connect_timeout = "10s"
idle_timeout = "60s"

[retry]
initial_backoff = "5s"
max_backoff = "10m"

[quarantine]
keep_days = 30
cleanup_interval = "1h"

[shipped]
keep_days = 0

[metrics]
textfile = "/var/lib/prometheus/node-exporter/episode_shipper.prom"
listen = "127.0.0.1:9466"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("s.toml"), text)
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.host_id.as_str(), "lab1");
        assert_eq!(c.retry.max_backoff.get(), Duration::from_secs(600));
        assert_eq!(
            c.quarantine.cleanup_interval.get(),
            Duration::from_secs(3600)
        );
        assert_eq!(c.base_url(), "https://collector.example:8443");
        assert_eq!(c.metrics.listen.unwrap().port(), 9466);
    }

    #[test]
    fn bad_metrics_keys_are_named() {
        let base = "host_id = \"lab1\"\n[receiver]\nurl = \"https://r\"\n[metrics]\n";
        for (line, key) in [
            ("listen = \"localhost\"", "listen"),
            (
                "textfile = \"/var/lib/x/episode_shipper.txt\"",
                "metrics.textfile",
            ),
            ("textfil = \"/x.prom\"", "textfil"),
        ] {
            let e = parse(&format!("{base}{line}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        let c = parse(&format!("{base}textfile = \"/x/episode_shipper.prom\"\n")).unwrap();
        assert!(c.metrics.listen.is_none());
    }

    #[test]
    fn only_host_id_and_url_are_required() {
        let c = parse("host_id = \"lab1\"\n[receiver]\nurl = \"https://r:8443/\"\n").unwrap();
        assert_eq!(c.compression_level, 3);
        assert_eq!(c.quarantine.keep_days, 30);
        assert_eq!(c.shipped.keep_days, 0);
        assert_eq!(c.base_url(), "https://r:8443");
        let e = parse("[receiver]\nurl = \"https://r\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_id"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "host_id = \"lab1\"\nbogus = 1\n[receiver]\nurl = \"https://r\"\n",
                "bogus",
            ),
            (
                "host_id = \"../x\"\n[receiver]\nurl = \"https://r\"\n",
                "host_id",
            ),
            (
                "host_id = \"lab1\"\nscan_interval = \"5 parsecs\"\n[receiver]\nurl = \"https://r\"\n",
                "scan_interval",
            ),
            (
                "host_id = \"lab1\"\ncompression_level = 40\n[receiver]\nurl = \"https://r\"\n",
                "compression_level",
            ),
            (
                "host_id = \"lab1\"\n[receiver]\nurl = \"ftp://r\"\n",
                "receiver.url",
            ),
            (
                "host_id = \"lab1\"\n[receiver]\nurl = \"https://r\"\nclient_cert = \"/c\"\n",
                "receiver.client_key",
            ),
            (
                "host_id = \"lab1\"\n[receiver]\nurl = \"https://r\"\n[retry]\ninitial_backoff = \"5s\"\nmax_backoff = \"1s\"\n",
                "retry.max_backoff",
            ),
            (
                "host_id = \"lab1\"\n[receiver]\nurl = \"https://r\"\n[quarantine]\nkeep = 3\n",
                "keep",
            ),
            (
                "host_id = \"lab1\"\ndata_root = \"var/lib/x\"\n[receiver]\nurl = \"https://r\"\n",
                "data_root",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with("config s.toml:") && e.contains(key),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn config_errors_name_their_key_for_the_log() {
        let cases = [
            (
                "host_id = \"lab1\"\nbogus = 1\n[receiver]\nurl = \"https://r\"\n",
                "bogus",
            ),
            (
                "host_id = \"lab1\"\nscan_interval = \"5 parsecs\"\n[receiver]\nurl = \"https://r\"\n",
                "scan_interval",
            ),
            (
                "host_id = \"lab1\"\ncompression_level = 40\n[receiver]\nurl = \"https://r\"\n",
                "compression_level",
            ),
            (
                "host_id = \"lab1\"\n[receiver]\nurl = \"ftp://r\"\n",
                "receiver.url",
            ),
            ("[receiver]\nurl = \"https://r\"\n", "host_id"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(error_key(&e), key, "{e}");
        }
    }

    #[test]
    fn only_host_id_and_data_root_need_a_restart() {
        let base = parse("host_id = \"lab1\"\n[receiver]\nurl = \"https://r\"\n").unwrap();
        let table = [
            (
                "host_id = \"lab1\"\nscan_interval = \"1s\"\n[receiver]\nurl = \"https://other\"\n",
                None,
            ),
            (
                "host_id = \"lab2\"\n[receiver]\nurl = \"https://r\"\n",
                Some("host_id"),
            ),
            (
                "host_id = \"lab1\"\ndata_root = \"/srv/x\"\n[receiver]\nurl = \"https://r\"\n",
                Some("data_root"),
            ),
        ];
        for (text, want) in table {
            assert_eq!(
                base.unreloadable_change(&parse(text).unwrap()),
                want,
                "{text}"
            );
        }
    }
}
