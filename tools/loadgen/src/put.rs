//! `put`: N concurrent clients PUTting pre-generated bodies at a URL template.
//!
//! Owns the load: one reqwest client (so one HTTP/1.1 keep-alive connection, mTLS
//! when the template is `https://`) per worker, unique episode ids per request,
//! the protocol's request headers (Content-Length, Repr-Digest, X-Code-Commit,
//! X-Host-Id, Content-Type `application/zstd`, and a bearer token when given), and
//! the per-request timing. Bodies are random bytes generated and hashed once, before
//! the clock starts, and shared by reference count, so the generator's own cost per
//! request is a header block and a TLS write. It measures its own CPU time too,
//! which is how a run shows that the load generator was not the bottleneck.
//!
//! It never retries and never interprets answers beyond counting statuses: a 429 or
//! 409 is a result to report, not something to work around.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use episode_common::Sha256;
use episode_common::tls;
use reqwest::header::{self, HeaderMap, HeaderValue};
use sha2::Digest as _;

use crate::dataset::Rng;
use crate::stats::{Report, Tally};
use crate::template::Template;

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests in total.
    Requests(u64),
    /// After this long; requests in flight at the deadline still finish and count.
    Duration(Duration),
}

/// Everything `put` needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub template: Template,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
    pub concurrency: usize,
    pub size: u64,
    pub stop: Stop,
    /// Requests per client before the clock starts (they open the connections).
    pub warmup: u64,
    pub host: String,
    pub commit: String,
    /// Prefix of the episode ids; default: a per-run nonce, so reruns never collide.
    pub id_prefix: Option<String>,
    pub timeout: Duration,
}

/// One body and its `Repr-Digest` value.
struct Body {
    bytes: Bytes,
    digest: HeaderValue,
}

/// How many distinct bodies to cycle through: a few, within 64 MiB.
pub fn body_count(size: u64) -> usize {
    ((64u64 << 20) / size.max(1)).clamp(1, 16) as usize
}

fn make_bodies(size: u64, n: usize, seed: u64) -> Result<Vec<Body>> {
    let size = usize::try_from(size).context("--size does not fit in memory")?;
    (0..n)
        .map(|i| {
            let mut buf = vec![0u8; size];
            Rng::new(seed.wrapping_add(i as u64)).fill(&mut buf);
            let digest = Sha256(sha2::Sha256::digest(&buf).into()).to_field();
            Ok(Body {
                bytes: Bytes::from(buf),
                digest: HeaderValue::from_str(&digest).context("digest header")?,
            })
        })
        .collect()
}

