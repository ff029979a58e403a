//! `episode-loadgen`: the benchmark tools of issue 6.
//!
//! Thin command line over the modules: `gen` (datasets like gen_episodes.py),
//! `put` (N concurrent mTLS clients against any URL template), `fleet` (one
//! receiver, H shippers), `sink` (a trivial endpoint to calibrate `put`), `pki`
//! (throwaway certificates), `gen-index` (a million-row receiver state) and
//! `startup` (time to a server's readiness line). Exit codes: 0 ok, 1 failure,
//! 2 bad arguments (clap). Benchmarks, not tests: nothing here judges a number.

mod dataset;
mod fleet;
mod index;
mod pki;
mod put;
mod sink;
mod startup;
mod stats;
mod template;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use episode_common::{ByteSize, Dur};

#[derive(Parser, Debug)]
#[command(
    name = "episode-loadgen",
    version,
    about = "Benchmark tools for the episode shipper and receiver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a data root of finished episodes (the shape of gen_episodes.py).
    Gen(GenArgs),
    /// Drive a receiver (or any URL) with N concurrent keep-alive clients PUTting bodies.
    Put(PutArgs),
    /// One receiver, H hosts each with its own shipper; time until all is stored.
    Fleet(FleetArgs),
    /// A trivial endpoint that discards bodies and answers 201 (calibrates `put`).
    Sink(SinkArgs),
    /// Write a throwaway PKI: CA, loopback server certificate, client certificates.
    Pki(PkiArgs),
    /// Write a receiver index of many rows (and empty archives) directly.
    GenIndex(GenIndexArgs),
    /// Time a server from exec to its `listening on` line, several runs.
    Startup(StartupArgs),
}

fn parse_size(s: &str) -> Result<u64, String> {
    ByteSize::parse(s)
        .map(ByteSize::get)
        .map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    Dur::parse(s).map(Dur::get).map_err(|e| e.to_string())
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

#[derive(Args, Debug)]
struct GenArgs {
    data_root: PathBuf,
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Telemetry bytes per episode ("100MB", "5000").
    #[arg(long, default_value = "1000000", value_parser = parse_size)]
    bytes: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "lab1")]
    host_id: String,
    #[arg(long, default_value = dataset::DEFAULT_COMMIT)]
    commit: String,
    /// Threads writing episodes (the output does not depend on it).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("stop").required(true).args(["requests", "duration"])))]
