//! Property tests across the receiver: any episode (any UTF-8 names, any modes,
//! any mtimes, symlinks) round-trips pack → PUT → store → unpack unchanged, and
//! the admission decision is monotonic in the limits it is given.

#[path = "../../shipper/tests/tree/mod.rs"]
mod tree;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use episode_common::{ByteSize, Dur, EpisodeId, Sha256};
use episode_receiver::admission::{Limits, PutHeaders, admit};
use episode_receiver::config::Config;
use episode_receiver::{AppState, app};
use episode_shipper::pack::{collect_entries, write_archive};
use http::{Request, StatusCode};
use proptest::prelude::*;
use time::OffsetDateTime;
use tower::ServiceExt as _;
use tree::{Node, Tree};

fn receiver(root: &std::path::Path) -> Arc<AppState> {
    std::fs::create_dir_all(root).unwrap();
    let text = format!(
        "store_root = {:?}\nincoming_root = {:?}\nindex_path = {:?}\nfree_space_reserve = \"1MiB\"\n",
        root.join("store"),
        root.join("incoming"),
        root.join("index.jsonl"),
    );
    let path = root.join("receiver.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    episode_receiver::open(config, &path).unwrap().0
}

/// Reads back what `root` holds, in `Tree`'s terms (the order is left empty).
fn read_tree(root: &std::path::Path) -> Tree {
    fn walk(dir: &std::path::Path, prefix: &str, tree: &mut Tree) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let node = if meta.is_dir() {
                walk(&entry.path(), &path, tree);
                Node::Dir { mode }
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                Node::Symlink {
                    target: target.into_os_string().into_string().unwrap(),
                }
            } else {
                Node::File {
                    bytes: std::fs::read(entry.path()).unwrap(),
                    mode,
                }
            };
            tree.nodes.insert(path, (node, meta.mtime()));
        }
    }
    let mut tree = Tree {
        nodes: Default::default(),
        order: Vec::new(),
    };
    walk(root, "", &mut tree);
    tree
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every file, directory and symlink of an episode comes out of the receiver's
    /// store as it went into the shipper's packer: names, bytes, modes, mtimes.
    #[test]
    fn any_episode_round_trips_pack_receiver_unpack(tree in tree::tree(16)) {
        let dir = tempfile::tempdir().unwrap();
        let episode = dir.path().join("episodes").join("01EPISODE");
        std::fs::create_dir_all(&episode).unwrap();
        tree.write(&episode);
        let id = EpisodeId::new("01EPISODE").unwrap();
        let (entries, skipped) = collect_entries(&episode, &id).unwrap();
        prop_assert!(skipped.is_empty(), "skipped {:?}", skipped);
        let (digests, archive) = write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap();

        let state = receiver(&dir.path().join("receiver"));
        let put = Request::put("/v1/episodes/lab1/01EPISODE")
            .header("content-length", archive.len())
            .header("repr-digest", digests.sha256.to_field())
            .header("x-tar-digest", digests.tar_sha256.to_field())
            .header("x-code-commit", "3f2c1e9a")
            .header("content-type", "application/zstd")
            .body(Body::from(archive.clone()))
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(app(state.clone()).oneshot(put)).unwrap().status();
        prop_assert_eq!(status, StatusCode::CREATED);
        let stored = std::fs::read(dir.path().join("receiver/store/lab1/01EPISODE.tar.zst")).unwrap();
        prop_assert_eq!(Sha256::of(&stored), digests.sha256);

        let mut headers = std::collections::BTreeMap::new();
        let mut listing = tar::Archive::new(zstd::stream::read::Decoder::new(&stored[..]).unwrap());
        for entry in listing.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_str().unwrap().trim_end_matches('/').to_owned();
            let inner = path.strip_prefix("01EPISODE/").unwrap_or("").to_owned();
            headers.insert(inner, entry.header().mtime().unwrap() as i64);
        }
        let out = dir.path().join("unpacked");
        std::fs::create_dir(&out).unwrap();
        let mut unpack = tar::Archive::new(zstd::stream::read::Decoder::new(&stored[..]).unwrap());
        unpack.set_preserve_permissions(true);
        unpack.set_preserve_mtime(true);
        unpack.set_unpack_xattrs(false);
        unpack.unpack(&out).unwrap();
        let got = read_tree(&out.join("01EPISODE"));
        prop_assert_eq!(got.nodes.len(), tree.nodes.len());
        for (path, (want, mtime)) in &tree.nodes {
            let Some((node, got_mtime)) = got.nodes.get(path) else {
                return Err(TestCaseError::fail(format!("{path:?} missing after unpack")));
            };
            prop_assert_eq!(node, want, "{:?}", path);
            // An unpacker sets a directory's mtime and then writes into it: the
            // archive's header is what carries a directory's mtime.
            let carried = if matches!(want, Node::Dir { .. }) { headers[path] } else { *got_mtime };
            prop_assert_eq!(carried, *mtime, "mtime of {:?}", path);
        }
    }
}

fn limits(max: u64, reserve: u64, window: Option<(u64, u64)>) -> Limits {
    let secs = |s| Dur(Duration::from_secs(s));
    Limits {
        max_episode_bytes: ByteSize(max),
        free_space_reserve: ByteSize(reserve),
        window: window.map(|(age, future)| (secs(age), secs(future))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// What the receiver admits under some limits it admits under looser ones
    /// (a larger size limit, a smaller reserve, more free space, a wider window or
    /// none), and what it rejects under them it rejects under tighter ones.
    #[test]
    fn admission_is_monotonic_in_its_limits(
        length in any::<u64>(),
        started_offset in proptest::option::of(-10_000_000_000i64..10_000_000_000),
        (max, looser_max) in (any::<u64>(), any::<u64>()),
        (reserve, less_reserve) in (any::<u64>(), any::<u64>()),
        (free, more_free) in (any::<u64>(), any::<u64>()),
        window in proptest::option::of((0u64..1 << 40, 0u64..1 << 40)),
        widen in (0u64..1 << 40, 0u64..1 << 40),
        drop_window in any::<bool>(),
    ) {
        let now = OffsetDateTime::from_unix_timestamp(1_765_000_000).unwrap();
        let put = PutHeaders {
            content_length: length,
            sha256: Sha256::of(b""),
            tar_sha256: None,
            code_commit: None,
            started_at: started_offset.map(|s| now + time::Duration::seconds(s)),
        };
        let tight = limits(max, reserve, window);
        let wider = window.and_then(|(age, future)| {
            (!drop_window).then(|| (age.saturating_add(widen.0), future.saturating_add(widen.1)))
        });
        let loose = limits(max.max(looser_max), reserve.min(less_reserve), wider);
        let free_loose = free.max(more_free);
        let tight_ok = admit(&put, &tight, now, free).is_ok();
        let loose_ok = admit(&put, &loose, now, free_loose).is_ok();
        prop_assert!(!tight_ok || loose_ok, "admitted under {tight:?} but not under {loose:?}");
    }
}
