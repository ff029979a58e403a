//! The main listener's routes: `/livez`, `/v1/health`, PUT/HEAD of an episode,
//! `/metrics` without `metrics_listen`; each calls the `admission` steps in protocol
//! order and answers what they decide (an `ApiError` becomes problem+json in `error`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts as _, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use episode_common::problem::Slug;
use episode_common::wire::{self, HealthBody, IndexRow, Stored, StoredBody, header};
use episode_common::{EpisodeId, Event, HostId};
use http::{HeaderMap, HeaderValue, StatusCode, request::Parts};
use http_body_util::BodyExt as _;
use time::OffsetDateTime;

use crate::admission::{self, Dedupe, PeerIdentity, PutHeaders};
use crate::error::{ApiError, Refusal};
use crate::index::{Entry, Published, Upload};
use crate::slots::Slot;
use crate::upload::{self, ReceiveError};
use crate::{AppState, VERSION};

/// The most body an answer decided before the body reads and discards to keep
/// the connection.
const BEFORE_BODY_DISCARD_LIMIT: u64 = 1 << 20;

/// The main listener's routes. `/metrics` is among them only without
/// `metrics_listen` (then it is served there, by `ops::app`, instead).
pub fn app(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/livez", get(livez))
        .route("/v1/health", get(health))
        .route(
            "/v1/episodes/{host_id}/{episode_id}",
            put(put_episode).head(head_episode),
        )
        .route("/v1", any(v1_unknown))
        .route("/v1/{*rest}", any(v1_unknown));
    if state.config.metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics_authenticated));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

pub(crate) async fn livez() -> &'static str {
    "ok"
}

pub(crate) async fn not_found(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    answer_before_body(
        Refusal::new(Slug::NotFound, "no such route").into_response(),
        body,
        &parts.headers,
    )
}

/// Every `/v1/*` path without a route: authenticated (401) and identity-bound (403)
/// like the rest; then 400 `invalid-id` under `/v1/episodes` (any shape but
/// exactly `{host_id}/{episode_id}`), else 404. The body is never read.
async fn v1_unknown(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let peer = parts.extensions.get::<PeerIdentity>();
    let x_host_id = header_str(&parts.headers, header::X_HOST_ID);
    let problem = match authenticate(&state, &parts.headers)
        .and_then(|()| one_x_host_id(&parts.headers))
        .and_then(|()| admission::bind_identity(peer, None, x_host_id))
    {
        Err(p) => p,
        Ok(()) => admission::unrouted_v1(parts.uri.path()),
    };
    answer_before_body(problem.into_response(), body, &parts.headers)
}

