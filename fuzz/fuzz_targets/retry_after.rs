//! Fuzz target: the shipper's `Retry-After` reader (delay-seconds or an
//! HTTP-date). Never a panic; digits mean seconds; a date in the past means 0.
#![no_main]

use std::time::Duration;

use episode_shipper::policy::{MAX_RETRY_AFTER, parse_retry_after, retry_delay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, &str)| {
    let (offset, value) = input;
    // A plausible "now": 2001 … 2137 (the clock of a real host).
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + u64::from(offset));
    let parsed = parse_retry_after(value, now);
    let trimmed = value.trim();
    if !trimmed.is_empty()
        && trimmed.bytes().all(|b| b.is_ascii_digit())
        && let Ok(secs) = trimmed.parse::<u64>()
    {
        assert_eq!(parsed, Some(Duration::from_secs(secs)));
    }
    if let Some(wait) = parsed {
        let floor = Duration::from_secs(1);
        let delay = retry_delay(floor, Some(wait));
        assert!(delay >= floor && delay <= floor.max(MAX_RETRY_AFTER));
    }
});
