//! Deterministic packing of an episode directory into a tar.zst.
//!
//! Owns the archive format: a tar of `<id>/…` with entries in byte-sorted order,
//! uid/gid 0, empty user and group names, each entry's own mode and mtime (whole
//! seconds), symlinks stored as links and never followed; compressed by zstd at the
//! configured level with the frame checksum on and always in multithreaded mode
//! (≥ 1 worker), so the bytes never depend on the core count. The sha256 of the
//! archive and of the tar stream are computed while writing, never by re-reading.
//! An episode is packed in memory while its archive fits the `MemoryBudget`; else into
//! `outbox/<id>.tar.zst.partial`, fsynced, then renamed. An in-memory archive whose
//! send fails is written to the outbox the same way (`persist`). Blocking: run it off the async workers.
//!
//! Invariant: packing the same unchanged directory twice gives identical bytes.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use episode_common::fsx;
use episode_common::{EpisodeId, Sha256};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use zstd::zstd_safe::{CCtx, CParameter};

use crate::layout::DataRoot;

/// Episodes up to this many raw bytes may be packed in memory (see `MemoryBudget`):
/// it spares writing, fsyncing and re-reading the archive through the outbox.
pub const MEMORY_PACK_LIMIT: u64 = 128 << 20;

/// The room left for in-memory archives. An episode is packed in memory only when
/// its raw size (an upper bound of its archive) fits; otherwise through the outbox,
/// so memory stays bounded however large or incompressible the backlog is.
#[derive(Clone)]
pub struct MemoryBudget(std::sync::Arc<tokio::sync::Semaphore>);

/// Room taken in a `MemoryBudget`, given back on drop.
pub struct Reservation(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes / 1024)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(kib)))
    }

    fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).ok()?;
        self.0
            .clone()
            .try_acquire_many_owned(kib)
            .ok()
            .map(Reservation)
    }
}

/// One entry of the archive, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path inside the archive: `<id>` or `<id>/a/b`.
    pub path: String,
    pub source: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { size: u64 },
    Symlink { target: PathBuf },
}

/// The digests of an archive, also its outbox sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub sha256: Sha256,
    pub tar_sha256: Sha256,
    pub bytes: u64,
}

/// A packed archive and where its bytes are.
#[derive(Debug, Clone)]
pub struct Packed {
    pub digests: Digests,
    pub body: Body,
    /// Raw bytes of the episode's files.
    pub raw_bytes: u64,
}

#[derive(Debug, Clone)]
pub enum Body {
    Memory(bytes::Bytes),
    File(PathBuf),
}

/// Lists the entries of an episode directory in archive order: the directory itself,
/// then its children sorted by name bytes, depth first. Skips sockets, fifos and
/// devices (they cannot be archived meaningfully) and reports them.
pub fn collect_entries(
    dir: &Path,
    episode_id: &EpisodeId,
) -> io::Result<(Vec<TarEntry>, Vec<PathBuf>)> {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let meta = std::fs::symlink_metadata(dir)?;
    entries.push(entry_for(dir, episode_id.as_str().to_owned(), &meta)?.expect("a directory"));
    walk(dir, episode_id.as_str(), &mut entries, &mut skipped)?;
    Ok((entries, skipped))
}

fn walk(
    dir: &Path,
    prefix: &str,
    entries: &mut Vec<TarEntry>,
    skipped: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let mut children: Vec<(std::ffi::OsString, PathBuf)> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()?;
    children.sort_by(|a, b| {
        std::os::unix::ffi::OsStrExt::as_bytes(a.0.as_os_str()).cmp(b.0.as_bytes())
    });
    for (name, path) in children {
        let Some(name) = name.to_str() else {
            skipped.push(path);
            continue;
        };
        let meta = std::fs::symlink_metadata(&path)?;
        let archive_path = format!("{prefix}/{name}");
        match entry_for(&path, archive_path.clone(), &meta)? {
            Some(entry) => {
                let is_dir = entry.kind == EntryKind::Dir;
                entries.push(entry);
                if is_dir {
                    walk(&path, &archive_path, entries, skipped)?;
                }
            }
            None => skipped.push(path),
        }
    }
    Ok(())
}

