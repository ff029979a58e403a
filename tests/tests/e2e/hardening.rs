//! The receiver's hardening (issue 11) end to end: exact host identities, what the
//! store may hold (regular files only), `check` and `run` agreeing, `check` looking
//! at sizes and digests, health naming what cannot be written, connection pressure,
//! problem+json for parser-level rejects, and SIGHUP. Each test starts its own
//! receiver(s) on 127.0.0.1:0 in its own TestEnv.

use std::time::Duration;

use episode_common::Sha256;
use episode_e2e::{Answer, TestEnv, bin};

fn assert_problem(answer: &Answer, status: u16, slug: &str) {
    assert_eq!(
        (answer.status, answer.slug()),
        (status, Some(slug)),
        "{answer:#?}"
    );
}

/// Runs the receiver binary with `args` to completion (10 s at most).
fn run_receiver(env: &TestEnv, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin("episode-receiver"));
    cmd.args(args).env("RUST_LOG", "info");
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

fn check(env: &TestEnv, config: &std::path::Path, all: bool) -> (i32, String, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--config".as_ref(), config.as_os_str()];
    args.push("check".as_ref());
    if all {
        args.push("--all".as_ref());
    }
    run_receiver(env, &args)
}

#[test]
fn host_ids_are_bound_to_certificates_exactly_not_ignoring_case() {
    let env = TestEnv::new("host-case");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let lab1 = rcv.client("lab1");
    let body = b"one archive".to_vec();
    for (path_host, header) in [("LAB1", None), ("Lab1", None), ("lab1", Some("LAB1"))] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("x-host-id", h)).into_iter().collect();
        let answer = rcv
            .put_with(&lab1, path_host, "01EPISODE", &body, &headers)
            .unwrap();
        assert_problem(&answer, 403, "forbidden-identity");
    }
    assert_eq!(rcv.head(&lab1, "LAB1", "01EPISODE").status, 403);
    assert!(
        !rcv.store_root.join("LAB1").exists() && !rcv.store_root.join("Lab1").exists(),
        "no store directory for a case variant"
    );
    assert!(rcv.index_rows().is_empty());
    let own = rcv.put(&lab1, "lab1", "01EPISODE", &body);
    assert_eq!(own.status, 201, "{own:#?}");
    assert_eq!(own.body["sha256"], Sha256::of(&body).to_hex());
}

#[test]
fn a_torn_index_line_that_is_cut_is_logged_at_warn_with_path_offset_and_length() {
    let env = TestEnv::new("torn-log");
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let put = rcv.put(&rcv.client("lab1"), "lab1", "01FIRST", b"first archive");
    assert_eq!(put.status, 201, "{put:#?}");
    rcv.process.kill();
    let offset = std::fs::metadata(&rcv.index_path).unwrap().len();
    let torn = br#"{"host_id":"lab1","episode_id":"01TORN","sha256":"ab"#;
    let mut index = std::fs::OpenOptions::new()
        .append(true)
        .open(&rcv.index_path)
        .unwrap();
    std::io::Write::write_all(&mut index, torn).unwrap();
    drop(index);

    // Started at the default level (no RUST_LOG): the cut must still be visible.
    let rcv = env.spawn_receiver_with(&cfg, |cmd| {
        cmd.env_remove("RUST_LOG");
    });
    assert_eq!(std::fs::metadata(&rcv.index_path).unwrap().len(), offset);
    let log = rcv.process.stderr() + &rcv.process.stdout();
    let line = log
        .lines()
        .find(|l| l.contains("index_tail_cut"))
        .unwrap_or_else(|| panic!("no index_tail_cut line\n{}", rcv.process.report()));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&rcv.index_path.display().to_string()),
        "{line}"
    );
    assert!(line.contains(&format!("offset={offset}")), "{line}");
    assert!(line.contains(&format!("bytes={}", torn.len())), "{line}");
}
