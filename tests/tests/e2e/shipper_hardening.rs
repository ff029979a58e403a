//! Issue 11, the shipper side: episodes never retired without all their files,
//! shapes that are not finished episodes, files that change while packed, pack
//! failures counted as transient, crash-safe requeue, an oversized meta.json
//! explained, `check` and `once` agreeing, SIGHUP reloads, system roots, and the
//! backoff growing against a 503 and reset by a success.

use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use episode_e2e::env::toml_str;
use episode_e2e::{Host, Proc, Reply, StubServer, TestEnv, bin, noise, wait_until, write_episode};
use serde_json::{Value, json};

fn meta() -> Value {
    json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600})
}

fn once(env: &TestEnv, host: &Host) -> Value {
    let run = env.shipper(host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    run.json()
}

/// Every entry of a tar.zst as (name bytes, content).
fn archive_entries(tar_zst: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tar_bytes = zstd::decode_all(tar_zst).expect("zstd");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path_bytes().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read entry");
        out.push((name, data));
    }
    out
}

fn name_with(id: &str, file: &[u8]) -> Vec<u8> {
    let mut name = format!("{id}/").into_bytes();
    name.extend_from_slice(file);
    name
}

#[test]
fn a_file_name_that_is_not_utf8_ships_with_its_exact_bytes() {
    let env = TestEnv::new("non-utf8");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let id = "01NONUTF8";
    let dir = write_episode(
        &host.data_root,
        id,
        &[("events.jsonl", b"{\"ts\":1}\n".as_slice())],
        Some(meta()),
        false,
    );
    let latin1: &[u8] = b"caf\xe9-\xff.csv";
    let long = [b'\xe9'; 140];
    std::fs::write(dir.join(OsStr::from_bytes(latin1)), b"latin-1 named").unwrap();
    std::fs::write(dir.join(OsStr::from_bytes(&long)), b"long named").unwrap();
    std::fs::write(dir.join("done.marker"), b"").unwrap();

    let pass = once(&env, &host);
    assert_eq!(pass["shipped"], 1, "{pass}");
    let stored = receiver.stored("lab1", id).expect("stored archive");
    let entries = archive_entries(&stored);
    let find = |name: &[u8]| {
        entries
            .iter()
            .find(|(n, _)| n == &name_with(id, name))
            .map(|(_, data)| data.clone())
    };
    assert_eq!(
        find(latin1).as_deref(),
        Some(b"latin-1 named".as_slice()),
        "{:?}",
        entries
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n))
            .collect::<Vec<_>>()
    );
    assert_eq!(find(&long).as_deref(), Some(b"long named".as_slice()));
    // Sorted by bytes: the 0xe9… name after "events.jsonl" and before nothing else.
    let names: Vec<&Vec<u8>> = entries.iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries in byte order");
    assert!(
        host.shipped()
            .join(id)
            .join(OsStr::from_bytes(latin1))
            .exists()
    );
}

#[test]
fn check_and_once_agree_on_a_key_that_is_not_the_certificates() {
    let env = TestEnv::new("key-mismatch");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let table = format!(
        "[receiver]\nurl = {:?}\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        receiver.url,
        toml_str(&env.pki.ca),
        toml_str(&env.pki.client_cert("lab1")),
        toml_str(&env.pki.client_key("lab2")),
    );
    let host = env.shipper_host("lab1", "lab1", &receiver.url, &table);
    for command in ["check", "once"] {
        let run = env.shipper(&host, &[command]);
        assert_eq!(run.code(), Some(78), "{command}: {run}");
        assert!(
            run.stderr.contains("receiver.client_key")
                && run
                    .stderr
                    .contains(&env.pki.client_key("lab2").display().to_string()),
            "{command}: {run}"
        );
    }
}

