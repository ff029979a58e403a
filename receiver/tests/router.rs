//! In-process tests of the receiver's router: every status code and problem slug,
//! and the order in which protocol.md says they are decided. The real store, index
//! writer and filesystem are used; only the socket is skipped (the e2e package
//! covers TLS and processes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use episode_common::Sha256;
use episode_receiver::admission::PeerIdentity;
use episode_receiver::config::Config;
use episode_receiver::{AppState, app};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

struct Env {
    dir: tempfile::TempDir,
    state: Arc<AppState>,
}

fn env(extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut text = format!(
        "store_root = {:?}\nincoming_root = {:?}\nindex_path = {:?}\n",
        root.join("store"),
        root.join("incoming"),
        root.join("index.jsonl"),
    );
    for (key, default) in [
        ("free_space_reserve", "\"1MiB\""),
        ("body_idle_timeout", "\"300ms\""),
    ] {
        if !extra.contains(key) {
            text.push_str(&format!("{key} = {default}\n"));
        }
    }
    text.push_str(extra);
    let path = root.join("receiver.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    let (state, _) = episode_receiver::open(config, &path).unwrap();
    Env { dir, state }
}

impl Env {
    fn index_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("index.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn incoming_is_empty(&self) -> bool {
        std::fs::read_dir(self.dir.path().join("incoming"))
            .unwrap()
            .next()
            .is_none()
    }

    fn stored(&self, host: &str, episode: &str) -> Option<Vec<u8>> {
        std::fs::read(
            self.dir
                .path()
                .join("store")
                .join(host)
                .join(format!("{episode}.tar.zst")),
        )
        .ok()
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
        let response: Response<Body> = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, body)
    }
}

fn lab1() -> PeerIdentity {
    PeerIdentity {
        names: vec!["lab1".into()],
        primary: Some("lab1".into()),
    }
}

/// A PUT that passes every check for `body`.
fn put(host: &str, episode: &str, body: &[u8]) -> http::request::Builder {
    put_len(host, episode, body, body.len() as u64)
}

/// A PUT whose digest is of `body` but whose Content-Length says `len`.
fn put_len(host: &str, episode: &str, body: &[u8], len: u64) -> http::request::Builder {
    Request::put(format!("/v1/episodes/{host}/{episode}"))
        .header("content-length", len)
        .header("repr-digest", Sha256::of(body).to_field())
        .header("x-code-commit", "3f2c1e9a")
        .header("content-type", "application/zstd")
}

fn with_peer(mut req: Request<Body>, peer: PeerIdentity) -> Request<Body> {
    req.extensions_mut().insert(peer);
    req
}

