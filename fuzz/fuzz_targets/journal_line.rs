//! Fuzz target: the doctor's journal-line classifier (`journal::parse_line`:
//! journalctl JSON, the shipper's JSON logs, plain text). Never a panic; a blank
//! line is no line.
#![no_main]

use episode_doctor::journal::{Window, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, i16, &str)| {
    let (now_offset_s, offset_min, line) = input;
    // A plausible clock and time zone (±18 h), as a real host has.
    let now_us = (1_700_000_000 + i64::from(now_offset_s)) * 1_000_000;
    let window = Window {
        cutoff_us: now_us - 86_400 * 1_000_000,
        now_us,
        utc_offset_secs: i32::from(offset_min % 1080) * 60,
    };
    let parsed = parse_line(line, &window);
    if line.trim().is_empty() {
        assert!(parsed.is_none());
    } else {
        assert!(parsed.is_some());
    }
});
