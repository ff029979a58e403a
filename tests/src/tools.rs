//! Outside tools the observability tests drive: `promtool` (Debian's `prometheus`
//! package) and a headless `chromium`.
//!
//! A missing tool fails the test with the command that installs it; a tool that
//! outlives its deadline is killed and fails the test with its output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `tool` on `PATH`; panics naming the install command when missing.
pub fn require(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed: run `{install}`"))
}

/// `promtool`; fails the test naming `apt-get install -y prometheus` when missing.
pub fn promtool() -> PathBuf {
    require("promtool", "apt-get install -y prometheus")
}

/// `chromium`; fails the test naming `apt-get install -y chromium` when missing.
pub fn chromium() -> PathBuf {
    require("chromium", "apt-get install -y chromium")
}

/// What a finished tool said.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with `stdin` fed in, killing it after `timeout` (a failure).
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    use std::io::Write as _;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let (mut out, mut err) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        panic!("{shown} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    Output {
        success: status.success(),
        stdout,
        stderr,
    }
}

/// `promtool check metrics` over `text`; panics with promtool's complaint.
pub fn assert_promtool_accepts_metrics(text: &str) {
    let out = run(
        Command::new(promtool()).args(["check", "metrics"]),
        text.as_bytes(),
        Duration::from_secs(5),
    );
    assert!(
        out.success,
        "promtool check metrics refused the exposition:\n{}{}\n--- exposition ---\n{text}",
        out.stdout, out.stderr
    );
}

/// Headless chromium on `url` with a fresh profile under `profile`; `args` add
/// `--dump-dom` or `--screenshot=…`. Returns stdout (the DOM for `--dump-dom`).
pub fn chromium_headless(profile: &Path, url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    let out = run(&mut cmd, b"", Duration::from_secs(8));
    assert!(
        out.success,
        "chromium failed on {url}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}
