//! The backlog, quarantine and hold rows: what waits, what is stuck, what is paused.
//!
//! The facts come from `episode_shipper::status::collect` (the same read-only
//! report `episode-shipper status` prints: backlog, outbox, conflicts, quarantine
//! by reason, hold and backoff, free disk), plus `access`, which notices a data
//! root this user cannot read (the status would silently count zero). The rows
//! are pure functions of those facts. Moves, requeues and deletes nothing.

use std::io::ErrorKind;
use std::path::PathBuf;

use episode_common::ByteSize;
use episode_shipper::config::Config;
use episode_shipper::layout::DataRoot;
use episode_shipper::shipper::human_age;
use episode_shipper::status::Status;

use crate::fixes::{self, Context};
use crate::report::{Check, Level, Row};

/// Free space on the data root below which the backlog row is red.
pub const RED_FREE_BYTES: u64 = 100 << 20;
/// Free space below which it is yellow.
pub const YELLOW_FREE_BYTES: u64 = 1 << 30;
/// A backlog whose oldest episode waited this long with no ship since is yellow.
pub const STUCK_SECS: u64 = 3600;

/// Whether the data root could be read by this user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub root: PathBuf,
    pub root_missing: bool,
    /// "<dir>: <error>" for each directory this user may not list.
    pub denied: Vec<String>,
}

/// Tries to list the shipper's directories.
pub fn access(config: &Config) -> Access {
    let root = DataRoot::new(&config.data_root);
    let mut access = Access {
        root: root.root.clone(),
        ..Access::default()
    };
    if let Err(e) = std::fs::metadata(&root.root)
        && e.kind() == ErrorKind::NotFound
    {
        access.root_missing = true;
        return access;
    }
    for dir in [&root.episodes, &root.outbox, &root.quarantine, &root.state] {
        if let Err(e) = std::fs::read_dir(dir)
            && e.kind() == ErrorKind::PermissionDenied
        {
            access.denied.push(format!("{}: {e}", dir.display()));
        }
    }
    access
}

fn unreadable(row: &mut Row, access: &Access) -> bool {
    if access.denied.is_empty() {
        return false;
    }
    row.note(
        Level::Yellow,
        format!(
            "cannot read {}; the counts are incomplete",
            access.denied.join(", ")
        ),
    );
    row.fix(Level::Yellow, fixes::permission());
    true
}