use std::os::unix::ffi::OsStrExt as _;

fn entry_for(
    path: &Path,
    archive_path: String,
    meta: &std::fs::Metadata,
) -> io::Result<Option<TarEntry>> {
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File { size: meta.len() }
    } else if file_type.is_symlink() {
        EntryKind::Symlink {
            target: std::fs::read_link(path)?,
        }
    } else {
        return Ok(None);
    };
    Ok(Some(TarEntry {
        path: archive_path,
        source: path.to_owned(),
        kind,
        mode: meta.permissions().mode() & 0o7777,
        mtime: u64::try_from(meta.mtime()).unwrap_or(0),
    }))
}

/// The raw size of the files of a listing.
pub fn raw_size(entries: &[TarEntry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            if let EntryKind::File { size } = e.kind {
                size
            } else {
                0
            }
        })
        .sum()
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `remaining` bytes or fails: a file that shrinks while it is packed
/// must not produce a corrupt tar. Reports progress as it goes.
struct Exact<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being packed", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}

fn header(entry: &TarEntry, entry_type: tar::EntryType, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_mode(entry.mode);
    h.set_mtime(entry.mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("")?;
    h.set_groupname("")?;
    h.set_size(size);
    Ok(h)
}

fn zstd_workers() -> u32 {
    // Any value ≥ 1 gives the same bytes; 0 (single-threaded mode) would not.
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u32
}

thread_local! {
    /// One compression context per packing thread, reused across archives (its
    /// worker pool too); the parameters never change within a process.
    static CONTEXT: RefCell<Option<(i32, CCtx<'static>)>> = const { RefCell::new(None) };
}

fn with_context<T>(
    level: i32,
    f: impl FnOnce(&mut CCtx<'static>) -> io::Result<T>,
) -> io::Result<T> {
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut cctx = CCtx::try_create()
                .ok_or_else(|| io::Error::other("cannot create a zstd context"))?;
            for param in [
                CParameter::CompressionLevel(level),
                CParameter::ChecksumFlag(true),
                CParameter::NbWorkers(zstd_workers()),
            ] {
                cctx.set_parameter(param).map_err(|code| {
                    io::Error::other(format!(
                        "zstd parameter: {}",
                        zstd::zstd_safe::get_error_name(code)
                    ))
                })?;
            }
            *slot = Some((level, cctx));
        }
        let (_, cctx) = slot.as_mut().expect("just set");
        f(cctx)
    })
}

/// Writes the archive of `entries` to `out`; returns the digests and `out`.
pub fn write_archive<W: Write>(
    entries: &[TarEntry],
    level: i32,
    out: W,
    progress: &dyn Fn(u64),
) -> io::Result<(Digests, W)> {
    with_context(level, |cctx| {
        let archive = Hashing {
            inner: out,
            hasher: sha2::Sha256::new(),
            len: 0,
        };
        let encoder = zstd::stream::write::Encoder::with_context(archive, cctx);
        let tar_stream = Hashing {
            inner: encoder,
            hasher: sha2::Sha256::new(),
            len: 0,
        };
        let mut builder = tar::Builder::new(tar_stream);
        builder.follow_symlinks(false);
        for entry in entries {
            match &entry.kind {
                EntryKind::Dir => {
                    let mut h = header(entry, tar::EntryType::Directory, 0)?;
                    builder.append_data(&mut h, format!("{}/", entry.path), io::empty())?;
                }
                EntryKind::File { size } => {
                    let mut h = header(entry, tar::EntryType::Regular, *size)?;
                    let file = File::open(&entry.source)?;
                    let reader = Exact {
                        inner: file,
                        remaining: *size,
                        path: &entry.source,
                        progress,
                    };
                    builder.append_data(&mut h, &entry.path, reader)?;
                }
                EntryKind::Symlink { target } => {
                    let mut h = header(entry, tar::EntryType::Symlink, 0)?;
                    // The target byte for byte: `append_link` reads it as a path and
                    // would store `a//b` as `a/b` and `dir/` as `dir`. A target longer
                    // than the header's 100 bytes goes, raw, in a GNU long-link record.
                    let raw = target.as_os_str().as_bytes();
                    if raw.len() <= 100 {
                        h.set_link_name_literal(raw)?;
                        builder.append_data(&mut h, &entry.path, io::empty())?;
                    } else {
                        builder.append_link(&mut h, &entry.path, target)?;
                    }
                }
            }
        }
        let tar_stream = builder.into_inner()?;
        let tar_sha256 = Sha256(tar_stream.hasher.finalize().into());
        let archive = tar_stream.inner.finish()?;
        let digests = Digests {
            sha256: Sha256(archive.hasher.finalize().into()),
            tar_sha256,
            bytes: archive.len,
        };
        Ok((digests, archive.inner))
    })
}

