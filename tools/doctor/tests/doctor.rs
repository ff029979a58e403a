//! The real `episode-doctor` binary against hand-built hosts: fixture journals for
//! every class (structured, plain text, the shipper's own text and JSON log lines
//! from a real pass, too old, undated, unrecognisable, empty, unreadable),
//! journalctl missing, denied, partial or silent (fakes on PATH), certificates
//! made with rcgen (valid, expiring in a day, expired, expired intermediate,
//! mismatched, over http://), a dead and a live receiver, backlog, quarantine and
//! hold state, the `--json` schema, colour on a terminal and the exit codes.

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
        ship_line("hold", 404, "", "E404", m),
        ship_line("conflict", 409, "conflict", "E409", m),
        ship_line("repack", 400, "digest-mismatch", "ER", m),
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
        "1 ship(s) answered 404 ×1: the URL is not an episode receiver; shipping is on hold",
        "1 conflict(s) (409): another archive is stored under E409",
        "1 ship(s) re-packed after a digest/length mismatch (400 digest-mismatch ×1)",
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
        "receiver.url (https://127.0.0.1:1) does not point at an episode receiver",
        "E409",
        "dmesg",
        "`episode-shipper status --config",
        "`episode-shipper ping --config",
    ] {
        assert!(fix.contains(want), "{want:?} not in {fix:?}");
    }
    assert!(
        fix.find("timedatectl").unwrap() < fix.find("code_commit").unwrap(),
        "the 412 fix comes first: {fix}"
    );
}

/// `at` as tracing's fmt layer stamps a line (RFC 3339 UTC).
fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// `at` as `journalctl -o short` stamps a line, in UTC (the tests run with TZ=UTC).
fn syslog(at: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[month repr:short] [day] [hour]:[minute]:[second]");
    at.format(&f).unwrap()
}

