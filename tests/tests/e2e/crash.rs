//! Crash safety and lifecycle: kill either process anywhere, cut or stall the
//! network, restart in a loop, fill the receiver's disk; every scenario ends with
//! `assert_all_stored_once` (every episode stored exactly once, byte-identical,
//! index rows unique, nothing quarantined, no orphan or partial, incoming empty after
//! a restart).
//!
//! Randomised scenarios print their seed (`E2E_SEED=<n>` replays the sizes, the
//! aims and the delays; the scheduler's timing stays free) and how many kills they
//! made. The CI variants take a few seconds each. The long variants (`torture_*`:
//! several hundred episodes and kills, and the disk-pressure scenario waiting out
//! the receiver's real `Retry-After` instead of expiring the shipper's persisted
//! wait) are `#[ignore]`d, so the README's test command leaves them out; `.ci/run`
//! runs them on purpose, with their time budget, as the nextest profile `torture`
//! (`cargo nextest run --workspace --profile torture --run-ignored only`).

use std::time::{Duration, Instant};

use episode_common::Event;
use episode_e2e::{
    FaultProxy, Host, Mode, Originals, Proc, Receiver, Reply, StubServer, TestEnv,
    assert_all_stored_once, assert_consistent, assert_consistent_while_shipping, episodes, logs,
    noise, seed, wait_until, write_episode,
};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// Fast retries, so a scenario spends its time on faults, not on waiting.
const FAST_RETRY: &str = "[retry]\ninitial_backoff = \"200ms\"\nmax_backoff = \"1s\"\n";

/// How big a kill scenario is.
#[derive(Debug, Clone, Copy)]
struct Plan {
    episodes: usize,
    kills: usize,
    /// Share (in %) of large episodes: packed through `outbox/….partial`.
    large_percent: u32,
}

impl Plan {
    const CI: Plan = Plan {
        episodes: 50,
        kills: 14,
        large_percent: 5,
    };
    const TORTURE: Plan = Plan {
        episodes: 400,
        kills: 200,
        large_percent: 8,
    };
}

/// Writes `n` finished episodes of mixed sizes, ids one second apart from
/// `first_ms`: mostly small (a few KB of JSONL), many medium (a camera blob of
/// 256 KB–2 MB that does not compress, so uploads take a while), and
/// `large_percent` % larger than the shipper's in-memory limit (8 MiB raw), packed
/// through `outbox/<id>.tar.zst.partial`.
fn write_batch(host: &Host, n: usize, first_ms: u64, large_percent: u32, rng: &mut StdRng) {
    for i in 0..n {
        let ms = first_ms + i as u64 * 1000;
        let id = episodes::ulid(ms, rng);
        let roll = rng.random_range(0..100);
        let blob_bytes = if roll < large_percent {
            rng.random_range(17 << 19..10 << 20)
        } else if roll < 35 {
            rng.random_range(256 << 10..2 << 20)
        } else {
            0
        };
        let events_bytes = rng.random_range(512..4096);
        let telemetry_bytes = rng.random_range(1 << 10..16 << 10);
        let events = episodes::jsonl(rng, events_bytes);
        let telemetry = episodes::jsonl(rng, telemetry_bytes);
        let blob = noise(blob_bytes, rng.random());
        let mut files = vec![
            ("events.jsonl", events.as_slice()),
            ("telemetry-proc.jsonl", telemetry.as_slice()),
        ];
        if blob_bytes > 0 {
            files.push(("camera/front.bin", blob.as_slice()));
        }
        let meta = json!({
            "episode_id": id,
            "code_commit": format!("{:08x}", rng.random::<u32>()),
            "started_at": ms / 1000,
        });
        write_episode(&host.data_root, &id, &files, Some(meta), true);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A backlog of `n` episodes recorded over the last minutes, oldest first.
fn backlog(host: &Host, n: usize, large_percent: u32, rng: &mut StdRng) -> Originals {
    let first_ms = now_ms() - 60_000 - n as u64 * 1000;
    write_batch(host, n, first_ms, large_percent, rng);
    Originals::snapshot(host)
}

/// Where a kill was aimed: at a sign of the phase seen from outside (a `.partial`
/// in the outbox while a large episode is packed, a temp file in the receiver's
/// incoming dir while a body is on the wire, a new 2xx `ship_result` line just
/// before the episode is retired), or at a plain random instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    Pack,
    Upload,
    Retire,
    Anywhere,
}

impl Aim {
    fn pick(rng: &mut StdRng) -> Self {
        match rng.random_range(0..100) {
            0..20 => Aim::Pack,
            20..50 => Aim::Upload,
            50..75 => Aim::Retire,
            _ => Aim::Anywhere,
        }
    }

    /// Whether the sign of this phase is visible now.
    fn seen(self, host: &Host, receiver: &Receiver, shipper: &Proc) -> bool {
        match self {
            Aim::Pack => host
                .list(&host.outbox())
                .iter()
                .any(|n| n.ends_with(".partial")),
            Aim::Upload => !receiver.incoming_files().is_empty(),
            Aim::Retire => logs::events(&shipper.stderr(), Event::ShipResult)
                .iter()
                .any(|l| l["outcome"] == "shipped" || l["outcome"] == "already_present"),
            Aim::Anywhere => false,
        }
    }
}

/// How many kills landed where.
#[derive(Debug, Default)]
struct Kills {
    pack: usize,
    upload: usize,
    retire: usize,
    /// At a random instant with work pending (start-up, small packs in memory,
    /// between requests, or a phase whose sign was not caught).
    anywhere: usize,
    /// With nothing left to ship.
    idle: usize,
}

impl Kills {
    fn total(&self) -> usize {
        self.pack + self.upload + self.retire + self.anywhere + self.idle
    }

    fn with_work(&self) -> usize {
        self.total() - self.idle
    }
}

impl std::fmt::Display for Kills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kills (pack {}, upload {}, retire {}, anywhere {}, idle {})",
            self.total(),
            self.pack,
            self.upload,
            self.retire,
            self.anywhere,
            self.idle
        )
    }
}

