//! The real `episode-doctor` binary against hand-built hosts: fixture journals for
//! every class (structured, plain text, too old, empty), journalctl missing or
//! denied (fakes on PATH), certificates made with rcgen (valid, expiring in a
//! day, expired, mismatched), a dead and a live receiver, backlog, quarantine and
//! hold state, the `--json` schema and the exit codes.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------- journal

#[test]
fn every_journal_class_is_counted_with_412_listed_before_400() {
    let env = Env::new(DEAD_URL);
    let m = MINUTE;
    let mut lines = vec![
        // 400 first in the file: the row must still lead with 412.
        ship_line("fatal", 400, "missing-code-commit", "E400a", m),
        ship_line("fatal", 400, "missing-code-commit", "E400b", m),
        ship_line("fatal", 413, "too-large", "E413", m),
        ship_line("hold", 401, "unauthorized", "E401", m),
        ship_line("hold", 401, "unauthorized", "E401", m),
        ship_line("hold", 403, "forbidden-identity", "E403", m),
        ship_line("conflict", 409, "conflict", "E409", m),
        ship_line("transient", 503, "", "E503", m),
        ship_line("transient", 429, "too-many-uploads", "E429", m),
        ship_line("transient", 0, "", "E0", m),
        ship_line("shipped", 201, "", "S1", m),
        ship_line("already_present", 200, "", "S2", m),
        // Not ship attempts, though they carry status codes.
        text_line("pass_complete", m),
        serde_json::json!({"__REALTIME_TIMESTAMP": micros_ago(m), "MESSAGE": "quarantined: see quarantine/E412/quarantine_reason.json", "STATUS_CODE": "412", "EPISODE_ID": "E412"}).to_string(),
        serde_json::json!({"__REALTIME_TIMESTAMP": micros_ago(m), "MESSAGE": "hold_started: shipping paused", "STATUS_CODE": "401"}).to_string(),
    ];
    for i in 0..12 {
        lines.push(ship_line(
            "fatal",
            412,
            "out-of-window",
            &format!("E412-{i}"),
            m,
        ));
    }
    let journal = env.journal_file("journal.jsonl", &lines);
    let run = env.doctor_json(&["--journal-file", journal.to_str().unwrap()]);
    assert_eq!(run.level("journal"), "red", "{}", run.show());
    let finding = run.finding("journal");
    let expected = [
        "12 ship(s) rejected as out-of-window (412)",
        "3 ship(s) rejected as bad request (400 missing-code-commit ×2, 413 too-large ×1)",
        "2 ship(s) refused as unauthorized (401",
        "1 ship(s) refused as forbidden (403",
        "1 conflict(s) (409): another archive is stored under E409",
        "3 transient failure(s) (connection ×1, 429 too-many-uploads ×1, 503 ×1)",
        "2 shipped (1 already present)",
    ];
    let mut last = 0;
    for want in expected {
        let at = finding
            .find(want)
            .unwrap_or_else(|| panic!("{want:?} not in {finding:?}"));
        assert!(at >= last, "{want:?} out of order in {finding:?}");
        last = at;
    }
    let fix = run.fix("journal");
    for want in [
        "`timedatectl`",
        "`episode-shipper requeue --status 412 --config",
        "code_commit into meta.json",
        "requeue --status 400",
        "max_episode_bytes",
        "receiver.bearer_token_file",
        "must equal host_id \"lab1\"",
        "E409",
        "`episode-shipper ping --config",
    ] {
        assert!(fix.contains(want), "{want:?} not in {fix:?}");
    }
    assert!(
        fix.find("timedatectl").unwrap() < fix.find("code_commit").unwrap(),
        "the 412 fix comes first: {fix}"
    );
}

