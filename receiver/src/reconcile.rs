//! Start-up reconciliation of the store with the index (rows rebuilt for archives
//! without one, rows without an archive reported, never deleted), emptying
//! `incoming_root`, and `audit` of sizes and digests. Blocking.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use episode_common::wire::{ARCHIVE_SUFFIX, IndexRow, format_rfc3339, parse_started_at};
use episode_common::{EpisodeId, HostId, Sha256};
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::index::Index;

/// What the store holds that the index does not say, and the reverse.
#[derive(Debug, Default)]
pub struct StoreScan {
    pub archives: u64,
    /// Archives without a row.
    pub orphans: Vec<(HostId, EpisodeId, PathBuf)>,
    /// Rows without an archive.
    pub missing: Vec<(HostId, EpisodeId)>,
    /// Files in the store that are not `<host>/<episode>.tar.zst`.
    pub strays: Vec<PathBuf>,
    /// Entries named like archives that are not regular files (a symlink, FIFO,
    /// directory, socket or device): never opened, never indexed.
    pub not_regular: Vec<PathBuf>,
}

/// The names in the store, read without the index so that listing can run while
/// the index loads. Names are packed per host (one string, end offsets): a million
/// archives cost one allocation per host, not one per name.
#[derive(Debug, Default)]
pub struct StoreListing {
    hosts: Vec<HostNames>,
    strays: Vec<PathBuf>,
    not_regular: Vec<PathBuf>,
}

#[derive(Debug)]
struct HostNames {
    host_id: HostId,
    path: PathBuf,
    /// Episode ids (archive names without the suffix), concatenated.
    names: String,
    ends: Vec<u32>,
}

impl HostNames {
    fn names(&self) -> impl Iterator<Item = &str> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let name = &self.names[start..end as usize];
            start = end as usize;
            name
        })
    }
}

/// Threads that list host directories at once (see `list_store`).
const LISTERS: usize = 16;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Lists the store's host directories, spread over every core. Reads names only.
pub fn list_store(store_root: &Path) -> io::Result<StoreListing> {
    let mut listing = StoreListing::default();
    let read_dir = match std::fs::read_dir(store_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(e),
    };
    let mut hosts = Vec::new();
    for host_entry in read_dir {
        let host_entry = host_entry?;
        let kind = host_entry.file_type()?;
        match host_entry.file_name().to_str().map(HostId::new) {
            Some(Ok(h)) if kind.is_dir() => hosts.push((h, host_entry.path())),
            // A host directory that is a symlink is never listed nor written through.
            Some(Ok(_)) if kind.is_symlink() => listing.not_regular.push(host_entry.path()),
            _ => listing.strays.push(host_entry.path()),
        }
    }
    // Reading directories is waiting for the disk when they are not cached (after a
    // reboot: one synchronous block read after another in each directory), so
    // many listers keep many reads in flight, whatever the number of cores.
    let chunk = hosts.len().div_ceil(LISTERS).max(1);
    let parts: Vec<io::Result<Listed>> = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .chunks(chunk)
            .map(|part| scope.spawn(move || list_hosts(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("store lister panicked"))
            .collect()
    });
    for part in parts {
        let (hosts, strays, not_regular) = part?;
        listing.hosts.extend(hosts);
        listing.strays.extend(strays);
        listing.not_regular.extend(not_regular);
    }
    Ok(listing)
}

/// Hosts' names, strays, and archive names that are not regular files.
type Listed = (Vec<HostNames>, Vec<PathBuf>, Vec<PathBuf>);

fn list_hosts(hosts: &[(HostId, PathBuf)]) -> io::Result<Listed> {
    let mut listed = Vec::with_capacity(hosts.len());
    let mut strays = Vec::new();
    let mut not_regular = Vec::new();
    for (host_id, host_path) in hosts {
        let mut names = HostNames {
            host_id: host_id.clone(),
            path: host_path.clone(),
            names: String::new(),
            ends: Vec::new(),
        };
        for entry in std::fs::read_dir(host_path)? {
            let entry = entry?;
            let name = entry.file_name();
            match name.to_str().and_then(|n| n.strip_suffix(ARCHIVE_SUFFIX)) {
                // The type from the directory entry (no stat where the filesystem
                // reports it), never following a symlink.
                Some(_) if !entry.file_type()?.is_file() => not_regular.push(entry.path()),
                Some(stem) if u32::try_from(names.names.len() + stem.len()).is_ok() => {
                    names.names.push_str(stem);
                    names.ends.push(names.names.len() as u32);
                }
                _ => strays.push(entry.path()),
            }
        }
        listed.push(names);
    }
    Ok((listed, strays, not_regular))
}

