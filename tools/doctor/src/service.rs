//! The service row: what systemd says about the shipper's unit.
//!
//! Owns asking `systemctl show <unit> -p LoadState,ActiveState,SubState,NRestarts,
//! WatchdogUSec,Result,ExecMainStatus,ExecStartPre` (the I/O, in `probe`) and
//! judging the answer (pure, in `service_row`): running, restarting, failed, not
//! installed; restarts and the watchdog. A bad configuration shows as exit 78:
//! of the main process (`run` exits 78; the unit's `ExecStartPre=-… check` is
//! allowed to fail), or of an `ExecStartPre` check that is not allowed to fail
//! (units installed before the `-`), which systemd restarts over and over. A host without
//! systemctl, or where systemd is not running, gets a yellow row that says so.
//! Starts and stops nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fixes::Context;
use crate::report::{Check, Level, Row};
use crate::source::{Tool, run_tool};

pub const PROPERTIES: &str =
    "LoadState,ActiveState,SubState,NRestarts,WatchdogUSec,Result,ExecMainStatus,ExecStartPre";

/// The exit status of a bad configuration (`episode_common::EXIT_CONFIG`).
const CONFIG_STATUS: &str = "78";

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

/// The command line of an `ExecStartPre` that exited 78 and may not fail, from
/// `systemctl show` lines such as `ExecStartPre={ path=/usr/local/bin/episode-shipper ;
/// argv[]=/usr/local/bin/episode-shipper --config F check ; ignore_errors=no ; … ;
/// code=exited ; status=78 }` (one line per command).
pub fn failed_prestart(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStartPre="))
        .find_map(|value| {
            let inner = value.trim().strip_prefix('{')?.strip_suffix('}')?;
            let parts: BTreeMap<&str, &str> = inner
                .split(" ; ")
                .filter_map(|p| p.trim().split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let failed = parts.get("ignore_errors").is_none_or(|v| *v == "no")
                && parts.get("code") == Some(&"exited")
                && parts.get("status") == Some(&CONFIG_STATUS);
            failed.then(|| {
                parts
                    .get("argv[]")
                    .or_else(|| parts.get("path"))
                    .copied()
                    .unwrap_or("?")
                    .to_owned()
            })
        })
}

/// A watchdog value that means "off".
fn watchdog_off(value: &str) -> bool {
    matches!(value, "" | "0" | "infinity")
}

/// The service row from what systemctl did, for the unit `ctx.unit`.
pub fn service_row(tool: &Tool, ctx: &Context) -> Row {
    let unit = ctx.unit.as_str();
    let mut row = Row::new(Check::Service);
    let logs = format!("`journalctl -u {unit} -n 50` shows why");
    let by_hand =
        "check the shipper by hand: `pgrep -a episode-shipper`; its service state needs systemd";
    let stdout = match tool {
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
        Tool::Ran { stdout, .. } => stdout,
    };
    let props = parse_show(stdout);
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
    // Exit 78 of `run`, or of a check the unit does not let fail.
    let bad_config = if get("ExecMainStatus") == CONFIG_STATUS {
        Some("exit 78".to_owned())
    } else {
        failed_prestart(stdout).map(|argv| format!("ExecStartPre `{argv}` exited 78"))
    };
    let config_fix = format!(
        "{} names the file and key; fix it, then `sudo systemctl restart {unit}`",
        ctx.shipper("check")
    );
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
        ("activating", "auto-restart") | ("failed", _) if bad_config.is_some() => {
            let what = bad_config.as_deref().unwrap_or_default();
            row.note(
                Level::Red,
                format!("{state}: {what}, the configuration is wrong (see the config row)"),
            );
            row.fix(Level::Red, config_fix);
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
            row.note(Level::Red, format!("{state}: result {result}"));
            row.fix(
                Level::Red,
                format!("{logs} it failed; then `sudo systemctl restart {unit}`"),
            );
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

    fn ctx() -> Context {
        Context {
            config_path: episode_shipper::config::DEFAULT_PATH.into(),
            unit: "episode-shipper".into(),
            ..Context::default()
        }
    }

    const RUNNING: &str = "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=0\nWatchdogUSec=3min\nResult=success\nExecMainStatus=0\n";

    #[test]
    fn judges_the_unit() {
        let row = service_row(&show(RUNNING), &ctx());
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
            let row = service_row(&show(text), &ctx());
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
        let row = service_row(&Tool::NotFound, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.finding_line().contains("systemctl not found"));
        let row = service_row(
            &Tool::Ran {
                success: false,
                code: Some(1),
                stdout: String::new(),
                stderr: "System has not been booted with systemd as init system (PID 1). Can't operate.\n".into(),
            },
            &ctx(),
        );
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.finding_line().contains("not been booted with systemd"));
    }

    /// `systemctl show -p …,ExecStartPre` of an installed unit whose check ran.
    fn prestart(ignore_errors: &str, status: u16) -> String {
        format!(
            "ExecStartPre={{ path=/usr/local/bin/episode-shipper ; argv[]=/usr/local/bin/episode-shipper --config /etc/episode-shipper/shipper.toml check ; ignore_errors={ignore_errors} ; start_time=[Wed 2026-12-02 05:08:50 UTC] ; stop_time=[Wed 2026-12-02 05:08:50 UTC] ; pid=811 ; code=exited ; status={status} }}\n"
        )
    }

    #[test]
    fn a_bad_config_is_seen_in_the_main_status_or_a_check_that_may_not_fail() {
        // Current unit: the check may fail (`-`), `run` then exits 78 itself.
        let current = format!(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nNRestarts=0\nResult=exit-code\nExecMainStatus=78\n{}",
            prestart("yes", 78)
        );
        // Older unit without `-`: the check fails the start, systemd restarts it
        // every RestartSec, and `run` never ran.
        let older = format!(
            "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nNRestarts=41\nResult=exit-code\nExecMainStatus=0\n{}",
            prestart("no", 78)
        );
        let older_failed = format!(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=0\n{}",
            prestart("no", 78)
        );
        for (text, says) in [
            (
                &current,
                "failed (failed): exit 78, the configuration is wrong",
            ),
            (
                &older,
                "activating (auto-restart): ExecStartPre `/usr/local/bin/episode-shipper --config /etc/episode-shipper/shipper.toml check` exited 78, the configuration is wrong",
            ),
            (&older_failed, "ExecStartPre `"),
        ] {
            let row = service_row(&show(text), &ctx());
            assert_eq!(row.level(), Level::Red, "{text}");
            assert!(row.finding_line().contains(says), "{}", row.finding_line());
            assert!(
                row.fix_line()
                    .unwrap()
                    .starts_with("`episode-shipper check` names the file and key"),
                "{:?}",
                row.fix_line()
            );
        }
        // A check that may fail, or one that passed, is no finding of its own.
        for text in [
            format!(
                "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nNRestarts=2\nResult=exit-code\nExecMainStatus=1\n{}",
                prestart("yes", 78)
            ),
            format!(
                "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nNRestarts=2\nResult=exit-code\nExecMainStatus=1\n{}",
                prestart("no", 0)
            ),
        ] {
            let row = service_row(&show(&text), &ctx());
            assert!(row.finding_line().contains("crash loop"), "{text}");
            assert!(!row.finding_line().contains("configuration"), "{text}");
        }
        assert_eq!(failed_prestart("ExecStartPre=\n"), None);
    }

    #[test]
    fn the_config_fix_names_the_config_the_doctor_used() {
        let c = Context {
            config_path: "/srv/shipper.toml".into(),
            unit: "shipper-b".into(),
            ..ctx()
        };
        let text = "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=78\n";
        let row = service_row(&show(text), &c);
        assert_eq!(
            row.fix_line().unwrap(),
            "`episode-shipper check --config /srv/shipper.toml` names the file and key; fix it, then `sudo systemctl restart shipper-b`"
        );
    }
}
