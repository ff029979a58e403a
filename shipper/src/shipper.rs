//! The shipper's state in a process, and one pass over the data root.
//!
//! Owns `Shipper::open` (lock, directories, state, recovery of interrupted
//! quarantines, orphan sweep) and `Shipper::pass`: sweep, cleanup when due, list
//! finished episodes oldest first, then a pipeline that packs one episode ahead
//! while up to `upload_concurrency` uploads are in flight, and acts on each answer
//! through `policy::action`. A transient failure or a hold stops new uploads and
//! ends the pass, so a dead receiver sees one probe, not N uploads; the backoff's
//! exponent grows at most once per pass however many uploads failed together. A
//! repack runs as its own future beside the other uploads and is sent again only
//! while the pass still launches uploads. Retry state that prevents retry storms
//! (backoff, hold) is saved the moment it changes, and a pass that starts uploading
//! is marked in it first (one save), so a process that dies mid-pass is followed by
//! a backoff before the next upload (the crash-loop guard), not an instant re-send.
//! `close` makes every rename durable at exit, even after an abandoned pass. A pack
//! that fails is a transient failure (`policy::pack_failure`: the host's, which
//! backs off everything, or the episode's alone), or, when a file changed while it
//! was packed, the episode is simply tried again later.
//!
//! Invariant: an episode is retired only after a 2xx to a PUT that carried its
//! digest, or a HEAD that reports the same archive or tar digest.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use episode_common::wire::format_rfc3339;
use episode_common::{ByteSize, Class, EpisodeId, Event, Outcome, Sha256, classify};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::layout::{DataRoot, Place};
use crate::meta::{self, Meta};
use crate::metrics::{Metrics, Observed};
use crate::pack::{self, Packed};
use crate::policy::{self, Action};
use crate::progress::Progress;
use crate::quarantine::{self, Reason};
use crate::state::{Backoff, Conflict, Hold, PassUnderWay, StateFile};
use crate::transport::{Answer, Failure, Transport};

/// Archives larger than this are asked about with HEAD before they are sent: the
/// receiver drains at most 1 MiB of a body it answered early (200, 409, 4xx) and
/// closes the connection otherwise, so the answer to a larger PUT may be lost to a
/// reset; a HEAD costs one round trip and never loses it.
const HEAD_FIRST_BYTES: u64 = 1 << 20;

/// Why the shipper could not open its data root.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another episode-shipper is already running on {data_root} (lock {lock}{holder})")]
    Locked {
        data_root: String,
        lock: String,
        holder: String,
    },
    #[error("{0}")]
    Io(String),
}

/// What one pass did (the JSON `once` prints).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PassResult {
    /// Finished episodes found in `episodes/`.
    pub scanned: usize,
    /// Retired after a 2xx (including `already_present`).
    pub shipped: usize,
    pub already_present: usize,
    pub conflicts: usize,
    pub fatal: usize,
    pub transient_failures: usize,
    /// Episodes not sent because shipping is on hold.
    pub held: usize,
    pub repacked: usize,
    /// Episodes waiting for their retry time or a conflict re-check.
    pub waiting: usize,
    /// Archive bytes of the episodes shipped.
    pub bytes: u64,
    pub duration_ms: u64,
    pub on_hold: bool,
    /// Why the pass stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
}

