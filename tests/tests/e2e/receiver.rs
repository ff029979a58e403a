//! The receiver binary end to end: identity over real mTLS, concurrency on one key,
//! crashes mid-upload, start-up repair of the store and index, hostile paths and
//! clients, the drain on SIGTERM, configuration errors, `check`, and credential
//! reload. Each test starts its own receiver(s) on 127.0.0.1:0 in its own TestEnv.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use episode_common::{Event, Sha256};
use episode_e2e::{
    Answer, ReceiverPaths, TestEnv, bin, https_client, logs, pack, put_headers, tls_connect, tree,
    wait_until,
};
use serde_json::{Value, json};

/// Deterministic, incompressible-looking bytes.
fn bytes(n: usize, salt: u8) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(salt);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn rows_for<'a>(rows: &'a [Value], host: &str, episode: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r["host_id"] == host && r["episode_id"] == episode)
        .collect()
}

fn assert_problem(answer: &Answer, status: u16, slug: &str) {
    assert_eq!(
        (answer.status, answer.slug()),
        (status, Some(slug)),
        "{answer:#?}"
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{answer:#?}"
    );
}

// 1
#[test]
fn a_client_certificate_cannot_write_under_another_host() {
    let env = TestEnv::new("impersonation");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let lab1 = rcv.client("lab1");
    let body = bytes(4096, 1);

    let under_lab2 = rcv.put(&lab1, "lab2", "01EPISODE", &body);
    assert_problem(&under_lab2, 403, "forbidden-identity");
    let claims_lab2 = rcv
        .put_with(&lab1, "lab1", "01EPISODE", &body, &[("x-host-id", "lab2")])
        .unwrap();
    assert_problem(&claims_lab2, 403, "forbidden-identity");
    assert!(rcv.stored("lab2", "01EPISODE").is_none());
    assert!(rcv.stored("lab1", "01EPISODE").is_none());
    assert!(rcv.index_rows().is_empty());

    // Each host may write under its own name, and the row records who did.
    let own = rcv
        .put_with(&lab1, "lab1", "01EPISODE", &body, &[("x-host-id", "lab1")])
        .unwrap();
    assert_eq!(own.status, 201, "{own:#?}");
    assert_eq!(own.header("location"), Some("/v1/episodes/lab1/01EPISODE"));
    assert_eq!(
        own.header("repr-digest"),
        Some(Sha256::of(&body).to_field().as_str())
    );
    assert_eq!(own.body["host_id"], "lab1");
    assert_eq!(own.body["episode_id"], "01EPISODE");
    assert_eq!(own.body["sha256"], Sha256::of(&body).to_hex());
    assert_eq!(own.body["bytes"], body.len() as u64);
    assert_eq!(own.body["code_commit"], episode_e2e::receiver::CODE_COMMIT);
    assert_eq!(own.body["stored"], "created");
    assert!(own.body["received_at"].is_string(), "{own:#?}");
    let own2 = rcv.put(&rcv.client("lab2"), "lab2", "01EPISODE", &body);
    assert_eq!(own2.status, 201, "{own2:#?}");
    let rows = rcv.index_rows();
    assert_eq!(rows_for(&rows, "lab1", "01EPISODE")[0]["client"], "lab1");
    assert_eq!(rows_for(&rows, "lab2", "01EPISODE")[0]["client"], "lab2");

    // Nor read about another host's episodes, nor speak for it.
    assert_eq!(rcv.head(&lab1, "lab2", "01EPISODE").status, 403);
    let health = lab1
        .get(format!("{}/v1/health", rcv.url))
        .header("x-host-id", "lab2")
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 403);
}

// 2
#[test]
fn the_handshake_fails_without_a_certificate_from_the_client_ca() {
    let env = TestEnv::new("no-cert");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let body = bytes(1000, 2);

    let no_cert = rcv.put_with(&rcv.plain_client(), "lab1", "01EPISODE", &body, &[]);
    assert!(no_cert.is_err(), "no client certificate got {no_cert:?}");
    let livez = rcv.get(&rcv.plain_client(), "/livez");
    assert!(livez.is_err(), "no client certificate got {livez:?}");

    let rogue = https_client(&env.pki.ca, Some((&env.pki.rogue_cert, &env.pki.rogue_key)));
    let rogue_put = rcv.put_with(&rogue, "lab1", "01EPISODE", &body, &[]);
    assert!(rogue_put.is_err(), "rogue CA certificate got {rogue_put:?}");

    let now = time::OffsetDateTime::now_utc();
    let (expired_cert, expired_key) = env.pki.issue_client(
        "lab1",
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    );
    let expired = https_client(&env.pki.ca, Some((&expired_cert, &expired_key)));
    let expired_put = rcv.put_with(&expired, "lab1", "01EPISODE", &body, &[]);
    assert!(
        expired_put.is_err(),
        "expired certificate got {expired_put:?}"
    );

    assert!(rcv.stored("lab1", "01EPISODE").is_none());
    assert!(rcv.index_rows().is_empty());
    // The receiver saw (and counted) the refused handshakes.
    let lab1 = rcv.client("lab1");
    wait_until(
        Duration::from_secs(5),
        "4 failed handshakes counted",
        || metric(&rcv, &lab1, "episode_receiver_tls_handshake_failures_total") >= 4.0,
    );
    // The receiver is up and serving the right clients all along.
    let ok = rcv.put(&rcv.client("lab1"), "lab1", "01EPISODE", &body);
    assert_eq!(ok.status, 201, "{ok:#?}");
}

