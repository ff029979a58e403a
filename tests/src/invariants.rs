//! The product's promise as assertions: whatever happened to either process or the
//! network, every episode is stored exactly once with its files intact.
//!
//! Owns `Originals` (a snapshot of a host's episode directories taken before
//! shipping), `assert_consistent` (what must hold at any instant a shipper is dead:
//! every episode directory in exactly one of episodes/, shipped/, quarantine/, none
//! in quarantine) and `assert_all_stored_once` (what must hold when a run is over,
//! checked after restarting the receiver so its start-up cleanup and reconciliation
//! are part of the proof). It drives nothing but that restart; the scenarios live in
//! `tests/e2e/crash.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use episode_common::Sha256;

use crate::{Host, Receiver, TestEnv, archive_files, dir_files, tree};

/// The files of every episode of one host, as the recorder wrote them.
pub struct Originals {
    pub host_id: String,
    episodes: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Originals {
    /// Snapshots every directory in `host`'s `episodes/` (call it before shipping).
    pub fn snapshot(host: &Host) -> Self {
        let episodes = host
            .list(&host.episodes())
            .into_iter()
            .map(|id| {
                let files = dir_files(&host.episodes().join(&id));
                (id, files)
            })
            .collect();
        Self {
            host_id: host.host_id.clone(),
            episodes,
        }
    }

    /// Adds the episodes in `host`'s `episodes/` that are not known yet (written
    /// after the first snapshot, while the shipper runs).
    pub fn add_new(&mut self, host: &Host) {
        for id in host.list(&host.episodes()) {
            let dir = host.episodes().join(&id);
            self.episodes.entry(id).or_insert_with(|| dir_files(&dir));
        }
    }

    pub fn ids(&self) -> BTreeSet<String> {
        self.episodes.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.episodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }

    /// The files of episode `id`, keyed `<id>/<path>`.
    pub fn files(&self, id: &str) -> &BTreeMap<String, Vec<u8>> {
        &self.episodes[id]
    }
}

/// Where a host's episodes are at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub pending: usize,
    pub shipped: usize,
}

/// What must hold at any instant no shipper runs on `host`: every original episode
/// directory is in exactly one of episodes/, shipped/, quarantine/, nothing else is
/// there, and nothing was quarantined (every original is a valid episode).
pub fn assert_consistent(host: &Host, originals: &Originals) -> Placement {
    consistent(host, originals).unwrap_or_else(|e| panic!("{e}"))
}

