//! The journal row's core: reading the shipper's log lines (journal JSON, JSON log
//! lines, or plain text) and classifying its `ship_result` events.
//!
//! Owns `classify_journal(lines, since_cutoff) -> JournalSummary` and the row it
//! makes: one finding per class with a count ("12 ship(s) rejected as
//! out-of-window"), worst class first (412 before 400), each with its canonical
//! fix. Structured journal fields (`OUTCOME`, `STATUS_CODE`, `PROBLEM_TYPE`,
//! `EPISODE_ID`, `ERROR`) win; lines without them are read from the
//! `outcome=… status=…` text the shipper puts in every `ship_result` message.
//! Pure: no clock, no process, no file; `source` runs journalctl.
//!
//! Invariant: only `ship_result` events are counted (a `quarantined` or
//! `hold_started` event carries a status code too, but never an outcome), and a
//! line older than the cutoff is never counted.

use std::collections::BTreeMap;
use std::fmt;

use episode_common::{Class, classify};
use serde_json::{Map, Value};

use crate::fixes::{self, Context};
use crate::report::{Check, Level, Row};

/// What a ship attempt means for the person at the terminal, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JournalClass {
    /// 412: the episode's time is outside the receiver's window.
    OutOfWindow,
    /// Other fatal 4xx (400 missing-code-commit, 413, 415…): quarantined.
    BadRequest,
    /// 401: bearer token missing or wrong.
    Unauthorized,
    /// 403: the client certificate does not name this host.
    Forbidden,
    /// 404, 405, 501, 3xx: the URL is not a receiver.
    Misdirected,
    /// 409: another archive is stored under the id.
    Conflict,
    /// 5xx, 429, 408, connection errors (status 0), repacks.
    Transient,
    /// Stored or already present.
    Clean,
}

impl JournalClass {
    pub fn level(self) -> Level {
        match self {
            JournalClass::OutOfWindow
            | JournalClass::BadRequest
            | JournalClass::Unauthorized
            | JournalClass::Forbidden
            | JournalClass::Misdirected => Level::Red,
            JournalClass::Conflict | JournalClass::Transient => Level::Yellow,
            JournalClass::Clean => Level::Green,
        }
    }
}

/// The class of one `ship_result`. The outcome the shipper logged wins (a HEAD that
/// found another archive is `conflict` with status 200); the status refines fatal
/// and hold; without an outcome the status is classified as the shipper would.
pub fn class_of(
    outcome: Option<&str>,
    status: Option<u16>,
    problem_type: Option<&str>,
) -> Option<JournalClass> {
    use JournalClass as J;
    let by_hold_status = |s: Option<u16>| match s {
        Some(401) => J::Unauthorized,
        Some(403) => J::Forbidden,
        _ => J::Misdirected,
    };
    match outcome {
        Some("shipped" | "already_present") => Some(J::Clean),
        Some("conflict") => Some(J::Conflict),
        Some("repack" | "transient") => Some(J::Transient),
        Some("fatal") if status == Some(412) => Some(J::OutOfWindow),
        Some("fatal") => Some(J::BadRequest),
        Some("hold") => Some(by_hold_status(status)),
        _ => match status? {
            0 => Some(J::Transient),
            s => Some(match classify(s, problem_type) {
                Class::Shipped => J::Clean,
                Class::Conflict => J::Conflict,
                Class::Repack | Class::Transient => J::Transient,
                Class::Fatal if s == 412 => J::OutOfWindow,
                Class::Fatal => J::BadRequest,
                Class::Hold => by_hold_status(Some(s)),
            }),
        },
    }
}

/// One `ship_result` event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipEvent {
    pub outcome: Option<String>,
    pub status: Option<u16>,
    pub problem_type: Option<String>,
    pub episode_id: Option<String>,
    pub error: Option<String>,
}

/// What a log line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ship(ShipEvent),
    PassComplete,
    Other,
}

/// A parsed line: when (Unix microseconds, if the line says) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at_us: Option<i64>,
    pub event: Event,
}