/// Pending episodes, the outbox, conflicts, free disk.
pub fn backlog_row(s: &Status, access: &Access, ctx: &Context) -> Row {
    let mut row = Row::new(Check::Backlog);
    if access.root_missing {
        row.note(
            Level::Yellow,
            format!(
                "data_root {} does not exist: nothing to count",
                access.root.display()
            ),
        );
        row.fix(
            Level::Yellow,
            format!(
                "check data_root in {}; the shipper creates it when it starts",
                ctx.config_path.display()
            ),
        );
        return row;
    }
    unreadable(&mut row, access);
    let b = &s.backlog;
    let mut summary = if b.episodes == 0 {
        "nothing pending".to_owned()
    } else {
        let oldest = b
            .oldest_age_secs
            .map(|a| format!(", oldest {}", human_age(a)))
            .unwrap_or_default();
        format!("{} pending ({}{oldest})", b.episodes, ByteSize(b.bytes))
    };
    if b.unfinished > 0 {
        summary.push_str(&format!(", {} still being recorded", b.unfinished));
    }
    summary.push_str(&format!(
        "; outbox {} archive(s) ({})",
        s.outbox.archives,
        ByteSize(s.outbox.bytes)
    ));
    if !s.retrying.is_empty() {
        summary.push_str(&format!("; {} retrying", s.retrying.len()));
    }
    match s.last_success_age_secs {
        Some(age) => summary.push_str(&format!("; last ship {} ago", human_age(age))),
        None => summary.push_str("; never shipped"),
    }
    if let Some(free) = s.free_bytes {
        summary.push_str(&format!("; {} free", ByteSize(free)));
    }
    row.note(Level::Green, summary);

    if let Some(free) = s.free_bytes {
        let level = if free < RED_FREE_BYTES {
            Level::Red
        } else if free < YELLOW_FREE_BYTES {
            Level::Yellow
        } else {
            Level::Green
        };
        if level != Level::Green {
            row.note(
                level,
                format!(
                    "only {} free on {}: packing needs room for each archive",
                    ByteSize(free),
                    s.data_root
                ),
            );
            row.fix(
                level,
                format!(
                    "free disk space on the file system of {} (e.g. old shipped/ episodes, if shipped.keep_days allows)",
                    s.data_root
                ),
            );
        }
    }
    let stuck = b.episodes > 0
        && b.oldest_age_secs.is_some_and(|a| a > STUCK_SECS)
        && s.last_success_age_secs.is_none_or(|a| a > STUCK_SECS);
    if stuck {
        let since = s.last_success_age_secs.map_or("ever".to_owned(), human_age);
        row.note(
            Level::Yellow,
            format!(
                "nothing shipped for {since} while {} episode(s) wait",
                b.episodes
            ),
        );
        row.fix(
            Level::Yellow,
            format!(
                "see the receiver, hold and journal rows; {} ships one pass by hand and prints the result",
                ctx.shipper("once")
            ),
        );
    }
    if s.outbox.orphans > 0 {
        row.note(
            Level::Yellow,
            format!(
                "{} orphan file(s) in the outbox (no episode directory)",
                s.outbox.orphans
            ),
        );
        row.fix(
            Level::Yellow,
            "the shipper sweeps them at the start of its next pass: is it running? (service row)",
        );
    }
    if !b.invalid_names.is_empty() {
        row.note(
            Level::Yellow,
            format!(
                "{} in episodes/ not a valid episode id, never shipped: {}",
                b.invalid_names.len(),
                fixes::list(&b.invalid_names, 5)
            ),
        );
        row.fix(
            Level::Yellow,
            "rename them to match [A-Za-z0-9][A-Za-z0-9._-]{0,127} (no \"..\")",
        );
    }
    if !s.conflicts.is_empty() {
        let ids: Vec<String> = s.conflicts.iter().map(|c| c.episode_id.clone()).collect();
        row.note(
            Level::Yellow,
            format!(
                "{} in conflict (409: another archive is stored under the id): {}",
                ids.len(),
                fixes::list(&ids, 5)
            ),
        );
        row.fix(Level::Yellow, fixes::conflict(ctx, &ids));
    }
    if let Some(e) = &s.state_error {
        row.note(Level::Yellow, format!("retry state unreadable: {e}"));
        if e.contains("Permission denied") {
            row.fix(Level::Yellow, fixes::permission());
        } else {
            row.fix(
                Level::Yellow,
                format!(
                    "the shipper sets a corrupt file aside at its next start: `sudo systemctl restart {}`",
                    ctx.unit
                ),
            );
        }
    }
    row
}

/// "412 out-of-window" → (412, Some("out-of-window")); "unknown" → None.
fn parse_reason(reason: &str) -> Option<(u16, Option<&str>)> {
    let (status, problem) = match reason.split_once(' ') {
        Some((s, p)) => (s, Some(p)),
        None => (reason, None),
    };
    Some((status.parse().ok()?, problem))
}

