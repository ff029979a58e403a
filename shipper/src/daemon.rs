//! `run` and `once`: the work loop around `Shipper::pass`, and how it meets systemd.
//!
//! Owns start-up (random jitter, READY=1 once the lock is held, state loaded and
//! orphans swept), the wait between passes (the scan interval, woken early by
//! inotify when a `done.marker` appears, never longer than half the watchdog
//! period), the heartbeat (WATCHDOG=1 after every pass and while bytes move, so a
//! stalled pack or upload stops it), a STATUS line per pass, and SIGTERM/SIGINT:
//! STOPPING=1, no new episode, an upload in flight gets `shutdown_grace`, then
//! (also when the grace abandoned the pass) the retry state is saved and the data
//! root's directories fsynced (`Shipper::close`), exit 0. Also the metrics: the
//! textfile rewritten after every pass and every minute, the optional listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::layout::DONE_MARKER;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::progress::{Display, Progress};
use crate::shipper::{OpenError, PassResult, Shipper};

/// How often the heartbeat looks at the byte counter, at most.
const HEARTBEAT_TICK: Duration = Duration::from_secs(1);

async fn open(config: Config, stop: CancellationToken) -> Result<Shipper, OpenError> {
    tokio::task::spawn_blocking(move || Shipper::open(config, stop))
        .await
        .unwrap_or_else(|e| Err(OpenError::Io(format!("start-up panicked: {e}"))))
}

/// Cancels `stop` on SIGTERM or SIGINT, after telling systemd STOPPING=1.
fn watch_signals(stop: CancellationToken, notifier: Arc<Notifier>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        notifier.stopping();
        tracing::info!(
            signal = name,
            "stopping: no new episode is started; an upload in flight may finish"
        );
        stop.cancel();
    });
}

/// Runs one pass (for `once`), with a progress line on a terminal.
pub async fn once(config: Config) -> Result<PassResult, OpenError> {
    let stop = CancellationToken::new();
    watch_signals(stop.clone(), Arc::new(Notifier::default()));
    let grace = config.shutdown_grace.get();
    let mut shipper = open(config, stop.clone()).await?;
    let display = Display::new();
    let progress = shipper.progress.clone();
    let drawer = display.enabled().then(|| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let display = Display::new();
            loop {
                display.draw(&progress);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let result = run_pass(&mut shipper, &stop, grace).await;
    shipper.close().await;
    if let Some(path) = shipper.config.metrics.textfile.clone() {
        shipper.status_line().await;
        write_textfile(path, shipper.metrics.clone()).await;
    }
    if let Some(d) = drawer {
        d.abort();
    }
    display.finish(&progress);
    Ok(result.unwrap_or_else(|| PassResult {
        stopped_by: Some("stopped: shutdown grace elapsed".into()),
        ..PassResult::default()
    }))
}

/// A pass that is abandoned if it outlives `grace` after `stop`.
async fn run_pass(
    shipper: &mut Shipper,
    stop: &CancellationToken,
    grace: Duration,
) -> Option<PassResult> {
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = shipper.pass() => Some(result),
        () = deadline => {
            tracing::warn!(grace = %episode_common::Dur(grace), "shutdown grace elapsed; upload abandoned (safe: PUT is idempotent)");
            None
        }
    }
}

/// The daemon (`run`). Returns when stopped.
pub async fn run(config: Config) -> Result<(), OpenError> {
    let stop = CancellationToken::new();
    let notifier = Arc::new(Notifier::default());
    watch_signals(stop.clone(), notifier.clone());
    let (scan_interval, grace, jitter) = (
        config.scan_interval.get(),
        config.shutdown_grace.get(),
        config.startup_jitter.get(),
    );
    let mut shipper = open(config, stop.clone()).await?;
    let watchdog = Notifier::watchdog_period();
    let mut wait = scan_interval;
    if let Some(period) = watchdog {
        wait = wait.min(period / 2);
    }
    let metrics_listener = match shipper.config.metrics.listen {
        Some(addr) => Some(crate::metrics::bind(addr).await.map_err(OpenError::Io)?),
        None => None,
    };
    let status = shipper.status_line().await;
    let textfile = Arc::new(tokio::sync::Notify::new());
    if let Some(path) = shipper.config.metrics.textfile.clone() {
        tokio::spawn(textfile_loop(
            path,
            shipper.metrics.clone(),
            textfile.clone(),
            stop.clone(),
        ));
    }
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(url = %format!("http://{addr}/metrics"), "metrics_listening");
        }
        tokio::spawn(crate::metrics::serve(
            listener,
            shipper.metrics.clone(),
            stop.clone(),
        ));
    }
    notifier.ready(&status);
    tracing::info!(
        host_id = %shipper.config.host_id,
        receiver = shipper.transport.url(),
        data_root = %shipper.root.root.display(),
        version = crate::VERSION,
        status = %status,
        "ready"
    );
    if let Some(period) = watchdog {
        // Several looks per watchdog period, so moving bytes are never missed.
        let tick = HEARTBEAT_TICK.min(period / 4);
        tokio::spawn(heartbeat(
            shipper.progress.clone(),
            notifier.clone(),
            stop.clone(),
            tick,
        ));
    }
    let mut wake = watch_episodes(&shipper);
    if !jitter.is_zero() {
        let delay = jitter.mul_f64(rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => {}
        }
    }
    while !stop.is_cancelled() {
        if run_pass(&mut shipper, &stop, grace).await.is_none() {
            break;
        }
        notifier.watchdog();
        let status = shipper.status_line().await;
        textfile.notify_one();
        notifier.status(&status);
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(()) = wake.recv() => {
                // Let a burst of markers settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while wake.try_recv().is_ok() {}
            }
            () = stop.cancelled() => {}
        }
    }
    // Also after an abandoned pass: its retires are renamed but not yet fsynced.
    shipper.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Writes the metrics textfile (off the async workers); a failure is logged.
