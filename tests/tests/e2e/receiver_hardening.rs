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
    let stderr = rcv.process.stderr();
    let cut = episode_e2e::logs::events(&stderr, episode_common::Event::IndexTailCut);
    let [line] = cut.as_slice() else {
        panic!("not one index_tail_cut line\n{}", rcv.process.report());
    };
    assert_eq!(line["level"], "WARN", "{line:?}");
    assert_eq!(
        line["path"].as_str(),
        Some(rcv.index_path.display().to_string().as_str()),
        "{line:?}"
    );
    assert_eq!(line["offset"].as_u64(), Some(offset), "{line:?}");
    assert_eq!(line["bytes"].as_u64(), Some(torn.len() as u64), "{line:?}");
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Stores `lab1/01KEPT` through a receiver and stops it; returns the config path.
fn store_one(env: &TestEnv) -> (std::path::PathBuf, episode_e2e::ReceiverPaths, Vec<u8>) {
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let body = b"the kept archive".to_vec();
    let put = rcv.put(&rcv.client("lab1"), "lab1", "01KEPT", &body);
    assert_eq!(put.status, 201, "{put:#?}");
    rcv.process.kill();
    (cfg, rcv.paths(), body)
}

#[test]
fn a_fifo_or_symlink_in_the_store_is_reported_never_opened_nor_served() {
    let env = TestEnv::new("store-non-regular");
    let (cfg, paths, _) = store_one(&env);
    let outside = env.root().join("outside.bin");
    std::fs::write(&outside, b"bytes that were never uploaded").unwrap();
    // A FIFO without a row (start-up used to block opening it), a symlink without a
    // row (used to be adopted), and a symlink where an indexed archive was.
    mkfifo(&paths.archive("lab1", "01FIFO"));
    std::os::unix::fs::symlink(&outside, paths.archive("lab1", "01LINK")).unwrap();
    let kept = paths.archive("lab1", "01KEPT");
    std::fs::rename(&kept, env.root().join("kept.bin")).unwrap();
    std::os::unix::fs::symlink(env.root().join("kept.bin"), &kept).unwrap();

    let (code, stdout, stderr) = check(&env, &cfg, false);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    for name in ["01FIFO", "01LINK", "01KEPT"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("PROBLEM") && l.contains(name)),
            "{name}:\n{stdout}"
        );
    }

    let rcv = env.spawn_receiver(&cfg); // panics if start-up hangs on the FIFO
    let lab1 = rcv.client("lab1");
    for name in ["01FIFO", "01LINK", "01KEPT"] {
        assert_eq!(rcv.head(&lab1, "lab1", name).status, 404, "{name}");
    }
    let rows = rcv.index_rows();
    assert_eq!(rows.len(), 1, "nothing adopted: {rows:?}");
    let log = rcv.process.stderr();
    for name in ["01FIFO.tar.zst", "01LINK.tar.zst"] {
        assert!(
            log.lines()
                .any(|l| l.contains("store_entry_not_regular") && l.contains(name)),
            "{name}:\n{}",
            rcv.process.report()
        );
    }
    // A PUT over a symlink never writes through it.
    let put = rcv.put(&lab1, "lab1", "01LINK", b"a real upload");
    assert_ne!(put.status / 100, 2, "{put:#?}");
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"bytes that were never uploaded"
    );
    assert_eq!(rcv.index_rows().len(), 1);
}

#[test]
fn a_host_directory_that_is_a_symlink_is_reported_and_never_written_through() {
    let env = TestEnv::new("store-host-link");
    let (cfg, paths, _) = store_one(&env);
    let elsewhere = env.dir("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, paths.store_root.join("lab2")).unwrap();
    let (code, stdout, stderr) = check(&env, &cfg, false);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("PROBLEM") && l.contains("lab2")),
        "{stdout}"
    );
    let rcv = env.spawn_receiver(&cfg);
    let put = rcv.put(
        &rcv.client("lab2"),
        "lab2",
        "01THROUGH",
        b"must not land elsewhere",
    );
    assert_ne!(put.status / 100, 2, "{put:#?}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(rcv.index_rows().len(), 1);
}

