//! Log output for the daemons and tools, chosen once at start-up.
//!
//! Under systemd (`JOURNAL_STREAM` set and the journal socket reachable) events go
//! natively to the journal with their fields as journal fields (`EPISODE_ID`,
//! `OUTCOME`, `STATUS_CODE`, …, no prefix), so `journalctl -o json` and the doctor
//! read them structured. Otherwise human-readable lines on stderr, or JSON lines
//! with `--log-format json`. `RUST_LOG` overrides the level. Owns no I/O beyond
//! installing the subscriber.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Journal under systemd, readable lines otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (auto, text, json)")),
        }
    }
}

/// Installs the global subscriber. `identifier` is the journal's SYSLOG_IDENTIFIER.
pub fn init(format: LogFormat, identifier: &str) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Auto
        && std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journal) = tracing_journald::layer()
    {
        let journal = journal
            .with_field_prefix(None)
            .with_syslog_identifier(identifier.to_owned());
        registry.with(journal).init();
        return;
    }
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour);
    if format == LogFormat::Json {
        registry
            .with(
                stderr
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .init();
    } else {
        registry.with(stderr).init();
    }
}