/// Parses one line of `journalctl -o json`, of the shipper's `--log-format json`,
/// or of plain text. `None` for a blank line.
pub fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    if line.starts_with('{')
        && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line)
    {
        return Some(from_object(&map));
    }
    Some(Line {
        at_us: None,
        event: from_text(line, ShipEvent::default(), false),
    })
}

/// A journal field as text: strings as they are, byte arrays (non-UTF-8 values)
/// decoded lossily, numbers printed; a multi-valued field gives its first value.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(items) => items.first().and_then(text),
        _ => None,
    }
}

/// The field under its journal name or its JSON-log name; empty means absent.
fn field(map: &Map<String, Value>, journal: &str, json: &str) -> Option<String> {
    map.get(journal)
        .or_else(|| map.get(json))
        .and_then(text)
        .filter(|s| !s.is_empty())
}

fn from_object(map: &Map<String, Value>) -> Line {
    let at_us = field(map, "__REALTIME_TIMESTAMP", "__realtime_timestamp")
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| {
            let stamp = field(map, "TIMESTAMP", "timestamp")?;
            let t =
                time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
        });
    let message = field(map, "MESSAGE", "message").unwrap_or_default();
    let structured = ShipEvent {
        outcome: field(map, "OUTCOME", "outcome"),
        status: field(map, "STATUS_CODE", "status_code").and_then(|s| leading_u16(&s)),
        problem_type: field(map, "PROBLEM_TYPE", "problem_type"),
        episode_id: field(map, "EPISODE_ID", "episode_id"),
        error: field(map, "ERROR", "error"),
    };
    let has_outcome = structured.outcome.is_some();
    Line {
        at_us,
        event: from_text(&message, structured, has_outcome),
    }
}

/// Reads a message's text, filling what `known` lacks. `is_ship` forces a ship
/// event (a structured `OUTCOME` was present).
fn from_text(message: &str, known: ShipEvent, is_ship: bool) -> Event {
    let is_ship = is_ship || message.contains("ship_result") || kv(message, "outcome").is_some();
    if !is_ship {
        return if message.contains("pass_complete") {
            Event::PassComplete
        } else {
            Event::Other
        };
    }
    let word = |s: String| {
        let w: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
            .collect();
        Some(w).filter(|w| !w.is_empty())
    };
    Event::Ship(ShipEvent {
        outcome: known
            .outcome
            .or_else(|| kv(message, "outcome").and_then(word)),
        status: known.status.or_else(|| {
            kv(message, "status")
                .or_else(|| kv(message, "status_code"))
                .and_then(|s| leading_u16(&s))
        }),
        problem_type: known
            .problem_type
            .or_else(|| kv(message, "problem_type").and_then(word)),
        episode_id: known
            .episode_id
            .or_else(|| kv(message, "episode_id").and_then(word)),
        error: known
            .error
            .or_else(|| kv(message, "error").filter(|e| !e.is_empty())),
    })
}

fn leading_u16(s: &str) -> Option<u16> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The value of `key=value` in free text: the key must start the text or follow
/// whitespace; a value in double quotes may hold spaces.
fn kv(text: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(found) = text[from..].find(&needle) {
        let at = from + found;
        from = at + needle.len();
        let boundary = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace());
        if !boundary {
            continue;
        }
        let rest = &text[from..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '"' => break,
                    c => out.push(c),
                }
            }
            return Some(out);
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        return Some(rest[..end].to_owned());
    }
    None
}

/// A status with its problem type: "400 missing-code-commit", "503", or
/// "connection" for status 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Detail {
    pub status: Option<u16>,
    pub problem_type: Option<String>,
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status, &self.problem_type) {
            (Some(0), _) => f.write_str("connection"),
            (Some(s), Some(p)) => write!(f, "{s} {p}"),
            (Some(s), None) => write!(f, "{s}"),
            (None, Some(p)) => f.write_str(p),
            (None, None) => f.write_str("no status"),
        }
    }
}