struct PutArgs {
    /// Free-form URL with `{host}` and `{id}`, e.g.
    /// 'https://127.0.0.1:8443/v1/episodes/{host}/{id}' or nginx's '.../{host}/{id}.tar.zst'.
    #[arg(long)]
    url_template: String,
    /// CA bundle to trust (default: the system's).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    #[arg(long)]
    bearer_token_file: Option<PathBuf>,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Body size ("4096", "256MiB").
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Total requests to send (after the warm-up).
    #[arg(long)]
    requests: Option<u64>,
    /// How long to send ("10s").
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Requests per client before the clock starts (they open the connections).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// The host id in `{host}` and X-Host-Id.
    #[arg(long, default_value = "lab1")]
    host: String,
    #[arg(long, default_value = dataset::DEFAULT_COMMIT)]
    commit: String,
    /// Prefix of the episode ids (default: unique per run).
    #[arg(long)]
    id_prefix: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct FleetArgs {
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Episodes per host.
    #[arg(long, default_value_t = 100)]
    episodes: u64,
    /// Telemetry bytes per episode.
    #[arg(long, default_value = "1MB", value_parser = parse_size)]
    bytes: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `once`: one `episode-shipper once` per host; `run`: the daemons, until all is stored.
    #[arg(long, default_value = "once", value_parser = ["once", "run"])]
    mode: String,
    /// Work directory (kept); default a temp dir, removed unless --keep.
    #[arg(long)]
    work: Option<PathBuf>,
    #[arg(long)]
    keep: bool,
    /// Default: next to this executable.
    #[arg(long)]
    receiver_bin: Option<PathBuf>,
    /// Default: next to this executable.
    #[arg(long)]
    shipper_bin: Option<PathBuf>,
    /// The shippers' `scan_interval`.
    #[arg(long, default_value = "5s")]
    scan_interval: String,
    /// The receiver's `max_uploads_per_host`.
    #[arg(long, default_value_t = 4)]
    max_uploads_per_host: usize,
    /// Tiny episodes put straight into each host's shipped/ first (an old host).
    #[arg(long, default_value_t = 0)]
    preshipped: u64,
    /// Lend DIR/shipped/ (by rename) to the first host instead; given back afterwards.
    #[arg(long, requires = "work", conflicts_with = "preshipped")]
    preshipped_dir: Option<PathBuf>,
    /// Mode `run`: after --idle, stop the daemons and time this many idle `once` passes.
    #[arg(long, default_value_t = 0)]
    once_runs: usize,
    /// Mode `run`: fresh episodes timed from done.marker to their index row.
    #[arg(long, default_value_t = 0)]
    probes: usize,
    /// Mode `run`: sample the shippers' CPU for this long once idle ("0s" = skip).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    idle: Duration,
    /// Give up after this long.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Server certificate (PEM); with --key, serve HTTPS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Require client certificates chaining to this CA.
    #[arg(long, requires = "cert")]
    client_ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PkiArgs {
    dir: PathBuf,
    /// A client certificate for this host id (repeatable).
    #[arg(long = "client")]
    clients: Vec<String>,
}

#[derive(Args, Debug)]
struct GenIndexArgs {
    /// The index file to write (replaced).
    #[arg(long)]
    index: PathBuf,
    /// Also create an empty `<host>/<episode>.tar.zst` per row under this store root.
    #[arg(long)]
    store: Option<PathBuf>,
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    #[arg(long, default_value_t = 100)]
    hosts: u64,
    #[arg(long, default_value = "idx")]
    host_prefix: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct StartupArgs {
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The readiness line starts with this.
    #[arg(long, default_value = "listening on")]
    expect: String,
    /// Append the server's stderr here (default: discarded).
    #[arg(long)]
    stderr: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// The server command line.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    Ok(dir.join(name))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Gen(a) => {
            let started = Instant::now();
            let generated = dataset::generate(&dataset::Spec {
                data_root: a.data_root.clone(),
                count: a.count,
                bytes: a.bytes,
                seed: a.seed,
                host_id: a.host_id,
                commit: a.commit,
                subdir: "episodes".into(),
                jobs: a.jobs.unwrap_or_else(default_jobs),
            })?;
            let secs = started.elapsed().as_secs_f64();
            if a.json {
                print_json(&serde_json::json!({
                    "episodes": generated.episodes,
                    "bytes": generated.bytes,
                    "elapsed_s": secs,
                    "mb_per_s": generated.bytes as f64 / 1e6 / secs.max(1e-9),
                }))?;
            } else {
                println!(
                    "wrote {} episodes ({:.1} MB) under {} in {secs:.2} s",
                    generated.episodes,
                    generated.bytes as f64 / 1e6,
                    a.data_root.join("episodes").display()
                );
            }
        }
        Command::Put(a) => {
            let template = template::Template::parse(&a.url_template)
                .with_context(|| format!("--url-template {:?}", a.url_template))?;
            let stop = match (a.requests, a.duration) {
                (Some(n), None) => put::Stop::Requests(n),
                (None, Some(d)) => put::Stop::Duration(d),
                _ => bail!("give exactly one of --requests and --duration"),
            };
            let options = put::Options {
                template,
                ca: a.ca,
                cert: a.cert,
                key: a.key,
                bearer_token_file: a.bearer_token_file,
                concurrency: a.concurrency,
                size: a.size,
                stop,
                warmup: a.warmup,
                host: a.host,
                commit: a.commit,
                id_prefix: a.id_prefix,
                timeout: a.timeout,
            };
            let report = runtime(a.threads)?.block_on(put::run(options))?;
            if a.json {
                print_json(&report)?;
            } else {
                println!("{report}");
            }
        }
        Command::Fleet(a) => {
            let options = fleet::Options {
                hosts: a.hosts,
                episodes: a.episodes,
                bytes: a.bytes,
                seed: a.seed,
                mode: if a.mode == "run" {
                    fleet::Mode::Run
                } else {
                    fleet::Mode::Once
                },
                keep: a.keep || a.work.is_some(),
                work: a.work,
                receiver_bin: a
                    .receiver_bin
                    .map_or_else(|| sibling("episode-receiver"), Ok)?,
                shipper_bin: a
                    .shipper_bin
                    .map_or_else(|| sibling("episode-shipper"), Ok)?,
                scan_interval: a.scan_interval,
                max_uploads_per_host: a.max_uploads_per_host,
                preshipped: a.preshipped,
                preshipped_dir: a.preshipped_dir,
                once_runs: a.once_runs,
                probes: a.probes,
                idle: a.idle,
                timeout: a.timeout,
            };
            let report = fleet::run(&options)?;
            if a.json {
                print_json(&report)?;
            } else {
                println!(
                    "{} hosts x {} episodes ({:.1} MB raw, {:.1} MB archives): {:.2} s, \
                     {:.1} episodes/s, {:.1} MB/s raw; index {} of {} rows{}",
                    report.hosts,
                    report.episodes_per_host,
                    report.raw_bytes as f64 / 1e6,
                    report.archive_bytes as f64 / 1e6,
                    report.elapsed_s,
                    report.episodes_per_s,
                    report.raw_mb_per_s,
                    report.index_rows,
                    report.expected_rows,
                    if report.verified {
                        " (verified)"
                    } else {
                        " (MISMATCH)"
                    },
                );
                if let (Some(p50), Some(max)) = (
                    report.marker_to_stored_p50_ms,
                    report.marker_to_stored_max_ms,
                ) {
                    println!("done.marker -> stored: p50 {p50:.1} ms, max {max:.1} ms");
                }
                if let Some(cpu) = report.idle_cpu_percent {
                    println!("idle shippers: {cpu:.2}% of one core in total");
                }
                if let (Some(wall), Some(pass)) = (report.idle_once_wall_ms, report.idle_pass_ms) {
                    println!("idle `once`: {wall:.1} ms whole process, pass {pass:.0} ms");
                }
                for failure in &report.shipper_failures {
                    println!("shipper failed: {failure}");
                }
            }
            if !report.verified {
                bail!(
                    "the index has {} rows for these hosts, expected {} (work dir {})",
                    report.index_rows,
                    report.expected_rows,
                    report.work_dir
                );
            }
        }
        Command::Sink(a) => {
            let tls = match (a.cert, a.key) {
                (Some(cert), Some(key)) => Some(sink::TlsFiles {
                    cert,
                    key,
                    client_ca: a.client_ca,
                }),
                _ => None,
            };
            runtime(None)?.block_on(sink::run(a.listen, tls))?;
        }
        Command::Pki(a) => {
            let pki = pki::write_pki(&a.dir, &a.clients)?;
            println!("wrote a PKI under {}", pki.dir.display());
        }
        Command::GenIndex(a) => {
            let started = Instant::now();
            let rows = index::generate(&index::Spec {
                index_path: a.index.clone(),
                store_root: a.store,
                rows: a.rows,
                hosts: a.hosts,
                host_prefix: a.host_prefix,
                seed: a.seed,
                jobs: default_jobs(),
            })?;
            println!(
                "wrote {rows} rows to {} in {:.1} s",
                a.index.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Startup(a) => {
            let timing = startup::run(&startup::Options {
                command: a.command,
                runs: a.runs,
                expect: a.expect,
                stderr: a.stderr,
            })?;
            if a.json {
                print_json(&timing)?;
            } else {
                println!(
                    "start-up: median {:.3} s (min {:.3}, max {:.3}) over {} runs",
                    timing.median_s,
                    timing.min_s,
                    timing.max_s,
                    timing.runs_s.len()
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("episode-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses() {
        Cli::command_debug_assert();
        let cli = Cli::try_parse_from([
            "episode-loadgen",
            "put",
            "--url-template",
            "https://127.0.0.1:1/v1/episodes/{host}/{id}",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "-c",
            "64",
            "--size",
            "4KiB",
            "--duration",
            "10s",
            "--json",
        ])
        .unwrap();
        let Command::Put(put) = cli.command else {
            panic!("not put")
        };
        assert_eq!(put.concurrency, 64);
        assert_eq!(put.size, 4096);
        assert_eq!(put.duration, Some(Duration::from_secs(10)));
        assert_eq!(put.requests, None);

        let missing_stop = Cli::try_parse_from([
            "episode-loadgen",
            "put",
            "--url-template",
            "x/{id}",
            "--size",
            "1",
        ]);
        assert!(missing_stop.is_err());
        let cert_without_key = Cli::try_parse_from([
            "episode-loadgen",
            "put",
            "--url-template",
            "x/{id}",
            "--size",
            "1",
            "--requests",
            "1",
            "--cert",
            "c.pem",
        ]);
        assert!(cert_without_key.is_err());

        let cli = Cli::try_parse_from([
            "episode-loadgen",
            "gen",
            "/tmp/d",
            "--count",
            "4",
            "--bytes",
            "100MB",
            "--seed",
            "3",
        ])
        .unwrap();
        let Command::Gen(g) = cli.command else {
            panic!("not gen")
        };
        assert_eq!((g.count, g.bytes, g.seed), (4, 100_000_000, 3));

        let cli = Cli::try_parse_from([
            "episode-loadgen",
            "startup",
            "--runs",
            "3",
            "--",
            "episode-receiver",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::Startup(s) = cli.command else {
            panic!("not startup")
        };
        assert_eq!(s.command, ["episode-receiver", "--listen", "127.0.0.1:0"]);
    }

    use clap::CommandFactory as _;

    impl Cli {
        fn command_debug_assert() {
            Cli::command().debug_assert();
        }
    }
}
