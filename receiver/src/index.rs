//! The JSONL index, its in-memory map, and the committer thread: the single writer
//! that publishes archives into the store in group-committed batches (and the
//! single-instance lock). A key is in the map only once its archive and row are durable.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};

use episode_common::fsx;
use episode_common::wire::{IndexRow, format_rfc3339};
use episode_common::{EpisodeId, Event, HostId, Sha256};

use crate::fleet;
use crate::upload::Spool;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::oneshot;

/// What the receiver remembers of one stored archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: Sha256,
    pub tar_sha256: Option<Sha256>,
    pub bytes: u64,
    /// Unix seconds.
    pub received_at: i64,
    pub code_commit: Option<Arc<str>>,
}

impl Entry {
    pub fn received_at_rfc3339(&self) -> String {
        OffsetDateTime::from_unix_timestamp(self.received_at)
            .map(format_rfc3339)
            .unwrap_or_default()
    }
}

/// foldhash: several times faster than SipHash on short keys and still seeded at
/// random per process, so chosen ids cannot force collisions.
type Hasher = foldhash::fast::RandomState;
type Map = HashMap<HostId, HashMap<EpisodeId, Entry, Hasher>, Hasher>;

/// The in-memory index, shared by request handlers (readers) and the committer.
#[derive(Default)]
pub struct Index {
    map: RwLock<Map>,
    /// Interned commit ids: a host records thousands of episodes with a few commits.
    commits: Mutex<HashSet<Arc<str>>>,
    rows: AtomicU64,
    /// Per-host aggregates for the fleet page, updated with the map.
    stats: Mutex<fleet::Stats>,
}

impl Index {
    pub fn get(&self, host_id: &HostId, episode_id: &EpisodeId) -> Option<Entry> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(host_id)?.get(episode_id).cloned()
    }

    pub fn contains(&self, host_id: &HostId, episode_id: &EpisodeId) -> bool {
        self.contains_str(host_id.as_str(), episode_id.as_str())
    }

    /// As `contains`, for names not (yet) validated as ids; allocates nothing.
    pub fn contains_str(&self, host_id: &str, episode_id: &str) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(host_id).is_some_and(|m| m.contains_key(episode_id))
    }

    pub fn len(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a key whose row the store contradicts, so the archive is treated as
    /// one without a row (its row is rebuilt from it). True if the key was there.
    pub fn remove(&self, host_id: &HostId, episode_id: &EpisodeId) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let removed = map
            .get_mut(host_id)
            .is_some_and(|m| m.remove(episode_id).is_some());
        if removed {
            self.rows.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The hosts with rows.
    pub fn hosts(&self) -> Vec<HostId> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    /// One host's episodes and their rows' sizes (a copy: the lock is not held
    /// while the caller looks at the store).
    pub fn sizes_of(&self, host_id: &HostId) -> Vec<(EpisodeId, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(host_id).map_or_else(Vec::new, |eps| {
            eps.iter()
                .map(|(e, entry)| (e.clone(), entry.bytes))
                .collect()
        })
    }

    /// Every key, for reconciliation against the store.
    pub fn keys(&self) -> Vec<(HostId, EpisodeId)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .flat_map(|(h, eps)| eps.keys().map(move |e| (h.clone(), e.clone())))
            .collect()
    }

    /// Calls `f` on every entry, or on one host's only; for read-only queries
    /// (`query`), never on a request's path.
    pub fn visit(&self, host_id: Option<&HostId>, mut f: impl FnMut(&HostId, &EpisodeId, &Entry)) {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let hosts: Box<dyn Iterator<Item = _>> = match host_id {
            Some(h) => Box::new(map.get_key_value(h).into_iter()),
            None => Box::new(map.iter()),
        };
        for (host_id, episodes) in hosts {
            for (episode_id, entry) in episodes {
                f(host_id, episode_id, entry);
            }
        }
    }

    fn intern(&self, commit: Option<&str>) -> Option<Arc<str>> {
        let commit = commit?;
        let mut set = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = set.get(commit) {
            return Some(found.clone());
        }
        let arc: Arc<str> = commit.into();
        set.insert(arc.clone());
        Some(arc)
    }

    /// Sets the entry of a key; returns false when it replaced one (a later row for
    /// the same key: an archive that was lost and uploaded again).
    fn insert(&self, host_id: HostId, episode_id: EpisodeId, entry: Entry) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        {
            // The fleet's aggregates change with the map (lock order: map, stats).
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let host = match stats.get_mut(host_id.as_str()) {
                Some(host) => host,
                None => stats.entry(host_id.clone()).or_default(),
            };
            let old = map
                .get(host_id.as_str())
                .and_then(|episodes| episodes.get(episode_id.as_str()));
            if let Some(old) = old {
                host.remove(old.received_at, old.bytes);
            }
            host.add(entry.received_at, entry.bytes);
        }
        let fresh = insert_into(&mut map, host_id, episode_id, entry).is_none();
        if fresh {
            self.rows.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }

    /// Runs `f` over the per-host aggregates (a lock held briefly; no map scan).
    pub fn with_stats<T>(&self, f: impl FnOnce(&fleet::Stats) -> T) -> T {
        f(&self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn entry_of(&self, row: &IndexRow) -> Entry {
        Entry {
            sha256: row.sha256,
            tar_sha256: row.tar_sha256,
            bytes: row.bytes,
            received_at: OffsetDateTime::parse(&row.received_at, &Rfc3339)
                .map(|t| t.unix_timestamp())
                .unwrap_or(0),
            code_commit: self.intern(row.code_commit.as_deref()),
        }
    }
}

/// Sets the entry of a key. Returns the key when it replaced an entry.
fn insert_into(
    map: &mut Map,
    host_id: HostId,
    episode_id: EpisodeId,
    entry: Entry,
) -> Option<(HostId, EpisodeId)> {
    use std::collections::hash_map::Entry as Slot;
    // Look up by &str first: the host's map almost always exists already.
    let (episodes, host_id) = match map.get_mut(host_id.as_str()) {
        Some(episodes) => (episodes, host_id),
        None => (map.entry(host_id.clone()).or_default(), host_id),
    };
    match episodes.entry(episode_id) {
        Slot::Occupied(mut slot) => {
            slot.insert(entry);
            Some((host_id, slot.key().clone()))
        }
        Slot::Vacant(slot) => {
            slot.insert(entry);
            None
        }
    }
}

/// What loading the index file found.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub rows: u64,
    /// A last line without its newline: `(offset, length, whether it parses)`.
    pub torn_tail: Option<(u64, usize, bool)>,
    /// Lines that are not valid rows: `(line number, error)`. Kept in the file.
    pub bad_lines: Vec<(u64, String)>,
    /// Keys that appear more than once (the last row wins: a later row is written
    /// only when an archive was lost and uploaded again).
    pub duplicates: Vec<(HostId, EpisodeId)>,
    /// The keys among `duplicates` whose rows disagree on the sha256 (not a plain
    /// restore of the same bytes): which row tells the truth is for the archive to say.
    pub conflicts: Vec<(HostId, EpisodeId)>,
}

/// A row parsed without allocating its strings. (`pub` for the fuzz target that
/// holds `fast_row` to serde_json.)
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct RowRef<'a> {
    pub host_id: &'a str,
    pub episode_id: &'a str,
    pub sha256: &'a str,
    pub tar_sha256: Option<&'a str>,
    pub bytes: u64,
    #[serde(borrow)]
    pub code_commit: Option<std::borrow::Cow<'a, str>>,
    pub received_at: &'a str,
}