#[test]
fn check_and_run_agree_on_a_directory_named_like_an_archive() {
    let env = TestEnv::new("store-dir");
    let (cfg, paths, _) = store_one(&env);
    std::fs::create_dir(paths.archive("lab1", "01DIR")).unwrap();
    let (code, stdout, stderr) = check(&env, &cfg, false);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("PROBLEM") && l.contains("01DIR.tar.zst")),
        "{stdout}"
    );
    // run reports the same entry and serves (it used to exit 1 trying to read it).
    let rcv = env.spawn_receiver(&cfg);
    assert!(
        rcv.process
            .stderr()
            .lines()
            .any(|l| l.contains("store_entry_not_regular") && l.contains("01DIR.tar.zst")),
        "{}",
        rcv.process.report()
    );
    let lab1 = rcv.client("lab1");
    assert_eq!(rcv.head(&lab1, "lab1", "01DIR").status, 404);
    assert_eq!(rcv.head(&lab1, "lab1", "01KEPT").status, 200);
}

/// Mounts a read-only tmpfs on `dir`; unmounted (lazily) on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &std::path::Path, options: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("mount (apt-get install mount; run as root): {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {options} on {} failed (needs root: run the tests as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Mount {
    /// A fresh ext4 filesystem of `mib` MiB in a file, loop-mounted on `dir`.
    fn ext4(image: &std::path::Path, dir: &std::path::Path, mib: u64) -> Self {
        std::fs::File::create(image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .output()
            .unwrap_or_else(|e| panic!("mkfs.ext4 (apt-get install e2fsprogs): {e}"));
        assert!(out.status.success(), "mkfs.ext4: {out:?}");
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("mount (apt-get install mount; run as root): {e}"));
        assert!(
            out.status.success(),
            "mount -o loop {} (needs root and loop devices): {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

/// `fsfreeze --freeze` on a mount: every write to it blocks until `thaw` (or drop).
struct Freeze(std::path::PathBuf);

impl Freeze {
    fn new(dir: &std::path::Path) -> Self {
        let out = std::process::Command::new("fsfreeze")
            .arg("--freeze")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("fsfreeze (apt-get install util-linux): {e}"));
        assert!(out.status.success(), "fsfreeze --freeze: {out:?}");
        Self(dir.to_owned())
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.0)
            .status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn check_and_run_agree_on_a_store_on_a_read_only_filesystem() {
    let env = TestEnv::new("store-ro");
    let data = env.dir("ro");
    let _mount = Mount::tmpfs(&data, "ro,size=1m");
    let cfg = env.receiver_config(
        "r",
        true,
        &format!(
            "store_root = {}\nincoming_root = {}\n",
            episode_e2e::env::toml_str(&data.join("store")),
            episode_e2e::env::toml_str(&data.join("incoming")),
        ),
    );
    let (check_code, stdout, check_err) = check(&env, &cfg, false);
    let (run_code, _, run_err) = run_receiver(
        &env,
        &[
            "--config".as_ref(),
            cfg.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "run".as_ref(),
        ],
    );
    assert_eq!(
        (check_code, run_code),
        (78, 78),
        "check:\n{stdout}\n{check_err}\nrun:\n{run_err}"
    );
    for stderr in [&check_err, &run_err] {
        assert!(
            stderr.contains("store_root") && stderr.contains("read-only"),
            "{stderr}"
        );
    }
}

#[test]
fn check_compares_sizes_always_digests_with_all_and_names_conflicting_rows() {
    let env = TestEnv::new("check-bytes");
    let cfg = env.receiver_config("r", true, "");
    let mut rcv = env.spawn_receiver(&cfg);
    let lab1 = rcv.client("lab1");
    for (episode, body) in [
        ("01SAME", b"same size, other bytes".as_slice()),
        ("01SHORT", b"an archive cut short later"),
        ("01DUP", b"the real owner's bytes"),
        ("01FINE", b"untouched"),
    ] {
        assert_eq!(rcv.put(&lab1, "lab1", episode, body).status, 201);
    }
    rcv.process.kill();
    let paths = rcv.paths();
    let (code, stdout, stderr) = check(&env, &cfg, true);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    std::fs::write(paths.archive("lab1", "01SAME"), b"SAME SIZE, OTHER BYTES").unwrap();
    std::fs::write(paths.archive("lab1", "01SHORT"), b"an archive").unwrap();
    // A row for 01DUP with other content appended after the real one.
    let rows = paths.index_rows();
    let mut forged = rows
        .iter()
        .find(|r| r["episode_id"] == "01DUP")
        .unwrap()
        .clone();
    forged["sha256"] = Sha256::of(b"someone else's bytes!!").to_hex().into();
    let mut text = std::fs::read_to_string(&paths.index_path).unwrap();
    text.push_str(&format!("{forged}\n"));
    std::fs::write(&paths.index_path, text).unwrap();

    let (code, stdout, stderr) = check(&env, &cfg, false);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let problem = |out: &str, name: &str| {
        out.lines()
            .any(|l| l.contains("PROBLEM") && l.contains(&format!("lab1/{name}")))
    };
    assert!(problem(&stdout, "01SHORT"), "{stdout}");
    assert!(problem(&stdout, "01DUP"), "{stdout}");
    assert!(
        !problem(&stdout, "01SAME"),
        "sizes only without --all: {stdout}"
    );
    let (code, stdout, stderr) = check(&env, &cfg, true);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    for name in ["01SAME", "01SHORT", "01DUP"] {
        assert!(problem(&stdout, name), "{name}: {stdout}");
    }
    assert!(!problem(&stdout, "01FINE"), "{stdout}");

    // run trusts the archive over a forged last row and over a row of another size,
    // and reports the latter at start-up, before any request.
    let rcv = env.spawn_receiver(&cfg);
    episode_e2e::wait_until(Duration::from_secs(5), "the start-up size audit", || {
        rcv.process.stderr().contains("store_audited")
    });
    assert!(
        rcv.process
            .stderr()
            .lines()
            .any(|l| l.contains("archive_size_mismatch") && l.contains("01SHORT")),
        "{}",
        rcv.process.report()
    );
    let lab1 = rcv.client("lab1");
    let head = rcv.head(&lab1, "lab1", "01DUP");
    assert_eq!(head.status, 200, "{head:#?}");
    assert_eq!(
        head.header("repr-digest"),
        Some(Sha256::of(b"the real owner's bytes").to_field().as_str())
    );
    let again = rcv.put(&lab1, "lab1", "01DUP", b"the real owner's bytes");
    assert_eq!(
        (again.status, &again.body["stored"]),
        (200, &serde_json::json!("already_present")),
        "{again:#?}"
    );
    assert_eq!(rcv.head(&lab1, "lab1", "01SHORT").status, 404);
    assert!(
        rcv.process
            .stderr()
            .lines()
            .any(|l| l.contains("archive_size_mismatch") && l.contains("01SHORT")),
        "{}",
        rcv.process.report()
    );
}

#[test]
fn health_is_503_naming_the_index_while_its_filesystem_is_full() {
    let env = TestEnv::new("index-full");
    let idx = env.dir("idx");
    let _mount = Mount::tmpfs(&idx, "size=256k");
    let cfg = env.receiver_config(
        "r",
        true,
        &format!(
            "index_path = {}\n",
            episode_e2e::env::toml_str(&idx.join("index.jsonl"))
        ),
    );
    let rcv = env.spawn_receiver(&cfg);
    let lab1 = rcv.client("lab1");
    let health = |rcv: &episode_e2e::Receiver| rcv.get(&lab1, "/v1/health").unwrap();
    assert_eq!(health(&rcv).status, 200);
    assert_eq!(rcv.put(&lab1, "lab1", "01BEFORE", b"before").status, 201);

    // Fill the index's filesystem.
    let filler = idx.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut file, &block).is_ok() {}
    drop(file);

    let full = health(&rcv);
    assert_eq!(full.status, 503, "{full:#?}");
    assert_eq!(full.body["ok"], false);
    let reason = full.body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("index:"), "{full:#?}");
    // (A PUT now may still fit in the index's last page, or get 507.)

    // Space again: the next upload is stored and health recovers with it.
    std::fs::remove_file(&filler).unwrap();
    let put = rcv.put(&lab1, "lab1", "01AFTER", b"after");
    assert_eq!(put.status, 201, "{put:#?}");
    let after = health(&rcv);
    assert_eq!(after.status, 200, "{after:#?}");
}

