//! What the shipper remembers across restarts, `state/retry.json`: per-episode
//! retry records, the global backoff and hold, the pass-under-way marker. Saved
//! atomically only when changed; a corrupt file is set aside, never fatal.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use episode_common::fsx;
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "retry.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub episodes: BTreeMap<String, EpisodeState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cleanup_unix: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_unix: Option<i64>,
    /// Set when a pass starts uploading, cleared when it ends: found at start-up, it
    /// means the last process died mid-pass (OOM, panic, SIGKILL, watchdog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_under_way: Option<PassUnderWay>,
}

/// A pass that started uploading and has not ended (yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassUnderWay {
    pub started_ms: i64,
    /// Passes in a row that started uploading and never ended, this one included.
    pub unfinished: u32,
    /// If this pass never ends, no upload starts before this time (Unix ms): the
    /// backoff for `unfinished` passes, drawn once so restarts cannot re-roll it.
    pub resume_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeState {
    #[serde(default)]
    pub attempts: u32,
    /// Unix milliseconds before which the episode is not tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    #[serde(default)]
    pub last_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_attempt_unix: i64,
    #[serde(default)]
    pub repacks: u32,
    /// The last attempt lost its answer: ask with HEAD before sending again.
    #[serde(default)]
    pub head_first: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub since_unix: i64,
    pub stored_sha256: Option<String>,
    pub recheck_ms: i64,
}

/// Shipping paused after transient failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub failures: u32,
    pub until_ms: i64,
    pub last_status: u16,
    pub last_error: String,
}

/// Shipping paused because the receiver says the configuration or credentials are wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub since_unix: i64,
    pub status_code: u16,
    #[serde(default)]
    pub problem_type: Option<String>,
    pub error: String,
    pub failures: u32,
    pub recheck_ms: i64,
}

/// The state file and whether memory differs from it.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    pub state: State,
    saved: State,
}

impl StateFile {
    /// Loads `state/retry.json`. A missing file is an empty state; a corrupt one is
    /// renamed to `retry.json.corrupt-<unix>` and reported in the second value.
    /// Temp files of saves a crash interrupted are removed (the caller holds the
    /// data root's lock, so no save is in progress).
    pub fn load(state_dir: &Path, now_unix: i64) -> io::Result<(Self, Option<String>)> {
        remove_interrupted_saves(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let (state, warning) = match std::fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => (State::default(), None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                ));
            }
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => (state, None),
                Err(e) => {
                    let aside = state_dir.join(format!("{FILE_NAME}.corrupt-{now_unix}"));
                    std::fs::rename(&path, &aside)?;
                    fsx::fsync_dir(state_dir)?;
                    let warning = format!(
                        "{} was corrupt ({e}); set aside as {}; starting with empty retry state",
                        path.display(),
                        aside.display()
                    );
                    (State::default(), Some(warning))
                }
            },
        };
        Ok((
            Self {
                path,
                saved: state.clone(),
                state,
            },
            warning,
        ))
    }

    /// Reads the state without ever changing the disk (`status`, `check`, doctor).
    pub fn peek(state_dir: &Path) -> Result<State, String> {
        let path = state_dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is corrupt: {e}", path.display())),
        }
    }

    /// Writes the state if it changed since the last save. Blocking: the daemon
    /// goes through `unsaved` + `write` + `mark_saved` off its async workers.
    pub fn save(&mut self) -> io::Result<()> {
        if let Some((path, state)) = self.unsaved() {
            Self::write(&path, &state)?;
            self.mark_saved(state);
        }
        Ok(())
    }

    /// Where to write and what, when the state changed since the last save.
    pub fn unsaved(&self) -> Option<(PathBuf, State)> {
        (self.state != self.saved).then(|| (self.path.clone(), self.state.clone()))
    }

    /// Writes a snapshot atomically (temp file, fsync, rename, fsync of the dir).
    pub fn write(path: &Path, state: &State) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        fsx::write_atomic(path, &bytes)
    }

    /// Records that `state` is what the disk now holds.
    pub fn mark_saved(&mut self, state: State) {
        self.saved = state;
    }

    pub fn episode(&mut self, id: &str) -> &mut EpisodeState {
        self.state.episodes.entry(id.to_owned()).or_default()
    }

    pub fn forget(&mut self, id: &str) {
        self.state.episodes.remove(id);
    }

    /// Drops records of episodes that are no longer pending (shipped, quarantined or
    /// deleted while the shipper was down).
    pub fn retain_pending(&mut self, pending: impl Fn(&str) -> bool) {
        self.state.episodes.retain(|id, _| pending(id));
    }
}

