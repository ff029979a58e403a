//! The command line of `episode-receiver`, as a clap definition in the library so
//! the man page and shell completions are generated from the very parser the binary
//! uses (`tools/pkgdocs`). Parsing only: `main.rs` acts on it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use episode_common::logging::LogFormat;

use crate::config;

#[derive(Parser)]
#[command(
    name = "episode-receiver",
    version,
    about = "The central collector of episode archives",
    long_about = "The central collector of episode archives: verifies each upload's sha256 while \
                  streaming it, stores it once, durably, under <store_root>/<host>/<episode>.tar.zst \
                  and indexes it in a JSONL file. Runs under systemd as episode-receiver.service.",
    after_long_help = concat!(
        "GETTING STARTED:\n",
        "  1. Edit /etc/episode-receiver/receiver.toml: listen, and in [tls]\n",
        "     cert, key, client_ca (the CA of the shippers' certificates).\n",
        "  2. episode-receiver check     the config, the store against the index\n",
        "  3. systemctl enable --now episode-receiver\n",
        "  4. episode-receiver index --host lab1 --since 24h\n",
        "\nFILES:\n",
        "  /etc/episode-receiver/receiver.toml  the config (a commented example)\n",
        "  /var/lib/episode-receiver/           store/, incoming/, index.jsonl\n",
        "\nEXIT STATUS:\n",
        "  0 ok, 1 runtime failure (or check found problems), 78 bad\n",
        "  configuration (the message names the file and the key).\n",
        "\nSEE ALSO:\n",
        "  episode-shipper(1), episode-doctor(1), journalctl -u episode-receiver"
    )
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH, env = "EPISODE_RECEIVER_CONFIG")]
    pub config: PathBuf,
    /// Listen address, overriding `listen` in the config (port 0 picks a free one).
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// auto (journal under systemd, text otherwise), text or json.
    #[arg(long, global = true, default_value = "auto")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config and report store/index consistency, read-only.
    Check {
        /// Also read every archive and compare its sha256 with its row.
        #[arg(long)]
        all: bool,
        /// Print {"ok", "lines": [{"level", "message"}…]} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Query the index: stored episodes by host and time received, read-only.
    Index(IndexArgs),
}

#[derive(Args)]
pub struct IndexArgs {
    /// Only episodes from this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Received at or after: RFC 3339, a UTC date (2026-12-01) or an age ("24h", "7d").
    #[arg(long)]
    pub since: Option<String>,
    /// Received before: RFC 3339, a UTC date (2026-12-01) or an age ("24h", "7d").
    #[arg(long)]
    pub until: Option<String>,
    /// At most N rows: the N most recently received (still printed oldest first).
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON lines, one object per stored episode, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read this index file instead of the config's `index_path` (no config needed).
    #[arg(long)]
    pub index: Option<PathBuf>,
}