/// Reads a row in the exact shape the receiver writes (`IndexRow`'s fields in
/// order, no whitespace, no escapes) without a JSON parser: start-up reads a
/// million of them. Anything else is `None` and goes through serde_json, so a row
/// edited by hand still loads (or is reported) as before.
pub fn fast_row(line: &[u8]) -> Option<RowRef<'_>> {
    let mut c = Cursor { s: line, i: 0 };
    c.lit(b"{\"host_id\":")?;
    let host_id = c.string()?;
    c.lit(b",\"episode_id\":")?;
    let episode_id = c.string()?;
    c.lit(b",\"sha256\":")?;
    let sha256 = c.string()?;
    c.lit(b",\"tar_sha256\":")?;
    let tar_sha256 = c.nullable()?;
    c.lit(b",\"bytes\":")?;
    let bytes = c.integer()?;
    c.lit(b",\"code_commit\":")?;
    let code_commit = c.nullable()?;
    c.lit(b",\"started_at\":")?;
    c.nullable()?;
    c.lit(b",\"received_at\":")?;
    let received_at = c.string()?;
    c.lit(b",\"client\":")?;
    c.nullable()?;
    c.lit(b"}")?;
    (c.i == line.len()).then_some(RowRef {
        host_id,
        episode_id,
        sha256,
        tar_sha256,
        bytes,
        code_commit: code_commit.map(std::borrow::Cow::Borrowed),
        received_at,
    })
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn lit(&mut self, lit: &[u8]) -> Option<()> {
        let found = self.s[self.i..].starts_with(lit);
        found.then(|| self.i += lit.len())
    }

    /// A JSON string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let rest = &self.s[self.i..];
        let end = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        let s = std::str::from_utf8(&rest[..end]).ok()?;
        self.i += end + 1;
        Some(s)
    }

    fn nullable(&mut self) -> Option<Option<&'a str>> {
        if self.lit(b"null").is_some() {
            return Some(None);
        }
        self.string().map(Some)
    }

    fn integer(&mut self) -> Option<u64> {
        let rest = &self.s[self.i..];
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || (n > 1 && rest[0] == b'0') {
            return None;
        }
        let value = std::str::from_utf8(&rest[..n]).ok()?.parse().ok()?;
        self.i += n;
        Some(value)
    }
}

/// Commit ids seen by one loader thread.
#[derive(Default)]
struct Interner(HashSet<Arc<str>, Hasher>);

impl Interner {
    fn intern(&mut self, commit: Option<&str>) -> Option<Arc<str>> {
        let commit = commit?;
        if let Some(found) = self.0.get(commit) {
            return Some(found.clone());
        }
        let arc: Arc<str> = commit.into();
        self.0.insert(arc.clone());
        Some(arc)
    }
}

/// Parses a row; its host is returned unvalidated (the caller validates each
/// distinct host once).
fn parse_row<'a>(
    interner: &mut Interner,
    line: &'a [u8],
) -> Result<(&'a str, EpisodeId, Entry), String> {
    let row: RowRef<'a> = match fast_row(line) {
        Some(row) => row,
        None => serde_json::from_slice(line).map_err(|e| e.to_string())?,
    };
    let episode_id = EpisodeId::new(row.episode_id).map_err(|e| e.to_string())?;
    let sha256 = Sha256::from_hex(row.sha256).map_err(|e| format!("sha256: {e}"))?;
    let tar_sha256 = row
        .tar_sha256
        .map(Sha256::from_hex)
        .transpose()
        .map_err(|e| format!("tar_sha256: {e}"))?;
    let received_at = OffsetDateTime::parse(row.received_at, &Rfc3339)
        .map_err(|e| format!("received_at: {e}"))?
        .unix_timestamp();
    let entry = Entry {
        sha256,
        tar_sha256,
        bytes: row.bytes,
        received_at,
        code_commit: interner.intern(row.code_commit.as_deref()),
    };
    Ok((row.host_id, episode_id, entry))
}

/// The rows of one host in one piece of the file, in line order.
type Group = (HostId, Vec<(EpisodeId, Entry)>);

/// One piece of the file, parsed: its rows grouped by host, each host's group in
/// the shard that will insert it.
struct Piece {
    /// `groups[shard]`.
    groups: Vec<Vec<Group>>,
    bytes: u64,
    lines: u64,
    /// `(1-based line number within the piece, error)`.
    bad_lines: Vec<(u64, String)>,
    /// A last line without its newline: `(offset within the piece, length, parses)`.
    torn_tail: Option<(u64, usize, bool)>,
}

/// Which shard (loader thread, map) a host belongs to. Any stable function works:
/// all rows of a host go to one shard, so "the last row wins" keeps its meaning.
fn shard_of(host: &str, shards: usize) -> usize {
    host.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % shards
}

fn parse_piece(text: &[u8], shards: usize) -> Piece {
    let mut interner = Interner::default();
    let mut piece = Piece {
        groups: (0..shards).map(|_| Vec::new()).collect(),
        bytes: text.len() as u64,
        lines: 0,
        bad_lines: Vec::new(),
        torn_tail: None,
    };
    // host (as written) -> (shard, position of its group there)
    let mut group_of: HashMap<&[u8], (usize, usize), Hasher> = HashMap::default();
    let mut offset = 0u64;
    for line in text.split_inclusive(|b| *b == b'\n') {
        piece.lines += 1;
        let complete = line.last() == Some(&b'\n');
        let body = if complete {
            &line[..line.len() - 1]
        } else {
            line
        };
        let torn = |parses| (!complete).then_some((offset, line.len(), parses));
        if body.iter().all(u8::is_ascii_whitespace) {
            piece.torn_tail = piece.torn_tail.or(torn(false));
            offset += line.len() as u64;
            continue;
        }
        let parsed = parse_row(&mut interner, body).and_then(|(host, episode_id, entry)| {
            let slot = match group_of.get(host.as_bytes()) {
                Some(&slot) => slot,
                None => {
                    let host_id = HostId::new(host).map_err(|e| e.to_string())?;
                    let shard = shard_of(host, shards);
                    piece.groups[shard].push((host_id, Vec::new()));
                    let slot = (shard, piece.groups[shard].len() - 1);
                    group_of.insert(host.as_bytes(), slot);
                    slot
                }
            };
            piece.groups[slot.0][slot.1].1.push((episode_id, entry));
            Ok(())
        });
        match parsed {
            Ok(()) => piece.torn_tail = piece.torn_tail.or(torn(true)),
            Err(_) if !complete => piece.torn_tail = torn(false),
            Err(e) => piece.bad_lines.push((piece.lines, e)),
        }
        offset += line.len() as u64;
    }
    piece
}