#[test]
fn requests_hyper_cannot_parse_get_problem_json_and_a_second_x_host_id_is_refused() {
    let env = TestEnv::new("parser-rejects");
    let rcv = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let digest = Sha256::of(b"body");
    let base = || -> Vec<(String, String)> {
        vec![
            ("Repr-Digest".into(), digest.to_field()),
            ("X-Code-Commit".into(), "3f2c1e9a".into()),
            ("Content-Type".into(), "application/zstd".into()),
        ]
    };
    let with = |extra: &[(&str, &str)]| {
        let mut headers = base();
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        headers
    };
    let many: Vec<(String, String)> = (0..120)
        .map(|i| (format!("X-Filler-{i}"), "x".to_owned()))
        .collect();
    type Headers = Vec<(String, String)>;
    let cases: Vec<(&str, Headers, u16, &str)> = vec![
        (
            "two Content-Lengths",
            with(&[("Content-Length", "4"), ("Content-Length", "5")]),
            400,
            "bad-request",
        ),
        (
            "a negative Content-Length",
            with(&[("Content-Length", "-1")]),
            400,
            "bad-request",
        ),
        ("too many headers", many, 431, "headers-too-large"),
        (
            "two X-Host-Ids",
            with(&[
                ("Content-Length", "4"),
                ("X-Host-Id", "lab1"),
                ("X-Host-Id", "lab2"),
            ]),
            400,
            "invalid-id",
        ),
    ];
    for (what, headers, status, slug) in cases {
        let mut conn = episode_e2e::tls_connect(&rcv, "lab1");
        conn.send_head("PUT", "/v1/episodes/lab1/01EPISODE", &headers)
            .unwrap();
        let _ = conn.send(b"body");
        let answer = conn
            .read_response(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rcv.process.report()));
        assert_eq!(
            (answer.status, answer.slug().as_deref()),
            (status, Some(slug)),
            "{what}: {answer:?}"
        );
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(answer.json()["status"], status, "{what}");
    }
    assert!(rcv.index_rows().is_empty());
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all
/// loopback on Linux), so a test can play many client addresses.
fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd as _;
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the sockaddrs
    // outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = sockaddr(from, 0);
        let rc = libc::bind(fd, (&raw const local).cast(), len);
        assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(*to.ip(), to.port());
        let rc = libc::connect(fd, (&raw const remote).cast(), len);
        assert_eq!(
            rc,
            0,
            "connect from {from}: {}",
            std::io::Error::last_os_error()
        );
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// True if the server closed `stream` within `timeout` (EOF or reset on read).
fn closed_within(mut stream: &std::net::TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut stream, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_sockets_from_many_addresses_do_not_starve_a_real_client() {
    let env = TestEnv::new("conn-pressure");
    // 64 connections at most, 16 per address (max(16, 64/8)); the handshake
    // timeout stays long, so only the pressure rule can make room.
    let rcv = env.spawn_receiver(&env.receiver_config(
        "r",
        true,
        "max_connections = 64\nhandshake_timeout = \"60s\"\nheader_read_timeout = \"60s\"\n",
    ));
    // 96 idle sockets that never send a TLS byte, from six addresses.
    let mut idle = Vec::new();
    for n in 0..96u8 {
        let from = std::net::Ipv4Addr::new(127, 0, 1, 2 + n / 16);
        idle.push(connect_from(from, rcv.addr));
    }
    std::thread::sleep(Duration::from_millis(200));
    let lab1 = rcv.client("lab1");
    let started = std::time::Instant::now();
    let health = rcv.get(&lab1, "/v1/health").unwrap();
    assert_eq!(health.status, 200, "{health:#?}");
    let put = rcv.put(&lab1, "lab1", "01PRESSURE", b"under pressure");
    assert_eq!(put.status, 201, "{put:#?}");
    let waited = started.elapsed();
    eprintln!("the real client's health + PUT took {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "the real client waited {waited:?}\n{}",
        rcv.process.report()
    );
    let n_closed = idle
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(20)))
        .count();
    assert!(n_closed >= 32, "only {n_closed} of 96 idle sockets closed");
}

