//! episode-doctor: one screen that says what is wrong with the episode shipper on
//! this host and the exact command that fixes it (doctor.md).
//!
//! Code map: `doctor` gathers the facts and builds the rows in order; each row has
//! a module with a pure judge (`config`, `certs`, `receiver`, `service`, `data`
//! for backlog/quarantine/hold, `journal`) over facts gathered by a thin I/O part;
//! `fixes` holds the canonical fix texts, `source` runs journalctl and systemctl,
//! `since` parses `--since`, and `report` prints the table or the JSON.
//!
//! Reuses the shipper's config loader, TLS loading (`episode_common::tls`),
//! transport and status collection: there is no second implementation of any of
//! them here. The doctor only reads: it never moves, requeues, restarts or
//! writes anything.

pub mod certs;
pub mod cli;
pub mod config;
pub mod data;
pub mod doctor;
pub mod fixes;
pub mod journal;
pub mod receiver;
pub mod report;
pub mod service;
pub mod since;
pub mod source;
