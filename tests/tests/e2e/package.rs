//! The Debian packages as an operator gets them: built by cargo-deb from the debug
//! binaries of the workspace build (stripped), installed into a scratch root with a
//! real dpkg, then checked: binaries, units, example configs, man pages,
//! completions, an upgrade over an edited config, removal and purge.
//!
//! Building the packages takes most of a minute on a small machine, so the test is
//! `#[ignore]`d in the suite and run by `.ci/run` after it (`--run-ignored only`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use episode_e2e::{TestEnv, bin};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{}", show(what, &out));
    out
}

/// Fails (never skips) when a tool is missing, naming how to install it.
fn need(program: &str, args: &[&str], install: &str) {
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "`{program}` is missing: install it with `{install}`");
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo deb` of one package at `version`, from the debug binaries; returns the .deb.
fn build_deb(package: &str, version: &str, out_dir: &Path) -> PathBuf {
    let out = ok(
        &format!("cargo deb -p {package}"),
        Command::new(cargo())
            .current_dir(workspace())
            .args([
                "deb",
                "-p",
                package,
                "--no-build",
                "--profile",
                "dev",
                "--fast",
                "--strip",
            ])
            .args(["--deb-version", version, "-o"])
            .arg(out_dir),
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    let deb = PathBuf::from(path);
    assert!(deb.is_file(), "{}", show("cargo deb printed no .deb", &out));
    deb
}

/// A scratch root with an empty dpkg database, and stand-ins for `systemctl` and
/// `systemd-sysusers` first on PATH that record any call (there must be none here).
struct Root {
    dir: PathBuf,
    stubs: PathBuf,
    calls: PathBuf,
}

impl Root {
    fn new(env: &TestEnv) -> Self {
        let dir = env.dir("root");
        for sub in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(dir.join("var/lib/dpkg").join(sub)).unwrap();
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        std::fs::write(dir.join("var/lib/dpkg/available"), "").unwrap();
        let stubs = env.dir("stubs");
        let calls = env.root().join("maintainer-script-calls");
        for tool in ["systemctl", "systemd-sysusers"] {
            let path = stubs.join(tool);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n", calls.display()),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { dir, stubs, calls }
    }

    fn dpkg(&self, args: &[&std::ffi::OsStr]) -> Output {
        let path = format!(
            "{}:{}",
            self.stubs.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("dpkg")
            .arg(format!("--root={}", self.dir.display()))
            .args([
                "--force-not-root",
                "--force-script-chrootless",
                "--force-depends",
            ])
            .args(args)
            .env("PATH", path)
            .output()
            .expect("run dpkg")
    }

    fn install(&self, debs: &[&Path]) {
        let mut args: Vec<&std::ffi::OsStr> = vec!["-i".as_ref()];
        args.extend(debs.iter().map(|d| d.as_os_str()));
        let out = self.dpkg(&args);
        assert!(out.status.success(), "{}", show("dpkg -i", &out));
    }

    /// `(version, status)` of an installed package, as dpkg records it.
    fn state(&self, package: &str) -> (String, String) {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.dir.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Version}|${Status}", package])
            .output()
            .expect("run dpkg-query");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (version, status) = text.split_once('|').unwrap_or(("", ""));
        (version.to_owned(), status.to_owned())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

fn readelf_sections(binary: &Path) -> String {
    let out = ok(
        "readelf -S",
        Command::new("readelf").args(["-S", "--wide"]).arg(binary),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "builds the .debs (most of a minute): run by .ci/run after the suite"]
fn the_packages_install_upgrade_and_remove_in_a_scratch_root() {
    need(
        &cargo(),
        &["deb", "--version"],
        "cargo install cargo-deb --locked --version 3.8.0",
    );
    need("dpkg", &["--version"], "apt-get install -y dpkg");
    need("dpkg-query", &["--version"], "apt-get install -y dpkg");
    need("man", &["--version"], "apt-get install -y man-db");
    need(
        "systemd-analyze",
        &["--version"],
        "apt-get install -y systemd",
    );
    need("readelf", &["--version"], "apt-get install -y binutils");
    let env = TestEnv::new("package");

    // Man pages and completions from the Cli definitions, then the packages.
    ok("episode-pkgdocs", &mut Command::new(bin("episode-pkgdocs")));
    let debs = env.dir("debs");
    let shipper_1 = build_deb("episode-shipper", "1.0.0-1", &debs.join("1"));
    let receiver_1 = build_deb("episode-receiver", "1.0.0-1", &debs.join("1"));
    let shipper_2 = build_deb("episode-shipper", "1.0.1-1", &debs.join("2"));

    let root = Root::new(&env);
    root.install(&[&shipper_1, &receiver_1]);
    for package in ["episode-shipper", "episode-receiver"] {
        assert_eq!(
            root.state(package),
            ("1.0.0-1".into(), "install ok installed".into())
        );
    }
    assert!(
        !root.calls.exists(),
        "maintainer scripts called systemd outside a running systemd: {}",
        std::fs::read_to_string(&root.calls).unwrap_or_default()
    );

    // The binaries run, stripped of debug line tables.
    for name in ["episode-shipper", "episode-receiver", "episode-doctor"] {
        let binary = root.path(&format!("usr/bin/{name}"));
        let out = ok(
            &format!("{name} --version"),
            Command::new(&binary).arg("--version"),
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("{name} ")),
            "{}",
            show(name, &out)
        );
        let sections = readelf_sections(&binary);
        assert!(
            !sections.contains(".debug_line") && !sections.contains(".debug_info"),
            "{name} is not stripped:\n{sections}"
        );
    }

    // The units as installed pass systemd-analyze verify (ExecStart pointed at the
    // installed binaries, which are not on this machine's /usr/bin).
    let units = env.dir("units");
    for name in ["episode-shipper", "episode-receiver"] {
        let text =
            std::fs::read_to_string(root.path(&format!("usr/lib/systemd/system/{name}.service")))
                .unwrap();
        assert!(
            text.contains(&format!("ExecStart=/usr/bin/{name} ")),
            "{name}.service runs /usr/bin/{name}"
        );
        let text = text.replace(
            "/usr/bin/episode-",
            &format!("{}/episode-", root.path("usr/bin").display()),
        );
        std::fs::write(units.join(format!("{name}.service")), text).unwrap();
        let sysusers =
            std::fs::read_to_string(root.path(&format!("usr/lib/sysusers.d/{name}.conf"))).unwrap();
        assert!(
            sysusers
                .lines()
                .any(|l| l.starts_with(&format!("u {name} "))),
            "{sysusers}"
        );
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("episode-shipper.service"))
        .arg(units.join("episode-receiver.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}",
        show("systemd-analyze verify", &out)
    );
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("episode-")).collect();
    assert!(
        ours.is_empty(),
        "warnings about our units:\n{}",
        ours.join("\n")
    );

    // Every man page renders; the shipper's answers the first questions.
    let man_dir = root.path("usr/share/man/man1");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let mut generated: Vec<String> = std::fs::read_dir(workspace().join("packaging/generated/man"))
        .unwrap()
        .map(|e| format!("{}.gz", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    generated.sort();
    let installed: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        installed, generated,
        "every generated page is installed, compressed"
    );
    for page in [
        "episode-shipper.1.gz",
        "episode-shipper-requeue.1.gz",
        "episode-doctor.1.gz",
        "episode-receiver-index.1.gz",
    ] {
        assert!(
            installed.iter().any(|p| p == page),
            "{page} missing: {installed:?}"
        );
    }
    for page in &pages {
        let out = ok(
            "man -l",
            Command::new("man")
                .arg("-l")
                .arg(page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_FORMATTING", ""),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let stem = page
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".1.gz");
        assert!(
            text.contains("NAME") && text.contains(stem),
            "{}",
            show(stem, &out)
        );
        assert!(out.stderr.is_empty(), "{}", show(stem, &out));
    }
    let out = ok(
        "man -l",
        Command::new("man")
            .arg("-l")
            .arg(man_dir.join("episode-shipper.1.gz"))
            .env("MANPAGER", "cat"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "GETTING STARTED",
        "/etc/episode-shipper/shipper.toml",
        "systemctl enable --now episode-shipper",
        "78 bad configuration",
    ] {
        assert!(
            text.contains(expected),
            "man episode-shipper lacks {expected:?}:\n{text}"
        );
    }

    // Completions for three shells; bash's parses.
    for name in ["episode-shipper", "episode-receiver", "episode-doctor"] {
        let bash = root.path(&format!("usr/share/bash-completion/completions/{name}"));
        ok("bash -n", Command::new("bash").arg("-n").arg(&bash));
        assert!(
            root.path(&format!("usr/share/zsh/vendor-completions/_{name}"))
                .is_file()
        );
        assert!(
            root.path(&format!("usr/share/fish/vendor_completions.d/{name}.fish"))
                .is_file()
        );
    }

    check_example_configs(&env, &root);

    // An upgrade keeps an edited config and replaces the binary.
    let conf = root.path("etc/episode-shipper/shipper.toml");
    let edited = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("host_id = \"lab1\"", "host_id = \"lab7\"");
    assert!(edited.contains("host_id = \"lab7\""));
    std::fs::write(&conf, &edited).unwrap();
    root.install(&[&shipper_2]);
    assert_eq!(
        root.state("episode-shipper"),
        ("1.0.1-1".into(), "install ok installed".into())
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        edited,
        "the upgrade kept the edit"
    );
    let leftovers: Vec<_> = std::fs::read_dir(conf.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["shipper.toml"],
        "no .dpkg-new/.dpkg-dist beside it"
    );
    assert!(
        !root.calls.exists(),
        "an upgrade outside systemd calls nothing"
    );

    // Remove keeps the config; purge takes it.
    let out = root.dpkg(&["-r".as_ref(), "episode-shipper".as_ref()]);
    assert!(out.status.success(), "{}", show("dpkg -r", &out));
    assert!(!root.path("usr/bin/episode-shipper").exists());
    assert!(!root.path("usr/bin/episode-doctor").exists());
    assert_eq!(root.state("episode-shipper").1, "deinstall ok config-files");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        edited,
        "remove keeps the config"
    );
    let out = root.dpkg(&[
        "--purge".as_ref(),
        "episode-shipper".as_ref(),
        "episode-receiver".as_ref(),
    ]);
    assert!(out.status.success(), "{}", show("dpkg --purge", &out));
    assert!(!conf.exists() && !root.path("etc/episode-receiver/receiver.toml").exists());
    assert!(!root.path("usr/bin/episode-receiver").exists());
    assert!(
        !root.calls.exists(),
        "removal outside systemd calls nothing"
    );
}

/// The installed example configs pass `check`: as installed, apart from the paths
/// that don't exist on this machine; with those paths pointed at real files, clean.
fn check_example_configs(env: &TestEnv, root: &Root) {
    let shipper = root.path("usr/bin/episode-shipper");
    let receiver = root.path("usr/bin/episode-receiver");
    let shipper_conf = root.path("etc/episode-shipper/shipper.toml");
    let receiver_conf = root.path("etc/episode-receiver/receiver.toml");
    let check = |binary: &Path, conf: &Path| {
        let out = Command::new(binary)
            .arg("--config")
            .arg(conf)
            .args(["check", "--json"])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}\n{}", show("check --json", &out)));
        (out, report)
    };

    // As installed: the shipper's only notes are the certificates not issued yet;
    // the receiver stops at its missing server certificate, naming it.
    let (out, report) = check(&shipper, &shipper_conf);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("shipper check", &out)
    );
    for line in report["lines"].as_array().unwrap() {
        if line["level"] != "info" {
            assert!(
                line["message"].as_str().unwrap().contains("does not exist"),
                "{report}"
            );
        }
    }
    let (out, report) = check(&receiver, &receiver_conf);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        out.status.code() == Some(78)
            && error.contains("/etc/episode-receiver/server.pem")
            && error.contains("No such file"),
        "{}",
        show("receiver check", &out)
    );

    // With the paths pointed at this test's PKI and directories: clean.
    let etc = env.dir("etc");
    let pki = &env.pki;
    for (from, to) in [
        (pki.ca.clone(), "ca.pem"),
        (pki.client_cert("lab1"), "client.pem"),
        (pki.client_key("lab1"), "client.key"),
        (pki.server_cert.clone(), "server.pem"),
        (pki.server_key.clone(), "server.key"),
        (pki.ca.clone(), "clients-ca.pem"),
    ] {
        std::fs::copy(&from, etc.join(to)).unwrap();
    }
    let var = env.dir("var");
    let relocate = |conf: &Path, name: &str| {
        let text = std::fs::read_to_string(conf)
            .unwrap()
            .replace(&format!("/etc/{name}/"), &format!("{}/", etc.display()))
            .replace(
                &format!("/var/lib/{name}"),
                &var.join(name).display().to_string(),
            );
        let path = env.root().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    std::fs::create_dir_all(var.join("episode-receiver")).unwrap();
    let (out, report) = check(&shipper, &relocate(&shipper_conf, "episode-shipper"));
    assert_eq!(
        (out.status.code(), report["ok"].as_bool()),
        (Some(0), Some(true)),
        "{}",
        show("shipper check", &out)
    );
    assert!(
        report["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["level"] == "info"),
        "{report}"
    );
    let (out, report) = check(&receiver, &relocate(&receiver_conf, "episode-receiver"));
    assert_eq!(
        (out.status.code(), report["ok"].as_bool()),
        (Some(0), Some(true)),
        "{}",
        show("receiver check", &out)
    );
}
