//! Crash safety and lifecycle: kill either process anywhere, cut or stall the
//! network, restart in a loop, fill the receiver's disk; every scenario ends with
//! `assert_all_stored_once` (every episode stored exactly once, byte-identical,
//! index rows unique, nothing quarantined, no orphan or partial, incoming empty after
//! a restart).
//!
//! Randomised scenarios print their seed (`E2E_SEED=<n>` replays one) and how many
//! kills they made. The CI variants stay well under 30 s; `E2E_TORTURE=1` runs the
//! long variants of the kill scenarios with more episodes and more kills.

use std::time::{Duration, Instant};

use episode_e2e::{
    FaultProxy, Host, Mode, Originals, Proc, Receiver, Reply, StubServer, TestEnv,
    assert_all_stored_once, assert_consistent, episodes, noise, seed, wait_until, write_episode,
};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// Fast retries, so a scenario spends its time on faults, not on waiting.
const FAST_RETRY: &str = "[retry]\ninitial_backoff = \"200ms\"\nmax_backoff = \"1s\"\n";

fn torture() -> bool {
    std::env::var_os("E2E_TORTURE").is_some_and(|v| v == "1")
}

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
        episodes: 100,
        kills: 30,
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
            Aim::Retire => {
                let log = shipper.stderr();
                log.contains("outcome=shipped") || log.contains("outcome=already_present")
            }
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
/// random 20–300 ms when it does not show by then. Records where it landed.
fn spawn_and_kill(
    env: &TestEnv,
    host: &Host,
    receiver: &Receiver,
    rng: &mut StdRng,
    kills: &mut Kills,
) {
    let aim = Aim::pick(rng);
    let deadline = Instant::now() + Duration::from_millis(rng.random_range(20..=300));
    let extra = Duration::from_millis(match aim {
        Aim::Retire => rng.random_range(0..=2),
        _ => rng.random_range(0..=20),
    });
    let shipper = env.spawn_shipper(host, |_| {});
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
    let host = env.shipper_host("lab1", "lab1", &receiver.url, FAST_RETRY);
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
fn torture_a_shipper_killed_at_random_instants() {
    if !torture() {
        eprintln!("skipped: set E2E_TORTURE=1");
        return;
    }
    shipper_killed_at_random_instants("torture-shipper", Plan::TORTURE);
}
