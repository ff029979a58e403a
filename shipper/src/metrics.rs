//! The shipper's Prometheus metrics (observability.md): the registry, the `Observed`
//! values a pass already knows, the textfile (temp + rename) and the optional
//! `/metrics` listener. Nothing here walks an episode directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Every `outcome` of the `ship_result` event (shipper.md, "Logs").
pub const OUTCOMES: [&str; 7] = [
    "shipped",
    "already_present",
    "conflict",
    "repack",
    "fatal",
    "hold",
    "transient",
];

/// The textfile is rewritten at least this often, pass or no pass.
pub const TEXTFILE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuarantineLabels {
    status_code: String,
    problem_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// What the shipper knows after a pass, for the gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub backlog_episodes: u64,
    pub backlog_bytes: u64,
    pub oldest_pending_age_secs: u64,
    pub outbox_bytes: u64,
    /// Unix seconds; 0 = never.
    pub last_success_unix: i64,
    pub on_hold: bool,
    /// Unix seconds; 0 = no backoff.
    pub backoff_until_unix: i64,
    pub conflicts: u64,
    /// `(status_code, problem_type)` → episodes in quarantine.
    pub quarantined: BTreeMap<(String, String), u64>,
    pub free_bytes: u64,
}

pub struct Metrics {
    registry: Registry,
    backlog_episodes: Gauge,
    backlog_bytes: Gauge,
    oldest_pending_age: Gauge,
    outbox_bytes: Gauge,
    last_success: Gauge,
    on_hold: Gauge,
    backoff_until: Gauge,
    conflicts: Gauge,
    quarantined: Family<QuarantineLabels, Gauge>,
    ship_results: Family<OutcomeLabels, Counter>,
    shipped_bytes: Counter,
    pass_duration: Histogram,
    free_bytes: Gauge,
    /// Setting the gauges and encoding them is one step.
    lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("episode_shipper");
        let m = Metrics {
            registry: Registry::default(),
            backlog_episodes: Gauge::default(),
            backlog_bytes: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            outbox_bytes: Gauge::default(),
            last_success: Gauge::default(),
            on_hold: Gauge::default(),
            backoff_until: Gauge::default(),
            conflicts: Gauge::default(),
            quarantined: Family::default(),
            ship_results: Family::default(),
            shipped_bytes: Counter::default(),
            pass_duration: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            free_bytes: Gauge::default(),
            lock: Mutex::new(()),
        };
        r.register(
            "backlog_episodes",
            "Finished episodes waiting in episodes/",
            m.backlog_episodes.clone(),
        );
        r.register(
            "backlog_bytes",
            "Size on disk of the finished episodes waiting",
            m.backlog_bytes.clone(),
        );
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest finished episode not yet shipped (0 when none)",
            m.oldest_pending_age.clone(),
        );
        r.register(
            "outbox_bytes",
            "Archives in the outbox",
            m.outbox_bytes.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last 200/201 (0 = never)",
            m.last_success.clone(),
        );
        r.register(
            "on_hold",
            "1 while shipping is held (401/403/...)",
            m.on_hold.clone(),
        );
        r.register(
            "backoff_until_timestamp_seconds",
            "End of the current global backoff (0 = none)",
            m.backoff_until.clone(),
        );
        r.register(
            "conflicts",
            "Episodes left because of a 409",
            m.conflicts.clone(),
        );
        r.register(
            "quarantined_episodes",
            "Episodes in quarantine by the answer that put them there",
            m.quarantined.clone(),
        );
        r.register(
            "ship_results",
            "Upload attempts by outcome (as in the ship_result event)",
            m.ship_results.clone(),
        );
        r.register(
            "shipped_bytes",
            "Archive bytes acknowledged by 200/201",
            m.shipped_bytes.clone(),
        );
        r.register("pass_duration_seconds", "Passes", m.pass_duration.clone());
        r.register(
            "free_bytes",
            "Free space on data_root's filesystem",
            m.free_bytes.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: crate::VERSION,
            })
            .set(1);
        r.register("build_info", "Always 1; the version as a label", build_info);
        for outcome in OUTCOMES {
            let _ = m.ship_results.get_or_create(&OutcomeLabels { outcome });
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// One upload attempt ended with `outcome`.
    pub fn ship_result(&self, outcome: episode_common::Outcome) {
        self.ship_results
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// An archive acknowledged by 200/201.
    pub fn shipped(&self, bytes: u64) {
        self.shipped_bytes.inc_by(bytes);
    }

    pub fn pass(&self, took: Duration) {
        self.pass_duration.observe(took.as_secs_f64());
    }

    pub fn observe(&self, o: &Observed) {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.backlog_episodes.set(int(o.backlog_episodes));
        self.backlog_bytes.set(int(o.backlog_bytes));
        self.oldest_pending_age.set(int(o.oldest_pending_age_secs));
        self.outbox_bytes.set(int(o.outbox_bytes));
        self.last_success.set(o.last_success_unix);
        self.on_hold.set(i64::from(o.on_hold));
        self.backoff_until.set(o.backoff_until_unix);
        self.conflicts.set(int(o.conflicts));
        self.free_bytes.set(int(o.free_bytes));
        // Reasons whose last episode left (cleaned, requeued) go with it.
        self.quarantined.clear();
        for ((status_code, problem_type), n) in &o.quarantined {
            self.quarantined
                .get_or_create(&QuarantineLabels {
                    status_code: status_code.clone(),
                    problem_type: problem_type.clone(),
                })
                .set(int(*n));
        }
    }

    /// The Prometheus text format (what node_exporter's textfile collector reads).
    pub fn render(&self) -> String {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!(event = %episode_common::Event::MetricsFailed, "encoding the metrics failed");
        }
        episode_common::exposition::to_text_format(&text)
    }
}