/// Packs an episode: in memory when small, else into the outbox (`.partial`, fsync,
/// sidecar, rename, fsync of the outbox).
pub fn pack(
    root: &DataRoot,
    dir: &Path,
    episode_id: &EpisodeId,
    level: i32,
    progress: &dyn Fn(u64),
    budget: &MemoryBudget,
) -> io::Result<(Packed, Option<Reservation>)> {
    let (entries, skipped) = collect_entries(dir, episode_id)?;
    for path in skipped {
        tracing::warn!(episode_id = %episode_id, path = %path.display(), "not archived: not a file, directory or symlink, or not UTF-8");
    }
    let raw_bytes = raw_size(&entries);
    // The archive of incompressible data is its size plus tar headers and frames.
    let bound = raw_bytes + entries.len() as u64 * 1024 + (64 << 10);
    let reservation = (raw_bytes <= MEMORY_PACK_LIMIT)
        .then(|| budget.try_reserve(bound))
        .flatten();
    if reservation.is_some() {
        let (digests, buf) = write_archive(
            &entries,
            level,
            Vec::with_capacity(raw_bytes as usize / 4 + 1024),
            progress,
        )?;
        return Ok((
            Packed {
                digests,
                body: Body::Memory(buf.into()),
                raw_bytes,
            },
            reservation,
        ));
    }
    let partial = root.partial(episode_id);
    let result = (|| {
        let file = File::create(&partial)?;
        let (digests, file) = write_archive(&entries, level, file, progress)?;
        file.sync_all()?;
        publish(root, episode_id, &partial, &digests)?;
        Ok(digests)
    })();
    match result {
        Ok(digests) => Ok((
            Packed {
                digests,
                body: Body::File(root.archive(episode_id)),
                raw_bytes,
            },
            None,
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Makes a fsynced `.partial` the outbox archive: sidecar first, then the rename.
fn publish(
    root: &DataRoot,
    episode_id: &EpisodeId,
    partial: &Path,
    digests: &Digests,
) -> io::Result<()> {
    let sidecar = serde_json::to_vec(digests).map_err(io::Error::other)?;
    fsx::write_atomic(&root.sidecar(episode_id), &sidecar)?;
    std::fs::rename(partial, root.archive(episode_id))?;
    fsx::fsync_dir(&root.outbox)
}

/// Writes an in-memory archive to the outbox, so it stays for the next pass.
pub fn persist(root: &DataRoot, episode_id: &EpisodeId, packed: &Packed) -> io::Result<()> {
    let Body::Memory(bytes) = &packed.body else {
        return Ok(());
    };
    let partial = root.partial(episode_id);
    let result = (|| {
        let mut file = File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
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
            tracing::warn!(episode_id = %episode_id, reason = %why, "outbox archive not reusable; packing again");
            root.remove_outbox(episode_id)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn make_episode(dir: &Path, big: bool) {
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::fs::write(
            dir.join("meta.json"),
            r#"{"code_commit":"abc","started_at":1795341600}"#,
        )
        .unwrap();
        let line = "{\"ts\":1.0,\"pid\":42,\"comm\":\"python3\",\"cpu\":3.5}\n";
        let n = if big { 300_000 } else { 100 };
        std::fs::write(dir.join("telemetry-proc.jsonl"), line.repeat(n)).unwrap();
        std::fs::write(dir.join("sub/deeper/x.bin"), [0u8, 1, 2, 255]).unwrap();
        std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("meta.json", dir.join("link-to-meta")).unwrap();
        std::fs::write(dir.join("done.marker"), "").unwrap();
    }

    fn unpack(bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, u32, u64, u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(zstd::Decoder::new(bytes).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let target = h
                .link_name()
                .unwrap()
                .map(|p| p.to_string_lossy().into_owned().into_bytes());
            out.insert(
                path,
                (
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    target.unwrap_or(data),
                ),
            );
        }
        out
    }

    #[test]
    fn archives_are_deterministic_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let root = DataRoot::new(tmp.path());
        root.ensure().unwrap();
        let id = EpisodeId::new("01EPISODE").unwrap();
        let dir = root.episodes.join("01EPISODE");
        make_episode(&dir, false);
        let budget = MemoryBudget::new(256 << 20);
        let (a, a_memory) = pack(&root, &dir, &id, 3, &|_| {}, &budget).unwrap();
        let (b, _) = pack(&root, &dir, &id, 3, &|_| {}, &budget).unwrap();
        assert!(
            a_memory.is_some(),
            "an in-memory archive holds memory budget"
        );
        let (Body::Memory(a_bytes), Body::Memory(b_bytes)) = (&a.body, &b.body) else {
            panic!("small episodes pack in memory")
        };
        assert_eq!(a_bytes, b_bytes);
        assert_eq!(a.digests, b.digests);
        assert_eq!(a.digests.sha256, Sha256::of(a_bytes));
        assert_eq!(a.digests.bytes, a_bytes.len() as u64);
        let mut tar_bytes = Vec::new();
        zstd::Decoder::new(&a_bytes[..])
            .unwrap()
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(a.digests.tar_sha256, Sha256::of(&tar_bytes));

        let files = unpack(a_bytes);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "01EPISODE/",
                "01EPISODE/done.marker",
                "01EPISODE/link-to-meta",
                "01EPISODE/meta.json",
                "01EPISODE/run.sh",
                "01EPISODE/sub/",
                "01EPISODE/sub/deeper/",
                "01EPISODE/sub/deeper/x.bin",
                "01EPISODE/telemetry-proc.jsonl"
            ]
        );
        let (kind, mode, uid, mtime, data) = &files["01EPISODE/run.sh"];
        assert_eq!((*kind, *mode, *uid), (tar::EntryType::Regular, 0o755, 0));
        assert_eq!(
            *mtime as i64,
            std::fs::metadata(dir.join("run.sh")).unwrap().mtime(),
            "the file's own mtime"
        );
        assert_eq!(data, b"#!/bin/sh\n");
        assert_eq!(files["01EPISODE/link-to-meta"].0, tar::EntryType::Symlink);
        assert_eq!(files["01EPISODE/link-to-meta"].4, b"meta.json");
        assert_eq!(files["01EPISODE/sub/deeper/x.bin"].4, [0u8, 1, 2, 255]);
    }

    #[test]
    fn the_same_content_created_in_another_order_packs_identically() {
        let tmp = tempfile::tempdir().unwrap();
        let id = EpisodeId::new("E").unwrap();
        let (a, b) = (tmp.path().join("a/E"), tmp.path().join("b/E"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for name in ["x", "y", "z"] {
            std::fs::write(a.join(name), name).unwrap();
        }
        for name in ["z", "y", "x"] {
            std::fs::write(b.join(name), name).unwrap();
        }
        let when =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_341_600);
        for dir in [&a, &b] {
            for name in ["x", "y", "z", ""] {
                File::open(dir.join(name))
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
        }
        let pack_one = |dir: &Path| {
            let (entries, _) = collect_entries(dir, &id).unwrap();
            write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap()
        };
        assert_eq!(pack_one(&a).1, pack_one(&b).1);
    }

    #[test]
    fn episodes_beyond_the_memory_budget_go_through_the_outbox_and_are_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = DataRoot::new(tmp.path());
        root.ensure().unwrap();
        let id = EpisodeId::new("01BIG").unwrap();
        let dir = root.episodes.join("01BIG");
        make_episode(&dir, true);
        std::fs::write(dir.join("more.bin"), vec![7u8; 1 << 20]).unwrap();
        // No memory budget left: the episode goes through the outbox.
        let (packed, memory) = pack(&root, &dir, &id, 3, &|_| {}, &MemoryBudget::new(0)).unwrap();
        assert!(memory.is_none());
        let Body::File(path) = &packed.body else {
            panic!("a large episode packs to a file")
        };
        assert_eq!(path, &root.archive(&id));
        assert!(!root.partial(&id).exists());
        assert_eq!(
            fsx::hash_file(path).unwrap(),
            (packed.digests.sha256, packed.digests.bytes)
        );
        // Identical to the in-memory writer's output.
        let (entries, _) = collect_entries(&dir, &id).unwrap();
        let (_, mem) = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), mem);

        // Re-hashing the archive is progress the heartbeat sees, byte for byte.
        let hashed = std::cell::Cell::new(0u64);
        let reused = reuse(&root, &id, &dir, &|n| hashed.set(hashed.get() + n))
            .unwrap()
            .unwrap();
        assert_eq!(reused.digests, packed.digests);
        assert_eq!(hashed.get(), packed.digests.bytes);
        // A damaged archive is not reused, and is removed.
        std::fs::write(root.archive(&id), b"garbage").unwrap();
        assert!(reuse(&root, &id, &dir, &|_| {}).unwrap().is_none());
        assert!(!root.archive(&id).exists() && !root.sidecar(&id).exists());
    }

    #[test]
    fn persisting_a_memory_archive_makes_it_reusable() {
        let tmp = tempfile::tempdir().unwrap();
        let root = DataRoot::new(tmp.path());
        root.ensure().unwrap();
        let id = EpisodeId::new("01S").unwrap();
        let dir = root.episodes.join("01S");
        make_episode(&dir, false);
        let (packed, _) =
            pack(&root, &dir, &id, 3, &|_| {}, &MemoryBudget::new(256 << 20)).unwrap();
        persist(&root, &id, &packed).unwrap();
        let reused = reuse(&root, &id, &dir, &|_| {}).unwrap().unwrap();
        assert_eq!(reused.digests, packed.digests);
    }

    #[test]
    fn symlink_targets_are_kept_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("E");
        std::fs::create_dir(&dir).unwrap();
        // Found by the round-trip property: tar's path handling dropped the
        // doubled and trailing slashes and the `.` components of short targets.
        let targets = [
            "a//b",
            "dir/",
            "./x/./y",
            "../up",
            &format!("{}//z", "d/".repeat(60)),
        ];
        for (i, target) in targets.iter().enumerate() {
            std::os::unix::fs::symlink(target, dir.join(format!("l{i}"))).unwrap();
        }
        let id = EpisodeId::new("E").unwrap();
        let (entries, _) = collect_entries(&dir, &id).unwrap();
        let (_, bytes) = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap();
        let mut archive = tar::Archive::new(zstd::Decoder::new(&bytes[..]).unwrap());
        let mut links = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.header().entry_type() == tar::EntryType::Symlink {
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                let target = entry.link_name_bytes().unwrap().into_owned();
                links.insert(path, String::from_utf8(target).unwrap());
            }
        }
        for (i, target) in targets.iter().enumerate() {
            assert_eq!(links[&format!("E/l{i}")], *target, "l{i}");
        }
    }

    #[test]
    fn progress_counts_every_file_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("E");
        make_episode(&dir, false);
        let id = EpisodeId::new("E").unwrap();
        let (entries, _) = collect_entries(&dir, &id).unwrap();
        let seen = std::cell::Cell::new(0u64);
        write_archive(&entries, 3, Vec::new(), &|n| seen.set(seen.get() + n)).unwrap();
        assert_eq!(seen.get(), raw_size(&entries));
    }
}
