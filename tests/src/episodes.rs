//! Episode fixtures: directories as a recorder writes them, and archives.
//!
//! Owns writing `<data_root>/episodes/<id>/` (files, `meta.json`, `done.marker`
//! last), generating a mixed batch with sortable ULID-like ids and compressible
//! JSONL of varied sizes from a seed, packing files into a tar.zst in memory, and
//! reading an archive or a directory back into a `path → bytes` map so a test can
//! assert an archive round-trips. Deterministic for a given seed; no clock is read
//! except to place ids near "now".

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use episode_common::Sha256;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Writes `<data_root>/episodes/<id>/` with `files`, `meta.json` when `meta` is
/// given, and `done.marker` last when `done`. Returns the episode directory.
pub fn write_episode(
    data_root: &Path,
    id: &str,
    files: &[(&str, &[u8])],
    meta: Option<serde_json::Value>,
    done: bool,
) -> std::path::PathBuf {
    let dir = data_root.join("episodes").join(id);
    std::fs::create_dir_all(&dir).expect("create episode dir");
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create episode subdir");
        }
        std::fs::write(&path, bytes).expect("write episode file");
    }
    if let Some(meta) = meta {
        std::fs::write(
            dir.join("meta.json"),
            serde_json::to_vec_pretty(&meta).expect("meta json"),
        )
        .expect("write meta.json");
    }
    if done {
        std::fs::write(dir.join("done.marker"), b"").expect("write done.marker");
    }
    dir
}

const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID for `ms` (milliseconds since the epoch) with random bits from `rng`.
pub fn ulid(ms: u64, rng: &mut impl rand::Rng) -> String {
    let mut id = String::with_capacity(26);
    for i in (0..10).rev() {
        id.push(CROCKFORD[((ms >> (5 * i)) & 31) as usize] as char);
    }
    for _ in 0..16 {
        id.push(CROCKFORD[rng.random_range(0..32)] as char);
    }
    id
}

/// `n_lines` lines of plausible, compressible telemetry JSONL.
pub fn jsonl(rng: &mut impl rand::Rng, n_bytes: usize) -> Vec<u8> {
    const EVENTS: &[&str] = &[
        "grip",
        "release",
        "move",
        "idle",
        "camera_frame",
        "joint_state",
    ];
    let mut out = Vec::with_capacity(n_bytes + 200);
    let mut seq = 0u64;
    let mut t = 1_700_000_000.0f64;
    while out.len() < n_bytes {
        t += rng.random_range(0.001..0.05);
        let event = EVENTS[rng.random_range(0..EVENTS.len())];
        let line = format!(
            "{{\"t\":{t:.3},\"seq\":{seq},\"event\":\"{event}\",\"value\":{:.4},\"ok\":true}}\n",
            rng.random_range(-1.0..1.0f64)
        );
        out.extend_from_slice(line.as_bytes());
        seq += 1;
    }
    out
}

/// Writes `n` ready episodes with ULID-like ids that sort in creation order (spaced
/// one second apart, ending a minute ago) and sizes from ~1 KB to ~8 MB, each with
/// `meta.json` (`code_commit`, `started_at`), `events.jsonl`, `labels.jsonl` and
/// `telemetry-proc.jsonl`. Returns the ids, sorted.
pub fn write_mixed_episodes(data_root: &Path, n: usize, seed: u64) -> Vec<String> {
    // Mostly small, some medium, a few large.
    write_episodes_sized(data_root, n, seed, |rng| match rng.random_range(0..10) {
        0 => rng.random_range(4 << 20..8 << 20),
        1..=3 => rng.random_range(64 << 10..1 << 20),
        _ => rng.random_range(1 << 10..16 << 10),
    })
}

/// As `write_mixed_episodes`, with the size of each `telemetry-proc.jsonl` drawn by
/// `telemetry_bytes` (called once per episode, in id order, with the batch's rng).
pub fn write_episodes_sized(
    data_root: &Path,
    n: usize,
    seed: u64,
    mut telemetry_bytes: impl FnMut(&mut StdRng) -> usize,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let start_ms = now_ms - 60_000 - n as u64 * 1000;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let ms = start_ms + i as u64 * 1000;
        let id = ulid(ms, &mut rng);
        let telemetry_bytes = telemetry_bytes(&mut rng);
        let events_bytes = rng.random_range(512..4096);
        let events = jsonl(&mut rng, events_bytes);
        let labels = jsonl(&mut rng, 300);
        let telemetry = jsonl(&mut rng, telemetry_bytes);
        let meta = serde_json::json!({
            "episode_id": id,
            "code_commit": format!("{:08x}", rng.random::<u32>()),
            "started_at": ms / 1000,
            "robot": "lab-arm",
        });
        write_episode(
            data_root,
            &id,
            &[
                ("events.jsonl", events.as_slice()),
                ("labels.jsonl", labels.as_slice()),
                ("telemetry-proc.jsonl", telemetry.as_slice()),
            ],
            Some(meta),
            true,
        );
        ids.push(id);
    }
    ids
}

