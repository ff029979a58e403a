//! Fuzz target: the shipper's `meta.json` reader (`meta::parse` on what
//! serde_json made of the bytes, as `meta::read` does). A field it keeps is
//! always fit for its header; it never panics.
#![no_main]

use episode_common::wire::parse_started_at;
use episode_shipper::meta::{Meta, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let mut meta = Meta::default();
    parse(&value, "meta.json", &mut meta);
    if let Some(commit) = &meta.code_commit {
        assert!(!commit.is_empty() && commit.len() <= 128, "{commit:?}");
        assert!(commit.bytes().all(|b| b.is_ascii_graphic()), "{commit:?}");
    }
    if let Some(started) = &meta.started_at {
        // What is sent reads back as the same instant, and is header-safe.
        assert!(started.bytes().all(|b| b.is_ascii_graphic()), "{started:?}");
        let again = parse_started_at(started).expect("started_at re-parses");
        let first = parse_started_at(&match &value["started_at"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .expect("the original parsed");
        assert_eq!(
            again.unix_timestamp(),
            first.unix_timestamp(),
            "{started:?}"
        );
    }
    let kept = usize::from(meta.code_commit.is_some()) + usize::from(meta.started_at.is_some());
    assert!(kept + meta.warnings.len() <= 2);
});