/// Keys, for the load report.
type Keys = Vec<(HostId, EpisodeId)>;

/// Inserts one shard's groups, piece by piece in file order. Returns the number of
/// new keys and pushes the keys that a later row replaced onto `duplicates`.
fn insert_groups(
    map: &mut Map,
    groups: Vec<Vec<Group>>,
    expected: &HashMap<HostId, usize, Hasher>,
    (duplicates, conflicts): &mut (Keys, Keys),
) -> u64 {
    use std::collections::hash_map::Entry as Slot;
    let mut fresh = 0;
    for (host_id, rows) in groups.into_iter().flatten() {
        if !map.contains_key(host_id.as_str()) {
            let capacity = expected.get(&host_id).copied().unwrap_or(rows.len());
            map.insert(
                host_id.clone(),
                HashMap::with_capacity_and_hasher(capacity, Hasher::default()),
            );
        }
        let episodes = map.get_mut(host_id.as_str()).expect("just inserted");
        for (episode_id, entry) in rows {
            match episodes.entry(episode_id) {
                Slot::Occupied(mut slot) => {
                    let earlier = slot.insert(entry);
                    if earlier.sha256 != slot.get().sha256 {
                        conflicts.push((host_id.clone(), slot.key().clone()));
                    }
                    duplicates.push((host_id.clone(), slot.key().clone()));
                }
                Slot::Vacant(slot) => {
                    slot.insert(entry);
                    fresh += 1;
                }
            }
        }
    }
    fresh
}

