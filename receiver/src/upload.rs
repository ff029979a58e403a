//! Streaming one request body into a temp file in `incoming_root`.
//!
//! Owns the temp file's life: created exclusively, written and hashed on a blocking
//! thread fed through a small bounded channel (so memory per upload stays at a few
//! frames whatever the size), fsynced only when the body arrived whole, and removed
//! by a drop guard on every path that does not hand it to the committer, including
//! a client that disconnects and a handler future that is dropped.

use std::fs::OpenOptions;
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

/// Bodies up to this size are read into memory, hashed in place (microseconds) and
/// written by one blocking call without an fsync: the committer makes a whole batch
/// of them durable with one `syncfs` before publishing (one device flush per batch
/// instead of one per upload; creates stay parallel, which this disk prefers).
pub const SMALL_BODY: u64 = 64 << 10;

/// Frames buffered between the network and the writer thread.
const CHANNEL_FRAMES: usize = 4;

/// A temp file that is removed on drop unless `keep` was called.
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

    /// Hands the file over (to the committer, which removes or publishes it).
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("no body bytes for {0:?}")]
    Idle(Duration),
    #[error("client stopped sending: {0}")]
    Client(String),
    #[error("body is longer than Content-Length ({0} bytes)")]
    TooLong(u64),
    #[error("writing the upload: {0}")]
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

/// Streams `body` into `temp` (which must not exist), hashing as it goes; the file is
/// fsynced before this returns `Ok`. `progress` is called with each frame's size.
pub async fn receive(
    mut body: Body,
    temp: &TempFile,
    max_len: u64,
    idle: Duration,
    progress: impl Fn(u64),
) -> Result<Received, ReceiveError> {
    let (tx, rx) = mpsc::channel::<Msg>(CHANNEL_FRAMES);
    let path = temp.path().to_owned();
    let writer = tokio::task::spawn_blocking(move || write_file(&path, rx));
    let mut received = 0u64;
    let outcome: Result<(), ReceiveError> = loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => break Err(ReceiveError::Idle(idle)),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(ReceiveError::Client(e.to_string())),
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
    let (sha256, bytes) = written?;
    Ok(Received { sha256, bytes })
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
            Ok(Some(Err(e))) => return Err(ReceiveError::Client(e.to_string())),
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

/// Writes a small body to `temp` (which must not exist), off the async workers and
/// unsynced (see `SMALL_BODY`).
pub async fn write_small(temp: &TempFile, data: Bytes) -> io::Result<()> {
    let path = temp.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        file.write_all(&data)
    })
    .await
    .map_err(|e| io::Error::other(format!("writer: {e}")))?
}

/// A large upload starts writeback every this many bytes, so its dirty pages never
/// pile up (they would make some small batch's `syncfs` barrier slow) and its final
/// fdatasync has little left to do.
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

fn write_file(path: &Path, mut rx: mpsc::Receiver<Msg>) -> io::Result<(Sha256, u64)> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    let mut hasher = sha2::Sha256::new();
    let (mut len, mut flushed) = (0u64, 0u64);
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(chunk) => {
                hasher.update(&chunk);
                file.write_all(&chunk)?;
                len += chunk.len() as u64;
                if len - flushed >= WRITEBACK_EVERY {
                    start_writeback(&file, flushed, len - flushed);
                    flushed = len;
                }
            }
            Msg::Finish => {
                // fdatasync persists the data and the size; the name is made durable
                // by the committer's barrier after the rename.
                file.sync_data()?;
                return Ok((Sha256(hasher.finalize().into()), len));
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

    #[tokio::test]
    async fn writes_hashes_and_fsyncs_a_streamed_body() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TempFile::new(dir.path().join("u.part"));
        let chunks: Vec<Result<Bytes, io::Error>> = (0..50)
            .map(|i| Ok(Bytes::from(vec![i as u8; 10_000])))
            .collect();
        let all: Vec<u8> = (0..50u8).flat_map(|i| vec![i; 10_000]).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let got = receive(body, &temp, u64::MAX, Duration::from_secs(5), |_| {})
            .await
            .unwrap();
        assert_eq!(
            (got.sha256, got.bytes),
            (Sha256::of(&all), all.len() as u64)
        );
        assert_eq!(std::fs::read(temp.path()).unwrap(), all);
        let path = temp.path().to_owned();
        drop(temp);
        assert!(!path.exists(), "the guard removes an unpublished temp file");
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TempFile::new(dir.path().join("u.part"));
        let stalled =
            futures_util::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"abc"))])
                .chain(futures_util::stream::pending());
        let body = Body::from_stream(stalled);
        let err = receive(body, &temp, u64::MAX, Duration::from_millis(100), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ReceiveError::Idle(_)), "{err}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TempFile::new(dir.path().join("u.part"));
        let body = Body::from(vec![0u8; 1000]);
        let err = receive(body, &temp, 999, Duration::from_secs(5), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ReceiveError::TooLong(999)), "{err}");
    }

    use futures_util::StreamExt as _;
}
