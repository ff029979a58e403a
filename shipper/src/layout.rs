//! The shipper's directories under `data_root`, listing finished episodes, and the
//! one way an episode directory changes place: a no-replace rename, then an fsync of
//! both parents. Invariant: an episode directory is in exactly one place.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use episode_common::{EpisodeId, fsx};

pub const DONE_MARKER: &str = "done.marker";
pub const REASON_FILE: &str = "quarantine_reason.json";

/// The directories of one data root.
#[derive(Debug, Clone)]
pub struct DataRoot {
    pub root: PathBuf,
    pub episodes: PathBuf,
    pub outbox: PathBuf,
    pub shipped: PathBuf,
    pub quarantine: PathBuf,
    pub state: PathBuf,
}

/// Where an episode directory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Episodes,
    Shipped,
    Quarantine,
}

impl DataRoot {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            episodes: root.join("episodes"),
            outbox: root.join("outbox"),
            shipped: root.join("shipped"),
            quarantine: root.join("quarantine"),
            state: root.join("state"),
        }
    }

    /// Creates the directories that are missing (and makes their entries durable).
    pub fn ensure(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let mut created = false;
        for dir in [
            &self.episodes,
            &self.outbox,
            &self.shipped,
            &self.quarantine,
            &self.state,
        ] {
            match std::fs::create_dir(dir) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("creating {}: {e}", dir.display()),
                    ));
                }
            }
        }
        if created {
            fsx::fsync_dir(&self.root)?;
        }
        Ok(())
    }

    pub fn dir(&self, place: Place) -> &Path {
        match place {
            Place::Episodes => &self.episodes,
            Place::Shipped => &self.shipped,
            Place::Quarantine => &self.quarantine,
        }
    }

    pub fn episode_dir(&self, place: Place, episode_id: &EpisodeId) -> PathBuf {
        self.dir(place).join(episode_id)
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state.join("lock")
    }

    /// Moves an episode directory from one place to another: rename without
    /// replacing, then fsync both parents. Fails with `AlreadyExists` if the target
    /// is taken, leaving everything as it was.
    pub fn move_episode(&self, episode_id: &EpisodeId, from: Place, to: Place) -> io::Result<()> {
        self.move_episode_to(episode_id, from, to, episode_id.as_str())
    }

    /// As `move_episode`, under another name in the target place.
    pub fn move_episode_to(
        &self,
        episode_id: &EpisodeId,
        from: Place,
        to: Place,
        name: &str,
    ) -> io::Result<()> {
        self.rename_episode(episode_id, from, to, name)?;
        self.sync_places(&[from, to])
    }

    /// The rename of a move without its fsyncs; the caller owes a `sync_places`
    /// before it reports the move done. Used to retire many episodes with one
    /// fsync per directory: a retire lost to a crash is only a re-ship that the
    /// receiver answers `already_present`.
    pub fn rename_episode(
        &self,
        episode_id: &EpisodeId,
        from: Place,
        to: Place,
        name: &str,
    ) -> io::Result<()> {
        fsx::rename_noreplace(
            &self.episode_dir(from, episode_id),
            &self.dir(to).join(name),
        )
    }

    /// Makes the entries of these places durable (after renames in them).
    pub fn sync_places(&self, places: &[Place]) -> io::Result<()> {
        places
            .iter()
            .try_for_each(|place| fsx::fsync_dir(self.dir(*place)))
    }

    /// Episodes in `episodes/` that have `done.marker` (a regular file), sorted by id
    /// (oldest first for ULIDs). Directory names that are not valid ids are returned
    /// separately, and so are entries that look finished but are not shippable: a
    /// symlink in place of an episode directory (never followed) and a `done.marker`
    /// that is not a regular file.
    pub fn finished_episodes(&self) -> io::Result<Finished> {
        let mut finished = Finished::default();
        for entry in std::fs::read_dir(&self.episodes)? {
            let entry = entry?;
            let file_type = entry.file_type()?;
            let name = entry.file_name();
            let shown = name.to_string_lossy().into_owned();
            if file_type.is_symlink() {
                finished.not_ready.push(NotReady {
                    name: shown,
                    reason: "a symlink, not a directory: never followed (move the episode directory itself into episodes/)".into(),
                });
                continue;
            }
            if !file_type.is_dir() {
                continue;
            }
            match marker_state(&entry.path()) {
                Marker::Missing => {
                    finished.unfinished += 1;
                    continue;
                }
                Marker::NotAFile(what) => {
                    finished.not_ready.push(NotReady {
                        name: shown,
                        reason: format!(
                            "{DONE_MARKER} is {what}, not an empty regular file: not finished"
                        ),
                    });
                    continue;
                }
                Marker::Present => {}
            }
            match name.to_str().map(EpisodeId::new) {
                Some(Ok(id)) => finished.ready.push(id),
                _ => finished.invalid.push(shown),
            }
        }
        finished.ready.sort();
        finished.not_ready.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(finished)
    }
}

