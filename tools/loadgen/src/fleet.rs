//! `fleet`: one receiver, H lab hosts each with its own shipper, all real processes.
//!
//! Owns the whole simulation under one work directory: a throwaway PKI (one client
//! certificate per host, CN and DNS SAN = host id), the receiver's config and
//! process (`--listen 127.0.0.1:0`, URL read from its first stdout line), H data
//! roots filled by `gen`, H shipper configs written with exactly the keys of
//! shipper.md, and the shippers themselves: `episode-shipper --config F once` per
//! host (mode `once`), or the daemon `run` per host (mode `run`) while the index is
//! watched until every episode has its row. It then checks the receiver's index
//! holds H×N rows for these hosts and reports time and throughput. In `run` mode it
//! can also time `done.marker` → index row for fresh episodes (`--probes`) and the
//! shippers' CPU while idle (`--idle`).
//!
//! It kills only the processes it started (SIGTERM, then SIGKILL), also on error,
//! and removes the work directory unless `--keep` or `--work` was given.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::dataset;
use crate::pki::{Pki, write_pki};
use crate::startup::terminate;
use crate::stats::percentile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `episode-shipper once` per host; done when every process exits.
    Once,
    /// `episode-shipper run` per host; done when the index has every row.
    Run,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: usize,
    pub episodes: u64,
    pub bytes: u64,
    pub seed: u64,
    pub mode: Mode,
    pub work: Option<PathBuf>,
    pub keep: bool,
    pub receiver_bin: PathBuf,
    pub shipper_bin: PathBuf,
    pub scan_interval: String,
    pub max_uploads_per_host: usize,
    /// Episodes placed directly in each host's `shipped/` before the shippers start.
    pub preshipped: u64,
    /// A cached `DIR/shipped/` lent to the first host by rename for the run (and
    /// given back, minus what this run shipped), instead of generating `preshipped`.
    pub preshipped_dir: Option<PathBuf>,
    /// Mode `run`, after `--idle`: stop the daemons and time this many `once` passes
    /// with nothing pending (the receiver still up).
    pub once_runs: usize,
    /// Mode `run`: fresh episodes to time from `done.marker` to their index row.
    pub probes: usize,
    /// Mode `run`: how long to sample the shippers' CPU once nothing is pending.
    pub idle: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    pub hosts: usize,
    pub episodes_per_host: u64,
    pub mode: String,
    pub raw_bytes: u64,
    pub archive_bytes: u64,
    pub elapsed_s: f64,
    pub episodes_per_s: f64,
    pub raw_mb_per_s: f64,
    pub index_rows: u64,
    pub expected_rows: u64,
    pub verified: bool,
    /// Sum of `shipped` over the shippers' `once` results (mode `once`).
    pub shipped_reported: Option<u64>,
    pub shipper_failures: Vec<String>,
    /// `done.marker` → index row, milliseconds (mode `run`, `--probes`).
    pub marker_to_stored_ms: Vec<f64>,
    pub marker_to_stored_p50_ms: Option<f64>,
    pub marker_to_stored_max_ms: Option<f64>,
    /// CPU of all shippers together while idle, percent of one core (mode `run`).
    pub idle_cpu_percent: Option<f64>,
    /// `once` with nothing pending: whole-process wall time, ms (median).
    pub idle_once_wall_ms: Option<f64>,
    /// `once` with nothing pending: the pass's own `duration_ms` (median).
    pub idle_pass_ms: Option<f64>,
    pub work_dir: String,
}

/// A child process that is terminated when dropped.
struct Guard {
    name: String,
    child: Option<Child>,
}

impl Guard {
    fn new(name: String, child: Child) -> Self {
        Self {
            name,
            child: Some(child),
        }
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }
}

fn toml_str(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("strings serialize")
}

/// The receiver config of the simulation.
pub fn receiver_config(root: &Path, pki: &Pki, max_uploads: usize, per_host: usize) -> String {
    format!(
        "store_root = {}\nincoming_root = {}\nindex_path = {}\n\
         max_concurrent_uploads = {max_uploads}\nmax_uploads_per_host = {per_host}\n\
         free_space_reserve = \"1GiB\"\n\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n",
        toml_str(&root.join("store")),
        toml_str(&root.join("incoming")),
        toml_str(&root.join("index.jsonl")),
        toml_str(&pki.server_cert()),
        toml_str(&pki.server_key()),
        toml_str(&pki.ca()),
    )
}