#[tokio::test]
async fn stores_once_then_answers_200_then_409() {
    let env = env("");
    let (status, headers, body) = env
        .send(
            put("lab1", "01EPISODE", b"one")
                .body(Body::from("one"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["stored"], "created");
    assert_eq!(body["sha256"], Sha256::of(b"one").to_hex());
    assert_eq!(body["bytes"], 3);
    assert_eq!(body["code_commit"], "3f2c1e9a");
    assert_eq!(headers["location"], "/v1/episodes/lab1/01EPISODE");
    assert_eq!(
        headers["repr-digest"],
        Sha256::of(b"one").to_field().as_str()
    );
    assert_eq!(env.stored("lab1", "01EPISODE").unwrap(), b"one");

    let (status, headers, body) = env
        .send(
            put("lab1", "01EPISODE", b"one")
                .body(Body::from("one"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["stored"].as_str()),
        (StatusCode::OK, Some("already_present"))
    );
    assert_eq!(
        headers["repr-digest"],
        Sha256::of(b"one").to_field().as_str(),
        "a 200 reports the stored archive's digest"
    );
    assert!(
        !headers.contains_key("location"),
        "a 200 has no Location: {headers:?}"
    );

    let (status, headers, body) = env
        .send(
            put("lab1", "01EPISODE", b"two")
                .body(Body::from("two"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["type"], "conflict");
    assert_eq!(body["stored_sha256"], Sha256::of(b"one").to_hex());
    assert_eq!(
        env.stored("lab1", "01EPISODE").unwrap(),
        b"one",
        "a conflict never replaces"
    );
    assert_eq!(env.index_lines().len(), 1);
    assert!(env.incoming_is_empty());
}

#[tokio::test]
async fn same_tar_digest_with_other_compression_is_already_present() {
    let env = env("");
    let tar = Sha256::of(b"the tar stream").to_field();
    let first = put("lab1", "E1", b"zstd-3")
        .header("x-tar-digest", &tar)
        .body(Body::from("zstd-3"))
        .unwrap();
    assert_eq!(env.send(first).await.0, StatusCode::CREATED);
    let second = put("lab1", "E1", b"zstd-19")
        .header("x-tar-digest", &tar)
        .body(Body::from("zstd-19"))
        .unwrap();
    let (status, _, body) = env.send(second).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["sha256"],
        Sha256::of(b"zstd-3").to_hex(),
        "a 200 reports the stored archive"
    );
    assert_eq!(
        env.index_lines()[0]["tar_sha256"],
        Sha256::of(b"the tar stream").to_hex()
    );
}

#[tokio::test]
async fn every_header_problem_has_its_slug_and_status() {
    let env = env("[window]\nmax_age = \"30d\"\nmax_future = \"1h\"\n");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ok = |b: http::request::Builder| b.header("x-episode-started-at", now.to_string());
    let cases: Vec<(http::request::Builder, StatusCode, &str)> = vec![
        (
            ok(put("lab1", "a..b", b"x")),
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            ok(put("lab1", ".hidden", b"x")),
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            ok(put("lab1", "%2e%2e", b"x")),
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            ok(put("lab1", "a%2Fb", b"x")),
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            ok(put("la%20b", "E1", b"x")),
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            ok(Request::put("/v1/episodes/lab1/E1")
                .header("repr-digest", Sha256::of(b"x").to_field())
                .header("x-code-commit", "c")),
            StatusCode::LENGTH_REQUIRED,
            "length-required",
        ),
        (
            ok(Request::put("/v1/episodes/lab1/E1")
                .header("content-length", 1)
                .header("x-code-commit", "c")),
            StatusCode::BAD_REQUEST,
            "missing-digest",
        ),
        (
            ok(put("lab1", "E1", b"x").header("repr-digest", "sha-256=:nope:")),
            StatusCode::BAD_REQUEST,
            "bad-digest-header",
        ),
        (
            ok(Request::put("/v1/episodes/lab1/E1")
                .header("content-length", 1)
                .header("repr-digest", Sha256::of(b"x").to_field())),
            StatusCode::BAD_REQUEST,
            "missing-code-commit",
        ),
        (
            put("lab1", "E1", b"x"),
            StatusCode::BAD_REQUEST,
            "missing-started-at",
        ),
        (
            put("lab1", "E1", b"x").header("x-episode-started-at", "tuesday"),
            StatusCode::BAD_REQUEST,
            "missing-started-at",
        ),
        (
            ok(Request::put("/v1/episodes/lab1/E1")
                .header("content-length", 1)
                .header("repr-digest", Sha256::of(b"x").to_field())
                .header("x-code-commit", "not a commit")),
            StatusCode::BAD_REQUEST,
            "missing-code-commit",
        ),
        (
            ok(Request::put("/v1/episodes/lab1/E1")
                .header("content-length", "one")
                .header("repr-digest", Sha256::of(b"x").to_field())
                .header("x-code-commit", "c")),
            StatusCode::LENGTH_REQUIRED,
            "length-required",
        ),
        (
            ok(put("lab1", "E1", b"x").header("content-type", "text/plain")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            put("lab1", "E1", b"x").header("x-episode-started-at", (now - 31 * 86_400).to_string()),
            StatusCode::PRECONDITION_FAILED,
            "out-of-window",
        ),
        (
            put("lab1", "E1", b"x").header("x-episode-started-at", (now + 7200).to_string()),
            StatusCode::PRECONDITION_FAILED,
            "out-of-window",
        ),
    ];
    for (builder, want_status, want_slug) in cases {
        let req = builder.body(Body::from("x")).unwrap();
        let label = format!("{} {:?}", req.uri(), req.headers());
        let (status, headers, body) = env.send(req).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (want_status, Some(want_slug)),
            "{label}: {body}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["status"], want_status.as_u16());
        assert!(
            body["title"].is_string() && body["detail"].is_string(),
            "{body}"
        );
    }
    // Nothing was written anywhere, not even for the traversal attempts.
    assert!(env.index_lines().is_empty());
    assert!(
        std::fs::read_dir(env.dir.path().join("store"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(env.incoming_is_empty());
}

#[tokio::test]
async fn a_ulid_id_stands_in_for_the_start_time() {
    let env = env("[window]\nmax_age = \"30d\"\nmax_future = \"1h\"\n");
    // 01ARZ3NDEK… is from 2016: the ULID supplies the time and it is out of window.
    let (status, _, body) = env
        .send(
            put("lab1", "01ARZ3NDEKTSV4RRFFQ69G5FAV", b"x")
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("out-of-window"))
    );
    assert!(
        body["remediation"].as_str().unwrap().contains("requeue"),
        "{body}"
    );
}

#[tokio::test]
async fn limits_answer_413_and_507() {
    let env = env("max_episode_bytes = 10\n");
    let (status, _, body) = env
        .send(
            put("lab1", "E1", &[0; 11])
                .body(Body::from(vec![0u8; 11]))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too-large"))
    );
    assert_eq!(body["max_bytes"], 10);

    let env = self::env("free_space_reserve = \"1000TiB\"\n");
    let (status, headers, body) = env
        .send(put("lab1", "E1", b"x").body(Body::from("x")).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (
            StatusCode::INSUFFICIENT_STORAGE,
            Some("insufficient-storage")
        )
    );
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn bearer_tokens_and_identity_are_checked_on_every_route() {
    let env = env("");
    let token = env.dir.path().join("token");
    std::fs::write(&token, "  s3cret\n").unwrap();
    let env = self::env(&format!("[auth]\nbearer_token_file = {token:?}\n"));

    let (status, headers, body) = env
        .send(put("lab1", "E1", b"x").body(Body::from("x")).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    for uri in ["/v1/health", "/metrics"] {
        let (status, _, _) = env
            .send(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let req = Request::get(uri)
            .header("authorization", "Bearer wrong")
            .body(Body::empty())
            .unwrap();
        assert_eq!(env.send(req).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        let req = Request::get(uri)
            .header("authorization", "Bearer s3cret")
            .body(Body::empty())
            .unwrap();
        assert_eq!(env.send(req).await.0, StatusCode::OK, "{uri}");
    }
    let head = Request::head("/v1/episodes/lab1/E1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(env.send(head).await.0, StatusCode::UNAUTHORIZED);
    // livez needs nothing.
    let (status, _, body) = env
        .send(Request::get("/livez").body(Body::empty()).unwrap())
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("ok")));

    let authed = |b: http::request::Builder| b.header("authorization", "Bearer s3cret");
    let req = with_peer(
        authed(put("lab2", "E1", b"x"))
            .body(Body::from("x"))
            .unwrap(),
        lab1(),
    );
    let (status, _, body) = env.send(req).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden-identity"))
    );
    let req = with_peer(
        authed(put("lab1", "E1", b"x"))
            .header("x-host-id", "lab2")
            .body(Body::from("x"))
            .unwrap(),
        lab1(),
    );
    assert_eq!(env.send(req).await.0, StatusCode::FORBIDDEN);
    let req = with_peer(
        authed(Request::head("/v1/episodes/lab2/E1"))
            .body(Body::empty())
            .unwrap(),
        lab1(),
    );
    assert_eq!(env.send(req).await.0, StatusCode::FORBIDDEN);
    let req = with_peer(
        authed(Request::get("/v1/health"))
            .header("x-host-id", "lab2")
            .body(Body::empty())
            .unwrap(),
        lab1(),
    );
    assert_eq!(env.send(req).await.0, StatusCode::FORBIDDEN);

    let req = with_peer(
        authed(put("lab1", "E1", b"x"))
            .body(Body::from("x"))
            .unwrap(),
        lab1(),
    );
    assert_eq!(env.send(req).await.0, StatusCode::CREATED);
    assert_eq!(env.index_lines()[0]["client"], "lab1");
}

#[tokio::test]
async fn health_reports_identity_and_writes_nothing() {
    let env = env("");
    let req = with_peer(
        Request::get("/v1/health").body(Body::empty()).unwrap(),
        lab1(),
    );
    let (status, _, body) = env.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["ok"].as_bool(), body["schema_version"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(body["host_id"], "lab1");
    assert!(body["version"].is_string() && body["server_time"].is_string());
    let req = Request::get("/v1/health")
        .header("x-host-id", "labX")
        .body(Body::empty())
        .unwrap();
    assert_eq!(env.send(req).await.2["host_id"], "labX");
    assert!(env.index_lines().is_empty());
    assert!(!env.dir.path().join("index.jsonl").exists() || env.index_lines().is_empty());
}

#[tokio::test]
async fn draining_answers_503_to_new_uploads_and_health() {
    let env = env("");
    env.state.start_draining();
    let (status, headers, body) = env
        .send(put("lab1", "E1", b"x").body(Body::from("x")).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    assert!(headers.contains_key("retry-after"));
    let (status, _, body) = env
        .send(Request::get("/v1/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["ok"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(false))
    );
    assert!(body["reason"].as_str().unwrap().contains("draining"));
}

#[tokio::test]
async fn head_reports_the_stored_archive() {
    let env = env("");
    let (status, _, body) = env
        .send(
            Request::head("/v1/episodes/lab1/E1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let tar = Sha256::of(b"tar").to_field();
    let req = put("lab1", "E1", b"data")
        .header("x-tar-digest", &tar)
        .body(Body::from("data"))
        .unwrap();
    assert_eq!(env.send(req).await.0, StatusCode::CREATED);
    let (status, headers, _) = env
        .send(
            Request::head("/v1/episodes/lab1/E1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "4");
    assert_eq!(
        headers["repr-digest"],
        Sha256::of(b"data").to_field().as_str()
    );
    assert_eq!(headers["x-tar-digest"], tar.as_str());
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let env = env("");
    let (status, headers, body) = env
        .send(Request::get("/v2/nothing").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("not-found"))
    );
    assert_eq!(headers["content-type"], "application/problem+json");
    let (status, _, body) = env
        .send(
            Request::delete("/v1/episodes/lab1/E1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method-not-allowed"))
    );
    let traversal = Request::put("/v1/episodes/lab1/../../etc/passwd")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = env.send(traversal).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid-id"))
    );
}

#[tokio::test]
async fn every_v1_path_is_authenticated_and_bad_episode_paths_are_invalid_ids() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let env = env(&format!("[auth]\nbearer_token_file = {token:?}\n"));
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        ("GET", "/v1/nothing", StatusCode::NOT_FOUND, "not-found"),
        ("GET", "/v1", StatusCode::NOT_FOUND, "not-found"),
        (
            "PUT",
            "/v1/episodes/lab1",
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            "PUT",
            "/v1/episodes/lab1/",
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            "PUT",
            "/v1/episodes/lab1/E1/more",
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            "HEAD",
            "/v1/episodes/lab1/a/b",
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            "PUT",
            "/v1/episodes/lab1/../../etc/passwd",
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        ("GET", "/v1/episodes", StatusCode::BAD_REQUEST, "invalid-id"),
        (
            "POST",
            "/v1/health",
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            "DELETE",
            "/v1/episodes/lab1/E1",
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
    ];
    for &(method, uri, want, slug) in cases {
        let bare = Request::builder().method(method).uri(uri);
        let (status, headers, body) = env.send(bare.body(Body::from("x")).unwrap()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} without a token: {body}"
        );
        assert_eq!(headers["www-authenticate"], "Bearer", "{method} {uri}");
        let authed = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", "Bearer s3cret");
        let (status, headers, body) = env.send(authed.body(Body::from("x")).unwrap()).await;
        assert_eq!(status, want, "{method} {uri}: {body}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{method} {uri}"
        );
        if method != "HEAD" {
            assert_eq!(body["type"], slug, "{method} {uri}");
        }
    }
    // Outside /v1 nothing is authenticated.
    let (status, _, body) = env
        .send(Request::get("/v2/nothing").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("not-found"))
    );
    assert!(env.index_lines().is_empty() && env.incoming_is_empty());
}

#[tokio::test]
async fn damaged_bodies_are_rejected_and_leave_nothing() {
    let env = env("");
    // The body is not what Repr-Digest says.
    let req = put("lab1", "E1", b"good").body(Body::from("evil")).unwrap();
    let (status, _, body) = env.send(req).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("digest-mismatch"))
    );
    // The body is shorter than Content-Length.
    let req = put_len("lab1", "E2", b"good", 10)
        .body(Body::from("good"))
        .unwrap();
    let (status, _, body) = env.send(req).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("length-mismatch"))
    );
    assert!(env.incoming_is_empty() && env.index_lines().is_empty());
    assert!(env.stored("lab1", "E1").is_none() && env.stored("lab1", "E2").is_none());
}

fn stalled_body(first: &'static [u8]) -> Body {
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(first),
    )])
    .chain(futures_util::stream::pending());
    Body::from_stream(stream)
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_its_temp_file_is_removed() {
    let env = env("");
    let req = put("lab1", "E1", &[0; 100])
        .body(stalled_body(b"partial"))
        .unwrap();
    let (status, headers, body) = env.send(req).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::REQUEST_TIMEOUT, Some("body-timeout"))
    );
    assert_eq!(headers["connection"], "close");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(env.incoming_is_empty());
}

#[tokio::test]
async fn upload_slots_answer_429_with_retry_after() {
    let env = env("max_uploads_per_host = 1\nbody_idle_timeout = \"5s\"\n");
    let app_state = env.state.clone();
    let hog = tokio::spawn(async move {
        app(app_state)
            .oneshot(
                put("lab1", "E1", &[0; 100])
                    .body(stalled_body(b"x"))
                    .unwrap(),
            )
            .await
            .unwrap()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while env.state.slots.in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first upload never took its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, headers, body) = env
        .send(put("lab1", "E2", b"x").body(Body::from("x")).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too-many-uploads"))
    );
    assert_eq!(headers["retry-after"], "1");
    // Another host is not limited by lab1's uploads.
    assert_eq!(
        env.send(put("lab2", "E2", b"x").body(Body::from("x")).unwrap())
            .await
            .0,
        StatusCode::CREATED
    );
    hog.abort();
}

#[tokio::test]
async fn a_server_failure_is_a_500_that_leaks_no_path() {
    let env = env("");
    // A file where the host directory should be: the publish fails.
    std::fs::write(env.dir.path().join("store/lab1"), b"not a dir").unwrap();
    let (status, _, body) = env
        .send(put("lab1", "E1", b"x").body(Body::from("x")).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("internal"))
    );
    let text = body.to_string();
    for leak in [
        env.dir.path().to_str().unwrap(),
        "lab1/",
        "directory",
        "os error",
    ] {
        assert!(!text.contains(leak), "{leak:?} leaked: {text}");
    }
    assert!(env.incoming_is_empty() && env.index_lines().is_empty());
}

/// A body that records whether anyone read it.
fn watched_body(len: usize) -> (Body, Arc<AtomicBool>) {
    let polled = Arc::new(AtomicBool::new(false));
    let flag = polled.clone();
    let stream = futures_util::stream::once(async move {
        flag.store(true, Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; len]))
    });
    (Body::from_stream(stream), polled)
}

#[tokio::test]
async fn early_answers_never_read_a_large_body() {
    let env = env("max_episode_bytes = \"1GiB\"\n");
    let big: u64 = 2 << 20;
    assert_eq!(
        env.send(put("lab1", "E1", b"x").body(Body::from("x")).unwrap())
            .await
            .0,
        StatusCode::CREATED
    );
    let requests = [
        ("conflict", put_len("lab1", "E1", b"other", big)),
        ("already stored", put_len("lab1", "E1", b"x", big)),
        ("too-large", put_len("lab1", "E9", b"x", 2 << 30)),
        ("invalid-id", put_len("lab1", "a..b", b"x", big)),
    ];
    for (what, builder) in requests {
        let (body, polled) = watched_body(16);
        let response = app(env.state.clone())
            .oneshot(builder.body(body).unwrap())
            .await
            .unwrap();
        assert!(
            response.status().is_client_error() || response.status() == StatusCode::OK,
            "{what}"
        );
        assert_eq!(
            response.headers()["connection"],
            "close",
            "{what}: a large unread body closes the connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!polled.load(Ordering::SeqCst), "{what}: the body was read");
    }
}

#[tokio::test]
async fn the_order_of_decisions_is_protocol_order() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let env = env(&format!(
        "max_episode_bytes = 100\nmax_uploads_per_host = 1\nbody_idle_timeout = \"5s\"\n\
         [auth]\nbearer_token_file = {token:?}\n[window]\nmax_age = \"1d\"\nmax_future = \"1h\"\n"
    ));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let auth = |b: http::request::Builder| b.header("authorization", "Bearer s3cret");
    let fresh = move |b: http::request::Builder| b.header("x-episode-started-at", now.to_string());
    let send = |b: http::request::Builder| {
        let req = with_peer(b.body(Body::from("x")).unwrap(), lab1());
        let env = &env;
        async move {
            let (status, _, body) = env.send(req).await;
            (
                status.as_u16(),
                body["type"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let bare = || Request::put("/v1/episodes/lab2/a..b").header("content-type", "text/plain");
    // 401 before everything else.
    assert_eq!(send(bare()).await, (401, "unauthorized".into()));
    // 403 before invalid ids and headers.
    assert_eq!(send(auth(bare())).await, (403, "forbidden-identity".into()));
    // 400 invalid-id before 411/415.
    assert_eq!(
        send(auth(
            Request::put("/v1/episodes/lab1/a..b").header("content-type", "text/plain")
        ))
        .await
        .0,
        400
    );
    // 411 before the digest and the media type.
    let r = auth(Request::put("/v1/episodes/lab1/E1").header("content-type", "text/plain"));
    assert_eq!(send(r).await, (411, "length-required".into()));
    // 400 header problems before 415.
    let r = auth(
        Request::put("/v1/episodes/lab1/E1")
            .header("content-length", 1)
            .header("content-type", "text/plain"),
    );
    assert_eq!(send(r).await, (400, "missing-digest".into()));
    // 415 before the window and size limits.
    let r = auth(put_len("lab1", "E1", b"x", 1000)).header("x-episode-started-at", "0");
    let mut req = with_peer(r.body(Body::from("x")).unwrap(), lab1());
    req.headers_mut()
        .insert("content-type", http::HeaderValue::from_static("text/plain"));
    let (status, _, body) = env.send(req).await;
    assert_eq!(
        (status.as_u16(), body["type"].as_str()),
        (415, Some("unsupported-media-type"))
    );
    // 412 before 413.
    let r = auth(put_len("lab1", "E1", b"x", 1000)).header("x-episode-started-at", "0");
    assert_eq!(send(r).await, (412, "out-of-window".into()));
    // 413 before 507 and 429.
    assert_eq!(
        send(fresh(auth(put_len("lab1", "E1", b"x", 1000)))).await.0,
        413
    );

    // Store E1, then fill lab1's only slot: 429 comes before "already stored".
    assert_eq!(send(fresh(auth(put("lab1", "E1", b"x")))).await.0, 201);
    let app_state = env.state.clone();
    let hog = tokio::spawn(async move {
        let req = with_peer(
            fresh(auth(put("lab1", "E2", &[0; 50])))
                .body(stalled_body(b"x"))
                .unwrap(),
            lab1(),
        );
        app(app_state).oneshot(req).await.unwrap()
    });
    while env.state.slots.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(send(fresh(auth(put("lab1", "E1", b"x")))).await.0, 429);
    assert_eq!(
        send(fresh(auth(put("lab1", "E1", b"different")))).await.0,
        429
    );
    hog.abort();
    while env.state.slots.in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // With the slot free: 200 for the same bytes, 409 for others.
    assert_eq!(send(fresh(auth(put("lab1", "E1", b"x")))).await.0, 200);
    assert_eq!(
        send(fresh(auth(put("lab1", "E1", b"y")))).await,
        (409, "conflict".into())
    );
}

#[tokio::test]
async fn health_is_503_while_free_space_is_below_the_reserve() {
    let env = env("free_space_reserve = \"1000TiB\"\n");
    let (status, _, body) = env
        .send(Request::get("/v1/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["ok"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(false)),
        "{body}"
    );
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("free_space_reserve"), "{reason}");
    // With the default reserve the same store is healthy.
    let env = self::env("");
    let (status, _, body) = env
        .send(Request::get("/v1/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["ok"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );
}

#[tokio::test]
async fn with_metrics_listen_metrics_are_served_only_there() {
    let env = env("metrics_listen = \"127.0.0.1:0\"\n");
    let (status, headers, body) = env
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("not-found")),
        "{body}"
    );
    assert_eq!(headers["content-type"], "application/problem+json");
    let response = episode_receiver::ops::app(env.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("episode_receiver_index_rows 0"), "{text}");
}

#[tokio::test]
async fn readyz_gives_the_health_verdict_and_names_draining() {
    let env = env("metrics_listen = \"127.0.0.1:0\"\n");
    let ops = episode_receiver::ops::app(env.state.clone());
    let get = |path: &'static str| {
        let ops = ops.clone();
        async move {
            let response = ops
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(get("/readyz").await, (StatusCode::OK, "ready\n".to_owned()));
    let metrics = get("/metrics").await.1;
    assert!(metrics.contains("episode_receiver_ready 1"), "{metrics}");
    env.state.start_draining();
    let (status, reason) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason.starts_with("draining"), "{reason}");
    let (status, _, body) = env
        .send(Request::get("/v1/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["reason"].as_str(),
        Some(reason.trim()),
        "the same verdict"
    );
    let metrics = get("/metrics").await.1;
    assert!(metrics.contains("episode_receiver_ready 0"), "{metrics}");
    assert_eq!(get("/livez").await, (StatusCode::OK, "ok".to_owned()));
}

#[tokio::test]
async fn the_index_row_has_every_field_of_the_spec() {
    let env = env("");
    let req = with_peer(
        put("lab1", "E1", b"x").body(Body::from("x")).unwrap(),
        lab1(),
    );
    assert_eq!(env.send(req).await.0, StatusCode::CREATED);
    let tar = Sha256::of(b"tar");
    let req = put("lab1", "E2", b"y")
        .header("x-tar-digest", tar.to_field())
        .header("x-episode-started-at", "2026-11-22T10:00:00Z")
        .body(Body::from("y"))
        .unwrap();
    assert_eq!(env.send(req).await.0, StatusCode::CREATED);
    let rows = env.index_lines();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mut keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes",
            "client",
            "code_commit",
            "episode_id",
            "host_id",
            "received_at",
            "sha256",
            "started_at",
            "tar_sha256"
        ]
    );
    let first = &rows[0];
    assert_eq!(
        (first["host_id"].as_str(), first["episode_id"].as_str()),
        (Some("lab1"), Some("E1"))
    );
    assert_eq!(first["sha256"], Sha256::of(b"x").to_hex());
    assert_eq!(first["bytes"], 1);
    assert_eq!(first["code_commit"], "3f2c1e9a");
    assert_eq!(first["client"], "lab1");
    assert!(
        first["tar_sha256"].is_null() && first["started_at"].is_null(),
        "{first}"
    );
    let received_at = first["received_at"].as_str().unwrap();
    let parsed =
        time::OffsetDateTime::parse(received_at, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("received_at {received_at:?}: {e}"));
    let age = time::OffsetDateTime::now_utc() - parsed;
    assert!(age.whole_seconds().abs() < 60, "{received_at}");
    let second = &rows[1];
    assert_eq!(second["tar_sha256"], tar.to_hex());
    assert_eq!(second["started_at"], "2026-11-22T10:00:00Z");
    assert!(
        second["client"].is_null(),
        "no certificate, no client: {second}"
    );
}

#[tokio::test]
async fn start_up_counts_rows_superseded_by_a_re_upload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let archive = root.join("store/lab1/E1.tar.zst");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    std::fs::write(&archive, b"second").unwrap();
    let row = |body: &[u8]| {
        serde_json::json!({
            "host_id": "lab1", "episode_id": "E1", "sha256": Sha256::of(body).to_hex(),
            "tar_sha256": null, "bytes": body.len(), "code_commit": "c", "started_at": null,
            "received_at": "2026-11-22T10:00:00Z", "client": null,
        })
        .to_string()
            + "\n"
    };
    std::fs::write(root.join("index.jsonl"), row(b"first") + &row(b"second")).unwrap();
    let path = root.join("receiver.toml");
    std::fs::write(
        &path,
        format!(
            "store_root = {:?}\nincoming_root = {:?}\nindex_path = {:?}\nfree_space_reserve = \"1MiB\"\n",
            root.join("store"),
            root.join("incoming"),
            root.join("index.jsonl"),
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let (state, report) = episode_receiver::open(config, &path).unwrap();
    assert_eq!((report.superseded, report.rows), (1, 1));
    assert!(report.missing.is_empty() && report.reconciled.is_empty());
    let entry = state
        .index
        .get(&"lab1".parse().unwrap(), &"E1".parse().unwrap())
        .unwrap();
    assert_eq!(entry.sha256, Sha256::of(b"second"), "the last row is used");
}

#[tokio::test]
async fn metrics_count_responses() {
    let env = env("");
    env.send(put("lab1", "E1", b"x").body(Body::from("x")).unwrap())
        .await;
    let (status, _, body) = env
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("episode_receiver_http_responses_total{route=\"put\",code=\"201\"} 1"),
        "{text}"
    );
    assert!(text.contains("episode_receiver_index_rows 1"), "{text}");
    assert!(
        text.contains("episode_receiver_upload_bytes_total 1"),
        "{text}"
    );
}

use futures_util::StreamExt as _;
