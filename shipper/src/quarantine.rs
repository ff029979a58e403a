//! Quarantine: crash-safe moves into `quarantine/<entry>/` with the reason, retention,
//! listing, and `requeue` back to `episodes/`, each finished after a crash from its
//! record in `state/quarantine-pending/` or `state/requeue-pending/`.

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
    /// The episode's id (beyond the spec's fields): the entry may be named
    /// `<id>.<unix>` when an older copy of the same id was already quarantined.
    /// Absent in reasons written by older shippers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_id: Option<String>,
    /// What the shipper itself did that explains the answer (beyond the spec's
    /// fields), e.g. a `meta.json` too large to read, sent without its headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipper_note: Option<String>,
}

const TRASH_PREFIX: &str = ".trash-";

fn pending_dir(root: &DataRoot) -> PathBuf {
    root.state.join("quarantine-pending")
}

fn requeue_pending_dir(root: &DataRoot) -> PathBuf {
    root.state.join("requeue-pending")
}

/// `state/requeue-pending/<entry>.json`: a requeue under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RequeuePending {
    episode_id: String,
    /// The entry's reason, kept while its file is gone.
    reason: Option<Reason>,
}

fn read_requeue_pending(root: &DataRoot, entry_name: &str) -> Option<RequeuePending> {
    let path = requeue_pending_dir(root).join(format!("{entry_name}.json"));
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The name of the entry a new quarantine of `episode_id` goes to: `<id>` when free,
/// else `<id>.<unix>` (then `<id>.<unix>.<n>`), keeping the older copy.
fn entry_name(root: &DataRoot, episode_id: &EpisodeId, unix: i64) -> String {
    let free = |name: &str| {
        std::fs::symlink_metadata(root.quarantine.join(name))
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
    };
    if free(episode_id.as_str()) {
        return episode_id.to_string();
    }
    let stamped = format!("{episode_id}.{unix}");
    if free(&stamped) {
        return stamped;
    }
    (1u64..)
        .map(|n| format!("{stamped}.{n}"))
        .find(|name| free(name))
        .expect("some numbered name is free")
}

/// Moves `episodes/<id>` to `quarantine/<id>` (or `quarantine/<id>.<unix>` when an
/// older copy is there) with `reason`, and deletes its outbox files. Returns the
/// entry's name.
pub fn quarantine(root: &DataRoot, episode_id: &EpisodeId, reason: &Reason) -> io::Result<String> {
    let reason = Reason {
        episode_id: Some(episode_id.to_string()),
        ..reason.clone()
    };
    let name = entry_name(root, episode_id, reason.quarantined_at_unix);
    let pending = pending_dir(root);
    std::fs::create_dir_all(&pending)?;
    let pending_file = pending.join(format!("{name}.json"));
    fsx::write_atomic(
        &pending_file,
        &serde_json::to_vec_pretty(&reason).map_err(io::Error::other)?,
    )?;
    root.remove_outbox(episode_id)?;
    root.move_episode_to(episode_id, Place::Episodes, Place::Quarantine, &name)?;
    place_reason(root, &pending_file, &root.quarantine.join(&name))?;
    Ok(name)
}

fn place_reason(root: &DataRoot, pending_file: &Path, entry: &Path) -> io::Result<()> {
    let target = entry.join(REASON_FILE);
    std::fs::rename(pending_file, &target)?;
    fsx::fsync_dir(entry)?;
    fsx::fsync_dir(&pending_dir(root))
}

/// Finishes quarantines a crash interrupted, each into the entry its pending record
/// names (`state/quarantine-pending/<entry>.json`). An entry that already has a
/// reason file is not the one being made (its reason moves in last), so it is left
/// alone. Returns the ids completed.
pub fn recover(root: &DataRoot) -> io::Result<Vec<String>> {
    let pending = pending_dir(root);
    let mut done = Vec::new();
    let Ok(files) = layout::entries(&pending) else {
        return Ok(done);
    };
    for (file_name, path) in files {
        let Some(name) = file_name
            .strip_suffix(".json")
            .filter(|n| !n.starts_with('.'))
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let reason: Option<Reason> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // Older shippers named the pending file after the episode, always.
        let id = reason
            .as_ref()
            .and_then(|r| r.episode_id.as_deref())
            .unwrap_or(name);
        let (Ok(id), true) = (EpisodeId::new(id), reason.is_some()) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let entry = root.quarantine.join(name);
        let in_episodes = root.episode_dir(Place::Episodes, &id).is_dir();
        if in_episodes && !entry.exists() {
            root.remove_outbox(&id)?;
            root.move_episode_to(&id, Place::Episodes, Place::Quarantine, name)?;
        }
        if entry.is_dir() && !entry.join(REASON_FILE).exists() {
            place_reason(root, &path, &entry)?;
            done.push(id.to_string());
        } else {
            std::fs::remove_file(&path)?;
            fsx::fsync_dir(&pending)?;
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
    /// The episode this entry holds: recorded in its reason; for reasons of older
    /// shippers, its name without the `.<quarantined_at_unix>` suffix a second copy
    /// gets; else its name.
    pub fn episode_id(&self) -> &str {
        let Some(reason) = &self.reason else {
            return &self.name;
        };
        if let Some(id) = &reason.episode_id {
            return id;
        }
        self.name
            .strip_suffix(&format!(".{}", reason.quarantined_at_unix))
            .filter(|id| !id.is_empty())
            .unwrap_or(&self.name)
    }

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
            .and_then(|b| serde_json::from_slice(&b).ok())
            .or_else(|| read_requeue_pending(root, &name).and_then(|p| p.reason));
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

/// `(status_code, problem_type)` of every quarantine entry, by name: `known` ones
/// are kept as they are (a reason never changes), only new ones are read. An entry
/// without a readable reason is `("0", "")`.
pub fn reasons(
    root: &DataRoot,
    mut known: std::collections::HashMap<String, (String, String)>,
) -> std::collections::HashMap<String, (String, String)> {
    let Ok(entries) = layout::entries(&root.quarantine) else {
        return known;
    };
    let mut out = std::collections::HashMap::with_capacity(entries.len());
    for (name, path) in entries {
        if name.starts_with('.') {
            continue;
        }
        let reason = known.remove(&name).unwrap_or_else(|| {
            std::fs::read(path.join(REASON_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<Reason>(&b).ok())
                .map_or_else(
                    || ("0".to_owned(), String::new()),
                    |r| {
                        (
                            r.status_code.to_string(),
                            r.problem_type.unwrap_or_default(),
                        )
                    },
                )
        });
        out.insert(name, reason);
    }
    out
}

/// Removes entries of `dir` whose mtime is older than `keep_days` (0 keeps all),
/// each by a rename to a hidden name first; also finishes removals a crash cut short
/// (when retention is on). Calls `step` per entry looked at and per entry removed,
/// so a long walk keeps the watchdog heartbeat.
pub fn prune(
    dir: &Path,
    keep_days: u32,
    now: SystemTime,
    step: &dyn Fn(),
) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    if keep_days == 0 {
        // Retention off: never list a directory that may hold 100,000 episodes.
        return Ok(removed);
    }
    for (name, path) in layout::entries(dir)? {
        step();
        if name.starts_with(TRASH_PREFIX) {
            remove_tree(&path, step)?;
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        if expired(&path, keep_days, now) {
            let trash = dir.join(format!("{TRASH_PREFIX}{name}"));
            std::fs::rename(&path, &trash)?;
            fsx::fsync_dir(dir)?;
            remove_tree(&trash, step)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Whether `prune` removes this entry: older than `keep_days` by its mtime.
fn expired(path: &Path, keep_days: u32, now: SystemTime) -> bool {
    keep_days > 0
        && layout::mtime_age_secs(path, now).is_some_and(|age| age > u64::from(keep_days) * 86_400)
}

/// What `prune` would remove from `dir` now, changing nothing: the entries' names,
/// sorted.
pub fn plan_prune(dir: &Path, keep_days: u32, now: SystemTime) -> io::Result<Vec<String>> {
    if keep_days == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (name, path) in layout::entries(dir)? {
        if !name.starts_with('.') && expired(&path, keep_days, now) {
            out.push(name);
        }
    }
    Ok(out)
}

/// `remove_dir_all` that calls `step` per entry removed; symlinks are removed, never
/// followed.
fn remove_tree(path: &Path, step: &dyn Fn()) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        std::fs::remove_file(path)?;
        step();
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        remove_tree(&entry?.path(), step)?;
    }
    std::fs::remove_dir(path)?;
    step();
    Ok(())
}

/// Which quarantined episodes `requeue` moves back.
#[derive(Debug, Clone)]
pub enum Selector {
    Ids(Vec<String>),
    All,
    Status(u16),
}

/// Moves matching entries back to `episodes/<episode id>`: the intent (with the
/// reason) recorded in `state/requeue-pending/`, the reason file removed, the
/// rename, then the record removed. Requeues a crash interrupted are finished first
/// (and reported as requeued). An entry named `<id>.<unix>` (a second quarantined
/// copy) goes back as `<id>`; `Ids` matches either the episode id or the entry name.
/// An entry whose `episodes/<id>` exists stays where it is, with a problem saying so.
/// Returns (requeued episode ids, problems).
pub fn requeue(
    root: &DataRoot,
    selector: &Selector,
    now: SystemTime,
) -> io::Result<(Vec<String>, Vec<String>)> {
    requeue_or_plan(root, selector, now, Run::Move)
}

/// What `requeue` would do now, changing nothing: (episode ids it would move back,
/// problems it would report).
pub fn plan_requeue(
    root: &DataRoot,
    selector: &Selector,
    now: SystemTime,
) -> io::Result<(Vec<String>, Vec<String>)> {
    requeue_or_plan(root, selector, now, Run::Plan)
}

/// Whether a requeue moves entries or only says which it would move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Move,
    /// A dry run: the same selection, no change.
    Plan,
}

fn requeue_or_plan(
    root: &DataRoot,
    selector: &Selector,
    now: SystemTime,
    run: Run,
) -> io::Result<(Vec<String>, Vec<String>)> {
    // A real run first finishes requeues a crash cut short; a dry run changes nothing.
    let (mut requeued, mut problems) = match run {
        Run::Plan => (Vec::new(), Vec::new()),
        Run::Move => recover_requeues(root)?,
    };
    let entries = list(root, now)?;
    let chosen: Vec<&Entry> = match selector {
        Selector::All => entries.iter().collect(),
        Selector::Status(code) => entries
            .iter()
            .filter(|e| e.reason.as_ref().is_some_and(|r| r.status_code == *code))
            .collect(),
        Selector::Ids(ids) => {
            let matches = |e: &Entry, id: &String| &e.name == id || e.episode_id() == id;
            for id in ids {
                if !entries.iter().any(|e| matches(e, id)) {
                    problems.push(format!("{id}: not in quarantine"));
                }
            }
            entries
                .iter()
                .filter(|e| ids.iter().any(|id| matches(e, id)))
                .collect()
        }
    };
    for entry in chosen {
        let Ok(id) = EpisodeId::new(entry.episode_id()) else {
            problems.push(format!(
                "quarantine/{}: {:?} is not a valid episode id; move it by hand",
                entry.name,
                entry.episode_id()
            ));
            continue;
        };
        if root.episode_dir(Place::Episodes, &id).exists() {
            problems.push(format!(
                "quarantine/{}: not requeued, episodes/{id} already exists (ship or move that one first)",
                entry.name
            ));
            continue;
        }
        if run == Run::Plan {
            requeued.push(id.to_string());
            continue;
        }
        let pending = requeue_pending_dir(root);
        std::fs::create_dir_all(&pending)?;
        let record = RequeuePending {
            episode_id: id.to_string(),
            reason: entry.reason.clone(),
        };
        fsx::write_atomic(
            &pending.join(format!("{}.json", entry.name)),
            &serde_json::to_vec_pretty(&record).map_err(io::Error::other)?,
        )?;
        finish_requeue(root, &entry.name, &id)?;
        requeued.push(id.to_string());
    }
    Ok((requeued, problems))
}

/// The steps of a requeue after its record is durable; each may be repeated after
/// a crash. Removes the record last.
fn finish_requeue(root: &DataRoot, entry_name: &str, episode_id: &EpisodeId) -> io::Result<()> {
    let entry = root.quarantine.join(entry_name);
    if entry.is_dir() {
        match std::fs::remove_file(entry.join(REASON_FILE)) {
            Ok(()) => fsx::fsync_dir(&entry)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fsx::rename_noreplace(&entry, &root.episode_dir(Place::Episodes, episode_id))?;
        root.sync_places(&[Place::Quarantine, Place::Episodes])?;
    }
    let pending = requeue_pending_dir(root);
    std::fs::remove_file(pending.join(format!("{entry_name}.json")))?;
    fsx::fsync_dir(&pending)
}

/// Finishes requeues a crash interrupted (`state/requeue-pending/`). One whose
/// `episodes/<id>` has been taken meanwhile gets its reason file back and stays
/// in quarantine, with a problem saying so. Returns (requeued ids, problems).
pub fn recover_requeues(root: &DataRoot) -> io::Result<(Vec<String>, Vec<String>)> {
    let (mut done, mut problems) = (Vec::new(), Vec::new());
    let pending = requeue_pending_dir(root);
    let Ok(files) = layout::entries(&pending) else {
        return Ok((done, problems));
    };
    for (file_name, path) in files {
        let record = file_name
            .strip_suffix(".json")
            .filter(|n| !n.starts_with('.'))
            .and_then(|name| Some((name, read_requeue_pending(root, name)?)));
        let Some((name, record)) = record else {
            std::fs::remove_file(&path)?; // a temp file of an interrupted write
            continue;
        };
        let entry = root.quarantine.join(name);
        let id = EpisodeId::new(&record.episode_id);
        match id {
            Ok(id) if !entry.is_dir() || !root.episode_dir(Place::Episodes, &id).exists() => {
                let moves = entry.is_dir();
                finish_requeue(root, name, &id)?;
                if moves {
                    done.push(id.to_string());
                }
            }
            _ => {
                if let Some(reason) = &record.reason
                    && !entry.join(REASON_FILE).exists()
                {
                    fsx::write_atomic(
                        &entry.join(REASON_FILE),
                        &serde_json::to_vec_pretty(reason).map_err(io::Error::other)?,
                    )?;
                }
                problems.push(format!(
                    "quarantine/{name}: an interrupted requeue not finished, episodes/{} already exists (ship or move that one first)",
                    record.episode_id
                ));
                std::fs::remove_file(&path)?;
                fsx::fsync_dir(&pending)?;
            }
        }
    }
    Ok((done, problems))
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
            episode_id: None,
            shipper_note: None,
        }
    }

    fn read_reason(entry: &Path) -> Reason {
        serde_json::from_slice(&std::fs::read(entry.join(REASON_FILE)).unwrap()).unwrap()
    }

    /// `episodes/01E` again, with `marker` inside to tell the copies apart.
    fn record_again(root: &DataRoot, marker: &str) {
        std::fs::create_dir(root.episodes.join("01E")).unwrap();
        std::fs::write(root.episodes.join("01E").join(marker), "").unwrap();
    }

    #[test]
    fn quarantines_with_the_reason_and_requeues_without_it() {
        let (_d, root, id) = setup();
        assert_eq!(quarantine(&root, &id, &reason(400)).unwrap(), "01E");
        let entry = root.quarantine.join("01E");
        assert!(entry.join("meta.json").exists() && !root.episodes.join("01E").exists());
        assert!(!root.archive(&id).exists(), "the outbox archive is deleted");
        let written = read_reason(&entry);
        assert_eq!(
            written,
            Reason {
                episode_id: Some("01E".into()),
                ..reason(400)
            }
        );
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
            prune(&root.quarantine, 0, later, &|| {})
                .unwrap()
                .is_empty(),
            "0 disables"
        );
        assert!(
            prune(&root.quarantine, 30, SystemTime::now(), &|| {})
                .unwrap()
                .is_empty(),
            "too young"
        );
        let steps = std::cell::Cell::new(0);
        let step = || steps.set(steps.get() + 1);
        assert_eq!(prune(&root.quarantine, 30, later, &step).unwrap(), ["01E"]);
        assert!(layout::entries(&root.quarantine).unwrap().is_empty());
        // One step per entry looked at and per file and directory removed (the
        // entry, meta.json, the reason): a long removal keeps the heartbeat.
        assert_eq!(steps.get(), 4);
    }

    #[test]
    fn a_second_copy_of_an_id_is_kept_beside_the_first_and_requeued_under_its_id() {
        let (_d, root, id) = setup();
        std::fs::write(root.episodes.join("01E/first"), "").unwrap();
        quarantine(&root, &id, &reason(400)).unwrap();
        record_again(&root, "second");
        let second = Reason {
            quarantined_at_unix: 1_795_341_700,
            ..reason(412)
        };
        assert_eq!(quarantine(&root, &id, &second).unwrap(), "01E.1795341700");
        let entry = root.quarantine.join("01E.1795341700");
        assert!(entry.join("second").exists());
        assert_eq!(read_reason(&entry).episode_id.as_deref(), Some("01E"));
        assert_eq!(read_reason(&root.quarantine.join("01E")).status_code, 400);

        // Both map to 01E: the first goes back, the second is refused, naming why.
        let (back, problems) = requeue(&root, &Selector::All, SystemTime::now()).unwrap();
        assert_eq!(back, ["01E"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("quarantine/01E.1795341700")
                && problems[0].contains("episodes/01E already exists"),
            "{problems:?}"
        );
        assert!(root.episodes.join("01E/first").exists());
        // Once that one is gone (shipped), the second copy comes back as 01E, never
        // as an episode named "01E.1795341700".
        std::fs::rename(root.episodes.join("01E"), root.shipped.join("01E")).unwrap();
        let (back, problems) =
            requeue(&root, &Selector::Ids(vec!["01E".into()]), SystemTime::now()).unwrap();
        assert_eq!((back, problems), (vec!["01E".to_owned()], vec![]));
        assert!(root.episodes.join("01E/second").exists());
        assert!(!root.episodes.join("01E").join(REASON_FILE).exists());
        assert!(layout::entries(&root.episodes).unwrap().len() == 1);
        assert!(layout::entries(&root.quarantine).unwrap().is_empty());
    }

    #[test]
    fn an_older_shippers_suffixed_entry_is_requeued_under_its_id() {
        let (_d, root, _id) = setup();
        std::fs::remove_dir_all(root.episodes.join("01E")).unwrap();
        // Written by a shipper that did not record the id: derived from the suffix.
        let entry = root.quarantine.join("01E.1795341600");
        std::fs::create_dir(&entry).unwrap();
        std::fs::write(
            entry.join(REASON_FILE),
            serde_json::to_vec(&reason(400)).unwrap(),
        )
        .unwrap();
        let (back, problems) = requeue(
            &root,
            &Selector::Ids(vec!["01E.1795341600".into()]),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!((back, problems), (vec!["01E".to_owned()], vec![]));
        assert!(root.episodes.join("01E").is_dir());
    }

    #[test]
    fn recovery_finishes_a_second_copy_into_its_own_entry() {
        let (_d, root, id) = setup();
        quarantine(&root, &id, &reason(400)).unwrap();
        let first_reason = read_reason(&root.quarantine.join("01E"));
        record_again(&root, "second");
        // Crash right after the pending record of the second copy was written.
        let pending = Reason {
            quarantined_at_unix: 1_795_341_700,
            episode_id: Some("01E".into()),
            ..reason(412)
        };
        std::fs::write(
            pending_dir(&root).join("01E.1795341700.json"),
            serde_json::to_vec(&pending).unwrap(),
        )
        .unwrap();
        assert_eq!(recover(&root).unwrap(), ["01E"]);
        let entry = root.quarantine.join("01E.1795341700");
        assert!(entry.join("second").exists());
        assert_eq!(read_reason(&entry), pending);
        assert_eq!(
            read_reason(&root.quarantine.join("01E")),
            first_reason,
            "the older entry's reason is untouched"
        );
        assert!(!root.episodes.join("01E").exists());
        assert!(layout::entries(&pending_dir(&root)).unwrap().is_empty());
    }

    #[test]
    fn recovery_never_overwrites_a_finished_entrys_reason() {
        let (_d, root, id) = setup();
        quarantine(&root, &id, &reason(400)).unwrap();
        let first_reason = read_reason(&root.quarantine.join("01E"));
        record_again(&root, "second");
        // A pending record from an older shipper, named after the id, whose entry
        // is taken by a finished quarantine: the episode stays pending.
        std::fs::write(
            pending_dir(&root).join("01E.json"),
            serde_json::to_vec(&reason(412)).unwrap(),
        )
        .unwrap();
        assert!(recover(&root).unwrap().is_empty());
        assert_eq!(read_reason(&root.quarantine.join("01E")), first_reason);
        assert!(root.episodes.join("01E/second").exists());
        assert!(layout::entries(&pending_dir(&root)).unwrap().is_empty());
    }

    #[test]
    fn a_requeue_cut_short_keeps_its_reason_and_is_finished_next_time() {
        let (_d, root, id) = setup();
        quarantine(&root, &id, &reason(400)).unwrap();
        // Crash after the record and the reason's removal, before the move.
        std::fs::create_dir_all(requeue_pending_dir(&root)).unwrap();
        let record = RequeuePending {
            episode_id: "01E".into(),
            reason: Some(read_reason(&root.quarantine.join("01E"))),
        };
        std::fs::write(
            requeue_pending_dir(&root).join("01E.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        std::fs::remove_file(root.quarantine.join("01E").join(REASON_FILE)).unwrap();
        let entries = list(&root, SystemTime::now()).unwrap();
        assert_eq!(entries[0].class(), "400 missing-code-commit");
        let (back, problems) = requeue(&root, &Selector::Status(400), SystemTime::now()).unwrap();
        assert_eq!((back, problems), (vec!["01E".to_owned()], vec![]));
        assert!(root.episodes.join("01E/meta.json").exists());
        assert!(!root.episodes.join("01E").join(REASON_FILE).exists());
        assert!(
            layout::entries(&requeue_pending_dir(&root))
                .unwrap()
                .is_empty()
        );

        // Cut short again, but episodes/01E was taken meanwhile: the entry stays
        // quarantined with its reason back.
        quarantine(&root, &id, &reason(400)).unwrap();
        record_again(&root, "newer");
        std::fs::write(
            requeue_pending_dir(&root).join("01E.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        std::fs::remove_file(root.quarantine.join("01E").join(REASON_FILE)).unwrap();
        let (back, problems) = recover_requeues(&root).unwrap();
        assert!(back.is_empty());
        assert!(
            problems[0].contains("episodes/01E already exists"),
            "{problems:?}"
        );
        assert_eq!(read_reason(&root.quarantine.join("01E")).status_code, 400);
        assert!(
            layout::entries(&requeue_pending_dir(&root))
                .unwrap()
                .is_empty()
        );
    }
}
