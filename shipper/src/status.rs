//! `episode-shipper status`: backlog, outbox, conflicts, quarantine, hold, backoff and
//! crash-loop guard, read from the data root and state file without the lock.
//! The doctor reads the same `Status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use episode_common::{ByteSize, fsx};
use serde::Serialize;

use crate::config::Config;
use crate::layout::{self, DataRoot, Place};
use crate::pack;
use crate::quarantine;
use crate::shipper::{episode_age, human_age};
use crate::state::StateFile;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub host_id: String,
    pub data_root: String,
    pub receiver: String,
    pub backlog: Backlog,
    pub outbox: Outbox,
    pub conflicts: Vec<ConflictEntry>,
    pub retrying: Vec<RetryEntry>,
    pub quarantine: QuarantineSummary,
    pub hold: Option<HoldSummary>,
    pub backoff: Option<BackoffSummary>,
    /// A pass that started uploading and has not ended: one under way now, or,
    /// when no shipper runs or `unfinished_passes` is 2 or more, passes that died
    /// (the crash-loop guard then holds uploads back until `uploads_resume_at`).
    pub pass_under_way: Option<PassSummary>,
    pub last_success: Option<String>,
    pub last_success_age_secs: Option<u64>,
    pub shipped: usize,
    pub free_bytes: Option<u64>,
    /// Set when the state file could not be read.
    pub state_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Backlog {
    /// Finished episodes waiting in episodes/.
    pub episodes: usize,
    pub bytes: u64,
    pub oldest_age_secs: Option<u64>,
    pub oldest: Option<String>,
    /// Directories still being written (no done.marker).
    pub unfinished: usize,
    /// Finished directories whose names are not valid ids.
    pub invalid_names: Vec<String>,
    /// Entries of episodes/ that are not shipped, and why (a symlink instead of a
    /// directory, a `done.marker` that is not a regular file).
    pub not_ready: Vec<layout::NotReady>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Outbox {
    pub archives: usize,
    pub bytes: u64,
    pub partials: usize,
    /// Archives or sidecars without an episode directory (swept at the next pass).
    pub orphans: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConflictEntry {
    pub episode_id: String,
    pub since: String,
    pub stored_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryEntry {
    pub episode_id: String,
    pub attempts: u32,
    pub last_status: u16,
    pub last_error: Option<String>,
    pub next_attempt: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QuarantineSummary {
    pub total: usize,
    /// "400 missing-code-commit" → count.
    pub by_reason: BTreeMap<String, usize>,
    pub oldest_age_secs: Option<u64>,
    pub entries: Vec<QuarantineEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub episode_id: String,
    pub reason: String,
    pub status_code: Option<u16>,
    pub age_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HoldSummary {
    pub since: String,
    pub since_unix: i64,
    pub status_code: u16,
    pub problem_type: Option<String>,
    pub error: String,
    pub next_check: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PassSummary {
    pub started: String,
    /// Passes in a row that started uploading and did not end, this one included.
    pub unfinished_passes: u32,
    /// If this pass never ends, no upload starts before this time; `None` once it
    /// has passed.
    pub uploads_resume_at: Option<String>,
}

impl PassSummary {
    /// Two or more passes in a row died: a crash loop, not a pass at work (one
    /// marker is also what a running pass leaves).
    pub fn is_crash_loop(&self) -> bool {
        self.unfinished_passes >= 2
    }

    /// When uploads resume, as a phrase for the status table and the doctor.
    pub fn resume(&self) -> String {
        match &self.uploads_resume_at {
            Some(t) => format!("uploads resume at {t}"),
            None => "its wait is over, uploads resume at the next start".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackoffSummary {
    pub failures: u32,
    pub until: String,
    pub last_status: u16,
    pub last_error: String,
}

fn wall_s(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(episode_common::wire::format_rfc3339)
        .unwrap_or_default()
}

/// Collects the status. Reads only; works while the daemon runs.
pub fn collect(config: &Config) -> Status {
    let root = DataRoot::new(&config.data_root);
    let now = SystemTime::now();
    let now_unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut backlog = Backlog::default();
    if let Ok(found) = root.finished_episodes() {
        backlog.episodes = found.ready.len();
        backlog.unfinished = found.unfinished;
        backlog.invalid_names = found.invalid;
        backlog.not_ready = found.not_ready;
        for id in &found.ready {
            let dir = root.episode_dir(Place::Episodes, id);
            backlog.bytes += pack::collect_entries(&dir, id)
                .map(|(e, _)| pack::raw_size(&e))
                .unwrap_or(0);
        }
        if let Some(first) = found.ready.first() {
            backlog.oldest = Some(first.to_string());
            backlog.oldest_age_secs = episode_age(&root, first);
        }
    }
    let mut outbox = Outbox::default();
    for (name, path) in layout::entries(&root.outbox).unwrap_or_default() {
        let id = name
            .strip_suffix(".tar.zst.partial")
            .or(name.strip_suffix(".tar.zst"))
            .or(name.strip_suffix(".json"));
        if name.ends_with(".partial") {
            outbox.partials += 1;
        } else if name.ends_with(".tar.zst") {
            outbox.archives += 1;
            outbox.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
        }
        if let Some(id) = id
            && !root.episodes.join(id).is_dir()
        {
            outbox.orphans += 1;
        }
    }
    let (state, state_error) = match StateFile::peek(&root.state) {
        Ok(s) => (s, None),
        Err(e) => (Default::default(), Some(e)),
    };
    let conflicts = state
        .episodes
        .iter()
        .filter_map(|(id, e)| {
            e.conflict.as_ref().map(|c| ConflictEntry {
                episode_id: id.clone(),
                since: wall_s(c.since_unix),
                stored_sha256: c.stored_sha256.clone(),
            })
        })
        .collect();
    let retrying = state
        .episodes
        .iter()
        .filter(|(_, e)| e.conflict.is_none() && e.attempts > 0)
        .map(|(id, e)| RetryEntry {
            episode_id: id.clone(),
            attempts: e.attempts,
            last_status: e.last_status,
            last_error: e.last_error.clone(),
            next_attempt: e.next_attempt_ms.map(|ms| wall_s(ms / 1000)),
        })
        .collect();
    let mut q = QuarantineSummary::default();
    for entry in quarantine::list(&root, now).unwrap_or_default() {
        q.total += 1;
        *q.by_reason.entry(entry.class()).or_default() += 1;
        q.oldest_age_secs = Some(
            q.oldest_age_secs
                .map_or(entry.age_secs, |a| a.max(entry.age_secs)),
        );
        q.entries.push(QuarantineEntry {
            episode_id: entry.name.clone(),
            reason: entry.class(),
            status_code: entry.reason.as_ref().map(|r| r.status_code),
            age_secs: entry.age_secs,
        });
    }
    let hold = state.hold.as_ref().map(|h| HoldSummary {
        since: wall_s(h.since_unix),
        since_unix: h.since_unix,
        status_code: h.status_code,
        problem_type: h.problem_type.clone(),
        error: h.error.clone(),
        next_check: wall_s(h.recheck_ms / 1000),
    });
    let backoff = state
        .backoff
        .as_ref()
        .filter(|b| b.until_ms / 1000 >= now_unix)
        .map(|b| BackoffSummary {
            failures: b.failures,
            until: wall_s(b.until_ms / 1000),
            last_status: b.last_status,
            last_error: b.last_error.clone(),
        });
    let pass_under_way = state.pass_under_way.as_ref().map(|p| PassSummary {
        started: wall_s(p.started_ms / 1000),
        unfinished_passes: p.unfinished,
        uploads_resume_at: (p.resume_ms / 1000 >= now_unix).then(|| wall_s(p.resume_ms / 1000)),
    });
    let shipped = layout::entries(&root.shipped)
        .map_or(0, |e| e.iter().filter(|(n, _)| !n.starts_with('.')).count());
    Status {
        host_id: config.host_id.to_string(),
        data_root: config.data_root.display().to_string(),
        receiver: config.base_url().to_owned(),
        backlog,
        outbox,
        conflicts,
        retrying,
        quarantine: q,
        hold,
        backoff,
        pass_under_way,
        last_success: state.last_success_unix.map(wall_s),
        last_success_age_secs: state
            .last_success_unix
            .map(|t| (now_unix - t).max(0) as u64),
        shipped,
        free_bytes: fsx::free_space(&config.data_root).ok(),
        state_error,
    }
}

/// The human form of `status`.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "host {}  →  {}", s.host_id, s.receiver);
    let _ = writeln!(out, "data root {}", s.data_root);
    let oldest = s
        .backlog
        .oldest_age_secs
        .map(|a| format!(", oldest {}", human_age(a)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "backlog     {} episode(s), {}{oldest}",
        s.backlog.episodes,
        ByteSize(s.backlog.bytes)
    );
    if s.backlog.unfinished > 0 {
        let _ = writeln!(
            out,
            "            {} still being recorded (no done.marker)",
            s.backlog.unfinished
        );
    }
    for name in &s.backlog.invalid_names {
        let _ = writeln!(
            out,
            "            {name:?} is not a valid episode id and is not shipped: rename it"
        );
    }
    for n in &s.backlog.not_ready {
        let _ = writeln!(out, "            {:?} is not shipped: {}", n.name, n.reason);
    }
    let _ = writeln!(
        out,
        "outbox      {} archive(s), {}{}",
        s.outbox.archives,
        ByteSize(s.outbox.bytes),
        if s.outbox.orphans > 0 {
            format!(", {} orphan(s) (swept next pass)", s.outbox.orphans)
        } else {
            String::new()
        }
    );
    match &s.last_success {
        Some(t) => {
            let age = s.last_success_age_secs.map(human_age).unwrap_or_default();
            let _ = writeln!(
                out,
                "last ship   {t} ({age} ago); {} in shipped/",
                s.shipped
            );
        }
        None => {
            let _ = writeln!(out, "last ship   never; {} in shipped/", s.shipped);
        }
    }
    match &s.hold {
        Some(h) => {
            let _ = writeln!(
                out,
                "HOLD        since {}: {} (next check {})",
                h.since, h.error, h.next_check
            );
        }
        None => {
            let _ = writeln!(out, "hold        no");
        }
    }
    if let Some(b) = &s.backoff {
        let _ = writeln!(
            out,
            "backoff     until {} after {} failure(s): {}",
            b.until, b.failures, b.last_error
        );
    }
    if let Some(p) = &s.pass_under_way {
        let _ = match p.is_crash_loop() {
            false => writeln!(
                out,
                "pass        under way since {} (if no shipper runs, it died mid-pass: {})",
                p.started,
                p.resume()
            ),
            true => writeln!(
                out,
                "CRASH LOOP  {} passes in a row did not finish (crash, OOM, SIGKILL or watchdog); {}; why: journalctl -u episode-shipper",
                p.unfinished_passes,
                p.resume()
            ),
        };
    }
    let _ = writeln!(out, "conflicts   {}", s.conflicts.len());
    for c in &s.conflicts {
        let stored = c.stored_sha256.as_deref().unwrap_or("?");
        let _ = writeln!(
            out,
            "            {} since {} (receiver has sha256 {stored})",
            c.episode_id, c.since
        );
    }
    for r in &s.retrying {
        let _ = writeln!(
            out,
            "retrying    {} after {} attempt(s), last {}: {}",
            r.episode_id,
            r.attempts,
            r.last_status,
            r.last_error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "quarantine  {}", s.quarantine.total);
    for (reason, n) in &s.quarantine.by_reason {
        let _ = writeln!(out, "            {n} × {reason}");
    }
    if let Some(free) = s.free_bytes {
        let _ = writeln!(out, "free disk   {}", ByteSize(free));
    }
    if let Some(e) = &s.state_error {
        let _ = writeln!(out, "state       {e} (set aside at the next start)");
    }
    out
}