#[test]
fn plain_text_lines_are_classified_from_the_message() {
    let env = Env::new(DEAD_URL);
    let journal = env.journal_file(
        "plain.txt",
        &[
            // Journal JSON with only MESSAGE (non-native logging).
            text_line("ship_result outcome=fatal status=412", MINUTE),
            text_line("ship_result outcome=fatal status=400", MINUTE),
            // Not JSON at all: syslog-style and the shipper's text format.
            "Nov 22 10:00:01 lab1 episode-shipper[811]: ship_result outcome=fatal status=412".into(),
            r#"2026-11-22T10:00:02Z ERROR ship_result outcome=fatal status=400 episode_id=E9 outcome="fatal" status_code=400 problem_type="missing-code-commit""#.into(),
            "random noise without any fields".into(),
        ],
    );
    let run = env.doctor_json(&["--journal-file", journal.to_str().unwrap()]);
    assert_eq!(run.level("journal"), "red", "{}", run.show());
    let finding = run.finding("journal");
    assert!(
        finding.starts_with(
            "2 ship(s) rejected as out-of-window (412); 2 ship(s) rejected as bad request"
        ),
        "{finding}"
    );
    assert!(finding.contains("400 missing-code-commit ×1"), "{finding}");
}

#[test]
fn lines_older_than_since_are_ignored() {
    let env = Env::new(DEAD_URL);
    let journal = env.journal_file(
        "old.jsonl",
        &[
            ship_line("fatal", 412, "out-of-window", "OLD1", 2 * HOUR),
            ship_line("fatal", 412, "out-of-window", "OLD2", 2 * HOUR),
            ship_line("shipped", 201, "", "NEW", MINUTE),
        ],
    );
    let path = journal.to_str().unwrap();
    let recent = env.doctor_json(&["--journal-file", path, "--since", "10min"]);
    assert_eq!(recent.level("journal"), "green", "{}", recent.show());
    assert_eq!(recent.finding("journal"), "1 shipped");
    let wide = env.doctor_json(&["--journal-file", path, "--since", "3h"]);
    assert_eq!(wide.level("journal"), "red", "{}", wide.show());
    assert!(
        wide.finding("journal")
            .starts_with("2 ship(s) rejected as out-of-window")
    );
    let compound = env.doctor_json(&["--journal-file", path, "--since", "1h30m"]);
    assert_eq!(compound.level("journal"), "green");
}

#[test]
fn an_empty_journal_is_green() {
    let env = Env::new(DEAD_URL);
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("journal"), "green", "{}", run.show());
    assert_eq!(
        run.finding("journal"),
        format!(
            "no ship attempts in the last 10m (file {})",
            env.empty_journal.display()
        )
    );
    assert_eq!(run.row("journal")["fix"], Value::Null);
}

#[test]
fn journalctl_is_asked_for_the_unit_and_window_as_json() {
    let env = Env::new(DEAD_URL);
    let fixture = env.journal_file(
        "fixture.jsonl",
        &[
            ship_line("transient", 503, "", "E1", MINUTE),
            ship_line("fatal", 412, "out-of-window", "OLD", 2 * HOUR),
        ],
    );
    let args = env.path("journalctl-args");
    env.fake(
        "journalctl",
        &format!(
            "printf '%s\\n' \"$@\" > '{}'\nexec /bin/cat '{}'",
            args.display(),
            fixture.display()
        ),
    );
    let config = env.config.to_str().unwrap();
    let run = env.doctor(&[
        "--config",
        config,
        "--json",
        "--unit",
        "shipper-b",
        "--since",
        "30m",
    ]);
    assert_eq!(run.level("journal"), "yellow", "{}", run.show());
    assert!(
        run.finding("journal")
            .starts_with("1 transient failure(s) (503 ×1)")
    );
    let args = std::fs::read_to_string(args).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args[..2], ["-u", "shipper-b"], "{args:?}");
    let since: i64 = args[2]
        .strip_prefix("--since=@")
        .unwrap_or_else(|| panic!("{args:?}"))
        .parse()
        .unwrap();
    let want = time::OffsetDateTime::now_utc().unix_timestamp() - 1800;
    assert!((since - want).abs() < 30, "{since} vs {want}");
    assert_eq!(args[3..], ["-o", "json", "--no-pager"]);
}

