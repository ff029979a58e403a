//! `run` and `once`: the loop around `Shipper::pass` and how it meets systemd
//! (READY, WATCHDOG heartbeat, STATUS, STOPPING), signals (SIGTERM's grace, SIGHUP's
//! reload between passes), inotify wake-ups and the metrics tasks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use episode_common::Event;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
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
            event = %Event::Stopping,
            signal = name,
            "no new episode is started; an upload in flight may finish"
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
            tracing::warn!(event = %Event::GraceElapsed, grace = %episode_common::Dur(grace), "upload abandoned (safe: PUT is idempotent)");
            None
        }
    }
}

/// SIGHUPs as a channel; installed first, so a SIGHUP never takes the default
/// action (terminating the process).
fn watch_hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => tracing::warn!(
            event = %episode_common::Event::SighupUnavailable,
            error = %e,
            "cannot watch SIGHUP; config reloads need a restart"
        ),
    }
    rx
}

/// Reads the config file again (off the async workers) and, if it is valid
/// (`check::preflight` included) and changes neither `host_id` nor `data_root`,
/// makes it the shipper's for the next pass, credentials re-read. Otherwise logs
/// `config_reload_refused` naming the key and keeps the old config.
async fn reload(shipper: &mut Shipper, path: &Path) {
    let file = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || {
        let config = Config::load(&file)?;
        crate::check::preflight(&config, &file)?;
        Ok::<_, episode_common::config::ConfigError>(config)
    })
    .await
    .expect("config reload panicked");
    let refused = |key: &str, error: &str| {
        // An unreadable file names no key: the field is left out.
        let key = Some(key).filter(|k| !k.is_empty());
        tracing::error!(
            event = %episode_common::Event::ConfigReloadRefused,
            key,
            error,
            "config not reloaded; going on with the one in use"
        );
    };
    match loaded {
        Err(e) => refused(&config::error_key(&e), &e.to_string()),
        Ok(new) => match shipper.config.unreloadable_change(&new) {
            Some(key) => refused(
                key,
                &format!(
                    "config {}: {key} cannot change while the daemon runs; restart it to change {key}",
                    path.display()
                ),
            ),
            None => {
                shipper.reconfigure(new);
                tracing::info!(
                    event = %episode_common::Event::ConfigReloaded,
                    config = %path.display(),
                    receiver_url = shipper.transport.url(),
                    "config reloaded; in effect from the next pass, credentials re-read"
                );
            }
        },
    }
}

/// The wait between passes: the scan interval, at most half the watchdog period.
fn pass_wait(config: &Config, watchdog: Option<Duration>) -> Duration {
    let wait = config.scan_interval.get();
    watchdog.map_or(wait, |period| wait.min(period / 2))
}

/// The daemon (`run`). Returns when stopped. SIGHUP reloads `config_path`.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), OpenError> {
    let mut hangups = watch_hangups();
    let stop = CancellationToken::new();
    let notifier = Arc::new(Notifier::default());
    watch_signals(stop.clone(), notifier.clone());
    let jitter = config.startup_jitter.get();
    let mut shipper = open(config, stop.clone()).await?;
    let watchdog = Notifier::watchdog_period();
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
            tracing::info!(event = %Event::MetricsListening, url = %format!("http://{addr}/metrics"));
        }
        tokio::spawn(crate::metrics::serve(
            listener,
            shipper.metrics.clone(),
            stop.clone(),
        ));
    }
    notifier.ready(&status);
    tracing::info!(
        event = %Event::Ready,
        host_id = %shipper.config.host_id,
        receiver_url = shipper.transport.url(),
        data_root = %shipper.root.root.display(),
        version = crate::VERSION,
        status = %status,
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
        let grace = shipper.config.shutdown_grace.get();
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
            () = tokio::time::sleep(pass_wait(&shipper.config, watchdog)) => {}
            Some(()) = wake.recv() => {
                // Let a burst of markers settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while wake.try_recv().is_ok() {}
            }
            Some(()) = hangups.recv() => reload(&mut shipper, &config_path).await,
            () = stop.cancelled() => {}
        }
    }
    // Also after an abandoned pass: its retires are renamed but not yet fsynced.
    shipper.close().await;
    tracing::info!(event = %Event::Stopped);
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
        tracing::warn!(event = %Event::MetricsFailed, error = %e, "metrics.textfile cannot be written");
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
                tracing::warn!(event = %Event::WatchUnavailable, error = %e, "cannot watch episodes/; relying on scan_interval")
            }
        },
        Err(e) => {
            tracing::warn!(event = %Event::WatchUnavailable, error = %e, "inotify unavailable; relying on scan_interval")
        }
    }
    rx
}
