//! `episode-doctor [--config F] [--json] [--since 10min] [--unit U] [--journal-file F]`.
//!
//! Thin: parses the command line, runs `doctor::diagnose`, prints the table (or
//! `--json`) and exits 0 when no row is red, 1 when one is, 2 when the doctor
//! itself could not run (bad arguments, no runtime). Holds no checks itself.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use episode_doctor::doctor::{Options, diagnose};
use episode_doctor::report::use_colour;
use episode_doctor::since;

/// Exit code when the doctor itself could not run.
const EXIT_DOCTOR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "episode-doctor",
    version,
    about = "What is wrong with the episode shipper on this host, and the command that fixes it",
    after_help = "Exit status: 0 no row is red, 1 a row is red, 2 the doctor could not run."
)]
struct Cli {
    /// The shipper's config file.
    #[arg(long, default_value = episode_shipper::config::DEFAULT_PATH, env = "EPISODE_SHIPPER_CONFIG")]
    config: PathBuf,
    /// Print {"rows": [{"check", "level", "finding", "fix"}…], "worst"} instead of a table.
    #[arg(long)]
    json: bool,
    /// How far back to read the journal: "10min", "30s", "1h", "2d", "1h30m".
    #[arg(long, default_value = "10min", value_parser = since::parse)]
    since: Duration,
    /// The shipper's systemd unit.
    #[arg(long, default_value = episode_doctor::fixes::DEFAULT_UNIT)]
    unit: String,
    /// Read journal JSON lines (as from `journalctl -o json`), or the shipper's own text or JSON log
    /// lines, from this file instead of journalctl.
    #[arg(long)]
    journal_file: Option<PathBuf>,
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let report = diagnose(&Options {
        config: cli.config,
        since: cli.since,
        unit: cli.unit,
        journal_file: cli.journal_file,
    })?;
    let text = if cli.json {
        report.to_json() + "\n"
    } else {
        let stdout = std::io::stdout();
        let colour = use_colour(
            stdout.is_terminal(),
            std::env::var("NO_COLOR").ok().as_deref(),
            std::env::var("TERM").ok().as_deref(),
        );
        report.to_table(colour)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the report to stdout")?;
    Ok(report.exit_code())
}

fn main() -> ExitCode {
    // clap exits 2 on bad arguments, 0 on --help/--version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("episode-doctor: {e:#}");
            ExitCode::from(EXIT_DOCTOR)
        }
    }
}