/// What `finished_episodes` found.
#[derive(Debug, Default)]
pub struct Finished {
    pub ready: Vec<EpisodeId>,
    /// Directories still being written (no `done.marker`).
    pub unfinished: usize,
    /// Finished directories whose names cannot be sent as ids.
    pub invalid: Vec<String>,
    /// Entries of `episodes/` that are not shipped, and why.
    pub not_ready: Vec<NotReady>,
}

/// An entry of `episodes/` that is not shipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotReady {
    pub name: String,
    pub reason: String,
}

enum Marker {
    Missing,
    Present,
    /// What it is instead of a regular file.
    NotAFile(&'static str),
}

fn marker_state(dir: &Path) -> Marker {
    match std::fs::symlink_metadata(dir.join(DONE_MARKER)) {
        Err(_) => Marker::Missing,
        Ok(m) if m.is_file() => Marker::Present,
        Ok(m) if m.is_dir() => Marker::NotAFile("a directory"),
        Ok(m) if m.file_type().is_symlink() => Marker::NotAFile("a symlink"),
        Ok(_) => Marker::NotAFile("not a regular file"),
    }
}

/// Age in seconds of a directory judged by its mtime (retention rules).
pub fn mtime_age_secs(path: &Path, now: std::time::SystemTime) -> Option<u64> {
    let mtime = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(now.duration_since(mtime).map(|d| d.as_secs()).unwrap_or(0))
}

/// The entries of a directory as (name, path), skipping names that are not UTF-8.
pub fn entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// True if `name` is a hidden or temporary file name.
pub fn is_hidden(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh data root with its directories (shared by the outbox's tests).
    pub(crate) fn root() -> (tempfile::TempDir, DataRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::new(dir.path());
        root.ensure().unwrap();
        (dir, root)
    }

    /// An episode directory with a meta.json, finished when `done`.
    pub(crate) fn episode(root: &DataRoot, id: &str, done: bool) {
        let dir = root.episodes.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meta.json"), "{}").unwrap();
        if done {
            std::fs::write(dir.join(DONE_MARKER), "").unwrap();
        }
    }

    #[test]
    fn lists_finished_episodes_oldest_first() {
        let (_d, root) = root();
        episode(&root, "01B", true);
        episode(&root, "01A", true);
        episode(&root, "01C", false);
        episode(&root, "bad name", true);
        std::fs::write(root.episodes.join("stray-file"), "").unwrap();
        episode(&root, "01D", false);
        std::fs::create_dir(root.episodes.join("01D").join(DONE_MARKER)).unwrap();
        std::os::unix::fs::symlink(root.episodes.join("01A"), root.episodes.join("01E")).unwrap();
        let found = root.finished_episodes().unwrap();
        assert_eq!(
            found
                .ready
                .iter()
                .map(EpisodeId::as_str)
                .collect::<Vec<_>>(),
            ["01A", "01B"]
        );
        assert_eq!(found.unfinished, 1);
        assert_eq!(found.invalid, ["bad name"]);
        let not_ready: Vec<(&str, &str)> = found
            .not_ready
            .iter()
            .map(|n| (n.name.as_str(), n.reason.as_str()))
            .collect();
        assert_eq!(not_ready.len(), 2, "{not_ready:?}");
        assert_eq!(not_ready[0].0, "01D");
        assert!(
            not_ready[0].1.contains("done.marker is a directory"),
            "{not_ready:?}"
        );
        assert_eq!(not_ready[1].0, "01E");
        assert!(not_ready[1].1.contains("symlink"), "{not_ready:?}");
    }

    #[test]
    fn moves_never_replace() {
        let (_d, root) = root();
        let id = EpisodeId::new("01A").unwrap();
        episode(&root, "01A", true);
        root.move_episode(&id, Place::Episodes, Place::Shipped)
            .unwrap();
        assert!(
            root.episode_dir(Place::Shipped, &id)
                .join("meta.json")
                .exists()
        );
        episode(&root, "01A", true);
        let err = root
            .move_episode(&id, Place::Episodes, Place::Shipped)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(
            root.episode_dir(Place::Episodes, &id).exists(),
            "the source stays when the target is taken"
        );
    }
}