/// Splits `text` into about `n` pieces that each end at a newline (or the end).
fn split_at_lines(text: &[u8], n: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(n);
    let mut rest = text;
    for k in (1..=n).rev() {
        if rest.is_empty() {
            break;
        }
        let target = rest.len() / k;
        let end = if k == 1 {
            rest.len()
        } else {
            rest[target..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |p| target + p + 1)
        };
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// Bytes read (and parsed on every core) at a time.
const LOAD_BLOCK: usize = 32 << 20;

/// Reads `path` into a new `Index`. A missing file is an empty index. Memory stays
/// at a few blocks of text whatever the size. Each block is parsed on every core,
/// then inserted on every core: the map is sharded by host while loading (a host's
/// rows all go to one shard, in file order) and the shards are joined at the end.
/// Host maps are sized from the first block, so a million rows don't rehash.
pub fn load(path: &Path) -> io::Result<(Index, LoadReport)> {
    let index = Index::default();
    let mut report = LoadReport::default();
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((index, report)),
        Err(e) => return Err(e),
    };
    let file_len = file.metadata()?.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut shards: Vec<(Map, (Keys, Keys))> = (0..threads).map(|_| Default::default()).collect();
    let (mut offset, mut line_no, mut rows) = (0u64, 0u64, 0u64);
    // A block no larger than what is left to read: a small index costs no 32 MiB
    // (the file may still grow while `check` reads it: reading goes on to EOF).
    let block_for =
        |read: u64| LOAD_BLOCK.min(file_len.saturating_sub(read).max(64 << 10) as usize);
    let mut carry: Vec<u8> = Vec::with_capacity(block_for(0) + 4096);
    loop {
        // Read so far: the rows parsed (`offset`) and the partial line carried over.
        let start = carry.len();
        carry.resize(start + block_for(offset + start as u64), 0);
        let mut filled = start;
        while filled < carry.len() {
            match file.read(&mut carry[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let eof = filled < carry.len();
        carry.truncate(filled);
        let end = if eof {
            carry.len()
        } else {
            carry.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
        };
        let pieces: Vec<Piece> = std::thread::scope(|scope| {
            let handles: Vec<_> = split_at_lines(&carry[..end], threads)
                .into_iter()
                .map(|text| scope.spawn(move || parse_piece(text, threads)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("index parser panicked"))
                .collect()
        });
        let first_block = offset == 0;
        let mut by_shard: Vec<Vec<Vec<Group>>> = (0..threads).map(|_| Vec::new()).collect();
        for piece in pieces {
            for (line, error) in piece.bad_lines {
                report.bad_lines.push((line_no + line, error));
            }
            if let Some((at, len, parses)) = piece.torn_tail {
                report.torn_tail = Some((offset + at, len, parses));
            }
            line_no += piece.lines;
            offset += piece.bytes;
            for (shard, groups) in piece.groups.into_iter().enumerate() {
                by_shard[shard].push(groups);
            }
        }
        // Expected rows per host: its share of the first block, scaled to the file.
        let expected: Vec<HashMap<HostId, usize, Hasher>> = by_shard
            .iter()
            .map(|groups| {
                let mut expected = HashMap::default();
                if first_block && offset > 0 {
                    let scale = file_len as f64 / offset as f64;
                    for (host_id, rows) in groups.iter().flatten() {
                        *expected.entry(host_id.clone()).or_insert(0) += rows.len();
                    }
                    for n in expected.values_mut() {
                        *n = (*n as f64 * scale * 1.1) as usize;
                    }
                }
                expected
            })
            .collect();
        rows += std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .iter_mut()
                .zip(by_shard)
                .zip(&expected)
                .map(|(((map, duplicates), groups), expected)| {
                    scope.spawn(move || insert_groups(map, groups, expected, duplicates))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("index loader panicked"))
                .sum::<u64>()
        });
        carry.drain(..end);
        if eof {
            break;
        }
    }
    // The fleet's aggregates, from the final rows (each shard on its own core).
    let shard_stats: Vec<fleet::Stats> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .map(|(map, _)| scope.spawn(move || aggregate(map)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("index aggregation panicked"))
            .collect()
    });
    index
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(shard_stats.into_iter().flatten());
    let mut map = index.map.write().unwrap_or_else(|e| e.into_inner());
    for (shard, (duplicates, conflicts)) in shards {
        map.extend(shard);
        report.duplicates.extend(duplicates);
        report.conflicts.extend(conflicts);
    }
    drop(map);
    report.duplicates.sort();
    report.conflicts.sort();
    report.conflicts.dedup();
    index.rows.store(rows, Ordering::Relaxed);
    report.rows = rows;
    Ok((index, report))
}

/// Per-host aggregates of a map (hosts are disjoint between shards).
fn aggregate(map: &Map) -> fleet::Stats {
    map.iter()
        .map(|(host_id, episodes)| {
            let mut stats = fleet::HostStats::default();
            for entry in episodes.values() {
                stats.add(entry.received_at, entry.bytes);
            }
            (host_id.clone(), stats)
        })
        .collect()
}

/// Makes a torn tail safe to append after: completes a parseable last row with its
/// newline, or cuts an unparseable one off (its archive, if any, is reconciled).
pub fn repair_tail(path: &Path, report: &LoadReport) -> io::Result<()> {
    let Some((offset, _, parses)) = report.torn_tail else {
        return Ok(());
    };
    let mut file = OpenOptions::new().write(true).open(path)?;
    if parses {
        file.seek(SeekFrom::End(0))?;
        file.write_all(b"\n")?;
    } else {
        file.set_len(offset)?;
    }
    file.sync_all()
}

/// The index file, opened for appending.
struct IndexFile {
    file: File,
    len: u64,
}

impl IndexFile {
    fn open(path: &Path) -> io::Result<Self> {
        let created = !path.exists();
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if created {
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsx::fsync_dir(dir)?;
            }
        }
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }

    /// Appends whole lines and makes them durable; on failure the file is cut back
    /// so no partial row is left for the next append to follow.
    fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        self.append_then(lines, |file| file.sync_data())
    }

    /// Appends whole lines, then runs `barrier` to make them durable; on failure the
    /// file is cut back to where it was.
    fn append_then(
        &mut self,
        lines: &[u8],
        barrier: impl FnOnce(&File) -> io::Result<()>,
    ) -> io::Result<()> {
        let result = self
            .file
            .write_all(lines)
            .and_then(|()| barrier(&self.file));
        match result {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// The stored entry of a key, if its archive is really in the store. An index row
/// whose archive is gone (deleted by hand, lost to a disk) counts as not stored, so
/// the receiver never reports an archive it could not hand back. Blocking (a stat).
pub fn stored_entry(
    index: &Index,
    store_root: &Path,
    host_id: &HostId,
    episode_id: &EpisodeId,
) -> Option<Entry> {
    let entry = index.get(host_id, episode_id)?;
    let path = archive_path(store_root, host_id, episode_id);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() && m.len() == entry.bytes => return Some(entry),
        Ok(m) if m.is_file() => tracing::error!(
            event = %episode_common::Event::ArchiveSizeMismatch,
            host_id = %host_id,
            episode_id = %episode_id,
            path = %path.display(),
            row_bytes = entry.bytes,
            archive_bytes = m.len(),
            "the archive's size differs from its index row; the row is not trusted (a PUT rebuilds it from the archive)"
        ),
        Ok(_) => tracing::error!(
            event = %episode_common::Event::StoreEntryNotRegular,
            host_id = %host_id,
            episode_id = %episode_id,
            path = %path.display(),
            "the store holds something other than a regular file under this key; treating it as not stored"
        ),
        Err(_) => tracing::error!(
            event = %Event::ArchiveMissing,
            host_id = %host_id,
            episode_id = %episode_id,
            "the index has a row but the store has no archive; treating it as not stored"
        ),
    }
    None
}

/// Takes the single-instance lock: an exclusive `flock` on the index file itself
/// (created if absent, so no other file joins the layout), held until the returned
/// file is closed. Fails with `ErrorKind::WouldBlock` while another process holds it.
pub fn lock(index_path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd as _;
    let file = IndexFile::open(index_path)?.file;
    // SAFETY: a valid open file descriptor; flock only takes an advisory lock.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The bytes of an upload, verified, as handed to the committer.
pub enum Upload {
    /// Streamed into a spool and fdatasynced there by its writer.
    Spooled(Spool),
    /// A small body verified in memory. The committer writes it into a spool in
    /// `dir` (unnamed when `name` is `None`) itself, unsynced: no thread hop per
    /// upload, and the batch's first barrier makes all of them durable at once.
    Small {
        data: bytes::Bytes,
        dir: PathBuf,
        name: Option<PathBuf>,
    },
    /// A small body the committer spooled, not durable before the first barrier.
    Unsynced(Spool),
}

impl Upload {
    fn spool(&mut self) -> Option<&mut Spool> {
        match self {
            Upload::Spooled(spool) | Upload::Unsynced(spool) => Some(spool),
            Upload::Small { .. } => None,
        }
    }
}

/// An upload asking to be published.
struct Publish {
    upload: Upload,
    row: IndexRow,
    reply: oneshot::Sender<io::Result<Reply>>,
}

/// An archive found in the store without a row, with the row rebuilt from the
/// archive by the caller (hashing and decompressing a large archive on the
/// committer would stall every other publish).
struct Adopt {
    row: IndexRow,
    reply: oneshot::Sender<io::Result<Reply>>,
}

enum Request {
    Publish(Publish),
    Adopt(Adopt),
}

impl Request {
    fn row(&self) -> &IndexRow {
        match self {
            Request::Publish(p) => &p.row,
            Request::Adopt(a) => &a.row,
        }
    }

    /// Drops the upload (if any) and hands back where the answer goes.
    fn discard(self) -> oneshot::Sender<io::Result<Reply>> {
        match self {
            Request::Publish(p) => p.reply, // the spool goes with it
            Request::Adopt(a) => a.reply,
        }
    }

    fn answer(self, reply: io::Result<Reply>) {
        let _ = self.discard().send(reply);
    }
}

/// The committer's answer to one request.
enum Reply {
    Done(Published),
    /// The key's archive is in the store without a row (a crash between a rename
    /// and its append, or a failed barrier): the caller rebuilds the row from the
    /// archive, off the committer, and asks to adopt it.
    Orphan(PathBuf),
}

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// This upload created the archive and its row.
    Created(Entry),
    /// The key was already stored (by a racing upload or earlier); this upload's
    /// temp file was removed. The caller decides 200 or 409 against the entry.
    Existing(Entry),
}

/// `e` again, for each of the requests it fails (an OS error keeps its code, so a
/// full disk is still a 507 for every one of them).
fn same_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

fn stopped() -> io::Error {
    io::Error::other("index writer has stopped")
}

/// Clears the flag when the committer thread ends, also by a panic.
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What the committer thread reports about itself, for health and the watchdog.
struct Status {
    epoch: std::time::Instant,
    /// When the batch in progress began (ms since `epoch`, plus one); 0 when idle.
    busy_since_ms: AtomicU64,
    /// The last failed write, until a later batch succeeds.
    failure: Mutex<Option<(crate::health::Part, String, std::time::Instant)>>,
}

impl Status {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            busy_since_ms: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    /// The committer took a batch (`busy_for` counts from now).
    fn batch_started(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.busy_since_ms.store(ms, Ordering::SeqCst);
    }

    /// The committer finished its batch.
    fn batch_done(&self) {
        self.busy_since_ms.store(0, Ordering::SeqCst);
    }

    fn failed(&self, part: crate::health::Part, error: &io::Error) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((part, error.to_string(), std::time::Instant::now()));
    }

    fn succeeded(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_some() {
            *failure = None;
        }
    }
}

/// The handle request handlers publish through.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
    alive: Arc<AtomicBool>,
    status: Arc<Status>,
}

impl Committer {
    /// Publishes `upload` under the key of `row`.
    pub async fn publish(&self, upload: Upload, row: IndexRow) -> io::Result<Published> {
        let (host_id, episode_id) = (row.host_id.clone(), row.episode_id.clone());
        let request = |reply| Request::Publish(Publish { upload, row, reply });
        let archive = match self.call(request).await? {
            Reply::Done(published) => return Ok(published),
            Reply::Orphan(archive) => archive,
        };
        let row = tokio::task::spawn_blocking(move || {
            let row = crate::reconcile::row_for_archive(&host_id, &episode_id, &archive)?;
            // Its data is made durable here; its directory entry by the batch.
            crate::reconcile::open_archive(&archive)?.sync_all()?;
            Ok::<_, io::Error>(row)
        })
        .await
        .map_err(|e| io::Error::other(format!("rebuilding the row of an orphan archive: {e}")))??;
        match self
            .call(|reply| Request::Adopt(Adopt { row, reply }))
            .await?
        {
            Reply::Done(published) => Ok(published),
            Reply::Orphan(_) => Err(io::Error::other("an orphan archive was not adopted")),
        }
    }

    async fn call(
        &self,
        request: impl FnOnce(oneshot::Sender<io::Result<Reply>>) -> Request,
    ) -> io::Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(request(reply)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// False once the committer thread has ended (it never does unless it panicked):
    /// every publish would fail.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// How long the committer has been on its current batch; `None` when idle.
    pub fn busy_for(&self) -> Option<std::time::Duration> {
        match self.status.busy_since_ms.load(Ordering::SeqCst) {
            0 => None,
            since => Some(
                self.status
                    .epoch
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(since - 1)),
            ),
        }
    }

    /// The last write that failed, unless a batch succeeded since.
    pub fn last_failure(&self) -> Option<crate::health::WriteFailure> {
        let failure = self
            .status
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .map(|(part, error, at)| crate::health::WriteFailure {
                part: *part,
                error: error.clone(),
                age: at.elapsed(),
            })
    }

    /// Starts the index-writer thread, appending to `index_path`.
    pub fn spawn(index: Arc<Index>, store_root: PathBuf, index_path: &Path) -> io::Result<Self> {
        let status = Arc::new(Status::new());
        let commit_loop = CommitLoop::open(index, store_root, index_path, status.clone())?;
        let (tx, rx) = mpsc::channel::<Request>();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveFlag(alive.clone());
        std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || {
                let _flag = flag;
                commit_loop.run(rx)
            })?;
        Ok(Self { tx, alive, status })
    }
}

