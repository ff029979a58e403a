//! Observability end to end (observability.md): the receiver's ops listener
//! (`/livez`, `/readyz`, `/metrics`, `/api/hosts`, the fleet page and its token),
//! the fleet page rendered by a real headless chromium, the shipper's textfile and
//! listener, every exposition checked by `promtool check metrics`, and the alert
//! rules checked and unit-tested by `promtool`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use episode_common::Sha256;
use episode_e2e::tools::{self, assert_promtool_accepts_metrics};
use episode_e2e::{Receiver, TestEnv, bin, http_client, wait_until, write_episode};
use serde_json::Value;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// An index row (and its archive) of `host` received `age_secs` ago, written before
/// the receiver starts: how a host that went quiet long ago looks.
fn stored_before_start(store: &Path, index: &Path, host: &str, episode: &str, age_secs: u64) {
    let body = format!("archive of {host}/{episode}");
    let row = serde_json::json!({
        "host_id": host,
        "episode_id": episode,
        "sha256": Sha256::of(body.as_bytes()).to_hex(),
        "tar_sha256": null,
        "bytes": body.len(),
        "code_commit": "3f2c1e9a",
        "started_at": null,
        "received_at": rfc3339(now() - age_secs),
        "client": null,
    });
    let dir = store.join(host);
    std::fs::create_dir_all(&dir).expect("host dir");
    std::fs::write(dir.join(format!("{episode}.tar.zst")), body).expect("archive");
    let mut line = serde_json::to_string(&row).expect("row");
    line.push('\n');
    let mut text = std::fs::read_to_string(index).unwrap_or_default();
    text.push_str(&line);
    std::fs::write(index, text).expect("index");
}

/// A plain-HTTP receiver with an ops listener and `stale_after = "1h"`, and three
/// hosts: `lab-quiet` last stored 30 h ago (stale), `lab-refused` whose last PUT got
/// 415 (rejecting), `lab-fine` that just stored two episodes (ok).
fn fleet(env: &TestEnv, extra: &str) -> (Receiver, String) {
    let dir = env.dir("r");
    std::fs::create_dir_all(dir.join("store")).expect("store");
    let (store, index) = (dir.join("store"), dir.join("index.jsonl"));
    stored_before_start(
        &store,
        &index,
        "lab-quiet",
        "01QUIET0000000000000000001",
        30 * 3600,
    );
    stored_before_start(
        &store,
        &index,
        "lab-refused",
        "01REFUSED00000000000000001",
        600,
    );
    let config = env.receiver_config(
        "r",
        false,
        &format!("metrics_listen = \"127.0.0.1:0\"\n{extra}\n[fleet]\nstale_after = \"1h\"\n"),
    );
    let receiver = env.spawn_receiver(&config);
    let ops = receiver.ops_url();
    let client = receiver.plain_client();
    for (i, body) in [&b"first"[..], b"second, longer"].iter().enumerate() {
        let answer = receiver.put(&client, "lab-fine", &format!("01FINE{i:020}"), body);
        assert_eq!(answer.status, 201, "{answer:#?}");
    }
    let refused = receiver
        .put_with(
            &client,
            "lab-refused",
            "01REFUSED00000000000000002",
            b"x",
            &[("content-type", "text/plain")],
        )
        .expect("PUT");
    assert_eq!(refused.status, 415, "{refused:#?}");
    (receiver, ops)
}

fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http_client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().expect("body"))
}