/// Starts the daemon and SIGKILLs it at an instant chosen by `rng`: when the sign
/// of a random phase shows (then after a few random milliseconds more), or after a
/// random 300–1500 ms when it does not show by then; a kill aimed "anywhere" after
/// a random 20–300 ms. Counted from READY: start-up alone takes longer than that in
/// a debug build, and counted from the spawn most kills landed before the first
/// pass. Half the kills aimed "anywhere" land during start-up and recovery instead.
/// Records where it landed.
fn spawn_and_kill(
    env: &TestEnv,
    host: &Host,
    receiver: &Receiver,
    rng: &mut StdRng,
    kills: &mut Kills,
) {
    let aim = Aim::pick(rng);
    let during_start_up = aim == Aim::Anywhere && rng.random_bool(0.5);
    // A phase's sign may take a while to show (the crash-loop guard's wait, the
    // small episodes before a large one): an aimed kill waits longer for it.
    let window = Duration::from_millis(match aim {
        Aim::Anywhere => rng.random_range(20..=300),
        _ => rng.random_range(300..=1500),
    });
    let extra = Duration::from_millis(match aim {
        Aim::Retire => rng.random_range(0..=2),
        _ => rng.random_range(0..=20),
    });
    let notify = env.notify_socket();
    let shipper = env.spawn_shipper(host, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path());
    });
    if !during_start_up {
        let ready_by = Instant::now() + Duration::from_secs(10);
        while notify.first("READY=1").is_none() && Instant::now() < ready_by {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let deadline = Instant::now() + window;
    let mut seen = false;
    while Instant::now() < deadline {
        if aim.seen(host, receiver, &shipper) {
            seen = true;
            std::thread::sleep(extra);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let pending = !host.list(&host.episodes()).is_empty();
    drop(shipper); // SIGKILL
    match (pending, seen, aim) {
        (false, _, _) => kills.idle += 1,
        (true, true, Aim::Pack) => kills.pack += 1,
        (true, true, Aim::Upload) => kills.upload += 1,
        (true, true, Aim::Retire) => kills.retire += 1,
        _ => kills.anywhere += 1,
    }
}

/// Runs the daemon until `host` has nothing pending, then stops it with SIGTERM.
fn run_to_completion(env: &TestEnv, host: &Host, timeout: Duration) {
    let notify = env.notify_socket();
    let mut daemon = env.spawn_shipper(host, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path());
    });
    notify.wait_for(Duration::from_secs(5), "READY=1");
    wait_until(timeout, "the shipper to ship everything", || {
        host.list(&host.episodes()).is_empty()
    });
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("the shipper exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.report());
}

fn shipper_killed_at_random_instants(name: &str, plan: Plan) {
    let started = Instant::now();
    let seed = seed("E2E_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new(name);
    let mut receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    // A small memory budget: the large episodes go through outbox/ (.partial,
    // fsync, rename), so kills land in that path too. Retries faster still: after a
    // kill mid-pass the crash-loop guard waits a backoff before the next upload, and
    // at FAST_RETRY's pace most kills would land in that wait instead of in a pack,
    // an upload or a retire. (The guard's pacing is tested on its own.)
    let extra = format!(
        "memory_budget = \"4MiB\"\n{}",
        "[retry]\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"\n"
    );
    let host = env.shipper_host("lab1", "lab1", &receiver.url, &extra);
    let mut originals = backlog(&host, plan.episodes, plan.large_percent, &mut rng);
    let mut kills = Kills::default();
    while kills.with_work() < plan.kills {
        spawn_and_kill(&env, &host, &receiver, &mut rng, &mut kills);
        let placement = assert_consistent(&host, &originals);
        if placement.pending == 0 {
            // The recorder goes on recording while its shipper crash-loops.
            write_batch(&host, 10, now_ms(), plan.large_percent, &mut rng);
            originals.add_new(&host);
        }
    }
    let placement = assert_consistent(&host, &originals);
    eprintln!(
        "{name}: {kills} over {} episodes; {} shipped while being killed",
        originals.len(),
        placement.shipped
    );
    run_to_completion(&env, &host, Duration::from_secs(60));
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
    eprintln!("{name}: passed in {:?}", started.elapsed());
}

#[test]
fn a_shipper_killed_at_random_instants_loses_and_duplicates_nothing() {
    shipper_killed_at_random_instants("kill-shipper", Plan::CI);
}

#[test]
#[ignore = "torture: run by `.ci/run` (nextest profile `torture`)"]
fn torture_a_shipper_killed_at_random_instants() {
    shipper_killed_at_random_instants("torture-shipper", Plan::TORTURE);
}

/// A `[receiver]` table for `url` with the test PKI, and `idle_timeout`.
fn receiver_table(env: &TestEnv, url: &str, idle_timeout: &str) -> String {
    format!(
        "[receiver]\nurl = {url:?}\nidle_timeout = {idle_timeout:?}\nconnect_timeout = \"2s\"\nca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        episode_e2e::env::toml_str(&env.pki.ca),
        episode_e2e::env::toml_str(&env.pki.client_cert("lab1")),
        episode_e2e::env::toml_str(&env.pki.client_key("lab1")),
    )
}

/// Restarts the receiver behind `proxy` (a new port); checks that its start-up
/// emptied `incoming_root` before anything could reach it.
fn restart_behind(env: &TestEnv, receiver: &mut Receiver, proxy: &FaultProxy) {
    episode_e2e::restart_receiver(env, receiver);
    assert!(
        receiver.incoming_files().is_empty(),
        "incoming not emptied at start-up: {:?}",
        receiver.incoming_files()
    );
    proxy.set_upstream(receiver.addr);
}

fn receiver_killed_mid_upload(name: &str, n_episodes: usize, n_kills: usize) {
    let started = Instant::now();
    let seed = seed("E2E_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new(name);
    let mut receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let proxy = FaultProxy::new(receiver.addr);
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), FAST_RETRY);
    let originals = backlog(&host, n_episodes, 5, &mut rng);
    let mut shipper = env.spawn_shipper(&host, |_| {});
    let mut kills = 0;
    while kills < n_kills && !host.list(&host.episodes()).is_empty() {
        // Wait for a body on the wire: bytes moving through the proxy and a temp file
        // in incoming; then a few random milliseconds more.
        let before = proxy.bytes_up();
        let deadline = Instant::now() + Duration::from_secs(10);
        let uploading = || proxy.bytes_up() > before && !receiver.incoming_files().is_empty();
        while Instant::now() < deadline && !uploading() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=30)));
        receiver.process.kill();
        kills += 1;
        assert!(!shipper.has_exited(), "{}", shipper.report());
        assert_consistent_while_shipping(&host, &originals);
        // Down for a while: the shipper meets refused connections and backs off.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=300)));
        restart_behind(&env, &mut receiver, &proxy);
    }
    eprintln!(
        "{name}: {kills} receiver kills mid-upload over {} episodes",
        originals.len()
    );
    assert!(kills >= n_kills, "the backlog ran out after {kills} kills");
    wait_until(
        Duration::from_secs(30),
        "the shipper to ship everything",
        || host.list(&host.episodes()).is_empty(),
    );
    stop(&mut shipper);
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
    eprintln!("{name}: passed in {:?}", started.elapsed());
}