/// Appends rows for archives that are in the store but not in the index (start-up
/// reconciliation), before the committer starts. Each archive and its directory
/// entry are made durable first, so no row can outlive its archive in a crash.
pub fn append_reconciled(
    index: &Index,
    store_root: &Path,
    index_path: &Path,
    rows: &[IndexRow],
) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for row in rows {
        File::open(archive_path(store_root, &row.host_id, &row.episode_id))?.sync_all()?;
        let dir = store_root.join(&row.host_id);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.push(store_root.to_owned());
    for dir in &dirs {
        fsx::fsync_dir(dir)?;
    }
    let mut file = IndexFile::open(index_path)?;
    file.append(&encode_rows(rows)?)?;
    for row in rows {
        index.insert(
            row.host_id.clone(),
            row.episode_id.clone(),
            index.entry_of(row),
        );
    }
    Ok(())
}

fn encode_rows<'a>(rows: impl IntoIterator<Item = &'a IndexRow>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(320);
    for row in rows {
        serde_json::to_writer(&mut buf, row).map_err(io::Error::other)?;
        buf.push(b'\n');
    }
    Ok(buf)
}

pub fn archive_path(store_root: &Path, host_id: &HostId, episode_id: &EpisodeId) -> PathBuf {
    store_root.join(host_id).join(format!(
        "{episode_id}{}",
        episode_common::wire::ARCHIVE_SUFFIX
    ))
}

struct CommitLoop {
    index: Arc<Index>,
    store_root: PathBuf,
    file: IndexFile,
    /// `syncfs` on a handle opened once on `store_root`; `None` where the kernel
    /// has no syncfs: then every file and directory is fsynced one by one.
    syncfs: Option<fsx::SyncFs>,
    /// The index file itself is on the store's filesystem: one `syncfs` covers both.
    index_with_store: bool,
    /// Host directories known to exist with a durable name (stat'ed or created
    /// once, not per publish).
    host_dirs: HashSet<HostId>,
    status: Arc<Status>,
}

/// A row this batch appends, and whom to tell once it is durable.
struct Staged {
    row: IndexRow,
    entry: Entry,
    reply: oneshot::Sender<io::Result<Reply>>,
    /// This batch placed the archive (else it adopts an orphan).
    created: bool,
}

const MAX_BATCH: usize = 256;

impl CommitLoop {
    fn open(
        index: Arc<Index>,
        store_root: PathBuf,
        index_path: &Path,
        status: Arc<Status>,
    ) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let file = IndexFile::open(index_path)?;
        let syncfs = fsx::SyncFs::open(&store_root)?;
        let index_with_store = match &syncfs {
            // The device of the opened index file, not of its directory: the path
            // may be a symlink or a mount point onto another filesystem.
            Some(syncfs) => file.file.metadata()?.dev() == syncfs.dev()?,
            None => {
                tracing::warn!(event = %Event::StorageMode, store_root = %store_root.display(), "syncfs is not available: every file and directory is fsynced one by one");
                false
            }
        };
        Ok(Self {
            index,
            store_root,
            file,
            syncfs,
            index_with_store,
            host_dirs: HashSet::new(),
            status,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.status.batch_started();
            self.commit(batch);
            self.status.batch_done();
        }
    }

    /// Barrier 1: the data of every upload its writer did not fsync (small bodies)
    /// becomes durable, with one syncfs, before anything is named in the store.
    fn sync_data(&self, batch: Vec<Request>) -> Vec<Request> {
        let unsynced = |r: &Request| matches!(r, Request::Publish(p) if matches!(p.upload, Upload::Unsynced(_)));
        if !batch.iter().any(unsynced) {
            return batch;
        }
        let Some(syncfs) = &self.syncfs else {
            return batch
                .into_iter()
                .filter_map(|r| match r {
                    Request::Publish(mut p) if matches!(p.upload, Upload::Unsynced(_)) => {
                        match p.upload.spool().expect("spooled").sync_data() {
                            Ok(()) => Some(Request::Publish(p)),
                            Err(e) => {
                                tracing::error!(event = %Event::StorageFailed, error = %e, "fsync of an upload failed; it is not acknowledged");
                                Request::Publish(p).answer(Err(e));
                                None
                            }
                        }
                    }
                    r => Some(r),
                })
                .collect();
        };
        match syncfs.sync() {
            Ok(()) => batch,
            Err(e) => {
                self.status.failed(crate::health::Part::Store, &e);
                tracing::error!(event = %Event::StorageFailed, error = %e, "syncfs of the store failed; those uploads are not acknowledged");
                let (failed, kept): (Vec<_>, Vec<_>) = batch.into_iter().partition(unsynced);
                for request in failed {
                    request.answer(Err(same_error(&e)));
                }
                kept
            }
        }
    }

