//! `episode-receiver check`: the config (the same rules as `run`, exit 78) and the
//! store against the index, read-only: what start-up repairs, what is information,
//! what needs a person. Writes nothing and takes no lock.

use std::io::Write;

use crate::config::Config;
use crate::credentials::Credentials;
use crate::{index, reconcile};

/// What `check` concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent, or only things start-up repairs by itself.
    Ok,
    /// Something needs a person.
    Problems,
}

/// Prints the report to `out`. `Err` is a config error (exit 78), with the key named.
/// `depth` says whether archives are only sized or also hashed (`--all`).
pub fn run(
    config: &Config,
    config_path: &std::path::Path,
    depth: reconcile::Depth,
    out: &mut impl Write,
) -> Result<Verdict, String> {
    let w = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    Credentials::load(config).map_err(|e| format!("config {}: {e}", config_path.display()))?;
    config.check_paths(config_path).map_err(|e| e.to_string())?;
    w(out, format!("config {}: ok", config_path.display()));
    let scheme = match &config.tls {
        Some(t) if t.client_ca.is_some() => "https with client certificates required",
        Some(_) => "https without client certificates",
        None => "plain http (no [tls] table)",
    };
    w(out, format!("listen {}: {scheme}", config.listen));
    let mut problems = 0usize;

    let (idx, load) = match index::load(&config.index_path) {
        Ok(v) => v,
        Err(e) => {
            w(
                out,
                format!("index {}: cannot read: {e}", config.index_path.display()),
            );
            return Ok(Verdict::Problems);
        }
    };
    w(
        out,
        format!("index {}: {} rows", config.index_path.display(), load.rows),
    );
    if let Some((offset, len, parses)) = load.torn_tail {
        let fix = if parses { "completed" } else { "cut off" };
        w(
            out,
            format!("  torn last line at byte {offset} ({len} bytes): start-up will have it {fix}"),
        );
    }
    for (line, error) in &load.bad_lines {
        problems += 1;
        w(
            out,
            format!("  PROBLEM line {line} is not a valid row: {error}"),
        );
    }
    for (host_id, episode_id) in &load.conflicts {
        problems += 1;
        w(
            out,
            format!(
                "  PROBLEM {host_id}/{episode_id} has rows with different sha256: start-up keeps the one the archive matches"
            ),
        );
    }
    for (host_id, episode_id) in load
        .duplicates
        .iter()
        .filter(|k| load.conflicts.binary_search(k).is_err())
    {
        w(
            out,
            format!(
                "  note: {host_id}/{episode_id} has a later row: restored after a lost archive; the last row is used"
            ),
        );
    }

    match reconcile::scan_store(&config.store_root, &idx) {
        Ok(scan) => {
            w(
                out,
                format!(
                    "store {}: {} archives",
                    config.store_root.display(),
                    scan.archives
                ),
            );
            for (host_id, episode_id, _) in &scan.orphans {
                w(
                    out,
                    format!(
                        "  archive {host_id}/{episode_id} has no index row: start-up will add it"
                    ),
                );
            }
            for (host_id, episode_id) in &scan.missing {
                problems += 1;
                w(
                    out,
                    format!("  PROBLEM row {host_id}/{episode_id} has no archive in the store"),
                );
            }
            for path in &scan.not_regular {
                problems += 1;
                w(
                    out,
                    format!(
                        "  PROBLEM {} is not a regular file: never opened nor served; remove it",
                        path.display()
                    ),
                );
            }
            for (host_id, episode_id, mismatch) in reconcile::audit(&idx, &config.store_root, depth)
            {
                problems += 1;
                let what = match mismatch {
                    reconcile::Mismatch::Size { row, archive } => {
                        format!("the row says {row} bytes, the archive has {archive}")
                    }
                    reconcile::Mismatch::Digest { row, archive } => {
                        format!("the row says sha256 {row}, the archive's is {archive}")
                    }
                    reconcile::Mismatch::Unreadable(e) => format!("cannot read the archive: {e}"),
                };
                w(out, format!("  PROBLEM {host_id}/{episode_id}: {what}"));
            }
            if depth == reconcile::Depth::Sizes {
                w(
                    out,
                    "  sizes compared; `check --all` also compares every archive's sha256"
                        .to_owned(),
                );
            }
            for path in &scan.strays {
                w(
                    out,
                    format!("  note: {} is not <host>/<episode>.tar.zst", path.display()),
                );
            }
        }
        Err(e) => {
            problems += 1;
            w(
                out,
                format!("store {}: cannot scan: {e}", config.store_root.display()),
            );
        }
    }
    match std::fs::read_dir(&config.incoming_root) {
        Ok(entries) => {
            let n = entries.count();
            if n > 0 {
                w(
                    out,
                    format!(
                        "incoming {}: {n} leftover file(s), removed at start-up",
                        config.incoming_root.display()
                    ),
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            w(
                out,
                format!(
                    "incoming {}: absent, created at start-up",
                    config.incoming_root.display()
                ),
            );
        }
        Err(e) => {
            problems += 1;
            w(
                out,
                format!("incoming {}: {e}", config.incoming_root.display()),
            );
        }
    }
    if problems == 0 {
        w(out, "consistent".to_owned());
        Ok(Verdict::Ok)
    } else {
        w(out, format!("{problems} problem(s) need attention"));
        Ok(Verdict::Problems)
    }
}
