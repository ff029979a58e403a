//! episode-shipper: the lab-host daemon that ships every finished episode once.
//! The code map and the invariants are in ARCHITECTURE.md; the doctor reuses
//! `config`, `transport` and `status`.

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
