//! Running the system's tools (journalctl, systemctl) and reading the journal.
//!
//! Owns `run_tool` (looked up on PATH, so tests can put a fake first; bounded in
//! time; a missing binary is an answer, not an error) and `read_journal`, which
//! returns the journal's text or why it could not be read, with the fix. Decides
//! nothing about what the lines mean (that is `journal`), and never fails: an
//! unreadable journal is a yellow row, not a crash.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::since;

/// What running a tool gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tool {
    /// Not on PATH.
    NotFound,
    /// On PATH but could not be started (e.g. not executable).
    CannotRun(String),
    TimedOut(Duration),
    Ran {
        success: bool,
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
}

/// Runs `program args…` with stdin closed, collecting its output, for at most `timeout`.
pub fn run_tool(program: &str, args: &[String], timeout: Duration) -> Tool {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Tool::NotFound,
        Err(e) => return Tool::CannotRun(e.to_string()),
    };
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    match status {
        // The readers are left behind: a grandchild may still hold the pipes.
        None => Tool::TimedOut(timeout),
        Some(status) => Tool::Ran {
            success: status.success(),
            code: status.code(),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        },
    }
}

/// The journal's text, or why it could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalText {
    Lines(String),
    Unreadable { reason: String, fix: String },
}

const JOURNALCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// The arguments journalctl gets.
pub fn journalctl_args(unit: &str, cutoff_us: i64) -> Vec<String> {
    vec![
        "-u".into(),
        unit.into(),
        since::journalctl_since(cutoff_us),
        "-o".into(),
        "json".into(),
        "--no-pager".into(),
    ]
}

/// Reads `--journal-file`, or runs `journalctl -u <unit> --since=@<cutoff> -o json`.
pub fn read_journal(unit: &str, cutoff_us: i64, journal_file: Option<&Path>) -> JournalText {
    if let Some(path) = journal_file {
        return match std::fs::read(path) {
            Ok(bytes) => JournalText::Lines(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => JournalText::Unreadable {
                reason: format!("cannot read {}: {e}", path.display()),
                fix: "check the path given to --journal-file (JSON lines as written by `journalctl -o json`)".into(),
            },
        };
    }
    let tool = run_tool(
        "journalctl",
        &journalctl_args(unit, cutoff_us),
        JOURNALCTL_TIMEOUT,
    );
    judge_journalctl(&tool, unit)
}

/// Turns what journalctl did into lines or a reason with its fix.
pub fn judge_journalctl(tool: &Tool, unit: &str) -> JournalText {
    let denied_fix = "add the user to the systemd-journal group: `sudo usermod -aG systemd-journal $USER` (then log in again), or run `sudo episode-doctor`";
    let by_hand = format!(
        "run `journalctl -u {unit} -n 20` by hand to see why, or pass a saved log with --journal-file F"
    );
    match tool {
        Tool::NotFound => JournalText::Unreadable {
            reason: "journalctl not found on PATH".into(),
            fix: format!(
                "install systemd (it provides journalctl), or save the log on a host that has it (`journalctl -u {unit} -o json > F`) and use `episode-doctor --journal-file F`"
            ),
        },
        Tool::CannotRun(e) => JournalText::Unreadable {
            reason: format!("journalctl cannot be run: {e}"),
            fix: by_hand,
        },
        Tool::TimedOut(after) => JournalText::Unreadable {
            reason: format!("journalctl gave no answer within {}s", after.as_secs()),
            fix: format!("use a shorter --since, or {by_hand}"),
        },
        Tool::Ran {
            success,
            code,
            stdout,
            stderr,
        } => {
            let denied = [
                "insufficient permissions",
                "Permission denied",
                "not seeing messages from other users",
            ]
            .iter()
            .any(|p| stderr.contains(p));
            let first = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_owned();
            if denied {
                JournalText::Unreadable {
                    reason: format!("permission denied ({first})"),
                    fix: denied_fix.into(),
                }
            } else if !success {
                let code = code.map_or("a signal".into(), |c| format!("status {c}"));
                JournalText::Unreadable {
                    reason: format!("journalctl exited with {code}: {first}"),
                    fix: by_hand,
                }
            } else {
                JournalText::Lines(stdout.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(success: bool, stdout: &str, stderr: &str) -> Tool {
        Tool::Ran {
            success,
            code: Some(if success { 0 } else { 1 }),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn judges_what_journalctl_did() {
        assert_eq!(
            judge_journalctl(&ran(true, "{}\n", ""), "u"),
            JournalText::Lines("{}\n".into())
        );
        let JournalText::Unreadable { reason, fix } = judge_journalctl(
            &ran(
                false,
                "",
                "No journal files were opened due to insufficient permissions.\n",
            ),
            "u",
        ) else {
            panic!("readable?")
        };
        assert!(reason.starts_with("permission denied"), "{reason}");
        assert!(fix.contains("usermod -aG systemd-journal"), "{fix}");
        // Exit 0, but only the user's own journal: still not the shipper's.
        let hint = "Hint: You are currently not seeing messages from other users and the system.\n";
        assert!(matches!(
            judge_journalctl(&ran(true, "", hint), "u"),
            JournalText::Unreadable { .. }
        ));
        let JournalText::Unreadable { reason, fix } =
            judge_journalctl(&Tool::NotFound, "episode-shipper")
        else {
            panic!("readable?")
        };
        assert_eq!(reason, "journalctl not found on PATH");
        assert!(fix.contains("--journal-file"), "{fix}");
        let JournalText::Unreadable { reason, .. } = judge_journalctl(
            &ran(false, "", "\nFailed to add match 'x': Invalid argument\n"),
            "u",
        ) else {
            panic!("readable?")
        };
        assert_eq!(
            reason,
            "journalctl exited with status 1: Failed to add match 'x': Invalid argument"
        );
    }

    #[test]
    fn journalctl_gets_the_unit_the_window_and_json() {
        assert_eq!(
            journalctl_args("episode-shipper", 1_700_000_000_500_000),
            [
                "-u",
                "episode-shipper",
                "--since=@1700000000",
                "-o",
                "json",
                "--no-pager"
            ]
        );
    }

    #[test]
    fn a_missing_tool_is_an_answer() {
        assert_eq!(
            run_tool("episode-doctor-no-such-tool", &[], Duration::from_secs(1)),
            Tool::NotFound
        );
        let Tool::Ran {
            success, stdout, ..
        } = run_tool(
            "sh",
            &["-c".into(), "echo hi".into()],
            Duration::from_secs(5),
        )
        else {
            panic!("sh did not run")
        };
        assert!(success);
        assert_eq!(stdout, "hi\n");
        assert!(matches!(
            run_tool(
                "sh",
                &["-c".into(), "sleep 5".into()],
                Duration::from_millis(100)
            ),
            Tool::TimedOut(_)
        ));
    }
}
