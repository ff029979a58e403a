//! The command line of `episode-shipper`, as a clap definition in the library so
//! the man page and shell completions are generated from the very parser the binary
//! uses (`tools/pkgdocs`). Parsing only: `main.rs` acts on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use episode_common::logging::LogFormat;

use crate::config;

#[derive(Parser)]
#[command(
    name = "episode-shipper",
    version,
    about = "Ships finished episodes to the collector, each exactly once",
    long_about = "Ships finished episodes to the collector, each exactly once. A recorder writes \
                  each episode as a directory under <data_root>/episodes/ with done.marker last; \
                  the shipper packs it (deterministic tar + zstd), PUTs it over mTLS with its \
                  sha256 and, by the answer, moves it to shipped/ or quarantine/, or holds or \
                  backs off. Runs under systemd as episode-shipper.service.",
    after_long_help = concat!(
        "GETTING STARTED:\n",
        "  1. Edit /etc/episode-shipper/shipper.toml: host_id, and in\n",
        "     [receiver] url, ca_bundle, client_cert, client_key.\n",
        "  2. episode-shipper check      the config and data root\n",
        "  3. episode-shipper ping       the receiver, with our credentials\n",
        "  4. systemctl enable --now episode-shipper\n",
        "  5. episode-shipper status     backlog, quarantine, hold\n",
        "     episode-doctor             what is wrong, and the fix\n",
        "\nFILES:\n",
        "  /etc/episode-shipper/shipper.toml  the config (a commented example)\n",
        "  /var/lib/episode-shipper/          data_root: episodes/, outbox/,\n",
        "                                     shipped/, quarantine/, state/\n",
        "\nEXIT STATUS:\n",
        "  0 ok, 1 runtime failure, 78 bad configuration (the message names\n",
        "  the file and the key).\n",
        "\nSEE ALSO:\n",
        "  episode-doctor(1), episode-receiver(1), journalctl -u episode-shipper"
    )
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH, env = "EPISODE_SHIPPER_CONFIG")]
    pub config: PathBuf,
    /// auto (journal under systemd, text otherwise), text or json.
    #[arg(long, global = true, default_value = "auto")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
    Check {
        /// Print {"ok", "lines": [{"level", "message"}…]} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move quarantined episodes back to episodes/.
    Requeue(RequeueArgs),
    /// Remove quarantined and shipped episodes older than their keep_days now, as
    /// the daemon does every quarantine.cleanup_interval.
    Cleanup {
        /// Only list what would be removed; change nothing (works while the daemon runs).
        #[arg(long)]
        dry_run: bool,
        /// Print {"dry_run", "quarantine": [..], "shipped": [..]} instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub which: Which,
    /// Only list what would be moved back; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print {"dry_run", "requeued": [..], "problems": [..]} instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// Episode ids.
    pub ids: Vec<String>,
    /// Every quarantined episode.
    #[arg(long)]
    pub all: bool,
    /// Those quarantined with this HTTP status (e.g. 412).
    #[arg(long)]
    pub status: Option<u16>,
}
