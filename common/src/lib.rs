//! Shared vocabulary of the episode shipper, receiver and doctor.
//!
//! Owns the identifiers (`HostId`, `EpisodeId`), the digest type and its RFC 9530
//! field form, the RFC 9457 problem body and its slugs, the pure response
//! classifier, config primitives (durations, sizes, TOML reading), PEM/TLS loading,
//! the durable filesystem steps both daemons publish with, and the wire types. It
//! does no network I/O, spawns nothing and has no async runtime; it touches only
//! the paths a caller passes.

pub mod classify;
pub mod config;
pub mod digest;
pub mod events;
pub mod exposition;
pub mod fsx;
pub mod id;
pub mod logging;
pub mod problem;
pub mod report;
pub mod tls;
pub mod wire;

pub use classify::{Class, classify};
pub use config::{ByteSize, ConfigError, Dur};
pub use digest::Sha256;
pub use events::{Event, Outcome};
pub use id::{EpisodeId, HostId, IdError};
pub use problem::{Problem, Slug};

/// Exit code for a configuration error (sysexits `EX_CONFIG`), so systemd units can
/// say `RestartPreventExitStatus=78`.
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;