#[test]
fn plain_text_lines_are_classified_from_the_message_and_their_stamp() {
    let env = Env::new(DEAD_URL);
    let now = time::OffsetDateTime::now_utc();
    let recent = now - time::Duration::minutes(1);
    let old = now - time::Duration::hours(2);
    let journal = env.journal_file(
        "plain.txt",
        &[
            // Journal JSON with only MESSAGE (non-native logging).
            text_line("ship_result outcome=fatal status=412", MINUTE),
            text_line("ship_result outcome=fatal status=400", MINUTE),
            // Not JSON at all: journalctl -o short and the shipper's text format.
            format!("{} lab1 episode-shipper[811]: ship_result outcome=fatal status=412", syslog(recent)),
            format!(r#"{}  ERROR ship_result outcome=fatal status=400 episode_id=E9 outcome="fatal" status_code=400 problem_type="missing-code-commit""#, rfc3339(recent)),
            // Older than --since by their own stamps: skipped.
            format!("{} lab1 episode-shipper[811]: ship_result outcome=hold status=401", syslog(old)),
            format!(r#"{}  ERROR ship_result outcome=hold status=403 episode_id=E8"#, rfc3339(old)),
            // No stamp at all (journalctl -o cat): counted, and said.
            "ship_result outcome=conflict status=409 episode_id=E7".into(),
            "random noise without any fields".into(),
        ],
    );
    let run = env.doctor_json_env(
        &["--journal-file", journal.to_str().unwrap()],
        &[("TZ", "UTC")],
    );
    assert_eq!(run.level("journal"), "red", "{}", run.show());
    let finding = run.finding("journal");
    assert!(
        finding.starts_with(
            "2 ship(s) rejected as out-of-window (412); 2 ship(s) rejected as bad request"
        ),
        "{finding}"
    );
    assert!(finding.contains("400 missing-code-commit ×1"), "{finding}");
    assert!(
        !finding.contains("unauthorized") && !finding.contains("forbidden"),
        "{finding}"
    );
    assert!(
        finding.contains(
            "2 line(s) older than 10m skipped; widen --since to see their 2 ship attempt(s)"
        ),
        "{finding}"
    );
    assert!(finding.contains("1 conflict(s)"), "{finding}");
    assert!(
        finding.ends_with("(1 undated line(s) counted)"),
        "{finding}"
    );
    // The same syslog stamp read in a zone 3 hours east of UTC is 3 hours older.
    let east = env.journal_file(
        "east.txt",
        &[format!(
            "{} lab1 episode-shipper[811]: ship_result outcome=fatal status=412",
            syslog(recent)
        )],
    );
    let run = env.doctor_json_env(
        &["--journal-file", east.to_str().unwrap()],
        &[("TZ", "XYZ-3")],
    );
    assert_eq!(run.level("journal"), "yellow", "{}", run.show());
    assert!(
        run.finding("journal")
            .starts_with("1 line(s) older than 10m skipped"),
        "{}",
        run.show()
    );
}

#[test]
fn lines_older_than_since_are_skipped_and_said() {
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
    assert_eq!(recent.level("journal"), "yellow", "{}", recent.show());
    assert_eq!(
        recent.finding("journal"),
        "2 line(s) older than 10m skipped; widen --since to see their 2 ship attempt(s); 1 shipped"
    );
    assert_eq!(
        recent.fix("journal"),
        format!(
            "`episode-doctor --since 3h --journal-file {path} --config {}` reads them too",
            env.config.display()
        )
    );
    let wide = env.doctor_json(&["--journal-file", path, "--since", "3h"]);
    assert_eq!(wide.level("journal"), "red", "{}", wide.show());
    assert!(
        wide.finding("journal")
            .starts_with("2 ship(s) rejected as out-of-window")
    );
    assert!(!wide.finding("journal").contains("skipped"));
    let compound = env.doctor_json(&["--journal-file", path, "--since", "1h30m"]);
    assert_eq!(compound.level("journal"), "yellow");
    assert!(
        compound
            .finding("journal")
            .contains("older than 1h30m skipped")
    );
}

#[test]
fn yesterdays_saved_log_is_not_green() {
    let env = Env::new(DEAD_URL);
    let day = 24 * HOUR;
    let journal = env.journal_file(
        "incident.jsonl",
        &[
            ship_line("hold", 401, "unauthorized", "E1", day),
            ship_line("hold", 401, "unauthorized", "E2", day - MINUTE),
        ],
    );
    let path = journal.to_str().unwrap();
    let run = env.doctor_json(&["--journal-file", path]);
    assert_eq!(run.level("journal"), "yellow", "{}", run.show());
    assert_eq!(
        run.finding("journal"),
        format!(
            "2 line(s) older than 10m skipped; widen --since to see their 2 ship attempt(s); no ship attempts in the last 10m (file {path})"
        )
    );
    assert!(
        run.fix("journal")
            .starts_with(&format!("`episode-doctor --since 2d --journal-file {path}")),
        "{}",
        run.show()
    );
    // Following the fix shows the incident.
    let run = env.doctor_json(&["--journal-file", path, "--since", "2d"]);
    assert!(
        run.finding("journal")
            .starts_with("2 ship(s) refused as unauthorized"),
        "{}",
        run.show()
    );
}

#[test]
fn a_file_with_nothing_recognisable_is_yellow() {
    let env = Env::new(DEAD_URL);
    let at = micros_ago(MINUTE);
    // What `journalctl -o json-pretty` writes.
    let pretty = format!(
        "{{\n\t\"__REALTIME_TIMESTAMP\" : \"{at}\",\n\t\"MESSAGE\" : \"ship_result outcome=fatal status=412\",\n\t\"OUTCOME\" : \"fatal\",\n\t\"STATUS_CODE\" : \"412\"\n}}"
    );
    let journal = env.journal_file("pretty.json", &[pretty]);
    let path = journal.to_str().unwrap();
    let run = env.doctor_json(&["--journal-file", path]);
    assert_eq!(run.level("journal"), "yellow", "{}", run.show());
    assert_eq!(
        run.finding("journal"),
        format!(
            "6 line(s) read (file {path}), none of them a journal entry or a shipper log line: nothing could be checked"
        )
    );
    assert!(
        run.fix("journal")
            .contains("`journalctl -u episode-shipper -o json > F`"),
        "{}",
        run.show()
    );
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
fn a_journal_in_the_log_schema_is_classified_and_listed_per_class_worst_first() {
    let env = Env::new(DEAD_URL);
    let journal = env.journal_file(
        "schema.jsonl",
        &[
            schema_ship_line("shipped", 201, "", "E1", MINUTE),
            schema_ship_line("transient", 503, "unavailable", "E2", MINUTE),
            schema_ship_line("fatal", 400, "missing-code-commit", "E3", MINUTE),
            schema_ship_line("fatal", 412, "out-of-window", "E4", MINUTE),
            // Before the upgrade: the old format in the same journal.
            ship_line("fatal", 412, "out-of-window", "E5", MINUTE),
        ],
    );
    let run = env.doctor_json(&["--journal-file", journal.to_str().unwrap()]);
    assert_eq!(run.level("journal"), "red", "{}", run.show());
    let findings = run.findings("journal");
    assert_eq!(findings.len(), 4, "{findings:?}");
    assert!(
        findings[0].starts_with("2 ship(s) rejected as out-of-window (412)"),
        "{findings:?}"
    );
    assert!(
        findings[1].starts_with("1 ship(s) rejected as bad request (400 missing-code-commit ×1)"),
        "{findings:?}"
    );
    assert!(
        findings[2].starts_with("1 transient failure(s) (503 unavailable ×1)"),
        "{findings:?}"
    );
    assert_eq!(findings[3], "1 shipped", "{findings:?}");
    assert_eq!(run.finding("journal"), findings.join("; "));
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
    let ca = Ca::new("test CA");
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
    let other = Ca::new("x CA").client("lab1", -time::Duration::days(1), time::Duration::days(9));
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
    write(&t.env.path("ca.pem"), &Ca::new("other CA").pem);
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
    let ca = Ca::new("test CA");
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
        assert_eq!(
            keys,
            ["check", "finding", "findings", "fix", "level"],
            "{row}"
        );
        let findings: Vec<&str> = row["findings"]
            .as_array()
            .unwrap_or_else(|| panic!("findings is a list: {row}"))
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(!findings.is_empty(), "{row}");
        assert_eq!(row["finding"], findings.join("; "), "{row}");
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
    assert!(
        run.fix("service").starts_with(&format!(
            "`episode-shipper check --config {}` names the file and key",
            env.config.display()
        )),
        "{}",
        run.show()
    );
}

#[test]
fn an_older_unit_whose_check_fails_the_start_is_a_bad_config() {
    let env = Env::new(DEAD_URL);
    // A unit installed before `ExecStartPre=-…`: the check fails the start and
    // systemd restarts it every RestartSec; `run` never ran.
    env.fake(
        "systemctl",
        "/bin/cat <<'EOF'\nLoadState=loaded\nActiveState=activating\nSubState=auto-restart\nNRestarts=12\nWatchdogUSec=3min\nResult=exit-code\nExecMainStatus=0\nExecStartPre={ path=/usr/local/bin/episode-shipper ; argv[]=/usr/local/bin/episode-shipper --config /etc/episode-shipper/shipper.toml check ; ignore_errors=no ; start_time=[Wed 2026-12-02 05:08:50 UTC] ; stop_time=[Wed 2026-12-02 05:08:50 UTC] ; pid=811 ; code=exited ; status=78 }\nEOF",
    );
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("service"), "red", "{}", run.show());
    assert!(
        run.finding("service").starts_with(
            "activating (auto-restart): ExecStartPre `/usr/local/bin/episode-shipper --config /etc/episode-shipper/shipper.toml check` exited 78, the configuration is wrong"
        ),
        "{}",
        run.show()
    );
    assert!(
        run.fix("service")
            .contains("`episode-shipper check --config")
    );
}

// ---------------------------------------------------------------- the shipper's own log lines

/// Not a test of its own: one real shipper pass (`episode-shipper --log-format
/// <format> once`), with the shipper's logging setup, for `support::shipper_log`.
#[test]
#[ignore = "run by support::shipper_log in a child process"]
fn shipper_pass_child() {
    let config = std::env::var_os(CHILD_CONFIG)
        .expect("shipper_pass_child only runs as the child of support::shipper_log");
    let format = std::env::var(CHILD_LOG_FORMAT).unwrap_or_default();
    episode_common::logging::init(format.parse().unwrap(), "episode-shipper");
    let config = episode_shipper::config::Config::load(std::path::Path::new(&config)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pass = runtime
        .block_on(episode_shipper::daemon::once(config))
        .unwrap();
    // For the parent's failure message.
    println!("pass: {}", serde_json::to_string(&pass).unwrap());
}

/// An episode whose meta.json has no code_commit (the receiver answers 400).
fn episode_without_commit(env: &Env, id: &str) {
    let dir = env.data.join("episodes").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("meta.json"), b"{}").unwrap();
    std::fs::write(dir.join("events.jsonl"), vec![b'x'; 1000]).unwrap();
    std::fs::write(dir.join("done.marker"), b"").unwrap();
}

#[test]
fn the_shippers_own_text_and_json_log_lines_are_classified() {
    let receiver = Receiver::start("");
    let env = Env::new(&receiver.url);
    // A real 400 from a real receiver, logged by the shipper as text.
    episode_without_commit(&env, "01NOCOMMIT");
    let mut text = shipper_log(&env.config, "text");
    // A client certificate that is not there yet: the transport's "mTLS material
    // missing", whose error the text format writes unquoted.
    env.episode("01WAITING", true);
    let missing = env.path("client.pem");
    env.write_config(
        &receiver.url,
        &format!(
            "client_cert = {missing:?}\nclient_key = {:?}",
            env.path("client.key")
        ),
    );
    text.extend(shipper_log(&env.config, "text"));
    let journal = env.journal_file("shipper.log", &text);
    let run = env.doctor_json(&["--journal-file", journal.to_str().unwrap()]);
    assert_eq!(run.level("journal"), "red", "{}\n{text:#?}", run.show());
    let finding = run.finding("journal");
    assert!(
        finding.starts_with("1 ship(s) rejected as bad request (400 missing-code-commit ×1)"),
        "{finding}\n{text:#?}"
    );
    let want = format!(
        "1 transient failure(s) (connection ×1); last: mTLS material missing: receiver.client_cert {} does not exist (yet)",
        missing.display()
    );
    assert!(finding.contains(&want), "{finding}\n{text:#?}");
    assert!(
        !finding.contains("undated"),
        "the fmt stamp is read: {finding}"
    );
    let fix = run.fix("journal");
    assert!(fix.contains("code_commit into meta.json"), "{fix}");
    assert!(
        fix.contains("the shipper cannot load its TLS material"),
        "{fix}"
    );

    // `--log-format json` under systemd: each JSON line is a journal MESSAGE. A
    // fresh host (the first one now backs off before its next attempt).
    let env = Env::new(&receiver.url);
    env.episode("01WAITING", true);
    let missing = env.path("client.pem");
    env.write_config(
        &receiver.url,
        &format!(
            "client_cert = {missing:?}\nclient_key = {:?}",
            env.path("client.key")
        ),
    );
    let want = format!(
        "1 transient failure(s) (connection ×1); last: mTLS material missing: receiver.client_cert {} does not exist (yet)",
        missing.display()
    );
    let json = shipper_log(&env.config, "json");
    let entries: Vec<String> = json
        .iter()
        .map(|line| {
            serde_json::json!({
                "__REALTIME_TIMESTAMP": micros_ago(Duration::ZERO),
                "_SYSTEMD_UNIT": "episode-shipper.service",
                "MESSAGE": line,
            })
            .to_string()
        })
        .collect();
    let journal = env.journal_file("shipper-json.jsonl", &entries);
    let run = env.doctor_json(&["--journal-file", journal.to_str().unwrap()]);
    assert_eq!(run.level("journal"), "yellow", "{}\n{json:#?}", run.show());
    assert_eq!(run.finding("journal"), want, "{json:#?}");
}

// ---------------------------------------------------------------- reading the journal

#[test]
fn journalctl_showing_only_the_users_own_journal_is_yellow() {
    let env = Env::new(DEAD_URL);
    // Not root, not in systemd-journal: journalctl exits 0 with a hint.
    env.fake(
        "journalctl",
        "echo 'Hint: You are currently not seeing messages from other users and the system.' >&2\necho '      Users in groups '\"'\"'adm'\"'\"', '\"'\"'systemd-journal'\"'\"' can see all messages.' >&2\nexit 0",
    );
    let run = env.doctor(&["--config", env.config.to_str().unwrap(), "--json"]);
    assert_eq!(run.level("journal"), "yellow", "{}", run.show());
    assert!(
        run.finding("journal").starts_with(
            "journal not read: permission denied (Hint: You are currently not seeing messages from other users"
        ),
        "{}",
        run.show()
    );
    assert!(
        run.fix("journal")
            .contains("`sudo usermod -aG systemd-journal $USER`")
    );
}

#[test]
fn journalctl_with_nothing_to_say_is_green() {
    let env = Env::new(DEAD_URL);
    // journalctl -o json prints nothing at all when no entry matches.
    env.fake("journalctl", "exit 0");
    let run = env.doctor(&["--config", env.config.to_str().unwrap(), "--json"]);
    assert_eq!(run.level("journal"), "green", "{}", run.show());
    assert_eq!(
        run.finding("journal"),
        "no ship attempts in the last 10m (unit episode-shipper)"
    );
}

#[test]
fn an_unreadable_journal_file_is_a_yellow_row_naming_it() {
    let env = Env::new(DEAD_URL);
    let missing = env.path("no-such.jsonl");
    let dir = env.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    for (path, why) in [
        (&missing, "No such file or directory"),
        (&dir, "Is a directory"),
    ] {
        let run = env.doctor_json(&["--journal-file", path.to_str().unwrap()]);
        assert_eq!(
            run.code,
            1,
            "red only because the receiver is dead: {}",
            run.show()
        );
        assert!(run.stderr.is_empty(), "{}", run.show());
        assert_eq!(run.level("journal"), "yellow", "{}", run.show());
        let finding = run.finding("journal");
        assert!(
            finding.starts_with(&format!(
                "journal not read: cannot read {}: {why}",
                path.display()
            )),
            "{finding}"
        );
        assert!(run.fix("journal").contains("--journal-file"));
    }
}

// ---------------------------------------------------------------- more certificates

#[test]
fn an_expired_intermediate_is_red_naming_it() {
    let env = Env::new(DEAD_URL);
    let root = Ca::new("root CA");
    let days = time::Duration::days;
    let issuing = root.intermediate("issuing 2026", -days(400), -days(3));
    let leaf = issuing.client("lab1", -days(30), days(300));
    let ca_path = write(&env.path("ca.pem"), &root.pem);
    let cert = write(
        &env.path("client.pem"),
        &format!("{}{}", leaf.cert, issuing.pem),
    );
    let key = write(&env.path("client.key"), &leaf.key);
    env.write_config(
        DEAD_URL,
        &format!("ca_bundle = {ca_path:?}\nclient_cert = {cert:?}\nclient_key = {key:?}"),
    );
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "red", "{}", run.show());
    let finding = run.finding("certificates");
    assert!(
        finding.starts_with(&format!(
            "intermediate certificate \"issuing 2026\" in {} expired 3 day(s) ago",
            cert.display()
        )),
        "{finding}"
    );
    // The leaf itself is fine, and the chain is sound apart from the date.
    assert!(
        finding.contains("client certificate [\"lab1\"] valid"),
        "{finding}"
    );
    assert!(
        finding.contains("chains to receiver.ca_bundle"),
        "{finding}"
    );
    assert!(run.fix("certificates").contains("current intermediate"));
}

#[test]
fn over_http_an_expired_certificate_is_only_yellow() {
    let receiver = Receiver::start("");
    let env = Env::new(&receiver.url);
    env.fake_systemctl_running();
    let ca = Ca::new("test CA");
    let leaf = ca.client("lab1", -time::Duration::days(30), -time::Duration::days(3));
    let ca_path = write(&env.path("ca.pem"), &ca.pem);
    let cert = write(&env.path("client.pem"), &leaf.cert);
    let key = write(&env.path("client.key"), &leaf.key);
    env.write_config(
        &receiver.url,
        &format!("ca_bundle = {ca_path:?}\nclient_cert = {cert:?}\nclient_key = {key:?}"),
    );
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "yellow", "{}", run.show());
    assert_eq!(run.code, 0, "nothing red over http://: {}", run.show());
    let finding = run.finding("certificates");
    assert!(
        finding.contains("expired 3 day(s) ago")
            && finding.contains("(not used while receiver.url is http://)"),
        "{finding}"
    );
    // The transport still loads them: gone is red, http:// or not.
    std::fs::remove_file(&key).unwrap();
    let run = env.doctor_json(&[]);
    assert_eq!(run.level("certificates"), "red", "{}", run.show());
    assert_eq!(run.level("receiver"), "red", "{}", run.show());
    assert!(run.finding("receiver").contains("mTLS material missing"));
}