/// Compares a listing of the store with the index: archives without a row
/// (orphans), rows without an archive (missing), and files that are not
/// `<host>/<episode>.tar.zst` (strays). Allocates nothing for an archive that is
/// indexed (the common case, a million times).
pub fn compare(listing: StoreListing, index: &Index, store_root: &Path) -> StoreScan {
    let mut scan = StoreScan {
        strays: listing.strays,
        not_regular: listing.not_regular,
        ..StoreScan::default()
    };
    let chunk = listing.hosts.len().div_ceil(threads()).max(1);
    let parts: Vec<(StoreScan, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = listing
            .hosts
            .chunks(chunk)
            .map(|part| scope.spawn(move || compare_hosts(part, index)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("store scanner panicked"))
            .collect()
    });
    let mut in_index = 0u64;
    for (part, indexed) in parts {
        in_index += indexed;
        scan.archives += part.archives;
        scan.orphans.extend(part.orphans);
        scan.strays.extend(part.strays);
    }
    if in_index != index.len() {
        // Some rows have no archive: find which (rare; one stat per row).
        scan.missing = index
            .keys()
            .into_iter()
            .filter(|(h, e)| !is_regular(&crate::index::archive_path(store_root, h, e)))
            .collect();
        scan.missing.sort();
    }
    scan
}

/// Lists the store and compares it with the index (`list_store` + `compare`).
pub fn scan_store(store_root: &Path, index: &Index) -> io::Result<StoreScan> {
    Ok(compare(list_store(store_root)?, index, store_root))
}

fn compare_hosts(hosts: &[HostNames], index: &Index) -> (StoreScan, u64) {
    let mut scan = StoreScan::default();
    let mut in_index = 0u64;
    for host in hosts {
        for stem in host.names() {
            if index.contains_str(host.host_id.as_str(), stem) {
                scan.archives += 1;
                in_index += 1;
                continue;
            }
            let path = host.path.join(format!("{stem}{ARCHIVE_SUFFIX}"));
            match EpisodeId::new(stem) {
                Ok(episode_id) => {
                    scan.archives += 1;
                    scan.orphans.push((host.host_id.clone(), episode_id, path));
                }
                Err(_) => scan.strays.push(path),
            }
        }
    }
    (scan, in_index)
}

/// True if `path` is a regular file (not following a symlink).
pub fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// Opens an archive for reading without following a symlink or blocking on a FIFO,
/// and refuses anything that is not a regular file (the error names the path).
pub fn open_archive(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular(path, "a symlink"),
            _ => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(not_regular(
            path,
            if kind.is_dir() {
                "a directory"
            } else {
                "a FIFO, socket or device"
            },
        ));
    }
    Ok(file)
}

fn not_regular(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is {what}, not a regular file", path.display()),
    )
}

/// The sha256 and size of an archive, read through `open_archive`.
pub fn hash_archive(path: &Path) -> io::Result<(Sha256, u64)> {
    episode_common::fsx::hash_reader(open_archive(path)?)
}

/// One way a row and its archive disagree (`check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The archive's size is not the row's `bytes`.
    Size { row: u64, archive: u64 },
    /// The archive's sha256 is not the row's (only looked at with digests).
    Digest { row: Sha256, archive: Sha256 },
    /// The archive could not be read.
    Unreadable(String),
}

/// How much of each archive an `audit` compares with its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The size (a stat each).
    Sizes,
    /// The size and the sha256 (reads every byte): `check --all`.
    Digests,
}

/// Compares every indexed archive that is in the store with its row, as deep as
/// `depth` says. Sorted by key.
pub fn audit(index: &Index, store_root: &Path, depth: Depth) -> Vec<(HostId, EpisodeId, Mismatch)> {
    let mut found = Vec::new();
    let mut keys = index.keys();
    keys.sort();
    for (host_id, episode_id) in keys {
        let Some(entry) = index.get(&host_id, &episode_id) else {
            continue;
        };
        let path = crate::index::archive_path(store_root, &host_id, &episode_id);
        let size = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            _ => continue, // missing or not regular: reported by the scan
        };
        let mismatch = if size != entry.bytes {
            Some(Mismatch::Size {
                row: entry.bytes,
                archive: size,
            })
        } else if depth == Depth::Digests {
            match hash_archive(&path) {
                Ok((sha256, _)) if sha256 != entry.sha256 => Some(Mismatch::Digest {
                    row: entry.sha256,
                    archive: sha256,
                }),
                Ok(_) => None,
                Err(e) => Some(Mismatch::Unreadable(e.to_string())),
            }
        } else {
            None
        };
        if let Some(m) = mismatch {
            found.push((host_id, episode_id, m));
        }
    }
    found
}

