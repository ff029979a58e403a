//! Fuzz target: the receiver's hand-written index-row parser (`index::fast_row`).
//! Whatever it accepts, serde_json must accept with the same fields; it never
//! panics, and what serde_json rejects it rejects.
#![no_main]

use episode_receiver::index::{RowRef, fast_row};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Some(fast) = fast_row(line) else {
        return;
    };
    let slow: RowRef<'_> = match serde_json::from_slice(line) {
        Ok(row) => row,
        Err(e) => panic!("fast_row accepted what serde_json rejects ({e}): {fast:?}"),
    };
    assert_eq!(fast, slow, "fast_row and serde_json disagree");
    // The row is also a JSON object whose members are exactly what fast_row read.
    let value: serde_json::Value = serde_json::from_slice(line).expect("valid JSON");
    assert_eq!(value["bytes"].as_u64(), Some(fast.bytes));
    assert_eq!(value["host_id"].as_str(), Some(fast.host_id));
});
