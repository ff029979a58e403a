//! The end-to-end test binary: one module per area, each driving real binaries
//! through the `episode_e2e` harness.

mod crash;
mod observability;
mod receiver;
mod shipper;
mod units;