/// The value of an unlabelled metric from `GET /metrics`.
fn metric(rcv: &episode_e2e::Receiver, client: &reqwest::blocking::Client, name: &str) -> f64 {
    let answer = rcv.get(client, "/metrics").unwrap();
    let text = answer.body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Runs `n` PUTs of `(lab1, episode)` at once, body `i` from `body_of(i)`.
fn concurrent_puts(
    rcv: &episode_e2e::Receiver,
    episode: &str,
    n: usize,
    body_of: impl Fn(usize) -> Vec<u8> + Sync,
) -> Vec<(Vec<u8>, Answer)> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, body_of) = (&barrier, &body_of);
                s.spawn(move || {
                    let client = rcv.client("lab1");
                    let body = body_of(i);
                    barrier.wait();
                    let answer = rcv.put(&client, "lab1", episode, &body);
                    (body, answer)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

// 3
#[test]
fn concurrent_puts_of_the_same_bytes_create_once() {
    let env = TestEnv::new("same-bytes");
    let cfg = env.receiver_config(
        "r",
        true,
        "max_uploads_per_host = 32\nmax_concurrent_uploads = 64\n",
    );
    let rcv = env.spawn_receiver(&cfg);
    let body = bytes(512 << 10, 3);
    let answers = concurrent_puts(&rcv, "01SAME", 16, |_| body.clone());

    let statuses: Vec<u16> = answers.iter().map(|(_, a)| a.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        15,
        "{statuses:?}"
    );
    for (_, a) in &answers {
        assert_eq!(a.body["sha256"], Sha256::of(&body).to_hex(), "{a:#?}");
        let want = if a.status == 201 {
            "created"
        } else {
            "already_present"
        };
        assert_eq!(a.body["stored"], want, "{a:#?}");
    }
    let rows = rcv.index_rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["sha256"], Sha256::of(&body).to_hex());
    assert_eq!(rcv.stored("lab1", "01SAME").as_deref(), Some(&body[..]));
}

// 4
#[test]
fn concurrent_puts_of_different_bytes_create_once_and_conflict() {
    let env = TestEnv::new("diff-bytes");
    let cfg = env.receiver_config(
        "r",
        true,
        "max_uploads_per_host = 32\nmax_concurrent_uploads = 64\n",
    );
    let rcv = env.spawn_receiver(&cfg);
    let answers = concurrent_puts(&rcv, "01RACE", 8, |i| bytes(256 << 10, 40 + i as u8));

    let winners: Vec<&(Vec<u8>, Answer)> =
        answers.iter().filter(|(_, a)| a.status == 201).collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        answers.iter().map(|(_, a)| a.status).collect::<Vec<_>>()
    );
    let winner = &winners[0].0;
    let winner_sha = Sha256::of(winner).to_hex();
    for (body, a) in &answers {
        if a.status == 201 {
            continue;
        }
        assert_problem(a, 409, "conflict");
        assert_eq!(a.body["stored_sha256"], winner_sha, "{a:#?}");
        assert_ne!(body, winner);
    }
    assert_eq!(rcv.stored("lab1", "01RACE").as_deref(), Some(&winner[..]));
    let rows = rcv.index_rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["sha256"], winner_sha);
}

// 5
#[test]
fn a_receiver_killed_mid_upload_leaves_nothing_and_accepts_the_retry() {
    let env = TestEnv::new("kill-mid-upload");
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let body = bytes(1 << 20, 5);
    let path = "/v1/episodes/lab1/01KILLED";

    let mut conn = tls_connect(&rcv, "lab1");
    conn.send_head(
        "PUT",
        path,
        &put_headers(body.len() as u64, &Sha256::of(&body)),
    )
    .unwrap();
    conn.send(&body[..body.len() / 2]).unwrap();
    let paths = rcv.paths();
    wait_until(
        Duration::from_secs(5),
        "the upload's temp file to fill",
        || {
            paths
                .incoming_files()
                .iter()
                .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
        },
    );
    rcv.process.kill();
    drop(conn);
    assert!(rcv.stored("lab1", "01KILLED").is_none());
    assert!(rcv.index_rows().is_empty());

    let rcv = env.spawn_receiver(&cfg);
    assert_eq!(rcv.incoming_files(), Vec::<std::path::PathBuf>::new());
    wait_until(Duration::from_secs(5), "ready", || {
        logs::has_event(&rcv.process.stderr(), Event::Ready)
    });
    let emptied = logs::events(&rcv.process.stderr(), Event::IncomingEmptied);
    assert_eq!(emptied.len(), 1, "{}", rcv.process.stderr());
    assert!(
        emptied[0]["n_files"].as_u64().is_some_and(|n| n >= 1),
        "{emptied:?}"
    );
    assert!(rcv.stored("lab1", "01KILLED").is_none());
    assert!(rcv.index_rows().is_empty());
    let retry = rcv.put(&rcv.client("lab1"), "lab1", "01KILLED", &body);
    assert_eq!(retry.status, 201, "{retry:#?}");
    assert_eq!(rcv.stored("lab1", "01KILLED").as_deref(), Some(&body[..]));
    assert_eq!(rcv.index_rows().len(), 1);
}

// 6
#[test]
fn an_archive_without_an_index_row_gets_its_row_at_start_up() {
    let env = TestEnv::new("reconcile");
    let cfg = env.receiver_config("r", true, "");
    let paths = ReceiverPaths::from_config(&cfg);
    let meta = json!({"code_commit": "c0ffee12", "started_at": "2026-11-22T10:00:00Z"});
    let meta_bytes = serde_json::to_vec(&meta).unwrap();
    let events = bytes(10_000, 6);
    let packed = pack(
        "01ORPHAN",
        &[
            ("meta.json", &meta_bytes[..]),
            ("events.jsonl", &events[..]),
        ],
    );
    let archive = paths.archive("lab1", "01ORPHAN");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    std::fs::write(&archive, &packed.bytes).unwrap();

    let rcv = env.spawn_receiver(&cfg);
    let rows = rcv.index_rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    wait_until(Duration::from_secs(5), "ready", || {
        logs::has_event(&rcv.process.stderr(), Event::Ready)
    });
    let reconciled = logs::events(&rcv.process.stderr(), Event::Reconciled);
    assert_eq!(reconciled.len(), 1, "{}", rcv.process.stderr());
    assert_eq!(
        (&reconciled[0]["host_id"], &reconciled[0]["episode_id"]),
        (&json!("lab1"), &json!("01ORPHAN"))
    );
    let row = &rows[0];
    assert_eq!(row["host_id"], "lab1");
    assert_eq!(row["episode_id"], "01ORPHAN");
    assert_eq!(row["sha256"], packed.sha256.to_hex());
    assert_eq!(row["tar_sha256"], packed.tar_sha256.to_hex());
    assert_eq!(row["bytes"], packed.bytes.len() as u64);
    assert_eq!(row["code_commit"], "c0ffee12");
    assert_eq!(row["started_at"], "2026-11-22T10:00:00Z");

    let again = rcv.put(&rcv.client("lab1"), "lab1", "01ORPHAN", &packed.bytes);
    assert_eq!(again.status, 200, "{again:#?}");
    assert_eq!(again.body["stored"], "already_present");
    let head = rcv.head(&rcv.client("lab1"), "lab1", "01ORPHAN");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("repr-digest"),
        Some(packed.sha256.to_field().as_str())
    );
    assert_eq!(rcv.index_rows().len(), 1);
}

