//! The harness itself: a child it starts dies with the test process, so an
//! interrupted `cargo test` leaves no daemon behind.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use episode_e2e::{Proc, TestEnv, die_with_parent, wait_until};

const HELPER: &str = "E2E_HARNESS_HELPER";

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
    // The helper is this test binary running `harness_helper`: it starts a child
    // through `Proc::spawn`, as every test does, prints its pid and waits.
    let exe = std::env::current_exe().unwrap();
    let mut helper = Command::new(exe);
    helper
        .args([
            "--exact",
            "harness::harness_helper",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut helper = die_with_parent(&mut helper).spawn().unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let mut root = None;
    let pid: i32 = loop {
        let line = lines
            .next()
            .expect("the helper printed no child pid")
            .unwrap();
        if let Some(dir) = line.strip_prefix("env root ") {
            root = Some(std::path::PathBuf::from(dir.trim()));
        }
        if let Some(pid) = line.strip_prefix("child pid ") {
            break pid.trim().parse().unwrap();
        }
    };
    assert!(!gone(pid), "the child runs while the helper does");
    helper.kill().unwrap(); // SIGKILL: no destructor, no cleanup in the helper
    helper.wait().unwrap();
    wait_until(
        Duration::from_secs(5),
        "the helper's child to die with it",
        || gone(pid),
    );
    // The helper died before its TestEnv could remove its temp tree.
    if let Some(root) = root {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Not a test of its own: the helper process of the test above.
#[test]
#[ignore = "run by a_child_of_the_harness_dies_when_the_test_process_is_killed"]
fn harness_helper() {
    assert!(
        std::env::var_os(HELPER).is_some(),
        "harness_helper only runs as the helper of a_child_of_the_harness_dies_when_the_test_process_is_killed"
    );
    let env = TestEnv::new("harness-helper");
    println!("env root {}", env.root().display());
    let child = Proc::spawn(Command::new("sleep").arg("30"), &env, "sleeper");
    println!("child pid {}", child.pid());
    std::thread::sleep(Duration::from_secs(30));
}
