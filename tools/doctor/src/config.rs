//! The config row: the shipper's config file loads, and the files it names exist
//! and can be read.
//!
//! Loading is `episode_shipper::config::Config::load` itself (its error names the
//! file and the key); this module only probes the paths `[receiver]` and
//! `data_root` name (`probe`, I/O) and judges them (`config_row`, pure). What the
//! certificates mean is the certificates row's business, not this one's.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use episode_common::ConfigError;
use episode_shipper::config::Config;

use crate::fixes::{self, Context};
use crate::report::{Check, Level, Row};

/// What opening a named path gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ok,
    Missing,
    Denied(String),
    /// A file where a directory is wanted, or the other way round.
    WrongKind,
    Other(String),
}

/// A path the config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub key: &'static str,
    pub path: PathBuf,
    pub probe: Probe,
}

fn probe_file(path: &Path) -> Probe {
    match std::fs::File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_dir() => Probe::WrongKind,
            _ => Probe::Ok,
        },
        Err(e) => match e.kind() {
            ErrorKind::NotFound => Probe::Missing,
            ErrorKind::PermissionDenied => Probe::Denied(e.to_string()),
            _ => Probe::Other(e.to_string()),
        },
    }
}

fn probe_dir(path: &Path) -> Probe {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Probe::Ok,
        Ok(_) => Probe::WrongKind,
        Err(e) => match e.kind() {
            ErrorKind::NotFound => Probe::Missing,
            ErrorKind::PermissionDenied => Probe::Denied(e.to_string()),
            _ => Probe::Other(e.to_string()),
        },
    }
}

/// Probes every path the config names.
pub fn probe(config: &Config) -> Vec<Named> {
    let r = &config.receiver;
    let mut named = vec![Named {
        key: "data_root",
        path: config.data_root.clone(),
        probe: probe_dir(&config.data_root),
    }];
    for (key, path) in [
        ("receiver.ca_bundle", &r.ca_bundle),
        ("receiver.client_cert", &r.client_cert),
        ("receiver.client_key", &r.client_key),
        ("receiver.bearer_token_file", &r.bearer_token_file),
    ] {
        if let Some(path) = path {
            named.push(Named {
                key,
                path: path.clone(),
                probe: probe_file(path),
            });
        }
    }
    named
}

/// The row for a config that loaded.
pub fn config_row(config: &Config, named: &[Named], ctx: &Context) -> Row {
    let mut row = Row::new(Check::Config);
    row.note(
        Level::Green,
        format!(
            "{}: host_id {}, receiver {}",
            ctx.config_path.display(),
            config.host_id,
            config.base_url()
        ),
    );
    let edit = format!("correct it in {}", ctx.config_path.display());
    for n in named {
        let shown = n.path.display();
        match (&n.probe, n.key) {
            (Probe::Ok, _) => {}
            (Probe::Missing, "data_root") => {
                row.note(
                    Level::Yellow,
                    format!("data_root {shown} does not exist yet"),
                );
                row.fix(
                    Level::Yellow,
                    format!(
                        "the shipper creates it when it starts: `sudo systemctl start {}` (or {edit} if the path is wrong)",
                        ctx.unit
                    ),
                );
            }
            (Probe::Missing, key) => {
                row.note(Level::Yellow, format!("{key} {shown} does not exist"));
                row.fix(
                    Level::Yellow,
                    format!(
                        "put the file at {shown} or {edit}; the shipper waits for it without a restart"
                    ),
                );
            }
            (Probe::Denied(e), key) => {
                row.note(Level::Yellow, format!("{key} {shown}: {e}"));
                row.fix(Level::Yellow, fixes::permission());
            }
            (Probe::WrongKind, "data_root") => {
                row.note(Level::Red, format!("data_root {shown} is not a directory"));
                row.fix(Level::Red, edit.clone());
            }
            (Probe::WrongKind, key) => {
                row.note(Level::Red, format!("{key} {shown} is a directory"));
                row.fix(Level::Red, format!("point {key} at the file: {edit}"));
            }
            (Probe::Other(e), key) => {
                row.note(Level::Red, format!("{key} {shown}: {e}"));
                row.fix(Level::Red, edit.clone());
            }
        }
    }
    row
}

/// The row for a config that did not load: the loader's message, which names the
/// file and the key.
pub fn failed_row(err: &ConfigError, ctx: &Context) -> Row {
    let mut row = Row::new(Check::Config);
    let message = err.to_string();
    row.note(Level::Red, message.clone());
    let path = ctx.config_path.display();
    let fix = if message.contains("cannot read") && message.contains("No such file") {
        format!(
            "create {path} (host_id and [receiver] url are required), or name the config with --config F or EPISODE_SHIPPER_CONFIG"
        )
    } else if message.contains("Permission denied") {
        fixes::permission()
    } else {
        format!(
            "correct the key named above in {path}, then {} confirms it",
            ctx.shipper("check")
        )
    };
    row.fix(Level::Red, fix);
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            Path::new("/e/s.toml"),
            "host_id = \"lab1\"\ndata_root = \"/d\"\n[receiver]\nurl = \"https://r:8443\"\n",
        )
        .unwrap()
    }

    fn ctx() -> Context {
        Context::new(Path::new("/e/s.toml"), Some(&config()), "episode-shipper")
    }

    #[test]
    fn named_files_must_exist_and_be_readable() {
        let ok = [Named {
            key: "data_root",
            path: "/d".into(),
            probe: Probe::Ok,
        }];
        let row = config_row(&config(), &ok, &ctx());
        assert_eq!(row.level(), Level::Green);
        assert_eq!(
            row.finding_line(),
            "/e/s.toml: host_id lab1, receiver https://r:8443"
        );
        let bad = [
            Named {
                key: "data_root",
                path: "/d".into(),
                probe: Probe::Missing,
            },
            Named {
                key: "receiver.bearer_token_file",
                path: "/e/token".into(),
                probe: Probe::Denied("Permission denied (os error 13)".into()),
            },
        ];
        let row = config_row(&config(), &bad, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(
            row.finding_line()
                .contains("receiver.bearer_token_file /e/token: Permission denied")
        );
        let dir = [Named {
            key: "receiver.ca_bundle",
            path: "/e".into(),
            probe: Probe::WrongKind,
        }];
        assert_eq!(config_row(&config(), &dir, &ctx()).level(), Level::Red);
    }

    #[test]
    fn a_config_that_does_not_load_is_red_with_the_key() {
        let err = Config::parse(
            Path::new("/e/s.toml"),
            "host_id = \"lab1\"\ncompression_level = 40\n[receiver]\nurl = \"https://r\"\n",
        )
        .unwrap_err();
        let c = Context::new(Path::new("/e/s.toml"), None, "episode-shipper");
        let row = failed_row(&err, &c);
        assert_eq!(row.level(), Level::Red);
        assert!(row.finding_line().contains("compression_level"));
        assert!(
            row.fix_line()
                .unwrap()
                .contains("`episode-shipper check --config /e/s.toml`")
        );
        let missing = Config::load(Path::new("/nonexistent/s.toml")).unwrap_err();
        assert!(
            failed_row(&missing, &c)
                .fix_line()
                .unwrap()
                .contains("create /e/s.toml")
        );
    }
}
