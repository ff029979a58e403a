//! Listeners, TLS handshakes (bounded, failures logged with the peer), identity
//! binding, HTTP/1.1 connections, the credential reload loop and the SIGTERM drain.
//! Decides nothing about requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use episode_common::tls::{CertInfo, explain_rustls};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::AppState;
use crate::admission::PeerIdentity;
use crate::connections::{Connections, Registration};
use crate::credentials::Credentials;

/// The handshake timeout of a connection accepted under pressure.
const PRESSURE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often certificate and token files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The identity a verified client certificate gives its requests.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Option<PeerIdentity> {
    let leaf = certs?.first()?;
    match CertInfo::parse(leaf) {
        Ok(info) => Some(PeerIdentity {
            names: info.identities(),
            primary: info.primary_identity().map(str::to_owned),
        }),
        Err(e) => {
            tracing::warn!(event = %episode_common::Event::TlsHandshakeFailed, error = %e, "client certificate verified but not parseable; no identity");
            Some(PeerIdentity {
                names: Vec::new(),
                primary: None,
            })
        }
    }
}

#[derive(Clone)]
struct Listener {
    router: Router,
    /// Present on the main listener when `[tls]` is configured.
    credentials: Option<Arc<Credentials>>,
    state: Arc<AppState>,
    connections: Arc<Connections>,
}

async fn accept_loop(
    tcp: TcpListener,
    listener: Listener,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = listener.connections.acquire() => match permit {
                Some(p) => p,
                None => return,
            },
        };
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(event = %episode_common::Event::ConnectionFailed, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(registration) = listener.connections.register(remote.ip(), permit) else {
            tracing::debug!(event = %episode_common::Event::ConnectionPressure, %remote, "connection refused: this address holds its share of max_connections");
            continue; // dropping the stream closes it
        };
        let listener = listener.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = registration.conn.clone();
            let serve = listener.serve_connection(stream, remote, watcher, &registration);
            tokio::pin!(serve);
            tokio::select! {
                () = &mut serve => {}
                // Closed to make room while idle (see `connections`); a request
                // that arrived in between is served, never cut off.
                () = conn.closed() => match conn.is_busy() {
                    true => serve.await,
                    false => tracing::debug!(event = %episode_common::Event::ConnectionPressure, %remote, "idle connection closed under pressure"),
                },
            }
        });
    }
}

impl Listener {
    async fn serve_connection(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        watcher: Watcher,
        registration: &Registration,
    ) {
        let _ = stream.set_nodelay(true);
        let live = self.state.live();
        let config = &live.config;
        // Under pressure a client gets a short leash for its handshake.
        let handshake_timeout = match self.connections.under_pressure() {
            true => config
                .handshake_timeout
                .get()
                .min(PRESSURE_HANDSHAKE_TIMEOUT),
            false => config.handshake_timeout.get(),
        };
        let (io, peer) = match self.credentials.as_ref().and_then(|c| c.server_config()) {
            None => (Either::Right(stream), None),
            Some(tls_config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let peer = peer_identity(tls.get_ref().1.peer_certificates());
                        (Either::Left(tls), peer)
                    }
                    Ok(Err(e)) => {
                        self.state.metrics.handshake_failures.inc();
                        let reason = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                            .map_or_else(|| e.to_string(), explain_rustls);
                        tracing::warn!(event = %episode_common::Event::TlsHandshakeFailed, %remote, reason = %reason);
                        return;
                    }
                    Err(_) => {
                        self.state.metrics.handshake_failures.inc();
                        tracing::warn!(event = %episode_common::Event::TlsHandshakeFailed, %remote, timeout = %episode_common::Dur(handshake_timeout), "timed out");
                        return;
                    }
                }
            }
        };
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            if let Some(peer) = &peer {
                req.extensions_mut().insert(peer.clone());
            }
            // Busy (never closed to make room) until the answer is produced.
            let busy = registration.busy();
            let answer = router.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let answer = answer.await;
                drop(busy);
                answer
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout.get())
            .max_buf_size(crate::upload::MAX_FRAME)
            .keep_alive(true);
        let io = crate::rejects::ProblemIo::new(io);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(event = %episode_common::Event::ConnectionFailed, %remote, error = %e, "connection ended with an error");
        }
    }
}

