//! `episode-receiver [--config F] [--listen ADDR] [run|check|index]`.
//!
//! Thin: parses the command line, loads the config (exit 78 with the key named when
//! it is wrong), prepares the store, prints `listening on <url>` as the first stdout
//! line, tells systemd READY=1, and serves until SIGTERM/SIGINT. Exit codes: 0 ok,
//! 1 runtime failure (or `check` found problems), 78 bad configuration.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser as _;
use episode_common::logging;
use episode_common::{EXIT_CONFIG, EXIT_FAILURE, Event};
use episode_receiver::cli::{Cli, Command, IndexArgs};
use episode_receiver::config::Config;
use episode_receiver::query::{self, Query, Source};
use episode_receiver::{StartError, check, server};

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "episode-receiver");
    // A copy of an index is read without a config.
    if let Some(Command::Index(args)) = &cli.command
        && let Some(path) = &args.index
    {
        return index(&Source::Jsonl(path.clone()), args);
    }
    let json = matches!(cli.command, Some(Command::Check { json: true, .. }));
    let mut config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("episode-receiver: {e}");
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
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { all, json } => {
            if let Some(listen) = cli.listen {
                config.listen = listen;
            }
            let mut text = Vec::new();
            let depth = match all {
                true => episode_receiver::reconcile::Depth::Digests,
                false => episode_receiver::reconcile::Depth::Sizes,
            };
            let verdict = check::run(&config, &cli.config, depth, &mut text);
            let text = String::from_utf8_lossy(&text);
            let (ok, error, code) = match &verdict {
                Ok(check::Verdict::Ok) => (true, None, ExitCode::SUCCESS),
                Ok(check::Verdict::Problems) => (false, None, exit(EXIT_FAILURE)),
                Err(e) => (false, Some(e.as_str()), exit(EXIT_CONFIG)),
            };
            if json {
                println!("{}", episode_common::report::check_json(ok, &text, error));
            } else {
                print!("{text}");
            }
            if let Some(e) = error {
                eprintln!("episode-receiver: {e}");
            }
            code
        }
        Command::Index(args) => index(&Source::Jsonl(config.index_path.clone()), &args),
        Command::Run => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("episode-receiver: cannot start the runtime: {e}");
                    return exit(EXIT_FAILURE);
                }
            };
            // `--listen` is kept out of the config, so a SIGHUP that reads the
            // file again does not see it as a change of `listen`.
            let listen = cli.listen.unwrap_or(config.listen);
            runtime.block_on(serve(config, cli.config, listen))
        }
    }
}

/// `index`: the query's rows as a table or JSON lines. Exit 78 for a bad argument
/// (named), 1 when the index cannot be read.
fn index(source: &Source, args: &IndexArgs) -> ExitCode {
    let now = time::OffsetDateTime::now_utc();
    let when = |flag: &str, text: &Option<String>| match text {
        None => Ok(None),
        Some(t) => query::parse_when(t, now)
            .map(Some)
            .map_err(|e| format!("--{flag}: {e}")),
    };
    let host_id = match args
        .host
        .as_deref()
        .map(episode_common::HostId::new)
        .transpose()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("episode-receiver: --host: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    let (since, until) = match (when("since", &args.since), when("until", &args.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("episode-receiver: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    let query = Query {
        host_id,
        since,
        until,
        limit: args.limit,
    };
    match source.query(&query) {
        Ok(answer) => {
            for (line, error) in &answer.bad_lines {
                eprintln!(
                    "episode-receiver: index line {line} is not a valid row, skipped: {error}"
                );
            }
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            let written = if args.json {
                query::write_json_lines(&answer.hits, &mut stdout)
            } else {
                query::write_table(&answer.hits, &mut stdout)
            };
            match written.and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("episode-receiver: writing to stdout: {e}");
                    exit(EXIT_FAILURE)
                }
            }
        }
        Err(e) => {
            eprintln!("episode-receiver: {e}");
            exit(EXIT_FAILURE)
        }
    }
}

async fn serve(config: Config, config_path: PathBuf, listen: SocketAddr) -> ExitCode {
    let metrics_listen = config.metrics_listen;
    let opened =
        tokio::task::spawn_blocking(move || episode_receiver::open(config, &config_path)).await;
    let (state, report) = match opened {
        Ok(Ok(v)) => v,
        Ok(Err(e @ StartError::Config(_))) => {
            eprintln!("episode-receiver: {}", e.chain());
            return exit(EXIT_CONFIG);
        }
        Ok(Err(e)) => {
            eprintln!("episode-receiver: {}", e.chain());
            return exit(EXIT_FAILURE);
        }
        Err(e) => {
            eprintln!("episode-receiver: start-up failed: {e}");
            return exit(EXIT_FAILURE);
        }
    };
    for (host_id, episode_id) in &report.reconciled {
        tracing::warn!(event = %Event::Reconciled, host_id = %host_id, episode_id = %episode_id, "archive had no index row; row added");
    }
    if !report.missing.is_empty() {
        let first: Vec<String> = report
            .missing
            .iter()
            .take(10)
            .map(|(h, e)| format!("{h}/{e}"))
            .collect();
        tracing::error!(
            event = %Event::ArchiveMissing,
            n_missing = report.missing.len(),
            first = ?first,
            "index rows without an archive in the store: restore the archives from backup or investigate"
        );
    }
    if report.superseded > 0 {
        tracing::info!(
            event = %Event::IndexSupersededRows,
            n_rows = report.superseded,
            "episodes restored after a lost archive have a later row; the last row is used"
        );
    }
    if report.incoming_removed > 0 {
        tracing::info!(
            event = %Event::IncomingEmptied,
            n_files = report.incoming_removed,
            "partial uploads from the last run removed"
        );
    }
    let main_listener = match server::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("episode-receiver: {e}");
            return exit(EXIT_FAILURE);
        }
    };
    let metrics_listener = match metrics_listen {
        Some(addr) => match server::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("episode-receiver: metrics_listen: {e:#}");
                return exit(EXIT_FAILURE);
            }
        },
        None => None,
    };
    let bound = main_listener.local_addr().unwrap_or(listen);
    let scheme = if state.credentials.is_tls() {
        "https"
    } else {
        "http"
    };
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on {scheme}://{bound}");
        if let Some(ops) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            let _ = writeln!(stdout, "ops listening on http://{ops}");
        }
        let _ = stdout.flush();
    }
    tracing::info!(
        event = %Event::Ready,
        url = %format!("{scheme}://{bound}"),
        rows = report.rows,
        version = episode_receiver::VERSION,
    );
    let status = format!(
        "serving {scheme}://{bound}, {} episodes indexed",
        report.rows
    );
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    server::run(state, main_listener, metrics_listener, shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
