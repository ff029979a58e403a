//! The command line of `episode-doctor`, as a clap definition in the library so
//! the man page and shell completions are generated from the very parser the binary
//! uses (`tools/pkgdocs`). Parsing only: `main.rs` acts on it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "episode-doctor",
    version,
    about = "What is wrong with the episode shipper on this host, and the command that fixes it",
    after_help = "Exit status: 0 no row is red, 1 a row is red, 2 the doctor could not run."
)]
pub struct Cli {
    /// The shipper's config file.
    #[arg(long, default_value = episode_shipper::config::DEFAULT_PATH, env = "EPISODE_SHIPPER_CONFIG")]
    pub config: PathBuf,
    /// Print {"rows": [{"check", "level", "finding", "fix"}…], "worst"} instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How far back to read the journal: "10min", "30s", "1h", "2d", "1h30m".
    #[arg(long, default_value = "10min", value_parser = crate::since::parse)]
    pub since: Duration,
    /// The shipper's systemd unit.
    #[arg(long, default_value = crate::fixes::DEFAULT_UNIT)]
    pub unit: String,
    /// Read journal JSON lines (as from `journalctl -o json`), or the shipper's own text or JSON log
    /// lines, from this file instead of journalctl.
    #[arg(long)]
    pub journal_file: Option<PathBuf>,
}