/// `shutdown_grace` of the harness's shipper configs and of `sigterm_stops_the_receiver…`.
const GRACE: Duration = Duration::from_secs(2);

/// SIGTERM, then exit 0 within the grace (and a margin for start-up and exit).
fn stop(process: &mut Proc) {
    let asked = Instant::now();
    process.signal(libc::SIGTERM);
    let status = process
        .wait_exit(GRACE + Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no exit within the grace\n{}", process.report()));
    assert_eq!(status.code(), Some(0), "{}", process.report());
    assert!(asked.elapsed() <= GRACE + Duration::from_secs(1));
}

#[test]
fn a_receiver_killed_mid_upload_loses_and_duplicates_nothing() {
    receiver_killed_mid_upload("kill-receiver", 40, 4);
}

#[test]
#[ignore = "torture: run by `.ci/run` (nextest profile `torture`)"]
fn torture_a_receiver_killed_mid_upload() {
    receiver_killed_mid_upload("torture-receiver", 200, 60);
}

#[test]
fn a_connection_cut_mid_body_is_retried() {
    let env = TestEnv::new("cut-mid-body");
    let mut receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let proxy = FaultProxy::new(receiver.addr);
    // Every connection is cut 256 KiB in: inside the body of a 2 MiB archive.
    proxy.set_mode(Mode::CutAfter(256 << 10));
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), FAST_RETRY);
    let blob = noise(2 << 20, 1);
    write_episode(
        &host.data_root,
        "01CUT",
        &[("camera.bin", blob.as_slice())],
        Some(json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600})),
        true,
    );
    let originals = Originals::snapshot(&host);
    let mut shipper = env.spawn_shipper(&host, |_| {});
    wait_until(Duration::from_secs(8), "three cut attempts", || {
        proxy.connections() >= 3
    });
    assert!(receiver.stored("lab1", "01CUT").is_none());
    assert!(receiver.index_rows().is_empty());
    assert_consistent(&host, &originals);
    assert_eq!(host.list(&host.episodes()), ["01CUT"]);
    let state = host.retry_state();
    assert_eq!(
        state["backoff"]["last_status"], 0,
        "a cut is a connection-level failure: {state}"
    );
    wait_until(
        Duration::from_secs(5),
        "the receiver to drop the cut bodies",
        || receiver.incoming_files().is_empty(),
    );
    proxy.set_mode(Mode::Pass);
    wait_until(Duration::from_secs(8), "the retry to ship it", || {
        host.list(&host.shipped()) == ["01CUT"]
    });
    stop(&mut shipper);
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
}