#[test]
fn check_and_once_agree_on_a_relative_or_impossible_data_root() {
    let env = TestEnv::new("bad-data-root");
    let file = env.dir("x").join("a-file");
    std::fs::write(&file, b"").unwrap();
    let under_a_file = file.join("data");
    for (data_root, why) in [
        ("relative/data".to_owned(), "relative"),
        (under_a_file.display().to_string(), "not a directory"),
        (file.display().to_string(), "not a directory"),
    ] {
        let host = env.shipper_host(
            "lab1",
            "lab1",
            "https://127.0.0.1:1",
            &format!("data_root = {data_root:?}\n"),
        );
        for command in ["check", "once"] {
            let run = env.shipper(&host, &[command]);
            assert_eq!(run.code(), Some(78), "{data_root} {command}: {run}");
            assert!(
                run.stderr.contains("data_root") && run.stderr.contains(why),
                "{data_root} {command}: {run}"
            );
        }
    }
    assert!(!env.root().join("relative").exists());
}

#[test]
fn a_done_marker_directory_and_a_symlinked_episode_are_not_shipped_and_are_reported() {
    let env = TestEnv::new("shapes");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let dir = write_episode(
        &host.data_root,
        "01MARKERDIR",
        &[("a", b"x".as_slice())],
        Some(meta()),
        false,
    );
    std::fs::create_dir(dir.join("done.marker")).unwrap();
    let elsewhere = write_episode(
        &env.dir("elsewhere"),
        "01LINKED",
        &[("a", b"y".as_slice())],
        Some(meta()),
        true,
    );
    std::os::unix::fs::symlink(&elsewhere, host.episodes().join("01LINKED")).unwrap();

    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    let pass = run.json();
    assert_eq!(
        (pass["scanned"].as_u64(), pass["shipped"].as_u64()),
        (Some(0), Some(0)),
        "{pass}"
    );
    assert!(
        receiver.index_rows().is_empty(),
        "{:?}",
        receiver.index_rows()
    );
    for (name, why) in [
        ("01MARKERDIR", "done.marker is a directory"),
        ("01LINKED", "symlink"),
    ] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("episode_not_ready") && l.contains(name) && l.contains(why)),
            "{name}: {run}"
        );
    }
    let status = env.shipper(&host, &["status", "--json"]).json();
    let not_ready = status["backlog"]["not_ready"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(not_ready.len(), 2, "{status}");
    assert_eq!(not_ready[0]["name"], "01LINKED", "{status}");
    assert_eq!(not_ready[1]["name"], "01MARKERDIR", "{status}");
    let human = env.shipper(&host, &["status"]);
    assert!(
        human
            .stdout
            .contains("\"01MARKERDIR\" is not shipped: done.marker is a directory"),
        "{human}"
    );
    // Never followed: the linked directory is where it was, untouched.
    assert!(
        elsewhere.join("done.marker").exists() && host.episodes().join("01LINKED").is_symlink()
    );
    assert!(host.list(&host.shipped()).is_empty());
}

