//! episode-receiver: `open` (the lock, directories, the index loaded and reconciled,
//! `incoming_root` emptied, the committer running) returns the shared `AppState`;
//! `app` is the router over it, `server` runs the listeners and the drain.

pub mod admission;
pub mod check;
pub mod cli;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod error;
pub mod fleet;
pub mod fleet_page;
pub mod health;
pub mod index;
pub mod metrics;
pub mod ops;
pub mod query;
pub mod reconcile;
pub mod rejects;
pub mod reload;
pub mod routes;
pub mod server;
pub mod slots;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use episode_common::config::ConfigError;
use episode_common::{EpisodeId, Event, HostId};

use crate::admission::Limits;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::index::{Committer, Index};
use crate::metrics::Metrics;
use crate::slots::Slots;

pub use routes::app;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a request handler needs.
pub struct AppState {
    pub config: Config,
    pub index: Arc<Index>,
    pub committer: Committer,
    pub credentials: Arc<Credentials>,
    pub slots: Arc<Slots>,
    pub metrics: Metrics,
    /// The settings SIGHUP may change (`reload`); `config` keeps the start-up values
    /// of the keys it may not (listen, paths, max_connections).
    live: std::sync::RwLock<Arc<Live>>,
    /// The config file, read again on SIGHUP.
    pub config_path: PathBuf,
    /// Where uploads are spooled, and whether unnamed (`O_TMPFILE`) spools work there.
    pub spool: upload::SpoolDir,
    /// The ops listener's bearer token (`ops_token_file`), read at start.
    pub ops_token: Option<String>,
    /// Unix seconds at start.
    pub started_at: i64,
    /// Each host's answers since start (the fleet page's `rejecting`).
    answers: std::sync::Mutex<std::collections::HashMap<HostId, fleet::Answers>>,
    draining: AtomicBool,
    temp_seq: AtomicU64,
    /// Free bytes on the store's filesystem, as last read, and when (ms since `epoch`).
    free: AtomicU64,
    free_read_ms: AtomicU64,
    epoch: std::time::Instant,
    /// The single-instance lock (an `flock` on the index file), held while this lives.
    _instance_lock: std::fs::File,
}

/// The reloadable settings in force: the last config SIGHUP accepted (or the
/// start-up one) and the admission limits derived from it.
pub struct Live {
    pub config: Config,
    pub limits: Limits,
    /// Whether a PUT must name its code commit (`require_code_commit`).
    pub code_commit: admission::CodeCommit,
    /// Whether a PUT's start time is checked (a `[window]` is set) or only recorded.
    pub started_at: admission::StartedAt,
}

impl Live {
    pub fn new(config: Config) -> Self {
        let limits = Limits {
            max_episode_bytes: config.max_episode_bytes,
            free_space_reserve: config.free_space_reserve,
            window: config.window.map(|w| (w.max_age, w.max_future)),
        };
        let code_commit = match config.require_code_commit {
            true => admission::CodeCommit::Required,
            false => admission::CodeCommit::Optional,
        };
        let started_at = match limits.window {
            Some(_) => admission::StartedAt::Checked,
            None => admission::StartedAt::Recorded,
        };
        Self {
            config,
            limits,
            code_commit,
            started_at,
        }
    }
}

/// Hosts whose answers are remembered, at most.
const MAX_ANSWER_HOSTS: usize = 10_000;

/// How long a reading of the store's free space is used before it is read again.
const FREE_SPACE_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(250);

impl AppState {
    /// The reloadable settings in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `live` in force (new requests and connections see it) and resizes the
    /// upload slots.
    pub fn set_live(&self, live: Live) {
        self.slots.set_limits(
            live.config.max_concurrent_uploads,
            live.config.max_uploads_per_host,
        );
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Free bytes on the store's filesystem, read again when the last reading is
    /// older than 250 ms (a statvfs per request would cost a thread hop each; the
    /// byte claims of uploads in flight are subtracted by the caller).
    pub async fn free_bytes(self: &Arc<Self>) -> std::io::Result<u64> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let read_ms = self.free_read_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(read_ms) < FREE_SPACE_MAX_AGE.as_millis() as u64 {
            return Ok(self.free.load(Ordering::Relaxed));
        }
        let root = self.config.store_root.clone();
        let free = tokio::task::spawn_blocking(move || episode_common::fsx::free_space(&root))
            .await
            .map_err(std::io::Error::other)??;
        self.free.store(free, Ordering::Relaxed);
        self.free_read_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(free)
    }