/// Archives stat'ed between two short pauses of the size audit.
const AUDIT_CHUNK: u64 = 1024;

/// Mismatches logged one by one before only the count is.
const AUDIT_LOG_LIMIT: u64 = 100;

/// After start-up, on its own thread: compares every indexed archive's size with
/// its row (a stat each, one host's keys copied at a time so publishes never wait)
/// and reports each mismatch loudly. Such a row is never served anyway
/// (`index::stored_entry` checks the size on every use); this tells the operator
/// without waiting for a request.
pub fn spawn_size_audit(index: std::sync::Arc<Index>, store_root: PathBuf) {
    let audit = move || {
        // Background work: a lower priority where allowed (the unit's syscall
        // filter refuses it; harmless), and a pause every AUDIT_CHUNK stats so a
        // million rows never hold a core while requests are served.
        // SAFETY: setpriority on this thread's own id only changes its nice value.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
        }
        let started = std::time::Instant::now();
        let (mut n_checked, mut n_mismatched) = (0u64, 0u64);
        for host_id in index.hosts() {
            for (episode_id, bytes) in index.sizes_of(&host_id) {
                if n_checked % AUDIT_CHUNK == AUDIT_CHUNK - 1 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let path = crate::index::archive_path(&store_root, &host_id, &episode_id);
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue; // missing: reported by the start-up scan
                };
                n_checked += 1;
                if meta.is_file() && meta.len() != bytes {
                    n_mismatched += 1;
                    if n_mismatched <= AUDIT_LOG_LIMIT {
                        tracing::error!(
                            event = %episode_common::Event::ArchiveSizeMismatch,
                            host_id = %host_id,
                            episode_id = %episode_id,
                            path = %path.display(),
                            row_bytes = bytes,
                            archive_bytes = meta.len(),
                            "the archive's size differs from its index row; the row is not trusted (HEAD says 404, a PUT rebuilds it from the archive)"
                        );
                    }
                }
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        if n_mismatched > 0 {
            tracing::error!(
                event = %episode_common::Event::StoreAudited,
                n_checked,
                n_mismatched,
                duration_ms = ms,
                "archives whose size differs from their index row: restore them from backup; `episode-receiver check --all` lists them"
            );
        } else {
            tracing::info!(
                event = %episode_common::Event::StoreAudited,
                n_checked,
                n_mismatched,
                duration_ms = ms,
                "every indexed archive has its row's size"
            );
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("store-audit".into())
        .spawn(audit)
    {
        tracing::warn!(event = %episode_common::Event::StoreAudited, error = %e, "cannot start the store size audit");
    }
}

/// Rebuilds the index row of an archive from the archive: its sha256 and size, the
/// sha256 of its tar stream, and `code_commit`/`started_at` from `<episode>/meta.json`
/// inside it when present. `received_at` is the file's mtime; `client` is unknown.
pub fn row_for_archive(
    host_id: &HostId,
    episode_id: &EpisodeId,
    path: &Path,
) -> io::Result<IndexRow> {
    let (sha256, bytes) = hash_archive(path)?;
    let mtime = std::fs::symlink_metadata(path)?.modified()?;
    let received_at = format_rfc3339(OffsetDateTime::from(mtime));
    let inside = read_inside(episode_id, path).unwrap_or_default();
    Ok(IndexRow {
        host_id: host_id.clone(),
        episode_id: episode_id.clone(),
        sha256,
        tar_sha256: inside.tar_sha256,
        bytes,
        code_commit: inside.code_commit,
        started_at: inside.started_at,
        received_at,
        client: None,
    })
}

#[derive(Default)]
struct Inside {
    tar_sha256: Option<Sha256>,
    code_commit: Option<String>,
    started_at: Option<String>,
}

struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

const META_LIMIT: u64 = 1 << 20;

fn read_inside(episode_id: &EpisodeId, path: &Path) -> io::Result<Inside> {
    let decoder = zstd::Decoder::new(open_archive(path)?)?;
    let mut archive = tar::Archive::new(HashingReader {
        inner: decoder,
        hasher: sha2::Sha256::new(),
    });
    let meta_path = format!("{episode_id}/meta.json");
    let mut inside = Inside::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some(meta_path.as_str()) {
            let mut text = Vec::new();
            (&mut entry).take(META_LIMIT).read_to_end(&mut text)?;
            if let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&text) {
                inside.code_commit = meta
                    .get("code_commit")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                inside.started_at = meta
                    .get("started_at")
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .and_then(|s| parse_started_at(&s).ok())
                    .map(format_rfc3339);
            }
        }
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
    inside.tar_sha256 = Some(Sha256(rest.hasher.finalize().into()));
    Ok(inside)
}

/// Removes everything in `incoming_root` (nothing is in flight before serving).
pub fn empty_incoming(incoming_root: &Path) -> io::Result<u64> {
    let mut removed = 0;
    for entry in std::fs::read_dir(incoming_root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    if removed > 0 {
        episode_common::fsx::fsync_dir(incoming_root)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_with_meta(episode: &str, meta: &str) -> (Vec<u8>, Sha256) {
        let mut tar_bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut tar_bytes);
            let mut header = tar::Header::new_gnu();
            header.set_size(meta.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("{episode}/meta.json"), meta.as_bytes())
                .unwrap();
            builder.finish().unwrap();
        }
        let tar_sha = Sha256::of(&tar_bytes);
        (zstd::encode_all(&tar_bytes[..], 3).unwrap(), tar_sha)
    }

    #[test]
    fn rebuilds_a_row_from_the_archive_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, tar_sha) = archive_with_meta(
            "E1",
            r#"{"code_commit": "abc123", "started_at": 1795341600}"#,
        );
        let path = dir.path().join("E1.tar.zst");
        std::fs::write(&path, &bytes).unwrap();
        let row = row_for_archive(
            &HostId::new("lab1").unwrap(),
            &EpisodeId::new("E1").unwrap(),
            &path,
        )
        .unwrap();
        assert_eq!(row.sha256, Sha256::of(&bytes));
        assert_eq!(row.bytes, bytes.len() as u64);
        assert_eq!(row.tar_sha256, Some(tar_sha));
        assert_eq!(row.code_commit.as_deref(), Some("abc123"));
        assert_eq!(row.started_at.as_deref(), Some("2026-11-22T10:00:00Z"));
    }

    #[test]
    fn an_undecodable_archive_still_gets_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("E1.tar.zst");
        std::fs::write(&path, b"not zstd").unwrap();
        let row = row_for_archive(
            &HostId::new("lab1").unwrap(),
            &EpisodeId::new("E1").unwrap(),
            &path,
        )
        .unwrap();
        assert_eq!(row.sha256, Sha256::of(b"not zstd"));
        assert_eq!((row.tar_sha256, row.code_commit), (None, None));
    }

    #[test]
    fn scan_finds_orphans_missing_rows_and_strays() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        std::fs::create_dir_all(store.join("lab1")).unwrap();
        std::fs::write(store.join("lab1/E1.tar.zst"), b"x").unwrap();
        std::fs::write(store.join("lab1/notes.txt"), b"x").unwrap();
        let index_path = dir.path().join("i.jsonl");
        let row = IndexRow {
            host_id: HostId::new("lab1").unwrap(),
            episode_id: EpisodeId::new("E2").unwrap(),
            sha256: Sha256::of(b"y"),
            tar_sha256: None,
            bytes: 1,
            code_commit: None,
            started_at: None,
            received_at: "2026-11-22T10:00:00Z".into(),
            client: None,
        };
        std::fs::write(&index_path, serde_json::to_string(&row).unwrap() + "\n").unwrap();
        let (index, _) = crate::index::load(&index_path).unwrap();
        let scan = scan_store(store, &index).unwrap();
        assert_eq!(scan.archives, 1);
        assert_eq!(scan.orphans.len(), 1);
        assert_eq!(scan.orphans[0].1.as_str(), "E1");
        assert_eq!(
            scan.missing,
            vec![(row.host_id.clone(), row.episode_id.clone())]
        );
        assert_eq!(
            scan.strays.len(),
            2,
            "notes.txt and the index file itself: {:?}",
            scan.strays
        );
    }
}
