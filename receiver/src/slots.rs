//! Upload slots, in total and per host, and the bytes they claim (step 4 of a PUT).
//! A slot is a guard: dropping it frees the slot and its claim, so a failing upload
//! never leaks capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use episode_common::HostId;
use episode_common::problem::Slug;

use crate::error::Refusal;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    bytes: u64,
    per_host: HashMap<HostId, usize>,
}

#[derive(Debug)]
pub struct Slots {
    /// Reloadable (SIGHUP): uploads in flight keep their slots when a limit drops.
    max_total: AtomicUsize,
    max_per_host: AtomicUsize,
    counts: Mutex<Counts>,
}

/// Held while one upload's body is received and published.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    host_id: HostId,
    bytes: u64,
}

impl Slots {
    pub fn new(max_total: usize, max_per_host: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: AtomicUsize::new(max_total),
            max_per_host: AtomicUsize::new(max_per_host),
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `host_id` claiming `bytes`, or answers 429.
    pub fn try_acquire(self: &Arc<Self>, host_id: &HostId, bytes: u64) -> Result<Slot, Refusal> {
        let mut counts = self.counts();
        if counts.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                Slug::TooManyUploads,
                format!(
                    "{} uploads in progress, the most this receiver takes at once",
                    counts.total
                ),
            ));
        }
        let host_count = counts.per_host.get(host_id).copied().unwrap_or(0);
        if host_count >= self.max_uploads_per_host() {
            return Err(Refusal::new(
                Slug::TooManyUploads,
                format!(
                    "{host_count} uploads from {host_id} in progress, the most this receiver takes from one host"
                ),
            ));
        }
        counts.total += 1;
        counts.bytes += bytes;
        *counts.per_host.entry(host_id.clone()).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            host_id: host_id.clone(),
            bytes,
        })
    }

    fn max_uploads_per_host(&self) -> usize {
        self.max_per_host.load(Ordering::Relaxed)
    }

    /// New limits for uploads that start from now on.
    pub fn set_limits(&self, max_total: usize, max_per_host: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_host.store(max_per_host, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.counts().total
    }

    /// Bytes claimed by uploads in flight.
    pub fn claimed_bytes(&self) -> u64 {
        self.counts().bytes
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total -= 1;
        counts.bytes -= self.bytes;
        if let Some(n) = counts.per_host.get_mut(&self.host_id) {
            *n -= 1;
            if *n == 0 {
                counts.per_host.remove(&self.host_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_host_and_frees_on_drop() {
        let slots = Slots::new(3, 2);
        let (a, b, c) = (
            HostId::new("a").unwrap(),
            HostId::new("b").unwrap(),
            HostId::new("c").unwrap(),
        );
        let a1 = slots.try_acquire(&a, 10).unwrap();
        let _a2 = slots.try_acquire(&a, 20).unwrap();
        assert_eq!(
            slots.try_acquire(&a, 1).unwrap_err().slug.status(),
            429,
            "per host"
        );
        let _b1 = slots.try_acquire(&b, 5).unwrap();
        assert_eq!(
            slots.try_acquire(&c, 1).unwrap_err().slug.status(),
            429,
            "total"
        );
        assert_eq!((slots.in_flight(), slots.claimed_bytes()), (3, 35));
        drop(a1);
        assert_eq!((slots.in_flight(), slots.claimed_bytes()), (2, 25));
        assert!(slots.try_acquire(&c, 1).is_ok());
    }
}
