//! Quarantine: episodes the receiver will never take as they are.
//!
//! Owns moving an episode into `quarantine/<id>/` with its `quarantine_reason.json`,
//! crash-safely: the reason is first written to `state/quarantine-pending/<id>.json`,
//! then the directory is renamed, then the reason is moved inside; start-up
//! finishes any move a crash interrupted. Also owns retention (by the entry
//! directory's mtime, removal via a hidden rename so a crash never leaves a
//! half-deleted entry that looks new), listing with reasons, and `requeue`, which
//! removes the reason file before moving the directory back so it is never packed.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use episode_common::{EpisodeId, fsx};
use serde::{Deserialize, Serialize};

use crate::layout::{self, DataRoot, Place, REASON_FILE};

/// `quarantine_reason.json` (shipper.md, "Quarantine").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub status_code: u16,
    pub problem_type: Option<String>,
    pub error: String,
    /// The receiver's JSON body, or up to 4 KiB of its text.
    pub body: serde_json::Value,
    pub attempts: u32,
    pub sha256: Option<String>,
    pub quarantined_at_wall: String,
    pub quarantined_at_unix: i64,
    pub shipper_version: String,
}

const TRASH_PREFIX: &str = ".trash-";

fn pending_dir(root: &DataRoot) -> PathBuf {
    root.state.join("quarantine-pending")
}

/// Moves `episodes/<id>` to `quarantine/<id>` with `reason`, and deletes its outbox files.
pub fn quarantine(root: &DataRoot, episode_id: &EpisodeId, reason: &Reason) -> io::Result<()> {
    let pending = pending_dir(root);
    std::fs::create_dir_all(&pending)?;
    let pending_file = pending.join(format!("{episode_id}.json"));
    fsx::write_atomic(
        &pending_file,
        &serde_json::to_vec_pretty(reason).map_err(io::Error::other)?,
    )?;
    root.remove_outbox(episode_id)?;
    match root.move_episode(episode_id, Place::Episodes, Place::Quarantine) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // An older quarantined copy of the same id: keep both.
            let name = format!("{episode_id}.{}", reason.quarantined_at_unix);
            root.move_episode_to(episode_id, Place::Episodes, Place::Quarantine, &name)?;
            return place_reason(root, &pending_file, &root.quarantine.join(name));
        }
        Err(e) => return Err(e),
    }
    place_reason(
        root,
        &pending_file,
        &root.episode_dir(Place::Quarantine, episode_id),
    )
}

fn place_reason(root: &DataRoot, pending_file: &Path, entry: &Path) -> io::Result<()> {
    let target = entry.join(REASON_FILE);
    std::fs::rename(pending_file, &target)?;
    fsx::fsync_dir(entry)?;
    fsx::fsync_dir(&pending_dir(root))
}