    /// The readiness verdict (`health::verdict`) over fresh readings: `Err(reason)`
    /// while an upload could not be stored, the reason naming `index` or `store`.
    /// `/v1/health` answers from it, and so does `/readyz`.
    pub async fn readiness(self: &Arc<Self>) -> Result<(), String> {
        let store_free = self.free_bytes().await.map_err(|e| e.to_string());
        let (index_path, dirs) = (
            self.config.index_path.clone(),
            [
                self.config.store_root.clone(),
                self.config.incoming_root.clone(),
            ],
        );
        let (index_free, store_unwritable) = tokio::task::spawn_blocking(move || {
            let index_free =
                episode_common::fsx::free_space(&index_path).map_err(|e| e.to_string());
            (index_free, dirs.iter().find_map(|dir| unwritable(dir)))
        })
        .await
        .unwrap_or_else(|e| (Err(e.to_string()), None));
        health::verdict(&health::Readings {
            draining: self.is_draining(),
            committer_alive: self.committer.is_alive(),
            committer_busy_for: self.committer.busy_for(),
            last_failure: self.committer.last_failure(),
            store_free,
            free_space_reserve: self.live().limits.free_space_reserve.get(),
            index_free,
            store_unwritable,
        })
    }

    /// Records a PUT's answer for the host it was about: the client certificate's
    /// identity, else the host in the path.
    pub fn record_answer(&self, parts: &http::request::Parts, response: &axum::response::Response) {
        if fleet::is_rejection(response.status().as_u16()).is_none() {
            return;
        }
        let peer = parts
            .extensions
            .get::<admission::PeerIdentity>()
            .and_then(|p| p.primary.as_deref());
        let path_host = parts
            .uri
            .path()
            .strip_prefix("/v1/episodes/")
            .and_then(|rest| rest.split('/').next());
        let Some(host_id) = peer.or(path_host).and_then(|h| HostId::new(h).ok()) else {
            return;
        };
        let problem_type = response
            .extensions()
            .get::<metrics::ProblemType>()
            .map(|p| p.0);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: ids nobody stored under (without mTLS anyone may name any host)
        // cannot grow it without end.
        if answers.len() >= MAX_ANSWER_HOSTS && !answers.contains_key(&host_id) {
            return;
        }
        answers
            .entry(host_id)
            .or_default()
            .record(now, response.status().as_u16(), problem_type);
    }

