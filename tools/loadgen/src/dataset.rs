//! `gen`: a lab host's data root full of finished episodes, fast and deterministic.
//!
//! Owns the dataset shape shared with `/work/shared/bench/gen_episodes.py`:
//! `DATA_ROOT/episodes/<ULID-like id>/{meta.json, events.jsonl, labels.jsonl,
//! telemetry-proc.jsonl, done.marker}`, the telemetry being per-process JSONL samples
//! with the same keys, separators and value ranges as the Python script, so it
//! compresses alike (about 5x with `zstd -3`). `done.marker` is created last, after
//! every other file of the episode is closed.
//!
//! Not byte-identical to the Python script (that one draws from Python's Mersenne
//! Twister); identical to itself: the same seed gives the same bytes, whatever the
//! number of threads, because each episode draws from its own generator seeded by
//! `(seed, index)`. Lines are formatted into one reused buffer (no allocation per
//! line) and written in 1 MiB blocks. Writes only under `DATA_ROOT/episodes/`; it
//! never fsyncs (datasets are scratch).

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context as _, Result};

/// The default `code_commit`, as in gen_episodes.py.
pub const DEFAULT_COMMIT: &str = "3f2c1e9a0b7d4c5e6f708192a3b4c5d6e7f80912";

/// The first episode's id time (ms), as in gen_episodes.py; episodes are 10 min apart.
const T0_MS: u64 = 1_790_000_000_000;
const EPISODE_SPACING_MS: u64 = 600_000;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const COMMS: [&str; 12] = [
    "python3",
    "chrome",
    "code",
    "bash",
    "sshd",
    "systemd",
    "Xorg",
    "pulseaudio",
    "firefox",
    "gnome-shell",
    "node",
    "java",
];
const TASKS: [&str; 4] = ["browse", "edit", "compile", "idle"];
const KINDS: [&str; 3] = ["key", "click", "focus"];
const STATES: [&str; 4] = ["R", "S", "D", "Z"];

/// xoshiro256** seeded through splitmix64: small, fast and stable forever (the
/// dataset must not change when a dependency's generator does).
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (Lemire's multiply-high; the bias is below 2^-32 for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn choose<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// The generator of episode `index` of a dataset with `seed`.
fn episode_rng(seed: u64, index: u64) -> Rng {
    Rng::new(seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407).rotate_left(17))
}

/// A ULID-shaped id: 10 Crockford characters of `t_ms`, then 16 random ones.
pub fn ulid_like(rng: &mut Rng, t_ms: u64) -> String {
    let mut out = [0u8; 26];
    let mut v = t_ms;
    for slot in out[..10].iter_mut().rev() {
        *slot = CROCKFORD[(v % 32) as usize];
        v /= 32;
    }
    for slot in &mut out[10..] {
        *slot = CROCKFORD[rng.below(32) as usize];
    }
    String::from_utf8(out.to_vec()).expect("Crockford alphabet is ASCII")
}

/// Appends the decimal form of `v`.
pub fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends `whole + frac / 10^digits` the way Python's `repr(round(x, digits))`
/// prints it: trailing zeros of the fraction dropped, at least one digit kept.
pub fn push_fixed(buf: &mut Vec<u8>, whole: u64, frac: u64, digits: u32) {
    push_u64(buf, whole);
    buf.push(b'.');
    let mut frac_digits = [b'0'; 8];
    let mut f = frac;
    for slot in frac_digits[..digits as usize].iter_mut().rev() {
        *slot = b'0' + (f % 10) as u8;
        f /= 10;
    }
    let mut len = digits as usize;
    while len > 1 && frac_digits[len - 1] == b'0' {
        len -= 1;
    }
    buf.extend_from_slice(&frac_digits[..len]);
}