/// The ship attempts of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassCount {
    pub attempts: usize,
    pub details: BTreeMap<Detail, usize>,
    /// Distinct episode ids, in order of appearance (at most `MAX_IDS`).
    pub episode_ids: Vec<String>,
    /// Outcomes as logged ("shipped", "already_present"…) with counts.
    pub outcomes: BTreeMap<String, usize>,
    pub last_error: Option<String>,
}

const MAX_IDS: usize = 1000;

/// Everything the journal row says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalSummary {
    pub classes: BTreeMap<JournalClass, ClassCount>,
    /// Non-blank lines read.
    pub lines: usize,
    /// Lines dropped because they are older than the cutoff.
    pub older: usize,
    pub passes: usize,
    /// Ship events that carried no timestamp (plain text): counted, not filtered.
    pub untimed: usize,
}

impl JournalSummary {
    pub fn count(&self, class: JournalClass) -> usize {
        self.classes.get(&class).map_or(0, |c| c.attempts)
    }

    pub fn ship_events(&self) -> usize {
        self.classes.values().map(|c| c.attempts).sum()
    }
}

/// Classifies the lines; those stamped before `since_cutoff_us` (Unix
/// microseconds) are dropped.
pub fn classify_journal<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    since_cutoff_us: i64,
) -> JournalSummary {
    let mut summary = JournalSummary::default();
    for raw in lines {
        let Some(line) = parse_line(raw) else {
            continue;
        };
        summary.lines += 1;
        if line.at_us.is_some_and(|t| t < since_cutoff_us) {
            summary.older += 1;
            continue;
        }
        let ship = match line.event {
            Event::Other => continue,
            Event::PassComplete => {
                summary.passes += 1;
                continue;
            }
            Event::Ship(ship) => ship,
        };
        let Some(class) = class_of(
            ship.outcome.as_deref(),
            ship.status,
            ship.problem_type.as_deref(),
        ) else {
            continue;
        };
        if line.at_us.is_none() {
            summary.untimed += 1;
        }
        let count = summary.classes.entry(class).or_default();
        count.attempts += 1;
        *count
            .details
            .entry(Detail {
                status: ship.status,
                problem_type: ship.problem_type,
            })
            .or_default() += 1;
        if let Some(outcome) = ship.outcome {
            *count.outcomes.entry(outcome).or_default() += 1;
        }
        if let Some(id) = ship.episode_id
            && count.episode_ids.len() < MAX_IDS
            && !count.episode_ids.contains(&id)
        {
            count.episode_ids.push(id);
        }
        if ship.error.is_some() {
            count.last_error = ship.error;
        }
    }
    summary
}

