//! episode-e2e: the harness that drives the real binaries over real sockets.
//!
//! Owns test environments (`TestEnv`: temp tree + rcgen PKI + receiver configs),
//! child processes (`Proc`, `bin`), a running receiver (`Receiver`) and clients for
//! it, raw HTTP/1.1 connections (`raw`), systemd's notify socket (`NotifySocket`),
//! network faults (`BlackHole`, `FaultProxy`), a scriptable fake receiver
//! (`StubServer`), episode fixtures, the daemons' JSON log lines (`logs`), outside
//! tools (`tools`: promtool, headless chromium), and the product's promise as
//! reusable assertions (`invariants`). Beyond those, it asserts nothing about the binaries
//! itself; the tests in `tests/e2e/` do. Invariant: everything binds 127.0.0.1:0 and
//! lives under its env's temp root, so tests run in parallel, and every child and
//! thread it starts is stopped when its owner drops.
//!
//! A test reads like this (`E2E_KEEP=1` keeps the temp tree and prints its path):
//!
//! ```no_run
//! use std::time::Duration;
//! use episode_e2e::{FaultProxy, Mode, TestEnv, wait_until};
//!
//! let env = TestEnv::new("example");
//! let config = env.receiver_config("r", true, "max_episode_bytes = \"1MiB\"\n[window]\nmax_age = \"1d\"\n");
//! let receiver = env.spawn_receiver(&config);
//! let answer = receiver.put(&receiver.client("lab1"), "lab1", "01EPISODE", b"archive");
//! assert_eq!(answer.status, 201, "{answer:#?}");
//! let proxy = FaultProxy::new(receiver.addr); // point a shipper at proxy.url()
//! proxy.set_mode(Mode::StallAfter(4096));
//! wait_until(Duration::from_secs(5), "one row", || receiver.index_rows().len() == 1);
//! ```

pub mod env;
pub mod episodes;
pub mod faults;
pub mod invariants;
pub mod logs;
pub mod notify;
pub mod pki;
pub mod process;
pub mod raw;
pub mod receiver;
pub mod shipper;
pub mod stub;
pub mod tools;

use std::time::{Duration, Instant};

pub use env::TestEnv;
pub use episodes::{
    Packed, archive_files, dir_files, noise, pack, tree, write_episode, write_episodes_sized,
    write_mixed_episodes,
};
pub use faults::{BlackHole, FaultProxy, Mode};
pub use invariants::{
    Originals, assert_all_stored_once, assert_consistent, assert_consistent_while_shipping,
    restart_receiver,
};
pub use notify::NotifySocket;
pub use process::{Proc, bin, die_with_parent};
pub use raw::{RawConn, RawResponse, connect, plain_connect, put_headers, tls_connect};
pub use receiver::{
    Answer, Receiver, ReceiverPaths, error_chain, http_client, http_client_builder, https_client,
};
pub use shipper::{Host, Run};
pub use stub::{Reply, StubServer};

/// Polls `f` every 10 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A seed from env var `var`, or one from the clock; printed so a failure can be
/// replayed.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed: {seed} (replay with {var}={seed})");
    seed
}