#[test]
fn a_stalled_upload_stops_the_heartbeat_and_is_retried() {
    const PERIOD: Duration = Duration::from_secs(1);
    let env = TestEnv::new("stall");
    let mut receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let proxy = FaultProxy::new(receiver.addr);
    proxy.set_mode(Mode::StallAfter(1 << 20));
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &proxy.url(),
        &format!("{}{FAST_RETRY}", receiver_table(&env, &proxy.url(), "3s")),
    );
    // Larger than what the socket buffers between shipper and proxy can absorb.
    let blob = noise(12 << 20, 2);
    write_episode(
        &host.data_root,
        "01STALL",
        &[("camera.bin", blob.as_slice())],
        Some(json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600})),
        true,
    );
    let originals = Originals::snapshot(&host);
    let notify = env.notify_socket();
    let mut shipper = env.spawn_shipper(&host, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path())
            .env("WATCHDOG_USEC", PERIOD.as_micros().to_string());
    });
    notify.wait_for(Duration::from_secs(5), "READY=1");
    wait_until(Duration::from_secs(8), "the upload to stall", || {
        proxy.bytes_up() >= 1 << 20
    });
    let stalled_at = Instant::now();
    wait_until(Duration::from_secs(8), "the stall to be detected", || {
        host.retry_state()["backoff"]["failures"].as_u64() >= Some(1)
    });
    let detected_at = Instant::now();
    proxy.set_mode(Mode::Pass);
    let heartbeats = |from: Instant, to: Instant| -> Vec<Instant> {
        notify
            .messages()
            .into_iter()
            .filter(|(t, m)| m.contains("WATCHDOG=1") && *t >= from && *t <= to)
            .map(|(t, _)| t)
            .collect()
    };
    let mut marks = vec![stalled_at];
    marks.extend(heartbeats(stalled_at, detected_at));
    marks.push(detected_at);
    let longest = marks.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!("stall: no heartbeat for {longest:?} while stalled");
    assert!(
        longest > PERIOD,
        "the heartbeat went on while nothing moved (longest gap {longest:?}): {:?}",
        notify.messages()
    );
    assert!(
        host.retry_state()["backoff"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("idle_timeout")),
        "{}",
        host.retry_state()
    );
    wait_until(Duration::from_secs(10), "the retry to ship it", || {
        host.list(&host.shipped()) == ["01STALL"]
    });
    // The heartbeat is back: regular, well within the period.
    let shipped_at = Instant::now();
    std::thread::sleep(2 * PERIOD);
    let mut marks = vec![shipped_at];
    marks.extend(heartbeats(shipped_at, Instant::now()));
    assert!(marks.len() >= 4, "heartbeats did not resume: {marks:?}");
    let longest = marks.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(longest < PERIOD, "longest gap after recovery {longest:?}");
    stop(&mut shipper);
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
}