#[test]
fn journalctl_missing_is_a_yellow_row_not_a_crash() {
    let env = Env::new(DEAD_URL);
    // PATH is an empty directory: no journalctl, no systemctl.
    let run = env.doctor(&["--config", env.config.to_str().unwrap(), "--json"]);
    assert_eq!(
        run.code,
        1,
        "red only because the receiver is dead: {}",
        run.show()
    );
    assert_eq!(run.level("journal"), "yellow");
    assert_eq!(
        run.finding("journal"),
        "journal not read: journalctl not found on PATH"
    );
    assert!(run.fix("journal").contains("--journal-file"));
    assert_eq!(run.level("service"), "yellow");
    assert!(run.finding("service").contains("systemctl not found"));
}

#[test]
fn journalctl_denied_is_yellow_with_the_group_fix() {
    let env = Env::new(DEAD_URL);
    env.fake(
        "journalctl",
        "echo 'No journal files were opened due to insufficient permissions.' >&2\nexit 1",
    );
    let run = env.doctor(&["--config", env.config.to_str().unwrap(), "--json"]);
    assert_eq!(run.level("journal"), "yellow", "{}", run.show());
    assert!(run.finding("journal").contains(
        "permission denied (No journal files were opened due to insufficient permissions.)"
    ));
    assert!(
        run.fix("journal")
            .contains("`sudo usermod -aG systemd-journal $USER`")
    );
}

// ---------------------------------------------------------------- certificates

struct Tls {
    env: Env,
}

/// A config with a CA bundle and a client certificate for lab1 valid from `from`
/// to `until` (relative to now).
fn with_client_cert(from: time::Duration, until: time::Duration) -> Tls {
    let env = Env::new(DEAD_URL);
    let ca = Ca::new("test");
    let leaf = ca.client("lab1", from, until);
    let ca_path = write(&env.path("ca.pem"), &ca.pem);
    let cert = write(&env.path("client.pem"), &leaf.cert);
    let key = write(&env.path("client.key"), &leaf.key);
    env.write_config(
        DEAD_URL,
        &format!("ca_bundle = {ca_path:?}\nclient_cert = {cert:?}\nclient_key = {key:?}"),
    );
    Tls { env }
}

#[test]
fn a_valid_certificate_is_green() {
    let t = with_client_cert(-time::Duration::days(1), time::Duration::days(365));
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "green", "{}", run.show());
    let finding = run.finding("certificates");
    // 364 or 365 whole days, depending on the second the certificate was made in.
    assert!(
        finding.contains("client certificate [\"lab1\"] valid 364 more day(s)")
            || finding.contains("client certificate [\"lab1\"] valid 365 more day(s)"),
        "{finding}"
    );
    for want in [
        "key matches",
        "chains to receiver.ca_bundle",
        "CA \"test CA\" valid 36",
    ] {
        assert!(finding.contains(want), "{want:?} not in {finding}");
    }
    assert_eq!(run.row("certificates")["fix"], Value::Null);
}

#[test]
fn a_certificate_expiring_in_a_day_is_red() {
    let t = with_client_cert(-time::Duration::days(30), time::Duration::days(1));
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "red", "{}", run.show());
    assert!(
        run.finding("certificates")
            .starts_with("client certificate [\"lab1\"] expires in 23 hour(s)")
            || run
                .finding("certificates")
                .starts_with("client certificate [\"lab1\"] expires in 24 hour(s)"),
        "{}",
        run.finding("certificates")
    );
    assert!(
        run.fix("certificates")
            .contains("renew the client certificate")
    );
}

#[test]
fn a_certificate_expiring_in_ten_days_is_yellow() {
    let t = with_client_cert(-time::Duration::days(30), time::Duration::days(10));
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "yellow", "{}", run.show());
    let finding = run.finding("certificates");
    assert!(
        finding.contains("expires in 9 day(s)") || finding.contains("expires in 10 day(s)"),
        "{finding}"
    );
}

#[test]
fn an_expired_certificate_is_red_and_still_chains() {
    let t = with_client_cert(-time::Duration::days(30), -time::Duration::days(3));
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "red", "{}", run.show());
    let finding = run.finding("certificates");
    assert!(finding.contains("expired 3 day(s) ago"), "{finding}");
    assert!(
        finding.contains("chains to receiver.ca_bundle"),
        "{finding}"
    );
}

