//! Child processes of a test: finding the built binaries and owning a running one.
//!
//! Owns `bin` (the workspace's binaries in the same target profile as the test) and
//! `Proc`: a child whose stdout and stderr go to files (never pipes that could fill
//! up and stall it), signals, a bounded wait for its exit, and cleanup. Invariant: a
//! `Proc` never outlives its test; on drop it is SIGKILLed and reaped, when the
//! test is failing its command line and output are printed, and when the test
//! process dies without dropping it (an interrupted `cargo test`, a SIGKILL) the
//! kernel kills it too (`die_with_parent`).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::TestEnv;

/// A binary of this workspace built in the same profile as the running test
/// (`target/<profile>/deps/e2e-…` → `target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .expect("test exe has a parent directory");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Makes the child of `cmd` get SIGKILL when the thread that spawns it ends (so
/// when the test process dies, however it dies): `PR_SET_PDEATHSIG` set between
/// fork and exec. Spawn from the test's own thread, which outlives its children.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // prctl(2), getppid(2) and _exit(2), which are async-signal-safe; it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: nobody would signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

/// A running child process with its output in files.
pub struct Proc {
    child: Child,
    command_line: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr in files named after
    /// `label` under the env's log directory.
    pub fn spawn(cmd: &mut Command, env: &TestEnv, label: &str) -> Self {
        let (stdout_path, stderr_path) = env.log_paths(label);
        Self::spawn_logged(cmd, stdout_path, stderr_path)
    }

    /// Spawns `cmd` with stdin closed and stdout/stderr in the given files (for a
    /// test without a `TestEnv`).
    pub fn spawn_logged(cmd: &mut Command, stdout_path: PathBuf, stderr_path: PathBuf) -> Self {
        let command_line = describe(cmd);
        let stdout = std::fs::File::create(&stdout_path).expect("create stdout file");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        // Under systemd the binaries would log to the journal; tests read stderr.
        cmd.env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        die_with_parent(cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command_line}: {e}"));
        Self {
            child,
            command_line,
            stdout_path,
            stderr_path,
            exited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`, `SIGKILL`, `SIGSTOP`, `SIGCONT`).
    pub fn signal(&self, signal: i32) {
        if self.exited.is_some() {
            return;
        }
        // SAFETY: kill(2) with our own child's pid; it is not reaped yet (exited is
        // None), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for killed child");
        self.exited = Some(status);
        status
    }

    /// The exit status if the child exits within `timeout` (polling).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the child has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_some()
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The command line, stdout and stderr, for a failure message.
    pub fn report(&self) -> String {
        format!(
            "--- {}\n--- stdout ({}):\n{}\n--- stderr ({}):\n{}\n---",
            self.command_line,
            self.stdout_path.display(),
            self.stdout(),
            self.stderr_path.display(),
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}