    /// Writes the batch's small bodies into their spools (unsynced).
    fn spool_small(batch: Vec<Request>) -> Vec<Request> {
        batch
            .into_iter()
            .filter_map(|request| match request {
                Request::Publish(mut p) => {
                    if let Upload::Small { data, dir, name } = &p.upload {
                        match crate::upload::spool_small(dir, name.clone(), data) {
                            Ok(spool) => p.upload = Upload::Unsynced(spool),
                            Err(e) => {
                                Request::Publish(p).answer(Err(e));
                                return None;
                            }
                        }
                    }
                    Some(Request::Publish(p))
                }
                adopt => Some(adopt),
            })
            .collect()
    }

    fn commit(&mut self, batch: Vec<Request>) {
        let batch = self.sync_data(Self::spool_small(batch));
        let mut staged: Vec<Staged> = Vec::with_capacity(batch.len());
        let mut staged_keys: HashMap<(HostId, EpisodeId), usize, Hasher> = HashMap::default();
        // Later requests for a key this batch stages: answered from its entry only
        // once the batch is durable (a 200 is as final as a 201), else its error.
        let mut waiting: Vec<(usize, oneshot::Sender<io::Result<Reply>>)> = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for request in batch {
            let (host_id, episode_id) = (&request.row().host_id, &request.row().episode_id);
            if let Some(entry) = stored_entry(&self.index, &self.store_root, host_id, episode_id) {
                request.answer(Ok(Reply::Done(Published::Existing(entry))));
                continue;
            }
            let key = (host_id.clone(), episode_id.clone());
            if let Some(&i) = staged_keys.get(&key) {
                waiting.push((i, request.discard()));
                continue;
            }
            let (row, reply, created) = match request {
                Request::Publish(mut publish) => match self.place(&mut publish) {
                    Ok(Placed::Moved) => (publish.row, publish.reply, true),
                    Ok(Placed::Orphan(archive)) => {
                        Request::Publish(publish).answer(Ok(Reply::Orphan(archive)));
                        continue;
                    }
                    Err(e) => {
                        Request::Publish(publish).answer(Err(e));
                        continue;
                    }
                },
                Request::Adopt(adopt) => {
                    let archive = archive_path(&self.store_root, &key.0, &key.1);
                    if let Err(e) = crate::reconcile::open_archive(&archive) {
                        let _ = adopt.reply.send(Err(e));
                        continue;
                    }
                    (adopt.row, adopt.reply, false)
                }
            };
            let host_dir = self.store_root.join(&row.host_id);
            if !dirs.contains(&host_dir) {
                dirs.push(host_dir);
            }
            staged_keys.insert(key, staged.len());
            let entry = self.index.entry_of(&row);
            staged.push(Staged {
                row,
                entry,
                reply,
                created,
            });
        }
        if staged.is_empty() {
            return;
        }
        // Barrier 2: the new names (and adopted archives' names) and the rows.
        match self.append_durably(&staged, &dirs) {
            Ok(()) => {
                self.status.succeeded();
                for s in &staged {
                    self.index.insert(
                        s.row.host_id.clone(),
                        s.row.episode_id.clone(),
                        s.entry.clone(),
                    );
                    if !s.created {
                        tracing::warn!(event = %Event::Reconciled, host_id = %s.row.host_id, episode_id = %s.row.episode_id, "archive had no index row; row added");
                    }
                }
                for (i, reply) in waiting {
                    let entry = staged[i].entry.clone();
                    let _ = reply.send(Ok(Reply::Done(Published::Existing(entry))));
                }
                for s in staged {
                    let published = if s.created {
                        Published::Created(s.entry)
                    } else {
                        Published::Existing(s.entry)
                    };
                    let _ = s.reply.send(Ok(Reply::Done(published)));
                }
            }
            Err(e) => {
                self.status.failed(crate::health::Part::Index, &e);
                // The archives are in place but not indexed: a retry finds the
                // orphan and adopts it. Nothing was acknowledged.
                tracing::error!(event = %Event::StorageFailed, error = %e, n_uploads = staged.len() + waiting.len(), "index append failed; uploads not acknowledged");
                let replies = staged
                    .into_iter()
                    .map(|s| s.reply)
                    .chain(waiting.into_iter().map(|(_, r)| r));
                for reply in replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }

    /// Barrier 2: the new names and the rows. One `syncfs` when the index shares the
    /// store's filesystem; else every touched directory is fsynced while the rows
    /// are appended and the index fdatasynced, side by side.
    fn append_durably(&mut self, staged: &[Staged], dirs: &[PathBuf]) -> io::Result<()> {
        let lines = encode_rows(staged.iter().map(|s| &s.row))?;
        match &self.syncfs {
            Some(syncfs) if self.index_with_store => {
                self.file.append_then(&lines, |_| syncfs.sync())
            }
            _ => {
                let file = &mut self.file;
                std::thread::scope(|scope| {
                    let names = scope.spawn(|| dirs.iter().try_for_each(|dir| fsx::fsync_dir(dir)));
                    let rows = file.append(&lines);
                    let names = names
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("directory fsync panicked")));
                    rows.and(names)
                })
            }
        }
    }

