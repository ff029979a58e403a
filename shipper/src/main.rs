//! `episode-shipper [--config F] [run|once|ping|status|check|requeue]`.
//!
//! Thin: parses the command line, loads the config (exit 78 naming the file and key
//! when it is wrong), sets up logging and the runtime, and calls the library.
//! Exit codes: 0 ok, 1 runtime failure, 78 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use episode_common::logging::{self, LogFormat};
use episode_common::{EXIT_CONFIG, EXIT_FAILURE};
use episode_shipper::config::{self, Config};
use episode_shipper::quarantine::{self, Selector};
use episode_shipper::transport::Transport;
use episode_shipper::{check, daemon, layout, status};

#[derive(Parser)]
#[command(
    name = "episode-shipper",
    version,
    about = "Ships finished episodes to the collector, each exactly once"
)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH, env = "EPISODE_SHIPPER_CONFIG")]
    config: PathBuf,
    /// auto (journal under systemd, text otherwise), text or json.
    #[arg(long, global = true, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon loop (the default).
    Run,
    /// One pass; prints its result as one JSON object.
    Once,
    /// GET /v1/health on the receiver; exit 0 only on 200.
    Ping,
    /// Backlog, conflicts, quarantine, hold state, last success.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and on-disk state, read-only.
    Check,
    /// Move quarantined episodes back to episodes/.
    Requeue(RequeueArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RequeueArgs {
    /// Episode ids.
    ids: Vec<String>,
    /// Every quarantined episode.
    #[arg(long)]
    all: bool,
    /// Those quarantined with this HTTP status (e.g. 412).
    #[arg(long)]
    status: Option<u16>,
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "episode-shipper");
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("episode-shipper: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    if matches!(command, Command::Run | Command::Once)
        && let Err(e) = check::preflight(&config, &cli.config)
    {
        // The same validations as `check`: the two never disagree.
        eprintln!("episode-shipper: {e}");
        return exit(EXIT_CONFIG);
    }
    match command {
        Command::Run => {
            let rt = runtime();
            let result = rt.block_on(daemon::run(config, cli.config.clone()));
            rt.shutdown_timeout(Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("episode-shipper: {e}");
                    exit(EXIT_FAILURE)
                }
            }
        }
        Command::Once => {
            let rt = runtime();
            let result = rt.block_on(daemon::once(config));
            rt.shutdown_timeout(Duration::from_secs(1));
            match result {
                Ok(pass) => {
                    println!("{}", serde_json::to_string(&pass).expect("serializable"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("episode-shipper: {e}");
                    exit(EXIT_FAILURE)
                }
            }
        }
        Command::Ping => ping(&config),
        Command::Status { json } => {
            let s = status::collect(&config);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("serializable")
                );
            } else {
                print!("{}", status::render(&s));
            }
            ExitCode::SUCCESS
        }
        Command::Check => {
            let mut stdout = std::io::stdout().lock();
            match check::run(&config, &cli.config, &mut stdout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("episode-shipper: {e}");
                    exit(EXIT_CONFIG)
                }
            }
        }
        Command::Requeue(args) => requeue(&config, args),
    }
}

fn ping(config: &Config) -> ExitCode {
    let transport = Transport::new(config);
    let start = Instant::now();
    let answer = runtime().block_on(transport.health());
    let latency_ms = start.elapsed().as_millis() as u64;
    let url = format!("{}/v1/health", config.base_url());
    let (ok, out) = match answer {
        Ok(a) if a.status == 200 => {
            let mut body = match a.body {
                serde_json::Value::Object(map) => map,
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert("body".into(), other);
                    map
                }
            };
            body.insert("status".into(), 200.into());
            body.insert("latency_ms".into(), latency_ms.into());
            body.insert("url".into(), url.into());
            (true, serde_json::Value::Object(body))
        }
        Ok(a) => (
            false,
            serde_json::json!({
                "ok": false, "status": a.status, "problem_type": a.problem_type(), "error": a.error(),
                "body": a.body, "latency_ms": latency_ms, "url": url,
            }),
        ),
        Err(f) => (
            false,
            serde_json::json!({"ok": false, "status": 0, "error": f.to_string(), "latency_ms": latency_ms, "url": url}),
        ),
    };
    println!("{out}");
    if ok {
        ExitCode::SUCCESS
    } else {
        exit(EXIT_FAILURE)
    }
}

fn requeue(config: &Config, args: RequeueArgs) -> ExitCode {
    let selector = if args.all {
        Selector::All
    } else if let Some(code) = args.status {
        Selector::Status(code)
    } else {
        Selector::Ids(args.ids)
    };
    let root = layout::DataRoot::new(&config.data_root);
    match quarantine::requeue(&root, &selector, std::time::SystemTime::now()) {
        Ok((requeued, mut problems)) => {
            // Their retry state goes too: a requeued episode starts afresh.
            if !requeued.is_empty()
                && let Err(e) = episode_shipper::state::forget_on_disk(&root.state, &requeued)
            {
                problems.push(format!("requeued, but their retry state stays: {e}"));
            }
            for id in &requeued {
                println!("requeued {id}");
            }
            if requeued.is_empty() && problems.is_empty() {
                println!("nothing in quarantine matched");
            }
            for p in &problems {
                eprintln!("episode-shipper: {p}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                exit(EXIT_FAILURE)
            }
        }
        Err(e) => {
            eprintln!("episode-shipper: requeue: {e}");
            exit(EXIT_FAILURE)
        }
    }
}
