//! `episode-shipper [--config F] [run|once|ping|status|check|requeue|cleanup]`: parses
//! the command line, loads the config, sets up logging and the runtime, calls the
//! library. Exit codes: 0 ok, 1 runtime failure, 78 bad configuration.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser as _;
use episode_common::logging;
use episode_common::{EXIT_CONFIG, EXIT_FAILURE};
use episode_shipper::cli::{Cli, Command, RequeueArgs};
use episode_shipper::config::Config;
use episode_shipper::quarantine::{self, Selector};
use episode_shipper::transport::Transport;
use episode_shipper::{check, daemon, layout, status};

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
    let json = matches!(cli.command, Some(Command::Check { json: true }));
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("episode-shipper: {e}");
            if json {
                let error = e.to_string();
                println!(
                    "{}",
                    episode_common::report::check_json(false, "", Some(&error))
                );
            }
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
        Command::Check { json } => {
            let mut text = Vec::new();
            let verdict = check::run(&config, &cli.config, &mut text);
            let text = String::from_utf8_lossy(&text);
            let error = verdict.as_ref().err().map(ToString::to_string);
            if json {
                println!(
                    "{}",
                    episode_common::report::check_json(verdict.is_ok(), &text, error.as_deref())
                );
            } else {
                print!("{text}");
            }
            match error {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("episode-shipper: {e}");
                    exit(EXIT_CONFIG)
                }
            }
        }
        Command::Requeue(args) => requeue(&config, args),
        Command::Cleanup { dry_run, json } => cleanup(&config, dry_run, json),
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
    let which = args.which;
    let selector = if which.all {
        Selector::All
    } else if let Some(code) = which.status {
        Selector::Status(code)
    } else {
        Selector::Ids(which.ids)
    };
    let root = layout::DataRoot::new(&config.data_root);
    let now = std::time::SystemTime::now();
    let result = if args.dry_run {
        quarantine::plan_requeue(&root, &selector, now)
    } else {
        quarantine::requeue(&root, &selector, now)
    };
    match result {
        Ok((requeued, mut problems)) => {
            // Their retry state goes too: a requeued episode starts afresh.
            if !args.dry_run
                && !requeued.is_empty()
                && let Err(e) = episode_shipper::state::forget_on_disk(&root.state, &requeued)
            {
                problems.push(format!("requeued, but their retry state stays: {e}"));
            }
            if args.json {
                let out = serde_json::json!({
                    "dry_run": args.dry_run, "requeued": requeued, "problems": problems,
                });
                println!("{out}");
            } else {
                let verb = if args.dry_run {
                    "would requeue"
                } else {
                    "requeued"
                };
                for id in &requeued {
                    println!("{verb} {id}");
                }
                if requeued.is_empty() && problems.is_empty() {
                    println!("nothing in quarantine matched");
                }
                for p in &problems {
                    eprintln!("episode-shipper: {p}");
                }
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

/// `cleanup`: the retention rule of a pass (quarantine.keep_days, shipped.keep_days)
/// applied now, under the data root's lock; `--dry-run` lists instead, lock-free.
fn cleanup(config: &Config, dry_run: bool, json: bool) -> ExitCode {
    let root = layout::DataRoot::new(&config.data_root);
    let now = std::time::SystemTime::now();
    let places = [
        ("quarantine", &root.quarantine, config.quarantine.keep_days),
        ("shipped", &root.shipped, config.shipped.keep_days),
    ];
    let _lock = if dry_run {
        None
    } else {
        if let Err(e) = root.ensure() {
            eprintln!(
                "episode-shipper: cleanup: data_root {}: {e}",
                root.root.display()
            );
            return exit(EXIT_FAILURE);
        }
        match episode_shipper::shipper::lock(&root) {
            Ok(lock) => Some(lock),
            Err(e @ episode_shipper::shipper::OpenError::Locked { .. }) => {
                eprintln!(
                    "episode-shipper: cleanup: {e}; the daemon removes these itself every \
                     quarantine.cleanup_interval (--dry-run lists them while it runs)"
                );
                return exit(EXIT_FAILURE);
            }
            Err(e) => {
                eprintln!("episode-shipper: cleanup: {e}");
                return exit(EXIT_FAILURE);
            }
        }
    };
    let mut out = serde_json::json!({ "dry_run": dry_run });
    let mut failed = false;
    for (name, dir, keep_days) in places {
        let result = if dry_run {
            quarantine::plan_prune(dir, keep_days, now)
        } else {
            quarantine::prune(dir, keep_days, now, &|| {})
        };
        let removed = match result {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                eprintln!("episode-shipper: cleanup {}: {e}", dir.display());
                failed = true;
                Vec::new()
            }
        };
        if !json {
            let verb = if dry_run { "would remove" } else { "removed" };
            for entry in &removed {
                println!("{verb} {name}/{entry}");
            }
            let rule = match keep_days {
                0 => format!("{name}.keep_days = 0 keeps them forever"),
                days => format!("older than {name}.keep_days = {days}"),
            };
            println!("{name}: {} {verb} ({rule})", removed.len());
        }
        out[name] = removed.into();
    }
    if json {
        println!("{out}");
    }
    if failed {
        exit(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}