/// An id prefix unique to this run.
fn run_nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("lg{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// The episode id of request `seq` of worker `worker`.
pub fn request_id(prefix: &str, worker: usize, seq: u64) -> String {
    format!("{prefix}-{worker}-{seq}")
}

/// The headers every request carries; reads the bearer token file.
fn default_headers(options: &Options) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    headers.insert(
        "x-code-commit",
        HeaderValue::from_str(&options.commit).context("--commit is not a header value")?,
    );
    headers.insert(
        "x-host-id",
        HeaderValue::from_str(&options.host).context("--host is not a header value")?,
    );
    if let Some(path) = &options.bearer_token_file {
        let token =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .with_context(|| format!("{}: not a header value", path.display()))?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// One client, so one keep-alive connection; does no I/O.
fn client_for(
    options: &Options,
    headers: HeaderMap,
    tls_config: Option<&rustls::ClientConfig>,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(options.timeout)
        .user_agent(episode_common::wire::user_agent(
            "episode-loadgen",
            env!("CARGO_PKG_VERSION"),
        ))
        .default_headers(headers);
    if let Some(config) = tls_config {
        builder = builder.tls_backend_preconfigured(config.clone());
    }
    builder.build().context("building the HTTP client")
}

fn tls_config(options: &Options) -> Result<Option<rustls::ClientConfig>> {
    if !options.template.is_https() {
        return Ok(None);
    }
    let roots = options
        .ca
        .as_deref()
        .map(tls::load_certs)
        .transpose()
        .context("--ca")?;
    let identity = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => Some((
            tls::load_certs(cert).context("--cert")?,
            tls::load_key(key).context("--key")?,
        )),
        (None, None) => None,
        _ => bail!("--cert and --key go together"),
    };
    Ok(Some(
        tls::client_config(roots.as_deref(), identity).context("TLS client configuration")?,
    ))
}

/// Why a request got no answer, in one line (the TLS reason when there is one).
fn describe(err: &reqwest::Error) -> String {
    if let Some(tls) = tls::explain_tls_failure(err) {
        return format!("TLS: {tls}");
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Sends one PUT and reads the whole answer; the status, or the transport error.
async fn put_once(
    client: &reqwest::Client,
    url: String,
    body: &Body,
) -> Result<u16, reqwest::Error> {
    let response = client
        .put(url)
        .header("repr-digest", body.digest.clone())
        .body(body.bytes.clone())
        .send()
        .await?;
    let status = response.status().as_u16();
    response.bytes().await?;
    Ok(status)
}

struct Worker {
    index: usize,
    client: reqwest::Client,
    template: Arc<Template>,
    host: Arc<str>,
    prefix: Arc<str>,
    bodies: Arc<Vec<Body>>,
}

impl Worker {
    async fn warm_up(&self, n: u64) {
        for seq in 0..n {
            let url = self.template.expand(
                &self.host,
                &request_id(&self.prefix, self.index, u64::MAX - seq),
            );
            let _ = put_once(&self.client, url, &self.bodies[0]).await;
        }
    }

    async fn run(self, stop: Stop, issued: Arc<AtomicU64>) -> Tally {
        let mut tally = Tally::default();
        let deadline = match stop {
            Stop::Duration(d) => Some(Instant::now() + d),
            Stop::Requests(_) => None,
        };
        let mut seq = 0u64;
        loop {
            match (stop, deadline) {
                (Stop::Requests(n), _) => {
                    if issued.fetch_add(1, Ordering::Relaxed) >= n {
                        break;
                    }
                }
                (_, Some(deadline)) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                _ => unreachable!("a duration stop has a deadline"),
            }
            let body = &self.bodies[(seq as usize + self.index) % self.bodies.len()];
            let url = self
                .template
                .expand(&self.host, &request_id(&self.prefix, self.index, seq));
            seq += 1;
            let started = Instant::now();
            match put_once(&self.client, url, body).await {
                Ok(status) => {
                    let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                    *tally.by_status.entry(status).or_default() += 1;
                    tally.latencies_us.push(us);
                    if (200..300).contains(&status) {
                        tally.ok_latencies_us.push(us);
                        tally.ok_bytes += body.bytes.len() as u64;
                    }
                }
                Err(e) => {
                    tally.transport_errors += 1;
                    tally.note_error(describe(&e));
                }
            }
        }
        tally
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass, which is zeroed and ours.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs the load and reports.
pub async fn run(options: Options) -> Result<Report> {
    if options.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // Files and body generation off the async workers, before the clock.
    let setup = options.clone();
    let (tls_config, headers, bodies) = tokio::task::spawn_blocking(move || -> Result<_> {
        let bodies = make_bodies(setup.size, body_count(setup.size), 0x5EED)?;
        Ok((tls_config(&setup)?, default_headers(&setup)?, bodies))
    })
    .await
    .context("setting up the load")??;
    let bodies = Arc::new(bodies);
    let template = Arc::new(options.template.clone());
    let host: Arc<str> = options.host.as_str().into();
    let prefix: Arc<str> = options.id_prefix.clone().unwrap_or_else(run_nonce).into();
    let mut workers = Vec::with_capacity(options.concurrency);
    for index in 0..options.concurrency {
        workers.push(Worker {
            index,
            client: client_for(&options, headers.clone(), tls_config.as_ref())?,
            template: template.clone(),
            host: host.clone(),
            prefix: prefix.clone(),
            bodies: bodies.clone(),
        });
    }
    // Warm-up: every client opens its connection (and handshakes) before the clock
    // starts; the barrier releases them all at once.
    let issued = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(options.concurrency + 1));
    let handles: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            let (barrier, issued) = (barrier.clone(), issued.clone());
            let (warmup, stop) = (options.warmup, options.stop);
            tokio::spawn(async move {
                worker.warm_up(warmup).await;
                barrier.wait().await;
                worker.run(stop, issued).await
            })
        })
        .collect();
    barrier.wait().await;
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let mut tally = Tally::default();
    for handle in handles {
        tally.merge(handle.await.context("worker task")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu_before;
    Ok(Report::new(
        options.template.to_string(),
        options.concurrency,
        options.size,
        elapsed,
        tally,
        cpu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_unique_per_worker_and_sequence() {
        let prefix = run_nonce();
        let a = request_id(&prefix, 0, 1);
        let b = request_id(&prefix, 1, 0);
        assert_ne!(a, b);
        for id in [a, b, request_id(&prefix, 63, u64::MAX)] {
            assert!(episode_common::EpisodeId::new(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn a_few_bodies_within_64_mib() {
        assert_eq!(body_count(4096), 16);
        assert_eq!(body_count(16 << 20), 4);
        assert_eq!(body_count(256 << 20), 1);
        assert_eq!(body_count(0), 16);
    }

    #[test]
    fn every_request_carries_the_protocol_headers_and_a_trimmed_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  s3cret\n").unwrap();
        let options = Options {
            template: Template::parse("https://h/v1/episodes/{host}/{id}").unwrap(),
            ca: None,
            cert: None,
            key: None,
            bearer_token_file: Some(token),
            concurrency: 1,
            size: 1,
            stop: Stop::Requests(1),
            warmup: 0,
            host: "lab7".into(),
            commit: "abc123".into(),
            id_prefix: None,
            timeout: Duration::from_secs(1),
        };
        let headers = default_headers(&options).unwrap();
        assert_eq!(headers["content-type"], "application/zstd");
        assert_eq!(headers["x-code-commit"], "abc123");
        assert_eq!(headers["x-host-id"], "lab7");
        assert_eq!(headers["authorization"], "Bearer s3cret");
        assert!(headers["authorization"].is_sensitive());
        let missing = Options {
            bearer_token_file: Some(dir.path().join("nope")),
            ..options
        };
        let err = format!("{:#}", default_headers(&missing).unwrap_err());
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bodies_carry_their_own_digest() {
        let bodies = make_bodies(1000, 2, 1).unwrap();
        assert_ne!(bodies[0].bytes, bodies[1].bytes);
        let want = Sha256::of(&bodies[1].bytes).to_field();
        assert_eq!(bodies[1].digest.to_str().unwrap(), want);
    }
}
