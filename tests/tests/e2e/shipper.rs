//! The shipper against a live receiver over mTLS (and against stubs that play a
//! misbehaving receiver): the original Python suite, plus hold (401, 403, 3xx,
//! 2xx that stores nothing), redirects never followed, persisted backoff, the
//! crash-loop guard, requeue, retention, the headers of every request, the
//! single-instance lock, SIGTERM mid-upload and mid-repack, and malformed meta.json.

use std::time::{Duration, SystemTime};

use episode_common::Event;
use episode_e2e::{
    BlackHole, FaultProxy, Host, Mode, Reply, StubServer, TestEnv, archive_files, dir_files, logs,
    noise, wait_until, write_episode,
};
use serde_json::{Value, json};

const ID: &str = "01EPISODE";

fn meta() -> Value {
    json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600})
}

/// A finished episode with a few files.
fn episode(host: &Host, id: &str) -> std::path::PathBuf {
    write_episode(
        &host.data_root,
        id,
        &[
            ("events.jsonl", b"{\"ts\":1}\n".as_slice()),
            ("telemetry-proc.jsonl", &b"{\"cpu\":1.5}\n".repeat(500)),
        ],
        Some(meta()),
        true,
    )
}

fn once(env: &TestEnv, host: &Host) -> Value {
    let run = env.shipper(host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    run.json()
}

#[test]
fn ping_reports_the_host_and_schema_version_and_writes_nothing() {
    let env = TestEnv::new("ping-ok");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let run = env.shipper(&host, &["ping"]);
    assert_eq!(run.code(), Some(0), "{run}");
    let out = run.json();
    assert_eq!(
        (out["ok"].as_bool(), out["status"].as_u64()),
        (Some(true), Some(200)),
        "{out}"
    );
    assert_eq!(out["host_id"], "lab1");
    assert_eq!(out["schema_version"], 1);
    assert!(receiver.index_rows().is_empty(), "ping wrote to the index");
    assert!(std::fs::read_dir(&receiver.store_root).map_or(true, |mut d| d.next().is_none()));
}

#[test]
fn a_wrong_bearer_token_is_401_and_the_right_one_is_ok() {
    let env = TestEnv::new("ping-token");
    let token = env.dir("secrets").join("token");
    std::fs::write(&token, "right-token\n").unwrap();
    let config = env.receiver_config(
        "r",
        true,
        &format!(
            "[auth]\nbearer_token_file = {}\n",
            episode_e2e::env::toml_str(&token)
        ),
    );
    let receiver = env.spawn_receiver(&config);
    let wrong = env.dir("secrets").join("wrong");
    std::fs::write(&wrong, "wrong-token").unwrap();
    let receiver_table = |token_file: &std::path::Path| {
        format!(
            "[receiver]\nurl = {:?}\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\nbearer_token_file = {}\n",
            receiver.url,
            episode_e2e::env::toml_str(&env.pki.ca),
            episode_e2e::env::toml_str(&env.pki.client_cert("lab1")),
            episode_e2e::env::toml_str(&env.pki.client_key("lab1")),
            episode_e2e::env::toml_str(token_file),
        )
    };
    let bad = env.shipper_host("bad", "lab1", &receiver.url, &receiver_table(&wrong));
    let run = env.shipper(&bad, &["ping"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert_eq!(run.json()["status"], 401, "{run}");
    let good = env.shipper_host("good", "lab1", &receiver.url, &receiver_table(&token));
    let run = env.shipper(&good, &["ping"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(run.json()["ok"], true);
}

#[test]
fn an_unreachable_receiver_is_status_0_with_an_error() {
    let env = TestEnv::new("ping-down");
    // Nothing listens on port 1 of loopback: the connection is refused at once.
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    let run = env.shipper(&host, &["ping"]);
    assert_eq!(run.code(), Some(1), "{run}");
    let out = run.json();
    assert_eq!(
        (out["ok"].as_bool(), out["status"].as_u64()),
        (Some(false), Some(0)),
        "{out}"
    );
    assert!(
        out["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{out}"
    );
}

#[test]
fn missing_mtls_material_does_not_stop_the_shipper_and_ping_says_so() {
    let env = TestEnv::new("no-ca");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let missing = env.root().join("not-issued-yet/ca.pem");
    let table = format!(
        "[receiver]\nurl = {:?}\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        receiver.url,
        episode_e2e::env::toml_str(&missing),
        episode_e2e::env::toml_str(&env.pki.client_cert("lab1")),
        episode_e2e::env::toml_str(&env.pki.client_key("lab1")),
    );
    let host = env.shipper_host("lab1", "lab1", &receiver.url, &table);
    episode(&host, ID);
    let run = env.shipper(&host, &["ping"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.json()["error"]
            .as_str()
            .unwrap()
            .contains("mTLS material missing"),
        "{run}"
    );
    // A pass runs, fails transiently, and keeps everything.
    let pass = once(&env, &host);
    assert_eq!(pass["transient_failures"], 1, "{pass}");
    assert_eq!(host.list(&host.episodes()), [ID]);
    assert!(host.list(&host.quarantine()).is_empty());
}

#[test]
fn one_finished_episode_ships_and_its_archive_round_trips() {
    let env = TestEnv::new("ship-one");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let dir = episode(&host, ID);
    let original = dir_files(&dir);
    let pass = once(&env, &host);
    assert_eq!(
        (pass["scanned"].as_u64(), pass["shipped"].as_u64()),
        (Some(1), Some(1)),
        "{pass}"
    );
    assert_eq!(host.list(&host.shipped()), [ID]);
    assert!(host.list(&host.episodes()).is_empty());
    assert!(
        host.list(&host.outbox()).is_empty(),
        "outbox not emptied: {:?}",
        host.list(&host.outbox())
    );
    let stored = receiver.stored("lab1", ID).expect("stored at the receiver");
    assert_eq!(
        archive_files(&stored),
        original,
        "the archive holds exactly the episode's files"
    );
    let rows = receiver.index_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["episode_id"], ID);
    assert_eq!(rows[0]["code_commit"], "3f2c1e9a");
    assert_eq!(rows[0]["started_at"], "2026-11-22T10:00:00Z");
    assert_eq!(rows[0]["client"], "lab1");
    assert!(rows[0]["tar_sha256"].is_string());
    // The shipped copy is untouched.
    assert_eq!(dir_files(&host.shipped().join(ID)), original);
}

#[test]
fn an_episode_without_done_marker_is_untouched() {
    let env = TestEnv::new("not-done");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let dir = write_episode(
        &host.data_root,
        ID,
        &[("a.jsonl", b"x".as_slice())],
        Some(meta()),
        false,
    );
    let before = dir_files(&dir);
    let pass = once(&env, &host);
    assert_eq!(pass["scanned"], 0, "{pass}");
    assert_eq!(dir_files(&dir), before);
    assert!(host.list(&host.outbox()).is_empty() && receiver.index_rows().is_empty());
}

#[test]
fn reshipping_after_a_crash_before_retire_is_already_present_and_not_indexed_twice() {
    let env = TestEnv::new("reship");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    episode(&host, ID);
    // Recorded a day ago: the archive carries the directory's own mtime, so
    // anything that touched it on the way (a retire setting it to "now") would
    // make the second archive differ, and the re-ship a 409.
    std::fs::File::open(host.episodes().join(ID))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(86_400))
        .unwrap();
    assert_eq!(once(&env, &host)["shipped"], 1);
    // As if the shipper crashed after the 201 but before the move: the directory is
    // back where it was.
    std::fs::rename(host.shipped().join(ID), host.episodes().join(ID)).unwrap();
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    let pass = run.json();
    assert_eq!(
        (pass["shipped"].as_u64(), pass["already_present"].as_u64()),
        (Some(1), Some(1)),
        "{pass}"
    );
    // The pass_complete event carries every count of the result.
    let passes = logs::events(&run.stderr, Event::PassComplete);
    let line = passes
        .first()
        .unwrap_or_else(|| panic!("no pass_complete at info:\n{run}"));
    for (field, n) in [
        ("already_present", 1),
        ("repacked", 0),
        ("shipped", 1),
        ("scanned", 1),
    ] {
        assert_eq!(line[field], n, "{field} in {line:?}");
    }
    assert_eq!(receiver.index_rows().len(), 1);
    assert_eq!(host.list(&host.shipped()), [ID]);
}

#[test]
fn a_conflict_leaves_the_episode_and_is_not_resent_every_pass() {
    let env = TestEnv::new("conflict");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    // Someone already stored different bytes under this id.
    let other = episode_e2e::pack(ID, &[("other.txt", b"other data")]);
    assert_eq!(
        receiver
            .put(&receiver.client("lab1"), "lab1", ID, &other.bytes)
            .status,
        201
    );
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    episode(&host, ID);
    let pass = once(&env, &host);
    assert_eq!(pass["conflicts"], 1, "{pass}");
    assert_eq!(
        host.list(&host.episodes()),
        [ID],
        "the episode stays where it is"
    );
    assert!(host.list(&host.quarantine()).is_empty() && host.list(&host.shipped()).is_empty());
    let state = host.retry_state();
    assert_eq!(
        state["episodes"][ID]["conflict"]["stored_sha256"],
        other.sha256.to_hex(),
        "{state}"
    );
    // The next pass does not send it again (it is re-checked hourly).
    let puts_before = put_count(&receiver);
    let pass = once(&env, &host);
    assert_eq!(
        (pass["conflicts"].as_u64(), pass["waiting"].as_u64()),
        (Some(0), Some(1)),
        "{pass}"
    );
    assert_eq!(put_count(&receiver), puts_before);
    // status shows it.
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(status["conflicts"][0]["episode_id"], ID, "{status}");
    assert_eq!(
        receiver.stored("lab1", ID).unwrap(),
        other.bytes,
        "the stored archive is untouched"
    );
}

/// PUTs the receiver has answered, from its metrics.
fn put_count(receiver: &episode_e2e::Receiver) -> u64 {
    let answer = receiver
        .get(&receiver.client("lab1"), "/metrics")
        .expect("GET /metrics");
    let text = answer.body.as_str().unwrap_or("").to_owned();
    text.lines()
        .filter(|l| l.starts_with("episode_receiver_http_responses_total{route=\"put\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_dead_receiver_leaves_the_episode_and_its_archive_for_the_next_pass() {
    let env = TestEnv::new("receiver-down");
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    episode(&host, ID);
    let pass = once(&env, &host);
    assert_eq!(
        (
            pass["shipped"].as_u64(),
            pass["transient_failures"].as_u64()
        ),
        (Some(0), Some(1)),
        "{pass}"
    );
    assert_eq!(host.list(&host.episodes()), [ID]);
    assert!(
        host.outbox().join(format!("{ID}.tar.zst")).is_file(),
        "outbox: {:?}",
        host.list(&host.outbox())
    );
    assert!(host.list(&host.quarantine()).is_empty());
}

#[test]
fn a_dead_receiver_gets_one_probe_not_one_upload_per_episode() {
    let env = TestEnv::new("one-probe");
    let hole = BlackHole::new();
    // A black hole answers nothing: each attempt waits for idle_timeout.
    let table = format!(
        "[receiver]\nurl = {:?}\nidle_timeout = \"1s\"\nconnect_timeout = \"1s\"\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        hole.url(),
        episode_e2e::env::toml_str(&env.pki.ca),
        episode_e2e::env::toml_str(&env.pki.client_cert("lab1")),
        episode_e2e::env::toml_str(&env.pki.client_key("lab1")),
    );
    let host = env.shipper_host("lab1", "lab1", &hole.url(), &table);
    for i in 0..5 {
        episode(&host, &format!("01EP{i}"));
    }
    let started = std::time::Instant::now();
    let pass = once(&env, &host);
    assert_eq!(pass["transient_failures"], 1, "{pass}");
    assert!(
        hole.connections() <= 4,
        "{} connections for one pass",
        hole.connections()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the pass took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_fatal_400_quarantines_with_the_reason_and_the_next_pass_is_a_no_op() {
    let env = TestEnv::new("fatal");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    write_episode(
        &host.data_root,
        ID,
        &[("a.jsonl", b"{}\n".as_slice())],
        Some(json!({"started_at": 1_795_341_600})),
        true,
    );
    let pass = once(&env, &host);
    assert_eq!(pass["fatal"], 1, "{pass}");
    assert_eq!(host.list(&host.quarantine()), [ID]);
    assert!(host.list(&host.episodes()).is_empty() && host.list(&host.outbox()).is_empty());
    let reason: Value = serde_json::from_slice(
        &std::fs::read(host.quarantine().join(ID).join("quarantine_reason.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reason["status_code"], 400, "{reason}");
    assert_eq!(reason["problem_type"], "missing-code-commit");
    assert_eq!(
        reason["body"]["type"], "missing-code-commit",
        "the receiver's body is kept"
    );
    assert!(reason["error"].as_str().unwrap().contains("400"));
    assert_eq!(reason["attempts"], 1);
    assert_eq!(reason["sha256"].as_str().map(str::len), Some(64));
    assert!(
        reason["quarantined_at_wall"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(reason["quarantined_at_unix"].as_i64().unwrap() > 1_700_000_000);
    assert!(reason["shipper_version"].is_string());
    let pass = once(&env, &host);
    assert_eq!(
        (
            pass["scanned"].as_u64(),
            pass["fatal"].as_u64(),
            pass["shipped"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{pass}"
    );
    // requeue puts it back without its reason file.
    let run = env.shipper(&host, &["requeue", "--status", "400"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(host.list(&host.episodes()), [ID]);
    assert!(
        !host
            .episodes()
            .join(ID)
            .join("quarantine_reason.json")
            .exists()
    );
}

#[test]
fn a_401_holds_shipping_and_quarantines_nothing() {
    let env = TestEnv::new("hold");
    let stub = StubServer::new(Reply::problem(401, "unauthorized"));
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &stub.url(),
        "[retry]\ninitial_backoff = \"30s\"\nmax_backoff = \"1m\"\n",
    );
    for id in ["01A", "01B", "01C"] {
        episode(&host, id);
    }
    let pass = once(&env, &host);
    assert_eq!(pass["on_hold"], true, "{pass}");
    assert_eq!(pass["held"], 3, "{pass}");
    assert_eq!(stub.count("PUT"), 1, "one request, then the hold");
    assert!(host.list(&host.quarantine()).is_empty());
    assert_eq!(host.list(&host.episodes()), ["01A", "01B", "01C"]);
    // The hold survives a restart: the next run sends nothing until its re-check.
    let pass = once(&env, &host);
    assert_eq!(
        (pass["on_hold"].as_bool(), pass["held"].as_u64()),
        (Some(true), Some(3)),
        "{pass}"
    );
    assert_eq!(stub.count("PUT"), 1);
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(status["hold"]["status_code"], 401, "{status}");
}

#[test]
fn backoff_survives_a_restart() {
    let env = TestEnv::new("backoff-restart");
    let stub = StubServer::new(Reply::problem(503, "unavailable"));
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &stub.url(),
        "[retry]\ninitial_backoff = \"2s\"\nmax_backoff = \"4s\"\n",
    );
    episode(&host, ID);
    assert_eq!(once(&env, &host)["transient_failures"], 1);
    assert_eq!(stub.count("PUT"), 1);
    // Restarted at once: still backing off, nothing sent.
    for _ in 0..3 {
        let pass = once(&env, &host);
        assert_eq!(pass["transient_failures"], 0, "{pass}");
    }
    assert_eq!(
        stub.count("PUT"),
        1,
        "a restart must not shorten the backoff"
    );
    let until = host.retry_state()["backoff"]["until_ms"].as_i64().unwrap();
    // Once the backoff has passed, the next run tries again.
    wait_until(Duration::from_secs(5), "the backoff to pass", || {
        now_ms() > until
    });
    stub.set_reply(Reply::new(201, &[], json!({})));
    let pass = once(&env, &host);
    assert_eq!(pass["shipped"], 1, "{pass}");
    assert_eq!(stub.count("PUT"), 2);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn retry_after_is_honoured() {
    let env = TestEnv::new("retry-after");
    let stub = StubServer::new(Reply::new(
        429,
        &[("retry-after", "30")],
        json!({"type": "too-many-uploads", "status": 429}),
    ));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    episode(&host, ID);
    let before = now_ms();
    assert_eq!(once(&env, &host)["transient_failures"], 1);
    let until = host.retry_state()["backoff"]["until_ms"].as_i64().unwrap();
    assert!(
        until - before >= 29_000,
        "backoff of {} ms ignores Retry-After: 30",
        until - before
    );
}

#[test]
fn a_second_shipper_on_the_same_data_root_is_refused() {
    let env = TestEnv::new("lock");
    let hole = BlackHole::new();
    let host = env.shipper_host("lab1", "lab1", &hole.url(), "");
    let daemon = env.spawn_shipper(&host, |_| {});
    wait_until(
        Duration::from_secs(5),
        "the daemon to hold the lock",
        || std::fs::read_to_string(host.state().join("lock")).is_ok_and(|s| !s.trim().is_empty()),
    );
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.stderr.contains("already running"), "{run}");
    drop(daemon);
}

#[test]
fn a_malformed_meta_json_does_not_crash_anything() {
    let env = TestEnv::new("bad-meta");
    let receiver =
        env.spawn_receiver(&env.receiver_config("r", true, "require_code_commit = false\n"));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let dir = write_episode(
        &host.data_root,
        ID,
        &[("a.jsonl", b"{}\n".as_slice())],
        None,
        true,
    );
    std::fs::write(dir.join("meta.json"), b"{\"code_commit\": \"abc\", oops").unwrap();
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(run.json()["shipped"], 1, "{run}");
    assert!(
        run.stderr.contains("meta.json"),
        "the problem is named in the log:\n{run}"
    );
    let rows = receiver.index_rows();
    assert_eq!(rows[0]["code_commit"], Value::Null);
}

#[test]
fn orphan_archives_and_partials_are_swept() {
    let env = TestEnv::new("orphans");
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    std::fs::create_dir_all(host.outbox()).unwrap();
    for name in [
        "01GONE.tar.zst",
        "01GONE.json",
        "01GONE.tar.zst.partial",
        "01LIVE.tar.zst.partial",
    ] {
        std::fs::write(host.outbox().join(name), b"leftover").unwrap();
    }
    write_episode(
        &host.data_root,
        "01LIVE",
        &[("a", b"x".as_slice())],
        Some(meta()),
        false,
    );
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert!(
        host.list(&host.outbox()).is_empty(),
        "left: {:?}",
        host.list(&host.outbox())
    );
    // Said in the log, by event, naming what went.
    let swept = logs::events(&run.stderr, Event::OrphansSwept);
    assert!(!swept.is_empty(), "{run}");
    let files = swept[0]["files"].as_str().unwrap_or_default();
    assert!(files.contains("01GONE.tar.zst.partial"), "{swept:?}");
}

#[test]
fn quarantine_cleanup_honours_keep_days_zero_and_the_interval_gate() {
    let env = TestEnv::new("cleanup");
    let host = env.shipper_host(
        "lab1",
        "lab1",
        "https://127.0.0.1:1",
        "[quarantine]\nkeep_days = 30\ncleanup_interval = \"1h\"\n",
    );
    let old = |name: &str| {
        let dir = host.quarantine().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("quarantine_reason.json"), b"{}").unwrap();
        let when = SystemTime::now() - Duration::from_secs(40 * 86_400);
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(when)
            .unwrap();
    };
    std::fs::create_dir_all(host.quarantine()).unwrap();
    old("01OLD");
    let young = host.quarantine().join("01YOUNG");
    std::fs::create_dir_all(&young).unwrap();
    once(&env, &host);
    assert_eq!(
        host.list(&host.quarantine()),
        ["01YOUNG"],
        "the 40-day-old entry is removed"
    );
    // Within cleanup_interval nothing is cleaned again, even a new old entry.
    old("01OLD2");
    once(&env, &host);
    assert_eq!(
        host.list(&host.quarantine()),
        ["01OLD2", "01YOUNG"],
        "held back by the interval gate"
    );

    // keep_days = 0 disables cleanup.
    let keep = env.shipper_host(
        "keep",
        "lab1",
        "https://127.0.0.1:1",
        "[quarantine]\nkeep_days = 0\ncleanup_interval = \"0s\"\n",
    );
    let dir = keep.quarantine().join("01ANCIENT");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::open(&dir)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(400 * 86_400))
        .unwrap();
    once(&env, &keep);
    assert_eq!(keep.list(&keep.quarantine()), ["01ANCIENT"]);
}

#[test]
fn the_heartbeat_fires_each_pass_and_a_failing_one_does_not_stop_the_loop() {
    let env = TestEnv::new("heartbeat");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "scan_interval = \"200ms\"\n");
    let notify = env.notify_socket();
    let daemon = env.spawn_shipper(&host, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path())
            .env("WATCHDOG_USEC", "2000000");
    });
    notify.wait_for(Duration::from_secs(5), "READY=1");
    wait_until(Duration::from_secs(5), "three heartbeats", || {
        notify.count("WATCHDOG=1") >= 3
    });
    assert!(
        notify.count("STATUS=backlog") >= 1,
        "{:?}",
        notify.messages()
    );
    drop(daemon);

    // A notify socket that does not exist: every notify fails, the loop goes on.
    let broken = env.shipper_host(
        "broken",
        "lab1",
        &receiver.url,
        "scan_interval = \"200ms\"\n",
    );
    let daemon = env.spawn_shipper(&broken, |cmd| {
        cmd.env("NOTIFY_SOCKET", env.root().join("no-such-dir/notify.sock"))
            .env("WATCHDOG_USEC", "2000000");
    });
    std::thread::sleep(Duration::from_millis(300));
    episode(&broken, ID);
    wait_until(
        Duration::from_secs(5),
        "the episode to ship despite failing notifies",
        || broken.list(&broken.shipped()) == [ID],
    );
    drop(daemon);
}

#[test]
fn sigterm_mid_upload_exits_0_with_a_consistent_data_root() {
    let env = TestEnv::new("sigterm-upload");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let proxy = FaultProxy::new(receiver.addr);
    proxy.set_mode(Mode::StallAfter(64 << 10));
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), "shutdown_grace = \"1s\"\n");
    // An episode too large to fit in the stalled window.
    let big: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_episode(
        &host.data_root,
        ID,
        &[("blob.bin", big.as_slice())],
        Some(meta()),
        true,
    );
    let notify = env.notify_socket();
    let mut daemon = env.spawn_shipper(&host, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path());
    });
    notify.wait_for(Duration::from_secs(5), "READY=1");
    wait_until(Duration::from_secs(8), "the upload to be under way", || {
        proxy.bytes_up() >= 64 << 10
    });
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("exit within the grace");
    assert_eq!(status.code(), Some(0), "{}", daemon.report());
    assert!(notify.count("STOPPING=1") >= 1);
    // The lifecycle in the log, in order, by event.
    let stderr = daemon.stderr();
    let lifecycle: Vec<String> = logs::lines(&stderr)
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_owned))
        .filter(|e| ["ready", "stopping", "stopped"].contains(&e.as_str()))
        .collect();
    assert_eq!(lifecycle, ["ready", "stopping", "stopped"], "{stderr}");
    assert_eq!(
        logs::events(&stderr, Event::Stopping)[0]["signal"],
        "SIGTERM"
    );
    assert_eq!(logs::events(&stderr, Event::Ready)[0]["host_id"], "lab1");
    for line in logs::lines(&stderr) {
        logs::assert_schema(&line);
    }
    // Consistent: the episode is still pending, its archive (if any) complete, no partials.
    assert_eq!(host.list(&host.episodes()), [ID]);
    assert!(
        host.list(&host.outbox())
            .iter()
            .all(|n| !n.ends_with(".partial")),
        "{:?}",
        host.list(&host.outbox())
    );
    assert!(host.list(&host.shipped()).is_empty());
    // And the next run ships it.
    proxy.set_mode(Mode::Pass);
    assert_eq!(once(&env, &host)["shipped"], 1);
    assert_eq!(
        receiver.stored("lab1", ID).map(|b| archive_files(&b)),
        Some(dir_files(&host.shipped().join(ID)))
    );
}

#[test]
fn certificates_that_appear_later_are_picked_up_without_a_restart() {
    let env = TestEnv::new("late-certs");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let later = env.dir("later");
    let (cert, key) = (later.join("client.pem"), later.join("client.key"));
    let table = format!(
        "[receiver]\nurl = {:?}\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        receiver.url,
        episode_e2e::env::toml_str(&env.pki.ca),
        episode_e2e::env::toml_str(&cert),
        episode_e2e::env::toml_str(&key),
    );
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &receiver.url,
        &format!("{table}[retry]\ninitial_backoff = \"200ms\"\nmax_backoff = \"500ms\"\n"),
    );
    episode(&host, ID);
    let daemon = env.spawn_shipper(&host, |_| {});
    wait_until(
        Duration::from_secs(5),
        "a transient failure naming the missing material",
        || daemon.stderr().contains("mTLS material missing"),
    );
    std::fs::copy(env.pki.client_cert("lab1"), &cert).unwrap();
    std::fs::copy(env.pki.client_key("lab1"), &key).unwrap();
    wait_until(
        Duration::from_secs(8),
        "the episode to ship once the files exist",
        || host.list(&host.shipped()) == [ID],
    );
    assert_eq!(receiver.index_rows().len(), 1);
    drop(daemon);
}

#[test]
fn config_errors_exit_78_naming_the_key() {
    let env = TestEnv::new("shipper-config");
    let host = env.shipper_host(
        "lab1",
        "lab1",
        "https://127.0.0.1:1",
        "compression_level = 99\n",
    );
    for args in [["once"].as_slice(), &["check"], &["run"], &["status"]] {
        let run = env.shipper(&host, args);
        assert_eq!(run.code(), Some(78), "{args:?}: {run}");
        assert!(
            run.stderr.contains("compression_level") && run.stderr.contains("shipper.toml"),
            "{run}"
        );
    }
    let typo = env.shipper_host(
        "typo",
        "lab1",
        "https://127.0.0.1:1",
        "scan_intervall = \"5s\"\n",
    );
    let run = env.shipper(&typo, &["check"]);
    assert_eq!(run.code(), Some(78), "{run}");
    assert!(run.stderr.contains("scan_intervall"), "{run}");
}

#[test]
fn digest_mismatches_repack_and_the_third_quarantines() {
    let env = TestEnv::new("repack");
    let stub = StubServer::new(Reply::problem(400, "digest-mismatch"));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    episode(&host, ID);
    let pass = once(&env, &host);
    assert_eq!(
        (pass["repacked"].as_u64(), pass["fatal"].as_u64()),
        (Some(2), Some(1)),
        "{pass}"
    );
    assert_eq!(
        stub.count("PUT"),
        3,
        "sent, repacked and sent twice, then quarantined"
    );
    let reason: Value = serde_json::from_slice(
        &std::fs::read(host.quarantine().join(ID).join("quarantine_reason.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (reason["problem_type"].as_str(), reason["attempts"].as_u64()),
        (Some("digest-mismatch"), Some(3)),
        "{reason}"
    );
    // Every attempt carried the same, correct digests (the archive is deterministic).
    let digests: Vec<Option<String>> = stub
        .requests()
        .iter()
        .map(|r| r.header("repr-digest").map(str::to_owned))
        .collect();
    assert!(
        digests.iter().all(|d| d.is_some() && *d == digests[0]),
        "{digests:?}"
    );
}

#[test]
fn urls_that_are_not_a_receiver_hold_instead_of_quarantining() {
    for (status, headers) in [
        (404, vec![]),
        (405, vec![]),
        (501, vec![]),
        (301, vec![("location", "http://elsewhere/")]),
        // A WebDAV server stores the PUT as a file of its own: not our receiver.
        (204, vec![]),
        (202, vec![]),
    ] {
        let env = TestEnv::new(&format!("hold-{status}"));
        let stub = StubServer::new(Reply::new(
            status,
            &headers,
            json!({"detail": "not a receiver"}),
        ));
        let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
        episode(&host, ID);
        let pass = once(&env, &host);
        assert_eq!(
            (pass["on_hold"].as_bool(), pass["fatal"].as_u64()),
            (Some(true), Some(0)),
            "{status}: {pass}"
        );
        assert_eq!(host.list(&host.episodes()), [ID], "{status}");
        assert!(host.list(&host.quarantine()).is_empty(), "{status}");
        assert_eq!(
            host.retry_state()["hold"]["status_code"],
            status,
            "{status}"
        );
    }
}

#[test]
fn an_idle_pass_writes_nothing() {
    let env = TestEnv::new("idle-pass");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    episode(&host, ID);
    assert_eq!(once(&env, &host)["shipped"], 1);
    let snapshot = |h: &Host| -> Vec<(String, Option<SystemTime>)> {
        episode_e2e::tree(&h.data_root)
            .into_iter()
            .filter(|p| !p.ends_with("lock"))
            .map(|p| {
                let m = std::fs::metadata(h.data_root.join(&p))
                    .ok()
                    .and_then(|m| m.modified().ok());
                (p, m)
            })
            .collect()
    };
    let before = snapshot(&host);
    std::thread::sleep(Duration::from_millis(20));
    let pass = once(&env, &host);
    assert_eq!(
        (pass["scanned"].as_u64(), pass["shipped"].as_u64()),
        (Some(0), Some(0)),
        "{pass}"
    );
    assert_eq!(
        snapshot(&host),
        before,
        "an idle pass changed the data root"
    );
}

#[test]
fn check_validates_read_only_and_status_reports_everything() {
    let env = TestEnv::new("check-status");
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    std::fs::remove_dir_all(&host.data_root).unwrap();
    let run = env.shipper(&host, &["check"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert!(!host.data_root.exists(), "check created the data root");
    // A backlog, a quarantined episode, an unfinished one: status tells them apart.
    episode(&host, "01A");
    episode(&host, "01B");
    write_episode(
        &host.data_root,
        "01REC",
        &[("a", b"x".as_slice())],
        None,
        false,
    );
    let q = host.quarantine().join("01Q");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(q.join("quarantine_reason.json"), json!({"status_code": 412, "problem_type": "out-of-window", "error": "x", "body": null, "attempts": 1, "sha256": null, "quarantined_at_wall": "2026-11-22T10:00:00Z", "quarantined_at_unix": 1, "shipper_version": "0"}).to_string()).unwrap();
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(status["backlog"]["episodes"], 2, "{status}");
    assert_eq!(status["backlog"]["unfinished"], 1);
    assert!(status["backlog"]["bytes"].as_u64().unwrap() > 6000);
    assert_eq!(status["backlog"]["oldest"], "01A");
    assert_eq!(status["quarantine"]["total"], 1);
    assert_eq!(status["quarantine"]["by_reason"]["412 out-of-window"], 1);
    assert_eq!(status["hold"], Value::Null);
    let human = env.shipper(&host, &["status"]);
    assert_eq!(human.code(), Some(0), "{human}");
    assert!(
        human.stdout.contains("backlog     2 episode(s)")
            && human.stdout.contains("412 out-of-window"),
        "{human}"
    );
    // Passes that died mid-pass (the crash-loop guard) are shown with when uploads resume.
    std::fs::create_dir_all(host.state()).unwrap();
    let resume_ms = now_ms() + 600_000;
    let marker = json!({"pass_under_way": {"started_ms": now_ms() - 5_000, "unfinished": 3, "resume_ms": resume_ms}});
    std::fs::write(host.state().join("retry.json"), marker.to_string()).unwrap();
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(status["pass_under_way"]["unfinished_passes"], 3, "{status}");
    let resume = status["pass_under_way"]["uploads_resume_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(resume.ends_with('Z'), "{status}");
    let human = env.shipper(&host, &["status"]);
    assert!(
        human
            .stdout
            .contains("CRASH LOOP  3 passes in a row did not finish")
            && human
                .stdout
                .contains(&format!("uploads resume at {resume}")),
        "{human}"
    );
    // A corrupt state file is a note, not a failure, and is set aside at the next start.
    std::fs::create_dir_all(host.state()).unwrap();
    std::fs::write(host.state().join("retry.json"), b"{ torn").unwrap();
    let run = env.shipper(&host, &["check"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert!(run.stdout.contains("corrupt"), "{run}");
    once(&env, &host);
    assert!(
        host.list(&host.state())
            .iter()
            .any(|n| n.starts_with("retry.json.corrupt-")),
        "{:?}",
        host.list(&host.state())
    );
}

/// A stub at `status` redirecting to `target` (which answers 200 to anything).
fn redirecting(status: u16, target: &StubServer, path: &str) -> StubServer {
    StubServer::new(Reply::new(
        status,
        &[("location", &format!("{}{path}", target.url()))],
        json!({}),
    ))
}

#[test]
fn a_redirected_put_is_never_followed_and_holds_shipping() {
    for status in [303, 307] {
        let env = TestEnv::new(&format!("redirect-{status}"));
        // Where the redirect points: anything there "succeeds", storing nothing of ours.
        let elsewhere = StubServer::new(Reply::new(200, &[], json!({"ok": true})));
        let stub = redirecting(status, &elsewhere, &format!("/v1/episodes/lab1/{ID}"));
        let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
        episode(&host, ID);
        let run = env.shipper(&host, &["once"]);
        assert_eq!(run.code(), Some(0), "{run}");
        let pass = run.json();
        assert_eq!(
            (
                pass["shipped"].as_u64(),
                pass["on_hold"].as_bool(),
                pass["fatal"].as_u64()
            ),
            (Some(0), Some(true), Some(0)),
            "{status}: {pass}\n{run}"
        );
        assert_eq!(
            host.list(&host.episodes()),
            [ID],
            "{status}: nothing retired"
        );
        assert!(host.list(&host.shipped()).is_empty(), "{status}");
        assert!(host.list(&host.quarantine()).is_empty(), "{status}");
        assert!(
            elsewhere.requests().is_empty(),
            "{status}: the redirect was followed: {:?}",
            elsewhere.requests()
        );
        let hold = &host.retry_state()["hold"];
        assert_eq!(hold["status_code"], status, "{hold}");
        assert!(
            hold["error"]
                .as_str()
                .is_some_and(|e| e.contains("redirect") && e.contains("receiver.url")),
            "{hold}"
        );
    }
}

#[test]
fn ping_through_a_redirect_fails() {
    let env = TestEnv::new("ping-redirect");
    let elsewhere = StubServer::new(Reply::new(
        200,
        &[],
        json!({"ok": true, "host_id": "lab1", "schema_version": 1}),
    ));
    let stub = redirecting(302, &elsewhere, "/v1/health");
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    let run = env.shipper(&host, &["ping"]);
    assert_eq!(run.code(), Some(1), "{run}");
    let out = run.json();
    assert_eq!(
        (out["ok"].as_bool(), out["status"].as_u64()),
        (Some(false), Some(302)),
        "{out}"
    );
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("redirect")),
        "{out}"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    assert_eq!(stub.count("GET"), 1);
}

/// Waits until every wait in the retry state (hold re-check, backoff) has passed.
fn wait_out_the_hold_and_backoff(host: &Host) {
    let state = host.retry_state();
    let until = [&state["hold"]["recheck_ms"], &state["backoff"]["until_ms"]]
        .iter()
        .filter_map(|v| v.as_i64())
        .max()
        .unwrap_or(0);
    wait_until(Duration::from_secs(5), "the re-check to be due", || {
        now_ms() > until
    });
}

#[test]
fn a_transient_failure_during_a_hold_keeps_the_hold() {
    let env = TestEnv::new("hold-transient");
    let stub = StubServer::new(Reply::problem(401, "unauthorized"));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    episode(&host, ID);
    let first = env.shipper(&host, &["once"]);
    assert_eq!(first.json()["on_hold"], true, "{first}");
    assert!(first.stderr.contains("hold_started"), "{first}");
    let since = host.retry_state()["hold"]["since_unix"].clone();

    // At the re-check the receiver is down (503): that says nothing about the
    // credentials, so the hold stays and its re-check moves back.
    wait_out_the_hold_and_backoff(&host);
    stub.set_reply(Reply::problem(503, "unavailable"));
    let before = now_ms();
    let second = env.shipper(&host, &["once"]);
    let pass = second.json();
    assert_eq!(
        (
            pass["transient_failures"].as_u64(),
            pass["on_hold"].as_bool()
        ),
        (Some(1), Some(true)),
        "{pass}\n{second}"
    );
    assert!(!second.stderr.contains("hold_ended"), "{second}");
    let hold = host.retry_state()["hold"].clone();
    assert_eq!(hold["status_code"], 401, "the hold stays: {hold}");
    assert_eq!(hold["since_unix"], since, "{hold}");
    assert!(
        hold["recheck_ms"].as_i64().unwrap() >= before + 300,
        "the re-check is pushed back by the backoff: {hold}"
    );
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(status["hold"]["status_code"], 401, "{status}");

    // A 401 again is the same hold, not a new one.
    wait_out_the_hold_and_backoff(&host);
    stub.set_reply(Reply::problem(401, "unauthorized"));
    let third = env.shipper(&host, &["once"]);
    assert_eq!(third.json()["on_hold"], true, "{third}");
    assert!(!third.stderr.contains("hold_started"), "{third}");

    // Stored at last: that ends the hold.
    wait_out_the_hold_and_backoff(&host);
    stub.set_reply(Reply::new(201, &[], json!({})));
    let last = env.shipper(&host, &["once"]);
    assert_eq!(last.json()["shipped"], 1, "{last}");
    assert!(last.stderr.contains("hold_ended"), "{last}");
    assert_eq!(host.retry_state()["hold"], Value::Null);
}

#[test]
fn a_certificate_for_another_host_holds_with_403_and_quarantines_nothing() {
    let env = TestEnv::new("hold-403");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    // host_id lab1, but the certificate names lab2.
    let table = format!(
        "[receiver]\nurl = {:?}\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        receiver.url,
        episode_e2e::env::toml_str(&env.pki.ca),
        episode_e2e::env::toml_str(&env.pki.client_cert("lab2")),
        episode_e2e::env::toml_str(&env.pki.client_key("lab2")),
    );
    let host = env.shipper_host("lab1", "lab1", &receiver.url, &table);
    for id in ["01A", "01B"] {
        episode(&host, id);
    }
    let pass = once(&env, &host);
    assert_eq!(
        (
            pass["on_hold"].as_bool(),
            pass["held"].as_u64(),
            pass["fatal"].as_u64(),
            pass["shipped"].as_u64()
        ),
        (Some(true), Some(2), Some(0), Some(0)),
        "{pass}"
    );
    assert_eq!(host.list(&host.episodes()), ["01A", "01B"]);
    assert!(host.list(&host.quarantine()).is_empty());
    let hold = &host.retry_state()["hold"];
    assert_eq!(
        (hold["status_code"].as_u64(), hold["problem_type"].as_str()),
        (Some(403), Some("forbidden-identity")),
        "{hold}"
    );
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(status["hold"]["status_code"], 403, "{status}");
    assert!(receiver.index_rows().is_empty());
}

#[test]
fn every_request_names_the_host_and_the_shipper() {
    let env = TestEnv::new("request-headers");
    let stub = StubServer::new(Reply::new(201, &[], json!({})));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    // Over 1 MiB of archive: asked about with HEAD before the PUT.
    let blob = noise(1_500_000, 7);
    write_episode(
        &host.data_root,
        ID,
        &[("blob.bin", blob.as_slice())],
        Some(meta()),
        true,
    );
    assert_eq!(once(&env, &host)["shipped"], 1);
    stub.set_reply(Reply::new(
        200,
        &[],
        json!({"ok": true, "host_id": "lab1", "schema_version": 1}),
    ));
    let run = env.shipper(&host, &["ping"]);
    assert_eq!(run.code(), Some(0), "{run}");
    let requests = stub.requests();
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["HEAD", "PUT", "GET"], "{requests:?}");
    for r in &requests {
        assert_eq!(
            r.header("x-host-id"),
            Some("lab1"),
            "{} {}",
            r.method,
            r.path
        );
        assert!(
            r.header("user-agent")
                .is_some_and(|ua| ua.starts_with("episode-shipper/")),
            "{} {}: user-agent {:?}",
            r.method,
            r.path,
            r.header("user-agent")
        );
    }
}

#[test]
fn shipped_keep_days_removes_old_shipped_entries_only() {
    let env = TestEnv::new("shipped-retention");
    let host = env.shipper_host(
        "lab1",
        "lab1",
        "https://127.0.0.1:1",
        "[shipped]\nkeep_days = 7\n",
    );
    std::fs::create_dir_all(host.shipped()).unwrap();
    for (name, age_days) in [("01OLD", 10), ("01YOUNG", 1)] {
        let dir = host.shipped().join(name);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/events.jsonl"), b"{}\n").unwrap();
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
            .unwrap();
    }
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(host.list(&host.shipped()), ["01YOUNG"], "{run}");
    assert!(run.stderr.contains("shipped_cleaned"), "{run}");
}

#[test]
fn requeue_by_id_and_all_moves_episodes_back_with_fresh_retry_state() {
    let env = TestEnv::new("requeue");
    let stub = StubServer::new(Reply::problem(400, "missing-code-commit"));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    for id in ["01A", "01B", "01C"] {
        episode(&host, id);
    }
    assert_eq!(once(&env, &host)["fatal"], 3);
    assert_eq!(host.list(&host.quarantine()), ["01A", "01B", "01C"]);
    // Retry state left for 01A (as a crash between the quarantine and the state
    // save leaves it): a far next attempt that must not follow it back.
    let mut state = host.retry_state();
    if state.is_null() {
        state = json!({});
    }
    state["episodes"] = json!({"01A": {
        "attempts": 7, "next_attempt_ms": now_ms() + 3_600_000, "last_status": 503
    }});
    std::fs::write(
        host.state().join("retry.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();

    let run = env.shipper(&host, &["requeue", "01A"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert!(run.stdout.contains("requeued 01A"), "{run}");
    assert_eq!(host.list(&host.episodes()), ["01A"]);
    assert_eq!(host.list(&host.quarantine()), ["01B", "01C"]);
    assert!(!host.episodes().join("01A/quarantine_reason.json").exists());
    assert_eq!(
        host.retry_state()["episodes"]["01A"],
        Value::Null,
        "requeue drops the retry state: {}",
        host.retry_state()
    );

    let run = env.shipper(&host, &["requeue", "01NOPE"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.stderr.contains("01NOPE: not in quarantine"), "{run}");

    let run = env.shipper(&host, &["requeue", "--all"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(host.list(&host.episodes()), ["01A", "01B", "01C"]);
    assert!(host.list(&host.quarantine()).is_empty());
    for id in ["01B", "01C"] {
        assert!(
            !host
                .episodes()
                .join(id)
                .join("quarantine_reason.json")
                .exists()
        );
    }
    // Fresh: all three go at the next pass.
    stub.set_reply(Reply::new(201, &[], json!({})));
    let pass = once(&env, &host);
    assert_eq!(
        (pass["shipped"].as_u64(), pass["waiting"].as_u64()),
        (Some(3), Some(0)),
        "{pass}"
    );
}

#[test]
fn a_shipper_killed_mid_upload_waits_a_backoff_before_sending_again() {
    let env = TestEnv::new("crash-guard");
    let hole = BlackHole::new();
    let initial = Duration::from_secs(2);
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &hole.url(),
        "[retry]\ninitial_backoff = \"2s\"\nmax_backoff = \"4s\"\n",
    );
    episode(&host, ID);
    let first = env.spawn_shipper(&host, |_| {});
    wait_until(
        Duration::from_secs(5),
        "the first upload to connect",
        || hole.connections() >= 1,
    );
    let first_connect = std::time::Instant::now();
    assert!(
        !host.retry_state()["pass_under_way"].is_null(),
        "the pass is marked before it uploads: {}",
        host.retry_state()
    );
    drop(first); // SIGKILL mid-upload: no answer was ever recorded
    let second = env.spawn_shipper(&host, |_| {});
    wait_until(Duration::from_secs(5), "the guard to be logged", || {
        second.stderr().contains("crash_loop_guard")
    });
    std::thread::sleep(
        initial
            .saturating_sub(first_connect.elapsed())
            .saturating_sub(Duration::from_millis(300)),
    );
    assert_eq!(
        hole.connections(),
        1,
        "re-sent at once after the crash\n{}",
        second.report()
    );
    wait_until(
        Duration::from_secs(5),
        "the upload after the backoff",
        || hole.connections() >= 2,
    );
    assert!(
        first_connect.elapsed() + Duration::from_millis(300) >= initial,
        "sent again after {:?}",
        first_connect.elapsed()
    );
    let marker = host.retry_state()["pass_under_way"].clone();
    assert_eq!(marker["unfinished"], 2, "{marker}");
    drop(second);
}

#[test]
fn sigterm_during_a_repack_sends_nothing_more() {
    let env = TestEnv::new("repack-stop");
    let stub = StubServer::new(Reply::problem(400, "digest-mismatch"));
    // A slow compression level, so the repack takes a while.
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &stub.url(),
        "compression_level = 17\nshutdown_grace = \"5s\"\n",
    );
    let blob = noise(3 << 20, 3);
    write_episode(
        &host.data_root,
        ID,
        &[("blob.bin", blob.as_slice())],
        Some(meta()),
        true,
    );
    let mut daemon = env.spawn_shipper(&host, |_| {});
    wait_until(Duration::from_secs(8), "the first answer, a repack", || {
        logs::events(&daemon.stderr(), Event::ShipResult)
            .iter()
            .any(|l| l["outcome"] == "repack")
    });
    // Into the repack (it runs for a while at this level).
    std::thread::sleep(Duration::from_millis(100));
    daemon.signal(libc::SIGTERM);
    let asked = std::time::Instant::now();
    let status = daemon
        .wait_exit(Duration::from_secs(8))
        .expect("exit after the repack");
    assert_eq!(status.code(), Some(0), "{}", daemon.report());
    eprintln!("repack-stop: exited {:?} after SIGTERM", asked.elapsed());
    assert_eq!(
        (stub.count("PUT"), stub.count("HEAD")),
        (1, 1),
        "sent again after SIGTERM: {:?}\n{}",
        stub.requests(),
        daemon.report()
    );
    assert_eq!(host.list(&host.episodes()), [ID]);
    assert!(host.list(&host.quarantine()).is_empty());
}

/// Whether `strace` is installed and may trace our children here.
fn strace_works() -> bool {
    std::process::Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_abandoned_pass_makes_its_retires_durable_before_exiting_0() {
    assert!(
        strace_works(),
        "strace is missing or may not trace here: install it with `apt-get install -y strace` \
         (in a container, allow ptrace); .ci/run does"
    );
    let env = TestEnv::new("abandon-fsync");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let proxy = FaultProxy::new(receiver.addr);
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), "shutdown_grace = \"1s\"\n");
    // 01A is small and ships first, alone; 01B is large and stalls on the wire.
    episode(&host, "01A");
    let big = noise(12 << 20, 11);
    write_episode(
        &host.data_root,
        "01B",
        &[("blob.bin", big.as_slice())],
        Some(meta()),
        true,
    );
    proxy.set_mode(Mode::StallAfter(256 << 10));
    // The real binary under strace: which directories it fsyncs, and when.
    let trace = env.root().join("strace.out");
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-y", "-e", "trace=fsync,rename,renameat2", "-o"])
        .arg(&trace)
        .arg(episode_e2e::bin("episode-shipper"))
        .arg("--config")
        .arg(&host.config)
        .args(["--log-format", "text", "run"])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    let mut traced = episode_e2e::Proc::spawn(&mut cmd, &env, "strace-shipper");
    wait_until(Duration::from_secs(8), "01A retired, 01B stalled", || {
        host.list(&host.shipped()) == ["01A"] && proxy.bytes_up() >= 256 << 10
    });
    // SIGTERM to the shipper itself (its pid is in the lock file), not to strace.
    let pid: i32 = std::fs::read_to_string(host.state().join("lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the shipper, a live child of our strace child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = traced
        .wait_exit(Duration::from_secs(6))
        .expect("exit after the grace");
    assert_eq!(status.code(), Some(0), "{}", traced.report());
    assert!(
        traced.stderr().contains("upload abandoned"),
        "the grace did not abandon the pass:\n{}",
        traced.report()
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let shipped = format!("{}>", host.shipped().display());
    let retire = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("/shipped/01A\""))
        .unwrap_or_else(|| panic!("no rename into shipped/ traced:\n{text}"));
    assert!(
        lines[retire..]
            .iter()
            .any(|l| l.contains("fsync(") && l.contains(&shipped) && l.contains("= 0")),
        "shipped/ was never fsynced after the retire, yet the shipper exited 0:\n{}",
        lines[retire..].join("\n")
    );
    assert_eq!(host.list(&host.shipped()), ["01A"]);
    assert_eq!(host.list(&host.episodes()), ["01B"]);
}

/// The fields of a text line (`key=value`, quoted values read whole), in order.
fn text_fields(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq].rfind(' ').map_or(0, |i| i + 1);
        let key = rest[key_start..eq].to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut end = 0;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            (
                quoted[..end].to_owned(),
                &quoted[(end + 1).min(quoted.len())..],
            )
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.push((key, value));
        rest = next;
    }
    out
}

#[test]
fn ship_result_and_pass_complete_follow_the_log_schema_in_json_and_text() {
    let env = TestEnv::new("log-schema");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    episode(&host, "01A");
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    for line in logs::lines(&run.stderr) {
        logs::assert_schema(&line);
    }
    let ships = logs::events(&run.stderr, Event::ShipResult);
    assert_eq!(ships.len(), 1, "{run}");
    let ship = &ships[0];
    assert_eq!(ship["episode_id"], "01A");
    assert_eq!(ship["outcome"], "shipped");
    assert_eq!(ship["status_code"], 201);
    assert_eq!(ship["attempt"], 1);
    assert!(ship["bytes"].as_u64().is_some_and(|b| b > 0), "{ship:?}");
    assert!(ship["duration_ms"].is_u64(), "{ship:?}");
    for absent in ["problem_type", "error", "status", "message"] {
        assert!(!ship.contains_key(absent), "{absent} in {ship:?}");
    }
    let pass = &logs::events(&run.stderr, Event::PassComplete)[0];
    assert_eq!(pass["pass_bytes"], ship["bytes"]);
    assert!(pass["pass_duration_ms"].is_u64(), "{pass:?}");
    for absent in ["bytes", "duration_ms"] {
        assert!(!pass.contains_key(absent), "{absent} in {pass:?}");
    }

    // A refused episode: problem_type and error appear, once each.
    let stub = StubServer::new(Reply::problem(412, "out-of-window"));
    let refused = env.shipper_host("lab2", "lab2", &stub.url(), "");
    episode(&refused, "01B");
    let run = env.shipper(&refused, &["once"]);
    let ship = &logs::events(&run.stderr, Event::ShipResult)[0];
    logs::assert_schema(ship);
    assert_eq!(
        (
            &ship["outcome"],
            &ship["status_code"],
            &ship["problem_type"]
        ),
        (&json!("fatal"), &json!(412), &json!("out-of-window")),
        "{ship:?}"
    );
    assert!(
        ship["error"].as_str().is_some_and(|e| e.contains("412")),
        "{ship:?}"
    );

    // The text format: `event=<name>`, each field once under its schema name, none
    // empty, and the message does not repeat the fields.
    episode(&host, "01C");
    let run = env.shipper_logging(&host, "text", &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    for (event, want, unwanted) in [
        (
            "ship_result",
            &[
                "episode_id",
                "outcome",
                "status_code",
                "attempt",
                "bytes",
                "duration_ms",
            ][..],
            &["problem_type", "error", "status"][..],
        ),
        (
            "pass_complete",
            &["pass_bytes", "pass_duration_ms", "shipped", "scanned"][..],
            &["bytes", "duration_ms"][..],
        ),
    ] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!(" event={event}")))
            .unwrap_or_else(|| panic!("no {event} line:\n{run}"));
        assert!(
            !line.contains("outcome=shipped status="),
            "repeated: {line}"
        );
        let fields = text_fields(line);
        let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        for (k, v) in &fields {
            assert!(!v.is_empty(), "empty {k} in {line}");
        }
        for name in want {
            assert_eq!(
                names.iter().filter(|n| *n == name).count(),
                1,
                "{name} in {line}"
            );
        }
        for name in unwanted {
            assert!(!names.contains(name), "{name} in {line}");
        }
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a field twice in {line}");
    }
}
