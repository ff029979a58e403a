//! Fuzz target: the digest field parsers in common (`Repr-Digest`,
//! `Content-Digest`, `X-Tar-Digest` via `Sha256::from_field`; hex via
//! `Sha256::from_hex`). Never a panic; what parses formats back to itself.
#![no_main]

use episode_common::Sha256;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(digest) = Sha256::from_field(text) {
        assert_eq!(Sha256::from_field(&digest.to_field()), Ok(digest));
        assert!(text.to_ascii_lowercase().contains("sha-256"), "{text:?}");
    }
    if let Ok(digest) = Sha256::from_hex(text) {
        assert_eq!(digest.to_hex(), text.trim().to_ascii_lowercase());
    }
});