/// `len` pseudo-random bytes (splitmix64 seeded by `salt`) that zstd cannot
/// shrink: an archive as large as its content, so an upload takes time.
pub fn noise(len: usize, salt: u64) -> Vec<u8> {
    let mut state = salt;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An archive made in memory.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The tar.zst bytes.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes` (for `Repr-Digest`).
    pub sha256: Sha256,
    /// sha256 of the uncompressed tar stream (for `X-Tar-Digest`).
    pub tar_sha256: Sha256,
}

/// Packs `files` as `<id>/<name>` entries (in the given order, mode 0644, mtime 0)
/// into a zstd-compressed tar.
pub fn pack(id: &str, files: &[(&str, &[u8])]) -> Packed {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("{id}/{name}"), *data)
                .expect("append tar entry");
        }
        builder.finish().expect("finish tar");
    }
    let bytes = zstd::encode_all(&tar_bytes[..], 3).expect("zstd");
    Packed {
        sha256: Sha256::of(&bytes),
        tar_sha256: Sha256::of(&tar_bytes),
        bytes,
    }
}

/// The regular files in a tar.zst, keyed by their path inside the tar
/// (`"<id>/meta.json"`). Panics on a malformed archive.
pub fn archive_files(tar_zst: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let tar_bytes = zstd::decode_all(tar_zst).expect("archive is not zstd");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut files = BTreeMap::new();
    for entry in archive.entries().expect("archive is not tar") {
        let mut entry = entry.expect("tar entry");
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read tar entry");
        files.insert(path, data);
    }
    files
}

/// The regular files under `dir`, keyed like `archive_files`: by
/// `<dir's name>/<path inside dir>`. Symlinks are not followed or listed.
pub fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let prefix = dir
        .file_name()
        .expect("dir has a name")
        .to_string_lossy()
        .into_owned();
    let mut files = BTreeMap::new();
    walk(dir, &prefix, &mut files);
    files
}

fn walk(dir: &Path, prefix: &str, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("read episode dir") {
        let entry = entry.expect("dir entry");
        let key = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            walk(&entry.path(), &key, files);
        } else if kind.is_file() {
            files.insert(key, std::fs::read(entry.path()).expect("read file"));
        }
    }
}

/// Every path under `root` (files and directories), relative and sorted: a cheap
/// snapshot to prove that nothing was created or removed.
pub fn tree(root: &Path) -> Vec<String> {
    fn go(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = format!("{rel}{}", entry.file_name().to_string_lossy());
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            out.push(name.clone());
            if is_dir {
                go(&entry.path(), &format!("{name}/"), out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, "", &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_sort_by_time_and_decode_back() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = ulid(1_469_922_850_259, &mut rng);
        let b = ulid(1_469_922_850_260, &mut rng);
        assert!(a < b);
        assert!(a.starts_with("01ARZ3NDEK"), "{a}");
        let t = episode_common::wire::ulid_time(&a).unwrap();
        assert_eq!(t.unix_timestamp_nanos() / 1_000_000, 1_469_922_850_259);
    }

    #[test]
    fn a_packed_archive_round_trips_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ids = write_mixed_episodes(dir.path(), 3, 7);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let ep = dir.path().join("episodes").join(&ids[0]);
        let files = dir_files(&ep);
        assert!(files.contains_key(&format!("{}/meta.json", ids[0])));
        assert!(files.contains_key(&format!("{}/done.marker", ids[0])));
        let entries: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(k, v)| (k.split_once('/').unwrap().1.to_owned(), v.clone()))
            .collect();
        let borrowed: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let packed = pack(&ids[0], &borrowed);
        assert_eq!(archive_files(&packed.bytes), files);
        assert_eq!(packed.sha256, Sha256::of(&packed.bytes));
    }

    #[test]
    fn noise_does_not_compress() {
        let data = noise(4 << 20, 5);
        assert_eq!(data.len(), 4 << 20);
        assert_ne!(data[..64], noise(64, 6)[..]);
        let packed = zstd::encode_all(&data[..], 19).unwrap();
        assert!(packed.len() >= data.len(), "{}", packed.len());
    }

    #[test]
    fn jsonl_compresses() {
        let mut rng = StdRng::seed_from_u64(3);
        let data = jsonl(&mut rng, 200_000);
        let packed = zstd::encode_all(&data[..], 3).unwrap();
        assert!(
            packed.len() * 3 < data.len(),
            "{} -> {}",
            data.len(),
            packed.len()
        );
    }
}
