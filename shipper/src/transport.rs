//! Talking to the receiver: `GET /v1/health`, `HEAD` and `PUT`, over a client rebuilt
//! when a credential file changes; stalls abandoned after `idle_timeout`; redirects
//! never followed. Turns replies into `Answer` or `Failure`; decides nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use episode_common::fsx::FileStamp;
use episode_common::problem::Problem;
use episode_common::wire::{self, header};
use episode_common::{EpisodeId, HostId, Sha256, tls};
use futures_util::StreamExt as _;

use crate::config::{Config, ReceiverConfig};
use crate::meta::Meta;
use crate::pack::{Body, Packed};
use crate::progress::Progress;

/// Bytes of a response body kept (for quarantine reasons and logs).
const BODY_KEEP: usize = 4096;
/// Bytes of a response body read at most.
const BODY_READ_LIMIT: usize = 64 << 10;
const CHUNK: usize = 256 << 10;

/// No answer was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A configured credential file is missing or unreadable.
    Material(String),
    /// Connect, TLS, reset, or any error before a response.
    Connection(String),
    /// No bytes moved for `idle_timeout`.
    Stalled(String),
    /// The archive could not be read locally.
    Local(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Material(m)
            | Failure::Connection(m)
            | Failure::Stalled(m)
            | Failure::Local(m) => f.write_str(m),
        }
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub problem: Option<Problem>,
    /// The JSON body, or up to 4 KiB of text.
    pub body: serde_json::Value,
    pub retry_after: Option<Duration>,
    pub repr_digest: Option<Sha256>,
    pub tar_digest: Option<Sha256>,
    /// `Location` of a redirect (never followed).
    pub location: Option<String>,
}

impl Answer {
    pub fn problem_type(&self) -> Option<&str> {
        self.problem.as_ref().map(|p| p.slug.as_str())
    }

    /// A one-line description: the problem's detail (or title), or the status.
    pub fn error(&self) -> String {
        match &self.problem {
            Some(p) => {
                let text = [&p.detail, &p.title].into_iter().find(|t| !t.is_empty());
                match text {
                    Some(text) => format!("{} {}: {text}", self.status, p.slug),
                    None => format!("{} {}", self.status, p.slug),
                }
            }
            None if self.status >= 400 => format!("HTTP {}", self.status),
            None if (300..400).contains(&self.status) => format!(
                "HTTP {} redirect to {} (redirects are not followed)",
                self.status,
                self.location.as_deref().unwrap_or("nowhere (no Location)")
            ),
            None => String::new(),
        }
    }
}

struct Built {
    client: reqwest::Client,
    token: Option<String>,
    stamps: Vec<Option<FileStamp>>,
}

pub struct Transport {
    receiver: ReceiverConfig,
    host_id: HostId,
    base_url: String,
    pool_size: usize,
    built: Mutex<Option<Built>>,
}

