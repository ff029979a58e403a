//! The end-to-end test binary: one module per area, each driving real binaries
//! through the `episode_e2e` harness.

mod cli;
mod crash;
mod harness;
mod observability;
mod package;
mod receiver;
mod receiver_hardening;
mod shipper;
mod shipper_hardening;
mod units;