#[test]
fn a_key_of_another_certificate_is_red() {
    let t = with_client_cert(-time::Duration::days(1), time::Duration::days(365));
    let other = Ca::new("x").client("lab1", -time::Duration::days(1), time::Duration::days(9));
    write(&t.env.path("client.key"), &other.key);
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "red", "{}", run.show());
    assert!(run.finding("certificates").starts_with(&format!(
        "the key {} does not belong to the certificate {}",
        t.env.path("client.key").display(),
        t.env.path("client.pem").display()
    )));
}

#[test]
fn a_certificate_from_another_ca_is_yellow() {
    let t = with_client_cert(-time::Duration::days(1), time::Duration::days(365));
    write(&t.env.path("ca.pem"), &Ca::new("other").pem);
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "yellow", "{}", run.show());
    assert!(
        run.finding("certificates")
            .contains("does not chain to receiver.ca_bundle")
    );
    assert!(run.fix("certificates").contains("tls.client_ca"));
}

#[test]
fn missing_certificate_files_are_red_with_the_paths() {
    let t = with_client_cert(-time::Duration::days(1), time::Duration::days(365));
    std::fs::remove_file(t.env.path("client.pem")).unwrap();
    std::fs::remove_file(t.env.path("client.key")).unwrap();
    let run = t.env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "red", "{}", run.show());
    let cert = t.env.path("client.pem").display().to_string();
    assert!(
        run.finding("certificates")
            .contains(&format!("client certificate {cert} does not exist"))
    );
    assert!(
        run.fix("certificates")
            .contains("install this host's client certificate")
    );
    // The receiver row quotes the transport: the material is missing.
    assert_eq!(run.level("receiver"), "red");
    assert!(
        run.finding("receiver").contains("mTLS material missing"),
        "{}",
        run.show()
    );
}

// ---------------------------------------------------------------- receiver

#[test]
fn an_unreachable_receiver_is_red_with_the_transport_error() {
    let env = Env::new(DEAD_URL);
    let run = env.doctor_json(&[]);
    assert_eq!(run.code, 1, "{}", run.show());
    assert_eq!(run.level("receiver"), "red");
    let finding = run.finding("receiver");
    assert!(finding.starts_with("unreachable after"), "{finding}");
    assert!(finding.contains("Connection refused"), "{finding}");
    assert!(
        run.fix("receiver")
            .contains("`episode-shipper ping --config")
    );
}

#[test]
fn a_healthy_host_is_green_and_exits_0() {
    let receiver = Receiver::start("");
    let env = Env::new(&receiver.url);
    env.fake_systemctl_running();
    let run = env.doctor_json(&[]);
    assert_eq!(run.code, 0, "{}", run.show());
    let json = run.json();
    assert_eq!(json["worst"], "green", "{}", run.show());
    assert!(
        run.finding("receiver")
            .starts_with(&format!("200 from {}/v1/health in", receiver.url))
    );
    assert_eq!(
        run.finding("service"),
        "active (running), 0 restart(s), watchdog 3min"
    );
}

#[test]
fn a_certificate_naming_another_host_gets_403_with_its_identities() {
    let env = Env::new(DEAD_URL);
    let ca = Ca::new("test");
    let server = ca.server();
    let ca_path = write(&env.path("ca.pem"), &ca.pem);
    let server_cert = write(&env.path("server.pem"), &server.cert);
    let server_key = write(&env.path("server.key"), &server.key);
    let receiver = Receiver::start(&format!(
        "[tls]\ncert = {server_cert:?}\nkey = {server_key:?}\nclient_ca = {ca_path:?}\n"
    ));
    // lab1's config with lab2's certificate.
    let leaf = ca.client("lab2", -time::Duration::days(1), time::Duration::days(365));
    let cert = write(&env.path("client.pem"), &leaf.cert);
    let key = write(&env.path("client.key"), &leaf.key);
    env.write_config(
        &receiver.url,
        &format!("ca_bundle = {ca_path:?}\nclient_cert = {cert:?}\nclient_key = {key:?}"),
    );
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("receiver"), "red", "{}", run.show());
    assert!(run.finding("receiver").starts_with("403"), "{}", run.show());
    let fix = run.fix("receiver");
    assert!(
        fix.contains("must equal host_id \"lab1\"") && fix.contains("names [\"lab2\"]"),
        "{fix}"
    );
    assert!(
        run.finding("certificates")
            .contains("not host_id \"lab1\": the receiver will answer 403")
    );

    // The right certificate: certificates and receiver are green over mTLS.
    let leaf = ca.client("lab1", -time::Duration::days(1), time::Duration::days(365));
    write(&cert, &leaf.cert);
    write(&key, &leaf.key);
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("receiver"), "green", "{}", run.show());
    assert_eq!(run.level("certificates"), "green", "{}", run.show());
}