/// Time since the last byte moved.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Transport {
    pub fn new(config: &Config) -> Self {
        Self {
            receiver: config.receiver.clone(),
            host_id: config.host_id.clone(),
            base_url: config.base_url().to_owned(),
            pool_size: config.upload_concurrency,
            built: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.base_url
    }

    fn files(&self) -> Vec<(&'static str, &PathBuf)> {
        let r = &self.receiver;
        let mut files = Vec::new();
        if let Some(p) = &r.ca_bundle {
            files.push(("receiver.ca_bundle", p));
        }
        if let Some(p) = &r.client_cert {
            files.push(("receiver.client_cert", p));
        }
        if let Some(p) = &r.client_key {
            files.push(("receiver.client_key", p));
        }
        if let Some(p) = &r.bearer_token_file {
            files.push(("receiver.bearer_token_file", p));
        }
        files
    }

    /// The client, rebuilt if a credential file changed since it was built.
    fn client(&self) -> Result<(reqwest::Client, Option<String>), Failure> {
        let files = self.files();
        let stamps: Vec<Option<FileStamp>> = files.iter().map(|(_, p)| FileStamp::of(p)).collect();
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = built.as_ref().filter(|b| b.stamps == stamps) {
            return Ok((b.client.clone(), b.token.clone()));
        }
        for ((key, path), stamp) in files.iter().zip(&stamps) {
            if stamp.is_none() {
                *built = None;
                return Err(Failure::Material(format!(
                    "mTLS material missing: {key} {} does not exist (yet)",
                    path.display()
                )));
            }
        }
        let new = self.build().inspect_err(|_| *built = None)?;
        if built.is_some() {
            tracing::info!(event = %episode_common::Event::CredentialsReloaded, receiver_url = %self.base_url, "the files in [receiver] changed on disk");
        }
        let pair = (new.client.clone(), new.token.clone());
        *built = Some(Built { stamps, ..new });
        Ok(pair)
    }

    fn build(&self) -> Result<Built, Failure> {
        let r = &self.receiver;
        let material = |key: &str, e: &dyn std::fmt::Display| {
            Failure::Material(format!("mTLS material missing: {key}: {e}"))
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(wire::user_agent("episode-shipper", crate::VERSION))
            .connect_timeout(r.connect_timeout.get())
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .pool_idle_timeout(Some(Duration::from_secs(60)))
            .pool_max_idle_per_host(self.pool_size)
            .redirect(reqwest::redirect::Policy::none())
            .http1_only();
        // reqwest is built without a process-wide crypto provider, so it always gets
        // our rustls config; for plain http:// (loopback tests) it is never used.
        let https = self.base_url.starts_with("https://");
        {
            let roots = match &r.ca_bundle {
                Some(p) => {
                    Some(tls::load_certs(p).map_err(|e| material("receiver.ca_bundle", &e))?)
                }
                None if https => None,
                None => Some(Vec::new()),
            };
            let identity = match (&r.client_cert, &r.client_key) {
                (Some(c), Some(k)) => Some((
                    tls::load_certs(c).map_err(|e| material("receiver.client_cert", &e))?,
                    tls::load_key(k).map_err(|e| material("receiver.client_key", &e))?,
                )),
                _ => None,
            };
            let config = tls::client_config(roots.as_deref(), identity)
                .map_err(|e| material("[receiver]", &e))?;
            builder = builder.tls_backend_preconfigured(config);
        }
        let token = match &r.bearer_token_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| material("receiver.bearer_token_file", &e))?;
                Some(text.trim().to_owned()).filter(|t| !t.is_empty())
            }
            None => None,
        };
        let client = builder.build().map_err(|e| {
            Failure::Material(format!("building the HTTP client: {}", describe(&e)))
        })?;
        Ok(Built {
            client,
            token,
            stamps: Vec::new(),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let (client, token) = self.client()?;
        let mut req = client
            .request(method, format!("{}{path}", self.base_url))
            .header(header::X_HOST_ID, self.host_id.as_str());
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Ok(req)
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Answer, Failure> {
        let idle = self.receiver.idle_timeout.get();
        let req = self
            .request(reqwest::Method::GET, "/v1/health")?
            .timeout(idle);
        let response = req
            .send()
            .await
            .map_err(|e| Failure::Connection(describe(&e)))?;
        read_answer(response, idle).await
    }

    /// `HEAD` of an episode: 200 with its digests when stored, 404 when not.
    pub async fn head(&self, episode_id: &EpisodeId) -> Result<Answer, Failure> {
        let idle = self.receiver.idle_timeout.get();
        let req = self
            .request(
                reqwest::Method::HEAD,
                &wire::episode_path(&self.host_id, episode_id),
            )?
            .timeout(idle);
        let response = req
            .send()
            .await
            .map_err(|e| Failure::Connection(describe(&e)))?;
        read_answer(response, idle).await
    }

    /// `PUT` of an episode's archive with every header protocol.md names.
    pub async fn put(
        &self,
        episode_id: &EpisodeId,
        packed: &Packed,
        meta: &Meta,
        progress: &Arc<Progress>,
    ) -> Result<Answer, Failure> {
        let idle = self.receiver.idle_timeout.get();
        let digests = &packed.digests;
        let mut req = self
            .request(
                reqwest::Method::PUT,
                &wire::episode_path(&self.host_id, episode_id),
            )?
            .header(reqwest::header::CONTENT_TYPE, "application/zstd")
            .header(reqwest::header::CONTENT_LENGTH, digests.bytes)
            .header(header::REPR_DIGEST, digests.sha256.to_field())
            .header(header::X_TAR_DIGEST, digests.tar_sha256.to_field());
        if let Some(commit) = &meta.code_commit {
            req = req.header(header::X_CODE_COMMIT, commit);
        }
        if let Some(started) = &meta.started_at {
            req = req.header(header::X_EPISODE_STARTED_AT, started);
        }
        let activity = Activity::new();
        let counted = {
            let (progress, activity) = (progress.clone(), activity.clone());
            move |chunk: &Bytes| {
                progress.add(chunk.len() as u64);
                activity.touch();
            }
        };
        let body = match &packed.body {
            Body::Memory(bytes) => {
                let chunks: Vec<Result<Bytes, std::io::Error>> = (0..bytes.len())
                    .step_by(CHUNK)
                    .map(|i| Ok(bytes.slice(i..(i + CHUNK).min(bytes.len()))))
                    .collect();
                let stream = futures_util::stream::iter(chunks).inspect(move |r| {
                    if let Ok(b) = r {
                        counted(b);
                    }
                });
                reqwest::Body::wrap_stream(stream)
            }
            Body::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Failure::Local(format!("opening {}: {e}", path.display())))?;
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file, CHUNK).inspect(move |r| {
                        if let Ok(b) = r {
                            counted(b);
                        }
                    });
                reqwest::Body::wrap_stream(stream)
            }
        };
        let send = req.body(body).send();
        let stall = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200).min(idle)).await;
                if activity.idle() >= idle {
                    return;
                }
            }
        };
        let response = tokio::select! {
            r = send => r.map_err(|e| Failure::Connection(describe(&e)))?,
            () = stall => return Err(Failure::Stalled(format!(
                "no bytes moved for {} (receiver.idle_timeout); upload abandoned",
                episode_common::Dur(idle)
            ))),
        };
        read_answer(response, idle).await
    }
}

