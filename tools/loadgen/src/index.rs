//! `gen-index`: a receiver state with many stored episodes, written directly, for
//! start-up and lookup benchmarks at a million rows.
//!
//! Owns writing an index file of `IndexRow` JSONL lines (the row format of
//! receiver.md, serialized with the shared `episode_common::wire::IndexRow`, so it
//! cannot drift from what the receiver parses) and, optionally, one empty archive
//! per row under `store/<host>/<episode>.tar.zst`. The receiver's start-up
//! reconciliation reads the store's names only, so empty files cost the scan what
//! real archives would, while a store without them would make every row "missing"
//! and turn start-up into a report of a million errors. Rows are spread evenly
//! over `hosts` host ids `<prefix>0..`. Deterministic per seed; not a receiver: it
//! never opens the receiver's files while one runs.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
use episode_common::wire::{ARCHIVE_SUFFIX, IndexRow, format_rfc3339};
use episode_common::{EpisodeId, HostId, Sha256};

use crate::dataset::{DEFAULT_COMMIT, Rng, ulid_like};

#[derive(Debug, Clone)]
pub struct Spec {
    pub index_path: PathBuf,
    pub store_root: Option<PathBuf>,
    pub rows: u64,
    pub hosts: u64,
    pub host_prefix: String,
    pub seed: u64,
    pub jobs: usize,
}

/// The host of row `i`.
pub fn host_of(prefix: &str, hosts: u64, i: u64) -> String {
    format!("{prefix}{}", i % hosts.max(1))
}

fn row(spec: &Spec, rng: &mut Rng, i: u64) -> Result<IndexRow> {
    // Ids one second apart, from 2026-09-21 on.
    let t_ms = 1_790_000_000_000 + i * 1000;
    let episode_id = ulid_like(rng, t_ms);
    let host = host_of(&spec.host_prefix, spec.hosts, i);
    let mut digest = || {
        let mut d = [0u8; 32];
        rng.fill(&mut d);
        Sha256(d)
    };
    let (sha256, tar_sha256) = (digest(), digest());
    let at = |s: u64| {
        time::OffsetDateTime::from_unix_timestamp(s as i64)
            .map(format_rfc3339)
            .context("timestamp")
    };
    Ok(IndexRow {
        host_id: HostId::new(&host).with_context(|| format!("host id {host:?}"))?,
        episode_id: EpisodeId::new(&episode_id).context("episode id")?,
        sha256,
        tar_sha256: Some(tar_sha256),
        bytes: rng.range(1000, 200_000_000),
        code_commit: Some(DEFAULT_COMMIT.into()),
        started_at: Some(at(t_ms / 1000)?),
        received_at: at(t_ms / 1000 + 900)?,
        client: Some(host),
    })
}

/// Writes the index (and the empty archives); returns the rows written.
pub fn generate(spec: &Spec) -> Result<u64> {
    if let Some(parent) = spec
        .index_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = File::create(&spec.index_path)
        .with_context(|| format!("creating {}", spec.index_path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rng = Rng::new(spec.seed);
    let mut paths: Vec<(String, String)> = Vec::new();
    for i in 0..spec.rows {
        let row = row(spec, &mut rng, i)?;
        serde_json::to_writer(&mut out, &row)
            .with_context(|| format!("writing {}", spec.index_path.display()))?;
        out.write_all(b"\n")
            .with_context(|| format!("writing {}", spec.index_path.display()))?;
        if spec.store_root.is_some() {
            paths.push((row.host_id.to_string(), row.episode_id.to_string()));
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", spec.index_path.display()))?;
    if let Some(store) = &spec.store_root {
        touch_archives(store, &paths, spec.jobs)?;
    }
    Ok(spec.rows)
}

fn touch_archives(store: &Path, paths: &[(String, String)], jobs: usize) -> Result<()> {
    let mut hosts: Vec<&str> = paths.iter().map(|(h, _)| h.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    for host in hosts {
        let dir = store.join(host);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let next = AtomicUsize::new(0);
    const BATCH: usize = 4096;
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..jobs.clamp(1, 16))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let start = next.fetch_add(BATCH, Ordering::Relaxed);
                        if start >= paths.len() {
                            return Ok(());
                        }
                        for (host, episode) in &paths[start..(start + BATCH).min(paths.len())] {
                            let path = store.join(host).join(format!("{episode}{ARCHIVE_SUFFIX}"));
                            File::create(&path)
                                .with_context(|| format!("creating {}", path.display()))?;
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("archive writer panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_as_index_rows_and_archives_match_them() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            index_path: dir.path().join("index.jsonl"),
            store_root: Some(dir.path().join("store")),
            rows: 50,
            hosts: 3,
            host_prefix: "idx".into(),
            seed: 1,
            jobs: 2,
        };
        assert_eq!(generate(&spec).unwrap(), 50);
        let text = fs::read_to_string(&spec.index_path).unwrap();
        let rows: Vec<IndexRow> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 50);
        let mut keys: Vec<_> = rows
            .iter()
            .map(|r| (r.host_id.to_string(), r.episode_id.to_string()))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 50, "keys are unique");
        for (host, episode) in &keys {
            let p = dir
                .path()
                .join("store")
                .join(host)
                .join(format!("{episode}.tar.zst"));
            assert!(p.exists(), "{}", p.display());
        }
        assert_eq!(host_of("idx", 3, 4), "idx1");
    }
}
