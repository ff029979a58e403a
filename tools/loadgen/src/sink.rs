//! `sink`: a trivial endpoint that reads and discards every request body and answers
//! 201, to calibrate the load generator.
//!
//! It speaks HTTP/1.1 with keep-alive through hyper, over the same rustls server
//! configuration as the receiver (`episode_common::tls::server_config`, mTLS when a
//! client CA is given), so `put` against it measures the load generator plus TLS
//! and nothing else: no hashing, no files, no fsync. Not a receiver: it checks no
//! header and stores nothing. Prints `listening on <url>` first and serves until
//! SIGTERM or SIGINT.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use episode_common::tls;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The sink's TLS material: server chain and key, and a client CA for mTLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

async fn serve_connection(stream: TcpStream, acceptor: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(answer);
    let builder = hyper::server::conn::http1::Builder::new();
    let _ = match acceptor {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
            Err(e) => {
                eprintln!("sink: TLS handshake failed: {e}");
                return;
            }
        },
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(listen: SocketAddr, tls_files: Option<TlsFiles>) -> Result<()> {
    let acceptor = match &tls_files {
        None => None,
        Some(files) => {
            let chain = tls::load_certs(&files.cert)?;
            let key = tls::load_key(&files.key)?;
            let client_ca = files
                .client_ca
                .as_deref()
                .map(tls::load_certs)
                .transpose()?;
            let config = tls::server_config(chain, key, client_ca.as_deref())
                .context("TLS server configuration")?;
            Some(TlsAcceptor::from(Arc::new(config)))
        }
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("local address")?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {scheme}://{bound}")?;
        stdout.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(serve_connection(stream, acceptor.clone()));
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
