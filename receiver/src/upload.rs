//! Receiving one request body into a spool in `incoming_root`: a small one in memory
//! (spooled by the committer), a large one streamed and hashed on a blocking thread
//! into an unnamed or a named temp file, removed by a guard unless published.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use episode_common::Sha256;
use http_body_util::BodyExt as _;
use sha2::Digest as _;
use tokio::sync::mpsc;

/// Bodies up to this size are read into memory and hashed in place (microseconds)
/// before anything touches the disk, then handed to the committer, which spools a
/// batch of them unsynced (see `spool_small`); larger ones stream through a writer
/// thread into a named spool and are fdatasynced.
pub const SMALL_BODY: u64 = 64 << 10;

/// Frames buffered between the network and the writer thread.
const CHANNEL_FRAMES: usize = 2;

/// The largest body frame: the connection's read buffer is capped at this. An
/// upload then holds at most `CHANNEL_FRAMES` + 2 frames (queued, in the writer's
/// hand, in the read buffer), 256 KiB, whatever its size. 16 concurrent 256 MiB
/// uploads peaked at 17 MiB of receiver RSS with it, 40-46 MiB with 256 KiB frames
/// and 4 queued, at the same rate (about 15% more CPU per byte).
pub const MAX_FRAME: usize = 64 << 10;

/// A named temp file, removed on drop unless it was published.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An upload's bytes on disk until the committer publishes them.
#[derive(Debug)]
pub struct Spool {
    file: File,
    /// `None`: an unnamed file (`O_TMPFILE`), linked into place by the committer
    /// and gone with its descriptor otherwise. `Some`: a named temp file, renamed
    /// into place, removed by the guard otherwise.
    name: Option<TempFile>,
}

/// Where spools are made: in `dir`, unnamed when the start-up probe showed the
/// filesystem can (see `probe_unnamed`), else under a name the caller picks.
#[derive(Debug, Clone)]
pub struct SpoolDir {
    pub dir: PathBuf,
    pub unnamed: bool,
}

/// Mode of stored archives (readable by the researchers' group and others).
const ARCHIVE_MODE: u32 = 0o644;

impl Spool {
    /// Creates an empty spool: unnamed when `name` is `None`. Blocking.
    fn create(dir: &Path, name: Option<PathBuf>) -> io::Result<Self> {
        match name {
            None => Ok(Self {
                file: episode_common::fsx::create_unnamed(dir, ARCHIVE_MODE)?,
                name: None,
            }),
            Some(path) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(ARCHIVE_MODE)
                    .open(&path)?;
                Ok(Self {
                    file,
                    name: Some(TempFile::new(path)),
                })
            }
        }
    }

    /// A named spool for a file a test wrote itself.
    #[cfg(test)]
    pub(crate) fn from_file(path: PathBuf) -> io::Result<Self> {
        Ok(Self {
            file: File::open(&path)?,
            name: Some(TempFile::new(path)),
        })
    }

    /// Makes the spool's data durable (where no `syncfs` does it for a batch).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Publishes the spool as `dest`, never replacing a file there
    /// (`ErrorKind::AlreadyExists`, and the spool is left as it was). Blocking.
    pub fn publish(&mut self, dest: &Path) -> io::Result<()> {
        match &mut self.name {
            None => episode_common::fsx::link_noreplace(&self.file, dest),
            Some(temp) => {
                episode_common::fsx::rename_noreplace(temp.path(), dest)?;
                temp.armed = false;
                Ok(())
            }
        }
    }
}

