//! Prometheus counters of the receiver, rendered in the text exposition format.
//!
//! Owns a handful of atomics and one map of responses by route and status; the
//! gauges (uploads in flight, index rows, free bytes) are read by the caller at
//! scrape time and passed to `render`. No registry, no globals.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    responses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub upload_bytes: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub stored: AtomicU64,
}

/// Values read at scrape time.
pub struct Gauges {
    pub uploads_in_flight: usize,
    pub index_rows: u64,
    pub free_bytes: Option<u64>,
    pub draining: bool,
}

impl Metrics {
    pub fn record(&self, route: &'static str, status: u16) {
        let mut map = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route, status)).or_default() += 1;
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP receiver_responses_total HTTP responses by route and status."
        );
        let _ = writeln!(out, "# TYPE receiver_responses_total counter");
        for ((route, status), n) in self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "receiver_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "receiver_upload_bytes_total",
            "Body bytes received by PUTs.",
            self.upload_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "receiver_episodes_stored_total",
            "Archives published into the store.",
            self.stored.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "receiver_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
            self.handshake_failures.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "receiver_uploads_in_flight",
            "Bodies being received now.",
            gauges.uploads_in_flight as u64,
        );
        gauge(
            &mut out,
            "receiver_index_rows",
            "Rows in the index.",
            gauges.index_rows,
        );
        if let Some(free) = gauges.free_bytes {
            gauge(
                &mut out,
                "receiver_store_free_bytes",
                "Free bytes on the store's filesystem.",
                free,
            );
        }
        gauge(
            &mut out,
            "receiver_draining",
            "1 while shutting down.",
            u64::from(gauges.draining),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.record("put", 201);
        m.record("put", 201);
        m.record("health", 200);
        m.upload_bytes.fetch_add(42, Ordering::Relaxed);
        let text = m.render(&Gauges {
            uploads_in_flight: 3,
            index_rows: 7,
            free_bytes: Some(9),
            draining: false,
        });
        assert!(
            text.contains("receiver_responses_total{route=\"put\",status=\"201\"} 2"),
            "{text}"
        );
        assert!(text.contains("receiver_upload_bytes_total 42"));
        assert!(text.contains("receiver_uploads_in_flight 3"));
        assert!(text.contains("receiver_index_rows 7"));
        assert!(text.contains("receiver_store_free_bytes 9"));
    }
}