/// One host's shipper config, with exactly the keys of shipper.md.
pub fn shipper_config(
    host_id: &str,
    data_root: &Path,
    url: &str,
    pki: &Pki,
    scan_interval: &str,
) -> String {
    format!(
        "host_id = \"{host_id}\"\ndata_root = {}\nscan_interval = \"{scan_interval}\"\n\
         compression_level = 3\nstartup_jitter = \"0s\"\n\n[receiver]\nurl = \"{url}\"\n\
         ca_bundle = {}\nclient_cert = {}\nclient_key = {}\n",
        toml_str(data_root),
        toml_str(&pki.ca()),
        toml_str(&pki.client_cert(host_id)),
        toml_str(&pki.client_key(host_id)),
    )
}

pub fn host_name(i: usize) -> String {
    format!("lab{}", i + 1)
}

/// Starts the receiver and returns it with its URL (from its first stdout line).
fn start_receiver(bin: &Path, config: &Path, log: &Path) -> Result<(Guard, String)> {
    let stderr = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(bin)
        .args(["--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--log-format", "text", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("receiver stdout")?;
    let guard = Guard::new("episode-receiver".into(), child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .context("reading the receiver's first line")?;
    let Some(url) = first.trim().strip_prefix("listening on ") else {
        bail!(
            "the receiver did not start (first line {:?}); see {}",
            first.trim(),
            log.display()
        );
    };
    Ok((guard, url.to_owned()))
}

/// Counts distinct `(host, episode)` rows of `hosts` in the index, and their bytes.
fn count_rows(index: &Path, hosts: &HashSet<String>) -> Result<(u64, u64, HashSet<String>)> {
    #[derive(serde::Deserialize)]
    struct Row {
        host_id: String,
        episode_id: String,
        bytes: u64,
    }
    let text = match fs::read_to_string(index) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", index.display())),
    };
    let mut keys = HashSet::new();
    let mut bytes = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(row) = serde_json::from_str::<Row>(line) else {
            continue;
        };
        if hosts.contains(&row.host_id)
            && keys.insert(format!("{}/{}", row.host_id, row.episode_id))
        {
            bytes += row.bytes;
        }
    }
    Ok((keys.len() as u64, bytes, keys))
}

/// CPU seconds (user + system) of a live process, from /proc.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text, clock_ticks()).with_context(|| format!("parsing {path}"))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in seconds.
pub fn parse_stat_cpu(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state): utime is field 14 → index 11.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_s)
}