// 7
#[test]
fn a_torn_last_index_line_is_tolerated_and_new_rows_start_on_their_own_line() {
    let env = TestEnv::new("torn-index");
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let first = bytes(2000, 7);
    assert_eq!(
        rcv.put(&rcv.client("lab1"), "lab1", "01FIRST", &first)
            .status,
        201
    );
    rcv.process.kill();
    let mut index = std::fs::OpenOptions::new()
        .append(true)
        .open(&rcv.index_path)
        .unwrap();
    std::io::Write::write_all(
        &mut index,
        br#"{"host_id":"lab1","episode_id":"01TORN","sha256":"ab"#,
    )
    .unwrap();
    drop(index);

    let rcv = env.spawn_receiver(&cfg);
    let lab1 = rcv.client("lab1");
    assert_eq!(rcv.head(&lab1, "lab1", "01FIRST").status, 200);
    assert_eq!(rcv.head(&lab1, "lab1", "01TORN").status, 404);
    assert_eq!(rcv.put(&lab1, "lab1", "01FIRST", &first).status, 200);
    let second = bytes(3000, 8);
    let created = rcv.put(&lab1, "lab1", "01SECOND", &second);
    assert_eq!(created.status, 201, "{created:#?}");

    let text = std::fs::read_to_string(&rcv.index_path).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let rows = rcv.index_rows(); // panics on any line that is not a row
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["episode_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["01FIRST", "01SECOND"], "{text}");
}

// 8
#[test]
fn hostile_ids_never_reach_the_filesystem() {
    let env = TestEnv::new("traversal");
    let cfg = env.receiver_config("r", false, "require_code_commit = false\n");
    let rcv = env.spawn_receiver(&cfg);
    let outside = format!(
        "escaped-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let long = "a".repeat(129);
    let very_long = "b".repeat(8000);
    let cases: Vec<String> = [
        "lab1/..",
        "lab1/%2e%2e",
        "lab1/%2E%2E",
        "lab1/a%2Fb",
        "lab1/..%2F..%2Fetc",
        "lab1/..%2F..%2F..%2F..%2FOUT",
        "lab1/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fOUT",
        "lab1/x..y",
        "lab1/.hidden",
        "lab1/a%00b",
        "lab1/a%5Cb",
        "lab1/%C3%A9pisode",
        "lab1/\u{e9}pisode",
        "lab1/a/b",
        "lab1/%2e%2e/%2e%2e/OUT",
        "..%2F..%2F..%2F..%2FOUT/01EPISODE",
        "%2e%2e/01EPISODE",
        "../01EPISODE",
        "lab%2F1/01EPISODE",
    ]
    .iter()
    .map(|c| c.replace("OUT", &outside))
    .chain([
        format!("lab1/{long}"),
        format!("lab1/{very_long}"),
        format!("{long}/01EPISODE"),
    ])
    .collect();

    let body = b"would be stored";
    let before = tree(env.root());
    for case in &cases {
        let path = format!("/v1/episodes/{case}");
        let mut conn = episode_e2e::plain_connect(rcv.addr).unwrap();
        conn.send_head(
            "PUT",
            &path,
            &put_headers(body.len() as u64, &Sha256::of(body)),
        )
        .unwrap();
        conn.send(body).unwrap();
        let response = conn.read_response(Duration::from_secs(5)).unwrap();
        assert_eq!(
            response.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let mut head = episode_e2e::plain_connect(rcv.addr).unwrap();
        head.send_head("HEAD", &path, &[("Content-Length", "0")])
            .unwrap();
        let status = head.read_response(Duration::from_secs(5)).map(|r| r.status);
        assert!(matches!(status, Ok(400)), "HEAD {path}: {status:?}");
    }
    assert_eq!(tree(env.root()), before, "the tree under the env changed");
    let parent = env.root().parent().unwrap();
    assert!(!parent.join(&outside).exists());
    assert!(rcv.index_rows().is_empty());
    assert!(rcv.incoming_files().is_empty());
}

// 9
#[test]
fn a_stalled_body_is_answered_408_and_its_temp_file_removed() {
    let env = TestEnv::new("stalled-body");
    let cfg = env.receiver_config("r", true, "body_idle_timeout = \"1s\"\n");
    let rcv = env.spawn_receiver(&cfg);
    let body = bytes(100_000, 9);
    let mut conn = tls_connect(&rcv, "lab1");
    conn.send_head(
        "PUT",
        "/v1/episodes/lab1/01STALL",
        &put_headers(body.len() as u64, &Sha256::of(&body)),
    )
    .unwrap();
    conn.send(&body[..10]).unwrap();
    let started = Instant::now();
    let response = conn.read_response(Duration::from_secs(6)).unwrap();
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.slug().as_deref(), Some("body-timeout"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered after {:?}, before the idle timeout",
        started.elapsed()
    );
    wait_until(Duration::from_secs(3), "incoming_root to be empty", || {
        rcv.incoming_files().is_empty()
    });
    assert!(rcv.stored("lab1", "01STALL").is_none());
    assert!(rcv.index_rows().is_empty());
}

// 10
#[test]
fn an_oversize_upload_is_refused_before_any_body_byte() {
    let env = TestEnv::new("oversize");
    let cfg = env.receiver_config("r", true, "max_episode_bytes = \"1MiB\"\n");
    let rcv = env.spawn_receiver(&cfg);
    let mut conn = tls_connect(&rcv, "lab1");
    let ten_gib: u64 = 10 << 30;
    conn.send_head(
        "PUT",
        "/v1/episodes/lab1/01HUGE",
        &put_headers(ten_gib, &Sha256::of(b"anything")),
    )
    .unwrap();
    // Not one body byte is sent: the answer must come anyway.
    let response = conn.read_response(Duration::from_secs(5)).unwrap();
    assert_eq!(response.status, 413, "{response:?}");
    let body = response.json();
    assert_eq!(body["type"], "too-large", "{body}");
    assert_eq!(body["max_bytes"], 1u64 << 20, "{body}");
    assert!(rcv.incoming_files().is_empty());
}

// 11
#[test]
fn a_person_with_curl_can_upload() {
    for (tool, version) in [("curl", "--version"), ("openssl", "version")] {
        assert!(
            std::process::Command::new(tool)
                .arg(version)
                .output()
                .is_ok(),
            "{tool} is missing: install it with `apt-get install -y {tool}`; .ci/run does"
        );
    }
    let env = TestEnv::new("curl");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let dir = env.dir("curl");
    let curl = |file: &std::path::Path, out: &str| -> (u16, String, Value) {
        // The digest as docs/operations.md tells a person to make it, with openssl.
        let digest = std::process::Command::new("sh")
            .arg("-c")
            .arg("openssl dgst -sha256 -binary \"$1\" | openssl base64 -A")
            .arg("sh")
            .arg(file)
            .output()
            .unwrap();
        assert!(digest.status.success(), "openssl: {digest:?}");
        let digest = String::from_utf8(digest.stdout).unwrap();
        assert_eq!(
            format!("sha-256=:{}:", digest.trim()),
            Sha256::of(&std::fs::read(file).unwrap()).to_field()
        );
        let out_path = dir.join(out);
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&env.pki.ca)
            .arg("--cert")
            .arg(env.pki.client_cert("lab1"))
            .arg("--key")
            .arg(env.pki.client_key("lab1"))
            .arg("-T")
            .arg(file)
            .arg("-H")
            .arg(format!("Repr-Digest: sha-256=:{}:", digest.trim()))
            .args(["-H", "X-Code-Commit: abc", "-o"])
            .arg(&out_path)
            .args(["-w", "%{http_code} %{content_type}"])
            .arg(rcv.episode_url("lab1", "01CURL"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "curl failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (code, content_type) = stdout.split_once(' ').unwrap_or((&stdout, ""));
        let body =
            serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap_or(Value::Null);
        (code.parse().unwrap(), content_type.to_owned(), body)
    };
    // Over 1 MiB, so curl sends `Expect: 100-continue` and waits for the go-ahead.
    let file = dir.join("episode.tar.zst");
    std::fs::write(&file, bytes(2 << 20, 11)).unwrap();
    let (code, _, body) = curl(&file, "first.json");
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["stored"], "created");
    let (code, _, body) = curl(&file, "second.json");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stored"], "already_present");
    let other = dir.join("other.tar.zst");
    std::fs::write(&other, bytes(2 << 20, 12)).unwrap();
    let (code, content_type, body) = curl(&other, "third.json");
    assert_eq!(code, 409, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["type"], "conflict", "{body}");
    assert_eq!(body["status"], 409);
    assert_eq!(
        body["stored_sha256"],
        Sha256::of(&std::fs::read(&file).unwrap()).to_hex()
    );
}

// 12
#[test]
fn sigterm_drains_finishes_the_upload_in_flight_and_refuses_new_ones() {
    let env = TestEnv::new("drain");
    let cfg = env.receiver_config("r", true, "shutdown_grace = \"5s\"\n");
    let notify = env.notify_socket();
    let mut rcv = env.spawn_receiver_with(&cfg, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path());
    });
    let ready_at = notify.wait_for(Duration::from_secs(5), "READY=1");

    let body = bytes(256 << 10, 12);
    let mut conn = tls_connect(&rcv, "lab1");
    conn.send_head(
        "PUT",
        "/v1/episodes/lab1/01INFLIGHT",
        &put_headers(body.len() as u64, &Sha256::of(&body)),
    )
    .unwrap();
    conn.send(&body[..body.len() / 2]).unwrap();
    let paths = rcv.paths();
    wait_until(Duration::from_secs(5), "the upload to start", || {
        !paths.incoming_files().is_empty()
    });

    rcv.process.signal(libc::SIGTERM);
    let stopping_at = notify.wait_for(Duration::from_secs(5), "STOPPING=1");
    assert!(ready_at < stopping_at);
    let lab1 = rcv.client("lab1");
    wait_until(Duration::from_secs(5), "health to report draining", || {
        rcv.get(&lab1, "/v1/health").is_ok_and(|a| a.status == 503)
    });
    // A new upload on a new connection is answered (the listener stays open), 503.
    let refused = rcv.put(&rcv.client("lab1"), "lab1", "01LATE", b"late");
    assert_problem(&refused, 503, "unavailable");
    assert!(refused.header("retry-after").is_some(), "{refused:#?}");

    conn.send(&body[body.len() / 2..]).unwrap();
    let response = conn.read_response(Duration::from_secs(5)).unwrap();
    assert_eq!(response.status, 201, "{response:?}");
    let status = rcv
        .process
        .wait_exit(Duration::from_secs(5))
        .expect("receiver exits within shutdown_grace");
    assert!(status.success(), "{status}");
    // The lifecycle in the log, in order, by event.
    let stderr = rcv.process.stderr();
    let lifecycle: Vec<String> = logs::lines(&stderr)
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_owned))
        .filter(|e| ["ready", "stopping", "stored", "stopped"].contains(&e.as_str()))
        .collect();
    assert_eq!(
        lifecycle,
        ["ready", "stopping", "stored", "stopped"],
        "{stderr}"
    );
    assert_eq!(
        logs::events(&stderr, Event::Stopping)[0]["signal"],
        "SIGTERM"
    );
    assert_eq!(logs::events(&stderr, Event::Stopped)[0]["abandoned"], 0);
    for line in logs::lines(&stderr) {
        logs::assert_schema(&line);
    }
    assert_eq!(rcv.stored("lab1", "01INFLIGHT").as_deref(), Some(&body[..]));
    assert!(rcv.stored("lab1", "01LATE").is_none());
    assert_eq!(rcv.index_rows().len(), 1);
}

