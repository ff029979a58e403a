//! Listeners, TLS handshakes, connections and the graceful drain.
//!
//! Owns the accept loops (the main listener and the optional plain metrics one),
//! each TLS handshake (bounded in time, its failure logged with the peer's address
//! and the reason, which axum-server would drop), binding the verified client
//! certificate's identity to every request on the connection, HTTP/1.1 with a
//! header-read timeout, the credential reload loop, and the SIGTERM sequence:
//! STOPPING=1, new uploads get 503, in-flight uploads get `shutdown_grace`, then
//! connections are closed. Decides nothing about requests.

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
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::AppState;
use crate::admission::PeerIdentity;
use crate::credentials::Credentials;

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
            tracing::warn!(error = %e, "client certificate verified but not parseable; no identity");
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
    connections: Arc<Semaphore>,
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
            permit = listener.connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let listener = listener.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            listener.serve_connection(stream, remote, watcher).await;
        });
    }
}

impl Listener {
    async fn serve_connection(&self, stream: TcpStream, remote: SocketAddr, watcher: Watcher) {
        let _ = stream.set_nodelay(true);
        let config = &self.state.config;
        let (io, peer) = match self.credentials.as_ref().and_then(|c| c.server_config()) {
            None => (Either::Right(stream), None),
            Some(tls_config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
                match tokio::time::timeout(config.handshake_timeout.get(), acceptor.accept(stream))
                    .await
                {
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
                        tracing::warn!(%remote, reason = %reason, "tls_handshake_failed");
                        return;
                    }
                    Err(_) => {
                        self.state.metrics.handshake_failures.inc();
                        tracing::warn!(%remote, timeout = %config.handshake_timeout, "tls_handshake_timed_out");
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
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout.get())
            .max_buf_size(crate::upload::MAX_FRAME)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        }
    }
}

/// Binds `addr`; the error names it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serves until `shutdown` resolves, then drains (see the module doc).
pub async fn run(
    state: Arc<AppState>,
    main: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let connections = Arc::new(Semaphore::new(state.config.max_connections));
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
    tasks.push(tokio::spawn(reload_loop(
        state.credentials.clone(),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(sweep_loop(state.clone(), stop.clone())));
    if let Some(period) = sd_notify::watchdog_enabled() {
        tasks.push(tokio::spawn(watchdog_loop(period, stop.clone())));
    }

    shutdown.await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    state.start_draining();
    let grace = state.config.shutdown_grace.get();
    tracing::info!(uploads_in_flight = state.slots.in_flight(), grace = %state.config.shutdown_grace, "stopping: new uploads get 503");
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
    tracing::info!(abandoned, "stopped");
}

async fn reload_loop(credentials: Arc<Credentials>, stop: CancellationToken) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let force = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_EVERY) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let credentials = credentials.clone();
        let _ = tokio::task::spawn_blocking(move || credentials.reload(force)).await;
    }
}

/// Removes temp files no upload can still be writing (untouched for twice the idle
/// timeout plus a minute): leftovers of a writer thread that outlived its request.
async fn sweep_loop(state: Arc<AppState>, stop: CancellationToken) {
    let stale_after = state.config.body_idle_timeout.get() * 2 + Duration::from_secs(60);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
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
                    tracing::info!(file = %entry.path().display(), "stale_upload_removed");
                }
            }
        })
        .await;
    }
}

async fn watchdog_loop(period: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period / 2) => {}
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}
