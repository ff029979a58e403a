//! Test support: a unique temp tree per test with a shipper config, a data root,
//! a PATH directory for fake `journalctl`/`systemctl` scripts, the shared test PKI,
//! an in-process receiver on 127.0.0.1:0, the real `episode-doctor` run as the e2e
//! harness's `Proc` (also under a pseudo-terminal), and one real shipper pass in a
//! child process to capture the shipper's own log lines.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub use episode_e2e::process::{Proc, die_with_parent};
pub use episode_test_pki::Ca;
use serde_json::Value;
use time::OffsetDateTime;

/// The deliberately dead receiver: nothing listens on port 1.
pub const DEAD_URL: &str = "https://127.0.0.1:1";

pub struct Env {
    pub dir: tempfile::TempDir,
    /// The only directory on the doctor's PATH.
    pub bin: PathBuf,
    pub config: PathBuf,
    pub data: PathBuf,
    /// An empty journal file, used unless a test passes its own.
    pub empty_journal: PathBuf,
    /// Doctor runs so far (each gets its own output files).
    n_runs: std::sync::atomic::AtomicUsize,
}

/// What one run of the doctor gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not JSON ({e})\nstdout:\n{}\nstderr:\n{}",
                self.command, self.stdout, self.stderr
            )
        })
    }

    /// The row named `check` of the JSON output.
    pub fn row(&self, check: &str) -> Value {
        let json = self.json();
        json["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no row {check} in {json:#}"))
    }

    pub fn level(&self, check: &str) -> String {
        self.row(check)["level"].as_str().unwrap_or("").to_owned()
    }

    pub fn finding(&self, check: &str) -> String {
        self.row(check)["finding"].as_str().unwrap_or("").to_owned()
    }

    /// The row's `findings` list (`--json`).
    pub fn findings(&self, check: &str) -> Vec<String> {
        self.row(check)["findings"]
            .as_array()
            .unwrap_or_else(|| panic!("no findings list in {}", self.show()))
            .iter()
            .map(|f| f.as_str().unwrap_or("").to_owned())
            .collect()
    }

    pub fn fix(&self, check: &str) -> String {
        self.row(check)["fix"].as_str().unwrap_or("").to_owned()
    }

    /// Context for a failed assertion.
    pub fn show(&self) -> String {
        format!(
            "{} exited {}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

impl Env {
    /// A config naming `url` and a data root that exists (with the shipper's dirs).
    pub fn new(url: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("doctor-test-")
            .tempdir()
            .expect("tempdir");
        let bin = dir.path().join("bin");
        let data = dir.path().join("data");
        for d in [&bin, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        for sub in ["episodes", "outbox", "shipped", "quarantine", "state"] {
            std::fs::create_dir_all(data.join(sub)).unwrap();
        }
        let empty_journal = dir.path().join("empty-journal.jsonl");
        std::fs::write(&empty_journal, "").unwrap();
        let env = Self {
            config: dir.path().join("shipper.toml"),
            dir,
            bin,
            data,
            empty_journal,
            n_runs: std::sync::atomic::AtomicUsize::new(0),
        };
        env.write_config(url, "");
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Rewrites the config with `url` and extra `[receiver]` lines.
    pub fn write_config(&self, url: &str, receiver_extra: &str) {
        let text = format!(
            "host_id = \"lab1\"\ndata_root = {:?}\n\n[receiver]\nurl = {url:?}\nconnect_timeout = \"3s\"\n{receiver_extra}\n",
            self.data
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// An executable script `name` on the doctor's PATH.
    pub fn fake(&self, name: &str, body: &str) {
        let path = self.bin.join(name);
        let tmp = self.bin.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// A `systemctl` that reports the unit active and running with a watchdog.
    pub fn fake_systemctl_running(&self) {
        self.fake(
            "systemctl",
            "printf 'LoadState=loaded\\nActiveState=active\\nSubState=running\\nNRestarts=0\\nWatchdogUSec=3min\\nResult=success\\nExecMainStatus=0\\n'",
        );
    }

    /// Writes journal lines to a file and returns its path.
    pub fn journal_file(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs the doctor with `args`, PATH = only `bin`, nothing else inherited.
    pub fn doctor(&self, args: &[&str]) -> Run {
        self.doctor_env(args, &[])
    }

    pub fn doctor_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_episode-doctor"));
        cmd.env_clear().env("PATH", &self.bin).args(args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let n = self
            .n_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut doctor = Proc::spawn_logged(
            &mut cmd,
            self.path(&format!("doctor-{n}.stdout")),
            self.path(&format!("doctor-{n}.stderr")),
        );
        let Some(status) = doctor.wait_exit(Duration::from_secs(10)) else {
            panic!(
                "episode-doctor did not exit within 10 s\n{}",
                doctor.report()
            );
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: doctor.stdout(),
            stderr: doctor.stderr(),
            command: doctor.command_line().to_owned(),
        }
    }

    /// `--config <config> --json --journal-file <empty>` plus `extra`.
    pub fn doctor_json(&self, extra: &[&str]) -> Run {
        let config = self.config.to_str().unwrap().to_owned();
        let mut args = vec!["--config", &config, "--json"];
        let journal = self.empty_journal.to_str().unwrap().to_owned();
        if !extra.contains(&"--journal-file") {
            args.extend(["--journal-file", &journal]);
        }
        args.extend_from_slice(extra);
        self.doctor(&args)
    }

    /// `doctor_json` with extra environment variables.
    pub fn doctor_json_env(&self, extra: &[&str], vars: &[(&str, &str)]) -> Run {
        let config = self.config.to_str().unwrap().to_owned();
        let mut args = vec!["--config", &config, "--json"];
        let journal = self.empty_journal.to_str().unwrap().to_owned();
        if !extra.contains(&"--journal-file") {
            args.extend(["--journal-file", &journal]);
        }
        args.extend_from_slice(extra);
        self.doctor_env(&args, vars)
    }

    /// A finished episode directory `episodes/<id>/` with a file and done.marker.
    pub fn episode(&self, id: &str, done: bool) {
        let dir = self.data.join("episodes").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meta.json"), br#"{"code_commit":"abc"}"#).unwrap();
        std::fs::write(dir.join("events.jsonl"), vec![b'x'; 1000]).unwrap();
        if done {
            std::fs::write(dir.join("done.marker"), b"").unwrap();
        }
    }

    /// A quarantine entry with its reason file.
    pub fn quarantined(&self, id: &str, status: u16, problem: Option<&str>) {
        let dir = self.data.join("quarantine").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("done.marker"), b"").unwrap();
        let reason = serde_json::json!({
            "status_code": status,
            "problem_type": problem,
            "error": format!("client error {status}"),
            "body": {"type": problem, "status": status},
            "attempts": 1,
            "sha256": "00",
            "quarantined_at_wall": "2026-11-22T10:00:00Z",
            "quarantined_at_unix": 1_795_341_600,
            "shipper_version": "0.1.0"
        });
        std::fs::write(
            dir.join("quarantine_reason.json"),
            serde_json::to_vec_pretty(&reason).unwrap(),
        )
        .unwrap();
    }
}

/// Unix microseconds `ago` before now, as journald writes `__REALTIME_TIMESTAMP`.
pub fn micros_ago(ago: Duration) -> String {
    let now = OffsetDateTime::now_utc() - ago;
    (now.unix_timestamp_nanos() / 1000).to_string()
}

/// A native journal line of a `ship_result` event, `ago` in the past.
pub fn ship_line(outcome: &str, status: u16, problem: &str, id: &str, ago: Duration) -> String {
    serde_json::json!({
        "__REALTIME_TIMESTAMP": micros_ago(ago),
        "_SYSTEMD_UNIT": "episode-shipper.service",
        "SYSLOG_IDENTIFIER": "episode-shipper",
        "PRIORITY": "3",
        "MESSAGE": format!("ship_result outcome={outcome} status={status}"),
        "OUTCOME": outcome,
        "STATUS_CODE": status.to_string(),
        "PROBLEM_TYPE": problem,
        "EPISODE_ID": id,
        "ERROR": if status >= 400 { format!("{status} {problem}: rejected") } else { String::new() },
        "ATTEMPT": "1",
    })
    .to_string()
}

/// A native journal entry of a `ship_result` in the log schema, as
/// `common::logging` sends it to journald (`EVENT`, `MESSAGE_ID`, no empty field),
/// read back by `journalctl -o json`.
pub fn schema_ship_line(
    outcome: &str,
    status: u64,
    problem: &str,
    id: &str,
    ago: Duration,
) -> String {
    use episode_common::Event;
    use episode_common::logging::{Level, Record, Value};
    let mut fields = vec![
        ("episode_id", Value::Str(id.into())),
        ("outcome", Value::Str(outcome.into())),
        ("status_code", Value::U64(status)),
    ];
    if !problem.is_empty() {
        fields.push(("problem_type", Value::Str(problem.into())));
        fields.push(("error", Value::Str(format!("{status} {problem}: rejected"))));
    }
    fields.push(("attempt", Value::U64(1)));
    let record = Record {
        level: Level::WARN,
        event: Event::ShipResult.as_str().into(),
        message: None,
        fields,
    };
    let mut entry: serde_json::Map<String, serde_json::Value> = record
        .journal_fields("episode-shipper")
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    entry.insert("__REALTIME_TIMESTAMP".into(), micros_ago(ago).into());
    entry.insert("_SYSTEMD_UNIT".into(), "episode-shipper.service".into());
    serde_json::Value::Object(entry).to_string()
}

/// A journal line with only the message text (no structured fields).
pub fn text_line(message: &str, ago: Duration) -> String {
    serde_json::json!({
        "__REALTIME_TIMESTAMP": micros_ago(ago),
        "SYSLOG_IDENTIFIER": "episode-shipper",
        "MESSAGE": message,
    })
    .to_string()
}

pub const MINUTE: Duration = Duration::from_secs(60);

pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// A receiver running in this process on 127.0.0.1:0; stopped on drop.
pub struct Receiver {
    pub url: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver with `extra` config text (e.g. a `[tls]` table). The URL
    /// is https:// when `extra` has `[tls]`.
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("doctor-receiver-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        let text = format!(
            "store_root = {:?}\nincoming_root = {:?}\nindex_path = {:?}\nfree_space_reserve = \"1MiB\"\nshutdown_grace = \"1s\"\n{extra}\n",
            root.join("store"),
            root.join("incoming"),
            root.join("index.jsonl"),
        );
        let path = root.join("receiver.toml");
        std::fs::write(&path, text).unwrap();
        let config = episode_receiver::config::Config::load(&path).unwrap();
        let (state, _) = episode_receiver::open(config, &path).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let state: Arc<episode_receiver::AppState> = state;
                episode_receiver::server::run(state, listener, None, async {
                    let _ = stop_rx.await;
                    "the test ended"
                })
                .await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver bound");
        let scheme = if extra.contains("[tls]") {
            "https"
        } else {
            "http"
        };
        Self {
            url: format!("{scheme}://127.0.0.1:{}", addr.port()),
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How to run a command under a pseudo-terminal.
pub enum Pty {
    /// util-linux `script -qfec "<cmd>" /dev/null`.
    Script(PathBuf),
    /// python3's pty module.
    Python(PathBuf),
}

impl Pty {
    /// `script` if it is on this machine, else python3; `None` when neither is.
    pub fn find() -> Option<Pty> {
        let find = |name: &str| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        };
        find("script")
            .map(Pty::Script)
            .or_else(|| find("python3").map(Pty::Python))
    }

    /// The command that runs `argv` with a pseudo-terminal as its stdout.
    pub fn command(&self, argv: &[&str]) -> Command {
        match self {
            Pty::Script(script) => {
                let line = argv
                    .iter()
                    .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut cmd = Command::new(script);
                cmd.args(["-qfec", &line, "/dev/null"]);
                cmd
            }
            Pty::Python(python) => {
                let mut cmd = Command::new(python);
                cmd.args([
                    "-c",
                    "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))",
                ]);
                cmd.args(argv);
                cmd
            }
        }
    }
}

/// The environment variables that tell `shipper_pass_child` what to do.
pub const CHILD_CONFIG: &str = "DOCTOR_TEST_SHIPPER_CONFIG";
pub const CHILD_LOG_FORMAT: &str = "DOCTOR_TEST_SHIPPER_LOG_FORMAT";

/// Runs one real shipper pass (`episode-shipper --log-format <format> once`) with
/// `config` in a child process (this test binary, running the ignored test
/// `shipper_pass_child`) and returns its `ship_result` log lines, as the
/// shipper's logging setup writes them to stderr.
pub fn shipper_log(config: &Path, format: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("the test binary");
    let out = die_with_parent(&mut Command::new(&exe))
        .args(["--exact", "shipper_pass_child", "--ignored", "--nocapture"])
        .env_clear()
        .env(CHILD_CONFIG, config)
        .env(CHILD_LOG_FORMAT, format)
        .output()
        .expect("run the shipper child");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "shipper child failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("ship_result"))
        .map(str::to_owned)
        .collect();
    assert!(
        !lines.is_empty(),
        "no ship_result from the shipper\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    lines
}