async fn method_not_allowed(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let problem = match authenticate(&state, &parts.headers) {
        Err(p) if parts.uri.path().starts_with("/v1/") => p,
        _ => Refusal::new(
            Slug::MethodNotAllowed,
            "this route does not take that method",
        ),
    };
    answer_before_body(problem.into_response(), body, &parts.headers)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `X-Host-Id` at most once (a second one is never silently ignored).
fn one_x_host_id(headers: &HeaderMap) -> Result<(), Refusal> {
    admission::one_host_id_header(headers.get_all(header::X_HOST_ID).iter().count())
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    let token = state.credentials.token();
    admission::authenticate(
        header_str(headers, http::header::AUTHORIZATION.as_str()),
        token.as_deref(),
    )
}

async fn health(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let response = health_inner(
        &state,
        req.headers(),
        req.extensions().get::<PeerIdentity>(),
    )
    .await;
    state.metrics.record("health", &response);
    response
}

async fn health_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    peer: Option<&PeerIdentity>,
) -> Response {
    let x_host_id = header_str(headers, header::X_HOST_ID);
    if let Err(p) = authenticate(state, headers)
        .and_then(|()| one_x_host_id(headers))
        .and_then(|()| admission::bind_identity(peer, None, x_host_id))
    {
        return p.into_response();
    }
    let reason = readiness(state).await.reason;
    let body = HealthBody {
        ok: reason.is_none(),
        schema_version: wire::SCHEMA_VERSION,
        host_id: x_host_id
            .map(str::to_owned)
            .or_else(|| peer.and_then(|p| p.primary.clone())),
        version: VERSION.to_owned(),
        server_time: wire::format_rfc3339(OffsetDateTime::now_utc()),
        reason,
    };
    let status = if body.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The one verdict of `/v1/health`, `/readyz` and `episode_receiver_ready`.
pub struct Readiness {
    /// Why not ready; it starts with what is down: `draining`, `index` or `store`.
    pub reason: Option<String>,
    pub store_up: bool,
    pub index_up: bool,
}

/// Ready: `AppState::readiness` (the `health::verdict`), with which dependency it
/// names as down.
pub async fn readiness(state: &Arc<AppState>) -> Readiness {
    let reason = state.readiness().await.err();
    let names = |part: &str| reason.as_deref().is_some_and(|r| r.starts_with(part));
    Readiness {
        store_up: !names("store"),
        index_up: !names("index"),
        reason,
    }
}

async fn metrics_authenticated(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(p) = authenticate(&state, &headers) {
        return p.into_response();
    }
    crate::ops::metrics(State(state)).await
}

/// Authenticates, binds identity and validates the ids of an episode route.
async fn episode_target(
    state: &AppState,
    parts: &mut Parts,
) -> Result<(HostId, EpisodeId), Refusal> {
    authenticate(state, &parts.headers)?;
    let path = Path::<(String, String)>::from_request_parts(parts, &())
        .await
        .ok();
    let peer = parts.extensions.get::<PeerIdentity>();
    let x_host_id = header_str(&parts.headers, header::X_HOST_ID);
    one_x_host_id(&parts.headers)?;
    admission::bind_identity(peer, path.as_ref().map(|p| p.0.0.as_str()), x_host_id)?;
    match path {
        Some(Path((host_id, episode_id))) => admission::parse_ids(&host_id, &episode_id),
        None => Err(Refusal::new(
            Slug::InvalidId,
            "the path is not valid UTF-8 after percent-decoding",
        )),
    }
}

async fn head_episode(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let response = match episode_target(&state, &mut parts).await {
        Err(p) => p.into_response(),
        Ok((host_id, episode_id)) => match lookup(&state, &host_id, &episode_id).await {
            None => Refusal::new(
                Slug::NotFound,
                format!("{host_id}/{episode_id} is not stored"),
            )
            .into_response(),
            Some(entry) => {
                let mut response = StatusCode::OK.into_response();
                let headers = response.headers_mut();
                headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(entry.bytes));
                insert_digest(headers, header::REPR_DIGEST, entry.sha256.to_field());
                if let Some(tar) = entry.tar_sha256 {
                    insert_digest(headers, header::X_TAR_DIGEST, tar.to_field());
                }
                response
            }
        },
    };
    state.metrics.record("head", &response);
    response
}

/// The stored entry of a key whose archive exists (a stat, off the async workers).
async fn lookup(state: &Arc<AppState>, host_id: &HostId, episode_id: &EpisodeId) -> Option<Entry> {
    let (state, host_id, episode_id) = (state.clone(), host_id.clone(), episode_id.clone());
    tokio::task::spawn_blocking(move || {
        crate::index::stored_entry(
            &state.index,
            &state.config.store_root,
            &host_id,
            &episode_id,
        )
    })
    .await
    .ok()
    .flatten()
}