pub struct Shipper {
    pub config: Config,
    pub root: DataRoot,
    pub transport: Arc<Transport>,
    pub state: StateFile,
    pub progress: Arc<Progress>,
    /// Cancelled on SIGTERM: no new upload is started.
    pub stop: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// Raw sizes of pending episodes (they never change once finished).
    sizes: HashMap<EpisodeId, u64>,
    /// `(status_code, problem_type)` of each quarantine entry (they never change).
    quarantine_reasons: HashMap<String, (String, String)>,
    warned_invalid: HashSet<String>,
    memory: pack::MemoryBudget,
    /// This pass already raised the backoff's (or the hold's) failure count: answers
    /// to uploads that were in flight together count once.
    backoff_counted: bool,
    hold_counted: bool,
    _lock: File,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn wall(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(format_rfc3339)
        .unwrap_or_default()
}

fn unit_random() -> f64 {
    rand::random::<f64>()
}

/// Takes the data root's single-instance lock (held by the daemon while it runs).
pub fn lock(root: &DataRoot) -> Result<File, OpenError> {
    use std::io::Write as _;
    let path = root.lock_file();
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError::Io(format!("opening {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            return Err(OpenError::Locked {
                data_root: root.root.display().to_string(),
                lock: path.display().to_string(),
                holder: holder
                    .map(|pid| format!(", held by pid {pid}"))
                    .unwrap_or_default(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(OpenError::Io(format!("locking {}: {e}", path.display())));
        }
    }
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// An episode ready to send.
struct Prepared {
    id: EpisodeId,
    packed: Packed,
    meta: Meta,
    /// Memory held by an in-memory archive until the episode is acted on.
    _memory: Option<pack::Reservation>,
}

/// What the receiver said about one episode, or why it said nothing.
enum Reply {
    Answer(Answer),
    /// HEAD found the same archive (or tar content) stored.
    HeadMatch(Answer),
    /// HEAD found a different archive stored.
    HeadConflict(Answer),
    Failure(Failure),
}

/// A reply in the terms the shipper acts on.
#[derive(Debug, Clone, PartialEq)]
struct Judgement {
    class: Class,
    outcome: Outcome,
    status: u16,
    problem_type: Option<String>,
    error: String,
    /// No HTTP answer: the response may have been lost.
    connection_level: bool,
    retry_after: Option<Duration>,
}

fn judge(reply: &Reply) -> Judgement {
    let base = |class, outcome, a: &Answer| Judgement {
        class,
        outcome,
        status: a.status,
        problem_type: a.problem_type().map(str::to_owned),
        error: a.error(),
        connection_level: false,
        retry_after: a.retry_after,
    };
    match reply {
        Reply::Answer(a) => {
            let class = classify(a.status, a.problem_type());
            let outcome = match class {
                Class::Shipped if a.status == 201 => Outcome::Shipped,
                Class::Shipped => Outcome::AlreadyPresent,
                Class::Conflict => Outcome::Conflict,
                Class::Repack => Outcome::Repack,
                Class::Fatal => Outcome::Fatal,
                Class::Hold => Outcome::Hold,
                Class::Transient => Outcome::Transient,
            };
            let mut j = base(class, outcome, a);
            if class == Class::Hold && a.problem.is_none() && a.status < 400 {
                // A 1xx, a 2xx other than 201/200, or a redirect: not our receiver.
                let what = match a.error() {
                    e if e.is_empty() => format!("HTTP {}", a.status),
                    e => e,
                };
                j.error = format!(
                    "{what}: receiver.url does not point at an episode receiver (only 201 or 200 mean stored)"
                );
            }
            j
        }
        Reply::HeadMatch(a) => base(Class::Shipped, Outcome::AlreadyPresent, a),
        Reply::HeadConflict(a) => Judgement {
            status: 409,
            error: format!(
                "HEAD: a different archive is stored (sha256 {})",
                a.repr_digest.map(|d| d.to_hex()).unwrap_or_default()
            ),
            ..base(Class::Conflict, Outcome::Conflict, a)
        },
        Reply::Failure(f) => Judgement {
            class: Class::Transient,
            outcome: Outcome::Transient,
            status: 0,
            problem_type: None,
            error: f.to_string(),
            connection_level: true,
            retry_after: None,
        },
    }
}

async fn ship_one(
    transport: Arc<Transport>,
    prepared: Prepared,
    head_first: bool,
    progress: Arc<Progress>,
) -> (Prepared, Reply, Duration) {
    let start = Instant::now();
    let digests = prepared.packed.digests;
    if head_first || digests.bytes > HEAD_FIRST_BYTES {
        match transport.head(&prepared.id).await {
            Err(f) => return (prepared, Reply::Failure(f), start.elapsed()),
            Ok(a) if a.status == 200 => {
                let same = a.repr_digest == Some(digests.sha256)
                    || a.tar_digest == Some(digests.tar_sha256);
                if same {
                    return (prepared, Reply::HeadMatch(a), start.elapsed());
                }
                if a.repr_digest.is_some() {
                    return (prepared, Reply::HeadConflict(a), start.elapsed());
                }
            }
            Ok(a) if a.status == 404 => {}
            Ok(a) => {
                if matches!(
                    classify(a.status, a.problem_type()),
                    Class::Hold | Class::Transient
                ) {
                    return (prepared, Reply::Answer(a), start.elapsed());
                }
            }
        }
    }
    let reply = match transport
        .put(&prepared.id, &prepared.packed, &prepared.meta, &progress)
        .await
    {
        Ok(a) => Reply::Answer(a),
        Err(f) => Reply::Failure(f),
    };
    (prepared, reply, start.elapsed())
}

/// Reads meta.json and reuses or makes the archive. Blocking.
fn prepare(
    root: &DataRoot,
    id: EpisodeId,
    level: i32,
    progress: &Progress,
    budget: &pack::MemoryBudget,
) -> Result<Prepared, (EpisodeId, std::io::Error)> {
    let dir = root.episode_dir(Place::Episodes, &id);
    let meta = meta::read(&dir);
    for warning in &meta.warnings {
        tracing::warn!(event = %Event::MetaWarning, episode_id = %id, "meta.json: {warning}; sent without that header");
    }
    let (packed, memory) = match pack::reuse(root, &id, &dir, &|n| progress.add(n)) {
        Ok(Some(p)) => (p, None),
        Ok(None) => pack::pack(root, &dir, &id, level, &|n| progress.add(n), budget)
            .map_err(|e| (id.clone(), e))?,
        Err(e) => return Err((id, e)),
    };
    Ok(Prepared {
        id,
        packed,
        meta,
        _memory: memory,
    })
}

/// What a future of the pipeline ends with.
enum Done {
    /// An upload's answer, or why there was none (boxed: it is the large one).
    Sent(Box<(Prepared, Reply, Duration)>),
    /// A repack finished (or failed): sent again only if the pass still launches.
    Repacked(Result<Box<Prepared>, (EpisodeId, std::io::Error)>),
}

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

fn send(
    transport: &Arc<Transport>,
    prepared: Prepared,
    head_first: bool,
    progress: &Arc<Progress>,
) -> Work {
    ship_one(transport.clone(), prepared, head_first, progress.clone())
        .map(|sent| Done::Sent(Box::new(sent)))
        .boxed()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl Shipper {
    /// Locks the data root and recovers from whatever the last run left. Blocking.
    pub fn open(config: Config, stop: CancellationToken) -> Result<Self, OpenError> {
        let root = DataRoot::new(&config.data_root);
        root.ensure()
            .map_err(|e| OpenError::Io(format!("data_root {}: {e}", config.data_root.display())))?;
        let lock = lock(&root)?;
        let (state, warning) = StateFile::load(&root.state, now_ms() / 1000)
            .map_err(|e| OpenError::Io(e.to_string()))?;
        if let Some(w) = warning {
            tracing::warn!(event = %Event::StorageFailed, "{w}");
        }
        for id in quarantine::recover(&root)
            .map_err(|e| OpenError::Io(format!("finishing quarantines: {e}")))?
        {
            tracing::warn!(event = %Event::Quarantined, episode_id = %id, "finished a quarantine interrupted by a crash");
        }
        let (requeued, problems) = quarantine::recover_requeues(&root)
            .map_err(|e| OpenError::Io(format!("finishing requeues: {e}")))?;
        for id in requeued {
            tracing::warn!(event = %episode_common::Event::RequeueFinished, episode_id = %id, "requeued: finished a requeue interrupted by a crash");
        }
        for problem in problems {
            tracing::error!(event = %episode_common::Event::RequeueNotFinished, error = %problem, "an interrupted requeue cannot be finished");
        }
        match root.sweep_orphans() {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(event = %Event::OrphansSwept, files = ?removed)
            }
            Ok(_) => {}
            Err(e) => {
                return Err(OpenError::Io(format!(
                    "sweeping {}: {e}",
                    root.outbox.display()
                )));
            }
        }
        if let Some(marker) = &state.state.pass_under_way {
            let now = now_ms();
            if now < marker.resume_ms {
                tracing::warn!(
                    event = %Event::CrashLoopGuard,
                    unfinished = marker.unfinished,
                    resume_at = %wall(marker.resume_ms),
                    "the last pass did not finish (the process died: crash, OOM, SIGKILL or watchdog; {} in a row); no upload starts before {} so a crash loop cannot become a retry storm",
                    marker.unfinished,
                    wall(marker.resume_ms)
                );
            } else {
                tracing::warn!(
                    event = %Event::CrashLoopGuard,
                    unfinished = marker.unfinished,
                    "the last pass did not finish (the process died: crash, OOM, SIGKILL or watchdog; {} in a row); its backoff has passed, shipping resumes now",
                    marker.unfinished
                );
            }
        }
        Ok(Self {
            transport: Arc::new(Transport::new(&config)),
            memory: pack::MemoryBudget::new(config.memory_budget.get()),
            config,
            root,
            state,
            progress: Arc::new(Progress::default()),
            stop,
            metrics: Arc::new(Metrics::new()),
            sizes: HashMap::new(),
            quarantine_reasons: HashMap::new(),
            warned_invalid: HashSet::new(),
            backoff_counted: false,
            hold_counted: false,
            _lock: lock,
        })
    }

    /// Takes a reloaded config (same `host_id` and `data_root`) for the next pass: a
    /// new transport (so every credential file is read again), memory budget and
    /// timings.
    pub fn reconfigure(&mut self, config: Config) {
        self.transport = Arc::new(Transport::new(&config));
        self.memory = pack::MemoryBudget::new(config.memory_budget.get());
        self.config = config;
    }

    /// Saves the retry state if it changed (the write and its fsyncs run off the
    /// async workers).
    async fn save_state(&mut self) {
        let Some((path, state)) = self.state.unsaved() else {
            return;
        };
        match blocking(move || StateFile::write(&path, &state).map(|()| state)).await {
            Ok(state) => self.state.mark_saved(state),
            Err(e) => {
                tracing::error!(event = %Event::StorageFailed, error = %e, "cannot save retry state")
            }
        }
    }

    async fn cleanup_if_due(&mut self) {
        let now = now_ms() / 1000;
        let interval = self.config.quarantine.cleanup_interval.get().as_secs() as i64;
        let due = interval == 0
            || self
                .state
                .state
                .last_cleanup_unix
                .is_none_or(|t| now - t >= interval);
        if !due {
            return;
        }
        let (root, q_days, s_days, progress) = (
            self.root.clone(),
            self.config.quarantine.keep_days,
            self.config.shipped.keep_days,
            self.progress.clone(),
        );
        let result = blocking(move || {
            let step = || progress.step();
            let q = quarantine::prune(&root.quarantine, q_days, SystemTime::now(), &step)?;
            let s = quarantine::prune(&root.shipped, s_days, SystemTime::now(), &step)?;
            std::io::Result::Ok((q, s))
        })
        .await;
        match result {
            Ok((q, s)) => {
                if !q.is_empty() {
                    tracing::info!(event = %Event::QuarantineCleaned, n_removed = q.len(), keep_days = q_days, episodes = ?q);
                }
                if !s.is_empty() {
                    tracing::info!(event = %Event::ShippedCleaned, n_removed = s.len(), keep_days = s_days);
                }
            }
            Err(e) => tracing::error!(event = %Event::StorageFailed, error = %e, "cleanup failed"),
        }
        if interval > 0 {
            self.state.state.last_cleanup_unix = Some(now);
            self.save_state().await;
        }
    }

    /// One pass (shipper.md, "One pass").
    pub async fn pass(&mut self) -> PassResult {
        let started = Instant::now();
        let mut result = PassResult::default();
        let root = self.root.clone();
        match blocking(move || root.sweep_orphans()).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(event = %Event::OrphansSwept, files = ?removed)
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(event = %Event::StorageFailed, error = %e, "sweeping the outbox failed")
            }
        }
        self.cleanup_if_due().await;
        let root = self.root.clone();
        let finished = match blocking(move || root.finished_episodes()).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(event = %Event::ListFailed, error = %e, dir = %self.root.episodes.display(), "cannot list episodes");
                result.stopped_by = Some(format!("cannot list episodes: {e}"));
                return result;
            }
        };
        for name in &finished.invalid {
            if self.warned_invalid.insert(name.clone()) {
                tracing::warn!(event = %Event::InvalidEpisodeDir, dir = %name, "not a valid episode id; not shipped (rename it)");
            }
        }
        for n in &finished.not_ready {
            if self
                .warned_invalid
                .insert(format!("not-ready\0{}\0{}", n.name, n.reason))
            {
                tracing::warn!(event = %episode_common::Event::EpisodeNotReady, episode_id = %n.name, reason = %n.reason, "episodes/{}: not shipped: {}", n.name, n.reason);
            }
        }
        result.scanned = finished.ready.len();
        let ready: HashSet<&str> = finished.ready.iter().map(EpisodeId::as_str).collect();
        self.state.retain_pending(|id| ready.contains(id));
        self.sizes.retain(|id, _| ready.contains(id.as_str()));