#[test]
fn a_receiver_restarted_while_the_shipper_runs_is_recovered_from_without_help() {
    let seed = seed("E2E_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new("receiver-restart");
    let mut receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let proxy = FaultProxy::new(receiver.addr);
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), FAST_RETRY);
    let originals = backlog(&host, 40, 5, &mut rng);
    let mut shipper = env.spawn_shipper(&host, |_| {});
    wait_until(Duration::from_secs(10), "a few episodes to ship", || {
        host.list(&host.shipped()).len() >= 5
    });
    // A deploy: the receiver stops cleanly and is down for longer than max_backoff.
    receiver.process.signal(libc::SIGTERM);
    let status = receiver
        .process
        .wait_exit(Duration::from_secs(5))
        .expect("the receiver exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", receiver.process.report());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        host.retry_state()["backoff"]["failures"].as_u64() >= Some(1),
        "the shipper noticed: {}",
        host.retry_state()
    );
    let shipped_before = host.list(&host.shipped()).len();
    restart_behind(&env, &mut receiver, &proxy);
    let restarted = Instant::now();
    // No help from outside: the shipper comes back when its persisted wait is over
    // (its own backoff of at most 1 s, or the draining receiver's Retry-After: 5).
    let until_ms = host.retry_state()["backoff"]["until_ms"]
        .as_u64()
        .unwrap_or(0);
    let wait = Duration::from_millis(until_ms.saturating_sub(now_ms()));
    wait_until(
        wait + Duration::from_secs(2),
        "the shipper to resume",
        || host.list(&host.shipped()).len() > shipped_before,
    );
    eprintln!(
        "receiver-restart: resumed {:?} after the restart",
        restarted.elapsed()
    );
    wait_until(
        Duration::from_secs(30),
        "the shipper to ship everything",
        || host.list(&host.episodes()).is_empty(),
    );
    assert!(!shipper.has_exited(), "{}", shipper.report());
    stop(&mut shipper);
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
}

#[test]
fn sigterm_stops_the_shipper_cleanly_wherever_it_lands() {
    let seed = seed("E2E_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new("sigterm-shipper");
    let mut receiver = env.spawn_receiver(&env.receiver_config("r", true, ""));
    let host = env.shipper_host("lab1", "lab1", &receiver.url, FAST_RETRY);
    let originals = backlog(&host, 40, 10, &mut rng);
    let mut n_stops = 0;
    for _ in 0..5 {
        let notify = env.notify_socket();
        let mut shipper = env.spawn_shipper(&host, |cmd| {
            cmd.env("NOTIFY_SOCKET", notify.path());
        });
        notify.wait_for(Duration::from_secs(5), "READY=1");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=200)));
        let asked = Instant::now();
        stop(&mut shipper);
        n_stops += 1;
        assert!(
            notify.first("STOPPING=1").is_some_and(|t| t >= asked),
            "no STOPPING=1: {:?}",
            notify.messages()
        );
        assert_consistent(&host, &originals);
        let partials: Vec<String> = host
            .list(&host.outbox())
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(partials.is_empty(), "a clean stop left {partials:?}");
        if host.list(&host.episodes()).is_empty() {
            break;
        }
    }
    eprintln!("sigterm-shipper: {n_stops} SIGTERMs");
    run_to_completion(&env, &host, Duration::from_secs(30));
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
}