/// Writes `text` to `path` atomically: a temp file beside it (a dot name, which
/// node_exporter ignores), then a rename. Blocking. No fsync: the file is rebuilt
/// at least every minute, and a crash loses nothing but a reading.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("metrics.textfile has no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp: PathBuf = match dir {
        Some(d) => d.join(&temp_name),
        None => PathBuf::from(&temp_name),
    };
    let written = std::fs::write(&temp, text).and_then(|()| {
        // node_exporter runs as another user: the file must be world-readable.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&temp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Serves `GET /metrics` (plain HTTP/1.1) on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(event = %episode_common::Event::MetricsFailed, error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let metrics = metrics.clone();
                async move {
                    let (status, content_type, body) = match (req.method(), req.uri().path()) {
                        (&hyper::Method::GET, "/metrics") => (
                            200,
                            episode_common::exposition::TEXT_FORMAT,
                            metrics.render(),
                        ),
                        (_, "/metrics") => (405, "text/plain", "GET only\n".to_owned()),
                        _ => (404, "text/plain", "only /metrics here\n".to_owned()),
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}

/// Binds the metrics listener; the error names the key.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics.listen: cannot listen on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_of_the_contract() {
        let m = Metrics::new();
        m.ship_result(episode_common::Outcome::Shipped);
        m.shipped(1234);
        m.pass(Duration::from_millis(3));
        let mut observed = Observed {
            backlog_episodes: 2,
            backlog_bytes: 300,
            oldest_pending_age_secs: 60,
            outbox_bytes: 50,
            last_success_unix: 1_800_000_000,
            on_hold: true,
            backoff_until_unix: 0,
            conflicts: 1,
            free_bytes: 9,
            ..Observed::default()
        };
        observed
            .quarantined
            .insert(("412".into(), "out-of-window".into()), 3);
        m.observe(&observed);
        let text = m.render();
        for line in [
            "episode_shipper_backlog_episodes 2",
            "episode_shipper_backlog_bytes 300",
            "episode_shipper_oldest_pending_age_seconds 60",
            "episode_shipper_outbox_bytes 50",
            "episode_shipper_last_success_timestamp_seconds 1800000000",
            "episode_shipper_on_hold 1",
            "episode_shipper_backoff_until_timestamp_seconds 0",
            "episode_shipper_conflicts 1",
            "episode_shipper_quarantined_episodes{status_code=\"412\",problem_type=\"out-of-window\"} 3",
            "episode_shipper_ship_results_total{outcome=\"shipped\"} 1",
            "episode_shipper_ship_results_total{outcome=\"transient\"} 0",
            "# TYPE episode_shipper_ship_results_total counter",
            "episode_shipper_shipped_bytes_total 1234",
            "# TYPE episode_shipper_pass_duration_seconds histogram",
            "episode_shipper_pass_duration_seconds_count 1",
            "episode_shipper_free_bytes 9",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains(&format!(
            "episode_shipper_build_info{{version=\"{}\"}} 1",
            crate::VERSION
        )));
        // A reason whose episodes are gone is no longer reported.
        m.observe(&Observed::default());
        assert!(!m.render().contains("out-of-window"));
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("episode_shipper.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("episode_shipper.prom")]);
    }
}