        let now = now_ms();
        // A hold whose re-check is due lets the pass run: its first upload is the probe.
        if let Some(hold) = &self.state.state.hold
            && now < hold.recheck_ms
        {
            result.on_hold = true;
            result.held = finished.ready.len();
            result.stopped_by = Some(format!("on hold: {}", hold.error));
            self.finish(&mut result, started);
            return result;
        }
        if let Some(backoff) = &self.state.state.backoff
            && now < backoff.until_ms
        {
            result.waiting = finished.ready.len();
            result.stopped_by = Some(format!(
                "backing off until {} after: {}",
                wall(backoff.until_ms),
                backoff.last_error
            ));
            self.finish(&mut result, started);
            return result;
        }
        if let Some(marker) = &self.state.state.pass_under_way
            && now < marker.resume_ms
        {
            result.waiting = finished.ready.len();
            result.stopped_by = Some(format!(
                "crash-loop guard: {} pass(es) in a row did not finish; uploads resume at {}",
                marker.unfinished,
                wall(marker.resume_ms)
            ));
            self.finish(&mut result, started);
            return result;
        }
        let queue: Vec<EpisodeId> = finished
            .ready
            .into_iter()
            .filter(|id| match self.state.state.episodes.get(id.as_str()) {
                None => true,
                Some(e) => {
                    e.next_attempt_ms.is_none_or(|t| t <= now)
                        && e.conflict.as_ref().is_none_or(|c| c.recheck_ms <= now)
                }
            })
            .collect();
        result.waiting = result.scanned - queue.len();
        self.progress.set_episodes_total(queue.len() as u64);
        if !queue.is_empty() {
            self.mark_pass_under_way(now).await;
            self.ship(queue, &mut result).await;
            self.state.state.pass_under_way = None;
        }
        self.save_state().await;
        self.finish(&mut result, started);
        result
    }

    /// Records on disk that a pass is starting to upload (one save per such pass);
    /// `pass` clears it when the pass ends. Found at the next start, it means this
    /// process died mid-pass: the next upload then waits `resume_ms`, a backoff that
    /// grows with the passes in a row that never ended.
    async fn mark_pass_under_way(&mut self, now: i64) {
        let unfinished = self
            .state
            .state
            .pass_under_way
            .as_ref()
            .map_or(0, |m| m.unfinished)
            .saturating_add(1);
        let delay = self.backoff_delay(unfinished, None);
        self.state.state.pass_under_way = Some(PassUnderWay {
            started_ms: now,
            unfinished,
            resume_ms: now + delay.as_millis() as i64,
        });
        self.save_state().await;
    }

    /// At exit, also after a pass the shutdown grace abandoned: saves the retry state
    /// (an orderly stop is no crash: the pass marker goes) and fsyncs every
    /// directory a rename may have touched (retires are renamed during a pass and
    /// fsynced only at its end, which an abandoned pass never reaches). Then exit 0
    /// is honest.
    pub async fn close(&mut self) {
        self.state.state.pass_under_way = None;
        self.save_state().await;
        let root = self.root.clone();
        let synced = blocking(move || {
            root.sync_places(&[Place::Episodes, Place::Shipped, Place::Quarantine])?;
            episode_common::fsx::fsync_dir(&root.outbox)
        })
        .await;
        if let Err(e) = synced {
            tracing::error!(event = %Event::StorageFailed, error = %e, data_root = %self.root.root.display(), "cannot fsync the data root's directories at exit");
        }
    }

    fn finish(&mut self, result: &mut PassResult, started: Instant) {
        result.on_hold = self.state.state.hold.is_some();
        result.duration_ms = started.elapsed().as_millis() as u64;
        self.metrics.pass(started.elapsed());
        // A pass that attempted nothing is logged at debug: an idle daemon must not
        // write a journal line every scan_interval.
        let attempted = result.shipped
            + result.conflicts
            + result.fatal
            + result.transient_failures
            + result.repacked;
        macro_rules! event {
            ($level:ident) => {
                tracing::$level!(
                    event = %Event::PassComplete,
                    scanned = result.scanned,
                    shipped = result.shipped,
                    already_present = result.already_present,
                    conflicts = result.conflicts,
                    fatal = result.fatal,
                    transient_failures = result.transient_failures,
                    held = result.held,
                    repacked = result.repacked,
                    waiting = result.waiting,
                    pass_bytes = result.bytes,
                    pass_duration_ms = result.duration_ms,
                )
            };
        }
        if attempted > 0 {
            event!(info);
        } else {
            event!(debug);
        }
    }

    /// The pipeline: pack ahead, upload with bounded concurrency, act on answers.
    async fn ship(&mut self, queue: Vec<EpisodeId>, result: &mut PassResult) {
        // Every pass starts with one upload in flight and opens up to the configured
        // concurrency after the first answer: a dead receiver (or one that holds)
        // sees one probe per pass, not one upload per slot.
        let concurrency = self.config.upload_concurrency;
        let mut limit = 1;
        (self.backoff_counted, self.hold_counted) = (false, false);
        let remaining = queue.len();
        let (tx, mut rx) =
            mpsc::channel::<Result<Prepared, (EpisodeId, std::io::Error)>>(concurrency);
        let pack_stop = self.stop.child_token();
        let packer = {
            let (root, level, progress, stop, memory) = (
                self.root.clone(),
                self.config.compression_level,
                self.progress.clone(),
                pack_stop.clone(),
                self.memory.clone(),
            );
            tokio::spawn(async move {
                for id in queue {
                    if stop.is_cancelled() {
                        break;
                    }
                    let (root, progress) = (root.clone(), progress.clone());
                    let memory = memory.clone();
                    let prepared =
                        blocking(move || prepare(&root, id, level, &progress, &memory)).await;
                    if tx.send(prepared).await.is_err() {
                        break;
                    }
                }
            })
        };
        let mut in_flight: FuturesUnordered<Work> = FuturesUnordered::new();
        let (mut launching, mut open) = (true, true);
        loop {
            let can_launch =
                launching && open && in_flight.len() < limit && !self.stop.is_cancelled();
            if !can_launch && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                    Done::Sent(sent) => {
                        let (prepared, reply, took) = *sent;
                        match self.act(prepared, reply, took, result).await {
                            Next::Continue => limit = concurrency,
                            Next::Stop(why) => {
                                launching = false;
                                result.stopped_by.get_or_insert(why);
                            }
                            Next::Repack(id) => {
                                limit = concurrency;
                                if self.may_send(launching) {
                                    in_flight.push(self.repack(id));
                                } else {
                                    self.drop_outbox(id).await;
                                }
                            }
                        }
                    }
                    Done::Repacked(Err((id, e))) => {
                        if let Next::Stop(why) = self.pack_failed(&id, &e, result).await {
                            launching = false;
                            result.stopped_by.get_or_insert(why);
                        }
                    }
                    Done::Repacked(Ok(prepared)) => {
                        // The pass may have stopped (hold, transient, SIGTERM) while
                        // this was packed: then it waits for the next pass.
                        if self.may_send(launching) {
                            let head_first = self.head_first(&prepared.id);
                            in_flight.push(send(&self.transport, *prepared, head_first, &self.progress));
                        }
                    }
                },
                item = rx.recv(), if can_launch => match item {
                    None => open = false,
                    Some(Err((id, e))) => {
                        if let Next::Stop(why) = self.pack_failed(&id, &e, result).await {
                            launching = false;
                            result.stopped_by.get_or_insert(why);
                        }
                    }
                    Some(Ok(prepared)) => {
                        let head_first = self.head_first(&prepared.id);
                        in_flight.push(send(&self.transport, prepared, head_first, &self.progress));
                    }
                },
            }
        }
        pack_stop.cancel();
        drop(rx);
        let _ = packer.await;
        if result.shipped > 0 {
            let root = self.root.clone();
            let synced =
                blocking(move || root.sync_places(&[Place::Episodes, Place::Shipped])).await;
            if let Err(e) = synced {
                tracing::error!(event = %Event::StorageFailed, error = %e, "cannot fsync episodes/ and shipped/ after retiring");
            }
        }
        if self.state.state.hold.is_some() {
            // Everything this pass did not settle waits for the hold to end.
            let settled =
                result.shipped + result.fatal + result.conflicts + result.transient_failures;
            result.held = remaining.saturating_sub(settled);
        }
        if self.stop.is_cancelled() {
            result.stopped_by.get_or_insert_with(|| "stopping".into());
        }
    }

    /// Whether an upload may still be started in this pass.
    fn may_send(&self, launching: bool) -> bool {
        launching && !self.stop.is_cancelled() && self.state.state.hold.is_none()
    }

    /// Packs an episode again (its outbox archive dropped first) as a future of the
    /// pipeline, so the uploads in flight keep moving meanwhile.
    fn repack(&self, id: EpisodeId) -> Work {
        let (root, level, progress, memory) = (
            self.root.clone(),
            self.config.compression_level,
            self.progress.clone(),
            self.memory.clone(),
        );
        blocking(move || {
            root.remove_outbox(&id).map_err(|e| (id.clone(), e))?;
            prepare(&root, id, level, &progress, &memory)
        })
        .map(|repacked| Done::Repacked(repacked.map(Box::new)))
        .boxed()
    }

    /// Drops an episode's outbox archive, so the next pass packs it afresh.
    async fn drop_outbox(&self, id: EpisodeId) {
        let root = self.root.clone();
        let episode_id = id.clone();
        if let Err(e) = blocking(move || root.remove_outbox(&episode_id)).await {
            tracing::warn!(event = %Event::StorageFailed, episode_id = %id, error = %e, "cannot remove the outbox archive to be repacked");
        }
    }

    fn head_first(&self, id: &EpisodeId) -> bool {
        self.state
            .state
            .episodes
            .get(id.as_str())
            .is_some_and(|e| e.head_first || e.conflict.is_some())
    }

    /// Acts on a failure to pack an episode (`policy::pack_failure`): a file that
    /// changed while packed is tried again later; anything else is a transient
    /// failure, of the host (disk full: all shipping backs off, the pass ends) or of
    /// this episode (it backs off alone).
    async fn pack_failed(
        &mut self,
        id: &EpisodeId,
        error: &std::io::Error,
        result: &mut PassResult,
    ) -> Next {
        if !self.root.episode_dir(Place::Episodes, id).exists() {
            return Next::Continue; // removed while we looked: nothing to ship
        }
        let now = now_ms();
        match policy::pack_failure(pack::is_unstable(error), error.kind()) {
            policy::PackFailure::NotStable => {
                let delay = self.backoff_delay(1, None);
                let episode = self.state.episode(id.as_str());
                episode.next_attempt_ms = Some(now + delay.as_millis() as i64);
                episode.last_error = Some(format!("not stable yet: {error}"));
                tracing::warn!(
                    event = %episode_common::Event::EpisodeNotStable,
                    episode_id = %id,
                    reason = %error,
                    retry_in = %episode_common::Dur(delay),
                    "not shipped: a file changed while it was packed; packed again later"
                );
                result.waiting += 1;
                Next::Continue
            }
            policy::PackFailure::Episode => {
                let episode = self.state.episode(id.as_str());
                episode.attempts += 1;
                let attempts = episode.attempts;
                let delay = self.backoff_delay(attempts, None);
                let episode = self.state.episode(id.as_str());
                episode.next_attempt_ms = Some(now + delay.as_millis() as i64);
                episode.last_status = 0;
                episode.last_error = Some(format!("packing: {error}"));
                episode.last_attempt_unix = now / 1000;
                tracing::error!(
                    event = %episode_common::Event::PackFailed,
                    episode_id = %id,
                    error = %error,
                    attempt = attempts,
                    retry_in = %episode_common::Dur(delay),
                    "cannot pack the episode; it backs off, the others still ship"
                );
                self.save_state().await;
                result.transient_failures += 1;
                Next::Continue
            }
            policy::PackFailure::Host => {
                let error = format!("packing: {error}");
                let delay = self.back_off(now, 0, &error, None);
                let episode = self.state.episode(id.as_str());
                episode.next_attempt_ms = Some(now + delay.as_millis() as i64);
                episode.last_status = 0;
                episode.last_error = Some(error.clone());
                episode.last_attempt_unix = now / 1000;
                tracing::error!(
                    event = %episode_common::Event::PackFailed,
                    episode_id = %id,
                    error = %error,
                    retry_in = %episode_common::Dur(delay),
                    "cannot pack on this host now; all shipping backs off"
                );
                self.save_state().await;
                result.transient_failures += 1;
                Next::Stop(format!(
                    "transient failure, retrying in {}: {error}",
                    episode_common::Dur(delay)
                ))
            }
        }
    }

    /// Raises the global backoff after a transient failure (counted once per pass)
    /// and pushes a hold's re-check past it. Returns the delay.
    fn back_off(
        &mut self,
        now: i64,
        status: u16,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Duration {
        let previous = self.state.state.backoff.as_ref().map(|b| b.failures);
        let failures = match previous {
            Some(n) if self.backoff_counted => n,
            other => other.unwrap_or(0) + 1,
        };
        self.backoff_counted = true;
        let delay = self.backoff_delay(failures, retry_after);
        if let Some(hold) = self.state.state.hold.as_mut() {
            // A transient failure says nothing about the credentials: the
            // hold stays, re-checked after this backoff.
            hold.recheck_ms = hold.recheck_ms.max(now + delay.as_millis() as i64);
        }
        self.state.state.backoff = Some(Backoff {
            failures,
            until_ms: now + delay.as_millis() as i64,
            last_status: status,
            last_error: error.to_owned(),
        });
        delay
    }

    /// Acts on one reply (protocol.md's last table, through `policy::action`).
    async fn act(
        &mut self,
        prepared: Prepared,
        reply: Reply,
        took: Duration,
        result: &mut PassResult,
    ) -> Next {
        let j = judge(&reply);
        let id = prepared.id.clone();
        let now = now_ms();
        let episode = self.state.episode(id.as_str());
        let attempt = episode.attempts + 1;
        let repacks = episode.repacks;
        let action = policy::action(j.class, repacks);
        log_ship_result(&id, &j, attempt, prepared.packed.digests.bytes, took);
        self.metrics.ship_result(j.outcome);
        if policy::ends_hold(j.class) && self.state.state.hold.take().is_some() {
            tracing::info!(
                event = %Event::HoldEnded,
                status_code = j.status,
                "the receiver accepts our requests again"
            );
        }
        if j.class != Class::Transient {
            self.state.state.backoff = None;
        }
        match action {
            Action::Retire => {
                let root = self.root.clone();
                let retire_id = id.clone();
                if let Err(e) = blocking(move || retire(&root, &retire_id)).await {
                    tracing::error!(event = %Event::StorageFailed, episode_id = %id, error = %e, "shipped but cannot move to shipped/; will be re-checked");
                    return Next::Continue;
                }
                self.state.forget(id.as_str());
                self.state.state.last_success_unix = Some(now / 1000);
                self.metrics.shipped(prepared.packed.digests.bytes);
                self.sizes.remove(&id);
                result.shipped += 1;
                if j.outcome == Outcome::AlreadyPresent {
                    result.already_present += 1;
                }
                result.bytes += prepared.packed.digests.bytes;
                self.progress.episode_done();
                Next::Continue
            }
            Action::LeaveConflict => {
                let stored = match &reply {
                    Reply::Answer(a) => a
                        .problem
                        .as_ref()
                        .and_then(|p| p.extra.get("stored_sha256"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned),
                    Reply::HeadConflict(a) => a.repr_digest.map(|d| d.to_hex()),
                    _ => None,
                };
                let episode = self.state.episode(id.as_str());
                let since = episode
                    .conflict
                    .as_ref()
                    .map_or(now / 1000, |c| c.since_unix);
                record(episode, &j, attempt, now);
                episode.conflict = Some(Conflict {
                    since_unix: since,
                    stored_sha256: stored,
                    recheck_ms: now + policy::CONFLICT_RECHECK.as_millis() as i64,
                });
                self.keep_in_outbox(&prepared).await;
                self.save_state().await;
                result.conflicts += 1;
                Next::Continue
            }
            Action::Repack => {
                let episode = self.state.episode(id.as_str());
                record(episode, &j, attempt, now);
                episode.repacks += 1;
                self.save_state().await;
                result.repacked += 1;
                Next::Repack(id)
            }
            Action::Quarantine => {
                let body = match &reply {
                    Reply::Answer(a) => a.body.clone(),
                    _ => serde_json::Value::Null,
                };
                let note = prepared.meta.explain_rejection();
                let mut error = if j.status >= 500 {
                    format!("server error {}", j.status)
                } else {
                    format!("client error {}", j.status)
                };
                if let Some(note) = &note {
                    error.push_str(&format!("; {note}"));
                }
                let reason = Reason {
                    status_code: j.status,
                    problem_type: j.problem_type.clone(),
                    error,
                    shipper_note: note,
                    body,
                    attempts: attempt,
                    sha256: Some(prepared.packed.digests.sha256.to_hex()),
                    quarantined_at_wall: wall(now),
                    quarantined_at_unix: now / 1000,
                    shipper_version: crate::VERSION.to_owned(),
                    episode_id: Some(id.to_string()),
                };
                let root = self.root.clone();
                let (qid, qreason) = (id.clone(), reason.clone());
                match blocking(move || quarantine::quarantine(&root, &qid, &qreason)).await {
                    Ok(entry) => {
                        tracing::warn!(
                            event = %Event::Quarantined,
                            episode_id = %id,
                            status_code = j.status,
                            problem_type = j.problem_type.as_deref(),
                            error = j.error.as_str(),
                            "the receiver will not take this episode as it is; see quarantine/{entry}/quarantine_reason.json"
                        );
                        self.state.forget(id.as_str());
                        self.sizes.remove(&id);
                        result.fatal += 1;
                    }
                    Err(e) => {
                        tracing::error!(event = %Event::StorageFailed, episode_id = %id, error = %e, "cannot quarantine the episode")
                    }
                }
                Next::Continue
            }
            Action::Hold => {
                let previous = self.state.state.hold.as_ref().map(|h| h.failures);
                let failures = match previous {
                    Some(n) if self.hold_counted => n,
                    other => other.unwrap_or(0) + 1,
                };
                self.hold_counted = true;
                let delay = self.backoff_delay(failures, j.retry_after);
                let since = self
                    .state
                    .state
                    .hold
                    .as_ref()
                    .map_or(now / 1000, |h| h.since_unix);
                let episode = self.state.episode(id.as_str());
                record(episode, &j, attempt, now);
                if previous.is_none() {
                    tracing::error!(
                        event = %Event::HoldStarted,
                        status_code = j.status,
                        problem_type = j.problem_type.as_deref(),
                        error = j.error.as_str(),
                        recheck_in = %episode_common::Dur(delay),
                        "shipping paused; the receiver rejects our configuration or credentials (nothing is quarantined)"
                    );
                }
                self.state.state.hold = Some(Hold {
                    since_unix: since,
                    status_code: j.status,
                    problem_type: j.problem_type.clone(),
                    error: j.error.clone(),
                    failures,
                    recheck_ms: now + delay.as_millis() as i64,
                });
                self.save_state().await;
                result.on_hold = true;
                Next::Stop(format!("hold: {}", j.error))
            }
            Action::Backoff => {
                let delay = self.back_off(now, j.status, &j.error, j.retry_after);
                let episode = self.state.episode(id.as_str());
                record(episode, &j, attempt, now);
                episode.next_attempt_ms = Some(now + delay.as_millis() as i64);
                episode.head_first = j.connection_level;
                self.save_state().await;
                self.keep_in_outbox(&prepared).await;
                result.transient_failures += 1;
                Next::Stop(format!(
                    "transient failure, retrying in {}: {}",
                    episode_common::Dur(delay),
                    j.error
                ))
            }
        }
    }

    fn backoff_delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let retry = &self.config.retry;
        let backoff = policy::backoff(
            failures,
            retry.initial_backoff.get(),
            retry.max_backoff.get(),
            unit_random(),
        );
        // Whole milliseconds: what is persisted is what is waited.
        let delay = policy::retry_delay(backoff, retry_after);
        Duration::from_millis(delay.as_millis() as u64)
    }

    /// Writes an in-memory archive to the outbox so the next pass sends the same bytes.
    async fn keep_in_outbox(&self, prepared: &Prepared) {
        if let pack::Body::Memory(_) = prepared.packed.body {
            let (root, id, packed) = (
                self.root.clone(),
                prepared.id.clone(),
                prepared.packed.clone(),
            );
            if let Err(e) = blocking(move || pack::persist(&root, &id, &packed)).await {
                tracing::warn!(event = %Event::StorageFailed, episode_id = %prepared.id, error = %e, "cannot keep the archive in the outbox; it will be packed again");
            }
        }
    }

    /// The one-line summary for systemd's STATUS and the logs; also sets the
    /// metrics' gauges from the same look (no other walk).
    pub async fn status_line(&mut self) -> String {
        let (root, progress) = (self.root.clone(), self.progress.clone());
        let known: HashMap<EpisodeId, u64> = self.sizes.clone();
        let known_reasons = std::mem::take(&mut self.quarantine_reasons);
        let (sizes, reasons, oldest, outbox_bytes, free_bytes) = blocking(move || {
            let mut sizes = known;
            let ready = root
                .finished_episodes()
                .map(|f| f.ready)
                .unwrap_or_default();
            sizes.retain(|id, _| ready.contains(id));
            for id in &ready {
                // Sizing a large backlog walks many trees: progress the heartbeat sees.
                progress.step();
                if !sizes.contains_key(id) {
                    let dir = root.episode_dir(Place::Episodes, id);
                    let size = pack::collect_entries(&dir, id)
                        .map(|(e, _)| pack::raw_size(&e))
                        .unwrap_or(0);
                    sizes.insert(id.clone(), size);
                }
            }
            let oldest = ready.first().and_then(|id| episode_age(&root, id));
            let reasons = quarantine::reasons(&root, known_reasons);
            let outbox_bytes = crate::layout::entries(&root.outbox).map_or(0, |entries| {
                entries
                    .iter()
                    .filter_map(|(_, path)| std::fs::metadata(path).ok())
                    .map(|m| m.len())
                    .sum()
            });
            let free_bytes = episode_common::fsx::free_space(&root.root).unwrap_or(0);
            (sizes, reasons, oldest, outbox_bytes, free_bytes)
        })
        .await;
        let n_quarantine = reasons.len();
        let mut quarantined = std::collections::BTreeMap::new();
        for reason in reasons.values() {
            *quarantined.entry(reason.clone()).or_insert(0u64) += 1;
        }
        self.quarantine_reasons = reasons;
        let state = &self.state.state;
        let now = now_ms();
        self.metrics.observe(&Observed {
            backlog_episodes: sizes.len() as u64,
            backlog_bytes: sizes.values().sum(),
            oldest_pending_age_secs: oldest.unwrap_or(0),
            outbox_bytes,
            last_success_unix: state.last_success_unix.unwrap_or(0),
            on_hold: state.hold.is_some(),
            backoff_until_unix: state
                .backoff
                .as_ref()
                .filter(|b| b.until_ms > now)
                .map_or(0, |b| (b.until_ms + 999) / 1000),
            conflicts: state
                .episodes
                .values()
                .filter(|e| e.conflict.is_some())
                .count() as u64,
            quarantined,
            free_bytes,
        });
        let backlog_bytes: u64 = sizes.values().sum();
        let n_backlog = sizes.len();
        self.sizes = sizes;
        let mut line = format!("backlog {n_backlog} ({}", ByteSize(backlog_bytes));
        if let Some(age) = oldest {
            line.push_str(&format!(", oldest {}", human_age(age)));
        }
        line.push_str(&format!("), quarantine {n_quarantine}"));
        match self.state.state.last_success_unix {
            Some(t) => line.push_str(&format!(
                ", last ship {} ago",
                human_age((now_ms() / 1000 - t).max(0) as u64)
            )),
            None => line.push_str(", nothing shipped yet"),
        }
        if let Some(hold) = &self.state.state.hold {
            line.push_str(&format!(", ON HOLD ({})", hold.error));
        } else if let Some(b) = &self.state.state.backoff
            && b.until_ms > now_ms()
        {
            line.push_str(&format!(", backing off ({})", b.last_error));
        }
        line
    }
}

