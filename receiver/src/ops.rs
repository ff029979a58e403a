//! The ops listener (`metrics_listen`, observability.md): `/livez`, `/readyz`,
//! `/metrics`, the fleet page at `/` and its data at `/api/hosts`, plain HTTP.
//!
//! With `ops_token_file`, every path but `/livez` and `/readyz` wants the bearer
//! token. Reads aggregates only: no request here scans the index.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use episode_common::Slug;
use http::{HeaderValue, StatusCode};

use crate::AppState;
use crate::error::Refusal;
use crate::metrics::Scrape;
use crate::routes::{livez, not_found, readiness};

/// The ops listener's routes.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(fleet_page))
        .route("/api/hosts", get(api_hosts))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), ops_token))
        .with_state(state)
}

/// With `ops_token_file`: 401 without the token, but on `/livez` and `/readyz`.
async fn ops_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/livez" | "/readyz");
    if let (Some(token), false) = (&state.ops_token, open) {
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if crate::admission::authenticate(given, Some(token)).is_err() {
            return Refusal::new(
                Slug::Unauthorized,
                "the ops listener requires `Authorization: Bearer <token>`, the token in ops_token_file",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// 200 `ready`, or 503 with the reason (it names `store`, `index` or `draining`).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match readiness(&state).await.reason {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The Prometheus text format (also `/metrics` on the main listener without
/// `metrics_listen`).
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let verdict = readiness(&state).await;
    let free_bytes = state.free_bytes().await.unwrap_or(0);
    let hosts = state.index.with_stats(|stats| {
        stats
            .iter()
            .filter(|(_, s)| s.episodes_total > 0)
            .map(|(h, s)| (h.as_str().to_owned(), s.last_stored))
            .collect()
    });
    let scrape = Scrape {
        uploads_in_flight: state.slots.in_flight(),
        index_rows: state.index.len(),
        free_bytes,
        draining: state.is_draining(),
        ready: verdict.reason.is_none(),
        store_up: verdict.store_up,
        index_up: verdict.index_up,
        hosts,
    };
    let text = tokio::task::spawn_blocking(move || state.metrics.render(&scrape))
        .await
        .unwrap_or_default();
    (
        [(
            http::header::CONTENT_TYPE,
            episode_common::exposition::TEXT_FORMAT,
        )],
        text,
    )
        .into_response()
}

async fn fleet_page(State(state): State<Arc<AppState>>) -> Response {
    let view = state.fleet_view(now());
    let html = crate::fleet_page::render(&crate::fleet_page::Page {
        view: &view,
        stale_after: &state.config.fleet.stale_after.text,
        started_at: state.started_at,
        version: crate::VERSION,
    });
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

async fn api_hosts(State(state): State<Arc<AppState>>) -> Response {
    let view = state.fleet_view(now());
    let json = crate::fleet::to_json(&view, &state.config.fleet.stale_after.text);
    ([(http::header::CONTENT_TYPE, "application/json")], json).into_response()
}
