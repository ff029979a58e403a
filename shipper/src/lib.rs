//! episode-shipper: the lab-host daemon that ships every finished episode once.
//!
//! Code map: `config` (the file), `layout` (directories and moves), `meta`
//! (meta.json), `pack` (deterministic tar.zst), `transport` (HTTP to the receiver),
//! `policy` (pure decisions: action per class, backoff), `state` (what survives a
//! restart), `quarantine`, `shipper` (one pass), `daemon` (`run`/`once` and
//! systemd), `status` and `check` (read-only reports), `metrics` (Prometheus),
//! `notify`, `progress`.
//! The doctor reuses `config`, `transport` and `status`.
//!
//! Invariants: the shipper never adds or changes a file inside an episode directory
//! (except `quarantine_reason.json` in quarantine); every move is a rename followed
//! by an fsync of both directories; an episode is retired only after the receiver
//! confirmed it holds the same bytes.

pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod layout;
pub mod meta;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pack;
pub mod policy;
pub mod progress;
pub mod quarantine;
pub mod retry;
pub mod shipper;
pub mod state;
pub mod status;
pub mod transport;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