/// Binds `addr`; the error names it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serves until `shutdown` resolves (to what stopped it, for the log), then drains
/// (see the module doc).
pub async fn run(
    state: Arc<AppState>,
    main: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = &'static str>,
) {
    // Once serving: start-up (and its benchmark) never waits for it.
    crate::reconcile::spawn_size_audit(state.index.clone(), state.config.store_root.clone());
    let stop = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let connections = Connections::new(state.config.max_connections);
    let credentials = state
        .credentials
        .is_tls()
        .then(|| state.credentials.clone());
    let main_listener = Listener {
        router: crate::app(state.clone()),
        credentials,
        state: state.clone(),
        connections: connections.clone(),
    };
    let mut tasks = vec![tokio::spawn(accept_loop(
        main,
        main_listener,
        stop.clone(),
        graceful.clone(),
    ))];
    if let Some(metrics) = metrics {
        let listener = Listener {
            router: crate::ops::app(state.clone()),
            credentials: None,
            state: state.clone(),
            connections,
        };
        tasks.push(tokio::spawn(accept_loop(
            metrics,
            listener,
            stop.clone(),
            graceful.clone(),
        )));
    }
    tasks.push(tokio::spawn(reload_loop(state.clone(), stop.clone())));
    tasks.push(tokio::spawn(sweep_loop(state.clone(), stop.clone())));
    if let Some(period) = sd_notify::watchdog_enabled() {
        tasks.push(tokio::spawn(watchdog_loop(
            state.committer.clone(),
            period,
            stop.clone(),
        )));
    }

    let signal = shutdown.await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    state.start_draining();
    let grace = state.live().config.shutdown_grace;
    tracing::info!(event = %episode_common::Event::Stopping, signal, uploads_in_flight = state.slots.in_flight(), grace = %grace, "new uploads get 503");
    let grace = grace.get();
    let deadline = tokio::time::Instant::now() + grace;
    while state.slots.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let abandoned = state.slots.in_flight();
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    // The accept loops held the only other references; connections hold watchers.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
    }
    tracing::info!(event = %episode_common::Event::Stopped, abandoned);
}

/// Credential files are re-read when they change (every 2 s); SIGHUP reads the
/// config file again (`reload::on_hangup`) and the credential files with it.
async fn reload_loop(state: Arc<AppState>, stop: CancellationToken) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hung_up = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_EVERY) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || match hung_up {
            true => crate::reload::on_hangup(&state),
            false => state
                .credentials
                .reload(crate::credentials::Reread::IfChanged),
        })
        .await;
    }
}

/// Removes temp files no upload can still be writing (untouched for twice the idle
/// timeout plus a minute): leftovers of a writer thread that outlived its request.
async fn sweep_loop(state: Arc<AppState>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        let stale_after = state.live().config.body_idle_timeout.get() * 2 + Duration::from_secs(60);
        let incoming = state.config.incoming_root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&incoming) else {
                return;
            };
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok());
                if old.is_some_and(|age| age > stale_after)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    tracing::info!(event = %episode_common::Event::StaleUploadRemoved, file = %entry.path().display());
                }
            }
        })
        .await;
    }
}

/// WATCHDOG=1 every half period, only while the committer lives and is not stuck
/// (`health::should_ping`): a receiver that can no longer store gets restarted.
async fn watchdog_loop(
    committer: crate::index::Committer,
    period: Duration,
    stop: CancellationToken,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period / 2) => {}
        }
        if crate::health::should_ping(committer.is_alive(), committer.busy_for(), period) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            warned = false;
        } else if !warned {
            tracing::error!(
                event = %episode_common::Event::WatchdogWithheld,
                "the index writer is stopped or stuck: no watchdog ping, systemd restarts the receiver"
            );
            warned = true;
        }
    }
}