/// Runs the receiver binary with `args` to completion (10 s at most).
fn run_receiver(env: &TestEnv, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin("episode-receiver"));
    cmd.args(args);
    let mut process = episode_e2e::Proc::spawn(&mut cmd, env, "receiver-cmd");
    let status = process
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("did not exit\n{}", process.report()));
    (
        status.code().unwrap_or(-1),
        process.stdout(),
        process.stderr(),
    )
}

// 13
#[test]
fn configuration_errors_exit_78_naming_the_key() {
    let env = TestEnv::new("config-errors");
    let cases = [
        ("unknown", "listn = \"0.0.0.0:1\"\n", "listn"),
        (
            "badsize",
            "max_episode_bytes = \"lots\"\n",
            "max_episode_bytes",
        ),
        (
            "nocert",
            "[tls]\ncert = \"/nonexistent/server.pem\"\nkey = \"/nonexistent/server.key\"\n",
            "tls.cert",
        ),
        (
            "tls-unknown",
            "[tls]\ncert = \"/c.pem\"\nkey = \"/c.key\"\nclient_cert = \"/x.pem\"\n",
            "client_cert",
        ),
        (
            "auth-unknown",
            "[auth]\ntoken_file = \"/t\"\n",
            "token_file",
        ),
        (
            "window-unknown",
            "[window]\nmax_age = \"1d\"\nmax_agee = \"2d\"\n",
            "max_agee",
        ),
    ];
    for (name, extra, key) in cases {
        let cfg = env.receiver_config(name, false, extra);
        for command in ["run", "check"] {
            let (code, _, stderr) = run_receiver(
                &env,
                &[
                    "--config".as_ref(),
                    cfg.as_os_str(),
                    "--listen".as_ref(),
                    "127.0.0.1:0".as_ref(),
                    command.as_ref(),
                ],
            );
            assert_eq!(code, 78, "{name} {command}: {stderr}");
            assert!(stderr.contains(key), "{name} {command}: {stderr}");
        }
    }
}