#[test]
fn one_address_holds_at_most_its_share_of_connections() {
    let env = TestEnv::new("conn-per-addr");
    let rcv = env.spawn_receiver(&env.receiver_config(
        "r",
        true,
        "max_connections = 64\nhandshake_timeout = \"60s\"\n",
    ));
    let from = std::net::Ipv4Addr::new(127, 0, 2, 9);
    let sockets: Vec<_> = (0..24).map(|_| connect_from(from, rcv.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let n_closed = sockets
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(50)))
        .count();
    assert_eq!(n_closed, 24 - 16, "16 kept, the rest closed at accept");
    // Others are unaffected.
    let health = rcv.get(&rcv.client("lab1"), "/v1/health").unwrap();
    assert_eq!(health.status, 200, "{health:#?}");
}

#[test]
fn idle_authenticated_keep_alive_connections_do_not_starve_a_real_client() {
    use std::io::{Read as _, Write as _};
    let env = TestEnv::new("conn-keepalive");
    let rcv = env.spawn_receiver(&env.receiver_config(
        "r",
        true,
        "max_connections = 64\nheader_read_timeout = \"60s\"\n",
    ));
    let roots = episode_common::tls::load_certs(rcv.ca()).unwrap();
    let (cert, key) = rcv.identity("lab2");
    let identity = (
        episode_common::tls::load_certs(cert).unwrap(),
        episode_common::tls::load_key(key).unwrap(),
    );
    let config = std::sync::Arc::new(
        episode_common::tls::client_config(Some(&roots), Some(identity)).unwrap(),
    );
    // 64 authenticated connections from four addresses, each answered once and
    // then left open and silent (keep-alive).
    let mut held = Vec::new();
    for n in 0..64u8 {
        let from = std::net::Ipv4Addr::new(127, 0, 3, 2 + n / 16);
        let tcp = connect_from(from, rcv.addr);
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut stream = rustls::StreamOwned::new(tls, tcp);
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"ok") {
            let n = stream.read(&mut buf).expect("livez answer");
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        held.push(stream);
    }
    let lab1 = rcv.client("lab1");
    let started = std::time::Instant::now();
    let health = rcv.get(&lab1, "/v1/health").unwrap();
    assert_eq!(health.status, 200, "{health:#?}");
    let put = rcv.put(&lab1, "lab1", "01KEEPALIVE", b"kept alive");
    assert_eq!(put.status, 201, "{put:#?}");
    let waited = started.elapsed();
    eprintln!("the real client's health + PUT took {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "the real client waited {waited:?}\n{}",
        rcv.process.report()
    );
}

