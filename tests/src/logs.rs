//! The daemons' log lines read back: the harness starts both with `--log-format
//! json`, so a test finds a line by its `event` (`events`) and checks it against
//! the log schema (`assert_schema`: vocabulary names only, no empty value).

use episode_common::Event;
use episode_common::events::field;
use serde_json::{Map, Value};

/// One JSON log line.
pub type LogLine = Map<String, Value>;

/// Every JSON object line of `stderr` (other lines, e.g. a panic, are skipped).
pub fn lines(stderr: &str) -> Vec<LogLine> {
    stderr
        .lines()
        .filter_map(|l| match serde_json::from_str::<Value>(l.trim()) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
        .collect()
}

/// The lines of `event`.
pub fn events(stderr: &str, event: Event) -> Vec<LogLine> {
    lines(stderr)
        .into_iter()
        .filter(|l| l.get(field::EVENT).and_then(Value::as_str) == Some(event.as_str()))
        .collect()
}

/// Whether `stderr` has a line of `event`.
pub fn has_event(stderr: &str, event: Event) -> bool {
    !events(stderr, event).is_empty()
}

/// Panics unless `line` follows the log schema: an `event` of the vocabulary,
/// every other key a field of the vocabulary (or `timestamp`, `level`,
/// `message`), no empty string.
pub fn assert_schema(line: &LogLine) {
    let event = line.get(field::EVENT).and_then(Value::as_str);
    assert!(
        event.and_then(Event::parse).is_some(),
        "no known event in {line:?}"
    );
    for (key, value) in line {
        assert!(
            ["timestamp", "level", "message"].contains(&key.as_str())
                || field::ALL.contains(&key.as_str()),
            "field {key:?} is not in the vocabulary (common/src/events.rs): {line:?}"
        );
        assert!(
            value.as_str() != Some(""),
            "empty field {key:?} in {line:?}"
        );
    }
}
