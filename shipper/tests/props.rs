//! Property tests of the shipper's pure parts and of packing: an archive is
//! byte-identical for the same content whatever the creation order, and the
//! backoff stays between its floor and its cap.

mod tree;

use std::time::Duration;

use episode_common::EpisodeId;
use episode_shipper::pack::{collect_entries, write_archive};
use episode_shipper::policy::backoff;
use proptest::prelude::*;

fn pack_bytes(dir: &std::path::Path, id: &EpisodeId) -> Vec<u8> {
    let (entries, skipped) = collect_entries(dir, id).unwrap();
    assert!(skipped.is_empty(), "skipped {skipped:?}");
    write_archive(&entries, 3, Vec::new(), &|_| {}).unwrap().1
}

proptest! {
    // Each case writes two trees and packs three times: 64 cases take about a second on tmpfs.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any content, created in two different orders in two directories of other
    /// names, packs to the same bytes.
    #[test]
    fn packing_is_byte_identical_for_any_content_and_creation_order(
        tree in tree::tree(24),
        other_order in any::<prop::sample::Index>(),
    ) {
        // On tmpfs a directory lists in creation order (ext4 lists in hash
        // order, the same for both), so the two orders below list differently.
        let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs at /dev/shm");
        let (a, b) = (dir.path().join("a"), dir.path().join("b-other"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        tree.write(&a);
        // The same tree, created in the reverse order (parents still first) and
        // rotated, so directory listings differ.
        let mut reversed = tree.clone();
        reversed.order.reverse();
        if !reversed.order.is_empty() {
            let n = other_order.index(reversed.order.len());
            reversed.order.rotate_left(n);
        }
        reversed.order.sort_by_key(|p| p.matches('/').count());
        reversed.write(&b);
        let id = EpisodeId::new("01EPISODE").unwrap();
        let first = pack_bytes(&a, &id);
        prop_assert_eq!(&first, &pack_bytes(&b, &id));
        prop_assert_eq!(&first, &pack_bytes(&a, &id), "packing twice differs");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Every retry waits at least `initial` and at most `max(initial, max)`, and no
    /// more than `initial × 2^failures`.
    #[test]
    fn backoff_never_undercuts_its_floor_nor_exceeds_its_cap(
        failures in any::<u32>(),
        initial_ms in 0u64..=86_400_000,
        max_ms in 0u64..=86_400_000,
        unit in any::<f64>(),
    ) {
        let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
        let wait = backoff(failures, initial, max, unit);
        prop_assert!(wait >= initial, "{wait:?} < floor {initial:?}");
        prop_assert!(wait <= initial.max(max), "{wait:?} > cap {max:?}");
        let exponential = initial.saturating_mul(1u32 << failures.clamp(1, 31));
        prop_assert!(wait <= exponential.max(initial), "{wait:?} > {exponential:?}");
    }

    /// A larger draw never waits less, for the same retry.
    #[test]
    fn backoff_grows_with_the_draw(
        failures in 1u32..40,
        initial_ms in 1u64..=60_000,
        max_ms in 1u64..=3_600_000,
        u in 0.0f64..1.0,
        v in 0.0f64..1.0,
    ) {
        let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
        let (lo, hi) = if u <= v { (u, v) } else { (v, u) };
        prop_assert!(backoff(failures, initial, max, lo) <= backoff(failures, initial, max, hi));
    }
}