#[test]
fn sigterm_stops_the_receiver_cleanly_mid_upload() {
    let env = TestEnv::new("sigterm-receiver");
    let config = env.receiver_config("r", true, "shutdown_grace = \"2s\"\n");
    let notify = env.notify_socket();
    let mut receiver = env.spawn_receiver_with(&config, |cmd| {
        cmd.env("NOTIFY_SOCKET", notify.path());
    });
    let proxy = FaultProxy::new(receiver.addr);
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), FAST_RETRY);
    let mut rng = StdRng::seed_from_u64(seed("E2E_SEED"));
    let originals = backlog(&host, 30, 10, &mut rng);
    let mut shipper = env.spawn_shipper(&host, |_| {});
    wait_until(Duration::from_secs(10), "an upload in progress", || {
        !receiver.incoming_files().is_empty()
    });
    let asked = Instant::now();
    stop(&mut receiver.process);
    assert!(
        notify.first("STOPPING=1").is_some_and(|t| t >= asked),
        "no STOPPING=1: {:?}",
        notify.messages()
    );
    assert_consistent(&host, &originals);
    restart_behind(&env, &mut receiver, &proxy);
    wait_until(
        Duration::from_secs(30),
        "the shipper to ship everything",
        || host.list(&host.episodes()).is_empty(),
    );
    stop(&mut shipper);
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
}

#[test]
fn a_crash_loop_against_a_503_does_not_put_more_often_than_the_persisted_backoff() {
    let env = TestEnv::new("crash-loop");
    let stub = StubServer::new(Reply::problem(503, "unavailable"));
    let initial = Duration::from_secs(2);
    let host = env.shipper_host(
        "lab1",
        "lab1",
        &stub.url(),
        "[retry]\ninitial_backoff = \"2s\"\nmax_backoff = \"8s\"\n",
    );
    for id in ["01A", "01B", "01C"] {
        write_episode(
            &host.data_root,
            id,
            &[("events.jsonl", b"{\"ts\":1}\n".as_slice())],
            Some(json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600})),
            true,
        );
    }
    let originals = Originals::snapshot(&host);
    let mut rng = StdRng::seed_from_u64(seed("E2E_SEED"));
    let started = Instant::now();
    for _ in 0..10 {
        let shipper = env.spawn_shipper(&host, |_| {});
        std::thread::sleep(Duration::from_millis(rng.random_range(200..=300)));
        drop(shipper); // SIGKILL: systemd restarts it
    }
    let elapsed = started.elapsed();
    let puts: Vec<Instant> = stub
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.at)
        .collect();
    let state = host.retry_state();
    eprintln!(
        "crash-loop: 10 restarts in {elapsed:?}, {} PUTs, state {state}",
        puts.len()
    );
    // Every attempt was on disk before the next start could look.
    assert_eq!(
        state["backoff"]["failures"].as_u64(),
        Some(puts.len() as u64),
        "{state}"
    );
    let bound = (elapsed.as_millis() / initial.as_millis()) as usize + 1;
    assert!(
        !puts.is_empty() && puts.len() <= bound,
        "{} PUTs in {elapsed:?} with a {initial:?} backoff (at most {bound})",
        puts.len()
    );
    for pair in puts.windows(2) {
        assert!(
            pair[1] - pair[0] + Duration::from_millis(20) >= initial,
            "two PUTs {:?} apart",
            pair[1] - pair[0]
        );
    }
    assert_eq!(stub.count("HEAD"), 0, "{:?}", stub.requests());
    let placement = assert_consistent(&host, &originals);
    assert_eq!(placement.pending, 3);
}

