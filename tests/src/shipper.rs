//! Shipper side of the harness: a lab host's config and data root, and running
//! `episode-shipper` commands or the daemon.
//!
//! Owns `Host` (the config file, data root and host id of one simulated lab host),
//! writing `shipper.toml` with fast test timings, running one-shot commands
//! (`once`, `ping`, `status`, `check`, `requeue`) with a deadline, and spawning the
//! daemon with a notify socket. Asserts nothing about the shipper itself.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::env::{sets_key, split_top_level, toml_str};
use crate::{Proc, TestEnv, bin};

/// One simulated lab host.
#[derive(Debug, Clone)]
pub struct Host {
    pub host_id: String,
    pub config: PathBuf,
    pub data_root: PathBuf,
}

/// How a one-shot command ended.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout parsed as one JSON value (panics with the output when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Host {
    pub fn episodes(&self) -> PathBuf {
        self.data_root.join("episodes")
    }
    pub fn shipped(&self) -> PathBuf {
        self.data_root.join("shipped")
    }
    pub fn quarantine(&self) -> PathBuf {
        self.data_root.join("quarantine")
    }
    pub fn outbox(&self) -> PathBuf {
        self.data_root.join("outbox")
    }
    pub fn state(&self) -> PathBuf {
        self.data_root.join("state")
    }

    /// Names of the entries of a directory of the data root (sorted; empty if absent).
    pub fn list(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Rewrites `state/retry.json` as if every wait in it (the global backoff, each
    /// episode's next attempt) had elapsed: time travel for a test that cannot wait
    /// out a long `Retry-After`. Only while no shipper runs on this host.
    pub fn expire_waits(&self) {
        let mut state = self.retry_state();
        if let Some(backoff) = state.get_mut("backoff").and_then(|b| b.as_object_mut()) {
            backoff.insert("until_ms".into(), 0.into());
        }
        if let Some(episodes) = state.get_mut("episodes").and_then(|e| e.as_object_mut()) {
            for episode in episodes.values_mut() {
                if let Some(e) = episode.as_object_mut()
                    && e.contains_key("next_attempt_ms")
                {
                    e.insert("next_attempt_ms".into(), 0.into());
                }
            }
        }
        let bytes = serde_json::to_vec_pretty(&state).expect("state json");
        std::fs::write(self.state().join("retry.json"), bytes).expect("write retry.json");
    }

    /// `state/retry.json` parsed, or null when absent.
    pub fn retry_state(&self) -> serde_json::Value {
        std::fs::read(self.state().join("retry.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl TestEnv {
    /// Writes `<root>/<name>/shipper.toml` for `host_id` sending to `url`, with the
    /// test PKI (CA bundle and `host_id`'s client certificate when `url` is https),
    /// data root `<root>/<name>/data`, and fast timings (scan 100ms, backoff 300ms
    /// to 2s). `extra_toml` works as in `receiver_config`: top-level lines join the
    /// generated ones (replacing a generated key of the same name), tables follow;
    /// a `[receiver]` table in it replaces the generated one.
    pub fn shipper_host(&self, name: &str, host_id: &str, url: &str, extra_toml: &str) -> Host {
        let dir = self.dir(name);
        let data_root = dir.join("data");
        std::fs::create_dir_all(data_root.join("episodes")).expect("create episodes/");
        let (extra_top, extra_tables) = split_top_level(extra_toml);
        let overridden = |key: &str| sets_key(extra_top, key);
        let mut text = String::new();
        for (key, value) in [
            ("host_id", format!("{host_id:?}")),
            ("data_root", toml_str(&data_root)),
            ("scan_interval", "\"100ms\"".to_owned()),
            ("shutdown_grace", "\"2s\"".to_owned()),
        ] {
            if !overridden(key) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(extra_top);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let has = |table: &str| {
            extra_tables
                .lines()
                .any(|l| l.trim() == format!("[{table}]"))
        };
        if !has("receiver") {
            text.push_str(&format!(
                "\n[receiver]\nurl = {url:?}\nidle_timeout = \"5s\"\nconnect_timeout = \"2s\"\n"
            ));
            if url.starts_with("https://") {
                text.push_str(&format!(
                    "ca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
                    toml_str(&self.pki.ca),
                    toml_str(&self.pki.client_cert(host_id)),
                    toml_str(&self.pki.client_key(host_id)),
                ));
            }
        }
        if !has("retry") {
            text.push_str("\n[retry]\ninitial_backoff = \"300ms\"\nmax_backoff = \"2s\"\n");
        }
        if !extra_tables.is_empty() {
            text.push('\n');
            text.push_str(extra_tables);
            text.push('\n');
        }
        let config = dir.join("shipper.toml");
        std::fs::write(&config, text).expect("write shipper.toml");
        Host {
            host_id: host_id.to_owned(),
            config,
            data_root,
        }
    }

    /// Runs `episode-shipper --config <host> <args…>` to completion (10 s deadline).
    pub fn shipper(&self, host: &Host, args: &[&str]) -> Run {
        self.shipper_with(host, args, |_| {})
    }

    /// As `shipper`, letting `customize` add environment variables.
    pub fn shipper_with(
        &self,
        host: &Host,
        args: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Run {
        let mut cmd = shipper_command(host, "json", args);
        customize(&mut cmd);
        self.run_shipper(cmd, args)
    }

    /// As `shipper`, with `--log-format <log_format>` (`text`, `json`) instead of
    /// the harness's `json`.
    pub fn shipper_logging(&self, host: &Host, log_format: &str, args: &[&str]) -> Run {
        self.run_shipper(shipper_command(host, log_format, args), args)
    }

    fn run_shipper(&self, mut cmd: Command, args: &[&str]) -> Run {
        let label = format!("shipper-{}", args.first().copied().unwrap_or("run"));
        let mut proc = Proc::spawn(&mut cmd, self, &label);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = proc.wait_exit(Duration::from_millis(20)) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{label} did not finish within 10 s\n{}",
                proc.report()
            );
        };
        Run {
            status,
            stdout: proc.stdout(),
            stderr: proc.stderr(),
        }
    }

    /// Starts the daemon (`run`); `customize` may add `NOTIFY_SOCKET` and the like.
    pub fn spawn_shipper(&self, host: &Host, customize: impl FnOnce(&mut Command)) -> Proc {
        let mut cmd = shipper_command(host, "json", &["run"]);
        customize(&mut cmd);
        Proc::spawn(&mut cmd, self, "shipper-run")
    }
}

fn shipper_command(host: &Host, log_format: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("episode-shipper"));
    cmd.arg("--config")
        .arg(&host.config)
        .args(["--log-format", log_format])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    cmd
}
