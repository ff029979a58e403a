//! Latency and throughput arithmetic for `put` and `startup`: percentiles, medians,
//! and the report a run prints (human lines or one JSON object).
//!
//! Pure: callers pass the recorded samples and the elapsed time; nothing here reads
//! a clock. Percentiles are nearest-rank (the smallest sample with at least p% of
//! the samples at or below it), so p100 is the maximum and nothing is interpolated.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Nearest-rank percentile of `sorted` (ascending); `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// What the workers of one `put` run recorded.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Latency in microseconds of every answered request counted (2xx or not).
    pub latencies_us: Vec<u32>,
    /// Latency in microseconds of the 2xx answers only.
    pub ok_latencies_us: Vec<u32>,
    pub by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Body bytes of requests answered 2xx.
    pub ok_bytes: u64,
    /// Up to a few distinct transport error messages.
    pub error_samples: Vec<String>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.ok_latencies_us.extend(other.ok_latencies_us);
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.ok_bytes += other.ok_bytes;
        for e in other.error_samples {
            self.note_error(e);
        }
    }

    pub fn note_error(&mut self, message: String) {
        if self.error_samples.len() < 5 && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// From microsecond samples (sorted here).
    pub fn of(samples: &mut [u32]) -> Option<Self> {
        samples.sort_unstable();
        let ms = |p: f64| percentile(samples, p).map_or(0.0, |us| f64::from(us) / 1000.0);
        if samples.is_empty() {
            return None;
        }
        let sum: u64 = samples.iter().map(|&us| u64::from(us)).sum();
        Some(Self {
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
            mean_ms: sum as f64 / samples.len() as f64 / 1000.0,
        })
    }
}

/// The result of one `put` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url_template: String,
    pub concurrency: usize,
    pub body_bytes: u64,
    pub elapsed_s: f64,
    /// Answers of any status per second.
    pub requests_per_s: f64,
    /// 2xx answers per second.
    pub ok_per_s: f64,
    /// Body megabytes (10^6 bytes) of 2xx answers per second.
    pub mb_per_s: f64,
    pub requests: u64,
    pub ok: u64,
    /// Percentiles over 2xx answers (all answers when there were none).
    pub latency: Latency,
    pub by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub error_samples: Vec<String>,
    /// CPU seconds (user + system) the load generator itself used while measuring.
    pub loadgen_cpu_s: f64,
    /// The load generator's own CPU per answered request, in microseconds.
    pub loadgen_cpu_us_per_request: f64,
}

impl Report {
    pub fn new(
        url_template: String,
        concurrency: usize,
        body_bytes: u64,
        elapsed_s: f64,
        mut tally: Tally,
        loadgen_cpu_s: f64,
    ) -> Self {
        let requests = tally.by_status.values().sum::<u64>();
        let ok = tally
            .by_status
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>();
        let per_s = |n: f64| if elapsed_s > 0.0 { n / elapsed_s } else { 0.0 };
        let latency = Latency::of(&mut tally.ok_latencies_us)
            .or_else(|| Latency::of(&mut tally.latencies_us))
            .unwrap_or_default();
        Self {
            url_template,
            concurrency,
            body_bytes,
            elapsed_s,
            requests_per_s: per_s(requests as f64),
            ok_per_s: per_s(ok as f64),
            mb_per_s: per_s(tally.ok_bytes as f64 / 1e6),
            requests,
            ok,
            latency,
            by_status: tally.by_status,
            transport_errors: tally.transport_errors,
            error_samples: tally.error_samples,
            loadgen_cpu_s,
            loadgen_cpu_us_per_request: if requests > 0 {
                loadgen_cpu_s * 1e6 / requests as f64
            } else {
                0.0
            },
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target      {}", self.url_template)?;
        writeln!(
            f,
            "load        {} clients, {} B bodies, {:.2} s",
            self.concurrency, self.body_bytes, self.elapsed_s
        )?;
        writeln!(
            f,
            "throughput  {:.1} req/s ({:.1} 2xx/s), {:.1} MB/s",
            self.requests_per_s, self.ok_per_s, self.mb_per_s
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )?;
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        writeln!(f, "statuses    {}", statuses.join(", "))?;
        writeln!(f, "errors      {} transport", self.transport_errors)?;
        for e in &self.error_samples {
            writeln!(f, "            {e}")?;
        }
        write!(
            f,
            "loadgen     {:.2} CPU s ({:.1} us per request)",
            self.loadgen_cpu_s, self.loadgen_cpu_us_per_request
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.5), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7u32], 99.0), Some(7));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        let ten: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile(&ten, 90.0), Some(9));
        assert_eq!(percentile(&ten, 91.0), Some(10));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn a_report_counts_2xx_apart_and_rates_by_elapsed_time() {
        let mut tally = Tally::default();
        tally.by_status.insert(201, 8);
        tally.by_status.insert(429, 2);
        tally.ok_latencies_us = vec![1000; 8];
        tally.latencies_us = vec![1000; 10];
        tally.ok_bytes = 8_000_000;
        tally.transport_errors = 1;
        let r = Report::new("t/{id}".into(), 2, 1_000_000, 2.0, tally, 0.01);
        assert_eq!((r.requests, r.ok), (10, 8));
        assert_eq!(r.requests_per_s, 5.0);
        assert_eq!(r.ok_per_s, 4.0);
        assert_eq!(r.mb_per_s, 4.0);
        assert_eq!(r.latency.p99_ms, 1.0);
        assert_eq!(r.loadgen_cpu_us_per_request, 1000.0);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["by_status"]["429"], 2);
        assert_eq!(json["latency"]["p50_ms"], 1.0);
    }

    #[test]
    fn merging_tallies_adds_counts_and_keeps_few_distinct_errors() {
        let mut a = Tally::default();
        a.by_status.insert(201, 1);
        for i in 0..4 {
            a.note_error(format!("e{i}"));
        }
        let mut b = Tally::default();
        b.by_status.insert(201, 2);
        b.note_error("e0".into());
        b.note_error("e9".into());
        b.note_error("e10".into());
        a.merge(b);
        assert_eq!(a.by_status[&201], 3);
        assert_eq!(a.error_samples, ["e0", "e1", "e2", "e3", "e9"]);
    }
}