/// A receiver short of disk space answers 507 (with `Retry-After: 60`); the shipper
/// backs off, keeps everything and quarantines nothing; once the receiver restarts
/// with a sane reserve and the wait is over, everything ships. `wait_out` waits the
/// real minute; otherwise the shipper is stopped and its persisted waits expired.
fn receiver_short_of_disk_space(name: &str, wait_out: bool) {
    let env = TestEnv::new(name);
    let config = env.receiver_config("r", true, "free_space_reserve = \"1000TiB\"\n");
    let mut receiver = env.spawn_receiver(&config);
    let proxy = FaultProxy::new(receiver.addr);
    let host = env.shipper_host("lab1", "lab1", &proxy.url(), FAST_RETRY);
    let mut rng = StdRng::seed_from_u64(seed("E2E_SEED"));
    let originals = backlog(&host, 12, 10, &mut rng);
    let mut shipper = env.spawn_shipper(&host, |_| {});
    wait_until(Duration::from_secs(10), "a 507", || {
        host.retry_state()["backoff"]["last_status"] == 507
    });
    // It backs off for the receiver's Retry-After, not its own 200 ms. (An earlier
    // attempt may have lost its early 507 to the connection being closed under a
    // body over 1 MiB: a transient failure like any other.)
    let failures = host.retry_state()["backoff"]["failures"].clone();
    std::thread::sleep(Duration::from_millis(1500));
    let state = host.retry_state();
    assert_eq!(state["backoff"]["failures"], failures, "{state}");
    let until_ms = state["backoff"]["until_ms"].as_u64().unwrap();
    assert!(
        until_ms > now_ms() + 50_000,
        "Retry-After: 60 not honoured: {state}"
    );
    assert!(receiver.index_rows().is_empty());
    assert!(receiver.incoming_files().is_empty());
    let placement = assert_consistent(&host, &originals);
    assert_eq!(
        placement.pending,
        originals.len(),
        "nothing shipped, nothing lost"
    );
    let first = originals.ids().into_iter().next().unwrap();
    assert!(
        host.outbox().join(format!("{first}.tar.zst")).is_file(),
        "the archive is kept for the retry: {:?}",
        host.list(&host.outbox())
    );
    // The operator frees space (here: a sane reserve) and restarts the receiver.
    receiver.process.kill();
    env.receiver_config("r", true, "");
    restart_behind(&env, &mut receiver, &proxy);
    if !wait_out {
        stop(&mut shipper);
        host.expire_waits();
        shipper = env.spawn_shipper(&host, |_| {});
    }
    let deadline =
        Duration::from_millis(until_ms.saturating_sub(now_ms())) + Duration::from_secs(15);
    wait_until(deadline, "the shipper to ship everything", || {
        host.list(&host.episodes()).is_empty()
    });
    stop(&mut shipper);
    assert_all_stored_once(&env, &mut receiver, &host, &originals);
}

#[test]
fn a_receiver_short_of_disk_space_is_waited_for_and_loses_nothing() {
    receiver_short_of_disk_space("disk-pressure", false);
}

#[test]
#[ignore = "torture: run by `.ci/run` (nextest profile `torture`)"]
fn torture_a_receiver_short_of_disk_space_is_waited_out() {
    receiver_short_of_disk_space("torture-disk", true);
}

#[test]
fn what_a_kill_leaves_in_the_data_root_is_cleaned_at_the_next_start() {
    let env = TestEnv::new("kill-leftovers");
    let host = env.shipper_host("lab1", "lab1", "https://127.0.0.1:1", "");
    write_episode(
        &host.data_root,
        "01LIVE",
        &[("events.jsonl", b"{\"ts\":1}\n".as_slice())],
        Some(json!({"code_commit": "3f2c1e9a", "started_at": 1_795_341_600})),
        true,
    );
    let originals = Originals::snapshot(&host);
    // A SIGKILL inside a retry-state save, a pack, a sidecar write, and a retire.
    std::fs::create_dir_all(host.state()).unwrap();
    std::fs::create_dir_all(host.outbox()).unwrap();
    std::fs::write(host.state().join(".retry.json.4242.tmp"), b"{\"epis").unwrap();
    for name in [
        "01LIVE.tar.zst.partial",
        ".01LIVE.json.4242.tmp",
        "01GONE.tar.zst",
        "01GONE.json",
    ] {
        std::fs::write(host.outbox().join(name), b"leftover").unwrap();
    }
    let run = env.shipper(&host, &["once"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_consistent(&host, &originals);
    let left: Vec<String> = episode_e2e::tree(&host.data_root)
        .into_iter()
        .filter(|p| p.starts_with("state/") || p.starts_with("outbox/"))
        .collect();
    assert!(
        left.iter().all(|p| [
            "state/lock",
            "state/retry.json",
            "outbox/01LIVE.tar.zst",
            "outbox/01LIVE.json"
        ]
        .contains(&p.as_str())),
        "left behind: {left:?}"
    );
}
