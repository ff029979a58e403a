//! Fuzz target: TOML configs (the receiver's and the shipper's schemas through
//! common's `parse_toml`) and the duration and size values in them. Never a
//! panic; an error names the file; a duration reads back from how it is shown.
#![no_main]

use std::path::Path;

use episode_common::config::{ByteSize, Dur, parse_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = Dur::parse(text) {
        let shown = d.to_string();
        assert_eq!(
            Dur::parse(&shown).ok(),
            Some(d),
            "{text:?} shows as {shown:?}"
        );
    }
    let _ = ByteSize::parse(text);
    // The schemas only: `validate` reads the files a config names.
    let receiver = Path::new("receiver.toml");
    if let Err(e) = parse_toml::<episode_receiver::config::Config>(receiver, text) {
        assert!(e.to_string().contains("receiver.toml"), "{e}");
    }
    let shipper = Path::new("shipper.toml");
    if let Err(e) = parse_toml::<episode_shipper::config::Config>(shipper, text) {
        assert!(e.to_string().contains("shipper.toml"), "{e}");
    }
});
