//! Keeps docs/openapi.yaml true: it is OpenAPI 3.1 whose references resolve; its
//! problem `type`s are exactly common's slugs, each answered with its status
//! where it can occur; every route of the router is a documented path; and the
//! in-process router's answers to each documented main-listener operation have
//! a documented status, content type, headers and required members.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use episode_common::{Sha256, Slug};
use episode_receiver::config::Config;
use episode_receiver::{AppState, app};
use http::{Request, Response};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Follows a local `$ref` (one level; the document has no chains of them).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved $ref {r}")),
        None => v,
    }
}

fn walk_refs(doc: &Value, v: &Value, at: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "$ref" {
                    let r = child
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: $ref not a string"));
                    assert!(r.starts_with("#/"), "{at}: non-local $ref {r}");
                    assert!(doc.pointer(&r[1..]).is_some(), "{at}: unresolved $ref {r}");
                }
                walk_refs(doc, child, &format!("{at}/{k}"));
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk_refs(doc, child, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

fn responses<'a>(doc: &'a Value, path: &str, method: &str) -> &'a serde_json::Map<String, Value> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
}

#[test]
fn the_document_is_openapi_3_1_and_its_references_resolve() {
    let doc = doc();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    walk_refs(&doc, &doc, "");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["servers", "parameters", "summary", "description"].contains(&method.as_str()) {
                continue;
            }
            assert!(
                op["operationId"].is_string(),
                "{method} {path}: no operationId"
            );
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn problem_types_are_exactly_the_slugs_each_with_its_status() {
    let doc = doc();
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["Problem"]["properties"]["type"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours: BTreeSet<&str> = Slug::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(documented, ours);
    // Every slug a PUT can meet is among its documented answers; the routing and
    // HTTP-parsing slugs are in the description (any path, any method).
    let put = responses(&doc, "/v1/episodes/{host_id}/{episode_id}", "put");
    for &slug in Slug::ALL {
        if matches!(
            slug,
            Slug::NotFound
                | Slug::MethodNotAllowed
                | Slug::BadRequest
                | Slug::UriTooLong
                | Slug::HeadersTooLarge
        ) {
            let text = doc["info"]["description"].as_str().unwrap();
            assert!(
                text.contains(&format!("{} `{slug}`", slug.status())),
                "{slug} not described"
            );
            continue;
        }
        assert!(
            put.contains_key(&slug.status().to_string()),
            "PUT lacks {} ({slug})",
            slug.status()
        );
    }
    for (status, response) in put {
        if status.starts_with('4') || status.starts_with('5') {
            let content = &resolve(&doc, response)["content"];
            assert!(
                content["application/problem+json"].is_object(),
                "PUT {status} is not problem+json"
            );
        }
    }
}

#[test]
fn every_route_of_the_router_is_documented() {
    let doc = doc();
    let paths = doc["paths"].as_object().unwrap();
    // The routes as written in routes.rs; catch-alls answer 400/404 and are described.
    let source = include_str!("../src/routes.rs");
    let mut routes = BTreeSet::new();
    for piece in source.split(".route(").skip(1) {
        let literal = piece
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split('"').next());
        if let Some(route) = literal {
            routes.insert(route.to_owned());
        }
    }
    assert!(
        routes.contains("/v1/health"),
        "no routes found in routes.rs: {routes:?}"
    );
    for route in &routes {
        if route == "/v1" || route == "/v1/{*rest}" {
            continue;
        }
        assert!(
            paths.contains_key(route),
            "route {route} is not in docs/openapi.yaml"
        );
    }
    // The ops listener (observability.md), described from the spec.
    for path in ["/livez", "/readyz", "/metrics", "/", "/api/hosts"] {
        assert!(
            paths[path]["get"].is_object(),
            "GET {path} is not documented"
        );
    }
}

fn receiver() -> (tempfile::TempDir, Arc<AppState>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let text = format!(
        "store_root = {:?}\nincoming_root = {:?}\nindex_path = {:?}\nfree_space_reserve = \"1MiB\"\n",
        root.join("store"),
        root.join("incoming"),
        root.join("index.jsonl"),
    );
    let path = root.join("receiver.toml");
    std::fs::write(&path, text).unwrap();
    let (state, _) = episode_receiver::open(Config::load(&path).unwrap(), &path).unwrap();
    (dir, state)
}

/// Sends `req` and checks the answer against the document's operation.
async fn conforms(doc: &Value, state: &Arc<AppState>, path: &str, req: Request<Body>) -> u16 {
    let method = req.method().as_str().to_ascii_lowercase();
    let response: Response<Body> = app(state.clone()).oneshot(req).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let documented = responses(doc, path, &method);
    let Some(spec) = documented.get(&status.to_string()) else {
        panic!(
            "{method} {path}: {status} is not documented ({:?})",
            documented.keys()
        );
    };
    let spec = resolve(doc, spec);
    for (name, header) in spec["headers"].as_object().into_iter().flatten() {
        if resolve(doc, header)["required"] == true {
            assert!(
                headers.contains_key(name.as_str()),
                "{method} {path} {status}: no {name}"
            );
        }
    }
    let Some(content) = spec["content"].as_object() else {
        assert!(
            body.is_empty() || method == "head",
            "{method} {path} {status}: undocumented body"
        );
        return status;
    };
    let content_type = headers[http::header::CONTENT_TYPE].to_str().unwrap();
    let media = content_type.split(';').next().unwrap().trim();
    let Some(media_spec) = content.get(media) else {
        panic!("{method} {path} {status}: {content_type} is not documented");
    };
    if media.ends_with("json") {
        let value: Value = serde_json::from_slice(&body).unwrap();
        let schema = resolve(doc, &media_spec["schema"]);
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap();
            assert!(
                value.get(key).is_some(),
                "{method} {path} {status}: no {key} in {value}"
            );
        }
        if let Some(slugs) = schema["properties"]["type"]["enum"].as_array() {
            assert!(
                slugs.contains(&value["type"]),
                "{method} {path}: type {}",
                value["type"]
            );
            assert_eq!(value["status"], status);
        }
    }
    status
}

