//! `NotifySocket`: plays systemd's notify socket for a child (`NOTIFY_SOCKET`).
//!
//! Owns a Unix datagram socket in the env and a thread that records every datagram
//! with the instant it arrived, until dropped. It does not interpret the messages
//! beyond substring matching. Invariant: messages are kept in arrival order.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{TestEnv, wait_until};

type Log = Arc<Mutex<Vec<(Instant, String)>>>;

pub struct NotifySocket {
    path: PathBuf,
    log: Log,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestEnv {
    /// A new notify socket; give it to a child with `.env("NOTIFY_SOCKET", s.path())`.
    pub fn notify_socket(&self) -> NotifySocket {
        NotifySocket::bind(&self.notify_socket_path())
    }
}

impl NotifySocket {
    pub fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("bind notify socket {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("set_read_timeout");
        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        log.lock().unwrap().push((Instant::now(), text));
                    }
                }
            })
        };
        Self {
            path: path.to_owned(),
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram so far, in arrival order.
    pub fn messages(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap().clone()
    }

    /// How many datagrams contain `needle` (e.g. "WATCHDOG=1").
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.contains(needle))
            .count()
    }

    /// When the first datagram containing `needle` arrived.
    pub fn first(&self, needle: &str) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, m)| m.contains(needle))
            .map(|(t, _)| *t)
    }

    /// Waits for a datagram containing `needle`; returns when it arrived.
    pub fn wait_for(&self, timeout: Duration, needle: &str) -> Instant {
        wait_until(timeout, &format!("notify message {needle:?}"), || {
            self.first(needle).is_some()
        });
        self.first(needle).expect("just seen")
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        if std::thread::panicking() {
            eprintln!("--- notify messages: {:?}", self.messages());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_datagrams_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let socket = NotifySocket::bind(&dir.path().join("n.sock"));
        let client = UnixDatagram::unbound().unwrap();
        for msg in [
            "READY=1\nSTATUS=up\n",
            "WATCHDOG=1\n",
            "WATCHDOG=1\n",
            "STOPPING=1\n",
        ] {
            client.send_to(msg.as_bytes(), socket.path()).unwrap();
        }
        let stopping = socket.wait_for(Duration::from_secs(5), "STOPPING=1");
        assert!(socket.first("READY=1").unwrap() <= stopping);
        assert_eq!(socket.count("WATCHDOG=1"), 2);
        assert_eq!(socket.messages().len(), 4);
    }
}