fn insert_digest(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

fn stored_response(
    status: StatusCode,
    host_id: &HostId,
    episode_id: &EpisodeId,
    entry: &Entry,
) -> Response {
    let body = StoredBody {
        host_id: host_id.clone(),
        episode_id: episode_id.clone(),
        sha256: entry.sha256,
        bytes: entry.bytes,
        code_commit: entry.code_commit.as_deref().map(str::to_owned),
        stored: if status == StatusCode::CREATED {
            Stored::Created
        } else {
            Stored::AlreadyPresent
        },
        received_at: entry.received_at_rfc3339(),
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(StoredBytes(entry.bytes));
    let headers = response.headers_mut();
    insert_digest(headers, header::REPR_DIGEST, entry.sha256.to_field());
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&wire::episode_path(host_id, episode_id))
    {
        headers.insert(http::header::LOCATION, location);
    }
    response
}

/// The decision of steps 1–3.
enum Decision {
    AlreadyPresent(HostId, EpisodeId, Entry),
    Upload(Plan),
}

struct Plan {
    host_id: HostId,
    episode_id: EpisodeId,
    put: PutHeaders,
    client: Option<String>,
    _slot: Slot,
}

async fn put_episode(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let response = match decide_put(&state, &mut parts).await {
        Err(error) => {
            let response = error.into_response();
            let problem_type = response
                .extensions()
                .get::<crate::metrics::ProblemType>()
                .map(|p| p.0);
            log_answer(&parts, response.status().as_u16(), problem_type, started);
            answer_before_body(response, body, &parts.headers)
        }
        Ok(Decision::AlreadyPresent(host_id, episode_id, entry)) => {
            log_answer(&parts, 200, None, started);
            answer_before_body(
                stored_response(StatusCode::OK, &host_id, &episode_id, &entry),
                body,
                &parts.headers,
            )
        }
        Ok(Decision::Upload(plan)) => {
            let response = receive_and_publish(&state, plan, body, started).await;
            state
                .metrics
                .observe_upload(started.elapsed().as_secs_f64(), stored_bytes(&response));
            // A 201 was logged once, as `stored`; every other answer here.
            if response.status() != StatusCode::CREATED {
                log_answer(&parts, response.status().as_u16(), None, started);
            }
            response
        }
    };
    state.metrics.record("put", &response);
    state.record_answer(&parts, &response);
    response
}

/// The size of the archive a 201 stored (put on the response by `stored_response`).
fn stored_bytes(response: &Response) -> Option<u64> {
    (response.status() == StatusCode::CREATED)
        .then(|| response.extensions().get::<StoredBytes>().map(|b| b.0))
        .flatten()
}

/// The size of a stored archive, on its 201.
#[derive(Clone, Copy)]
struct StoredBytes(u64);

fn log_answer(parts: &Parts, status_code: u16, problem_type: Option<&str>, started: Instant) {
    let url_path = parts.uri.path();
    let duration_ms = started.elapsed().as_millis() as u64;
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(event = %Event::PutAnswered, url_path, status_code, problem_type, duration_ms)
        };
    }
    match status_code {
        500.. => event!(error),
        _ => event!(info),
    }
}

async fn decide_put(state: &Arc<AppState>, parts: &mut Parts) -> Result<Decision, ApiError> {
    if state.is_draining() {
        return Err(Refusal::new(
            Slug::Unavailable,
            "the receiver is shutting down; retry shortly",
        )
        .into());
    }
    let (host_id, episode_id) = episode_target(state, parts).await?;
    let live = state.live();
    let put = admission::parse_put_headers(
        &parts.headers,
        &episode_id,
        live.code_commit,
        live.started_at,
    )?;
    let free = state.free_bytes().await.map_err(|e| ApiError::Internal {
        what: "free space check",
        source: e.into(),
    })?;
    let free_after_claims = free.saturating_sub(state.slots.claimed_bytes());
    admission::admit(
        &put,
        &live.limits,
        OffsetDateTime::now_utc(),
        free_after_claims,
    )?;
    let slot = state.slots.try_acquire(&host_id, put.content_length)?;
    let stored = match state.index.contains(&host_id, &episode_id) {
        true => lookup(state, &host_id, &episode_id).await,
        false => None,
    };
    match admission::dedupe(put.sha256, put.tar_sha256, stored) {
        Dedupe::New => {
            let client = parts
                .extensions
                .get::<PeerIdentity>()
                .and_then(|p| p.primary.clone());
            Ok(Decision::Upload(Plan {
                host_id,
                episode_id,
                put,
                client,
                _slot: slot,
            }))
        }
        Dedupe::AlreadyPresent(entry) => Ok(Decision::AlreadyPresent(host_id, episode_id, entry)),
        Dedupe::Conflict(problem) => Err(problem.into()),
    }
}

