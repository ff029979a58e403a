//! The outbox: `outbox/<id>.tar.zst` with its digest sidecar `<id>.json`, written as
//! a fsynced `.partial` then renamed; reused only while its bytes match the sidecar.
//! Invariant: no outbox file outlives its episode directory, no `.partial` a start.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use episode_common::{EpisodeId, Sha256, fsx};
use sha2::Digest as _;

use crate::layout::DataRoot;
use crate::pack::{Body, Digests, Packed, at, collect_entries, raw_size};

const ARCHIVE_SUFFIX: &str = ".tar.zst";
const PARTIAL_SUFFIX: &str = ".tar.zst.partial";
const SIDECAR_SUFFIX: &str = ".json";

impl DataRoot {
    pub fn archive(&self, episode_id: &EpisodeId) -> PathBuf {
        self.outbox.join(format!("{episode_id}{ARCHIVE_SUFFIX}"))
    }

    pub fn partial(&self, episode_id: &EpisodeId) -> PathBuf {
        self.outbox.join(format!("{episode_id}{PARTIAL_SUFFIX}"))
    }

    /// The digests of an outbox archive.
    pub fn sidecar(&self, episode_id: &EpisodeId) -> PathBuf {
        self.outbox.join(format!("{episode_id}{SIDECAR_SUFFIX}"))
    }

