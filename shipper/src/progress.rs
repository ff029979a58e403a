//! Work moving: counters that packing, hashing, uploading and directory walks add to,
//! read by the watchdog heartbeat and by the progress line on a terminal.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use episode_common::ByteSize;

/// Bytes read for packing or re-hashing plus bytes sent, and other steps, since start.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    steps: AtomicU64,
    episodes_done: AtomicU64,
    episodes_total: AtomicU64,
}

impl Progress {
    /// `n` bytes moved (packed, hashed or sent).
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// One step of work that moves no bytes (an entry listed, sized or removed).
    pub fn step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes moved since start.
    pub fn total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Everything that moved (bytes and steps): changes while any work progresses.
    pub fn activity(&self) -> u64 {
        self.total()
            .wrapping_add(self.steps.load(Ordering::Relaxed))
    }

    pub fn set_episodes_total(&self, n: u64) {
        self.episodes_total.store(n, Ordering::Relaxed);
    }

    pub fn episode_done(&self) {
        self.episodes_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A progress line redrawn on stderr while it is a terminal.
pub struct Display {
    start: Instant,
    enabled: bool,
}

impl Display {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            enabled: std::io::stderr().is_terminal(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn draw(&self, progress: &Progress) {
        if !self.enabled {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let bytes = progress.total();
        let line = format!(
            "\r\x1b[2K{}/{} episodes  {} moved  {}/s",
            progress.episodes_done.load(Ordering::Relaxed),
            progress.episodes_total.load(Ordering::Relaxed),
            ByteSize(bytes),
            ByteSize((bytes as f64 / secs) as u64),
        );
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
        let _ = stderr.flush();
    }

    pub fn finish(&self, progress: &Progress) {
        if self.enabled {
            self.draw(progress);
            eprintln!();
        }
    }
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}