fn put(body: &'static [u8]) -> Request<Body> {
    Request::put("/v1/episodes/lab1/01EPISODE")
        .header("content-length", body.len())
        .header("repr-digest", Sha256::of(body).to_field())
        .header("x-code-commit", "3f2c1e9a")
        .header("content-type", "application/zstd")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn the_routers_answers_are_documented() {
    let doc = doc();
    let (_dir, state) = receiver();
    let episode = "/v1/episodes/{host_id}/{episode_id}";
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let head = |uri: &str| Request::head(uri).body(Body::empty()).unwrap();
    let mut seen = Vec::new();
    seen.push(conforms(&doc, &state, "/v1/health", get("/v1/health")).await);
    seen.push(conforms(&doc, &state, "/livez", get("/livez")).await);
    seen.push(conforms(&doc, &state, "/metrics", get("/metrics")).await);
    seen.push(conforms(&doc, &state, episode, head("/v1/episodes/lab1/01EPISODE")).await);
    seen.push(conforms(&doc, &state, episode, put(b"one")).await);
    seen.push(conforms(&doc, &state, episode, put(b"one")).await);
    seen.push(conforms(&doc, &state, episode, head("/v1/episodes/lab1/01EPISODE")).await);
    seen.push(conforms(&doc, &state, episode, put(b"two")).await);
    let bad = Request::put("/v1/episodes/lab1/01OTHER")
        .header("content-length", 3)
        .header("repr-digest", "sha-256=:nonsense:")
        .body(Body::from("one"))
        .unwrap();
    seen.push(conforms(&doc, &state, episode, bad).await);
    let no_length = Request::put("/v1/episodes/lab1/01OTHER")
        .body(Body::empty())
        .unwrap();
    seen.push(conforms(&doc, &state, episode, no_length).await);
    let huge = Request::put("/v1/episodes/lab1/01HUGE")
        .header("content-length", u64::MAX / 2)
        .header("repr-digest", Sha256::of(b"").to_field())
        .header("x-code-commit", "3f2c1e9a")
        .body(Body::empty())
        .unwrap();
    seen.push(conforms(&doc, &state, episode, huge).await);
    assert_eq!(
        seen,
        [200, 200, 200, 404, 201, 200, 200, 409, 400, 411, 413]
    );
}