async fn write_textfile(path: std::path::PathBuf, metrics: Arc<Metrics>) {
    let written = tokio::task::spawn_blocking(move || {
        crate::metrics::write_textfile(&path, &metrics.render())
            .map_err(|e| format!("{}: {e}", path.display()))
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::warn!(error = %e, "metrics.textfile cannot be written");
    }
}

/// The textfile's only writer: after every pass (`written` notified) and at least
/// every `TEXTFILE_EVERY`, also while a long pass runs.
async fn textfile_loop(
    path: std::path::PathBuf,
    metrics: Arc<Metrics>,
    written: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        write_textfile(path.clone(), metrics.clone()).await;
        tokio::select! {
            () = tokio::time::sleep(crate::metrics::TEXTFILE_EVERY) => {}
            () = written.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// WATCHDOG=1 whenever work moved (bytes or steps) since the last look.
async fn heartbeat(
    progress: Arc<Progress>,
    notifier: Arc<Notifier>,
    stop: CancellationToken,
    tick: Duration,
) {
    let mut last = progress.activity();
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = stop.cancelled() => return,
        }
        let now = progress.activity();
        if now != last {
            notifier.watchdog();
            last = now;
        }
    }
}

/// Wakes the loop when a `done.marker` appears or an episode directory is moved in.
/// Events are hints; the scan interval remains the truth.
fn watch_episodes(shipper: &Shipper) -> mpsc::Receiver<()> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    use notify::{RecursiveMode, Watcher as _};
    let (tx, rx) = mpsc::channel(1);
    let episodes = shipper.root.episodes.clone();
    let top = episodes.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant_kind = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        let relevant_path = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| n == DONE_MARKER)
                || p.parent().is_some_and(|parent| parent == top)
        });
        if relevant_kind && relevant_path {
            let _ = tx.try_send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut watcher) => match watcher.watch(&episodes, RecursiveMode::Recursive) {
            Ok(()) => {
                // The watcher lives as long as the process.
                std::mem::forget(watcher);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch episodes/; relying on scan_interval")
            }
        },
        Err(e) => tracing::warn!(error = %e, "inotify unavailable; relying on scan_interval"),
    }
    rx
}