/// One telemetry sample line, in gen_episodes.py's `json.dumps` form.
pub fn push_telemetry_line(buf: &mut Vec<u8>, rng: &mut Rng, ts_ms: u64) {
    buf.extend_from_slice(b"{\"ts\": ");
    push_fixed(buf, ts_ms / 1000, ts_ms % 1000, 3);
    buf.extend_from_slice(b", \"pid\": ");
    push_u64(buf, rng.range(1, 40_000));
    buf.extend_from_slice(b", \"comm\": \"");
    buf.extend_from_slice(rng.choose(&COMMS).as_bytes());
    buf.extend_from_slice(b"\", \"cpu\": ");
    let centi = rng.below(10_000);
    push_fixed(buf, centi / 100, centi % 100, 2);
    buf.extend_from_slice(b", \"rss_kb\": ");
    push_u64(buf, rng.range(1000, 4_000_000));
    buf.extend_from_slice(b", \"read_b\": ");
    push_u64(buf, rng.range(0, 1 << 20));
    buf.extend_from_slice(b", \"write_b\": ");
    push_u64(buf, rng.range(0, 1 << 20));
    buf.extend_from_slice(b", \"state\": \"");
    buf.extend_from_slice(rng.choose(&STATES).as_bytes());
    buf.extend_from_slice(b"\"}\n");
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub data_root: PathBuf,
    pub count: u64,
    /// Telemetry bytes per episode (the file ends at the first line reaching it).
    pub bytes: u64,
    pub seed: u64,
    pub host_id: String,
    pub commit: String,
    /// Subdirectory of `data_root` the episodes go to (`episodes` normally).
    pub subdir: String,
    pub jobs: usize,
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Generated {
    pub episodes: u64,
    /// Sum of all files' sizes.
    pub bytes: u64,
}

/// Writes the dataset; episodes already present are overwritten in place.
pub fn generate(spec: &Spec) -> Result<Generated> {
    let root = spec.data_root.join(&spec.subdir);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    let jobs = spec.jobs.clamp(1, 64);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut buf = Vec::with_capacity(BLOCK + 512);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                        if i >= spec.count {
                            return Ok(());
                        }
                        let n = write_episode(&root, spec, i, &mut buf)?;
                        total.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(Generated {
        episodes: spec.count,
        bytes: total.into_inner(),
    })
}

const BLOCK: usize = 1 << 20;

/// The id episode `index` of `spec` gets (the same one `generate` writes).
pub fn episode_id(seed: u64, index: u64) -> String {
    ulid_like(
        &mut episode_rng(seed, index),
        T0_MS + index * EPISODE_SPACING_MS,
    )
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes episode `index`; returns the bytes written. `buf` is scratch.
fn write_episode(root: &Path, spec: &Spec, index: u64, buf: &mut Vec<u8>) -> Result<u64> {
    let mut rng = episode_rng(spec.seed, index);
    let t_ms = T0_MS + index * EPISODE_SPACING_MS;
    let episode_id = ulid_like(&mut rng, t_ms);
    let started = t_ms / 1000;
    let dir = root.join(&episode_id);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let marker = dir.join("done.marker");
    // A re-run rewrites the files: the episode must not look finished meanwhile.
    match fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", marker.display())),
    }
    let task = rng.choose(&TASKS);
    let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let meta = format!(
        "{{\"episode_id\": {}, \"host_id\": {}, \"code_commit\": {}, \"started_at\": {started}, \
         \"ended_at\": {}, \"schema_version\": 1, \"task\": {}}}",
        json(&episode_id),
        json(&spec.host_id),
        json(&spec.commit),
        started + 600,
        json(task),
    );
    let mut written = meta.len() as u64;
    write_file(&dir.join("meta.json"), meta.as_bytes())?;

    buf.clear();
    for i in 0..rng.range(5, 40) {
        buf.extend_from_slice(b"{\"ts\": ");
        push_u64(buf, started + i);
        buf.extend_from_slice(b", \"kind\": \"");
        buf.extend_from_slice(rng.choose(&KINDS).as_bytes());
        buf.extend_from_slice(b"\", \"window\": \"");
        buf.extend_from_slice(rng.choose(&COMMS).as_bytes());
        buf.extend_from_slice(b"\"}\n");
    }
    written += buf.len() as u64;
    write_file(&dir.join("events.jsonl"), buf)?;

    let labels = format!("{{\"ts\": {started}, \"label\": {}}}\n", json(task));
    written += labels.len() as u64;
    write_file(&dir.join("labels.jsonl"), labels.as_bytes())?;

    let path = dir.join("telemetry-proc.jsonl");
    let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut telemetry = 0u64;
    let mut ts_ms = started * 1000;
    buf.clear();
    while telemetry < spec.bytes {
        ts_ms += 100;
        let before = buf.len();
        push_telemetry_line(buf, &mut rng, ts_ms);
        telemetry += (buf.len() - before) as u64;
        if buf.len() >= BLOCK {
            file.write_all(buf)
                .with_context(|| format!("writing {}", path.display()))?;
            buf.clear();
        }
    }
    file.write_all(buf)
        .with_context(|| format!("writing {}", path.display()))?;
    drop(file);
    written += telemetry;

    File::create(&marker).with_context(|| format!("creating {}", marker.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn numbers_print_like_python_repr_of_rounded_floats() {
        assert_eq!(text(|b| push_u64(b, 0)), "0");
        assert_eq!(text(|b| push_u64(b, u64::MAX)), "18446744073709551615");
        assert_eq!(text(|b| push_fixed(b, 1790000000, 100, 3)), "1790000000.1");
        assert_eq!(text(|b| push_fixed(b, 1790000001, 0, 3)), "1790000001.0");
        assert_eq!(text(|b| push_fixed(b, 5, 7, 3)), "5.007");
        assert_eq!(text(|b| push_fixed(b, 57, 30, 2)), "57.3");
        assert_eq!(text(|b| push_fixed(b, 57, 31, 2)), "57.31");
        assert_eq!(text(|b| push_fixed(b, 0, 5, 2)), "0.05");
    }

    #[test]
    fn telemetry_lines_are_json_with_the_python_keys() {
        let mut rng = Rng::new(7);
        let line = text(|b| push_telemetry_line(b, &mut rng, 1_790_000_000_100));
        assert!(line.ends_with("}\n") && line.starts_with("{\"ts\": 1790000000.1, "));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "comm", "cpu", "pid", "read_b", "rss_kb", "state", "ts", "write_b"
            ]
        );
        let pid = v["pid"].as_u64().unwrap();
        assert!((1..=40_000).contains(&pid));
        assert!(v["cpu"].as_f64().unwrap() < 100.0);
    }

    #[test]
    fn ids_are_ulid_shaped_and_ordered_by_time() {
        let a = episode_id(1, 0);
        let b = episode_id(1, 1);
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} {b}");
        assert!(episode_common::EpisodeId::new(&a).is_ok());
        let t = episode_common::wire::ulid_time(&a).unwrap();
        assert_eq!(t.unix_timestamp_nanos() / 1_000_000, T0_MS as i128);
        assert_eq!(episode_id(1, 5), episode_id(1, 5));
        assert_ne!(episode_id(1, 5), episode_id(2, 5));
    }

    #[test]
    fn rng_range_and_fill_cover_their_bounds() {
        let mut rng = Rng::new(3);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            let v = rng.range(5, 8);
            assert!((5..=8).contains(&v));
            seen[(v - 5) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        let mut buf = [0u8; 13];
        rng.fill(&mut buf);
        assert!(buf.iter().any(|b| *b != 0));
    }

    #[test]
    fn a_dataset_is_the_same_for_a_seed_whatever_the_threads() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        for (dir, jobs) in dirs.iter().zip([1, 3]) {
            let spec = Spec {
                data_root: dir.path().to_owned(),
                count: 5,
                bytes: 20_000,
                seed: 9,
                host_id: "lab1".into(),
                commit: DEFAULT_COMMIT.into(),
                subdir: "episodes".into(),
                jobs,
            };
            let got = generate(&spec).unwrap();
            assert_eq!(got.episodes, 5);
        }
        let list = |d: &Path| {
            let mut names: Vec<_> = fs::read_dir(d.join("episodes"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let ids = list(dirs[0].path());
        assert_eq!(ids, list(dirs[1].path()));
        assert_eq!(ids.len(), 5);
        for id in &ids {
            for file in [
                "meta.json",
                "events.jsonl",
                "labels.jsonl",
                "telemetry-proc.jsonl",
                "done.marker",
            ] {
                let a = fs::read(dirs[0].path().join("episodes").join(id).join(file)).unwrap();
                let b = fs::read(dirs[1].path().join("episodes").join(id).join(file)).unwrap();
                assert_eq!(a, b, "{file}");
            }
            let ep = dirs[0].path().join("episodes").join(id);
            let meta: serde_json::Value =
                serde_json::from_slice(&fs::read(ep.join("meta.json")).unwrap()).unwrap();
            assert_eq!(meta["code_commit"], DEFAULT_COMMIT);
            assert_eq!(meta["host_id"], "lab1");
            assert!(meta["started_at"].is_u64());
            let telemetry = fs::metadata(ep.join("telemetry-proc.jsonl")).unwrap().len();
            assert!((20_000..20_200).contains(&telemetry), "{telemetry}");
        }
    }
}
