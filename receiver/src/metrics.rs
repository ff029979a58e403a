//! The receiver's Prometheus metrics (observability.md): one registry updated by
//! the routes and the accept loop, gauges from a `Scrape`, `process_*` from
//! `/proc/self` (so `render` runs off the async workers).

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    problem_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host_id: String,
}

/// The problem type of a problem answer, put on the response by `problem_response`
/// so that counting it needs no body parsing.
#[derive(Clone, Copy, Debug)]
pub struct ProblemType(pub &'static str);

pub struct Metrics {
    registry: Registry,
    responses: Family<ResponseLabels, Counter>,
    rejections: Family<ProblemLabels, Counter>,
    upload_duration: Histogram,
    upload_size: Histogram,
    pub upload_bytes: Counter,
    pub stored: Counter,
    pub handshake_failures: Counter,
    uploads_in_flight: Gauge,
    index_rows: Gauge,
    free_bytes: Gauge,
    draining: Gauge,
    ready: Gauge,
    dependency_up: Family<DependencyLabels, Gauge>,
    host_last_stored: Family<HostLabels, Gauge>,
    /// Setting the scrape gauges and encoding is one step.
    scrape: Mutex<()>,
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub struct Scrape {
    pub uploads_in_flight: usize,
    pub index_rows: u64,
    /// Free bytes on the store's filesystem (0 when it cannot be read: the store
    /// is then reported down).
    pub free_bytes: u64,
    pub draining: bool,
    pub ready: bool,
    pub store_up: bool,
    pub index_up: bool,
    /// `(host_id, unix seconds of its last stored episode)`.
    pub hosts: Vec<(String, i64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            responses: Family::default(),
            rejections: Family::default(),
            upload_duration: Histogram::new(exponential_buckets(0.005, 2.5, 12)),
            upload_size: Histogram::new(exponential_buckets(1024.0, 4.0, 14)),
            upload_bytes: Counter::default(),
            stored: Counter::default(),
            handshake_failures: Counter::default(),
            uploads_in_flight: Gauge::default(),
            index_rows: Gauge::default(),
            free_bytes: Gauge::default(),
            draining: Gauge::default(),
            ready: Gauge::default(),
            dependency_up: Family::default(),
            host_last_stored: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("episode_receiver");
        registry.register(
            "http_responses",
            "HTTP responses by route and status code",
            m.responses.clone(),
        );
        registry.register(
            "rejections",
            "Problem answers (4xx and 5xx) by problem type",
            m.rejections.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Time from a PUT's headers to its answer, for PUTs whose body was read",
            m.upload_duration.clone(),
        );
        registry.register(
            "upload_size_bytes",
            "Sizes of the archives stored (201)",
            m.upload_size.clone(),
        );
        registry.register(
            "upload_bytes",
            "Body bytes received by PUTs",
            m.upload_bytes.clone(),
        );
        registry.register(
            "episodes_stored",
            "Archives published into the store",
            m.stored.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.handshake_failures.clone(),
        );
        registry.register(
            "uploads_in_flight",
            "Bodies being received now",
            m.uploads_in_flight.clone(),
        );
        registry.register("index_rows", "Episodes in the index", m.index_rows.clone());
        registry.register(
            "free_bytes",
            "Free bytes on the store's filesystem",
            m.free_bytes.clone(),
        );
        registry.register("draining", "1 while shutting down", m.draining.clone());
        registry.register(
            "ready",
            "1 when /readyz answers 200 (the /v1/health verdict)",
            m.ready.clone(),
        );
        registry.register(
            "dependency_up",
            "1 when the dependency can be written (store) or its writer runs (index)",
            m.dependency_up.clone(),
        );
        registry.register(
            "host_last_stored_timestamp_seconds",
            "Unix time of the last episode stored for a host (from the index)",
            m.host_last_stored.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: crate::VERSION,
            })
            .set(1);
        registry.register("build_info", "Always 1; the version as a label", build_info);
        root.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Counts one answer; `response` carries its `ProblemType` when it is a problem.
    pub fn record(&self, route: &'static str, response: &http::Response<axum::body::Body>) {
        let code = response.status().as_u16();
        self.responses
            .get_or_create(&ResponseLabels { route, code })
            .inc();
        if let Some(ProblemType(problem_type)) = response.extensions().get::<ProblemType>() {
            self.rejections
                .get_or_create(&ProblemLabels { problem_type })
                .inc();
        }
    }

    /// A PUT whose body was read: how long it took, and its size when stored.
    pub fn observe_upload(&self, seconds: f64, stored_bytes: Option<u64>) {
        self.upload_duration.observe(seconds);
        if let Some(bytes) = stored_bytes {
            self.upload_size.observe(bytes as f64);
        }
    }

    /// The Prometheus text format (reads `/proc/self`: blocking).
    pub fn render(&self, scrape: &Scrape) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = |b: bool| i64::from(b);
        self.uploads_in_flight.set(scrape.uploads_in_flight as i64);
        self.index_rows.set(scrape.index_rows as i64);
        self.free_bytes
            .set(i64::try_from(scrape.free_bytes).unwrap_or(i64::MAX));
        self.draining.set(gauge(scrape.draining));
        self.ready.set(gauge(scrape.ready));
        for (dependency, up) in [("store", scrape.store_up), ("index", scrape.index_up)] {
            self.dependency_up
                .get_or_create(&DependencyLabels { dependency })
                .set(gauge(up));
        }
        for (host_id, at) in &scrape.hosts {
            self.host_last_stored
                .get_or_create(&HostLabels {
                    host_id: host_id.clone(),
                })
                .set(*at);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!(event = %episode_common::Event::MetricsFailed, "encoding the metrics failed");
        }
        episode_common::exposition::to_text_format(&text)
    }
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    start_time_seconds: f64,
    open_fds: i64,
    max_fds: i64,
}

/// Parses `/proc/self/stat` (after the command name) and `/proc/stat`'s `btime`.
fn parse_proc(stat: &str, proc_stat: &str, ticks: f64, page: i64) -> Option<ProcessStats> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    let boot: i64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        ..ProcessStats::default()
    })
}