/// Whether `incoming_root` can hold unnamed spools that link into `store_root`
/// (`O_TMPFILE` on the filesystem, `/proc/self/fd` mounted). Tried once at start-up
/// with a dot-name that can never be an archive, removed again. Blocking.
pub fn probe_unnamed(incoming_root: &Path, store_root: &Path) -> bool {
    let probe = store_root.join(".episode-receiver-link-probe");
    let _ = std::fs::remove_file(&probe); // left by a crash during a probe
    let linked = episode_common::fsx::create_unnamed(incoming_root, ARCHIVE_MODE)
        .and_then(|file| episode_common::fsx::link_noreplace(&file, &probe));
    let _ = std::fs::remove_file(&probe);
    linked.is_ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("no body bytes for {0:?}")]
    Idle(Duration),
    #[error("client stopped sending")]
    Client(#[source] axum::Error),
    #[error("body is longer than Content-Length ({0} bytes)")]
    TooLong(u64),
    #[error("writing the upload")]
    Io(#[from] io::Error),
}

enum Msg {
    Data(Bytes),
    /// The body ended cleanly: fsync and report.
    Finish,
}

/// What arrived.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub sha256: Sha256,
    pub bytes: u64,
}

/// Streams `body` into a new spool in `dir` (unnamed when `name` is `None`),
/// hashing as it goes; the spool is fdatasynced before this returns `Ok`.
/// `progress` is called with each frame's size.
pub async fn receive(
    mut body: Body,
    dir: PathBuf,
    name: Option<PathBuf>,
    max_len: u64,
    idle: Duration,
    progress: impl Fn(u64),
) -> Result<(Received, Spool), ReceiveError> {
    let (tx, rx) = mpsc::channel::<Msg>(CHANNEL_FRAMES);
    let writer = tokio::task::spawn_blocking(move || write_spool(&dir, name, rx));
    let mut received = 0u64;
    let outcome: Result<(), ReceiveError> = loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => break Err(ReceiveError::Idle(idle)),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(ReceiveError::Client(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we use
        };
        received += data.len() as u64;
        if received > max_len {
            break Err(ReceiveError::TooLong(max_len));
        }
        progress(data.len() as u64);
        if tx.send(Msg::Data(data)).await.is_err() {
            break Ok(()); // the writer failed; its error is reported below
        }
    };
    if outcome.is_ok() {
        let _ = tx.send(Msg::Finish).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| io::Error::other(format!("writer thread: {e}")))?;
    outcome?;
    let (spool, sha256, bytes) = written?;
    Ok((Received { sha256, bytes }, spool))
}