    fn place(&mut self, publish: &mut Publish) -> io::Result<Placed> {
        let (host_id, episode_id) = (&publish.row.host_id, &publish.row.episode_id);
        let dest = archive_path(&self.store_root, host_id, episode_id);
        if !self.host_dirs.contains(host_id) {
            let host_dir = self.store_root.join(host_id);
            match std::fs::create_dir(&host_dir) {
                Ok(()) => {
                    if let Err(e) = fsx::fsync_dir(&self.store_root) {
                        // Not left behind: a later publish would trust its name.
                        let _ = std::fs::remove_dir(&host_dir);
                        return Err(e);
                    }
                }
                // Once per host: never write through a symlink (or into a file).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(&host_dir)?.is_dir() {
                        tracing::error!(event = %episode_common::Event::StoreEntryNotRegular, path = %host_dir.display(), "a host directory in the store is a symlink or not a directory; nothing is written through it");
                        return Err(io::Error::other(format!(
                            "{} is not a directory",
                            host_dir.display()
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
            self.host_dirs.insert(host_id.clone());
        }
        let spool = publish.upload.spool().expect("spooled before placing");
        match spool.publish(&dest) {
            Ok(()) => Ok(Placed::Moved),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Placed::Orphan(dest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.host_dirs.remove(host_id) => {
                // The host directory went away under us (removed by hand): make it again.
                self.place(publish)
            }
            Err(e) => Err(e),
        }
    }
}

enum Placed {
    Moved,
    /// The archive is already there without a row.
    Orphan(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, ep: &str, body: &[u8]) -> IndexRow {
        IndexRow {
            host_id: HostId::new(host).unwrap(),
            episode_id: EpisodeId::new(ep).unwrap(),
            sha256: Sha256::of(body),
            tar_sha256: None,
            bytes: body.len() as u64,
            code_commit: Some("c0ffee".into()),
            started_at: None,
            received_at: "2026-11-22T10:00:00Z".into(),
            client: None,
        }
    }

    fn line(r: &IndexRow) -> String {
        serde_json::to_string(r).unwrap() + "\n"
    }

    #[test]
    fn loads_rows_and_reports_a_torn_unparseable_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.jsonl");
        let (a, b) = (row("lab1", "E1", b"a"), row("lab1", "E2", b"b"));
        let text = format!("{}{}{{\"host_id\":\"lab1\",\"epi", line(&a), line(&b));
        std::fs::write(&path, &text).unwrap();
        let (index, report) = load(&path).unwrap();
        assert_eq!(report.rows, 2);
        assert_eq!(
            index.get(&a.host_id, &a.episode_id).unwrap().sha256,
            a.sha256
        );
        let (offset, _, parses) = report.torn_tail.unwrap();
        assert!(!parses);
        repair_tail(&path, &report).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), offset);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}{}", line(&a), line(&b))
        );
    }

    #[test]
    fn splits_at_newlines_only() {
        let text = b"aa\nbbbb\nc\ndddddd\ne";
        for n in 1..6 {
            let pieces = split_at_lines(text, n);
            assert_eq!(pieces.concat(), text, "{n}");
            for piece in &pieces[..pieces.len() - 1] {
                assert_eq!(piece.last(), Some(&b'\n'), "{n}: {pieces:?}");
            }
        }
        assert!(split_at_lines(b"", 4).is_empty());
    }