// ---------------------------------------------------------------- data root

#[test]
fn backlog_and_quarantine_are_counted() {
    let env = Env::new(DEAD_URL);
    env.episode("01EPISODE1", true);
    env.episode("01EPISODE2", true);
    env.episode("01EPISODE3", true);
    env.episode("01RECORDING", false);
    std::fs::write(env.data.join("outbox/01GONE.tar.zst"), b"orphan").unwrap();
    env.quarantined("01Q1", 412, Some("out-of-window"));
    env.quarantined("01Q2", 412, Some("out-of-window"));
    env.quarantined("01Q3", 400, Some("missing-code-commit"));
    let run = env.doctor_json(&[]);
    let backlog = run.finding("backlog");
    assert!(
        backlog.contains("3 pending (") && backlog.contains("1 still being recorded"),
        "{backlog}"
    );
    assert!(
        backlog.contains("1 orphan file(s) in the outbox"),
        "{backlog}"
    );
    assert_eq!(run.level("backlog"), "yellow", "{}", run.show());
    assert_eq!(run.level("quarantine"), "yellow");
    let quarantine = run.finding("quarantine");
    assert!(
        quarantine.starts_with("3 quarantined: 2 × 412 out-of-window, 1 × 400 missing-code-commit"),
        "{quarantine}"
    );
    let fix = run.fix("quarantine");
    let at_412 = fix.find("requeue --status 412").expect("412 fix");
    let at_400 = fix.find("requeue --status 400").expect("400 fix");
    assert!(at_412 < at_400, "the most common class first: {fix}");
}

#[test]
fn a_hold_is_red_with_the_credential_fix() {
    let env = Env::new(DEAD_URL);
    env.write_config(
        DEAD_URL,
        "bearer_token_file = \"/etc/episode-shipper/token\"",
    );
    let state = serde_json::json!({
        "hold": {
            "since_unix": time::OffsetDateTime::now_utc().unix_timestamp() - 7200,
            "status_code": 401,
            "problem_type": "unauthorized",
            "error": "401 unauthorized: missing or wrong bearer token",
            "failures": 4,
            "recheck_ms": (time::OffsetDateTime::now_utc().unix_timestamp() + 60) * 1000
        }
    });
    std::fs::write(
        env.data.join("state/retry.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("hold"), "red", "{}", run.show());
    assert!(run.finding("hold").contains("(2h ago) by 401"));
    assert!(run.fix("hold").contains("/etc/episode-shipper/token"));
}

// ---------------------------------------------------------------- schema, exit codes, config

#[test]
fn json_has_every_row_in_order_with_the_documented_keys() {
    let env = Env::new(DEAD_URL);
    let run = env.doctor_json(&[]);
    let json = run.json();
    let top: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(top, ["rows", "worst"]);
    let rows = json["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["check"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "config",
            "certificates",
            "receiver",
            "service",
            "backlog",
            "quarantine",
            "hold",
            "journal"
        ]
    );
    let rank = |l: &str| ["green", "yellow", "red"].iter().position(|x| *x == l);
    let mut worst = 0;
    for row in rows {
        let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["check", "finding", "fix", "level"], "{row}");
        let level = row["level"].as_str().unwrap();
        worst = worst.max(rank(level).unwrap_or_else(|| panic!("level {level}")));
        assert!(!row["finding"].as_str().unwrap().is_empty(), "{row}");
        if level == "green" {
            assert_eq!(row["fix"], Value::Null, "{row}");
        } else {
            assert!(!row["fix"].as_str().unwrap().is_empty(), "{row}");
        }
    }
    assert_eq!(rank(json["worst"].as_str().unwrap()), Some(worst));
}

