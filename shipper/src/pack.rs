//! Deterministic packing of an episode directory into a tar.zst, hashed while it
//! is written, in memory within the `MemoryBudget` or through the outbox. Blocking.
//! Invariant: the same unchanged directory always packs to the same bytes, whole.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

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
    /// Path inside the archive: `<id>` or `<id>/a/b`, the names' own bytes.
    pub path: PathBuf,
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

/// An I/O error that says which path it is about (and what was done to it), keeping
/// the original kind.
pub fn at(path: &Path, doing: &str, e: io::Error) -> io::Error {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<PathError>() || inner.is::<Unstable>())
    {
        return e; // already names its path
    }
    io::Error::new(
        e.kind(),
        PathError {
            message: format!("{doing} {}: {e}", path.display()),
        },
    )
}

/// The message of an error `at` named.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct PathError {
    message: String,
}

/// A file changed size or mtime while it was packed: the episode is not stable yet.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unstable(pub String);

fn unstable(message: String) -> io::Error {
    io::Error::other(Unstable(message))
}

/// Whether a packing error means "a file changed while packed; try again later".
pub fn is_unstable(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Unstable>())
}

/// Lists the entries of an episode directory in archive order: the directory itself,
/// then its children sorted by name bytes, depth first. Names are kept as bytes,
/// valid UTF-8 or not. Skips sockets, fifos and devices (they cannot be archived
/// meaningfully) and reports them.
pub fn collect_entries(
    dir: &Path,
    episode_id: &EpisodeId,
) -> io::Result<(Vec<TarEntry>, Vec<PathBuf>)> {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| at(dir, "reading", e))?;
    let top = PathBuf::from(episode_id.as_str());
    entries.push(entry_for(dir, top.clone(), &meta)?.expect("a directory"));
    walk(dir, &top, &mut entries, &mut skipped)?;
    Ok((entries, skipped))
}

fn walk(
    dir: &Path,
    prefix: &Path,
    entries: &mut Vec<TarEntry>,
    skipped: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let listing = |e| at(dir, "listing", e);
    let mut children: Vec<(OsString, PathBuf)> = std::fs::read_dir(dir)
        .map_err(listing)?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()
        .map_err(listing)?;
    children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, path) in children {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| at(&path, "reading", e))?;
        let archive_path = prefix.join(&name);
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

fn entry_for(
    path: &Path,
    archive_path: PathBuf,
    meta: &std::fs::Metadata,
) -> io::Result<Option<TarEntry>> {
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File { size: meta.len() }
    } else if file_type.is_symlink() {
        EntryKind::Symlink {
            target: std::fs::read_link(path).map_err(|e| at(path, "reading the link", e))?,
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
/// must not produce a corrupt tar. Reports progress as it goes. Errors name the file.
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
        let n = self
            .inner
            .read(&mut buf[..want])
            .map_err(|e| at(self.path, "reading", e))?;
        if n == 0 {
            return Err(unstable(format!(
                "{} shrank while being packed",
                self.path.display()
            )));
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

/// Fails as `Unstable` if the file packed from `file` no longer has the size and
/// mtime its header recorded: it grew (or was rewritten) while it was read, so the
/// archive would ship an old or mixed copy.
fn check_unchanged(file: &File, entry: &TarEntry, size: u64) -> io::Result<()> {
    let now = file
        .metadata()
        .map_err(|e| at(&entry.source, "reading", e))?;
    let mtime = u64::try_from(now.mtime()).unwrap_or(0);
    if now.len() != size || mtime != entry.mtime {
        return Err(unstable(format!(
            "{} changed while being packed ({size} bytes, mtime {} when listed; now {} bytes, mtime {mtime})",
            entry.source.display(),
            entry.mtime,
            now.len()
        )));
    }
    Ok(())
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
                    let mut name = entry.path.clone().into_os_string();
                    name.push("/");
                    builder.append_data(&mut h, name, io::empty())?;
                }
                EntryKind::File { size } => {
                    let mut h = header(entry, tar::EntryType::Regular, *size)?;
                    let file =
                        File::open(&entry.source).map_err(|e| at(&entry.source, "opening", e))?;
                    let reader = Exact {
                        inner: &file,
                        remaining: *size,
                        path: &entry.source,
                        progress,
                    };
                    builder.append_data(&mut h, &entry.path, reader)?;
                    check_unchanged(&file, entry, *size)?;
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
        tracing::warn!(event = %episode_common::Event::FileSkipped, episode_id = %episode_id, path = %path.display(), "not archived: not a file, directory or symlink");
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
        let file = File::create(&partial).map_err(|e| at(&partial, "creating", e))?;
        let (digests, file) = write_archive(&entries, level, file, progress)
            .map_err(|e| at(&partial, "writing", e))?;
        file.sync_all().map_err(|e| at(&partial, "fsyncing", e))?;
        crate::outbox::publish(root, episode_id, &partial, &digests)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{persist, reuse};
    use episode_common::fsx;
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

    #[test]
    fn names_that_are_not_utf8_are_archived_as_their_bytes_in_byte_order() {
        use std::ffi::OsStr;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("E");
        std::fs::create_dir_all(&dir).unwrap();
        let latin1 = OsStr::from_bytes(b"caf\xe9.csv");
        let long = OsStr::from_bytes(&[b'\xff'; 150]);
        std::fs::write(dir.join(latin1), b"latin-1 name").unwrap();
        std::fs::write(dir.join(long), b"long name").unwrap();
        std::fs::write(dir.join("b.txt"), b"b").unwrap();
        let id = EpisodeId::new("E").unwrap();
        let (entries, skipped) = collect_entries(&dir, &id).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let (_, bytes) = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap();
        let (_, again) = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap();
        assert_eq!(bytes, again);
        let mut archive = tar::Archive::new(zstd::Decoder::new(&bytes[..]).unwrap());
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path_bytes().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            found.push((name, data));
        }
        let mut want_long = b"E/".to_vec();
        want_long.extend_from_slice(&[b'\xff'; 150]);
        assert_eq!(
            found,
            [
                (b"E/".to_vec(), vec![]),
                (b"E/b.txt".to_vec(), b"b".to_vec()),
                (b"E/caf\xe9.csv".to_vec(), b"latin-1 name".to_vec()),
                (want_long, b"long name".to_vec()),
            ]
        );
    }

    #[test]
    fn a_file_that_grows_while_packed_is_unstable_and_io_errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("E");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("grows.jsonl"), b"0123456789").unwrap();
        let id = EpisodeId::new("E").unwrap();
        let (entries, _) = collect_entries(&dir, &id).unwrap();
        // The recorder appends after the listing: the header's size is stale.
        let mut f = File::options()
            .append(true)
            .open(dir.join("grows.jsonl"))
            .unwrap();
        f.write_all(b"more").unwrap();
        let err = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap_err();
        assert!(is_unstable(&err), "{err}");
        assert!(err.to_string().contains("grows.jsonl"), "{err}");
        // Shrinking is unstable too.
        std::fs::write(dir.join("grows.jsonl"), b"01").unwrap();
        let err = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap_err();
        assert!(
            is_unstable(&err) && err.to_string().contains("shrank"),
            "{err}"
        );
        // A file gone since the listing: the error names it.
        std::fs::remove_file(dir.join("grows.jsonl")).unwrap();
        let err = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap_err();
        assert!(!is_unstable(&err));
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .contains(&dir.join("grows.jsonl").display().to_string()),
            "{err}"
        );
    }
}