    /// The fleet at `now` (aggregates and answers; no scan of the index).
    pub fn fleet_view(&self, now: i64) -> fleet::FleetView {
        // A copy (a few hundred entries): recording answers never waits on a render.
        let answers = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stale_after = self.config.fleet.stale_after.dur.get().as_secs() as i64;
        self.index
            .with_stats(|stats| fleet::view(stats, &answers, now, stale_after))
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A fresh temp path for one upload. `+` cannot occur in ids, so names never clash.
    pub fn temp_path(&self, host_id: &HostId, episode_id: &EpisodeId) -> PathBuf {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.config.incoming_root.join(format!(
            "{host_id}+{episode_id}+{}-{seq}.part",
            std::process::id()
        ))
    }
}

/// Why `dir` cannot be written, if it cannot (`access(W_OK)`: a read-only mount too).
fn unwritable(dir: &std::path::Path) -> Option<String> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())).ok()?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Some(format!(
            "{} is not writable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    None
}

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Exit 78: the message names the file and key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another instance holds the index's lock (exit 1).
    #[error("another episode-receiver is using {}", .0.display())]
    Locked(PathBuf),
    /// Preparing the store or index failed at `what` on `path` (exit 1).
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The message and its causes, `: `-separated (what `main` prints).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

/// What start-up found and repaired, for the log.
#[derive(Debug, Default)]
pub struct StartReport {
    pub rows: u64,
    pub reconciled: Vec<(HostId, EpisodeId)>,
    pub missing: Vec<(HostId, EpisodeId)>,
    pub incoming_removed: u64,
    pub torn_tail_repaired: bool,
    pub bad_lines: usize,
    /// Rows replaced by a later row of the same key (an archive lost and uploaded
    /// again): kept in the file, the last row is used.
    pub superseded: usize,
    /// Keys whose last row the archive contradicted: the row was rebuilt.
    pub untrusted: Vec<(HostId, EpisodeId)>,
    /// Entries under archive names that are not regular files.
    pub not_regular: Vec<PathBuf>,
}

/// Prepares the store and index and starts the index writer. Blocking; call it
/// before serving (from `spawn_blocking` inside a runtime).
pub fn open(
    config: Config,
    config_path: &std::path::Path,
) -> Result<(Arc<AppState>, StartReport), StartError> {
    // The lock comes first: a second instance must not touch a live one's state
    // (empty its incoming_root, cut its index, append rows).
    config.prepare_index_dir(config_path)?;
    let instance_lock = index::lock(&config.index_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::WouldBlock => StartError::Locked(config.index_path.clone()),
        _ => StartError::Io {
            what: "opening",
            path: config.index_path.clone(),
            source,
        },
    })?;
    config.prepare_dirs(config_path)?;
    let credentials = Credentials::load(&config).map_err(|e| ConfigError::new(config_path, e))?;
    let runtime =
        |what: &'static str, path: &std::path::Path, source: std::io::Error| StartError::Io {
            what,
            path: path.to_owned(),
            source,
        };
    let incoming_removed = reconcile::empty_incoming(&config.incoming_root)
        .map_err(|e| runtime("emptying", &config.incoming_root, e))?;
    let mut report = StartReport {
        incoming_removed,
        ..StartReport::default()
    };
    let started = std::time::Instant::now();
    // The store is listed while the index loads; they are compared after.
    let (loaded, listing) = std::thread::scope(|scope| {
        let listing = scope.spawn(|| {
            let listing = reconcile::list_store(&config.store_root);
            (listing, started.elapsed())
        });
        let loaded = index::load(&config.index_path);
        (loaded, listing.join().expect("store lister panicked"))
    });
    let (index, load) = loaded.map_err(|e| runtime("reading", &config.index_path, e))?;
    let load_ms = started.elapsed().as_millis() as u64;
    let (listing, list_took) = listing;
    let listing = listing.map_err(|e| runtime("scanning", &config.store_root, e))?;
    if let Some((offset, bytes, parses)) = load.torn_tail {
        index::repair_tail(&config.index_path, &load)
            .map_err(|e| runtime("repairing", &config.index_path, e))?;
        let path = config.index_path.display();
        if parses {
            tracing::info!(event = %episode_common::Event::IndexTailCompleted, path = %path, offset, bytes, "the last index line lacked its newline; completed");
        } else {
            tracing::warn!(event = %episode_common::Event::IndexTailCut, path = %path, offset, bytes, "the last index line was torn; cut off (its archive, if any, is reconciled)");
        }
        report.torn_tail_repaired = true;
    }
    for (line, error) in &load.bad_lines {
        tracing::error!(event = %Event::IndexBadLine, line, error = %error, index = %config.index_path.display(), "kept in the file, ignored");
    }
    report.bad_lines = load.bad_lines.len();
    report.superseded = load.duplicates.len();
    // Rows of one key that disagree: the archive decides. A last row that does not
    // match it is dropped from the map, so the archive is treated as one without a
    // row below (its row rebuilt from it and appended).
    for (host_id, episode_id) in &load.conflicts {
        let path = index::archive_path(&config.store_root, host_id, episode_id);
        let Some(entry) = index.get(host_id, episode_id) else {
            continue;
        };
        match reconcile::hash_archive(&path) {
            Ok((sha256, _)) if sha256 == entry.sha256 => {}
            Ok((sha256, bytes)) => {
                tracing::error!(
                    event = %episode_common::Event::IndexRowUntrusted,
                    host_id = %host_id,
                    episode_id = %episode_id,
                    row_sha256 = %entry.sha256,
                    archive_sha256 = %sha256,
                    archive_bytes = bytes,
                    "rows of this key disagree and the last one does not match the archive; its row is rebuilt from the archive"
                );
                index.remove(host_id, episode_id);
                report.untrusted.push((host_id.clone(), episode_id.clone()));
            }
            Err(e) => tracing::error!(
                event = %episode_common::Event::IndexRowUnverifiable,
                host_id = %host_id,
                episode_id = %episode_id,
                error = %e,
                "rows of this key disagree and the archive cannot be read to decide"
            ),
        }
    }
    let started = std::time::Instant::now();
    let scan = reconcile::compare(listing, &index, &config.store_root);
    tracing::info!(
        event = %Event::IndexLoaded,
        rows = load.rows,
        archives = scan.archives,
        load_ms,
        list_ms = list_took.as_millis() as u64,
        compare_ms = started.elapsed().as_millis() as u64,
        "the index is in memory and checked against the store"
    );
    for path in &scan.not_regular {
        tracing::error!(
            event = %episode_common::Event::StoreEntryNotRegular,
            path = %path.display(),
            "the store holds something other than a regular file under an archive name; never opened, never served: remove it"
        );
    }
    report.not_regular = scan.not_regular;
    let mut rows = Vec::with_capacity(scan.orphans.len());
    for (host_id, episode_id, path) in &scan.orphans {
        let row = reconcile::row_for_archive(host_id, episode_id, path)
            .map_err(|e| runtime("reading", path, e))?;
        rows.push(row);
    }
    index::append_reconciled(&index, &config.store_root, &config.index_path, &rows)
        .map_err(|e| runtime("appending to", &config.index_path, e))?;
    report.reconciled = scan.orphans.into_iter().map(|(h, e, _)| (h, e)).collect();
    report.missing = scan.missing;
    report.rows = index.len();
    let index = Arc::new(index);
    let committer = Committer::spawn(index.clone(), config.store_root.clone(), &config.index_path)
        .map_err(|e| runtime("opening", &config.index_path, e))?;
    let unnamed = upload::probe_unnamed(&config.incoming_root, &config.store_root);
    if !unnamed {
        tracing::info!(event = %Event::StorageMode, incoming_root = %config.incoming_root.display(), "uploads are spooled as named temp files (no O_TMPFILE here)");
    }
    let spool = upload::SpoolDir {
        dir: config.incoming_root.clone(),
        unnamed,
    };
    let ops_token = match &config.ops_token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    config_path,
                    format_args!("ops_token_file: cannot read {}: {e}", path.display()),
                )
            })?;
            let token = token.trim().to_owned();
            if token.is_empty() {
                return Err(ConfigError::new(
                    config_path,
                    format_args!("ops_token_file: {} is empty", path.display()),
                )
                .into());
            }
            Some(token)
        }
    };
    let state = AppState {
        ops_token,
        started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        answers: Default::default(),
        slots: Slots::new(config.max_concurrent_uploads, config.max_uploads_per_host),
        spool,
        live: std::sync::RwLock::new(Arc::new(Live::new(config.clone()))),
        config_path: config_path.to_owned(),
        config,
        index,
        committer,
        credentials: Arc::new(credentials),
        metrics: Metrics::default(),
        draining: AtomicBool::new(false),
        temp_seq: AtomicU64::new(0),
        free: AtomicU64::new(0),
        free_read_ms: AtomicU64::new(0),
        epoch: std::time::Instant::now()
            .checked_sub(FREE_SPACE_MAX_AGE)
            .unwrap_or_else(std::time::Instant::now),
        _instance_lock: instance_lock,
    };
    Ok((Arc::new(state), report))
}