/// Age of a pending episode: from its ULID, else its directory's mtime.
pub fn episode_age(root: &DataRoot, id: &EpisodeId) -> Option<u64> {
    let now = time::OffsetDateTime::now_utc();
    if let Some(t) = episode_common::wire::ulid_time(id.as_str()) {
        return Some((now - t).whole_seconds().max(0) as u64);
    }
    crate::layout::mtime_age_secs(&root.episode_dir(Place::Episodes, id), SystemTime::now())
}

pub fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

enum Next {
    Continue,
    /// Stop starting new uploads (hold, transient).
    Stop(String),
    /// Pack this episode again and send it again (if the pass still launches).
    Repack(EpisodeId),
}

fn record(episode: &mut crate::state::EpisodeState, j: &Judgement, attempt: u32, now_ms: i64) {
    episode.attempts = attempt;
    episode.last_status = j.status;
    episode.last_problem = j.problem_type.clone();
    episode.last_error = Some(j.error.clone()).filter(|e| !e.is_empty());
    episode.last_attempt_unix = now_ms / 1000;
}

/// Moves a shipped episode to `shipped/` and drops its outbox files. Blocking.
/// The directories are fsynced once per pass (`Shipper::sync_retired`).
fn retire(root: &DataRoot, id: &EpisodeId) -> std::io::Result<()> {
    match root.rename_episode(id, Place::Episodes, Place::Shipped, id.as_str()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let name = format!("{id}.{}", now_ms() / 1000);
            tracing::warn!(event = %Event::KeptBoth, episode_id = %id, kept_as = %name, "shipped/{id} already exists; keeping both");
            root.rename_episode(id, Place::Episodes, Place::Shipped, &name)?;
        }
        Err(e) => return Err(e),
    }
    root.remove_outbox(id)
}

