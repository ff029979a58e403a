//! Fuzz target: how the shipper reads a response body (`transport::parse_body`,
//! `Problem::from_json`). Never a panic; a problem is read only from a 4xx/5xx,
//! carries the body's `type`, and survives a write and a read unchanged.
#![no_main]

use episode_common::Problem;
use episode_shipper::transport::parse_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (status, bytes) = input;
    let (problem, body) = parse_body(status, bytes);
    let Some(problem) = problem else {
        return;
    };
    assert!(status >= 400);
    assert_eq!(body["type"].as_str(), Some(problem.slug.as_str()));
    let written = serde_json::to_value(&problem).expect("a problem serializes");
    assert_eq!(Problem::from_json(&written).as_ref(), Some(&problem));
});