#[test]
fn exit_codes_are_0_1_2() {
    let env = Env::new(DEAD_URL);
    let config = env.config.to_str().unwrap();
    for bad in [
        vec!["--config", config, "--since", "soon"],
        vec!["--config", config, "--since", "0s"],
        vec!["--config", config, "--bogus"],
        vec!["--config", config, "extra-argument"],
    ] {
        let run = env.doctor(&bad);
        assert_eq!(run.code, 2, "{}", run.show());
        assert!(run.stdout.is_empty(), "{}", run.show());
        assert!(!run.stderr.is_empty(), "{}", run.show());
    }
    let run = env.doctor(&["--since", "soon"]);
    assert!(
        run.stderr.contains("invalid --since \"soon\""),
        "{}",
        run.show()
    );
    // A red row (the dead receiver) is 1; the green case is in a_healthy_host_is_green_and_exits_0.
    assert_eq!(env.doctor_json(&[]).code, 1);
    assert_eq!(env.doctor(&["--help"]).code, 0);
}

#[test]
fn a_config_that_does_not_load_is_red_and_the_rows_needing_it_are_skipped() {
    let env = Env::new(DEAD_URL);
    std::fs::write(
        &env.config,
        "host_id = \"lab1\"\ncompression_level = 40\n[receiver]\nurl = \"https://r\"\n",
    )
    .unwrap();
    let run = env.doctor_json(&[]);
    assert_eq!(run.code, 1, "{}", run.show());
    assert_eq!(run.level("config"), "red");
    let finding = run.finding("config");
    assert!(
        finding.contains(env.config.to_str().unwrap()) && finding.contains("compression_level"),
        "{finding}"
    );
    assert!(
        run.fix("config")
            .contains("`episode-shipper check --config")
    );
    for check in ["certificates", "receiver", "backlog", "quarantine", "hold"] {
        assert_eq!(run.level(check), "yellow", "{check}");
        assert!(run.finding(check).starts_with("skipped:"), "{check}");
    }
    // Rows that need no config still ran.
    assert!(run.finding("service").contains("systemctl not found"));
    assert_eq!(run.level("journal"), "green");
}

#[test]
fn the_config_path_comes_from_the_environment_too() {
    let env = Env::new(DEAD_URL);
    let journal = env.empty_journal.to_str().unwrap();
    let run = env.doctor_env(
        &["--json", "--journal-file", journal],
        &[("EPISODE_SHIPPER_CONFIG", env.config.to_str().unwrap())],
    );
    assert!(
        run.finding("config")
            .starts_with(&format!("{}: host_id lab1", env.config.display())),
        "{}",
        run.show()
    );
}

#[test]
fn the_human_table_is_plain_when_piped() {
    let env = Env::new(DEAD_URL);
    let config = env.config.to_str().unwrap();
    let journal = env.empty_journal.to_str().unwrap();
    let run = env.doctor_env(
        &["--config", config, "--journal-file", journal],
        &[("TERM", "xterm-256color")],
    );
    assert_eq!(run.code, 1, "{}", run.show());
    assert!(!run.stdout.contains('\x1b'), "{}", run.show());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("config        ok    "),
        "{}",
        run.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("receiver      FAIL  unreachable")),
        "{}",
        run.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("              fix   check that the receiver runs")),
        "{}",
        run.stdout
    );
    let summary = lines.last().copied().unwrap_or("");
    assert!(
        summary.starts_with("1 red, ") && summary.ends_with(" yellow"),
        "{}",
        run.stdout
    );
}

#[test]
fn the_service_row_reads_systemctl() {
    let env = Env::new(DEAD_URL);
    env.fake(
        "systemctl",
        "printf 'LoadState=loaded\\nActiveState=failed\\nSubState=failed\\nNRestarts=0\\nWatchdogUSec=3min\\nResult=exit-code\\nExecMainStatus=78\\n'",
    );
    let run = env.doctor_json(&["--unit", "episode-shipper"]);
    assert_eq!(run.level("service"), "red", "{}", run.show());
    assert!(run.finding("service").contains("exit 78"));
    assert!(run.fix("service").contains("`episode-shipper check`"));
}
