//! The systemd units as shipped: `systemd-analyze verify` must accept them, and they
//! must say what the specs promise (Type=notify, the watchdog, exit 78 not
//! restarted, hardening), and `systemd-analyze security` must rate each at an
//! exposure of 1.5 or less.

use std::path::PathBuf;
use std::process::Command;

use episode_e2e::{TestEnv, bin};

fn unit(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze is missing: install it with `apt-get install -y systemd`; .ci/run does"
    );
    let env = TestEnv::new("units");
    let dir = env.dir("units");
    for name in ["episode-shipper", "episode-receiver"] {
        // Verify against the binaries just built (verify checks ExecStart exists).
        let text = unit(&format!("{name}.service"))
            .replace(&format!("/usr/bin/{name}"), bin(name).to_str().unwrap());
        std::fs::write(dir.join(format!("{name}.service")), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("episode-shipper.service"))
        .arg(dir.join("episode-receiver.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let relevant: Vec<&str> = stderr.lines().filter(|l| l.contains("episode-")).collect();
    assert!(
        relevant.is_empty(),
        "warnings about our units:\n{}",
        relevant.join("\n")
    );
}

#[test]
fn the_units_say_what_the_specs_promise() {
    let shipper = unit("episode-shipper.service");
    for line in [
        "Type=notify",
        "WatchdogSec=180",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "StateDirectory=episode-shipper",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/episode-shipper",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ] {
        assert!(
            shipper.lines().any(|l| l.trim() == line),
            "episode-shipper.service lacks {line}"
        );
    }
    assert_check_never_fails_the_start("episode-shipper.service", &shipper);
    assert!(
        shipper
            .lines()
            .any(|l| l.trim() == "ExecReload=kill -HUP $MAINPID"),
        "episode-shipper.service lacks ExecReload (shipper.md: SIGHUP reloads)"
    );
    let receiver = unit("episode-receiver.service");
    assert_check_never_fails_the_start("episode-receiver.service", &receiver);
    for line in [
        "Type=notify",
        "WatchdogSec=60",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=78",
        "StateDirectory=episode-receiver",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "User=episode-receiver",
    ] {
        assert!(
            receiver.lines().any(|l| l.trim() == line),
            "episode-receiver.service lacks {line}"
        );
    }
}

/// `check` runs before the start, but its failure must not fail the start:
/// RestartPreventExitStatus= never applies to ExecStartPre (systemd #11868), so a
/// failing check would restart the unit forever; `run` exits 78 itself.
fn assert_check_never_fails_the_start(name: &str, text: &str) {
    let pre: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ExecStartPre="))
        .collect();
    assert!(
        pre.iter().any(|l| l.trim_end().ends_with(" check")),
        "{name} runs no check before the start"
    );
    assert!(
        pre.iter().all(|l| {
            // The prefixes before the path (`-`, `@`, `+`, …), in any order.
            let prefixes = l["ExecStartPre=".len()..].split('/').next().unwrap_or("");
            prefixes.contains('-')
        }),
        "{name}: an ExecStartPre whose failure fails the start restarts a bad config forever: {pre:?}"
    );
}

#[test]
fn both_units_have_an_exposure_of_at_most_1_5() {
    let env = TestEnv::new("units-security");
    let dir = env.dir("units");
    for name in ["episode-shipper.service", "episode-receiver.service"] {
        let path = dir.join(name);
        std::fs::write(&path, unit(name)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("systemd-analyze: {e} (install it: apt-get install systemd)")
            });
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let exposure: f64 = stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {name}:\n{stdout}\n{stderr}"));
        assert!(
            exposure <= 1.5,
            "{name}: exposure {exposure} > 1.5\n{stdout}"
        );
    }
}
