//! `episode-doctor [--config F] [--json] [--since 10min] [--unit U] [--journal-file F]`.
//!
//! Thin: parses the command line, runs `doctor::diagnose`, prints the table (or
//! `--json`) and exits 0 when no row is red, 1 when one is, 2 when the doctor
//! itself could not run (bad arguments, no runtime). Holds no checks itself.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use episode_doctor::cli::Cli;
use episode_doctor::doctor::{Options, diagnose};
use episode_doctor::report::use_colour;

/// Exit code when the doctor itself could not run.
const EXIT_DOCTOR: u8 = 2;

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