async fn read_answer(mut response: reqwest::Response, idle: Duration) -> Result<Answer, Failure> {
    let status = response.status().as_u16();
    let headers = response.headers();
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = get("retry-after")
        .and_then(|v| crate::policy::parse_retry_after(&v, std::time::SystemTime::now()));
    let repr_digest = get(header::REPR_DIGEST).and_then(|v| Sha256::from_field(&v).ok());
    let tar_digest = get(header::X_TAR_DIGEST).and_then(|v| Sha256::from_field(&v).ok());
    let location = get("location");
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => return Err(Failure::Stalled("the answer's body stalled".into())),
            Ok(Err(e)) => return Err(Failure::Connection(describe(&e))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() >= BODY_READ_LIMIT {
                    break;
                }
            }
        }
    }
    let (problem, body) = parse_body(status, &bytes);
    Ok(Answer {
        status,
        problem,
        body,
        retry_after,
        repr_digest,
        tar_digest,
        location,
    })
}

/// The problem (of a 4xx/5xx) and the body to keep: the whole JSON value, or up to
/// 4 KiB of text. The problem needs only its `type`.
pub fn parse_body(status: u16, bytes: &[u8]) -> (Option<Problem>, serde_json::Value) {
    let json: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let problem = json
        .as_ref()
        .and_then(Problem::from_json)
        .filter(|_| status >= 400);
    let body = json.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(BODY_KEEP)]).into_owned();
        serde_json::Value::String(text)
    });
    (problem, body)
}

/// The whole error chain in one line, with TLS failures in plain words.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    let chain = parts.join(": ");
    match tls::explain_tls_failure(err) {
        Some(plain) => format!("TLS: {plain} ({chain})"),
        None => chain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use episode_common::problem::Slug;

    #[test]
    fn a_problem_with_only_a_type_is_read_and_its_body_kept_whole() {
        let (problem, body) = parse_body(400, br#"{"type":"digest-mismatch"}"#);
        let problem = problem.expect("a problem with only `type`");
        assert_eq!(problem.known_slug(), Some(Slug::DigestMismatch));
        assert_eq!(body, serde_json::json!({"type": "digest-mismatch"}));
        let answer = Answer {
            status: 400,
            problem: Some(problem),
            body,
            retry_after: None,
            repr_digest: None,
            tar_digest: None,
            location: None,
        };
        assert_eq!(answer.problem_type(), Some("digest-mismatch"));
        assert_eq!(answer.error(), "400 digest-mismatch");
        // A 2xx body is never a problem; text is kept up to 4 KiB.
        assert!(parse_body(200, br#"{"type":"conflict"}"#).0.is_none());
        let (problem, body) = parse_body(502, &b"x".repeat(10_000));
        assert!(problem.is_none());
        assert_eq!(body.as_str().map(str::len), Some(BODY_KEEP));
    }
}