#[test]
fn listening_on_port_0_prints_the_real_port() {
    let env = TestEnv::new("port-0");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    assert_ne!(rcv.addr.port(), 0);
    assert_eq!(rcv.url, format!("https://127.0.0.1:{}", rcv.addr.port()));
    let livez = rcv.get(&rcv.client("lab1"), "/livez").unwrap();
    assert_eq!((livez.status, livez.body.as_str()), (200, Some("ok")));
}

#[test]
fn check_passes_a_consistent_store_and_names_an_episode_whose_archive_is_gone() {
    let env = TestEnv::new("check");
    let cfg = env.receiver_config("r", true, "");
    let check = |env: &TestEnv| {
        run_receiver(
            env,
            &["--config".as_ref(), cfg.as_os_str(), "check".as_ref()],
        )
    };
    // First boot: nothing exists yet, which is fine, and check creates nothing.
    let before = tree(env.root());
    let (code, stdout, stderr) = check(&env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let logs = |t: Vec<String>| -> Vec<String> {
        t.into_iter().filter(|p| !p.starts_with("logs/")).collect()
    };
    assert_eq!(logs(tree(env.root())), logs(before));

    let mut rcv = env.spawn_receiver(&cfg);
    for episode in ["01KEPT", "01LOST"] {
        let put = rcv.put(&rcv.client("lab1"), "lab1", episode, &bytes(1000, 13));
        assert_eq!(put.status, 201, "{put:#?}");
    }
    rcv.process.kill();
    let (code, stdout, stderr) = check(&env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    std::fs::remove_file(rcv.paths().archive("lab1", "01LOST")).unwrap();
    let (code, stdout, stderr) = check(&env);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("lab1/01LOST"), "{stdout}");

    // The lost archive is uploaded again: a second row for the key, by design.
    let mut rcv = env.spawn_receiver(&cfg);
    let again = rcv.put(&rcv.client("lab1"), "lab1", "01LOST", &bytes(1000, 13));
    assert_eq!(again.status, 201, "{again:#?}");
    rcv.process.kill();
    assert_eq!(rows_for(&rcv.index_rows(), "lab1", "01LOST").len(), 2);
    let (code, stdout, stderr) = check(&env);
    assert_eq!(
        code, 0,
        "a restored archive is no problem:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("PROBLEM"), "{stdout}");
    assert!(
        stdout.contains("lab1/01LOST") && stdout.contains("the last row is used"),
        "{stdout}"
    );
}

#[test]
fn check_and_run_refuse_incoming_on_another_filesystem() {
    use std::os::unix::fs::MetadataExt as _;
    let env = TestEnv::new("other-fs");
    // Another filesystem than the temp dir's: /dev/shm (tmpfs on every Linux).
    let shm = tempfile::tempdir_in("/dev/shm")
        .expect("this test needs a writable /dev/shm (a tmpfs), as Linux has by default");
    assert_ne!(
        std::fs::metadata(shm.path()).unwrap().dev(),
        std::fs::metadata(env.root()).unwrap().dev(),
        "this test needs the temp dir off /dev/shm: unset TMPDIR or point it elsewhere"
    );
    let incoming = shm.path().join("incoming");
    let cfg = env.receiver_config(
        "r",
        false,
        &format!(
            "incoming_root = {}\n",
            episode_e2e::env::toml_str(&incoming)
        ),
    );
    for command in ["check", "run"] {
        let (code, stdout, stderr) = run_receiver(
            &env,
            &[
                "--config".as_ref(),
                cfg.as_os_str(),
                "--listen".as_ref(),
                "127.0.0.1:0".as_ref(),
                command.as_ref(),
            ],
        );
        assert_eq!(code, 78, "{command}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("incoming_root") && stderr.contains("store_root"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn a_second_receiver_on_the_same_index_exits_and_leaves_the_first_alone() {
    let env = TestEnv::new("single-instance");
    let cfg = env.receiver_config("r", true, "");
    let rcv = env.spawn_receiver(&cfg);
    let first = bytes(2000, 23);
    assert_eq!(
        rcv.put(&rcv.client("lab1"), "lab1", "01FIRST", &first)
            .status,
        201
    );
    // An upload in flight on the first receiver.
    let body = bytes(300_000, 24);
    let mut conn = tls_connect(&rcv, "lab1");
    conn.send_head(
        "PUT",
        "/v1/episodes/lab1/01INFLIGHT",
        &put_headers(body.len() as u64, &Sha256::of(&body)),
    )
    .unwrap();
    conn.send(&body[..100_000]).unwrap();
    let paths = rcv.paths();
    wait_until(Duration::from_secs(5), "the upload's temp file", || {
        !paths.incoming_files().is_empty()
    });
    let incoming_before = paths.incoming_files();
    let index_before = std::fs::read(&rcv.index_path).unwrap();
    let store_before = tree(&rcv.store_root);

    let (code, stdout, stderr) = run_receiver(
        &env,
        &[
            "--config".as_ref(),
            cfg.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "run".as_ref(),
        ],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("another episode-receiver is using")
            && stderr.contains(rcv.index_path.to_str().unwrap()),
        "{stderr}"
    );
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert_eq!(
        paths.incoming_files(),
        incoming_before,
        "the first's temp file was touched"
    );
    assert_eq!(std::fs::read(&rcv.index_path).unwrap(), index_before);
    assert_eq!(tree(&rcv.store_root), store_before);

    // The first receiver finishes its upload as if nothing happened.
    conn.send(&body[100_000..]).unwrap();
    let response = conn.read_response(Duration::from_secs(5)).unwrap();
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(rcv.stored("lab1", "01INFLIGHT").as_deref(), Some(&body[..]));
    assert_eq!(rcv.index_rows().len(), 2);
    // `check` takes no lock: it runs beside the live receiver.
    let (code, stdout, stderr) = run_receiver(
        &env,
        &["--config".as_ref(), cfg.as_os_str(), "check".as_ref()],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

/// Replaces `to` with `from`'s contents the way renewal tools do: write beside, rename.
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

// 14a
#[test]
fn a_renewed_server_certificate_is_served_without_restart_and_a_bad_one_is_ignored() {
    let env = TestEnv::new("cert-reload");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let lab1 = rcv.identity("lab1");
    let livez = |ca: &std::path::Path| {
        https_client(ca, Some(lab1))
            .get(format!("{}/livez", rcv.url))
            .send()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(livez(&env.pki.ca).unwrap(), 200);

    let rotated = env.pki.new_ca("rotated");
    let (cert, key) = rotated.issue_server("server");
    replace_file(&key, &env.pki.server_key);
    replace_file(&cert, &env.pki.server_cert);
    wait_until(
        Duration::from_secs(8),
        "the new certificate to be served",
        || livez(&rotated.cert).is_ok_and(|s| s == 200),
    );
    assert!(
        livez(&env.pki.ca).is_err(),
        "the old certificate is still served"
    );

    std::fs::write(
        &env.pki.server_cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    wait_until(
        Duration::from_secs(8),
        "the bad certificate to be rejected",
        || {
            rcv.process
                .stderr()
                .contains("keeping the last good certificates")
        },
    );
    assert_eq!(livez(&rotated.cert).unwrap(), 200);
}

// 14b
#[test]
fn a_changed_token_file_takes_effect_without_restart_and_an_empty_one_is_ignored() {
    let env = TestEnv::new("token-reload");
    let token_file = env.dir("secrets").join("token");
    std::fs::write(&token_file, "token-one\n").unwrap();
    let cfg = env.receiver_config(
        "r",
        true,
        &format!(
            "[auth]\nbearer_token_file = {}\n",
            episode_e2e::env::toml_str(&token_file)
        ),
    );
    let rcv = env.spawn_receiver(&cfg);
    let client = rcv.client("lab1");
    let health = |token: &str| {
        let response = client
            .get(format!("{}/v1/health", rcv.url))
            .bearer_auth(token)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    };
    assert_eq!(health("token-one").0, 200);
    assert_eq!(health("token-two"), (401, Some("Bearer".to_owned())));
    // /livez needs no token; uploads and metrics do.
    assert_eq!(rcv.get(&client, "/livez").unwrap().status, 200);
    assert_problem(&rcv.get(&client, "/metrics").unwrap(), 401, "unauthorized");
    let no_token = rcv.put(&client, "lab1", "01TOKEN", b"x");
    assert_problem(&no_token, 401, "unauthorized");
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));

    let next = env.dir("secrets").join("token.next");
    std::fs::write(&next, "token-two\n").unwrap();
    replace_file(&next, &token_file);
    wait_until(
        Duration::from_secs(8),
        "the new token to be accepted",
        || health("token-two").0 == 200,
    );
    assert_eq!(health("token-one").0, 401);

    std::fs::write(&token_file, "").unwrap();
    wait_until(
        Duration::from_secs(8),
        "the empty token file to be rejected",
        || rcv.process.stderr().contains("keeping the last good token"),
    );
    assert_eq!(health("token-two").0, 200);
}

#[test]
fn slow_clients_are_disconnected() {
    let env = TestEnv::new("slow-clients");
    let cfg = env.receiver_config(
        "r",
        true,
        "handshake_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n",
    );
    let rcv = env.spawn_receiver(&cfg);
    // Says nothing at all: no TLS handshake.
    let mut silent = episode_e2e::plain_connect(rcv.addr).unwrap();
    // Shakes hands, then sends half a request head.
    let mut half_head = tls_connect(&rcv, "lab1");
    half_head
        .send(b"PUT /v1/episodes/lab1/01SLOW HTTP/1.1\r\nHost: loc")
        .unwrap();
    // Completes a request, then holds the idle keep-alive connection.
    let mut idle = tls_connect(&rcv, "lab1");
    idle.send_head("GET", "/livez", &[("Content-Length", "0")])
        .unwrap();
    assert_eq!(
        idle.read_response(Duration::from_secs(5)).unwrap().status,
        200
    );

    assert!(
        silent.closed_within(Duration::from_secs(4)),
        "no handshake: still open"
    );
    assert!(
        half_head.closed_within(Duration::from_secs(4)),
        "half a head: still open"
    );
    assert!(
        idle.closed_within(Duration::from_secs(4)),
        "idle keep-alive: still open"
    );
}

#[test]
fn a_body_cut_short_stores_nothing_and_frees_its_slot() {
    let env = TestEnv::new("cut-short");
    let cfg = env.receiver_config("r", true, "max_uploads_per_host = 1\n");
    let rcv = env.spawn_receiver(&cfg);
    let body = bytes(200_000, 14);
    let head = put_headers(body.len() as u64, &Sha256::of(&body));
    let path = "/v1/episodes/lab1/01CUT";

    let mut first = tls_connect(&rcv, "lab1");
    first.send_head("PUT", path, &head).unwrap();
    first.send(&body[..50_000]).unwrap();
    let paths = rcv.paths();
    wait_until(Duration::from_secs(5), "the upload to start", || {
        !paths.incoming_files().is_empty()
    });
    // The host's only slot is taken: a second upload is told to come back later.
    let busy = rcv.put(&rcv.client("lab1"), "lab1", "01OTHER", b"other");
    assert_problem(&busy, 429, "too-many-uploads");
    assert!(busy.header("retry-after").is_some(), "{busy:#?}");

    first.shutdown();
    drop(first);
    wait_until(
        Duration::from_secs(5),
        "the temp file to be removed",
        || paths.incoming_files().is_empty(),
    );
    assert!(rcv.stored("lab1", "01CUT").is_none());
    assert!(rcv.index_rows().is_empty());
    // The slot came back: the retry gets through.
    let mut retry = None;
    wait_until(Duration::from_secs(5), "the slot to be released", || {
        let a = rcv.put(&rcv.client("lab1"), "lab1", "01CUT", &body);
        let done = a.status != 429;
        retry = Some(a);
        done
    });
    let retry = retry.unwrap();
    assert_eq!(retry.status, 201, "{retry:#?}");
    assert_eq!(rcv.stored("lab1", "01CUT").as_deref(), Some(&body[..]));
}

#[test]
fn an_early_answer_to_a_small_upload_keeps_the_connection() {
    let env = TestEnv::new("early-keepalive");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let stored = bytes(1000, 15);
    assert_eq!(
        rcv.put(&rcv.client("lab1"), "lab1", "01KEEP", &stored)
            .status,
        201
    );

    let other = bytes(50_000, 16);
    let mut conn = tls_connect(&rcv, "lab1");
    conn.send_head(
        "PUT",
        "/v1/episodes/lab1/01KEEP",
        &put_headers(other.len() as u64, &Sha256::of(&other)),
    )
    .unwrap();
    conn.send(&other).unwrap();
    let conflict = conn.read_response(Duration::from_secs(5)).unwrap();
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert_ne!(conflict.header("connection"), Some("close"), "{conflict:?}");
    // The same connection serves the next request.
    conn.send_head(
        "HEAD",
        "/v1/episodes/lab1/01KEEP",
        &[("Content-Length", "0")],
    )
    .unwrap();
    let head = conn.read_response(Duration::from_secs(5)).unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("repr-digest"),
        Some(Sha256::of(&stored).to_field().as_str())
    );
}

#[test]
fn sigterm_abandons_an_upload_that_outlasts_the_grace() {
    let env = TestEnv::new("grace-over");
    let cfg = env.receiver_config("r", true, "shutdown_grace = \"1s\"\n");
    let mut rcv = env.spawn_receiver(&cfg);
    let body = bytes(100_000, 17);
    let mut conn = tls_connect(&rcv, "lab1");
    conn.send_head(
        "PUT",
        "/v1/episodes/lab1/01SLOWPOKE",
        &put_headers(body.len() as u64, &Sha256::of(&body)),
    )
    .unwrap();
    conn.send(&body[..1000]).unwrap();
    let paths = rcv.paths();
    wait_until(Duration::from_secs(5), "the upload to start", || {
        !paths.incoming_files().is_empty()
    });
    // An idle keep-alive connection must not hold the exit up either.
    let mut idle = tls_connect(&rcv, "lab2");
    idle.send_head("GET", "/livez", &[("Content-Length", "0")])
        .unwrap();
    assert_eq!(
        idle.read_response(Duration::from_secs(5)).unwrap().status,
        200
    );

    let signalled = Instant::now();
    rcv.process.signal(libc::SIGTERM);
    let status = rcv
        .process
        .wait_exit(Duration::from_secs(5))
        .expect("receiver exits soon after shutdown_grace");
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "exited after {:?}, before the grace was over",
        signalled.elapsed()
    );
    assert!(rcv.stored("lab1", "01SLOWPOKE").is_none());
    assert!(rcv.index_rows().is_empty());
    drop((conn, idle));
    // The next start cleans up whatever the abandoned upload left.
    let rcv = env.spawn_receiver(&cfg);
    assert!(rcv.incoming_files().is_empty());
}

#[test]
fn an_index_whose_last_row_lacks_its_newline_keeps_that_row() {
    let env = TestEnv::new("unterminated-index");
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let first = bytes(2000, 18);
    assert_eq!(
        rcv.put(&rcv.client("lab1"), "lab1", "01FIRST", &first)
            .status,
        201
    );
    rcv.process.kill();
    let text = std::fs::read_to_string(&rcv.index_path).unwrap();
    let row_before: Value = serde_json::from_str(text.trim_end()).unwrap();
    std::fs::write(&rcv.index_path, text.trim_end_matches('\n')).unwrap();

    let rcv = env.spawn_receiver(&cfg);
    let created = rcv.put(&rcv.client("lab1"), "lab1", "01SECOND", &bytes(100, 19));
    assert_eq!(created.status, 201, "{created:#?}");
    let rows = rcv.index_rows();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    // The first row survives as it was written (not rebuilt from the archive).
    assert_eq!(rows[0], row_before);
    assert_eq!(rows[1]["episode_id"], "01SECOND");
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/<pid>/status")
        * 1024
}

#[test]
fn a_large_upload_streams_through_bounded_memory() {
    let env = TestEnv::new("large-upload");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let client = rcv.client("lab1");
    // Warm up: one small upload so buffers and threads exist before measuring.
    assert_eq!(
        rcv.put(&client, "lab1", "01WARM", &bytes(100_000, 20))
            .status,
        201
    );
    let before = peak_rss(rcv.process.pid());
    let body = bytes(32 << 20, 21);
    let answer = rcv.put(&client, "lab1", "01LARGE", &body);
    assert_eq!(answer.status, 201, "{answer:#?}");
    let grown = peak_rss(rcv.process.pid()).saturating_sub(before);
    eprintln!(
        "peak RSS {} KiB before, grew by {} KiB",
        before >> 10,
        grown >> 10
    );
    assert!(
        grown < 12 << 20,
        "peak RSS grew by {} MiB for a 32 MiB upload",
        grown >> 20
    );
    assert_eq!(
        std::fs::metadata(rcv.paths().archive("lab1", "01LARGE"))
            .unwrap()
            .len(),
        body.len() as u64
    );
    assert_eq!(rcv.index_rows()[1]["sha256"], Sha256::of(&body).to_hex());
}

#[test]
fn a_replaced_client_ca_takes_effect_without_restart() {
    let env = TestEnv::new("client-ca-reload");
    // The receiver trusts clients through its own copy of the client CA file.
    let client_ca = env.dir("r").join("clients-ca.pem");
    std::fs::copy(&env.pki.ca, &client_ca).unwrap();
    let cfg = env.receiver_config(
        "r",
        false,
        &format!(
            "[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n",
            episode_e2e::env::toml_str(&env.pki.server_cert),
            episode_e2e::env::toml_str(&env.pki.server_key),
            episode_e2e::env::toml_str(&client_ca),
        ),
    );
    let rcv = env.spawn_receiver(&cfg);
    let livez = |cert: &std::path::Path, key: &std::path::Path| {
        https_client(&env.pki.ca, Some((cert, key)))
            .get(format!("{}/livez", rcv.url))
            .send()
            .map(|r| r.status().as_u16())
    };
    let (lab1_cert, lab1_key) = rcv.identity("lab1");
    assert_eq!(livez(lab1_cert, lab1_key).unwrap(), 200);
    assert!(livez(&env.pki.rogue_cert, &env.pki.rogue_key).is_err());

    replace_file(&env.pki.rogue_ca, &client_ca);
    wait_until(
        Duration::from_secs(8),
        "the new client CA to be trusted",
        || livez(&env.pki.rogue_cert, &env.pki.rogue_key).is_ok_and(|s| s == 200),
    );
    assert!(
        livez(lab1_cert, lab1_key).is_err(),
        "a certificate of the replaced CA is still accepted"
    );
}

#[test]
fn a_listen_address_in_use_is_a_runtime_failure_naming_it() {
    let env = TestEnv::new("addr-in-use");
    let first = env.spawn_receiver(&env.receiver_config("a", true, ""));
    let cfg = env.receiver_config("b", true, "");
    let addr = first.addr.to_string();
    let (code, _, stderr) = run_receiver(
        &env,
        &[
            "--config".as_ref(),
            cfg.as_os_str(),
            "--listen".as_ref(),
            addr.as_ref(),
            "run".as_ref(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn the_same_content_in_another_compression_is_already_present() {
    let env = TestEnv::new("tar-digest");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let lab1 = rcv.client("lab1");
    let events = episode_e2e::episodes::jsonl(&mut rand::rng(), 200_000);
    let packed = pack("01SAMETAR", &[("events.jsonl", &events[..])]);
    let tar_digest = packed.tar_sha256.to_field();
    let first = rcv
        .put_with(
            &lab1,
            "lab1",
            "01SAMETAR",
            &packed.bytes,
            &[("x-tar-digest", &tar_digest)],
        )
        .unwrap();
    assert_eq!(first.status, 201, "{first:#?}");

    // The same tar stream, compressed harder: other bytes, same content.
    let tar_bytes = zstd::decode_all(&packed.bytes[..]).unwrap();
    let recompressed = zstd::encode_all(&tar_bytes[..], 19).unwrap();
    assert_ne!(recompressed, packed.bytes);
    let again = rcv
        .put_with(
            &lab1,
            "lab1",
            "01SAMETAR",
            &recompressed,
            &[("x-tar-digest", &tar_digest)],
        )
        .unwrap();
    assert_eq!(again.status, 200, "{again:#?}");
    assert_eq!(again.body["stored"], "already_present");
    // A 200 reports the archive that is stored, not the one just sent.
    assert_eq!(again.body["sha256"], packed.sha256.to_hex());
    assert_eq!(again.body["bytes"], packed.bytes.len() as u64);

    let head = rcv.head(&lab1, "lab1", "01SAMETAR");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-tar-digest"), Some(tar_digest.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(packed.bytes.len().to_string().as_str())
    );
    assert_eq!(rcv.stored("lab1", "01SAMETAR"), Some(packed.bytes.clone()));
    assert_eq!(rcv.index_rows().len(), 1);
}

#[test]
fn a_row_whose_archive_is_gone_never_answers_already_present() {
    let env = TestEnv::new("lost-archive");
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let body = bytes(5000, 22);
    assert_eq!(
        rcv.put(&rcv.client("lab1"), "lab1", "01GONE", &body).status,
        201
    );
    rcv.process.kill();
    // The archive is lost (disk trouble, an operator's rm); its index row stays.
    std::fs::remove_file(rcv.paths().archive("lab1", "01GONE")).unwrap();

    let rcv = env.spawn_receiver(&cfg);
    let lab1 = rcv.client("lab1");
    let head = rcv.head(&lab1, "lab1", "01GONE");
    assert_ne!(
        head.status, 200,
        "HEAD reports an archive that is not stored"
    );
    // A re-upload must not be told "already present" unless the archive is stored
    // once the answer is sent.
    let again = rcv.put(&lab1, "lab1", "01GONE", &body);
    assert!(
        !(200..300).contains(&again.status)
            || rcv.stored("lab1", "01GONE").as_deref() == Some(&body[..]),
        "answered {} {} while the store has no archive",
        again.status,
        again.body
    );
}
