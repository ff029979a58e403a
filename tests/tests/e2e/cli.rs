//! The operator's read-mostly commands: `episode-receiver index` (a query over the
//! index the receiver wrote), `check --json` on both programs, `requeue` and
//! `cleanup` with `--dry-run` and `--json`.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use episode_e2e::{Host, TestEnv, bin, write_episode};
use serde_json::{Value, json};

/// Runs the receiver binary with `args` to completion (10 s at most).
fn receiver_cmd(env: &TestEnv, args: &[&OsStr]) -> (i32, String, String) {
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

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{text}")))
        .collect()
}

fn keys(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["host_id"].as_str().unwrap(),
                r["episode_id"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn index_lists_what_the_receiver_stored_by_host_time_and_limit_with_superseded_rows_resolved() {
    let env = TestEnv::new("index-query");
    let config = env.receiver_config("r", true, "");
    let receiver = env.spawn_receiver(&config);
    for (host, episode) in [("lab1", "01A"), ("lab2", "01C"), ("lab1", "01B")] {
        let body = format!("archive of {host}/{episode}");
        let answer = receiver.put(&receiver.client(host), host, episode, body.as_bytes());
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    let cfg = config.as_os_str();
    let index = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["--config".as_ref(), cfg, "index".as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        receiver_cmd(&env, &args)
    };
    // Read while the receiver runs: no lock, nothing written.
    let (code, out, err) = index(&["--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3, "{out}");
    let stored = receiver.index_rows();
    for row in &rows {
        let written = stored
            .iter()
            .find(|r| r["host_id"] == row["host_id"] && r["episode_id"] == row["episode_id"])
            .unwrap_or_else(|| panic!("{row} is not in the index file"));
        for field in [
            "sha256",
            "tar_sha256",
            "bytes",
            "code_commit",
            "received_at",
        ] {
            assert_eq!(row[field], written[field], "{field} of {row}");
        }
    }
    let (code, out, _) = index(&["--json", "--host", "lab1"]);
    assert_eq!(code, 0);
    let mut lab1 = keys(&json_lines(&out));
    lab1.sort();
    assert_eq!(lab1, ["lab1/01A", "lab1/01B"]);
    let (_, out, _) = index(&["--json", "--since", "2999-01-01"]);
    assert_eq!(out, "", "nothing received in the future");
    let (_, out, _) = index(&["--json", "--until", "2999-01-01T00:00:00Z", "--since", "1h"]);
    assert_eq!(json_lines(&out).len(), 3, "{out}");
    let (code, out, _) = index(&[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("RECEIVED_AT"), "{out}");
    assert!(
        out.contains("lab2") && out.ends_with("3 episode(s)\n"),
        "{out}"
    );
    drop(receiver);

    // A later row for lab1/01A (an archive restored after a loss) replaces the first;
    // a damaged line is skipped with a note.
    let index_path = episode_e2e::ReceiverPaths::from_config(&config).index_path;
    let mut later = stored
        .iter()
        .find(|r| r["episode_id"] == "01A")
        .unwrap()
        .clone();
    later["sha256"] = json!("ab".repeat(32));
    later["received_at"] = json!("2030-01-01T00:00:00Z");
    let mut text = std::fs::read_to_string(&index_path).unwrap();
    text.push_str(&format!("{later}\n{{\"host_id\": 7}}\n"));
    std::fs::write(&index_path, text).unwrap();
    let (code, out, err) = index(&["--json", "--host", "lab1", "--limit", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rows = json_lines(&out);
    assert_eq!(keys(&rows), ["lab1/01A"], "the most recent one: {out}");
    assert_eq!(rows[0]["sha256"], "ab".repeat(32), "the last row wins");
    assert!(err.contains("line 5 is not a valid row"), "{err}");
    let (_, out, _) = index(&["--json"]);
    assert_eq!(json_lines(&out).len(), 3, "one row per key: {out}");
    // A copy of an index is read without a config.
    let (code, out, _) = receiver_cmd(
        &env,
        &[
            "index".as_ref(),
            "--json".as_ref(),
            "--index".as_ref(),
            index_path.as_os_str(),
        ],
    );
    assert_eq!((code, json_lines(&out).len()), (0, 3), "{out}");
}

#[test]
fn index_names_a_bad_argument_and_a_missing_index() {
    let env = TestEnv::new("index-errors");
    let config = env.receiver_config("r", false, "");
    let (code, _, err) = receiver_cmd(
        &env,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "index".as_ref(),
            "--since".as_ref(),
            "yesterday".as_ref(),
        ],
    );
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
    let (code, _, err) = receiver_cmd(
        &env,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "index".as_ref(),
            "--host".as_ref(),
            "no/such".as_ref(),
        ],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--host"), "{err}");
    let missing = env.dir("nowhere").join("index.jsonl");
    let (code, _, err) = receiver_cmd(
        &env,
        &["index".as_ref(), "--index".as_ref(), missing.as_os_str()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

#[test]
fn check_json_gives_the_verdict_and_each_line_with_its_level() {
    let env = TestEnv::new("check-json");
    let config = env.receiver_config("r", true, "");
    let (code, out, err) = receiver_cmd(
        &env,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        report["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["level"] == "info" && l["message"].as_str().unwrap().starts_with("config ")),
        "{report}"
    );
    // A row without its archive is a problem.
    let paths = episode_e2e::ReceiverPaths::from_config(&config);
    let row = json!({"host_id": "lab1", "episode_id": "01GONE", "sha256": "00".repeat(32),
        "tar_sha256": null, "bytes": 1, "code_commit": "c", "started_at": null,
        "received_at": "2026-01-01T00:00:00Z", "client": null});
    std::fs::write(&paths.index_path, format!("{row}\n")).unwrap();
    let (code, out, _) = receiver_cmd(
        &env,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["level"] == "problem"
                && l["message"].as_str().unwrap().contains("lab1/01GONE")),
        "{report}"
    );
    // A config error: exit 78, the key named in "error".
    let bad = env.receiver_config("bad", false, "listn = \"0.0.0.0:1\"\n");
    let (code, out, _) = receiver_cmd(
        &env,
        &[
            "--config".as_ref(),
            bad.as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ],
    );
    assert_eq!(code, 78, "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        report["error"].as_str().unwrap().contains("listn"),
        "{report}"
    );

    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    let run = env.shipper(&host, &["check", "--json"]);
    assert_eq!(run.code(), Some(0), "{run}");
    let report = run.json();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["lines"].as_array().unwrap().len() >= 2, "{report}");
}

fn quarantined(host: &Host, id: &str, status: u16, age_days: u64) {
    let dir = host.quarantine().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("meta.json"), b"{}").unwrap();
    std::fs::write(dir.join("done.marker"), b"").unwrap();
    let reason = json!({"status_code": status, "problem_type": null, "error": "e", "body": null,
        "attempts": 1, "sha256": "00", "quarantined_at_wall": "2026-01-01T00:00:00Z",
        "quarantined_at_unix": 1_767_225_600u64, "shipper_version": "0"});
    std::fs::write(dir.join("quarantine_reason.json"), reason.to_string()).unwrap();
    let when = SystemTime::now() - Duration::from_secs(age_days * 86_400);
    std::fs::File::open(&dir)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[test]
fn requeue_dry_run_lists_what_would_move_and_moves_nothing() {
    let env = TestEnv::new("requeue-dry");
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    quarantined(&host, "01A", 400, 0);
    quarantined(&host, "01B", 412, 0);
    write_episode(
        &host.data_root,
        "01B",
        &[("x", b"1".as_slice())],
        None,
        true,
    );

    let run = env.shipper(&host, &["requeue", "--all", "--dry-run", "--json"]);
    assert_eq!(run.code(), Some(1), "01B would clash: {run}");
    let out = run.json();
    assert_eq!(out["dry_run"], true);
    assert_eq!(out["requeued"], json!(["01A"]), "{out}");
    assert!(
        out["problems"][0]
            .as_str()
            .unwrap()
            .contains("episodes/01B already exists"),
        "{out}"
    );
    assert_eq!(
        host.list(&host.quarantine()),
        ["01A", "01B"],
        "nothing moved"
    );
    assert!(
        host.quarantine()
            .join("01A/quarantine_reason.json")
            .exists()
    );

    let run = env.shipper(&host, &["requeue", "--status", "400", "--dry-run"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(run.stdout.trim(), "would requeue 01A", "{run}");
    assert_eq!(host.list(&host.quarantine()), ["01A", "01B"]);

    let run = env.shipper(&host, &["requeue", "01A", "--json"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(
        run.json(),
        json!({"dry_run": false, "requeued": ["01A"], "problems": []})
    );
    assert_eq!(host.list(&host.quarantine()), ["01B"]);
    assert!(host.episodes().join("01A/meta.json").exists());
}

#[test]
fn cleanup_dry_run_lists_what_retention_would_remove_and_cleanup_removes_it() {
    let env = TestEnv::new("cleanup-dry");
    let host = env.shipper_host(
        "lab1",
        "lab1",
        "https://127.0.0.1:1",
        "[quarantine]\nkeep_days = 30\n\n[shipped]\nkeep_days = 7\n",
    );
    quarantined(&host, "01OLD", 400, 40);
    quarantined(&host, "01NEW", 400, 1);
    for (id, days) in [("02OLD", 8u64), ("02NEW", 6)] {
        let dir = host.shipped().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meta.json"), b"{}").unwrap();
        let when = SystemTime::now() - Duration::from_secs(days * 86_400);
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let run = env.shipper(&host, &["cleanup", "--dry-run", "--json"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(
        run.json(),
        json!({"dry_run": true, "quarantine": ["01OLD"], "shipped": ["02OLD"]})
    );
    assert_eq!(
        host.list(&host.quarantine()),
        ["01NEW", "01OLD"],
        "nothing removed"
    );
    assert_eq!(
        host.list(&host.shipped()),
        ["02NEW", "02OLD"],
        "nothing removed"
    );
    let run = env.shipper(&host, &["cleanup", "--dry-run"]);
    assert!(
        run.stdout.contains("would remove quarantine/01OLD"),
        "{run}"
    );
    assert!(run.stdout.contains("would remove shipped/02OLD"), "{run}");

    let run = env.shipper(&host, &["cleanup", "--json"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(
        run.json(),
        json!({"dry_run": false, "quarantine": ["01OLD"], "shipped": ["02OLD"]})
    );
    assert_eq!(host.list(&host.quarantine()), ["01NEW"]);
    assert_eq!(host.list(&host.shipped()), ["02NEW"]);
}