/// Sends an answer decided before the body was read: a small body is read and
/// discarded in the background so the connection can be reused; a large one (or
/// one the client is waiting on `100-continue` to send) closes the connection.
fn answer_before_body(mut response: Response, body: Body, headers: &HeaderMap) -> Response {
    let length = header_str(headers, http::header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = header_str(headers, http::header::EXPECT.as_str())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    match length {
        Some(0) => {}
        // No Content-Length and not chunked: there is no body (a GET, a HEAD).
        None if !headers.contains_key(http::header::TRANSFER_ENCODING) => {}
        Some(n) if n <= BEFORE_BODY_DISCARD_LIMIT && !expects_continue => {
            tokio::spawn(async move {
                let drain = async {
                    let mut body = body;
                    while let Some(Ok(_)) = body.frame().await {}
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            });
        }
        _ => {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// The answer to a body that could not be received.
fn receive_failed(error: ReceiveError, host_id: &HostId, episode_id: &EpisodeId) -> Response {
    match error {
        ReceiveError::Idle(d) => {
            let mut response = Refusal::new(
                Slug::BodyTimeout,
                format!("no body bytes arrived for {}", episode_common::Dur(d)),
            )
            .into_response();
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        ReceiveError::Client(e) => {
            tracing::info!(event = %Event::UploadAbandoned, host_id = %host_id, episode_id = %episode_id, error = %e, "client stopped sending");
            Refusal::new(
                Slug::LengthMismatch,
                "the body ended before Content-Length bytes",
            )
            .into_response()
        }
        ReceiveError::TooLong(n) => Refusal::new(
            Slug::LengthMismatch,
            format!("the body is longer than {n} bytes"),
        )
        .into_response(),
        ReceiveError::Io(source) => ApiError::Storage {
            what: "writing an upload",
            source,
        }
        .into_response(),
    }
}

async fn receive_and_publish(
    state: &AppState,
    plan: Plan,
    body: Body,
    started: Instant,
) -> Response {
    let Plan {
        host_id,
        episode_id,
        put,
        client,
        _slot,
    } = plan;
    // Small bodies go to unnamed spools (no name to create and remove: cheaper, and
    // their writers never contend on `incoming_root`'s directory lock); a streamed
    // upload gets a named temp file, visible in `incoming_root` while it arrives.
    let small = put.content_length <= upload::SMALL_BODY;
    let spool_dir = state.spool.dir.clone();
    let spool_name =
        (!(small && state.spool.unnamed)).then(|| state.temp_path(&host_id, &episode_id));
    let idle = state.live().config.body_idle_timeout.get();
    let metrics = &state.metrics;
    let count = |n: u64| {
        metrics.upload_bytes.inc_by(n);
    };
    // Small bodies are read into memory and spooled only once they are known to be
    // whole and right; large ones stream into the spool as they arrive.
    let (received, upload) = if small {
        match upload::receive_small(body, put.content_length, idle, count).await {
            Ok((received, data)) => (
                received,
                Upload::Small {
                    data,
                    dir: spool_dir,
                    name: spool_name,
                },
            ),
            Err(e) => return receive_failed(e, &host_id, &episode_id),
        }
    } else {
        let receiving =
            upload::receive(body, spool_dir, spool_name, put.content_length, idle, count);
        match receiving.await {
            Ok((received, spool)) => (received, Upload::Spooled(spool)),
            Err(e) => return receive_failed(e, &host_id, &episode_id),
        }
    };
    if received.bytes != put.content_length {
        return Refusal::new(
            Slug::LengthMismatch,
            format!(
                "received {} bytes, Content-Length said {}",
                received.bytes, put.content_length
            ),
        )
        .into_response();
    }
    if received.sha256 != put.sha256 {
        return Refusal::new(
            Slug::DigestMismatch,
            format!(
                "the body's sha256 is {}, Repr-Digest said {}",
                received.sha256, put.sha256
            ),
        )
        .remediation("the archive changed or was damaged in transit; pack it again and retry")
        .into_response();
    }
    let row = IndexRow {
        host_id: host_id.clone(),
        episode_id: episode_id.clone(),
        sha256: received.sha256,
        tar_sha256: put.tar_sha256,
        bytes: received.bytes,
        code_commit: put.code_commit.clone(),
        started_at: put.started_at.map(wire::format_rfc3339),
        received_at: wire::format_rfc3339(OffsetDateTime::now_utc()),
        client,
    };
    match state.committer.publish(upload, row).await {
        Ok(Published::Created(entry)) => {
            state.metrics.stored.inc();
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(event = %Event::Stored, host_id = %host_id, episode_id = %episode_id, bytes = entry.bytes, sha256 = %entry.sha256, duration_ms = ms);
            stored_response(StatusCode::CREATED, &host_id, &episode_id, &entry)
        }
        Ok(Published::Existing(entry)) => {
            match admission::dedupe(put.sha256, put.tar_sha256, Some(entry)) {
                Dedupe::AlreadyPresent(entry) => {
                    stored_response(StatusCode::OK, &host_id, &episode_id, &entry)
                }
                Dedupe::Conflict(problem) => problem.into_response(),
                Dedupe::New => ApiError::Internal {
                    what: "publish",
                    source: "an existing entry vanished".into(),
                }
                .into_response(),
            }
        }
        Err(source) => ApiError::Storage {
            what: "publishing an upload",
            source,
        }
        .into_response(),
    }
}
