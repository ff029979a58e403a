//! `episode-receiver [--config F] [--listen ADDR] [run|check]`.
//!
//! Thin: parses the command line, loads the config (exit 78 with the key named when
//! it is wrong), prepares the store, prints `listening on <url>` as the first stdout
//! line, tells systemd READY=1, and serves until SIGTERM/SIGINT. Exit codes: 0 ok,
//! 1 runtime failure (or `check` found problems), 78 bad configuration.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use episode_common::logging::{self, LogFormat};
use episode_common::{EXIT_CONFIG, EXIT_FAILURE};
use episode_receiver::config::{self, Config};
use episode_receiver::{StartError, check, server};

#[derive(Parser)]
#[command(
    name = "episode-receiver",
    version,
    about = "The central collector of episode archives"
)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH, env = "EPISODE_RECEIVER_CONFIG")]
    config: PathBuf,
    /// Listen address, overriding `listen` in the config (port 0 picks a free one).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// auto (journal under systemd, text otherwise), text or json.
    #[arg(long, global = true, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config and report store/index consistency, read-only.
    Check,
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "episode-receiver");
    let mut config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("episode-receiver: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let mut stdout = std::io::stdout().lock();
            match check::run(&config, &cli.config, &mut stdout) {
                Ok(check::Verdict::Ok) => ExitCode::SUCCESS,
                Ok(check::Verdict::Problems) => exit(EXIT_FAILURE),
                Err(e) => {
                    eprintln!("episode-receiver: {e}");
                    exit(EXIT_CONFIG)
                }
            }
        }
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
            runtime.block_on(serve(config, cli.config))
        }
    }
}

async fn serve(config: Config, config_path: PathBuf) -> ExitCode {
    let (listen, metrics_listen) = (config.listen, config.metrics_listen);
    let opened =
        tokio::task::spawn_blocking(move || episode_receiver::open(config, &config_path)).await;
    let (state, report) = match opened {
        Ok(Ok(v)) => v,
        Ok(Err(StartError::Config(e))) => {
            eprintln!("episode-receiver: {e}");
            return exit(EXIT_CONFIG);
        }
        Ok(Err(StartError::Runtime(e))) => {
            eprintln!("episode-receiver: {e}");
            return exit(EXIT_FAILURE);
        }
        Err(e) => {
            eprintln!("episode-receiver: start-up failed: {e}");
            return exit(EXIT_FAILURE);
        }
    };
    for (host_id, episode_id) in &report.reconciled {
        tracing::warn!(host_id = %host_id, episode_id = %episode_id, "reconciled: archive had no index row; row added");
    }
    if !report.missing.is_empty() {
        let first: Vec<String> = report
            .missing
            .iter()
            .take(10)
            .map(|(h, e)| format!("{h}/{e}"))
            .collect();
        tracing::error!(
            n_missing = report.missing.len(),
            first = ?first,
            "index rows without an archive in the store: restore the archives from backup or investigate"
        );
    }
    if report.superseded > 0 {
        tracing::info!(
            n_rows = report.superseded,
            "index_superseded_rows: episodes restored after a lost archive have a later row; the last row is used"
        );
    }
    if report.incoming_removed > 0 {
        tracing::info!(
            n_files = report.incoming_removed,
            "incoming_emptied: partial uploads from the last run removed"
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
        url = %format!("{scheme}://{bound}"),
        rows = report.rows,
        version = episode_receiver::VERSION,
        "ready"
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