// ---------------------------------------------------------------- colour

#[test]
fn the_table_is_coloured_on_a_terminal_unless_no_color() {
    let pty = Pty::find().expect(
        "neither `script` nor python3 is here: install one with `apt-get install -y util-linux`",
    );
    let env = Env::new(DEAD_URL);
    let exe = env!("CARGO_BIN_EXE_episode-doctor");
    let config = env.config.to_str().unwrap();
    let journal = env.empty_journal.to_str().unwrap();
    let argv = [exe, "--config", config, "--journal-file", journal];
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = pty.command(&argv);
        cmd.env_clear().env("PATH", &env.bin).env("TERM", "xterm");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = die_with_parent(&mut cmd).output().expect("run under a pty");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let show = format!(
            "{cmd:?} exited {:?}\nstdout:\n{stdout:?}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The dead receiver is red: exit 1 through the pty too.
        assert_eq!(out.status.code(), Some(1), "{show}");
        assert!(stdout.contains("receiver"), "{show}");
        (stdout, show)
    };
    let (coloured, show) = run(&[]);
    for want in ["\x1b[1;31mFAIL", "\x1b[32mok", "\x1b[36mfix", "\x1b[0m"] {
        assert!(coloured.contains(want), "{want:?} missing: {show}");
    }
    let (plain, show) = run(&[("NO_COLOR", "1")]);
    assert!(!plain.contains('\x1b'), "{show}");
    assert!(plain.contains("receiver      FAIL  unreachable"), "{show}");
}