    /// Removes the outbox files of an episode (archive, partial, sidecar).
    pub fn remove_outbox(&self, episode_id: &EpisodeId) -> io::Result<()> {
        for path in [
            self.archive(episode_id),
            self.partial(episode_id),
            self.sidecar(episode_id),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes outbox files with no episode directory, and every `.partial` (no pack
    /// is in progress when a pass starts). Returns the removed file names.
    pub fn sweep_orphans(&self) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.outbox)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(text) = name.to_str() else { continue };
            let orphan = match outbox_episode(text) {
                Some((_, OutboxKind::Partial | OutboxKind::Temp)) => true,
                Some((id, _)) => !self.episodes.join(id).is_dir(),
                None => false,
            };
            if orphan {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed.push(text.to_owned()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !removed.is_empty() {
            fsx::fsync_dir(&self.outbox)?;
        }
        Ok(removed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutboxKind {
    Archive,
    Partial,
    Sidecar,
    /// A `write_atomic` temp file (`.<name>.<pid>.tmp`).
    Temp,
}

/// The episode an outbox file belongs to, and what it is.
fn outbox_episode(name: &str) -> Option<(&str, OutboxKind)> {
    if name.starts_with('.') && name.ends_with(".tmp") {
        return Some((name, OutboxKind::Temp));
    }
    for (suffix, kind) in [
        (PARTIAL_SUFFIX, OutboxKind::Partial),
        (ARCHIVE_SUFFIX, OutboxKind::Archive),
        (SIDECAR_SUFFIX, OutboxKind::Sidecar),
    ] {
        if let Some(id) = name.strip_suffix(suffix) {
            return Some((id, kind));
        }
    }
    None
}

/// Makes a fsynced `.partial` the outbox archive: sidecar first, then the rename.
pub(crate) fn publish(
    root: &DataRoot,
    episode_id: &EpisodeId,
    partial: &Path,
    digests: &Digests,
) -> io::Result<()> {
    let sidecar = serde_json::to_vec(digests).map_err(io::Error::other)?;
    let sidecar_path = root.sidecar(episode_id);
    fsx::write_atomic(&sidecar_path, &sidecar).map_err(|e| at(&sidecar_path, "writing", e))?;
    std::fs::rename(partial, root.archive(episode_id)).map_err(|e| at(partial, "renaming", e))?;
    fsx::fsync_dir(&root.outbox).map_err(|e| at(&root.outbox, "fsyncing", e))
}

/// Writes an in-memory archive to the outbox, so it stays for the next pass.
pub fn persist(root: &DataRoot, episode_id: &EpisodeId, packed: &Packed) -> io::Result<()> {
    let Body::Memory(bytes) = &packed.body else {
        return Ok(());
    };
    let partial = root.partial(episode_id);
    let result = (|| {
        let mut file = File::create(&partial).map_err(|e| at(&partial, "creating", e))?;
        file.write_all(bytes)
            .map_err(|e| at(&partial, "writing", e))?;
        file.sync_all().map_err(|e| at(&partial, "fsyncing", e))?;
        publish(root, episode_id, &partial, &packed.digests)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// The sha256 and length of a file, reporting every chunk read to `progress`: a
/// multi-GB archive re-hashed on a slow disk is work moving, and the watchdog
/// heartbeat must see it as such.
fn hash_archive(path: &Path, progress: &dyn Fn(u64)) -> io::Result<(Sha256, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
        progress(n as u64);
    }
    Ok((Sha256(hasher.finalize().into()), len))
}

/// A complete outbox archive left by an earlier run, if its bytes still match its
/// recorded digest; anything else in its place is removed so it is packed again.
/// The bytes re-hashed are reported to `progress`.
pub fn reuse(
    root: &DataRoot,
    episode_id: &EpisodeId,
    dir: &Path,
    progress: &dyn Fn(u64),
) -> io::Result<Option<Packed>> {
    let (archive, sidecar) = (root.archive(episode_id), root.sidecar(episode_id));
    if !archive.exists() {
        return Ok(None);
    }
    let recorded: Option<Digests> = std::fs::read(&sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let verdict = match recorded {
        None => Err("no readable digest sidecar".to_owned()),
        Some(digests) => {
            let (sha256, bytes) = hash_archive(&archive, progress)?;
            if sha256 == digests.sha256 && bytes == digests.bytes {
                Ok(digests)
            } else {
                Err(format!(
                    "archive sha256 {sha256} ({bytes} bytes) differs from its record {}",
                    digests.sha256
                ))
            }
        }
    };
    match verdict {
        Ok(digests) => {
            let raw_bytes = collect_entries(dir, episode_id)
                .map(|(e, _)| raw_size(&e))
                .unwrap_or(0);
            Ok(Some(Packed {
                digests,
                body: Body::File(archive),
                raw_bytes,
            }))
        }
        Err(why) => {
            tracing::warn!(event = %episode_common::Event::OutboxStale, episode_id = %episode_id, reason = %why, "outbox archive not reusable; packing again");
            root.remove_outbox(episode_id)?;
            Ok(None)
        }
    }
}

/// `persist` off the async workers: an in-memory archive is written to the outbox.
pub async fn keep(root: &DataRoot, episode_id: &EpisodeId, packed: &Packed) -> io::Result<()> {
    if !matches!(packed.body, Body::Memory(_)) {
        return Ok(());
    }
    let (root, episode_id, packed) = (root.clone(), episode_id.clone(), packed.clone());
    tokio::task::spawn_blocking(move || persist(&root, &episode_id, &packed))
        .await
        .map_err(io::Error::other)?
}

/// For the tests: the sha256 of an outbox archive, if there is one.
pub fn archive_sha256(root: &DataRoot, episode_id: &EpisodeId) -> Option<Sha256> {
    let sidecar: PathBuf = root.sidecar(episode_id);
    let digests: Digests = serde_json::from_slice(&std::fs::read(sidecar).ok()?).ok()?;
    Some(digests.sha256)
}

#[cfg(test)]
mod tests {
    use crate::layout::entries;
    use crate::layout::tests::{episode, root};

    #[test]
    fn sweeps_orphans_and_partials_but_keeps_live_archives() {
        let (_d, root) = root();
        episode(&root, "01A", true);
        for name in [
            "01A.tar.zst",
            "01A.json",
            "01A.tar.zst.partial",
            "01GONE.tar.zst",
            "01GONE.json",
            ".x.json.1.tmp",
            "README",
        ] {
            std::fs::write(root.outbox.join(name), "x").unwrap();
        }
        let mut removed = root.sweep_orphans().unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [
                ".x.json.1.tmp",
                "01A.tar.zst.partial",
                "01GONE.json",
                "01GONE.tar.zst"
            ]
        );
        let left: Vec<String> = entries(&root.outbox)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, ["01A.json", "01A.tar.zst", "README"]);
    }
}