    #[test]
    fn parallel_pieces_keep_line_numbers_and_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.jsonl");
        let mut text = String::new();
        for i in 0..5000 {
            if i == 3777 {
                text.push_str("garbage\n");
            }
            text.push_str(&line(&row(
                "lab1",
                &format!("E{i}"),
                format!("{i}").as_bytes(),
            )));
        }
        text.push_str("{\"host_id\":");
        std::fs::write(&path, &text).unwrap();
        let (index, report) = load(&path).unwrap();
        assert_eq!((report.rows, index.len()), (5000, 5000));
        assert_eq!(report.bad_lines.len(), 1);
        assert_eq!(
            report.bad_lines[0].0, 3778,
            "1-based line number of the garbage"
        );
        let (offset, _, parses) = report.torn_tail.unwrap();
        assert!(!parses);
        assert_eq!(offset as usize, text.rfind('{').unwrap());
        assert!(index.contains_str("lab1", "E4999") && !index.contains_str("lab1", "E5000"));
    }

    #[test]
    fn completes_a_torn_tail_that_is_a_whole_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.jsonl");
        let a = row("lab1", "E1", b"a");
        std::fs::write(&path, line(&a).trim_end()).unwrap();
        let (index, report) = load(&path).unwrap();
        assert!(index.contains(&a.host_id, &a.episode_id));
        assert!(report.torn_tail.unwrap().2);
        repair_tail(&path, &report).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line(&a));
    }

    #[test]
    fn reports_bad_lines_and_duplicates_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.jsonl");
        let a = row("lab1", "E1", b"a");
        let mut a2 = row("lab1", "E1", b"other");
        a2.bytes = 99;
        std::fs::write(&path, format!("{}not json\n\n{}", line(&a), line(&a2))).unwrap();
        let (index, report) = load(&path).unwrap();
        assert_eq!(report.rows, 1);
        assert_eq!(report.bad_lines.len(), 1);
        assert_eq!(report.bad_lines[0].0, 2);
        assert_eq!(
            report.duplicates,
            vec![(a.host_id.clone(), a.episode_id.clone())]
        );
        assert_eq!(
            index.get(&a.host_id, &a.episode_id).unwrap().bytes,
            99,
            "the last row wins"
        );
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn fleet_aggregates_follow_loaded_and_inserted_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.jsonl");
        let a = row("lab1", "E1", b"a");
        let mut a2 = row("lab1", "E1", b"other");
        a2.bytes = 99;
        let b = row("lab2", "E1", b"bb");
        std::fs::write(&path, format!("{}{}{}", line(&a), line(&b), line(&a2))).unwrap();
        let (index, _) = load(&path).unwrap();
        let totals = |index: &Index, host: &str| {
            index.with_stats(|s| {
                let h = &s[host];
                (h.episodes_total, h.bytes_total, h.last_stored)
            })
        };
        let t = index.entry_of(&a).received_at;
        assert_eq!(
            totals(&index, "lab1"),
            (1, 99, t),
            "the replaced row is not counted"
        );
        assert_eq!(totals(&index, "lab2"), (1, 2, t));
        let mut c = row("lab2", "E2", b"ccc");
        c.received_at = "2026-11-22T11:00:00Z".into();
        let entry = index.entry_of(&c);
        assert!(index.insert(c.host_id.clone(), c.episode_id.clone(), entry));
        assert_eq!(totals(&index, "lab2"), (2, 5, t + 3600));
        let mut c2 = c.clone();
        c2.bytes = 10;
        let entry = index.entry_of(&c2);
        assert!(!index.insert(c2.host_id.clone(), c2.episode_id.clone(), entry));
        assert_eq!(
            totals(&index, "lab2"),
            (2, 12, t + 3600),
            "a replacement counts once"
        );
    }

    /// A publish request as the handler sends it, and where its answer arrives.
    fn request(temp: PathBuf, row: IndexRow) -> (Request, oneshot::Receiver<io::Result<Reply>>) {
        let (reply, rx) = oneshot::channel();
        let publish = Publish {
            upload: Upload::Spooled(Spool::from_file(temp).unwrap()),
            row,
            reply,
        };
        (Request::Publish(publish), rx)
    }

    fn store_and_incoming(dir: &Path) -> (PathBuf, PathBuf) {
        let (store, incoming) = (dir.join("store"), dir.join("incoming"));
        std::fs::create_dir_all(&store).unwrap();
        std::fs::create_dir_all(&incoming).unwrap();
        (store, incoming)
    }

    #[test]
    fn a_duplicate_in_a_batch_gets_the_batch_error_not_an_early_200() {
        let dir = tempfile::tempdir().unwrap();
        let (store, incoming) = store_and_incoming(dir.path());
        // Every append to this index fails (ENOSPC): barrier 2 of the batch fails.
        let index_path = dir.path().join("index.jsonl");
        std::os::unix::fs::symlink("/dev/full", &index_path).unwrap();
        let index = Arc::new(Index::default());
        let mut commit_loop = CommitLoop::open(
            index.clone(),
            store.clone(),
            &index_path,
            Arc::new(Status::new()),
        )
        .unwrap();
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for i in 0..2 {
            let temp = incoming.join(format!("t{i}"));
            std::fs::write(&temp, b"same").unwrap();
            let (request, rx) = request(temp, row("lab1", "E1", b"same"));
            batch.push(request);
            answers.push(rx);
        }
        commit_loop.commit(batch);
        for (i, mut rx) in answers.into_iter().enumerate() {
            match rx.try_recv().expect("answered when the batch ended") {
                Err(e) => assert!(fsx::is_no_space(&e), "request {i}: {e}"),
                Ok(Reply::Done(p)) => {
                    panic!("request {i} was told {p:?} though nothing is indexed")
                }
                Ok(Reply::Orphan(_)) => panic!("request {i}: orphan"),
            }
        }
        assert!(!index.contains_str("lab1", "E1"));
        assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
    }

    #[test]
    fn a_duplicate_in_a_batch_is_answered_from_the_durable_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (store, incoming) = store_and_incoming(dir.path());
        let index_path = dir.path().join("index.jsonl");
        let index = Arc::new(Index::default());
        let mut commit_loop =
            CommitLoop::open(index.clone(), store, &index_path, Arc::new(Status::new())).unwrap();
        let (mut batch, mut answers) = (Vec::new(), Vec::new());
        for (i, body) in [b"same", b"same", b"othr"].iter().enumerate() {
            let temp = incoming.join(format!("t{i}"));
            std::fs::write(&temp, body).unwrap();
            let (request, rx) = request(temp, row("lab1", "E1", *body));
            batch.push(request);
            answers.push(rx);
        }
        commit_loop.commit(batch);
        let published: Vec<Published> = answers
            .into_iter()
            .map(|mut rx| match rx.try_recv().unwrap().unwrap() {
                Reply::Done(p) => p,
                Reply::Orphan(_) => panic!("orphan"),
            })
            .collect();
        let entry = index
            .get(
                &HostId::new("lab1").unwrap(),
                &EpisodeId::new("E1").unwrap(),
            )
            .unwrap();
        assert_eq!(entry.sha256, Sha256::of(b"same"));
        assert_eq!(
            published,
            [
                Published::Created(entry.clone()),
                Published::Existing(entry.clone()),
                Published::Existing(entry)
            ]
        );
        assert_eq!(
            std::fs::read_to_string(&index_path)
                .unwrap()
                .lines()
                .count(),
            1
        );
    }

    #[test]
    fn the_index_shares_the_store_only_when_the_index_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_and_incoming(dir.path());
        let index = Arc::new(Index::default());
        let plain = dir.path().join("index.jsonl");
        let commit_loop = CommitLoop::open(
            index.clone(),
            store.clone(),
            &plain,
            Arc::new(Status::new()),
        )
        .unwrap();
        assert!(commit_loop.index_with_store);
        // Its directory is on the store's filesystem, the file itself is not.
        let elsewhere = dir.path().join("linked.jsonl");
        std::os::unix::fs::symlink("/dev/full", &elsewhere).unwrap();
        let commit_loop =
            CommitLoop::open(index, store, &elsewhere, Arc::new(Status::new())).unwrap();
        assert!(!commit_loop.index_with_store);
    }

    #[test]
    fn a_second_lock_on_the_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.jsonl");
        let held = lock(&path).unwrap();
        assert_eq!(lock(&path).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        lock(&path).expect("free again once the holder closed it");
    }

    #[tokio::test]
    async fn an_orphan_met_by_a_publish_is_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, incoming) = store_and_incoming(dir.path());
        std::fs::create_dir_all(store.join("lab1")).unwrap();
        std::fs::write(store.join("lab1/E1.tar.zst"), b"orphan").unwrap();
        let index_path = dir.path().join("index.jsonl");
        let index = Arc::new(Index::default());
        let committer = Committer::spawn(index.clone(), store.clone(), &index_path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let temp = incoming.join(format!("t{i}"));
            let body: &[u8] = if i % 2 == 0 { b"orphan" } else { b"other" };
            std::fs::write(&temp, body).unwrap();
            let c = committer.clone();
            tasks.push(tokio::spawn(async move {
                let upload = Upload::Spooled(Spool::from_file(temp).unwrap());
                c.publish(upload, row("lab1", "E1", body)).await.unwrap()
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Published::Existing(entry) => assert_eq!(entry.sha256, Sha256::of(b"orphan")),
                other => panic!("{other:?}"),
            }
        }
        let text = std::fs::read_to_string(&index_path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(&Sha256::of(b"orphan").to_hex()));
        assert_eq!(
            std::fs::read(store.join("lab1/E1.tar.zst")).unwrap(),
            b"orphan"
        );
        assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
        assert!(committer.is_alive());
    }

    #[tokio::test]
    async fn committer_publishes_once_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, incoming) = (dir.path().join("store"), dir.path().join("incoming"));
        std::fs::create_dir_all(&store).unwrap();
        std::fs::create_dir_all(&incoming).unwrap();
        let index_path = dir.path().join("index.jsonl");
        let index = Arc::new(Index::default());
        let committer = Committer::spawn(index.clone(), store.clone(), &index_path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            // Half in named spools (synced, renamed into place), half small bodies
            // the committer spools unnamed and unsynced (linked after its barrier).
            let upload = if i % 2 == 0 {
                let temp = incoming.join(format!("t{i}"));
                std::fs::write(&temp, b"same").unwrap();
                Upload::Spooled(Spool::from_file(temp).unwrap())
            } else {
                // Unnamed, or named where a filesystem has no O_TMPFILE.
                let name = (i % 4 == 1).then(|| incoming.join(format!("small{i}")));
                Upload::Small {
                    data: bytes::Bytes::from_static(b"same"),
                    dir: incoming.clone(),
                    name,
                }
            };
            let c = committer.clone();
            tasks.push(tokio::spawn(async move {
                c.publish(upload, row("lab1", "E1", b"same")).await.unwrap()
            }));
        }
        let mut created = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Published::Created(_)) {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        assert_eq!(
            std::fs::read_to_string(&index_path)
                .unwrap()
                .lines()
                .count(),
            1
        );
        assert_eq!(
            std::fs::read(store.join("lab1/E1.tar.zst")).unwrap(),
            b"same"
        );
        assert_eq!(
            std::fs::read_dir(&incoming).unwrap().count(),
            0,
            "losers' temp files are removed"
        );
    }
}