// ---------------------------------------------------------------- the harness

const HELPER: &str = "DOCTOR_TEST_HARNESS_HELPER";

/// Whether `pid` is gone (or a zombie waiting for init to reap it).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_child_of_the_harness_dies_when_the_test_process_is_killed() {
    use std::io::BufRead as _;
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap());
    helper
        .args(["--exact", "harness_helper", "--ignored", "--nocapture"])
        .env(HELPER, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut helper = die_with_parent(&mut helper).spawn().unwrap();
    let mut lines = std::io::BufReader::new(helper.stdout.take().unwrap()).lines();
    let pid: i32 = loop {
        let line = lines
            .next()
            .expect("the helper printed no child pid")
            .unwrap();
        if let Some(pid) = line.strip_prefix("child pid ") {
            break pid.trim().parse().unwrap();
        }
    };
    assert!(!gone(pid), "the child runs while the helper does");
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gone(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} outlived the test process that started it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Not a test of its own: the helper process of the test above, starting a child
/// the way the harness starts the doctor.
#[test]
#[ignore = "run by a_child_of_the_harness_dies_when_the_test_process_is_killed"]
fn harness_helper() {
    assert!(
        std::env::var_os(HELPER).is_some(),
        "harness_helper only runs as the helper of a_child_of_the_harness_dies_when_the_test_process_is_killed"
    );
    let mut child = die_with_parent(std::process::Command::new("sleep").arg("30"))
        .spawn()
        .unwrap();
    println!("child pid {}", child.id());
    // Killed by the test before this returns; reaped otherwise.
    child.wait().unwrap();
}