#[test]
fn a_file_growing_while_it_is_packed_is_not_shipped_until_it_is_stable() {
    let env = TestEnv::new("growing");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, "");
    let id = "01GROWING";
    let dir = write_episode(
        &host.data_root,
        id,
        &[("telemetry-proc.jsonl", &noise(16 << 20, 7))],
        Some(meta()),
        true,
    );
    // A recorder that keeps appending after it wrote done.marker.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), dir.join("telemetry-proc.jsonl"));
        std::thread::spawn(move || {
            let mut file = std::fs::File::options().append(true).open(path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::io::Write::write_all(&mut file, &[b'x'; 512]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let run = env.shipper(&host, &["once"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(run.code(), Some(0), "{run}");
    let pass = run.json();
    assert_eq!(
        (
            pass["shipped"].as_u64(),
            pass["transient_failures"].as_u64()
        ),
        (Some(0), Some(0)),
        "{pass}"
    );
    assert!(
        receiver.index_rows().is_empty(),
        "shipped with a stale size"
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("episode_not_stable") && l.contains("changed while being packed")),
        "{run}"
    );
    // Once it stops changing, it ships whole.
    let mut shipped = Value::Null;
    wait_until(Duration::from_secs(8), "the stable episode shipped", || {
        shipped = once(&env, &host);
        shipped["shipped"] == 1
    });
    let files = episode_e2e::archive_files(&receiver.stored("lab1", id).unwrap());
    let on_disk = std::fs::read(host.shipped().join(id).join("telemetry-proc.jsonl")).unwrap();
    assert_eq!(
        files[&format!("{id}/telemetry-proc.jsonl")].len(),
        on_disk.len()
    );
}

/// A tmpfs of `size` mounted at `path` for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount (util-linux: apt-get install mount)");
        assert!(
            out.status.success(),
            "mount -t tmpfs at {} failed (this test needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_while_packing_is_a_transient_failure_naming_the_file() {
    let env = TestEnv::new("disk-full");
    let stub = StubServer::new(Reply::new(201, &[], json!({})));
    // memory_budget 0: every archive goes through the outbox, here a full disk.
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "memory_budget = \"0\"\n");
    let id = "01DISKFULL";
    write_episode(
        &host.data_root,
        id,
        &[("telemetry-proc.jsonl", &noise(1 << 20, 3))],
        Some(meta()),
        true,
    );
    let outbox = Tmpfs::mount(&host.outbox(), "64k");
    let pass = once(&env, &host);
    assert_eq!(pass["transient_failures"], 1, "{pass}");
    assert_eq!(pass["shipped"], 0, "{pass}");
    assert_eq!(stub.count("PUT"), 0);
    let backoff = &host.retry_state()["backoff"];
    assert_eq!(backoff["failures"], 1, "{}", host.retry_state());
    let error = backoff["last_error"].as_str().unwrap_or_default();
    let partial = host.outbox().join(format!("{id}.tar.zst.partial"));
    assert!(
        error.contains(&partial.display().to_string()) && error.contains("No space left"),
        "{error}"
    );
    assert!(!partial.exists(), "the partial archive is removed");
    assert!(host.episodes().join(id).join("done.marker").exists());
    // Room again: it ships once the backoff is over.
    drop(outbox);
    host.expire_waits();
    let pass = once(&env, &host);
    assert_eq!(pass["shipped"], 1, "{pass}");
    assert_eq!(
        host.retry_state()["backoff"],
        Value::Null,
        "{}",
        host.retry_state()
    );
}

fn strace() -> PathBuf {
    let found = ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    found.expect("strace is missing: apt-get install strace")
}

fn quarantined(host: &Host, name: &str, status: u16, slug: &str) {
    let q = host.quarantine().join(name);
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(q.join("meta.json"), meta().to_string()).unwrap();
    std::fs::write(q.join("done.marker"), b"").unwrap();
    let reason = json!({"status_code": status, "problem_type": slug, "error": "client error", "body": null, "attempts": 1, "sha256": null, "quarantined_at_wall": "2026-11-22T10:00:00Z", "quarantined_at_unix": 1, "shipper_version": "0", "episode_id": name});
    std::fs::write(q.join("quarantine_reason.json"), reason.to_string()).unwrap();
}

#[test]
fn a_requeue_killed_mid_move_keeps_its_reason_and_is_finished_later() {
    let env = TestEnv::new("requeue-crash");
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    std::fs::create_dir_all(host.episodes()).unwrap();
    quarantined(&host, "01REQUEUED", 400, "missing-code-commit");
    // Killed at the rename that moves the entry back (renameat2, never executed).
    let mut cmd = Command::new(strace());
    cmd.args(["-f", "-o", "/dev/null", "-e", "trace=renameat2", "-e"])
        .arg("inject=renameat2:error=EIO:signal=SIGKILL:when=1")
        .arg(bin("episode-shipper"))
        .arg("--config")
        .arg(&host.config)
        .args(["requeue", "--all"]);
    let mut proc = Proc::spawn(&mut cmd, &env, "requeue-killed");
    let status = proc
        .wait_exit(Duration::from_secs(8))
        .expect("requeue under strace ended");
    assert!(
        !status.success(),
        "the requeue was not killed: {}",
        proc.report()
    );
    assert!(
        host.quarantine().join("01REQUEUED").is_dir(),
        "{}",
        proc.report()
    );
    // status still knows why it was quarantined, and --status can select it.
    let status = env.shipper(&host, &["status", "--json"]).json();
    assert_eq!(
        status["quarantine"]["by_reason"]["400 missing-code-commit"], 1,
        "{status}"
    );
    assert_eq!(
        status["quarantine"]["by_reason"].get("unknown"),
        None,
        "{status}"
    );
    let run = env.shipper(&host, &["requeue", "--status", "400"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert!(run.stdout.contains("requeued 01REQUEUED"), "{run}");
    let back = host.episodes().join("01REQUEUED");
    assert!(back.join("meta.json").exists() && !back.join("quarantine_reason.json").exists());
    assert!(host.list(&host.quarantine()).is_empty());
    assert!(host.list(&host.state().join("requeue-pending")).is_empty());
}

#[test]
fn an_interrupted_requeue_is_finished_at_the_daemons_start() {
    let env = TestEnv::new("requeue-start");
    let stub = StubServer::new(Reply::new(201, &[], json!({})));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    std::fs::create_dir_all(host.episodes()).unwrap();
    quarantined(&host, "01REQUEUED", 412, "out-of-window");
    let mut cmd = Command::new(strace());
    cmd.args(["-f", "-o", "/dev/null", "-e", "trace=renameat2", "-e"])
        .arg("inject=renameat2:error=EIO:signal=SIGKILL:when=1")
        .arg(bin("episode-shipper"))
        .arg("--config")
        .arg(&host.config)
        .args(["requeue", "01REQUEUED"]);
    let mut proc = Proc::spawn(&mut cmd, &env, "requeue-killed");
    assert!(
        proc.wait_exit(Duration::from_secs(8))
            .is_some_and(|s| !s.success()),
        "{}",
        proc.report()
    );
    // The next start finishes the move, and the episode ships.
    let pass = once(&env, &host);
    assert_eq!(pass["shipped"], 1, "{pass}");
    assert!(host.shipped().join("01REQUEUED/meta.json").exists());
    assert!(
        !host
            .shipped()
            .join("01REQUEUED/quarantine_reason.json")
            .exists()
    );
    assert!(host.list(&host.quarantine()).is_empty());
}

#[test]
fn a_meta_json_too_large_to_read_is_named_in_the_quarantine_reason() {
    let env = TestEnv::new("huge-meta");
    let stub = StubServer::new(Reply::problem(400, "missing-code-commit"));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    let id = "01HUGEMETA";
    let dir = write_episode(
        &host.data_root,
        id,
        &[("events.jsonl", b"{}\n".as_slice())],
        None,
        false,
    );
    // A meta.json that has a code_commit, padded far beyond the 1 MiB read limit.
    let mut text = br#"{"code_commit": "3f2c1e9a", "pad": ""#.to_vec();
    text.resize(8 << 20, b' ');
    text.extend_from_slice(b"\"}");
    std::fs::write(dir.join("meta.json"), &text).unwrap();
    std::fs::write(dir.join("done.marker"), b"").unwrap();
    let pass = once(&env, &host);
    assert_eq!(pass["fatal"], 1, "{pass}");
    let put = stub
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("a PUT");
    assert_eq!(put.header("x-code-commit"), None);
    let reason: Value = serde_json::from_slice(
        &std::fs::read(host.quarantine().join(id).join("quarantine_reason.json")).unwrap(),
    )
    .unwrap();
    let size = text.len().to_string();
    for field in ["error", "shipper_note"] {
        let text = reason[field].as_str().unwrap_or_default();
        assert!(
            text.contains(&format!("meta.json is {size} bytes")) && text.contains("not read"),
            "{field}: {reason}"
        );
    }
    assert_eq!(reason["status_code"], 400);
}

/// Rewrites the host's config with `edit` applied to its text.
fn edit_config(host: &Host, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(&host.config, edit(text)).unwrap();
}

fn lines_with(proc: &Proc, needles: &[&str]) -> usize {
    proc.stderr()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn sighup_reloads_what_may_change_and_refuses_the_rest_without_stopping() {
    let env = TestEnv::new("sighup");
    let down = StubServer::new(Reply::problem(503, "unavailable"));
    let up = StubServer::new(Reply::new(201, &[], json!({})));
    let host = env.shipper_host("lab1", "lab1", &down.url(), "");
    write_episode(
        &host.data_root,
        "01FIRST",
        &[("a", b"1".as_slice())],
        Some(meta()),
        true,
    );
    let mut daemon = env.spawn_shipper(&host, |_| {});
    wait_until(
        Duration::from_secs(5),
        "a PUT to the first receiver",
        || down.count("PUT") >= 1,
    );

    // A valid change (the receiver url) takes effect at the next pass.
    edit_config(&host, |t| t.replace(&down.url(), &up.url()));
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "config_reloaded", || {
        lines_with(&daemon, &["config_reloaded"]) == 1
    });
    wait_until(Duration::from_secs(6), "shipped to the new url", || {
        host.shipped().join("01FIRST").is_dir()
    });
    assert_eq!(up.count("PUT"), 1, "{}", daemon.report());

    // An invalid file is refused, naming the key; the daemon goes on.
    edit_config(&host, |t| format!("compression_level = 40\n{t}"));
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "refused compression_level", || {
        lines_with(&daemon, &["config_reload_refused", "compression_level"]) == 1
    });
    // A new host_id is refused too.
    edit_config(&host, |t| {
        t.replace("compression_level = 40\n", "")
            .replace("host_id = \"lab1\"", "host_id = \"lab9\"")
    });
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "refused host_id", || {
        lines_with(&daemon, &["config_reload_refused", "host_id"]) == 1
    });
    assert!(!daemon.has_exited(), "{}", daemon.report());
    // Still shipping, with the config it kept (lab1, the new url).
    write_episode(
        &host.data_root,
        "01SECOND",
        &[("a", b"2".as_slice())],
        Some(meta()),
        true,
    );
    wait_until(Duration::from_secs(5), "the second episode shipped", || {
        host.shipped().join("01SECOND").is_dir()
    });
    let put = up
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.path, "/v1/episodes/lab1/01SECOND");
    assert_eq!(lines_with(&daemon, &["config_reloaded"]), 1);
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("stopped on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.report());
}

#[test]
fn ssl_cert_file_or_dir_make_ping_work_without_ca_bundle() {
    let env = TestEnv::new("system-roots");
    let receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let table = format!(
        "[receiver]\nurl = {:?}\nclient_cert = {}\nclient_key = {}\n",
        receiver.url,
        toml_str(&env.pki.client_cert("lab1")),
        toml_str(&env.pki.client_key("lab1")),
    );
    let host = env.shipper_host("lab1", "lab1", &receiver.url, &table);
    let cert_dir = env.dir("certs");
    std::fs::copy(&env.pki.ca, cert_dir.join("test-ca.pem")).unwrap();
    let empty = env.dir("empty");
    for (var, value, other) in [
        ("SSL_CERT_FILE", env.pki.ca.clone(), "SSL_CERT_DIR"),
        ("SSL_CERT_DIR", cert_dir.clone(), "SSL_CERT_FILE"),
    ] {
        let run = env.shipper_with(&host, &["ping"], |cmd| {
            cmd.env(var, &value).env(other, &empty);
        });
        assert_eq!(run.code(), Some(0), "{var}: {run}");
        assert_eq!(run.json()["ok"], true, "{var}: {run}");
    }
    // Without them the test CA is unknown: the system roots do not trust it.
    let run = env.shipper_with(&host, &["ping"], |cmd| {
        cmd.env("SSL_CERT_FILE", empty.join("none.pem"))
            .env("SSL_CERT_DIR", &empty);
    });
    assert_eq!(run.code(), Some(1), "{run}");
}

#[test]
fn the_backoff_grows_against_a_503_and_a_success_resets_it() {
    let env = TestEnv::new("backoff-e2e");
    let stub = StubServer::new(Reply::problem(503, "unavailable"));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    write_episode(
        &host.data_root,
        "01BACKOFF",
        &[("a", b"1".as_slice())],
        Some(meta()),
        true,
    );
    let mut daemon = env.spawn_shipper(&host, |_| {});
    // The failure count on disk grows by one per failed attempt: 1, 2, 3.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Some(n) = host.retry_state()["backoff"]["failures"].as_u64()
            && seen.last() != Some(&n)
        {
            seen.push(n);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen, [1, 2, 3], "{}", daemon.report());
    // Never sooner than initial_backoff (300ms) between attempts.
    let puts: Vec<Instant> = stub
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.at)
        .collect();
    assert!(puts.len() >= 3, "{}", daemon.report());
    for pair in puts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(290),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    stub.set_reply(Reply::new(201, &[], json!({})));
    wait_until(Duration::from_secs(6), "shipped after the 503s", || {
        host.shipped().join("01BACKOFF").is_dir()
    });
    wait_until(Duration::from_secs(2), "the retry state reset", || {
        let state = host.retry_state();
        state["backoff"].is_null()
            && state["pass_under_way"].is_null()
            && state["episodes"].as_object().is_none_or(|e| e.is_empty())
    });
    assert!(!daemon.has_exited(), "{}", daemon.report());
}

#[test]
fn a_file_that_cannot_be_read_fails_the_pack_naming_it_and_counts_as_transient() {
    let env = TestEnv::new("pack-enoent");
    let stub = StubServer::new(Reply::new(201, &[], json!({})));
    let host = env.shipper_host("lab1", "lab1", &stub.url(), "");
    let dir = write_episode(
        &host.data_root,
        "01VANISHES",
        &[("events.jsonl", b"{}\n".as_slice())],
        Some(meta()),
        true,
    );
    write_episode(
        &host.data_root,
        "01WHOLE",
        &[("events.jsonl", b"{}\n".as_slice())],
        Some(meta()),
        true,
    );
    // Listed, then gone when opened: every open of this one file fails ENOENT.
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(strace());
    cmd.args(["-f", "-o", "/dev/null", "-P"])
        .arg(&events)
        .args(["-e", "trace=openat", "-e", "inject=openat:error=ENOENT"])
        .arg(bin("episode-shipper"))
        .arg("--config")
        .arg(&host.config)
        .args(["--log-format", "text", "once"]);
    let mut proc = Proc::spawn(&mut cmd, &env, "once-enoent");
    let status = proc
        .wait_exit(Duration::from_secs(8))
        .expect("once under strace ended");
    assert_eq!(status.code(), Some(0), "{}", proc.report());
    let pass: Value = serde_json::from_str(proc.stdout().trim()).expect("pass JSON");
    assert_eq!(
        (
            pass["transient_failures"].as_u64(),
            pass["shipped"].as_u64()
        ),
        (Some(1), Some(1)),
        "the other episode still ships: {pass}"
    );
    let state = host.retry_state();
    let error = state["episodes"]["01VANISHES"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains(&events.display().to_string()) && error.contains("No such file"),
        "{state}"
    );
    assert!(
        proc.stderr()
            .lines()
            .any(|l| l.contains("pack_failed") && l.contains(&events.display().to_string())),
        "{}",
        proc.report()
    );
    assert!(dir.join("done.marker").exists(), "not retired");
}
