//! The service row: what systemd says about the shipper's unit.
//!
//! Owns asking `systemctl show <unit> -p LoadState,ActiveState,SubState,NRestarts,
//! WatchdogUSec,Result,ExecMainStatus` (the I/O, in `probe`) and judging the
//! answer (pure, in `service_row`): running, restarting, failed (exit 78 = bad
//! configuration), not installed; restarts and the watchdog. A host without
//! systemctl, or where systemd is not running, gets a yellow row that says so.
//! Starts and stops nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::{Check, Level, Row};
use crate::source::{Tool, run_tool};

pub const PROPERTIES: &str =
    "LoadState,ActiveState,SubState,NRestarts,WatchdogUSec,Result,ExecMainStatus";

/// Asks systemctl about `unit`.
pub fn probe(unit: &str) -> Tool {
    run_tool(
        "systemctl",
        &[
            "show".into(),
            unit.into(),
            "-p".into(),
            PROPERTIES.into(),
            "--no-pager".into(),
        ],
        Duration::from_secs(10),
    )
}

/// `Key=Value` lines into a map.
pub fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A watchdog value that means "off".
fn watchdog_off(value: &str) -> bool {
    matches!(value, "" | "0" | "infinity")
}

/// The service row from what systemctl did.
pub fn service_row(tool: &Tool, unit: &str) -> Row {
    let mut row = Row::new(Check::Service);
    let logs = format!("`journalctl -u {unit} -n 50` shows why");
    let by_hand =
        "check the shipper by hand: `pgrep -a episode-shipper`; its service state needs systemd";
    let props = match tool {
        Tool::NotFound => {
            row.note(
                Level::Yellow,
                "systemctl not found: the service cannot be checked (not a systemd host?)",
            );
            row.fix(Level::Yellow, by_hand);
            return row;
        }
        Tool::CannotRun(e) => {
            row.note(Level::Yellow, format!("systemctl cannot be run: {e}"));
            row.fix(Level::Yellow, by_hand);
            return row;
        }
        Tool::TimedOut(_) => {
            row.note(Level::Yellow, "systemctl gave no answer in time");
            row.fix(Level::Yellow, by_hand);
            return row;
        }
        Tool::Ran {
            success: false,
            stderr,
            ..
        } => {
            let first = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no message");
            row.note(
                Level::Yellow,
                format!("systemctl cannot ask systemd: {first}"),
            );
            row.fix(
                Level::Yellow,
                format!("run the doctor on the lab host itself (not in a container); {by_hand}"),
            );
            return row;
        }
        Tool::Ran { stdout, .. } => parse_show(stdout),
    };
    let get = |k: &str| props.get(k).map(String::as_str).unwrap_or("");
    let (load, active, sub, result) = (
        get("LoadState"),
        get("ActiveState"),
        get("SubState"),
        get("Result"),
    );
    let restarts: u64 = get("NRestarts").parse().unwrap_or(0);
    let watchdog = get("WatchdogUSec");
    let enable = format!("`sudo systemctl enable --now {unit}`");
    match load {
        "not-found" => {
            row.note(
                Level::Red,
                format!("unit {unit} is not installed (LoadState=not-found)"),
            );
            row.fix(
                Level::Red,
                format!(
                    "install systemd/episode-shipper.service into /etc/systemd/system/, then `sudo systemctl daemon-reload` and {enable}"
                ),
            );
            return row;
        }
        "masked" => {
            row.note(Level::Red, format!("unit {unit} is masked"));
            row.fix(
                Level::Red,
                format!("`sudo systemctl unmask {unit}`, then {enable}"),
            );
            return row;
        }
        _ => {}
    }
    let state = format!("{active} ({sub})");
    match (active, sub) {
        ("active", _) => {
            let watchdog_text = if watchdog_off(watchdog) {
                "watchdog off".to_owned()
            } else {
                format!("watchdog {watchdog}")
            };
            row.note(
                Level::Green,
                format!("{state}, {restarts} restart(s), {watchdog_text}"),
            );
        }
        ("activating", "auto-restart") => {
            row.note(
                Level::Red,
                format!("{state}: exited and is being restarted (result {result}); a crash loop?"),
            );
            row.fix(Level::Red, format!("{logs} it exits"));
        }
        ("activating", _) | ("reloading", _) => {
            row.note(Level::Yellow, format!("{state}: starting"));
            row.fix(
                Level::Yellow,
                format!("run the doctor again in a minute; if it stays here, {logs}"),
            );
        }
        ("failed", _) => {
            if get("ExecMainStatus") == "78" {
                row.note(
                    Level::Red,
                    format!("{state}: exit 78, the configuration is wrong (see the config row)"),
                );
                row.fix(
                    Level::Red,
                    format!(
                        "`episode-shipper check` names the file and key; fix it, then `sudo systemctl restart {unit}`"
                    ),
                );
            } else {
                row.note(Level::Red, format!("{state}: result {result}"));
                row.fix(
                    Level::Red,
                    format!("{logs} it failed; then `sudo systemctl restart {unit}`"),
                );
            }
        }
        ("inactive", _) => {
            row.note(
                Level::Red,
                format!("{state}: the shipper is not running, nothing ships"),
            );
            row.fix(Level::Red, enable.clone());
        }
        _ => {
            row.note(Level::Yellow, state.clone());
            row.fix(Level::Yellow, logs.clone());
        }
    }
    if restarts > 0 {
        let why = match result {
            "watchdog" => " (last by the watchdog: a pass hung)".to_owned(),
            "success" | "" => String::new(),
            other => format!(" (last result: {other})"),
        };
        row.note(
            Level::Yellow,
            format!("restarted {restarts} time(s) since it was started{why}"),
        );
        row.fix(
            Level::Yellow,
            format!(
                "`journalctl -u {unit} -p warning -n 50` shows what went wrong before the restarts"
            ),
        );
    }
    if active == "active" && watchdog_off(watchdog) {
        row.note(
            Level::Yellow,
            "the watchdog is off: a hung pass would never be restarted",
        );
        row.fix(
            Level::Yellow,
            format!(
                "set WatchdogSec=180 in the unit (as in systemd/episode-shipper.service), then `sudo systemctl daemon-reload && sudo systemctl restart {unit}`"
            ),
        );
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str) -> Tool {
        Tool::Ran {
            success: true,
            code: Some(0),
            stdout: text.into(),
            stderr: String::new(),
        }
    }

    const RUNNING: &str = "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=0\nWatchdogUSec=3min\nResult=success\nExecMainStatus=0\n";

    #[test]
    fn judges_the_unit() {
        let row = service_row(&show(RUNNING), "episode-shipper");
        assert_eq!(row.level(), Level::Green);
        assert_eq!(
            row.finding_line(),
            "active (running), 0 restart(s), watchdog 3min"
        );
        let table: &[(&str, Level, &str)] = &[
            (
                "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=3\nWatchdogUSec=3min\nResult=watchdog\n",
                Level::Yellow,
                "watchdog: a pass hung",
            ),
            (
                "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=0\nWatchdogUSec=0\nResult=success\n",
                Level::Yellow,
                "watchdog is off",
            ),
            (
                "LoadState=loaded\nActiveState=failed\nSubState=failed\nNRestarts=0\nWatchdogUSec=3min\nResult=exit-code\nExecMainStatus=78\n",
                Level::Red,
                "exit 78",
            ),
            (
                "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=1\n",
                Level::Red,
                "result exit-code",
            ),
            (
                "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nNRestarts=7\nResult=exit-code\n",
                Level::Red,
                "crash loop",
            ),
            (
                "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=success\n",
                Level::Red,
                "not running",
            ),
            (
                "LoadState=not-found\nActiveState=inactive\nSubState=dead\n",
                Level::Red,
                "not installed",
            ),
        ];
        for (text, level, says) in table {
            let row = service_row(&show(text), "episode-shipper");
            assert_eq!(row.level(), *level, "{text}");
            assert!(
                row.finding_line().contains(says),
                "{text}: {}",
                row.finding_line()
            );
            assert!(row.fix_line().is_some());
        }
    }

    #[test]
    fn no_systemd_is_yellow_with_the_reason() {
        let row = service_row(&Tool::NotFound, "episode-shipper");
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.finding_line().contains("systemctl not found"));
        let row = service_row(
            &Tool::Ran {
                success: false,
                code: Some(1),
                stdout: String::new(),
                stderr: "System has not been booted with systemd as init system (PID 1). Can't operate.\n".into(),
            },
            "episode-shipper",
        );
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.finding_line().contains("not been booted with systemd"));
    }
}