/// The same while a shipper runs: the three listings are not one snapshot, so a
/// retire between them shows its episode in two places or none. Looks again for
/// up to 2 s; a real violation persists and fails with what the last look saw.
pub fn assert_consistent_while_shipping(host: &Host, originals: &Originals) -> Placement {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match consistent(host, originals) {
            Ok(placement) => return placement,
            Err(e) if std::time::Instant::now() >= deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

fn consistent(host: &Host, originals: &Originals) -> Result<Placement, String> {
    let pending = host.list(&host.episodes());
    let shipped = host.list(&host.shipped());
    let quarantined = host.list(&host.quarantine());
    if !quarantined.is_empty() {
        return Err(format!("wrongly quarantined: {quarantined:?}"));
    }
    let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (place, names) in [("episodes", &pending), ("shipped", &shipped)] {
        for name in names {
            seen.entry(name.as_str()).or_default().push(place);
        }
    }
    let ids = originals.ids();
    let unknown: Vec<&&str> = seen.keys().filter(|n| !ids.contains(**n)).collect();
    if !unknown.is_empty() {
        return Err(format!(
            "directories that are no original episode (a duplicate kept under another name?): {unknown:?}"
        ));
    }
    for id in &ids {
        match seen.get(id.as_str()).map(Vec::as_slice) {
            Some([_]) => {}
            None => {
                return Err(format!(
                    "episode {id} is lost: in none of episodes/, shipped/, quarantine/"
                ));
            }
            Some(places) => return Err(format!("episode {id} is in several places: {places:?}")),
        }
    }
    Ok(Placement {
        pending: pending.len(),
        shipped: shipped.len(),
    })
}

/// Kills the receiver and starts it again on the same config (a new port), so its
/// start-up (incoming emptied, index reconciled with the store) has run.
pub fn restart_receiver(env: &TestEnv, receiver: &mut Receiver) {
    receiver.process.kill();
    *receiver = env.spawn_receiver(&receiver.config.clone());
}

/// What must hold when a run is over: restarts the receiver, then checks that every
/// original episode is stored exactly once and its archive holds byte-identical
/// files; the index has one row per (host, episode), each matching its archive; the
/// store holds nothing else for the host; `incoming_root` is empty; the host has
/// every episode in shipped/ (untouched) and nothing in episodes/ or quarantine/;
/// the outbox is empty; and no `.partial` or temp file is left in the data root.
pub fn assert_all_stored_once(
    env: &TestEnv,
    receiver: &mut Receiver,
    host: &Host,
    originals: &Originals,
) {
    restart_receiver(env, receiver);
    let ids = originals.ids();

    // The shipper's side.
    let placement = assert_consistent(host, originals);
    assert_eq!(
        placement,
        Placement {
            pending: 0,
            shipped: ids.len()
        },
        "not everything was shipped"
    );
    let outbox = host.list(&host.outbox());
    assert!(outbox.is_empty(), "outbox not empty: {outbox:?}");
    let leftovers: Vec<String> = tree(&host.data_root)
        .into_iter()
        .filter(|p| is_leftover(p))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial or temp files left in the data root: {leftovers:?}"
    );
    for id in &ids {
        assert!(
            dir_files(&host.shipped().join(id)) == *originals.files(id),
            "shipped/{id} differs from the episode as recorded"
        );
    }

    // The receiver's side.
    let incoming = receiver.incoming_files();
    assert!(
        incoming.is_empty(),
        "incoming not empty after a restart: {incoming:?}"
    );
    let rows = receiver.index_rows();
    let mut keys = BTreeSet::new();
    for row in &rows {
        let key = (
            row["host_id"].as_str().unwrap_or_default().to_owned(),
            row["episode_id"].as_str().unwrap_or_default().to_owned(),
        );
        assert!(keys.insert(key.clone()), "index row {key:?} is duplicated");
    }
    let indexed: BTreeSet<String> = keys
        .iter()
        .filter(|(h, _)| *h == originals.host_id)
        .map(|(_, e)| e.clone())
        .collect();
    assert_eq!(
        indexed.difference(&ids).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "indexed but never recorded"
    );
    assert_eq!(
        ids.difference(&indexed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "recorded but not indexed"
    );
    assert_eq!(
        list(&receiver.store_root),
        std::slice::from_ref(&originals.host_id),
        "the store root holds more than the host's directory"
    );
    let host_dir = receiver.store_root.join(&originals.host_id);
    let stored: BTreeSet<String> = list(&host_dir).into_iter().collect();
    let expected: BTreeSet<String> = ids.iter().map(|id| format!("{id}.tar.zst")).collect();
    assert_eq!(
        stored, expected,
        "the store holds other files than one archive per episode"
    );
    for row in rows
        .iter()
        .filter(|r| r["host_id"] == originals.host_id.as_str())
    {
        let id = row["episode_id"].as_str().expect("episode_id");
        let archive = std::fs::read(receiver.paths().archive(&originals.host_id, id))
            .unwrap_or_else(|e| panic!("archive of {id}: {e}"));
        assert_eq!(
            row["sha256"].as_str(),
            Some(Sha256::of(&archive).to_hex().as_str()),
            "index row of {id} does not describe its archive"
        );
        assert_eq!(row["bytes"].as_u64(), Some(archive.len() as u64), "{row}");
        assert!(
            archive_files(&archive) == *originals.files(id),
            "the stored archive of {id} does not hold the episode's files"
        );
    }
}

/// A file a crash may leave that something must clean: a pack in progress or an
/// atomic write's temp file.
fn is_leftover(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".partial") || (name.starts_with('.') && name.ends_with(".tmp"))
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_partials_and_temp_files() {
        assert!(is_leftover("outbox/01A.tar.zst.partial"));
        assert!(is_leftover("state/.retry.json.123.tmp"));
        assert!(!is_leftover("shipped/01A/events.jsonl"));
        assert!(!is_leftover("state/retry.json"));
    }

    #[test]
    fn a_consistent_host_places_each_episode_once() {
        let env = TestEnv::new("invariants");
        let host = env.shipper_host("h", "lab1", "https://127.0.0.1:1", "");
        crate::write_mixed_episodes(&host.data_root, 3, 1);
        let originals = Originals::snapshot(&host);
        assert_eq!(originals.len(), 3);
        let first = originals.ids().into_iter().next().unwrap();
        std::fs::create_dir_all(host.shipped()).unwrap();
        std::fs::rename(host.episodes().join(&first), host.shipped().join(&first)).unwrap();
        assert_eq!(
            assert_consistent(&host, &originals),
            Placement {
                pending: 2,
                shipped: 1
            }
        );
        std::fs::create_dir_all(host.episodes().join(&first)).unwrap();
        let twice = std::panic::catch_unwind(|| assert_consistent(&host, &originals));
        assert!(twice.is_err(), "an episode in two places is caught");
    }
}