/// Quarantined episodes by reason, with the fix of the most common first.
pub fn quarantine_row(s: &Status, access: &Access, ctx: &Context) -> Row {
    let mut row = Row::new(Check::Quarantine);
    if access.root_missing {
        row.note(Level::Green, "no data_root, nothing quarantined");
        return row;
    }
    unreadable(&mut row, access);
    let q = &s.quarantine;
    if q.total == 0 {
        row.note(Level::Green, "empty");
        return row;
    }
    let mut reasons: Vec<(&String, &usize)> = q.by_reason.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let oldest = q
        .oldest_age_secs
        .map(|a| format!("; oldest {}", human_age(a)))
        .unwrap_or_default();
    row.note(
        Level::Yellow,
        format!(
            "{} quarantined: {}{oldest}",
            q.total,
            reasons
                .iter()
                .map(|(r, n)| format!("{n} × {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for (reason, _) in reasons {
        match parse_reason(reason) {
            Some((status, problem)) => {
                row.fix(Level::Yellow, fixes::fatal(ctx, status, problem));
            }
            None => {
                row.fix(
                    Level::Yellow,
                    format!(
                        "entries without a readable quarantine_reason.json: look inside {}, then {}",
                        ctx.data_root.as_deref().map_or_else(
                            || "<data_root>/quarantine".into(),
                            |d| d.join("quarantine").display().to_string()
                        ),
                        ctx.shipper("requeue <ID>")
                    ),
                );
            }
        }
    }
    row
}

/// Whether shipping is paused: hold (401/403/404…) is red, a transient backoff yellow.
pub fn hold_row(s: &Status, now_unix: i64, ctx: &Context) -> Row {
    let mut row = Row::new(Check::Hold);
    if let Some(h) = &s.hold {
        let age = human_age((now_unix - h.since_unix).max(0) as u64);
        row.note(
            Level::Red,
            format!(
                "shipping paused since {} ({age} ago) by {}: {} (next check {})",
                h.since, h.status_code, h.error, h.next_check
            ),
        );
        row.fix(
            Level::Red,
            format!(
                "{}; the shipper re-checks by itself and resumes",
                fixes::hold(ctx, h.status_code)
            ),
        );
    } else if let Some(b) = &s.backoff {
        let status = match b.last_status {
            0 => "connection".to_owned(),
            s => s.to_string(),
        };
        row.note(
            Level::Yellow,
            format!(
                "backing off until {} after {} transient failure(s) ({status}): {}",
                b.until, b.failures, b.last_error
            ),
        );
        row.fix(Level::Yellow, fixes::transient(ctx));
    }
    match s.pass_under_way.as_ref().filter(|p| p.is_crash_loop()) {
        Some(p) => {
            row.note(
                Level::Red,
                format!(
                    "crash loop: {} passes in a row died mid-pass (crash, OOM, SIGKILL or watchdog); {}",
                    p.unfinished_passes,
                    p.resume()
                ),
            );
            row.fix(Level::Red, fixes::crash_loop(ctx));
        }
        None if s.hold.is_none() && s.backoff.is_none() => {
            row.note(Level::Green, "shipping is not paused");
        }
        None => {}
    }
    if let Some(e) = &s.state_error {
        row.note(
            Level::Yellow,
            format!("retry state unreadable, hold unknown: {e}"),
        );
        row.fix(
            Level::Yellow,
            if e.contains("Permission denied") {
                fixes::permission()
            } else {
                format!(
                    "the shipper sets a corrupt file aside at its next start: `sudo systemctl restart {}`",
                    ctx.unit
                )
            },
        );
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use episode_shipper::status::{
        Backlog, BackoffSummary, ConflictEntry, HoldSummary, Outbox, PassSummary, QuarantineSummary,
    };

    fn status() -> Status {
        Status {
            host_id: "lab1".into(),
            data_root: "/d".into(),
            receiver: "https://r".into(),
            backlog: Backlog::default(),
            outbox: Outbox::default(),
            conflicts: vec![],
            retrying: vec![],
            quarantine: QuarantineSummary::default(),
            hold: None,
            backoff: None,
            pass_under_way: None,
            last_success: None,
            last_success_age_secs: Some(3),
            shipped: 0,
            free_bytes: Some(50 << 30),
            state_error: None,
        }
    }

    fn ctx() -> Context {
        Context {
            config_path: episode_shipper::config::DEFAULT_PATH.into(),
            host_id: Some("lab1".into()),
            data_root: Some("/d".into()),
            bearer_token_file: Some("/etc/t".into()),
            unit: "episode-shipper".into(),
            ..Context::default()
        }
    }

    #[test]
    fn backlog_rules() {
        let a = Access::default();
        let row = backlog_row(&status(), &a, &ctx());
        assert_eq!(row.level(), Level::Green);
        assert_eq!(
            row.finding_line(),
            "nothing pending; outbox 0 archive(s) (0 B); last ship 3s ago; 50.0 GiB free"
        );
        let mut s = status();
        s.backlog.episodes = 3;
        s.backlog.bytes = 3 << 20;
        s.backlog.oldest_age_secs = Some(7200);
        s.backlog.unfinished = 1;
        s.last_success_age_secs = None;
        s.outbox.orphans = 2;
        s.free_bytes = Some(500 << 20);
        s.conflicts.push(ConflictEntry {
            episode_id: "E9".into(),
            since: "t".into(),
            stored_sha256: None,
        });
        let row = backlog_row(&s, &a, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        let line = row.finding_line();
        for want in [
            "3 pending (3.0 MiB, oldest 2h), 1 still being recorded",
            "never shipped",
            "nothing shipped for ever while 3 episode(s) wait",
            "2 orphan file(s)",
            "only 500.0 MiB free",
            "1 in conflict (409",
            "E9",
        ] {
            assert!(line.contains(want), "{want}: {line}");
        }
        s.free_bytes = Some(1 << 20);
        assert_eq!(backlog_row(&s, &a, &ctx()).level(), Level::Red);
        let missing = Access {
            root: "/d".into(),
            root_missing: true,
            denied: vec![],
        };
        assert_eq!(
            backlog_row(&status(), &missing, &ctx()).level(),
            Level::Yellow
        );
        let denied = Access {
            root: "/d".into(),
            root_missing: false,
            denied: vec!["/d/episodes: Permission denied (os error 13)".into()],
        };
        let row = backlog_row(&status(), &denied, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.fix_line().unwrap().contains("sudo episode-doctor"));
    }

    #[test]
    fn quarantine_lists_the_most_common_class_first() {
        let mut s = status();
        assert_eq!(
            quarantine_row(&s, &Access::default(), &ctx()).level(),
            Level::Green
        );
        s.quarantine.total = 3;
        s.quarantine
            .by_reason
            .insert("400 missing-code-commit".into(), 1);
        s.quarantine.by_reason.insert("412 out-of-window".into(), 2);
        s.quarantine.oldest_age_secs = Some(3 * 86_400);
        let row = quarantine_row(&s, &Access::default(), &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert_eq!(
            row.finding_line(),
            "3 quarantined: 2 × 412 out-of-window, 1 × 400 missing-code-commit; oldest 3d"
        );
        let fixes = row.fixes();
        assert!(
            fixes[0].contains("`episode-shipper requeue --status 412`"),
            "{fixes:?}"
        );
        assert!(
            fixes[1].contains("`episode-shipper requeue --status 400`"),
            "{fixes:?}"
        );
        assert_eq!(parse_reason("unknown"), None);
        assert_eq!(parse_reason("415"), Some((415, None)));
    }

    #[test]
    fn hold_and_backoff() {
        let mut s = status();
        assert_eq!(hold_row(&s, 0, &ctx()).level(), Level::Green);
        s.backoff = Some(BackoffSummary {
            failures: 3,
            until: "2026-11-22T10:05:00Z".into(),
            last_status: 503,
            last_error: "HTTP 503".into(),
        });
        let row = hold_row(&s, 0, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.fix_line().unwrap().contains("`episode-shipper ping`"));
        s.hold = Some(HoldSummary {
            since: "2026-11-22T10:00:00Z".into(),
            since_unix: 1000,
            status_code: 401,
            problem_type: Some("unauthorized".into()),
            error: "401 unauthorized: bad token".into(),
            next_check: "2026-11-22T10:10:00Z".into(),
        });
        let row = hold_row(&s, 1000 + 7200, &ctx());
        assert_eq!(row.level(), Level::Red);
        assert!(
            row.finding_line()
                .contains("since 2026-11-22T10:00:00Z (2h ago) by 401")
        );
        assert!(row.fix_line().unwrap().contains("/etc/t"));
        s.hold = None;
        s.backoff = None;
        s.pass_under_way = Some(PassSummary {
            started: "2026-11-22T10:00:00Z".into(),
            unfinished_passes: 1,
            uploads_resume_at: None,
        });
        assert_eq!(
            hold_row(&s, 0, &ctx()).level(),
            Level::Green,
            "one pass under way is a pass at work"
        );
        s.pass_under_way.as_mut().unwrap().unfinished_passes = 4;
        s.pass_under_way.as_mut().unwrap().uploads_resume_at = Some("2026-11-22T10:08:00Z".into());
        let row = hold_row(&s, 0, &ctx());
        assert_eq!(row.level(), Level::Red);
        assert!(
            row.finding_line()
                .contains("4 passes in a row died mid-pass")
                && row
                    .finding_line()
                    .contains("uploads resume at 2026-11-22T10:08:00Z"),
            "{}",
            row.finding_line()
        );
        assert!(
            row.fix_line()
                .unwrap()
                .contains("journalctl -u episode-shipper")
        );
        s.pass_under_way = None;
        s.hold = Some(HoldSummary {
            since: "2026-11-22T10:00:00Z".into(),
            since_unix: 1000,
            status_code: 404,
            problem_type: None,
            error: "404".into(),
            next_check: "2026-11-22T10:10:00Z".into(),
        });
        assert!(
            hold_row(&s, 0, &ctx())
                .fix_line()
                .unwrap()
                .contains("receiver.url")
        );
    }
}
