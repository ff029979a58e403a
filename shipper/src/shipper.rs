//! The executor of a pass: `Shipper::open` (lock, state, recovery, sweep) and
//! `Shipper::pass` (list, `retry::gate`, pack ahead, upload, act on each answer by
//! executing `retry::on_answer`'s effect). Decides nothing itself.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use episode_common::{ByteSize, Class, EpisodeId, Event, Outcome};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::layout::{DataRoot, Place};
use crate::meta::{self, Meta};
use crate::metrics::{Metrics, Observed};
use crate::outbox;
use crate::pack::{self, Packed};
use crate::policy;
use crate::progress::Progress;
use crate::quarantine;
use crate::retry::{self, Approach, Effect, PackEffect, PassCounts, Reply, Tick};
use crate::state::StateFile;
use crate::transport::Transport;

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
    /// What this pass already counted towards the backoff and the hold.
    counts: PassCounts,
    _lock: File,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
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
    episode_id: EpisodeId,
    packed: Packed,
    meta: Meta,
    /// Memory held by an in-memory archive until the episode is acted on.
    _memory: Option<pack::Reservation>,
}

/// Asks the receiver about one episode (HEAD first when `approach` says so) and
/// sends it unless the HEAD settled it.
async fn ship_one(
    transport: Arc<Transport>,
    prepared: Prepared,
    approach: Approach,
    progress: Arc<Progress>,
) -> (Prepared, Reply, Duration) {
    let start = Instant::now();
    if approach == Approach::HeadFirst {
        match transport.head(&prepared.episode_id).await {
            Err(failure) => return (prepared, Reply::Failure(failure), start.elapsed()),
            Ok(answer) => {
                if let Some(reply) = retry::after_head(answer, &prepared.packed.digests) {
                    return (prepared, reply, start.elapsed());
                }
            }
        }
    }
    let reply = match transport
        .put(
            &prepared.episode_id,
            &prepared.packed,
            &prepared.meta,
            &progress,
        )
        .await
    {
        Ok(answer) => Reply::Answer(answer),
        Err(failure) => Reply::Failure(failure),
    };
    (prepared, reply, start.elapsed())
}

