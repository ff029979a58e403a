//! systemd notifications (READY, WATCHDOG, STATUS, STOPPING), sent so that a failure
//! never matters: logged once, otherwise ignored; a no-op without `NOTIFY_SOCKET`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Default)]
pub struct Notifier {
    warned: AtomicBool,
}

impl Notifier {
    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(event = %episode_common::Event::NotifyFailed, error = %e, "continuing without systemd notifications");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// systemd's watchdog period for this process, if it set one.
    pub fn watchdog_period() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }
}