/// Drops the retry records of `ids` from `state/retry.json` on disk (for `requeue`,
/// which must not let an old backoff or attempt count follow an episode back).
/// Writes only when one of them had a record. Returns the ids whose records went.
pub fn forget_on_disk(state_dir: &Path, ids: &[String]) -> Result<Vec<String>, String> {
    let mut state = StateFile::peek(state_dir)?;
    let forgotten: Vec<String> = ids
        .iter()
        .filter(|id| state.episodes.remove(id.as_str()).is_some())
        .cloned()
        .collect();
    if !forgotten.is_empty() {
        let path = state_dir.join(FILE_NAME);
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        fsx::write_atomic(&path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(forgotten)
}

/// Removes `.retry.json.<pid>.tmp` files: `fsx::write_atomic` leaves one when the
/// process dies between writing its temp file and renaming it over `retry.json`.
fn remove_interrupted_saves(state_dir: &Path) -> io::Result<()> {
    let prefix = format!(".{FILE_NAME}.");
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut removed = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let interrupted = name
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"));
        if interrupted {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if removed {
        fsx::fsync_dir(state_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_writes_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, warning) = StateFile::load(dir.path(), 0).unwrap();
        assert!(warning.is_none());
        file.save().unwrap();
        assert!(
            !dir.path().join(FILE_NAME).exists(),
            "nothing changed, nothing written"
        );
        file.episode("E1").attempts = 2;
        file.state.backoff = Some(Backoff {
            failures: 1,
            until_ms: 99,
            last_status: 503,
            last_error: "x".into(),
        });
        file.save().unwrap();
        let mtime = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .modified()
            .unwrap();
        file.save().unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
        let (again, _) = StateFile::load(dir.path(), 0).unwrap();
        assert_eq!(again.state, file.state);
        assert_eq!(StateFile::peek(dir.path()).unwrap(), file.state);
    }

    #[test]
    fn a_corrupt_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{\"episodes\": {\"E1\": ").unwrap();
        assert!(StateFile::peek(dir.path()).unwrap_err().contains("corrupt"));
        let (file, warning) = StateFile::load(dir.path(), 1234).unwrap();
        assert_eq!(file.state, State::default());
        assert!(warning.unwrap().contains("set aside"));
        assert!(dir.path().join("retry.json.corrupt-1234").exists());
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn temp_files_of_interrupted_saves_are_removed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::load(dir.path(), 0).unwrap();
        file.episode("E1").attempts = 1;
        file.save().unwrap();
        // What a SIGKILL between the temp write and the rename leaves behind.
        std::fs::write(dir.path().join(".retry.json.4242.tmp"), b"{\"episo").unwrap();
        for keep in ["lock", "retry.json.corrupt-7", ".other.tmp"] {
            std::fs::write(dir.path().join(keep), b"x").unwrap();
        }
        let (again, warning) = StateFile::load(dir.path(), 0).unwrap();
        assert!(warning.is_none());
        assert_eq!(again.state, file.state);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".other.tmp", "lock", "retry.json", "retry.json.corrupt-7"]
        );
    }

    #[test]
    fn forgetting_on_disk_drops_only_the_named_records() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            forget_on_disk(dir.path(), &["E1".into()])
                .unwrap()
                .is_empty()
        );
        assert!(
            !dir.path().join(FILE_NAME).exists(),
            "nothing to forget, nothing written"
        );
        let (mut file, _) = StateFile::load(dir.path(), 0).unwrap();
        file.episode("E1").attempts = 3;
        file.episode("E2").attempts = 1;
        file.save().unwrap();
        assert_eq!(
            forget_on_disk(dir.path(), &["E1".into(), "E9".into()]).unwrap(),
            ["E1"]
        );
        let state = StateFile::peek(dir.path()).unwrap();
        assert_eq!(state.episodes.keys().collect::<Vec<_>>(), ["E2"]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"episodes": {}, "future_field": 1}"#,
        )
        .unwrap();
        assert!(StateFile::load(dir.path(), 0).unwrap().1.is_none());
    }
}
