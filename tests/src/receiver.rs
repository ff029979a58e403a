//! A real `episode-receiver` process, and HTTP clients that talk to it.
//!
//! Owns starting the binary on `127.0.0.1:0` (the bound address is read from its
//! first stdout line, never guessed), the paths its config names, reading its store
//! and index from the outside, and building reqwest clients with the test PKI (mTLS
//! as a given host, or no client certificate). Raw socket requests live in `raw`.
//! Invariant: a `Receiver` is only handed out once it has printed its address, so
//! it accepts connections from then on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use episode_common::Sha256;
use reqwest::blocking::Client;

use crate::process::{Proc, bin};
use crate::{TestEnv, pki};

/// Where a receiver config keeps its state.
#[derive(Debug, Clone)]
pub struct ReceiverPaths {
    pub store_root: PathBuf,
    pub incoming_root: PathBuf,
    pub index_path: PathBuf,
}

impl ReceiverPaths {
    /// Reads `store_root`, `incoming_root` and `index_path` from a receiver config.
    pub fn from_config(config: &Path) -> Self {
        let text = std::fs::read_to_string(config)
            .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("parse {}: {e}", config.display()));
        let get = |key: &str| -> PathBuf {
            table
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("{} has no {key}", config.display()))
                .into()
        };
        Self {
            store_root: get("store_root"),
            incoming_root: get("incoming_root"),
            index_path: get("index_path"),
        }
    }

    /// The archive path of `(host, episode)` in the store.
    pub fn archive(&self, host: &str, episode: &str) -> PathBuf {
        self.store_root
            .join(host)
            .join(format!("{episode}.tar.zst"))
    }

    /// Every file under `incoming_root`.
    pub fn incoming_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(&self.incoming_root) {
            Ok(entries) => entries.map(|e| e.expect("read_dir entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The index, one JSON value per line. Panics on a line that does not parse.
    pub fn index_rows(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.index_path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "{} line {}: {e}: {line:?}",
                        self.index_path.display(),
                        i + 1
                    )
                })
            })
            .collect()
    }
}

/// A running receiver.
pub struct Receiver {
    /// `https://127.0.0.1:<port>` or `http://…`, as the receiver printed it.
    pub url: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub store_root: PathBuf,
    pub incoming_root: PathBuf,
    pub index_path: PathBuf,
    pub process: Proc,
    ca: PathBuf,
    identities: Vec<(String, PathBuf, PathBuf)>,
}

impl TestEnv {
    /// Starts `episode-receiver --config <config> --listen 127.0.0.1:0 run`.
    pub fn spawn_receiver(&self, config: &Path) -> Receiver {
        self.spawn_receiver_with(config, |_| {})
    }

    /// As `spawn_receiver`, letting `customize` add environment variables or
    /// arguments (e.g. `NOTIFY_SOCKET`) before the child starts.
    pub fn spawn_receiver_with(
        &self,
        config: &Path,
        customize: impl FnOnce(&mut Command),
    ) -> Receiver {
        let mut cmd = Command::new(bin("episode-receiver"));
        cmd.arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "run"])
            .env("RUST_LOG", "info");
        customize(&mut cmd);
        let mut process = Proc::spawn(&mut cmd, self, "receiver");
        let line = first_stdout_line(&mut process, Duration::from_secs(10));
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"))
            .trim()
            .to_owned();
        let addr: SocketAddr = url
            .split_once("://")
            .map(|(_, a)| a)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let paths = ReceiverPaths::from_config(config);
        Receiver {
            url,
            addr,
            config: config.to_owned(),
            store_root: paths.store_root,
            incoming_root: paths.incoming_root,
            index_path: paths.index_path,
            process,
            ca: self.pki.ca.clone(),
            identities: pki::HOSTS
                .iter()
                .map(|h| {
                    (
                        (*h).to_owned(),
                        self.pki.client_cert(h),
                        self.pki.client_key(h),
                    )
                })
                .collect(),
        }
    }
}

