//! Durable filesystem steps shared by the shipper and the receiver.
//!
//! Owns the moves every durable publish is made of: fsync a directory, rename
//! without ever replacing the target, an unnamed file named later without
//! replacing, write a small file atomically, a `syncfs` barrier on a long-lived
//! handle, and read free space; plus hashing a whole file
//! and stamping one to notice it changed. Synchronous on purpose: callers run them
//! off the async workers. Acts only on the paths it is given.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Makes the directory entries of `dir` durable (after a create, rename or unlink in it).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Renames `from` to `to` only if `to` does not exist; fails with
/// `ErrorKind::AlreadyExists` otherwise, leaving both files as they were.
/// Uses `renameat2(RENAME_NOREPLACE)`, and `link` + `unlink` where the filesystem
/// does not support it.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (c_from, c_to) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(err),
    }
}

/// Creates an unnamed regular file in `dir` (`O_TMPFILE`): it has no name until
/// `link_noreplace` gives it one, and it vanishes with its last descriptor, also
/// in a crash, so there is nothing to clean up. Fails (EOPNOTSUPP, EISDIR on old
/// kernels) where the filesystem cannot do it.
pub fn create_unnamed(dir: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(mode)
        .open(dir)
}

/// Gives an unnamed file (`create_unnamed`) the name `to` on the same filesystem,
/// never replacing an existing file: `ErrorKind::AlreadyExists` then, and the file
/// stays unnamed. Goes through `/proc/self/fd` (`linkat(AT_SYMLINK_FOLLOW)`), which
/// needs no capability, unlike `AT_EMPTY_PATH`.
pub fn link_noreplace(file: &File, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::other("fd path"))?;
    let c_to = cstr(to)?;
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new
/// one: a temp file beside it, fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c_path = cstr(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs writes a `struct statvfs` into the pointer on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so the struct was filled in.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A `syncfs(2)` barrier on one filesystem, through one handle opened once and
/// reused for every call.
///
/// Makes everything written to the filesystem durable (data, metadata, directory
/// entries) with one device flush: one call replaces an fsync per file. The kernel
/// samples the filesystem's writeback-error cursor when a file is *opened* and
/// `syncfs` reports (since Linux 5.8) the errors after that sample, advancing it:
/// a handle opened per call would miss an error that happened before its open or
/// that another caller's `syncfs` consumed, and lost data could be acknowledged.
/// On one long-lived handle, each call reports every error since the previous one.
#[derive(Debug)]
pub struct SyncFs {
    handle: File,
}

impl SyncFs {
    /// Opens `path` (any file or directory on the filesystem) and runs one
    /// `syncfs` to prove it works there. `Ok(None)` when the kernel does not offer
    /// it (ENOSYS, EINVAL, EOPNOTSUPP): the caller fsyncs file by file instead.
    pub fn open(path: &Path) -> io::Result<Option<Self>> {
        let sync = Self {
            handle: File::open(path)?,
        };
        match sync.sync() {
            Ok(()) => Ok(Some(sync)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// One barrier: everything written to the filesystem so far is durable, or
    /// the writeback error since the last call is returned.
    pub fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid open file descriptor, owned by `self`.
        if unsafe { libc::syncfs(self.handle.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The device number of the filesystem (`st_dev` of the handle).
    pub fn dev(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(self.handle.metadata()?.dev())
    }
}

/// Identifies a version of a file without reading it (size, mtime, inode), to
/// notice that a certificate or token was replaced on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    ino: u64,
}

impl FileStamp {
    /// The stamp of `path`, or `None` when it cannot be stat'ed (e.g. not there yet).
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ino: meta.ino(),
        })
    }
}

/// The sha256 and length of a whole file, read on the calling thread.
pub fn hash_file(path: &Path) -> io::Result<(crate::Sha256, u64)> {
    hash_reader(File::open(path)?)
}

/// The sha256 and length of everything `file` yields, read on the calling thread.
pub fn hash_reader(mut file: impl io::Read) -> io::Result<(crate::Sha256, u64)> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((crate::Sha256(hasher.finalize().into()), len))
}

/// True when `err` means the disk (or quota) is full.
pub fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        let err = rename_noreplace(&b, &a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "second");
        rename_noreplace(&b, &c).unwrap();
        assert!(!b.exists());
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "second");
    }

    #[test]
    fn an_unnamed_file_is_linked_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        std::fs::write(&first, "kept").unwrap();
        let mut file = create_unnamed(dir.path(), 0o644).unwrap();
        file.write_all(b"body").unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no name yet"
        );
        let err = link_noreplace(&file, &first).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "kept");
        link_noreplace(&file, &second).unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&second).unwrap(), "body");
    }

    #[test]
    fn write_atomic_replaces_whole_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn hashes_and_stamps_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(hash_file(&p).unwrap(), (crate::Sha256::of(b"abc"), 3));
        let before = FileStamp::of(&p).unwrap();
        write_atomic(&p, b"abcd").unwrap();
        assert_ne!(
            FileStamp::of(&p),
            Some(before),
            "a replaced file has a new stamp"
        );
        assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
    }

    #[test]
    fn syncfs_reuses_one_handle() {
        let dir = tempfile::tempdir().unwrap();
        let sync = SyncFs::open(dir.path()).unwrap().expect("syncfs on Linux");
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        sync.sync().unwrap();
        sync.sync().unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            sync.dev().unwrap(),
            std::fs::metadata(dir.path()).unwrap().dev()
        );
        assert!(SyncFs::open(Path::new("/nonexistent/x")).is_err());
    }

    #[test]
    fn free_space_reads_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert_eq!(
            free_space(Path::new("/nonexistent/x")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