fn read_process() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mut stats = parse_proc(&stat, &proc_stat, ticks.max(1) as f64, page.max(1))?;
    stats.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        stats.max_fds = i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX);
    }
    Some(stats)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read_process() else {
            return Ok(());
        };
        let counter = ConstCounter::new(p.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_under_its_contract_name() {
        let m = Metrics::new();
        let mut response = http::Response::new(axum::body::Body::empty());
        *response.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
        response.extensions_mut().insert(ProblemType("too-large"));
        m.record("put", &response);
        m.upload_bytes.inc_by(42);
        m.observe_upload(0.2, Some(5000));
        let text = m.render(&Scrape {
            uploads_in_flight: 3,
            index_rows: 7,
            free_bytes: 9,
            ready: true,
            store_up: true,
            index_up: false,
            hosts: vec![("lab-1".into(), 1_800_000_000)],
            ..Scrape::default()
        });
        for line in [
            "episode_receiver_http_responses_total{route=\"put\",code=\"413\"} 1",
            "episode_receiver_rejections_total{problem_type=\"too-large\"} 1",
            "# TYPE episode_receiver_upload_bytes_total counter",
            "episode_receiver_upload_bytes_total 42",
            "episode_receiver_upload_duration_seconds_count 1",
            "episode_receiver_upload_size_bytes_count 1",
            "episode_receiver_uploads_in_flight 3",
            "episode_receiver_index_rows 7",
            "episode_receiver_free_bytes 9",
            "episode_receiver_ready 1",
            "episode_receiver_dependency_up{dependency=\"store\"} 1",
            "episode_receiver_dependency_up{dependency=\"index\"} 0",
            "episode_receiver_host_last_stored_timestamp_seconds{host_id=\"lab-1\"} 1800000000",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains(&format!(
            "episode_receiver_build_info{{version=\"{}\"}} 1",
            crate::VERSION
        )));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn parses_proc_stat_with_a_command_name_holding_spaces() {
        let stat = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 1000 8192000 300 18446744073709551615";
        let p = parse_proc(stat, "cpu 1 2\nbtime 1700000000\n", 100.0, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.virtual_bytes, 8_192_000);
        assert_eq!(p.resident_bytes, 300 * 4096);
    }
}