/// Reads a small body (at most `SMALL_BODY`, the caller checks) into memory and
/// hashes it.
pub async fn receive_small(
    mut body: Body,
    max_len: u64,
    idle: Duration,
    progress: impl Fn(u64),
) -> Result<(Received, Bytes), ReceiveError> {
    let mut data = bytes::BytesMut::with_capacity(max_len as usize);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReceiveError::Idle(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReceiveError::Client(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if (data.len() + chunk.len()) as u64 > max_len {
            return Err(ReceiveError::TooLong(max_len));
        }
        progress(chunk.len() as u64);
        data.extend_from_slice(&chunk);
    }
    let data = data.freeze();
    let received = Received {
        sha256: Sha256::of(&data),
        bytes: data.len() as u64,
    };
    Ok((received, data))
}

/// Writes a small body, already known to be whole and right, into a new spool in
/// `dir` (unnamed when `name` is `None`), unsynced: the committer calls this for a
/// whole batch, then makes all of them durable with one `syncfs` before naming any
/// (one device flush per batch instead of one per upload). Blocking.
pub fn spool_small(dir: &Path, name: Option<PathBuf>, data: &[u8]) -> io::Result<Spool> {
    let mut spool = Spool::create(dir, name)?;
    spool.file.write_all(data)?;
    Ok(spool)
}

/// A large upload starts writeback every this many bytes, so its dirty pages never
/// pile up and its final fdatasync has little left to do.
const WRITEBACK_EVERY: u64 = 8 << 20;

fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid open fd; the call only schedules writeback of the range.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn write_spool(
    dir: &Path,
    name: Option<PathBuf>,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<(Spool, Sha256, u64)> {
    let mut spool = Spool::create(dir, name)?;
    let mut hasher = sha2::Sha256::new();
    let (mut len, mut flushed) = (0u64, 0u64);
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(chunk) => {
                hasher.update(&chunk);
                spool.file.write_all(&chunk)?;
                len += chunk.len() as u64;
                if len - flushed >= WRITEBACK_EVERY {
                    start_writeback(&spool.file, flushed, len - flushed);
                    flushed = len;
                }
            }
            Msg::Finish => {
                // fdatasync persists the data and the size; the name is made durable
                // by the committer's barrier after the link or rename.
                spool.file.sync_data()?;
                return Ok((spool, Sha256(hasher.finalize().into()), len));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        "upload abandoned",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed() -> (Body, Vec<u8>) {
        let chunks: Vec<Result<Bytes, io::Error>> = (0..50)
            .map(|i| Ok(Bytes::from(vec![i as u8; 10_000])))
            .collect();
        let all: Vec<u8> = (0..50u8).flat_map(|i| vec![i; 10_000]).collect();
        (Body::from_stream(futures_util::stream::iter(chunks)), all)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn an_unnamed_spool_has_no_name_until_published_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (body, all) = streamed();
        let (got, mut spool) = receive(
            body,
            dir.path().into(),
            None,
            u64::MAX,
            Duration::from_secs(5),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            (got.sha256, got.bytes),
            (Sha256::of(&all), all.len() as u64)
        );
        assert!(
            names(dir.path()).is_empty(),
            "nothing named before publishing"
        );
        std::fs::write(dir.path().join("taken"), "first").unwrap();
        let err = spool.publish(&dir.path().join("taken")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("taken")).unwrap(), b"first");
        spool.publish(&dir.path().join("archive")).unwrap();
        drop(spool);
        assert_eq!(std::fs::read(dir.path().join("archive")).unwrap(), all);
    }

    #[tokio::test]
    async fn a_named_spool_is_renamed_into_place_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (body, all) = streamed();
        let name = dir.path().join("u.part");
        let (_, mut spool) = receive(
            body,
            dir.path().into(),
            Some(name.clone()),
            u64::MAX,
            Duration::from_secs(5),
            |_| {},
        )
        .await
        .unwrap();
        spool.publish(&dir.path().join("archive")).unwrap();
        drop(spool);
        assert_eq!(names(dir.path()), ["archive"]);
        assert_eq!(std::fs::read(dir.path().join("archive")).unwrap(), all);
        let small = spool_small(dir.path(), Some(name), b"abc").unwrap();
        assert_eq!(names(dir.path()), ["archive", "u.part"]);
        drop(small);
        assert_eq!(
            names(dir.path()),
            ["archive"],
            "the guard removes an unpublished spool"
        );
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let stalled =
            futures_util::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"abc"))])
                .chain(futures_util::stream::pending());
        let body = Body::from_stream(stalled);
        let name = Some(dir.path().join("u.part"));
        let err = receive(
            body,
            dir.path().into(),
            name,
            u64::MAX,
            Duration::from_millis(100),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReceiveError::Idle(_)), "{err}");
        assert!(names(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let body = Body::from(vec![0u8; 1000]);
        let err = receive(
            body,
            dir.path().into(),
            None,
            999,
            Duration::from_secs(5),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReceiveError::TooLong(999)), "{err}");
    }

    #[test]
    fn the_probe_finds_unnamed_files_here_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (incoming, store) = (dir.path().join("incoming"), dir.path().join("store"));
        std::fs::create_dir(&incoming).unwrap();
        std::fs::create_dir(&store).unwrap();
        assert!(
            probe_unnamed(&incoming, &store),
            "ext4/tmpfs here support O_TMPFILE"
        );
        assert!(names(&store).is_empty() && names(&incoming).is_empty());
        assert!(!probe_unnamed(&dir.path().join("missing"), &store));
    }

    use futures_util::StreamExt as _;
}