#[test]
fn sighup_reloads_reloadable_keys_and_refuses_a_bad_config_naming_the_key() {
    let env = TestEnv::new("sighup");
    let write = |extra: &str| env.receiver_config("r", true, extra);
    let cfg = write("max_episode_bytes = \"1MiB\"\n");
    let rcv = env.spawn_receiver(&cfg);
    let lab1 = rcv.client("lab1");
    let body = vec![7u8; 2000];
    assert_eq!(rcv.put(&lab1, "lab1", "01A", &body).status, 201);
    let hangup_and_wait = |event: &str, n: usize| {
        rcv.process.signal(libc::SIGHUP);
        episode_e2e::wait_until(Duration::from_secs(5), event, || {
            rcv.process.stderr().matches(event).count() >= n
        });
        assert!(!rcv.process.stderr().is_empty());
    };
    let refusal = |key: &str| {
        let log = rcv.process.stderr();
        log.lines()
            .filter(|l| l.contains("config_reload_refused"))
            .any(|l| l.contains(key))
    };

    // A reloadable key takes effect without a restart.
    write("max_episode_bytes = \"1KiB\"\n");
    hangup_and_wait("config_reloaded", 1);
    assert_problem(&rcv.put(&lab1, "lab1", "01B", &body), 413, "too-large");

    // A bad value is refused naming its key; the running limit stays.
    write("max_episode_bytes = \"lots\"\n");
    hangup_and_wait("config_reload_refused", 1);
    assert!(refusal("max_episode_bytes"), "{}", rcv.process.report());
    assert_problem(&rcv.put(&lab1, "lab1", "01B", &body), 413, "too-large");
    assert_eq!(rcv.put(&lab1, "lab1", "01C", &body[..500]).status, 201);

    // A key that cannot change while running is refused too.
    write("max_episode_bytes = \"1MiB\"\nstore_root = \"/elsewhere\"\n");
    hangup_and_wait("config_reload_refused", 2);
    assert!(refusal("store_root"), "{}", rcv.process.report());
    assert_problem(&rcv.put(&lab1, "lab1", "01B", &body), 413, "too-large");

    // Credential files named by the new config are read: a token is now required.
    let token = env.root().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    write(&format!(
        "[auth]\nbearer_token_file = {}\n",
        episode_e2e::env::toml_str(&token)
    ));
    hangup_and_wait("config_reloaded", 2);
    assert_problem(&rcv.get(&lab1, "/v1/health").unwrap(), 401, "unauthorized");
    let with_token = lab1
        .get(format!("{}/v1/health", rcv.url))
        .header("authorization", "Bearer s3cret")
        .send()
        .unwrap();
    assert_eq!(with_token.status().as_u16(), 200);
    let mut rcv = rcv;
    assert!(!rcv.process.has_exited(), "SIGHUP never stops the receiver");
}