/// Finishes quarantines a crash interrupted. Returns the ids completed.
pub fn recover(root: &DataRoot) -> io::Result<Vec<String>> {
    let pending = pending_dir(root);
    let mut done = Vec::new();
    let Ok(files) = layout::entries(&pending) else {
        return Ok(done);
    };
    for (name, path) in files {
        let Some(id) = name
            .strip_suffix(".json")
            .and_then(|n| EpisodeId::new(n).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let in_episodes = root.episode_dir(Place::Episodes, &id).is_dir();
        let in_quarantine = root.episode_dir(Place::Quarantine, &id).is_dir();
        if in_episodes && !in_quarantine {
            root.remove_outbox(&id)?;
            root.move_episode(&id, Place::Episodes, Place::Quarantine)?;
        }
        if root.episode_dir(Place::Quarantine, &id).is_dir() {
            place_reason(root, &path, &root.episode_dir(Place::Quarantine, &id))?;
            done.push(id.to_string());
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(done)
}

/// One quarantine entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub reason: Option<Reason>,
    pub age_secs: u64,
}

impl Entry {
    /// "412 out-of-window", "400", or "unknown" for the by-reason counts.
    pub fn class(&self) -> String {
        match &self.reason {
            None => "unknown".into(),
            Some(r) => match &r.problem_type {
                Some(p) => format!("{} {p}", r.status_code),
                None => r.status_code.to_string(),
            },
        }
    }
}

pub fn list(root: &DataRoot, now: SystemTime) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (name, path) in layout::entries(&root.quarantine)? {
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let reason = std::fs::read(path.join(REASON_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let age_secs = layout::mtime_age_secs(&path, now).unwrap_or(0);
        out.push(Entry {
            name,
            path,
            reason,
            age_secs,
        });
    }
    Ok(out)
}

/// Removes entries of `dir` whose mtime is older than `keep_days` (0 keeps all),
/// each by a rename to a hidden name first; also finishes removals a crash cut short
/// (when retention is on).
pub fn prune(dir: &Path, keep_days: u32, now: SystemTime) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    if keep_days == 0 {
        // Retention off: never list a directory that may hold 100,000 episodes.
        return Ok(removed);
    }
    for (name, path) in layout::entries(dir)? {
        if name.starts_with(TRASH_PREFIX) {
            std::fs::remove_dir_all(&path)?;
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        let old = layout::mtime_age_secs(&path, now)
            .is_some_and(|age| age > u64::from(keep_days) * 86_400);
        if old {
            let trash = dir.join(format!("{TRASH_PREFIX}{name}"));
            std::fs::rename(&path, &trash)?;
            fsx::fsync_dir(dir)?;
            std::fs::remove_dir_all(&trash)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Which quarantined episodes `requeue` moves back.
#[derive(Debug, Clone)]
pub enum Selector {
    Ids(Vec<String>),
    All,
    Status(u16),
}

/// Moves matching entries back to `episodes/`: reason file removed first, then the
/// rename. Returns (requeued ids, problems).
pub fn requeue(
    root: &DataRoot,
    selector: &Selector,
    now: SystemTime,
) -> io::Result<(Vec<String>, Vec<String>)> {
    let entries = list(root, now)?;
    let mut requeued = Vec::new();
    let mut problems = Vec::new();
    let chosen: Vec<&Entry> = match selector {
        Selector::All => entries.iter().collect(),
        Selector::Status(code) => entries
            .iter()
            .filter(|e| e.reason.as_ref().is_some_and(|r| r.status_code == *code))
            .collect(),
        Selector::Ids(ids) => {
            for id in ids {
                if !entries.iter().any(|e| &e.name == id) {
                    problems.push(format!("{id}: not in quarantine"));
                }
            }
            entries.iter().filter(|e| ids.contains(&e.name)).collect()
        }
    };
    for entry in chosen {
        let Ok(id) = EpisodeId::new(&entry.name) else {
            problems.push(format!(
                "{}: not a valid episode id; move it by hand",
                entry.name
            ));
            continue;
        };
        if root.episode_dir(Place::Episodes, &id).exists() {
            problems.push(format!("{id}: episodes/{id} already exists"));
            continue;
        }
        let reason_file = entry.path.join(REASON_FILE);
        match std::fs::remove_file(&reason_file) {
            Ok(()) => fsx::fsync_dir(&entry.path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        root.move_episode(&id, Place::Quarantine, Place::Episodes)?;
        requeued.push(id.to_string());
    }
    Ok((requeued, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, DataRoot, EpisodeId) {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::new(dir.path());
        root.ensure().unwrap();
        let id = EpisodeId::new("01E").unwrap();
        std::fs::create_dir(root.episodes.join("01E")).unwrap();
        std::fs::write(root.episodes.join("01E/meta.json"), "{}").unwrap();
        std::fs::write(root.archive(&id), "x").unwrap();
        (dir, root, id)
    }

    fn reason(code: u16) -> Reason {
        Reason {
            status_code: code,
            problem_type: Some("missing-code-commit".into()),
            error: "client error 400".into(),
            body: serde_json::json!({"type": "missing-code-commit"}),
            attempts: 1,
            sha256: None,
            quarantined_at_wall: "2026-11-22T10:00:00Z".into(),
            quarantined_at_unix: 1_795_341_600,
            shipper_version: "0.1.0".into(),
        }
    }

    #[test]
    fn quarantines_with_the_reason_and_requeues_without_it() {
        let (_d, root, id) = setup();
        quarantine(&root, &id, &reason(400)).unwrap();
        let entry = root.quarantine.join("01E");
        assert!(entry.join("meta.json").exists() && !root.episodes.join("01E").exists());
        assert!(!root.archive(&id).exists(), "the outbox archive is deleted");
        let written: Reason =
            serde_json::from_slice(&std::fs::read(entry.join(REASON_FILE)).unwrap()).unwrap();
        assert_eq!(written, reason(400));
        let entries = list(&root, SystemTime::now()).unwrap();
        assert_eq!(entries[0].class(), "400 missing-code-commit");

        let (none, _) = requeue(&root, &Selector::Status(412), SystemTime::now()).unwrap();
        assert!(none.is_empty());
        let (back, problems) = requeue(&root, &Selector::Status(400), SystemTime::now()).unwrap();
        assert_eq!((back, problems), (vec!["01E".to_owned()], vec![]));
        assert!(root.episodes.join("01E/meta.json").exists());
        assert!(!root.episodes.join("01E").join(REASON_FILE).exists());
    }

    #[test]
    fn recovery_finishes_an_interrupted_quarantine() {
        let (_d, root, id) = setup();
        // Crash right after the pending reason was written.
        std::fs::create_dir_all(pending_dir(&root)).unwrap();
        std::fs::write(
            pending_dir(&root).join("01E.json"),
            serde_json::to_vec(&reason(400)).unwrap(),
        )
        .unwrap();
        assert_eq!(recover(&root).unwrap(), ["01E"]);
        assert!(root.quarantine.join("01E").join(REASON_FILE).exists());
        assert!(!root.archive(&id).exists());
        assert!(layout::entries(&pending_dir(&root)).unwrap().is_empty());
    }

    #[test]
    fn prune_removes_old_entries_only_when_enabled() {
        let (_d, root, id) = setup();
        quarantine(&root, &id, &reason(400)).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(31 * 86_400);
        assert!(
            prune(&root.quarantine, 0, later).unwrap().is_empty(),
            "0 disables"
        );
        assert!(
            prune(&root.quarantine, 30, SystemTime::now())
                .unwrap()
                .is_empty(),
            "too young"
        );
        assert_eq!(prune(&root.quarantine, 30, later).unwrap(), ["01E"]);
        assert!(layout::entries(&root.quarantine).unwrap().is_empty());
    }
}
