//! An episode directory as a value, for property tests: any files (names,
//! contents, modes, mtimes), directories and symlinks, written to disk in any
//! order. Shared with the receiver's round-trip property (`#[path]`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use proptest::prelude::*;

/// What one path of the tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { bytes: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// A tree: relative path (components joined by `/`) → node, and each path's mtime.
#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: BTreeMap<String, (Node, i64)>,
    /// The order in which the paths are created (a permutation of `nodes`' keys
    /// in which every directory comes before its children).
    pub order: Vec<String>,
}

/// A name: any UTF-8 but `/` and NUL, not `.` or `..`. (Names are UTF-8 here; the
/// shipper's packing of non-UTF-8 names as bytes comes with another branch, and
/// the merge widens this to any bytes.)
fn name() -> impl Strategy<Value = String> {
    "[^/\u{0}]{1,12}".prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => (proptest::collection::vec(any::<u8>(), 0..2048), 0u32..=0o7777)
            .prop_map(|(bytes, mode)| Node::File { bytes, mode: mode | 0o400 }),
        1 => (0u32..=0o7777).prop_map(|mode| Node::Dir { mode: mode | 0o700 }),
        1 => "[^\u{0}]{1,40}".prop_map(|target| Node::Symlink { target }),
    ]
}

/// Up to `max` entries, nested up to three deep, in a random creation order.
pub fn tree(max: usize) -> impl Strategy<Value = Tree> {
    let entry = (
        proptest::collection::vec(name(), 1..=3),
        node(),
        0i64..4_000_000_000,
    );
    proptest::collection::vec(entry, 0..max)
        .prop_map(|entries| {
            let mut nodes = BTreeMap::new();
            'next: for (parts, node, mtime) in entries {
                // Parents are directories; a path that clashes with an earlier one is dropped.
                for depth in 1..parts.len() {
                    let parent = parts[..depth].join("/");
                    match nodes.get(&parent) {
                        Some((Node::Dir { .. }, _)) => {}
                        Some(_) => continue 'next,
                        None => {
                            nodes.insert(parent, (Node::Dir { mode: 0o755 }, mtime));
                        }
                    }
                }
                nodes.entry(parts.join("/")).or_insert((node, mtime));
            }
            nodes
        })
        .prop_flat_map(|nodes| {
            let keys: Vec<String> = nodes.keys().cloned().collect();
            (Just(nodes), Just(keys).prop_shuffle())
        })
        .prop_map(|(nodes, mut order)| {
            // Parents first; otherwise keep the shuffled order.
            order.sort_by_key(|p| p.matches('/').count());
            Tree { nodes, order }
        })
}

impl Tree {
    /// Writes the tree under `root` (which must exist) in `self.order`, then sets
    /// modes and mtimes, deepest first, so creating children does not move them.
    pub fn write(&self, root: &Path) {
        for path in &self.order {
            let at = root.join(path);
            match &self.nodes[path].0 {
                Node::File { bytes, .. } => std::fs::write(&at, bytes).unwrap(),
                Node::Dir { .. } => std::fs::create_dir(&at).unwrap(),
                Node::Symlink { target } => std::os::unix::fs::symlink(target, &at).unwrap(),
            }
        }
        let mut deepest_first: Vec<&String> = self.nodes.keys().collect();
        deepest_first.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
        for path in deepest_first {
            let at = root.join(path);
            let (node, mtime) = &self.nodes[path];
            match node {
                Node::File { mode, .. } | Node::Dir { mode } => {
                    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode)).unwrap()
                }
                Node::Symlink { .. } => {}
            }
            set_mtime(&at, *mtime);
        }
        set_mtime(root, 1_700_000_000);
    }
}

/// Sets a path's mtime (and atime) without following a symlink.
pub fn set_mtime(path: &Path, secs: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    // SAFETY: `c` is a NUL-terminated path and `times` points to two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}