fn log_ship_result(id: &EpisodeId, j: &Judgement, attempt: u32, bytes: u64, took: Duration) {
    let duration_ms = took.as_millis() as u64;
    let problem_type = j.problem_type.as_deref();
    let error = Some(j.error.as_str()).filter(|e| !e.is_empty());
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                event = %Event::ShipResult,
                episode_id = %id,
                outcome = %j.outcome,
                status_code = j.status,
                problem_type,
                error,
                attempt,
                bytes,
                duration_ms,
            )
        };
    }
    match j.class {
        Class::Shipped => event!(info),
        Class::Transient | Class::Conflict | Class::Repack => event!(warn),
        Class::Fatal | Class::Hold => event!(error),
    }
}

/// For the tests: the sha256 of an outbox archive, if there is one.
pub fn outbox_sha256(root: &DataRoot, id: &EpisodeId) -> Option<Sha256> {
    let sidecar: PathBuf = root.sidecar(id);
    let digests: pack::Digests = serde_json::from_slice(&std::fs::read(sidecar).ok()?).ok()?;
    Some(digests.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use episode_common::problem::{Problem, Slug};

    fn answer(status: u16, slug: Option<Slug>) -> Answer {
        Answer {
            status,
            problem: slug.map(|s| Problem::new(s, "detail")),
            body: serde_json::Value::Null,
            retry_after: None,
            repr_digest: None,
            tar_digest: None,
            location: None,
        }
    }

    #[test]
    fn judges_replies_into_outcomes() {
        let cases = [
            (
                Reply::Answer(answer(201, None)),
                Class::Shipped,
                Outcome::Shipped,
                201,
                false,
            ),
            (
                Reply::Answer(answer(200, None)),
                Class::Shipped,
                Outcome::AlreadyPresent,
                200,
                false,
            ),
            (
                Reply::HeadMatch(answer(200, None)),
                Class::Shipped,
                Outcome::AlreadyPresent,
                200,
                false,
            ),
            (
                Reply::HeadConflict(answer(200, None)),
                Class::Conflict,
                Outcome::Conflict,
                409,
                false,
            ),
            (
                Reply::Answer(answer(409, Some(Slug::Conflict))),
                Class::Conflict,
                Outcome::Conflict,
                409,
                false,
            ),
            (
                Reply::Answer(answer(400, Some(Slug::DigestMismatch))),
                Class::Repack,
                Outcome::Repack,
                400,
                false,
            ),
            (
                Reply::Answer(answer(400, Some(Slug::MissingCodeCommit))),
                Class::Fatal,
                Outcome::Fatal,
                400,
                false,
            ),
            (
                Reply::Answer(answer(401, Some(Slug::Unauthorized))),
                Class::Hold,
                Outcome::Hold,
                401,
                false,
            ),
            (
                Reply::Answer(answer(503, None)),
                Class::Transient,
                Outcome::Transient,
                503,
                false,
            ),
            (
                Reply::Failure(Failure::Connection("refused".into())),
                Class::Transient,
                Outcome::Transient,
                0,
                true,
            ),
            (
                Reply::Failure(Failure::Material("mTLS material missing".into())),
                Class::Transient,
                Outcome::Transient,
                0,
                true,
            ),
        ];
        for (reply, class, outcome, status, connection_level) in cases {
            let j = judge(&reply);
            assert_eq!(
                (j.class, j.outcome, j.status, j.connection_level),
                (class, outcome, status, connection_level)
            );
        }
        let j = judge(&Reply::Answer(answer(400, Some(Slug::MissingCodeCommit))));
        assert_eq!(j.problem_type.as_deref(), Some("missing-code-commit"));
        assert!(j.error.contains("400 missing-code-commit"), "{}", j.error);
    }

    #[test]
    fn a_2xx_that_stores_nothing_or_a_redirect_holds_and_says_why() {
        let j = judge(&Reply::Answer(answer(204, None)));
        assert_eq!((j.class, j.outcome), (Class::Hold, Outcome::Hold));
        assert!(
            j.error
                .starts_with("HTTP 204: receiver.url does not point at an episode receiver"),
            "{}",
            j.error
        );
        let redirect = Answer {
            location: Some("https://elsewhere/x".into()),
            ..answer(303, None)
        };
        let j = judge(&Reply::Answer(redirect));
        assert_eq!(j.class, Class::Hold);
        assert!(
            j.error
                .contains("HTTP 303 redirect to https://elsewhere/x (redirects are not followed)")
                && j.error.contains("receiver.url"),
            "{}",
            j.error
        );
        // A stored answer carries no error text.
        assert_eq!(judge(&Reply::Answer(answer(201, None))).error, "");
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(300), "5m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(3 * 86_400), "3d");
    }
}