/// Waits for the child's first complete stdout line; panics (with its output) if
/// it exits or stays silent.
fn first_stdout_line(process: &mut Proc, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = process.stdout();
        if let Some((line, _)) = out.split_once('\n') {
            return line.to_owned();
        }
        if let Some(status) = process.wait_exit(Duration::ZERO) {
            panic!(
                "child exited with {status} before printing its address\n{}",
                process.report()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "child printed no address within {timeout:?}\n{}",
                process.report()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The answer to a request, with the body parsed as JSON when it is JSON (else a
/// JSON string of the text).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem slug (`type`) of a problem+json body.
    pub fn slug(&self) -> Option<&str> {
        self.body.get("type").and_then(|v| v.as_str())
    }

    fn from_response(response: reqwest::blocking::Response) -> reqwest::Result<Self> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes()?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

/// The code commit the helpers send unless told otherwise.
pub const CODE_COMMIT: &str = "3f2c1e9a";

impl Receiver {
    pub fn paths(&self) -> ReceiverPaths {
        ReceiverPaths {
            store_root: self.store_root.clone(),
            incoming_root: self.incoming_root.clone(),
            index_path: self.index_path.clone(),
        }
    }

    /// The index, one JSON value per line. Panics on a line that does not parse.
    pub fn index_rows(&self) -> Vec<serde_json::Value> {
        self.paths().index_rows()
    }

    /// The stored archive of `(host, episode)`, if any.
    pub fn stored(&self, host: &str, episode: &str) -> Option<Vec<u8>> {
        std::fs::read(self.paths().archive(host, episode)).ok()
    }

    /// Every file under `incoming_root`.
    pub fn incoming_files(&self) -> Vec<PathBuf> {
        self.paths().incoming_files()
    }

    /// `http://<ip>:<port>` of the ops listener, from the `ops listening on …` line
    /// right after `listening on …` (panics, with the output, when it is not there).
    pub fn ops_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.process.stdout();
            let mut lines = out.lines();
            lines.next();
            if let Some(line) = lines.next() {
                return line
                    .strip_prefix("ops listening on ")
                    .unwrap_or_else(|| {
                        panic!("second stdout line is {line:?}\n{}", self.process.report())
                    })
                    .trim()
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no `ops listening on` line\n{}",
                self.process.report()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `<url>/v1/episodes/<host>/<episode>`.
    pub fn episode_url(&self, host: &str, episode: &str) -> String {
        format!("{}/v1/episodes/{host}/{episode}", self.url)
    }

    /// The CA the receiver's server certificate chains to.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The (certificate, key) files of `host` ("lab1" or "lab2") in the test PKI.
    pub fn identity(&self, host: &str) -> (&Path, &Path) {
        let (_, cert, key) = self
            .identities
            .iter()
            .find(|(h, _, _)| h == host)
            .unwrap_or_else(|| panic!("no client certificate for {host:?}"));
        (cert, key)
    }

    /// A client presenting `host`'s certificate from the test PKI.
    pub fn client(&self, host: &str) -> Client {
        https_client(&self.ca, Some(self.identity(host)))
    }

    /// A client that trusts the test CA and presents no certificate (also fine for a
    /// plain-HTTP receiver).
    pub fn plain_client(&self) -> Client {
        https_client(&self.ca, None)
    }

    /// PUTs `body` as `(host, episode)` with a correct digest, `X-Code-Commit` and
    /// `Content-Type: application/zstd`.
    pub fn put(&self, client: &Client, host: &str, episode: &str, body: &[u8]) -> Answer {
        self.put_with(client, host, episode, body, &[])
            .unwrap_or_else(|e| panic!("PUT {host}/{episode}: {}", error_chain(&e)))
    }

    /// As `put`, with extra headers (which replace the defaults of the same name),
    /// returning transport errors.
    pub fn put_with(
        &self,
        client: &Client,
        host: &str,
        episode: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> reqwest::Result<Answer> {
        let mut request = client
            .put(self.episode_url(host, episode))
            .header("repr-digest", Sha256::of(body).to_field())
            .header("x-code-commit", CODE_COMMIT)
            .header("content-type", "application/zstd");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body.to_vec()).send()?;
        Answer::from_response(response)
    }

    /// `GET <url><path>` with `client`.
    pub fn get(&self, client: &Client, path: &str) -> reqwest::Result<Answer> {
        Answer::from_response(client.get(format!("{}{path}", self.url)).send()?)
    }

    /// `HEAD` of an episode.
    pub fn head(&self, client: &Client, host: &str, episode: &str) -> Answer {
        let response = client
            .head(self.episode_url(host, episode))
            .send()
            .unwrap_or_else(|e| panic!("HEAD {host}/{episode}: {}", error_chain(&e)));
        Answer::from_response(response).expect("HEAD body")
    }
}

/// A blocking client that trusts only `ca` and presents `identity` (cert, key) if
/// given; 10 s timeout, so a hung receiver fails the test instead of hanging it.
pub fn https_client(ca: &Path, identity: Option<(&Path, &Path)>) -> Client {
    let roots = episode_common::tls::load_certs(ca).expect("load CA");
    let identity = identity.map(|(cert, key)| {
        (
            episode_common::tls::load_certs(cert).expect("load client cert"),
            episode_common::tls::load_key(key).expect("load client key"),
        )
    });
    let config = episode_common::tls::client_config(Some(&roots), identity).expect("client config");
    Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build client")
}

/// A client builder for plain-HTTP servers (the stub server): TLS is configured
/// with no trusted roots, so no process-wide rustls provider is needed (reqwest's
/// own `Client::new()` panics in this workspace: it is built without a provider).
/// 10 s timeout.
pub fn http_client_builder() -> reqwest::blocking::ClientBuilder {
    let config = episode_common::tls::client_config(Some(&[]), None).expect("client config");
    Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10))
}

/// A client for plain-HTTP servers; see `http_client_builder`.
pub fn http_client() -> Client {
    http_client_builder().build().expect("build client")
}

/// An error and all its sources on one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