#[test]
fn api_hosts_lists_stale_then_rejecting_then_ok_with_their_numbers() {
    let env = TestEnv::new("obs-api-hosts");
    let (receiver, ops) = fleet(&env, "");
    let (status, body) = get(&format!("{ops}/api/hosts"), None);
    assert_eq!(status, 200, "{body}\n{}", receiver.process.report());
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["stale_after"], "1h");
    assert!(
        json["generated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{json}"
    );
    let hosts = json["hosts"].as_array().expect("hosts");
    let order: Vec<(&str, &str)> = hosts
        .iter()
        .map(|h| (h["host_id"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("lab-quiet", "stale"),
            ("lab-refused", "rejecting"),
            ("lab-fine", "ok")
        ],
        "{json:#}"
    );
    let (quiet, refused, fine) = (&hosts[0], &hosts[1], &hosts[2]);
    assert_eq!(
        (
            quiet["episodes_24h"].as_u64(),
            quiet["episodes_total"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(quiet["last_rejection"], Value::Null);
    assert_eq!(refused["last_rejection"]["status_code"], 415, "{refused:#}");
    assert_eq!(
        refused["last_rejection"]["problem_type"],
        "unsupported-media-type"
    );
    assert!(
        refused["last_rejection"]["at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(fine["episodes_24h"], 2);
    assert_eq!(fine["episodes_total"], 2);
    assert_eq!(fine["bytes_24h"], 5 + 14);
    assert_eq!(fine["bytes_total"], 5 + 14);
    assert!(
        fine["last_stored_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // A good upload ends `rejecting`.
    let client = receiver.plain_client();
    let answer = receiver.put(
        &client,
        "lab-refused",
        "01REFUSED00000000000000003",
        b"ok now",
    );
    assert_eq!(answer.status, 201, "{answer:#?}");
    let json: Value = serde_json::from_str(&get(&format!("{ops}/api/hosts"), None).1).unwrap();
    let refused = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == "lab-refused")
        .unwrap();
    assert_eq!(refused["state"], "ok", "{json:#}");
    assert_eq!(
        refused["last_rejection"]["status_code"], 415,
        "kept for the page"
    );
}

#[test]
fn the_ops_listener_serves_liveness_readiness_and_metrics_promtool_accepts() {
    let env = TestEnv::new("obs-ops");
    let (receiver, ops) = fleet(&env, "");
    // Its line comes right after `listening on …`.
    let out = receiver.process.stdout();
    let lines: Vec<&str> = out.lines().take(2).collect();
    assert!(
        lines[0].starts_with("listening on http://127.0.0.1:"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("ops listening on http://127.0.0.1:"),
        "{out}"
    );
    assert_ne!(ops, receiver.url, "its own port");

    assert_eq!(get(&format!("{ops}/livez"), None), (200, "ok".to_owned()));
    let (status, body) = get(&format!("{ops}/readyz"), None);
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, text) = get(&format!("{ops}/metrics"), None);
    assert_eq!(status, 200);
    for line in [
        "episode_receiver_http_responses_total{route=\"put\",code=\"201\"} 2",
        "episode_receiver_http_responses_total{route=\"put\",code=\"415\"} 1",
        "episode_receiver_rejections_total{problem_type=\"unsupported-media-type\"} 1",
        "episode_receiver_upload_duration_seconds_count 2",
        "episode_receiver_upload_size_bytes_count 2",
        "episode_receiver_upload_size_bytes_sum 19.0",
        "episode_receiver_index_rows 4",
        "episode_receiver_ready 1",
        "episode_receiver_dependency_up{dependency=\"store\"} 1",
        "episode_receiver_dependency_up{dependency=\"index\"} 1",
        "episode_receiver_draining 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    for (name, kind) in [
        ("episode_receiver_http_responses_total", "counter"),
        ("episode_receiver_rejections_total", "counter"),
        ("episode_receiver_upload_duration_seconds", "histogram"),
        ("episode_receiver_upload_size_bytes", "histogram"),
        (
            "episode_receiver_host_last_stored_timestamp_seconds",
            "gauge",
        ),
        ("episode_receiver_index_rows", "gauge"),
        ("episode_receiver_free_bytes", "gauge"),
        ("episode_receiver_ready", "gauge"),
        ("episode_receiver_dependency_up", "gauge"),
        ("episode_receiver_build_info", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        let declared = format!("# TYPE {name} {kind}");
        assert!(
            text.lines().any(|l| l == declared),
            "{declared:?} missing in\n{text}"
        );
    }
    let quiet_at = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "episode_receiver_host_last_stored_timestamp_seconds{host_id=\"lab-quiet\"} ",
            )
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("lab-quiet's last stored time");
    let age = now() as f64 - quiet_at;
    assert!(
        (30.0 * 3600.0 - 5.0..30.0 * 3600.0 + 60.0).contains(&age),
        "{age}"
    );
    assert_promtool_accepts_metrics(&text);
    // Not on the main listener once the ops listener exists.
    let (status, _) = get(&format!("{}/metrics", receiver.url), None);
    assert_eq!(status, 404);
}

#[test]
fn the_ops_token_guards_everything_but_livez_and_readyz() {
    let env = TestEnv::new("obs-token");
    let token_file = env.dir("secrets").join("ops-token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, "s3cret-ops\n").unwrap();
    let (receiver, ops) = fleet(
        &env,
        &format!(
            "ops_token_file = {}",
            episode_e2e::env::toml_str(&token_file)
        ),
    );
    for path in ["/livez", "/readyz"] {
        assert_eq!(get(&format!("{ops}{path}"), None).0, 200, "{path}");
    }
    for path in ["/metrics", "/", "/api/hosts"] {
        let url = format!("{ops}{path}");
        let (status, body) = get(&url, None);
        assert_eq!(status, 401, "{path} without the token: {body}");
        assert!(body.contains("ops_token_file"), "{body}");
        assert_eq!(get(&url, Some("wrong")).0, 401, "{path} with a wrong token");
        assert_eq!(
            get(&url, Some("s3cret-ops")).0,
            200,
            "{path} with the token"
        );
    }
    drop(receiver);
}

#[test]
fn a_bad_fleet_or_metrics_key_exits_78_naming_it() {
    let env = TestEnv::new("obs-config");
    let config = env.receiver_config("r", false, "[fleet]\nstale_after = \"a while\"\n");
    let out = Command::new(bin("episode-receiver"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("stale_after"), "{stderr}");

    let host = env.shipper_host(
        "s",
        "lab1",
        "http://127.0.0.1:9",
        "[metrics]\ntextfile = \"/tmp/episode_shipper.txt\"\n",
    );
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("metrics.textfile"), "{}", run.stderr);
}

#[test]
fn chromium_renders_the_fleet_page_with_the_stale_and_rejecting_hosts_first() {
    let env = TestEnv::new("obs-page");
    let (receiver, ops) = fleet(&env, "");
    let profile = env.dir("chromium-profile");
    // One run renders the page, prints the DOM and saves the screenshot.
    let screenshot: PathBuf = env.dir("screenshots").join("fleet.png");
    let dom = tools::chromium_headless(
        &profile,
        &format!("{ops}/"),
        &[
            "--dump-dom",
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1000",
        ],
    )
    .stdout;
    let row = |host: &str| {
        let at = dom
            .find(&format!(">{host}<"))
            .unwrap_or_else(|| panic!("{host} missing in\n{dom}"));
        let start = dom[..at].rfind("<tr").expect("its row");
        (at, &dom[start..at])
    };
    let (quiet, quiet_row) = row("lab-quiet");
    let (refused, refused_row) = row("lab-refused");
    let (fine, fine_row) = row("lab-fine");
    assert!(quiet_row.contains("class=\"stale\""), "{quiet_row}");
    assert!(refused_row.contains("class=\"rejecting\""), "{refused_row}");
    assert!(fine_row.contains("class=\"ok\""), "{fine_row}");
    assert!(quiet < refused && refused < fine, "worst first");
    assert!(dom.contains("415 unsupported-media-type"), "{dom}");
    assert!(dom.contains("<svg"), "the plot");
    assert!(dom.contains("http-equiv=\"refresh\" content=\"30\""));
    assert!(!dom.contains("<script"), "no script");
    assert!(dom.contains("since the receiver started"));

    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
    drop(receiver);
}

#[test]
fn the_shipper_writes_its_textfile_and_serves_metrics_promtool_accepts() {
    let env = TestEnv::new("obs-shipper");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let textfile = env.dir("node-exporter").join("episode_shipper.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    let host = env.shipper_host(
        "s",
        "lab1",
        &receiver.url,
        &format!(
            "[metrics]\ntextfile = {}\nlisten = \"127.0.0.1:0\"\n",
            episode_e2e::env::toml_str(&textfile)
        ),
    );
    let meta = serde_json::json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600});
    let files: &[(&str, &[u8])] = &[("a.jsonl", b"{\"t\":1}\n")];
    write_episode(
        &host.data_root,
        "01SHIP0000000000000000001",
        files,
        Some(meta),
        true,
    );
    // No meta.json: refused for its missing code commit, quarantined.
    write_episode(
        &host.data_root,
        "01SHIP0000000000000000002",
        files,
        None,
        true,
    );
    let mut daemon = env.spawn_shipper(&host, |_| {});
    let shipped = "episode_shipper_ship_results_total{outcome=\"shipped\"} 1";
    wait_until(
        Duration::from_secs(8),
        "the textfile to count both uploads",
        || {
            std::fs::read_to_string(&textfile).is_ok_and(|t| {
                t.lines().any(|l| l == shipped) && t.contains("episode_shipper_backlog_episodes 0")
            })
        },
    );
    let text = std::fs::read_to_string(&textfile).unwrap();
    for line in [
        "episode_shipper_ship_results_total{outcome=\"fatal\"} 1",
        "episode_shipper_quarantined_episodes{status_code=\"400\",problem_type=\"missing-code-commit\"} 1",
        "episode_shipper_backlog_episodes 0",
        "episode_shipper_on_hold 0",
        "episode_shipper_conflicts 0",
        "episode_shipper_outbox_bytes 0",
        "episode_shipper_oldest_pending_age_seconds 0",
        "episode_shipper_backoff_until_timestamp_seconds 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    for (name, kind) in [
        ("episode_shipper_backlog_episodes", "gauge"),
        ("episode_shipper_backlog_bytes", "gauge"),
        ("episode_shipper_oldest_pending_age_seconds", "gauge"),
        ("episode_shipper_outbox_bytes", "gauge"),
        ("episode_shipper_last_success_timestamp_seconds", "gauge"),
        ("episode_shipper_on_hold", "gauge"),
        ("episode_shipper_backoff_until_timestamp_seconds", "gauge"),
        ("episode_shipper_conflicts", "gauge"),
        ("episode_shipper_quarantined_episodes", "gauge"),
        ("episode_shipper_ship_results_total", "counter"),
        ("episode_shipper_shipped_bytes_total", "counter"),
        ("episode_shipper_pass_duration_seconds", "histogram"),
        ("episode_shipper_free_bytes", "gauge"),
        ("episode_shipper_build_info", "gauge"),
    ] {
        let declared = format!("# TYPE {name} {kind}");
        assert!(
            text.lines().any(|l| l == declared),
            "{declared:?} missing in\n{text}"
        );
    }
    let last_success: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("episode_shipper_last_success_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("last success");
    assert!((now() as f64 - last_success).abs() < 30.0, "{last_success}");
    assert_promtool_accepts_metrics(&text);
    // The daemon rewrites the file (temp + rename) after every pass, so a listing
    // may catch a write in progress; a temp file left behind would never go away.
    let listing = || -> Vec<String> {
        std::fs::read_dir(textfile.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    wait_until(Duration::from_secs(5), "no temp file left", || {
        listing() == ["episode_shipper.prom"]
    });

    // The listener: its address is in the `metrics_listening` event.
    let mut url = None;
    wait_until(Duration::from_secs(5), "metrics_listening", || {
        let stderr = daemon.stderr();
        // JSON lines (the harness's default) or text lines (`url=…`).
        url = episode_e2e::logs::events(&stderr, episode_common::Event::MetricsListening)
            .first()
            .and_then(|line| line["url"].as_str().map(str::to_owned))
            .or_else(|| {
                stderr.split_whitespace().find_map(|w| {
                    w.strip_prefix("url=")
                        .filter(|u| u.starts_with("http://127.0.0.1:"))
                        .map(str::to_owned)
                })
            });
        url.is_some()
    });
    let (status, served) = get(url.as_deref().unwrap(), None);
    assert_eq!(status, 200, "{}", daemon.report());
    assert!(served.lines().any(|l| l == shipped), "{served}");
    assert_promtool_accepts_metrics(&served);
    daemon.signal(libc::SIGTERM);
    assert!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "{}",
        daemon.report()
    );
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tools::promtool();
    let check = tools::run(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(docs().join("alerts.yml")),
        b"",
        Duration::from_secs(8),
    );
    assert!(
        check.success,
        "promtool check rules:\n{}{}",
        check.stdout, check.stderr
    );
    let test = tools::run(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(docs().join("alerts.test.yml")),
        b"",
        Duration::from_secs(9),
    );
    assert!(
        test.success,
        "promtool test rules:\n{}{}",
        test.stdout, test.stderr
    );
    assert!(test.stdout.contains("SUCCESS"), "{}", test.stdout);
}

#[test]
fn a_host_that_stops_storing_turns_stale_on_the_page() {
    let env = TestEnv::new("obs-turns-stale");
    let config = env.receiver_config(
        "r",
        false,
        "metrics_listen = \"127.0.0.1:0\"\n[fleet]\nstale_after = \"3s\"\n",
    );
    let receiver = env.spawn_receiver(&config);
    let ops = receiver.ops_url();
    let client = receiver.plain_client();
    let answer = receiver.put(&client, "lab-a", "01GOINGQUIET0000000000001", b"last one");
    assert_eq!(answer.status, 201, "{answer:#?}");
    let state = || {
        let json: Value = serde_json::from_str(&get(&format!("{ops}/api/hosts"), None).1).unwrap();
        json["hosts"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(state(), "ok");
    wait_until(Duration::from_secs(7), "lab-a to turn stale", || {
        state() == "stale"
    });
    let (_, page) = get(&format!("{ops}/"), None);
    assert!(page.contains("<tr class=\"stale\">"), "{page}");
    assert!(page.contains(">lab-a</td>"), "{page}");
}