#[test]
fn the_watchdog_is_not_fed_while_the_index_writer_is_stuck_on_a_frozen_disk() {
    let env = TestEnv::new("watchdog-stuck");
    let disk = env.dir("disk");
    let _mount = Mount::ext4(&env.root().join("disk.img"), &disk, 16);
    let cfg = env.receiver_config(
        "r",
        true,
        &format!(
            "index_path = {}\n",
            episode_e2e::env::toml_str(&disk.join("index.jsonl"))
        ),
    );
    let notify = env.notify_socket();
    // Declared before the freeze: locals drop in reverse, so the disk thaws before
    // the receiver is killed and reaped (a process blocked on a frozen disk cannot
    // be reaped).
    let rcv = env.spawn_receiver_with(&cfg, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path())
            .env("WATCHDOG_USEC", "1000000");
    });
    let lab1 = rcv.client("lab1");
    episode_e2e::wait_until(Duration::from_secs(5), "watchdog pings", || {
        notify.count("WATCHDOG=1") >= 2
    });
    assert_eq!(rcv.put(&lab1, "lab1", "01BEFORE", b"before").status, 201);

    let frozen = Freeze::new(&disk);
    let put = std::thread::spawn({
        let (client, url) = (lab1.clone(), rcv.episode_url("lab1", "01DURING"));
        move || {
            client
                .put(url)
                .header("repr-digest", Sha256::of(b"during").to_field())
                .header("x-code-commit", "3f2c1e9a")
                .body(b"during".to_vec())
                .send()
                .map(|r| r.status().as_u16())
        }
    });
    // The publish blocks in the index append; within half the period (0.5 s) the
    // committer counts as stuck and the pings stop.
    std::thread::sleep(Duration::from_millis(1000));
    let stuck_from = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let pings_while_stuck = notify
        .messages()
        .into_iter()
        .filter(|(t, m)| m.contains("WATCHDOG=1") && *t >= stuck_from)
        .count();
    assert_eq!(
        pings_while_stuck,
        0,
        "pinged while the index writer was stuck: {:?}",
        notify.messages()
    );
    assert!(
        rcv.process.stderr().contains("watchdog_withheld"),
        "{}",
        rcv.process.report()
    );

    drop(frozen);
    assert_eq!(
        put.join().unwrap().unwrap(),
        201,
        "stored once the disk thaws"
    );
    let thawed = std::time::Instant::now();
    episode_e2e::wait_until(Duration::from_secs(3), "pings again", || {
        notify
            .messages()
            .iter()
            .any(|(t, m)| m.contains("WATCHDOG=1") && *t >= thawed)
    });
}