fn details(count: &ClassCount) -> String {
    count
        .details
        .iter()
        .map(|(d, n)| format!("{d} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn across(count: &ClassCount) -> String {
    match count.episode_ids.len() {
        0 => String::new(),
        n if n == count.attempts => String::new(),
        n => format!(" across {n} episode(s)"),
    }
}

/// The finding for one class.
pub fn finding(class: JournalClass, count: &ClassCount) -> String {
    let n = count.attempts;
    match class {
        JournalClass::OutOfWindow => format!(
            "{n} ship(s) rejected as out-of-window (412){}",
            across(count)
        ),
        JournalClass::BadRequest => format!(
            "{n} ship(s) rejected as bad request ({}){}",
            details(count),
            across(count)
        ),
        JournalClass::Unauthorized => format!(
            "{n} ship(s) refused as unauthorized (401: bearer token missing or wrong); shipping is on hold"
        ),
        JournalClass::Forbidden => format!(
            "{n} ship(s) refused as forbidden (403: the client certificate does not name host_id); shipping is on hold"
        ),
        JournalClass::Misdirected => format!(
            "{n} ship(s) answered {}: the URL is not an episode receiver; shipping is on hold",
            details(count)
        ),
        JournalClass::Conflict => format!(
            "{n} conflict(s) (409): another archive is stored under {}",
            if count.episode_ids.is_empty() {
                "the same id".into()
            } else {
                fixes::list(&count.episode_ids, 5)
            }
        ),
        JournalClass::Transient => {
            let last = count
                .last_error
                .as_deref()
                .map(|e| format!("; last: {e}"))
                .unwrap_or_default();
            format!("{n} transient failure(s) ({}){last}", details(count))
        }
        JournalClass::Clean => {
            let present: usize = if count.outcomes.is_empty() {
                count
                    .details
                    .iter()
                    .filter(|(d, _)| d.status == Some(200))
                    .map(|(_, n)| n)
                    .sum()
            } else {
                count.outcomes.get("already_present").copied().unwrap_or(0)
            };
            if present == 0 {
                format!("{n} shipped")
            } else {
                format!("{n} shipped ({present} already present)")
            }
        }
    }
}

/// The journal row for what was read in the last `since` ("10m") from `source`
/// ("unit episode-shipper", "file /tmp/j.jsonl").
pub fn journal_row(summary: &JournalSummary, ctx: &Context, since: &str, source: &str) -> Row {
    let mut row = Row::new(Check::Journal);
    if summary.ship_events() == 0 {
        let what = if summary.passes > 0 {
            format!(
                "{} pass(es), no uploads in the last {since} ({source})",
                summary.passes
            )
        } else {
            format!("no ship attempts in the last {since} ({source})")
        };
        row.note(Level::Green, what);
        return row;
    }
    for (&class, count) in &summary.classes {
        let level = class.level();
        row.note(level, finding(class, count));
        match class {
            JournalClass::OutOfWindow => {
                row.fix(level, fixes::out_of_window(ctx));
            }
            JournalClass::BadRequest => {
                // Most frequent first.
                let mut details: Vec<(&Detail, &usize)> = count.details.iter().collect();
                details.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
                for (d, _) in details {
                    let status = d.status.unwrap_or(400);
                    row.fix(level, fixes::fatal(ctx, status, d.problem_type.as_deref()));
                }
            }
            JournalClass::Unauthorized => {
                row.fix(level, fixes::unauthorized(ctx));
            }
            JournalClass::Forbidden => {
                row.fix(level, fixes::forbidden(ctx));
            }
            JournalClass::Misdirected => {
                row.fix(level, fixes::misdirected(ctx));
            }
            JournalClass::Conflict => {
                row.fix(level, fixes::conflict(ctx, &count.episode_ids));
            }
            JournalClass::Transient => {
                if count
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("mTLS material missing"))
                {
                    row.fix(
                        level,
                        "the shipper cannot load its TLS material or token: see the certificates and config rows",
                    );
                }
                row.fix(level, fixes::transient(ctx));
            }
            JournalClass::Clean => {}
        }
    }
    row
}

/// The row when the journal could not be read at all.
pub fn unreadable_row(reason: &str, fix: &str) -> Row {
    let mut row = Row::new(Check::Journal);
    row.note(Level::Yellow, format!("journal not read: {reason}"));
    row.fix(Level::Yellow, fix);
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use JournalClass as J;

    #[test]
    fn classes_follow_outcome_then_status() {
        type Case<'a> = (Option<&'a str>, Option<u16>, Option<&'a str>, Option<J>);
        let table: &[Case] = &[
            (Some("shipped"), Some(201), None, Some(J::Clean)),
            (Some("already_present"), Some(200), None, Some(J::Clean)),
            (
                Some("fatal"),
                Some(412),
                Some("out-of-window"),
                Some(J::OutOfWindow),
            ),
            (
                Some("fatal"),
                Some(400),
                Some("missing-code-commit"),
                Some(J::BadRequest),
            ),
            (
                Some("fatal"),
                Some(413),
                Some("too-large"),
                Some(J::BadRequest),
            ),
            (
                Some("hold"),
                Some(401),
                Some("unauthorized"),
                Some(J::Unauthorized),
            ),
            (
                Some("hold"),
                Some(403),
                Some("forbidden-identity"),
                Some(J::Forbidden),
            ),
            (Some("hold"), Some(404), None, Some(J::Misdirected)),
            (
                Some("conflict"),
                Some(409),
                Some("conflict"),
                Some(J::Conflict),
            ),
            // A HEAD that found another archive: outcome conflict, status 200.
            (Some("conflict"), Some(200), None, Some(J::Conflict)),
            (Some("transient"), Some(503), None, Some(J::Transient)),
            (
                Some("transient"),
                Some(429),
                Some("too-many-uploads"),
                Some(J::Transient),
            ),
            (Some("transient"), Some(0), None, Some(J::Transient)),
            (
                Some("repack"),
                Some(400),
                Some("digest-mismatch"),
                Some(J::Transient),
            ),
            // Text without an outcome: the status decides, as the shipper would.
            (None, Some(412), None, Some(J::OutOfWindow)),
            (
                None,
                Some(400),
                Some("missing-code-commit"),
                Some(J::BadRequest),
            ),
            (None, Some(401), None, Some(J::Unauthorized)),
            (None, Some(403), None, Some(J::Forbidden)),
            (None, Some(409), None, Some(J::Conflict)),
            (None, Some(408), None, Some(J::Transient)),
            (None, Some(502), None, Some(J::Transient)),
            (None, Some(0), None, Some(J::Transient)),
            (None, Some(201), None, Some(J::Clean)),
            (None, None, None, None),
            (Some("mystery"), None, None, None),
        ];
        for &(outcome, status, problem, want) in table {
            assert_eq!(
                class_of(outcome, status, problem),
                want,
                "{outcome:?} {status:?}"
            );
        }
    }

    fn journal(message: &str, fields: &[(&str, &str)], at_us: i64) -> String {
        let mut map = Map::new();
        map.insert("MESSAGE".into(), message.into());
        map.insert("__REALTIME_TIMESTAMP".into(), at_us.to_string().into());
        map.insert("SYSLOG_IDENTIFIER".into(), "episode-shipper".into());
        for (k, v) in fields {
            map.insert((*k).into(), (*v).into());
        }
        Value::Object(map).to_string()
    }

    fn ship(outcome: &str, status: u16, problem: &str, id: &str, at_us: i64) -> String {
        journal(
            &format!("ship_result outcome={outcome} status={status}"),
            &[
                ("OUTCOME", outcome),
                ("STATUS_CODE", &status.to_string()),
                ("PROBLEM_TYPE", problem),
                ("EPISODE_ID", id),
                ("ERROR", "some error"),
            ],
            at_us,
        )
    }

    #[test]
    fn reads_structured_fields_and_plain_text() {
        let structured = ship("fatal", 412, "out-of-window", "E1", 5);
        let line = parse_line(&structured).unwrap();
        assert_eq!(line.at_us, Some(5));
        assert_eq!(
            line.event,
            Event::Ship(ShipEvent {
                outcome: Some("fatal".into()),
                status: Some(412),
                problem_type: Some("out-of-window".into()),
                episode_id: Some("E1".into()),
                error: Some("some error".into()),
            })
        );
        // A journal line with only the message text (non-native, older shipper).
        let message_only = journal("ship_result outcome=fatal status=400", &[], 7);
        let Event::Ship(e) = parse_line(&message_only).unwrap().event else {
            panic!("not a ship event");
        };
        assert_eq!((e.outcome.as_deref(), e.status), (Some("fatal"), Some(400)));
        // A syslog-style text line and the shipper's human stderr format.
        let text = "Nov 22 10:00:01 lab1 episode-shipper[811]: ship_result outcome=hold status=401";
        let Event::Ship(e) = parse_line(text).unwrap().event else {
            panic!("not a ship event");
        };
        assert_eq!((e.outcome.as_deref(), e.status), (Some("hold"), Some(401)));
        let fmt = r#"2026-11-22T10:00:00Z ERROR ship_result outcome=fatal status=400 episode_id=E9 outcome="fatal" status_code=400 problem_type="missing-code-commit" error="400 missing-code-commit: no X-Code-Commit""#;
        let Event::Ship(e) = parse_line(fmt).unwrap().event else {
            panic!("not a ship event");
        };
        assert_eq!(e.problem_type.as_deref(), Some("missing-code-commit"));
        assert_eq!(e.episode_id.as_deref(), Some("E9"));
        assert_eq!(
            e.error.as_deref(),
            Some("400 missing-code-commit: no X-Code-Commit")
        );
        // The shipper's --log-format json.
        let json = r#"{"timestamp":"2026-11-22T10:00:00Z","level":"ERROR","message":"ship_result outcome=fatal status=412","episode_id":"E2","outcome":"fatal","status_code":412,"problem_type":"out-of-window"}"#;
        let line = parse_line(json).unwrap();
        assert_eq!(line.at_us, Some(1_795_341_600_000_000));
        let Event::Ship(e) = line.event else {
            panic!("not a ship event");
        };
        assert_eq!((e.status, e.episode_id.as_deref()), (Some(412), Some("E2")));
    }

    #[test]
    fn other_events_with_status_codes_are_not_ship_attempts() {
        let quarantined = journal(
            "quarantined: the receiver will not take this episode as it is",
            &[("STATUS_CODE", "412"), ("EPISODE_ID", "E1")],
            1,
        );
        let hold = journal(
            "hold_started: shipping paused",
            &[("STATUS_CODE", "401")],
            1,
        );
        let pass = journal("pass_complete", &[("SCANNED", "3")], 1);
        let s = classify_journal([quarantined.as_str(), hold.as_str(), pass.as_str()], 0);
        assert_eq!(s.ship_events(), 0);
        assert_eq!(s.passes, 1);
        assert_eq!(s.lines, 3);
    }

    #[test]
    fn byte_array_and_null_messages_do_not_break_parsing() {
        let bytes: Vec<Value> = b"ship_result outcome=transient status=0"
            .iter()
            .map(|b| Value::from(*b))
            .collect();
        let line = serde_json::json!({"MESSAGE": bytes, "__REALTIME_TIMESTAMP": "9"}).to_string();
        let s = classify_journal([line.as_str(), r#"{"MESSAGE": null}"#, "not json {", ""], 0);
        assert_eq!(s.count(J::Transient), 1);
        assert_eq!(s.lines, 3);
    }

    #[test]
    fn counts_per_class_and_drops_old_lines() {
        let lines = [
            ship("fatal", 412, "out-of-window", "E1", 100),
            ship("fatal", 412, "out-of-window", "E2", 100),
            ship("fatal", 400, "missing-code-commit", "E3", 100),
            ship("hold", 401, "unauthorized", "E4", 100),
            ship("hold", 401, "unauthorized", "E4", 100),
            ship("shipped", 201, "", "E5", 100),
            ship("already_present", 200, "", "E6", 100),
            ship("transient", 0, "", "E7", 100),
            // Older than the cutoff: ignored.
            ship("fatal", 412, "out-of-window", "OLD", 10),
            ship("conflict", 409, "conflict", "OLD2", 49),
            // Plain text: no timestamp, always counted.
            "ship_result outcome=fatal status=412".to_owned(),
        ];
        let s = classify_journal(lines.iter().map(String::as_str), 50);
        assert_eq!(s.count(J::OutOfWindow), 3);
        assert_eq!(s.count(J::BadRequest), 1);
        assert_eq!(s.count(J::Unauthorized), 2);
        assert_eq!(s.count(J::Clean), 2);
        assert_eq!(s.count(J::Transient), 1);
        assert_eq!(s.count(J::Conflict), 0);
        assert_eq!(s.older, 2);
        assert_eq!(s.untimed, 1);
        assert_eq!(s.classes[&J::Unauthorized].episode_ids, ["E4"]);
    }

    fn ctx() -> Context {
        Context {
            config_path: episode_shipper::config::DEFAULT_PATH.into(),
            host_id: Some("lab1".into()),
            bearer_token_file: Some("/etc/episode-shipper/token".into()),
            unit: "episode-shipper".into(),
            ..Context::default()
        }
    }

    #[test]
    fn the_row_lists_412_before_400_with_canonical_fixes() {
        let mut lines: Vec<String> = (0..12)
            .map(|i| ship("fatal", 412, "out-of-window", &format!("E{i}"), 100))
            .collect();
        lines.insert(0, ship("fatal", 400, "missing-code-commit", "X1", 100));
        lines.push(ship("fatal", 413, "too-large", "X2", 100));
        lines.push(ship("shipped", 201, "", "X3", 100));
        let s = classify_journal(lines.iter().map(String::as_str), 0);
        let row = journal_row(&s, &ctx(), "10m", "unit episode-shipper");
        assert_eq!(row.level(), Level::Red);
        let findings = row.findings();
        assert_eq!(findings[0], "12 ship(s) rejected as out-of-window (412)");
        assert_eq!(
            findings[1],
            "2 ship(s) rejected as bad request (400 missing-code-commit ×1, 413 too-large ×1)"
        );
        assert_eq!(findings[2], "1 shipped");
        let fixes = row.fixes();
        assert!(fixes[0].contains("`timedatectl`"), "{fixes:?}");
        assert!(fixes[0].contains("`episode-shipper requeue --status 412`"));
        assert!(
            fixes[1].contains("requeue --status 400") || fixes[1].contains("requeue --status 413")
        );
        assert!(fixes.iter().any(|f| f.contains("code_commit")));
    }

    #[test]
    fn levels_of_the_row() {
        let c = ctx();
        let row = |lines: Vec<String>| {
            journal_row(
                &classify_journal(lines.iter().map(String::as_str), 0),
                &c,
                "10m",
                "unit episode-shipper",
            )
        };
        let empty = row(vec![]);
        assert_eq!(empty.level(), Level::Green);
        assert!(
            empty
                .finding_line()
                .contains("no ship attempts in the last 10m")
        );
        assert_eq!(
            row(vec![journal("pass_complete", &[], 1)]).finding_line(),
            "1 pass(es), no uploads in the last 10m (unit episode-shipper)"
        );
        let clean = row(vec![
            ship("shipped", 201, "", "E1", 1),
            ship("already_present", 200, "", "E2", 1),
        ]);
        assert_eq!(clean.level(), Level::Green);
        assert_eq!(clean.finding_line(), "2 shipped (1 already present)");
        let transient = row(vec![
            ship("transient", 503, "", "E1", 1),
            ship("transient", 0, "", "E1", 1),
        ]);
        assert_eq!(transient.level(), Level::Yellow);
        assert!(
            transient
                .finding_line()
                .starts_with("2 transient failure(s) (connection ×1, 503 ×1); last: some error")
        );
        assert!(
            transient
                .fix_line()
                .unwrap()
                .contains("`episode-shipper ping`")
        );
        let conflict = row(vec![ship("conflict", 409, "conflict", "E7", 1)]);
        assert_eq!(conflict.level(), Level::Yellow);
        assert!(conflict.finding_line().contains("E7"));
        assert!(conflict.fix_line().unwrap().contains("E7"));
        let auth = row(vec![
            ship("hold", 401, "unauthorized", "E1", 1),
            ship("hold", 403, "forbidden-identity", "E1", 1),
        ]);
        assert_eq!(auth.level(), Level::Red);
        let fix = auth.fix_line().unwrap();
        assert!(
            fix.contains("/etc/episode-shipper/token") && fix.contains("host_id \"lab1\""),
            "{fix}"
        );
        let unread = unreadable_row(
            "permission denied",
            "sudo usermod -aG systemd-journal $USER",
        );
        assert_eq!(unread.level(), Level::Yellow);
    }
}