/// Reads meta.json and reuses or makes the archive. Blocking.
fn prepare(
    root: &DataRoot,
    episode_id: EpisodeId,
    level: i32,
    progress: &Progress,
    budget: &pack::MemoryBudget,
) -> Result<Prepared, (EpisodeId, std::io::Error)> {
    let dir = root.episode_dir(Place::Episodes, &episode_id);
    let meta = meta::read(&dir);
    for warning in &meta.warnings {
        tracing::warn!(event = %Event::MetaWarning, episode_id = %episode_id, "meta.json: {warning}; sent without that header");
    }
    let (packed, memory) = match outbox::reuse(root, &episode_id, &dir, &|n| progress.add(n)) {
        Ok(Some(p)) => (p, None),
        Ok(None) => pack::pack(root, &dir, &episode_id, level, &|n| progress.add(n), budget)
            .map_err(|e| (episode_id.clone(), e))?,
        Err(e) => return Err((episode_id, e)),
    };
    Ok(Prepared {
        episode_id,
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
    approach: Approach,
    progress: &Arc<Progress>,
) -> Work {
    ship_one(transport.clone(), prepared, approach, progress.clone())
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
        for episode_id in quarantine::recover(&root)
            .map_err(|e| OpenError::Io(format!("finishing quarantines: {e}")))?
        {
            tracing::warn!(event = %Event::Quarantined, episode_id = %episode_id, "finished a quarantine interrupted by a crash");
        }
        let (requeued, problems) = quarantine::recover_requeues(&root)
            .map_err(|e| OpenError::Io(format!("finishing requeues: {e}")))?;
        for episode_id in requeued {
            tracing::warn!(event = %episode_common::Event::RequeueFinished, episode_id = %episode_id, "requeued: finished a requeue interrupted by a crash");
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
                    resume_at = %retry::rfc3339(marker.resume_ms),
                    "the last pass did not finish (the process died: crash, OOM, SIGKILL or watchdog; {} in a row); no upload starts before {} so a crash loop cannot become a retry storm",
                    marker.unfinished,
                    retry::rfc3339(marker.resume_ms)
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
            counts: PassCounts::default(),
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
        if !policy::cleanup_due(self.state.state.last_cleanup_unix, interval, now) {
            return;
        }
        let (root, quarantine_keep_days, shipped_keep_days, progress) = (
            self.root.clone(),
            self.config.quarantine.keep_days,
            self.config.shipped.keep_days,
            self.progress.clone(),
        );
        let result = blocking(move || {
            let step = || progress.step();
            let now = SystemTime::now();
            let quarantined =
                quarantine::prune(&root.quarantine, quarantine_keep_days, now, &step)?;
            let shipped = quarantine::prune(&root.shipped, shipped_keep_days, now, &step)?;
            std::io::Result::Ok((quarantined, shipped))
        })
        .await;
        match result {
            Ok((quarantined, shipped)) => {
                if !quarantined.is_empty() {
                    tracing::info!(event = %Event::QuarantineCleaned, n_removed = quarantined.len(), keep_days = quarantine_keep_days, episodes = ?quarantined);
                }
                if !shipped.is_empty() {
                    tracing::info!(event = %Event::ShippedCleaned, n_removed = shipped.len(), keep_days = shipped_keep_days);
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
        for not_ready in &finished.not_ready {
            let (name, reason) = (&not_ready.name, &not_ready.reason);
            if self
                .warned_invalid
                .insert(format!("not-ready\0{name}\0{reason}"))
            {
                tracing::warn!(event = %episode_common::Event::EpisodeNotReady, episode_id = %name, reason = %reason, "episodes/{name}: not shipped: {reason}");
            }
        }
        result.scanned = finished.ready.len();
        let ready: HashSet<&str> = finished.ready.iter().map(EpisodeId::as_str).collect();
        self.state
            .retain_pending(|episode_id| ready.contains(episode_id));
        self.sizes
            .retain(|episode_id, _| ready.contains(episode_id.as_str()));

        let now = now_ms();
        let scanned = result.scanned;
        let gate = retry::gate(&self.state.state, finished.ready, now);
        result.stopped_by = gate.stopped_by();
        let queue = match gate {
            retry::Gate::Open(queue) => queue,
            retry::Gate::OnHold { .. } => {
                result.on_hold = true;
                result.held = scanned;
                self.finish(&mut result, started);
                return result;
            }
            retry::Gate::BackingOff { .. } | retry::Gate::CrashLoopGuard { .. } => {
                result.waiting = scanned;
                self.finish(&mut result, started);
                return result;
            }
        };
        result.waiting = scanned - queue.len();
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
        let tick = self.tick(now);
        retry::start_pass(&mut self.state.state, tick, &self.config.retry);
        self.save_state().await;
    }

    /// The moment a decision is taken at `now` (Unix ms), with a fresh random unit.
    fn tick(&self, now: i64) -> Tick {
        Tick {
            now_ms: now,
            unit: unit_random(),
        }
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
        self.counts = PassCounts::default();
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
                for episode_id in queue {
                    if stop.is_cancelled() {
                        break;
                    }
                    let (root, progress) = (root.clone(), progress.clone());
                    let memory = memory.clone();
                    let prepared =
                        blocking(move || prepare(&root, episode_id, level, &progress, &memory))
                            .await;
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
                            Next::Repack(episode_id) => {
                                limit = concurrency;
                                if launching && self.may_send() {
                                    in_flight.push(self.repack(episode_id));
                                } else {
                                    self.drop_outbox(episode_id).await;
                                }
                            }
                        }
                    }
                    Done::Repacked(Err((episode_id, e))) => {
                        if let Next::Stop(why) = self.pack_failed(&episode_id, &e, result).await {
                            launching = false;
                            result.stopped_by.get_or_insert(why);
                        }
                    }
                    Done::Repacked(Ok(prepared)) => {
                        // The pass may have stopped (hold, transient, SIGTERM) while
                        // this was packed: then it waits for the next pass.
                        if launching && self.may_send() {
                            let approach = self.approach(&prepared);
                            in_flight.push(send(&self.transport, *prepared, approach, &self.progress));
                        }
                    }
                },
                item = rx.recv(), if can_launch => match item {
                    None => open = false,
                    Some(Err((episode_id, e))) => {
                        if let Next::Stop(why) = self.pack_failed(&episode_id, &e, result).await {
                            launching = false;
                            result.stopped_by.get_or_insert(why);
                        }
                    }
                    Some(Ok(prepared)) => {
                        let approach = self.approach(&prepared);
                        in_flight.push(send(&self.transport, prepared, approach, &self.progress));
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
    fn may_send(&self) -> bool {
        !self.stop.is_cancelled() && self.state.state.hold.is_none()
    }

    /// Packs an episode again (its outbox archive dropped first) as a future of the
    /// pipeline, so the uploads in flight keep moving meanwhile.
    fn repack(&self, episode_id: EpisodeId) -> Work {
        let (root, level, progress, memory) = (
            self.root.clone(),
            self.config.compression_level,
            self.progress.clone(),
            self.memory.clone(),
        );
        blocking(move || {
            root.remove_outbox(&episode_id)
                .map_err(|e| (episode_id.clone(), e))?;
            prepare(&root, episode_id, level, &progress, &memory)
        })
        .map(|repacked| Done::Repacked(repacked.map(Box::new)))
        .boxed()
    }

    /// Drops an episode's outbox archive, so the next pass packs it afresh.
    async fn drop_outbox(&self, episode_id: EpisodeId) {
        let root = self.root.clone();
        let removed_id = episode_id.clone();
        if let Err(e) = blocking(move || root.remove_outbox(&removed_id)).await {
            tracing::warn!(event = %Event::StorageFailed, episode_id = %episode_id, error = %e, "cannot remove the outbox archive to be repacked");
        }
    }

    fn approach(&self, prepared: &Prepared) -> Approach {
        retry::approach(
            &self.state.state,
            &prepared.episode_id,
            prepared.packed.digests.bytes,
        )
    }

    /// Executes the decision about a failure to pack an episode
    /// (`policy::pack_failure`, then `retry::on_pack_failure`).
    async fn pack_failed(
        &mut self,
        episode_id: &EpisodeId,
        error: &std::io::Error,
        result: &mut PassResult,
    ) -> Next {
        if !self.root.episode_dir(Place::Episodes, episode_id).exists() {
            return Next::Continue; // removed while we looked: nothing to ship
        }
        let failure = policy::pack_failure(pack::is_unstable(error), error.kind());
        let tick = self.tick(now_ms());
        let effect = retry::on_pack_failure(
            &mut self.state.state,
            &mut self.counts,
            episode_id,
            failure,
            &error.to_string(),
            tick,
            &self.config.retry,
        );
        match effect {
            PackEffect::TryLater { delay } => {
                tracing::warn!(
                    event = %episode_common::Event::EpisodeNotStable,
                    episode_id = %episode_id,
                    reason = %error,
                    retry_in = %episode_common::Dur(delay),
                    "not shipped: a file changed while it was packed; packed again later"
                );
                result.waiting += 1;
                Next::Continue
            }
            PackEffect::EpisodeBacksOff { delay, attempt } => {
                tracing::error!(
                    event = %episode_common::Event::PackFailed,
                    episode_id = %episode_id,
                    error = %error,
                    attempt,
                    retry_in = %episode_common::Dur(delay),
                    "cannot pack the episode; it backs off, the others still ship"
                );
                self.save_state().await;
                result.transient_failures += 1;
                Next::Continue
            }
            PackEffect::HostBacksOff { delay, error } => {
                tracing::error!(
                    event = %episode_common::Event::PackFailed,
                    episode_id = %episode_id,
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

    /// Executes the decision about one reply (`retry::on_answer`).
    async fn act(
        &mut self,
        prepared: Prepared,
        reply: Reply,
        took: Duration,
        result: &mut PassResult,
    ) -> Next {
        let judgement = retry::judge(reply);
        let episode_id = prepared.episode_id.clone();
        let now = now_ms();
        let tick = self.tick(now);
        let decision = retry::on_answer(
            &mut self.state.state,
            &mut self.counts,
            &episode_id,
            &judgement,
            tick,
            &self.config.retry,
        );
        let bytes = prepared.packed.digests.bytes;
        log_ship_result(&episode_id, &judgement, decision.attempt, bytes, took);
        self.metrics.ship_result(judgement.outcome);
        if decision.hold_ended {
            tracing::info!(
                event = %Event::HoldEnded,
                status_code = judgement.status,
                "the receiver accepts our requests again"
            );
        }
        match decision.effect {
            Effect::Retire => {
                let root = self.root.clone();
                let retired_id = episode_id.clone();
                if let Err(e) = blocking(move || retire(&root, &retired_id)).await {
                    tracing::error!(event = %Event::StorageFailed, episode_id = %episode_id, error = %e, "shipped but cannot move to shipped/; will be re-checked");
                    return Next::Continue;
                }
                retry::retired(&mut self.state.state, &episode_id, now);
                self.metrics.shipped(bytes);
                self.sizes.remove(&episode_id);
                result.shipped += 1;
                if judgement.outcome == Outcome::AlreadyPresent {
                    result.already_present += 1;
                }
                result.bytes += bytes;
                self.progress.episode_done();
                Next::Continue
            }
            Effect::KeepInOutbox => {
                self.keep_in_outbox(&prepared.episode_id, &prepared.packed)
                    .await;
                self.save_state().await;
                result.conflicts += 1;
                Next::Continue
            }
            Effect::Repack => {
                self.save_state().await;
                result.repacked += 1;
                Next::Repack(episode_id)
            }
            Effect::Quarantine => {
                let reason = retry::quarantine_reason(
                    &episode_id,
                    &judgement,
                    prepared.meta.explain_rejection(),
                    decision.attempt,
                    &prepared.packed.digests,
                    now,
                );
                let root = self.root.clone();
                let quarantined_id = episode_id.clone();
                match blocking(move || quarantine::quarantine(&root, &quarantined_id, &reason))
                    .await
                {
                    Ok(entry) => {
                        tracing::warn!(
                            event = %Event::Quarantined,
                            episode_id = %episode_id,
                            status_code = judgement.status,
                            problem_type = judgement.problem_type.as_deref(),
                            error = judgement.error.as_str(),
                            "the receiver will not take this episode as it is; see quarantine/{entry}/quarantine_reason.json"
                        );
                        retry::quarantined(&mut self.state.state, &episode_id);
                        self.sizes.remove(&episode_id);
                        result.fatal += 1;
                    }
                    Err(e) => {
                        tracing::error!(event = %Event::StorageFailed, episode_id = %episode_id, error = %e, "cannot quarantine the episode")
                    }
                }
                Next::Continue
            }
            Effect::Hold { delay, started } => {
                if started {
                    tracing::error!(
                        event = %Event::HoldStarted,
                        status_code = judgement.status,
                        problem_type = judgement.problem_type.as_deref(),
                        error = judgement.error.as_str(),
                        recheck_in = %episode_common::Dur(delay),
                        "shipping paused; the receiver rejects our configuration or credentials (nothing is quarantined)"
                    );
                }
                self.save_state().await;
                result.on_hold = true;
                Next::Stop(format!("hold: {}", judgement.error))
            }
            Effect::BackOff { delay } => {
                self.save_state().await;
                self.keep_in_outbox(&prepared.episode_id, &prepared.packed)
                    .await;
                result.transient_failures += 1;
                Next::Stop(format!(
                    "transient failure, retrying in {}: {}",
                    episode_common::Dur(delay),
                    judgement.error
                ))
            }
        }
    }

    /// Writes an in-memory archive to the outbox so the next pass sends the same
    /// bytes (`outbox::persist`, off the async workers).
    async fn keep_in_outbox(&self, episode_id: &EpisodeId, packed: &Packed) {
        if let Err(e) = outbox::keep(&self.root, episode_id, packed).await {
            tracing::warn!(event = %Event::StorageFailed, episode_id = %episode_id, error = %e, "cannot keep the archive in the outbox; it will be packed again");
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
            sizes.retain(|episode_id, _| ready.contains(episode_id));
            for episode_id in &ready {
                // Sizing a large backlog walks many trees: progress the heartbeat sees.
                progress.step();
                if !sizes.contains_key(episode_id) {
                    let dir = root.episode_dir(Place::Episodes, episode_id);
                    let size = pack::collect_entries(&dir, episode_id)
                        .map(|(e, _)| pack::raw_size(&e))
                        .unwrap_or(0);
                    sizes.insert(episode_id.clone(), size);
                }
            }
            let oldest = ready
                .first()
                .and_then(|episode_id| episode_age(&root, episode_id));
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
pub fn episode_age(root: &DataRoot, episode_id: &EpisodeId) -> Option<u64> {
    let now = time::OffsetDateTime::now_utc();
    if let Some(t) = episode_common::wire::ulid_time(episode_id.as_str()) {
        return Some((now - t).whole_seconds().max(0) as u64);
    }
    crate::layout::mtime_age_secs(
        &root.episode_dir(Place::Episodes, episode_id),
        SystemTime::now(),
    )
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

/// Moves a shipped episode to `shipped/` and drops its outbox files. Blocking.
/// The directories are fsynced once per pass (`Shipper::sync_retired`).
fn retire(root: &DataRoot, episode_id: &EpisodeId) -> std::io::Result<()> {
    match root.rename_episode(
        episode_id,
        Place::Episodes,
        Place::Shipped,
        episode_id.as_str(),
    ) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let name = format!("{episode_id}.{}", now_ms() / 1000);
            tracing::warn!(event = %Event::KeptBoth, episode_id = %episode_id, kept_as = %name, "shipped/{episode_id} already exists; keeping both");
            root.rename_episode(episode_id, Place::Episodes, Place::Shipped, &name)?;
        }
        Err(e) => return Err(e),
    }
    root.remove_outbox(episode_id)
}

fn log_ship_result(
    episode_id: &EpisodeId,
    judgement: &retry::Judgement,
    attempt: u32,
    bytes: u64,
    took: Duration,
) {
    let duration_ms = took.as_millis() as u64;
    let problem_type = judgement.problem_type.as_deref();
    let error = Some(judgement.error.as_str()).filter(|e| !e.is_empty());
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                event = %Event::ShipResult,
                episode_id = %episode_id,
                outcome = %judgement.outcome,
                status_code = judgement.status,
                problem_type,
                error,
                attempt,
                bytes,
                duration_ms,
            )
        };
    }
    match judgement.class {
        Class::Shipped => event!(info),
        Class::Transient | Class::Conflict | Class::Repack => event!(warn),
        Class::Fatal | Class::Hold => event!(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(300), "5m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(3 * 86_400), "3d");
    }
}