/// Waits until the index file holds a row for `episode_id`; returns when it did.
fn wait_for_row(
    index: &Path,
    offset: &mut u64,
    episode_id: &str,
    deadline: Instant,
) -> Result<Instant> {
    let needle = format!("\"episode_id\":\"{episode_id}\"");
    let mut pending = Vec::new();
    loop {
        if let Ok(mut file) = fs::File::open(index) {
            file.seek(SeekFrom::Start(*offset))
                .with_context(|| format!("seeking {}", index.display()))?;
            let mut fresh = Vec::new();
            file.read_to_end(&mut fresh)
                .with_context(|| format!("reading {}", index.display()))?;
            *offset += fresh.len() as u64;
            pending.extend_from_slice(&fresh);
            let text = String::from_utf8_lossy(&pending);
            if text.contains(&needle) {
                return Ok(Instant::now());
            }
            // Keep only a partial last line for the next read.
            if let Some(pos) = pending.iter().rposition(|b| *b == b'\n') {
                pending.drain(..=pos);
            }
        }
        if Instant::now() > deadline {
            bail!("no index row for {episode_id} before the deadline");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn run(options: &Options) -> Result<FleetReport> {
    let lent = match &options.preshipped_dir {
        Some(dir) => {
            let work = options
                .work
                .clone()
                .context("--preshipped-dir needs --work")?;
            Some(Lent::take(
                &dir.join("shipped"),
                &work.join("hosts").join(host_name(0)).join("shipped"),
            )?)
        }
        None => None,
    };
    let result = run_inner(options);
    if let Some(lent) = lent {
        lent.give_back()?;
    }
    result
}

/// A directory moved in by rename for the run; the entries it had are moved back.
struct Lent {
    home: PathBuf,
    here: PathBuf,
    names: HashSet<std::ffi::OsString>,
}

impl Lent {
    fn take(home: &Path, here: &Path) -> Result<Self> {
        let names = fs::read_dir(home)
            .with_context(|| format!("reading {}", home.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<HashSet<_>>>()
            .with_context(|| format!("reading {}", home.display()))?;
        if let Some(parent) = here.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if here.exists() {
            fs::remove_dir_all(here).with_context(|| format!("removing {}", here.display()))?;
        }
        fs::rename(home, here)
            .with_context(|| format!("moving {} to {}", home.display(), here.display()))?;
        Ok(Self {
            home: home.to_owned(),
            here: here.to_owned(),
            names,
        })
    }

    fn give_back(self) -> Result<()> {
        for entry in
            fs::read_dir(&self.here).with_context(|| format!("reading {}", self.here.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", self.here.display()))?;
            if !self.names.contains(&entry.file_name()) {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        fs::rename(&self.here, &self.home).with_context(|| {
            format!(
                "moving {} back to {}",
                self.here.display(),
                self.home.display()
            )
        })
    }
}

fn run_inner(options: &Options) -> Result<FleetReport> {
    if options.hosts == 0 {
        bail!("--hosts must be at least 1");
    }
    for bin in [&options.receiver_bin, &options.shipper_bin] {
        if !bin.exists() {
            bail!(
                "{} does not exist (build it: cargo build --release --workspace)",
                bin.display()
            );
        }
    }
    let (work, _temp) = match &options.work {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile_dir()?;
            (temp.clone(), Some(TempDir(temp, options.keep)))
        }
    };
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let hosts: Vec<String> = (0..options.hosts).map(host_name).collect();
    let pki = write_pki(&work.join("pki"), &hosts)?;

    // Data first (off the clock), in parallel across hosts.
    let jobs_per_host =
        (std::thread::available_parallelism().map_or(2, usize::from) / options.hosts).max(1);
    let generated: Vec<dataset::Generated> = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let data_root = work.join("hosts").join(host);
                let seed = options.seed.wrapping_add(i as u64 * 1_000_003);
                scope.spawn(move || -> Result<dataset::Generated> {
                    if options.preshipped > 0 {
                        dataset::generate(&dataset::Spec {
                            data_root: data_root.clone(),
                            count: options.preshipped,
                            bytes: 200,
                            seed: seed ^ 0xDEAD_BEEF,
                            host_id: host.clone(),
                            commit: dataset::DEFAULT_COMMIT.into(),
                            subdir: "shipped".into(),
                            jobs: jobs_per_host,
                        })?;
                    }
                    dataset::generate(&dataset::Spec {
                        data_root,
                        count: options.episodes,
                        bytes: options.bytes,
                        seed,
                        host_id: host.clone(),
                        commit: dataset::DEFAULT_COMMIT.into(),
                        subdir: "episodes".into(),
                        jobs: jobs_per_host,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("generator panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let raw_bytes: u64 = generated.iter().map(|g| g.bytes).sum();

    let receiver_dir = work.join("receiver");
    fs::create_dir_all(&receiver_dir)
        .with_context(|| format!("creating {}", receiver_dir.display()))?;
    let receiver_toml = receiver_dir.join("receiver.toml");
    fs::write(
        &receiver_toml,
        receiver_config(
            &receiver_dir,
            &pki,
            (options.hosts * options.max_uploads_per_host).max(64),
            options.max_uploads_per_host,
        ),
    )
    .with_context(|| format!("writing {}", receiver_toml.display()))?;
    let (receiver, url) = start_receiver(
        &options.receiver_bin,
        &receiver_toml,
        &receiver_dir.join("stderr.log"),
    )?;
    let index = receiver_dir.join("index.jsonl");

    let mut configs = Vec::new();
    for host in &hosts {
        let host_dir = work.join("hosts").join(host);
        let config = host_dir.join("shipper.toml");
        fs::write(
            &config,
            shipper_config(host, &host_dir, &url, &pki, &options.scan_interval),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        configs.push((host.clone(), host_dir, config));
    }

    let host_set: HashSet<String> = hosts.iter().cloned().collect();
    let expected = options.hosts as u64 * options.episodes;
    let mut report = FleetReport {
        hosts: options.hosts,
        episodes_per_host: options.episodes,
        mode: format!("{:?}", options.mode).to_lowercase(),
        raw_bytes,
        expected_rows: expected,
        work_dir: work.display().to_string(),
        ..FleetReport::default()
    };
    let command = match options.mode {
        Mode::Once => "once",
        Mode::Run => "run",
    };
    let started = Instant::now();
    let mut shippers = Vec::new();
    for (host, dir, config) in &configs {
        let stdout = fs::File::create(dir.join(format!("{command}.stdout")))
            .with_context(|| format!("creating {}", dir.display()))?;
        let stderr = fs::File::create(dir.join(format!("{command}.stderr")))
            .with_context(|| format!("creating {}", dir.display()))?;
        let child = Command::new(&options.shipper_bin)
            .arg("--config")
            .arg(config)
            .arg(command)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", options.shipper_bin.display()))?;
        shippers.push(Guard::new(format!("episode-shipper {host}"), child));
    }
    let deadline = started + options.timeout;
    match options.mode {
        Mode::Once => {
            let mut shipped = 0u64;
            for (guard, (host, dir, _)) in shippers.iter_mut().zip(&configs) {
                let child = guard.child.as_mut().expect("started");
                let status = loop {
                    if let Some(status) = child.try_wait().context("waiting for a shipper")? {
                        break status;
                    }
                    if Instant::now() > deadline {
                        bail!("{} still running after {:?}", guard.name, options.timeout);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                };
                if !status.success() {
                    report.shipper_failures.push(format!(
                        "{host}: {status} (see {}/once.stderr)",
                        dir.display()
                    ));
                }
                let out = fs::read_to_string(dir.join("once.stdout")).unwrap_or_default();
                let n = out
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .and_then(|v| v.get("shipped").and_then(serde_json::Value::as_u64));
                shipped += n.unwrap_or(0);
            }
            report.elapsed_s = started.elapsed().as_secs_f64();
            report.shipped_reported = Some(shipped);
        }
        Mode::Run => {
            loop {
                let (rows, _, _) = count_rows(&index, &host_set)?;
                if rows >= expected {
                    break;
                }
                for guard in &mut shippers {
                    if let Some(status) = guard
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!("{} exited early: {status}", guard.name);
                    }
                }
                if Instant::now() > deadline {
                    bail!("only {rows} of {expected} rows after {:?}", options.timeout);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            report.elapsed_s = started.elapsed().as_secs_f64();
            probe_and_idle(options, &configs, &shippers, &index, &mut report)?;
            if options.once_runs > 0 {
                shippers.clear();
                idle_passes(options, &configs[0], &mut report)?;
            }
        }
    }
    let (rows, archive_bytes, _) = count_rows(&index, &host_set)?;
    report.index_rows = rows;
    report.archive_bytes = archive_bytes;
    report.expected_rows = expected + report.marker_to_stored_ms.len() as u64;
    report.verified = rows == report.expected_rows;
    report.episodes_per_s = expected as f64 / report.elapsed_s.max(1e-9);
    report.raw_mb_per_s = raw_bytes as f64 / 1e6 / report.elapsed_s.max(1e-9);
    drop(shippers);
    drop(receiver);
    Ok(report)
}

/// Mode `run` after the backlog: marker → row probes on the first host, then idle CPU.
fn probe_and_idle(
    options: &Options,
    configs: &[(String, PathBuf, PathBuf)],
    shippers: &[Guard],
    index: &Path,
    report: &mut FleetReport,
) -> Result<()> {
    let (host, dir, _) = &configs[0];
    let mut offset = fs::metadata(index).map_or(0, |m| m.len());
    for k in 0..options.probes {
        // Spread the probes over the scan cycle so a fixed phase can't flatter them.
        std::thread::sleep(Duration::from_millis(137 + 61 * (k as u64 % 7)));
        let staging = dir.join("probe-staging");
        let seed = 0x9120_BE00 + k as u64;
        dataset::generate(&dataset::Spec {
            data_root: staging.clone(),
            count: 1,
            bytes: 4096,
            seed,
            host_id: host.clone(),
            commit: dataset::DEFAULT_COMMIT.into(),
            subdir: "episodes".into(),
            jobs: 1,
        })?;
        // Move it in without its marker, then create the marker: the moment timed.
        let episode_id = dataset::episode_id(seed, 0);
        let from = staging.join("episodes").join(&episode_id);
        fs::remove_file(from.join("done.marker")).context("staging the probe")?;
        let to = dir.join("episodes").join(&episode_id);
        fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        let marked = Instant::now();
        fs::File::create(to.join("done.marker"))
            .with_context(|| format!("creating {}/done.marker", to.display()))?;
        let stored = wait_for_row(
            index,
            &mut offset,
            &episode_id,
            marked + Duration::from_secs(120),
        )?;
        report
            .marker_to_stored_ms
            .push(stored.duration_since(marked).as_secs_f64() * 1000.0);
    }
    if !report.marker_to_stored_ms.is_empty() {
        let mut sorted = report.marker_to_stored_ms.clone();
        sorted.sort_by(f64::total_cmp);
        report.marker_to_stored_p50_ms = percentile(&sorted, 50.0);
        report.marker_to_stored_max_ms = percentile(&sorted, 100.0);
    }
    if !options.idle.is_zero() {
        let pids: Vec<u32> = shippers.iter().filter_map(Guard::pid).collect();
        let cpu =
            |pids: &[u32]| -> Result<f64> { pids.iter().map(|p| process_cpu_seconds(*p)).sum() };
        std::thread::sleep(Duration::from_secs(1));
        let before = cpu(&pids)?;
        let t = Instant::now();
        std::thread::sleep(options.idle);
        let used = cpu(&pids)? - before;
        report.idle_cpu_percent = Some(used / t.elapsed().as_secs_f64() * 100.0);
    }
    Ok(())
}

/// `once` passes on the first host with nothing pending: wall time and the pass's
/// own `duration_ms`, medians.
fn idle_passes(
    options: &Options,
    (_, dir, config): &(String, PathBuf, PathBuf),
    report: &mut FleetReport,
) -> Result<()> {
    let mut wall = Vec::new();
    let mut pass = Vec::new();
    for _ in 0..options.once_runs {
        let started = Instant::now();
        let output = Command::new(&options.shipper_bin)
            .arg("--config")
            .arg(config)
            .args(["--log-format", "text", "once"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .with_context(|| format!("running {} once", options.shipper_bin.display()))?;
        wall.push(started.elapsed().as_secs_f64() * 1000.0);
        let text = String::from_utf8_lossy(&output.stdout);
        let value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .with_context(|| format!("no JSON result from once (data root {})", dir.display()))?;
        if let Some(ms) = value.get("duration_ms").and_then(serde_json::Value::as_f64) {
            pass.push(ms);
        }
    }
    report.idle_once_wall_ms = crate::stats::median(&wall);
    report.idle_pass_ms = crate::stats::median(&pass);
    Ok(())
}

/// A work directory under the system temp dir, removed on drop unless kept.
struct TempDir(PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("loadgen-fleet-{}-{attempt}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("cannot create a work directory under {}", base.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_every_file_and_quote_paths() {
        let pki = Pki {
            dir: PathBuf::from("/w/pki"),
        };
        let s = shipper_config(
            "lab2",
            Path::new("/w/hosts/lab2"),
            "https://127.0.0.1:1",
            &pki,
            "5s",
        );
        let v: toml::Value = toml::from_str(&s).unwrap();
        assert_eq!(v["host_id"].as_str(), Some("lab2"));
        assert_eq!(
            v["receiver"]["client_cert"].as_str(),
            Some("/w/pki/lab2.pem")
        );
        assert_eq!(
            v["receiver"]["client_key"].as_str(),
            Some("/w/pki/lab2.key")
        );
        assert_eq!(v["receiver"]["ca_bundle"].as_str(), Some("/w/pki/ca.pem"));
        let r = receiver_config(Path::new("/w/r \"q\""), &pki, 64, 4);
        let v: toml::Value = toml::from_str(&r).unwrap();
        assert_eq!(v["index_path"].as_str(), Some("/w/r \"q\"/index.jsonl"));
        assert_eq!(v["tls"]["client_ca"].as_str(), Some("/w/pki/ca.pem"));
        assert_eq!(v["max_uploads_per_host"].as_integer(), Some(4));
    }

    #[test]
    fn a_lent_directory_comes_back_without_what_the_run_added() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("cache/shipped");
        for name in ["a", "b"] {
            fs::create_dir_all(home.join(name)).unwrap();
        }
        let here = dir.path().join("work/hosts/lab1/shipped");
        let lent = Lent::take(&home, &here).unwrap();
        assert!(!home.exists() && here.join("a").exists());
        fs::create_dir_all(here.join("c/x")).unwrap();
        lent.give_back().unwrap();
        let mut names: Vec<_> = fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(!here.exists());
    }

    #[test]
    fn reads_cpu_times_from_proc_stat() {
        let line = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(line, 100.0), Some(3.0));
        assert!(process_cpu_seconds(std::process::id()).is_ok());
    }

    #[test]
    fn counts_distinct_rows_of_the_given_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.jsonl");
        fs::write(
            &index,
            "{\"host_id\":\"lab1\",\"episode_id\":\"a\",\"bytes\":5}\n\
             {\"host_id\":\"lab1\",\"episode_id\":\"a\",\"bytes\":5}\n\
             {\"host_id\":\"lab2\",\"episode_id\":\"a\",\"bytes\":7}\n\
             {\"host_id\":\"other\",\"episode_id\":\"b\",\"bytes\":9}\n{torn",
        )
        .unwrap();
        let hosts: HashSet<String> = ["lab1".into(), "lab2".into()].into();
        let (rows, bytes, _) = count_rows(&index, &hosts).unwrap();
        assert_eq!((rows, bytes), (2, 12));
    }
}
