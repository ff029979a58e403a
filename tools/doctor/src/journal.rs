//! The journal row's core: reading the shipper's log lines (journal JSON, JSON log
//! lines, or plain text) and classifying its `ship_result` events.
//!
//! Owns `classify_journal(lines, window) -> JournalSummary` and the row it makes:
//! one finding per class with a count ("12 ship(s) rejected as out-of-window"),
//! worst class first (412 before 400), each with its canonical fix. Names come
//! from the shared vocabulary (`episode_common::events`): a line's `event`
//! (journal `EVENT`, JSON `event`, text `event=`) says what it is, and its fields
//! (`OUTCOME`, `STATUS_CODE`, … as `common::logging::journal_name` names them)
//! win over the message. Lines from before the log schema (no `event`) are read
//! too, for as long as such journals exist on hosts: `F_`-prefixed journal fields
//! (tracing-journald's default), a `ship_result outcome=… status=…` message, and
//! the `key=value` text tracing's fmt layer wrote (Display values unquoted, so a
//! value runs to the next ` key=`). Pure: no clock (the caller passes a
//! `Window`), no process, no file; `source` runs journalctl.
//!
//! Invariant: only `ship_result` events are counted (a `quarantined` or
//! `hold_started` event carries a status code too, but never an outcome); a line
//! stamped before the cutoff is never counted, and the row says how many were
//! skipped; a line without any timestamp is counted and the row says so.

use std::collections::BTreeMap;
use std::fmt;

use episode_common::events::{self, Outcome, field as names};
use episode_common::logging::journal_name;
use episode_common::{Class, classify};
use serde_json::{Map, Value};

use crate::fixes::{self, Context};
use crate::report::{Check, Level, Row};

/// tracing-journald's default prefix (`F_STATUS_CODE`), which builds before the
/// log schema could write: read too.
pub const TRACING_JOURNALD_DEFAULT_PREFIX: &str = "F";

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
    /// 400 digest-mismatch / length-mismatch: the bytes arrived damaged, re-packed.
    Repacked,
    /// 5xx, 429, 408, connection errors (status 0).
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
            JournalClass::Conflict | JournalClass::Repacked | JournalClass::Transient => {
                Level::Yellow
            }
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
    match outcome.and_then(Outcome::parse) {
        Some(Outcome::Shipped | Outcome::AlreadyPresent) => Some(J::Clean),
        Some(Outcome::Conflict) => Some(J::Conflict),
        Some(Outcome::Repack) => Some(J::Repacked),
        Some(Outcome::Transient) => Some(J::Transient),
        Some(Outcome::Fatal) if status == Some(412) => Some(J::OutOfWindow),
        Some(Outcome::Fatal) => Some(J::BadRequest),
        Some(Outcome::Hold) => Some(by_hold_status(status)),
        None => match status? {
            0 => Some(J::Transient),
            s => Some(match classify(s, problem_type) {
                Class::Shipped => J::Clean,
                Class::Conflict => J::Conflict,
                Class::Repack => J::Repacked,
                Class::Transient => J::Transient,
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

impl ShipEvent {
    /// `self`'s fields, with what it lacks taken from `other`.
    fn or(self, other: ShipEvent) -> ShipEvent {
        ShipEvent {
            outcome: self.outcome.or(other.outcome),
            status: self.status.or(other.status),
            problem_type: self.problem_type.or(other.problem_type),
            episode_id: self.episode_id.or(other.episode_id),
            error: self.error.or(other.error),
        }
    }
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
    /// A journal entry, a JSON log line, a stamped text line or a shipper event;
    /// false for anything else (e.g. a fragment of `journalctl -o json-pretty`).
    pub recognised: bool,
}

/// What "now" is for a log: the cutoff of `--since`, and what a syslog-style
/// stamp (`Dec 02 05:08:50`: local time, no year) needs to be placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// Lines stamped before this (Unix microseconds) are skipped.
    pub cutoff_us: i64,
    pub now_us: i64,
    /// The local time zone's offset from UTC, in seconds (as of now).
    pub utc_offset_secs: i32,
}

/// Parses one line of `journalctl -o json`, of the shipper's `--log-format json`,
/// or of plain text (tracing's fmt, `journalctl -o short`/`short-iso`/`cat`).
/// `None` for a blank line.
pub fn parse_line(line: &str, window: &Window) -> Option<Line> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    if line.starts_with('{')
        && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line)
    {
        return Some(from_object(&map));
    }
    if is_pretty_fragment(line) {
        return Some(Line {
            at_us: None,
            event: Event::Other,
            recognised: false,
        });
    }
    let at_us = leading_stamp(line, window);
    let event = from_text(line, ShipEvent::default(), None);
    Some(Line {
        at_us,
        recognised: at_us.is_some() || event != Event::Other,
        event,
    })
}

/// A line of `journalctl -o json-pretty` (`"MESSAGE" : "…",`, `{`, `}`): a piece
/// of an entry, not an entry. Read as text it would count the message without its
/// time, so it is not read.
fn is_pretty_fragment(line: &str) -> bool {
    matches!(line, "{" | "}" | "},")
        || line.strip_prefix('"').is_some_and(|rest| {
            rest.split_once('"').is_some_and(|(name, after)| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    && after.trim_start().starts_with(':')
            })
        })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The timestamp a text line starts with, as Unix microseconds: RFC 3339 (what
/// tracing's fmt writes, `2026-12-02T05:08:50.123456Z`; also journalctl's
/// short-iso `2026-12-02T05:08:50+0000`), or syslog's `Dec 02 05:08:50[.123456]`
/// (journalctl -o short: local time, no year; placed in the year that puts it
/// no more than a day in the future).
pub fn leading_stamp(line: &str, window: &Window) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let micros = |t: time::OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1000).ok();
    if first.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        if let Ok(t) = time::OffsetDateTime::parse(first, &Rfc3339) {
            return micros(t);
        }
        // short-iso: "+0000" without the colon RFC 3339 wants.
        let n = first.len();
        if n > 5 && first.is_char_boundary(n - 5) {
            let (head, zone) = first.split_at(n - 5);
            if zone.starts_with(['+', '-']) && zone[1..].bytes().all(|b| b.is_ascii_digit()) {
                let fixed = format!("{head}{}:{}", &zone[..3], &zone[3..]);
                return time::OffsetDateTime::parse(&fixed, &Rfc3339)
                    .ok()
                    .and_then(micros);
            }
        }
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == first)?;
    let day: u8 = words.next()?.parse().ok()?;
    let clock = words.next()?;
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<u8>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() {
        return None;
    }
    let micro: u32 = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<6}").parse().ok()?
    };
    let offset = time::UtcOffset::from_whole_seconds(window.utc_offset_secs).ok()?;
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(window.now_us) * 1000)
        .ok()?
        .to_offset(offset);
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let time_of_day = time::Time::from_hms_micro(h, m, s, micro).ok()?;
    let at = |year: i32| {
        let date = time::Date::from_calendar_date(year, month, day).ok()?;
        micros(time::PrimitiveDateTime::new(date, time_of_day).assume_offset(offset))
    };
    let day_us = 86_400 * 1_000_000;
    match at(now.year()) {
        Some(t) if t <= window.now_us + day_us => Some(t),
        _ => at(now.year() - 1),
    }
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

/// The log field `name` (as the programs log it: `status_code`) of a journal
/// entry (`STATUS_CODE`, or `F_STATUS_CODE` from before the log schema) or of a
/// JSON log line (`status_code`); empty means absent.
fn field(map: &Map<String, Value>, name: &str) -> Option<String> {
    let journal = journal_name(name);
    let default = format!("{TRACING_JOURNALD_DEFAULT_PREFIX}_{journal}");
    [journal.as_str(), default.as_str(), name]
        .iter()
        .find_map(|k| map.get(*k).and_then(text).filter(|s| !s.is_empty()))
}

/// What a line's `event` (a field, or `event=` in text) says it is; `None` for a
/// line without one (from before the log schema).
fn by_event(name: Option<&str>) -> Option<Kind> {
    let event = events::Event::parse(name?.trim_matches('"'))?;
    Some(match event {
        events::Event::ShipResult => Kind::Ship,
        events::Event::PassComplete => Kind::PassComplete,
        _ => Kind::Other,
    })
}

/// An event's kind, before its fields are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ship,
    PassComplete,
    Other,
}

/// A journal entry's own field (`MESSAGE`, `__REALTIME_TIMESTAMP`): never prefixed.
fn own(map: &Map<String, Value>, journal: &str, json: &str) -> Option<String> {
    map.get(journal)
        .or_else(|| map.get(json))
        .and_then(text)
        .filter(|s| !s.is_empty())
}

fn stamp_of(map: &Map<String, Value>) -> Option<i64> {
    own(map, "__REALTIME_TIMESTAMP", "__realtime_timestamp")
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| {
            let stamp = own(map, "TIMESTAMP", "timestamp")?;
            let t =
                time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
        })
}

fn structured(map: &Map<String, Value>) -> ShipEvent {
    ShipEvent {
        outcome: field(map, names::OUTCOME),
        status: field(map, names::STATUS_CODE).and_then(|s| leading_u16(&s)),
        problem_type: field(map, names::PROBLEM_TYPE),
        episode_id: field(map, names::EPISODE_ID),
        error: field(map, names::ERROR),
    }
}

fn from_object(map: &Map<String, Value>) -> Line {
    let recognised = ["MESSAGE", "message", "__REALTIME_TIMESTAMP", "timestamp"]
        .iter()
        .any(|k| map.contains_key(*k));
    let mut at_us = stamp_of(map);
    let mut known = structured(map);
    let mut kind = by_event(field(map, names::EVENT).as_deref());
    let mut message = own(map, "MESSAGE", "message").unwrap_or_default();
    // `--log-format json` under systemd: the journal's MESSAGE is the JSON line.
    if message.trim_start().starts_with('{')
        && let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(&message)
    {
        at_us = at_us.or_else(|| stamp_of(&inner));
        known = known.or(structured(&inner));
        kind = kind.or_else(|| by_event(field(&inner, names::EVENT).as_deref()));
        message = own(&inner, "MESSAGE", "message").unwrap_or_default();
    }
    if known.outcome.is_some() {
        kind = kind.or(Some(Kind::Ship));
    }
    Line {
        at_us,
        event: from_text(&message, known, kind),
        recognised,
    }
}

/// Reads a message's text, filling what `known` lacks. `kind` is what the
/// line's structured `event` (or `OUTCOME`) said; without it, the text's own
/// `event=`, then (before the log schema) the words in it decide.
fn from_text(message: &str, known: ShipEvent, kind: Option<Kind>) -> Event {
    let kind = kind
        .or_else(|| by_event(kv(message, names::EVENT).as_deref()))
        .unwrap_or_else(|| {
            if message.contains("ship_result") || kv(message, names::OUTCOME).is_some() {
                Kind::Ship
            } else if message.contains("pass_complete") {
                Kind::PassComplete
            } else {
                Kind::Other
            }
        });
    match kind {
        Kind::Ship => {}
        Kind::PassComplete => return Event::PassComplete,
        Kind::Other => return Event::Other,
    }
    let word = |s: String| {
        let w: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
            .collect();
        Some(w).filter(|w| !w.is_empty())
    };
    Event::Ship(
        known.or(ShipEvent {
            outcome: kv(message, "outcome").and_then(word),
            status: kv(message, "status")
                .or_else(|| kv(message, "status_code"))
                .and_then(|s| leading_u16(&s)),
            problem_type: kv(message, "problem_type").and_then(word),
            episode_id: kv(message, "episode_id").and_then(word),
            error: kv(message, "error").filter(|e| !e.is_empty()),
        }),
    )
}

fn leading_u16(s: &str) -> Option<u16> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A field name as tracing's fmt layer writes it: `status_code`, `log.target`.
fn is_key(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Where an unquoted value ends: at the next ` <key>=`, or the end of the text.
fn value_end(rest: &str) -> usize {
    for (i, c) in rest.char_indices() {
        if !c.is_whitespace() {
            continue;
        }
        let after = rest[i..].trim_start();
        if let Some((name, _)) = after.split_once('=')
            && is_key(name)
        {
            return i;
        }
    }
    rest.len()
}

/// The value of `key=value` in free text: the key must start the text or follow
/// whitespace; a value in double quotes (tracing's Debug values) may hold spaces
/// and escapes; an unquoted value (tracing's Display values, e.g. `error=connect
/// error: tcp connect error`) runs to the next ` <key>=` or the end of the line.
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
        return Some(rest[..value_end(rest)].trim_end().to_owned());
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
    /// Lines that are journal entries, log lines or shipper events (see `Line`).
    pub recognised: usize,
    /// Lines skipped because they are older than the cutoff…
    pub older: usize,
    /// …of which ship attempts…
    pub older_ships: usize,
    /// …and the oldest of them (Unix microseconds).
    pub oldest_us: Option<i64>,
    pub passes: usize,
    /// Ship events that carried no timestamp: counted whatever the window.
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

/// Classifies the lines; those stamped before `window.cutoff_us` are skipped
/// (and counted as such).
pub fn classify_journal<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    window: &Window,
) -> JournalSummary {
    let mut summary = JournalSummary::default();
    for raw in lines {
        let Some(line) = parse_line(raw, window) else {
            continue;
        };
        summary.lines += 1;
        if line.recognised {
            summary.recognised += 1;
        }
        if let Some(at) = line.at_us.filter(|t| *t < window.cutoff_us) {
            summary.older += 1;
            summary.oldest_us = Some(summary.oldest_us.map_or(at, |o| o.min(at)));
            if let Event::Ship(ship) = &line.event
                && class_of(
                    ship.outcome.as_deref(),
                    ship.status,
                    ship.problem_type.as_deref(),
                )
                .is_some()
            {
                summary.older_ships += 1;
            }
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
        JournalClass::Repacked => format!(
            "{n} ship(s) re-packed after a digest/length mismatch ({}){}",
            details(count),
            across(count)
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

/// Where the lines came from and for which window, as the row words it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The window's label: "10m".
    pub since: &'a str,
    /// "unit episode-shipper", "file /tmp/j.jsonl".
    pub source: &'a str,
    /// `--journal-file`, if the lines came from one.
    pub journal_file: Option<&'a std::path::Path>,
    /// Now, Unix microseconds (to say how far back skipped lines go).
    pub now_us: i64,
}

/// A `--since` that reaches `age_us` back, with a margin: "45m", "21h", "3d".
pub fn wider_since(age_us: i64) -> String {
    let secs = age_us.max(0) / 1_000_000 + 60;
    let up = |unit: i64| (secs + unit - 1) / unit;
    if secs < 3600 {
        format!("{}m", up(60))
    } else if secs < 86_400 {
        format!("{}h", up(3600))
    } else {
        format!("{}d", up(86_400))
    }
}

/// The journal row for what `summary` read, as `scope` says.
pub fn journal_row(summary: &JournalSummary, ctx: &Context, scope: &Scope<'_>) -> Row {
    let mut row = Row::new(Check::Journal);
    let Scope {
        since,
        source,
        journal_file,
        now_us,
    } = *scope;
    if summary.lines > 0 && summary.recognised == 0 {
        row.note(
            Level::Yellow,
            format!(
                "{} line(s) read ({source}), none of them a journal entry or a shipper log line: nothing could be checked",
                summary.lines
            ),
        );
        let save = format!("`journalctl -u {} -o json > F`", ctx.unit);
        row.fix(
            Level::Yellow,
            match journal_file {
                Some(_) => format!(
                    "give --journal-file JSON lines as {save} writes them (not -o json-pretty or export), or the shipper's own log lines; then {}",
                    ctx.doctor("--journal-file F")
                ),
                None => format!("run `journalctl -u {} -o json -n 20` by hand to see what it prints", ctx.unit),
            },
        );
        return row;
    }
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
            JournalClass::Repacked => {
                row.fix(level, fixes::repacked(ctx));
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
    if summary.older > 0 {
        // Ship attempts outside the window may be the very incident being looked
        // at (a saved log): yellow, with the window that reaches them.
        let level = if summary.older_ships > 0 {
            Level::Yellow
        } else {
            Level::Green
        };
        let theirs = if summary.older_ships > 0 {
            format!(" to see their {} ship attempt(s)", summary.older_ships)
        } else {
            String::new()
        };
        row.note(
            level,
            format!(
                "{} line(s) older than {since} skipped; widen --since{theirs}",
                summary.older
            ),
        );
        let wider = wider_since(now_us - summary.oldest_us.unwrap_or(now_us));
        let args = match journal_file {
            Some(path) => format!("--since {wider} --journal-file {}", path.display()),
            None => format!("--since {wider}"),
        };
        row.fix(level, format!("{} reads them too", ctx.doctor(&args)));
    }
    if summary.untimed > 0 {
        row.note(
            Level::Green,
            format!("({} undated line(s) counted)", summary.untimed),
        );
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
    use episode_common::logging::{Level as LogLevel, Record, Value as LogValue};

    /// No cutoff; "now" is 2027-01-15T08:00:00Z, in UTC.
    const W: Window = Window {
        cutoff_us: 0,
        now_us: 1_800_000_000_000_000,
        utc_offset_secs: 0,
    };

    fn at(cutoff_us: i64) -> Window {
        Window { cutoff_us, ..W }
    }

    const SCOPE: Scope<'static> = Scope {
        since: "10m",
        source: "unit episode-shipper",
        journal_file: None,
        now_us: 1_800_000_000_000_000,
    };

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
                Some(J::Repacked),
            ),
            (None, Some(400), Some("length-mismatch"), Some(J::Repacked)),
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
        let line = parse_line(&structured, &W).unwrap();
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
        let Event::Ship(e) = parse_line(&message_only, &W).unwrap().event else {
            panic!("not a ship event");
        };
        assert_eq!((e.outcome.as_deref(), e.status), (Some("fatal"), Some(400)));
        // A syslog-style text line and the shipper's human stderr format.
        let text = "Nov 22 10:00:01 lab1 episode-shipper[811]: ship_result outcome=hold status=401";
        let Event::Ship(e) = parse_line(text, &W).unwrap().event else {
            panic!("not a ship event");
        };
        assert_eq!((e.outcome.as_deref(), e.status), (Some("hold"), Some(401)));
        let fmt = r#"2026-11-22T10:00:00Z ERROR ship_result outcome=fatal status=400 episode_id=E9 outcome="fatal" status_code=400 problem_type="missing-code-commit" error="400 missing-code-commit: no X-Code-Commit""#;
        let Event::Ship(e) = parse_line(fmt, &W).unwrap().event else {
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
        let line = parse_line(json, &W).unwrap();
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
        let s = classify_journal([quarantined.as_str(), hold.as_str(), pass.as_str()], &W);
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
        let s = classify_journal(
            [line.as_str(), r#"{"MESSAGE": null}"#, "not json {", ""],
            &W,
        );
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
        let s = classify_journal(lines.iter().map(String::as_str), &at(50));
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
        let s = classify_journal(lines.iter().map(String::as_str), &W);
        let row = journal_row(&s, &ctx(), &SCOPE);
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
                &classify_journal(lines.iter().map(String::as_str), &W),
                &c,
                &SCOPE,
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

    #[test]
    fn unquoted_display_values_run_to_the_next_key() {
        // tracing's fmt writes Display values (`error = %e`) without quotes.
        let line = "2026-12-02T05:08:50.123456Z  WARN ship_result outcome=transient status=0 episode_id=E1 outcome=\"transient\" status_code=0 problem_type=\"\" error=mTLS material missing: receiver.client_cert /c/client.pem does not exist (yet) attempt=1 bytes=1000 duration_ms=0";
        let Event::Ship(e) = parse_line(line, &W).unwrap().event else {
            panic!("not a ship event");
        };
        assert_eq!(
            e.error.as_deref(),
            Some("mTLS material missing: receiver.client_cert /c/client.pem does not exist (yet)")
        );
        assert_eq!(
            (e.outcome.as_deref(), e.status),
            (Some("transient"), Some(0))
        );
        assert_eq!(e.problem_type, None);
        assert_eq!(e.episode_id.as_deref(), Some("E1"));
        // At the end of the line, and with a quoted value holding `key=`.
        assert_eq!(
            kv("a=1 error=connect error: tcp connect error", "error").as_deref(),
            Some("connect error: tcp connect error")
        );
        assert_eq!(
            kv(r#"error="x y=2 \"q\"" b=3"#, "error").as_deref(),
            Some(r#"x y=2 "q""#)
        );
        assert_eq!(kv("noerror=1 b=2", "error"), None);
        // The special fix fires for a text log too.
        let row = journal_row(&classify_journal([line], &W), &ctx(), &SCOPE);
        assert!(
            row.finding_line()
                .ends_with("last: mTLS material missing: receiver.client_cert /c/client.pem does not exist (yet)"),
            "{}",
            row.finding_line()
        );
        assert!(
            row.fix_line()
                .unwrap()
                .starts_with("the shipper cannot load its TLS material"),
            "{:?}",
            row.fix_line()
        );
    }

    #[test]
    fn text_lines_carry_their_leading_timestamp() {
        let now = W.now_us;
        let secs = |us: i64| us / 1_000_000;
        let stamp = |text: &str, w: &Window| leading_stamp(text, w);
        // tracing fmt (RFC 3339, microseconds), short-iso, short, short-precise.
        assert_eq!(
            stamp("2027-01-15T07:59:00.250000Z  INFO ship_result", &W),
            Some(now - 60_000_000 + 250_000)
        );
        assert_eq!(
            stamp("2027-01-15T09:59:00+0200 lab1 episode-shipper[1]: x", &W).map(secs),
            Some(secs(now) - 60)
        );
        assert_eq!(
            stamp("Jan 15 07:59:00 lab1 episode-shipper[1]: x", &W).map(secs),
            Some(secs(now) - 60)
        );
        assert_eq!(
            stamp("Jan 15 07:59:00.5 lab1 x", &W),
            Some(now - 60_000_000 + 500_000)
        );
        // journalctl prints local time: 10:59 at UTC+3 is 07:59Z.
        let east = Window {
            utc_offset_secs: 3 * 3600,
            ..W
        };
        assert_eq!(
            stamp("Jan 15 10:59:00 lab1 x", &east).map(secs),
            Some(secs(now) - 60)
        );
        // No year: December is last year's, seen in January.
        let dec = stamp("Dec 31 23:00:00 lab1 x", &W).unwrap();
        assert_eq!(dec / 1_000_000, 1_798_758_000, "2026-12-31T23:00:00Z");
        for none in [
            "ship_result outcome=fatal",
            "Janet 15 07:59:00",
            "Jan 15 7:59",
            "12 ship(s)",
        ] {
            assert_eq!(stamp(none, &W), None, "{none}");
        }
        // Applied to --since: the old text line is skipped, the undated counted.
        let lines = [
            "2027-01-15T06:00:00Z ERROR ship_result outcome=fatal status=412 episode_id=OLD",
            "Jan 15 07:59:00 lab1 episode-shipper[811]: ship_result outcome=fatal status=412",
            "ship_result outcome=fatal status=400",
        ];
        let s = classify_journal(lines, &at(now - 600_000_000));
        assert_eq!(s.count(J::OutOfWindow), 1);
        assert_eq!(s.count(J::BadRequest), 1);
        assert_eq!((s.older, s.older_ships, s.untimed), (1, 1, 1));
        let row = journal_row(&s, &ctx(), &SCOPE);
        let findings = row.findings();
        assert!(
            findings.contains(&"(1 undated line(s) counted)"),
            "{findings:?}"
        );
    }

    #[test]
    fn lines_older_than_the_window_are_said_with_the_wider_since() {
        let now = W.now_us;
        let hour = 3_600_000_000;
        let lines = [
            ship("hold", 401, "unauthorized", "E1", now - 20 * hour),
            ship("transient", 0, "", "E1", now - 19 * hour),
            journal("pass_complete", &[], now - 19 * hour),
        ];
        let s = classify_journal(lines.iter().map(String::as_str), &at(now - 600_000_000));
        assert_eq!((s.older, s.older_ships, s.ship_events()), (3, 2, 0));
        let scope = Scope {
            source: "file /tmp/y.jsonl",
            journal_file: Some(std::path::Path::new("/tmp/y.jsonl")),
            ..SCOPE
        };
        let row = journal_row(&s, &ctx(), &scope);
        assert_eq!(row.level(), Level::Yellow);
        assert_eq!(
            row.findings(),
            [
                "3 line(s) older than 10m skipped; widen --since to see their 2 ship attempt(s)",
                "no ship attempts in the last 10m (file /tmp/y.jsonl)",
            ]
        );
        assert_eq!(
            row.fix_line().unwrap(),
            "`episode-doctor --since 21h --journal-file /tmp/y.jsonl` reads them too"
        );
        // Old lines that are no ship attempts: said, but green.
        let s = classify_journal(
            [journal("pass_complete", &[], now - hour)]
                .iter()
                .map(String::as_str),
            &at(now - 600_000_000),
        );
        let row = journal_row(&s, &ctx(), &SCOPE);
        assert_eq!(row.level(), Level::Green);
        assert!(
            row.finding_line()
                .contains("1 line(s) older than 10m skipped")
        );
        assert_eq!(wider_since(0), "1m");
        assert_eq!(wider_since(30 * 60_000_000), "31m");
        assert_eq!(wider_since(3 * 86_400_000_000), "4d");
    }

    #[test]
    fn lines_that_are_no_log_at_all_make_the_row_yellow() {
        // `journalctl -o json-pretty`: fragments, and a MESSAGE line that would
        // otherwise be counted without its time.
        let pretty = [
            "{",
            "\t\"__REALTIME_TIMESTAMP\" : \"1800000000000000\",",
            "\t\"MESSAGE\" : \"ship_result outcome=fatal status=412\",",
            "\t\"OUTCOME\" : \"fatal\"",
            "}",
        ];
        for lines in [&pretty[..], &["hello", "world"][..]] {
            let s = classify_journal(lines.iter().copied(), &W);
            assert_eq!((s.recognised, s.ship_events()), (0, 0), "{lines:?}");
            let scope = Scope {
                source: "file F",
                journal_file: Some(std::path::Path::new("F")),
                ..SCOPE
            };
            let row = journal_row(&s, &ctx(), &scope);
            assert_eq!(row.level(), Level::Yellow);
            assert!(
                row.finding_line().contains("none of them a journal entry"),
                "{}",
                row.finding_line()
            );
            assert!(
                row.fix_line()
                    .unwrap()
                    .contains("`journalctl -u episode-shipper -o json > F`")
            );
        }
        // One recognisable line among noise is enough.
        let s = classify_journal(["noise", "2027-01-15T07:00:00Z  INFO scan_complete"], &W);
        assert_eq!(journal_row(&s, &ctx(), &SCOPE).level(), Level::Green);
    }

    /// A `ship_result` as the shipper's logging writes it (common::logging's
    /// `Record`, through the shared vocabulary).
    fn record(outcome: Outcome, status: u64, problem: Option<&str>) -> Record {
        let mut fields = vec![
            (names::EPISODE_ID, LogValue::Str("E1".into())),
            (names::OUTCOME, LogValue::Str(outcome.as_str().into())),
            (names::STATUS_CODE, LogValue::U64(status)),
        ];
        if let Some(p) = problem {
            fields.push((names::PROBLEM_TYPE, LogValue::Str(p.into())));
            fields.push((
                names::ERROR,
                LogValue::Str(format!("{status} {p}: too old")),
            ));
        }
        fields.push((names::ATTEMPT, LogValue::U64(1)));
        Record {
            level: LogLevel::ERROR,
            event: events::Event::ShipResult.as_str().to_owned(),
            message: None,
            fields,
        }
    }

    #[test]
    fn every_format_the_shared_logging_writes_reads_as_the_same_ship_event() {
        let record = record(Outcome::Fatal, 412, Some("out-of-window"));
        let mut entry: Map<String, Value> = record
            .journal_fields("episode-shipper")
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        entry.insert("__REALTIME_TIMESTAMP".into(), "5".into());
        let journal = Value::Object(entry).to_string();
        let text = record.text("2027-01-15T07:59:00.000001Z");
        let json = record.json("2027-01-15T07:59:00.000001Z");
        let want = ShipEvent {
            outcome: Some("fatal".into()),
            status: Some(412),
            problem_type: Some("out-of-window".into()),
            episode_id: Some("E1".into()),
            error: Some("412 out-of-window: too old".into()),
        };
        for line in [&journal, &text, &json] {
            let parsed = parse_line(line, &W).unwrap();
            assert_eq!(parsed.event, Event::Ship(want.clone()), "{line}");
            assert!(parsed.at_us.is_some(), "{line}");
        }
        // Another event carrying a status is not a ship, in any format.
        let hold = Record {
            event: events::Event::HoldStarted.as_str().to_owned(),
            message: Some("shipping paused".into()),
            fields: vec![(names::STATUS_CODE, LogValue::U64(401))],
            ..record.clone()
        };
        let mut entry: Map<String, Value> = hold
            .journal_fields("episode-shipper")
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        entry.insert("__REALTIME_TIMESTAMP".into(), "5".into());
        for line in [
            Value::Object(entry).to_string(),
            hold.text("2027-01-15T07:59:00.000001Z"),
            hold.json("2027-01-15T07:59:00.000001Z"),
        ] {
            assert_eq!(parse_line(&line, &W).unwrap().event, Event::Other, "{line}");
        }
        // pass_complete by its event.
        let pass = Record {
            event: events::Event::PassComplete.as_str().to_owned(),
            message: None,
            fields: vec![("pass_bytes", LogValue::U64(10))],
            ..record
        };
        assert_eq!(
            parse_line(&pass.json("2027-01-15T07:59:00.000001Z"), &W)
                .unwrap()
                .event,
            Event::PassComplete
        );
    }

    #[test]
    fn lines_from_before_the_log_schema_are_still_read() {
        // Records with the default prefix read the same as unprefixed ones.
        let prefixed = serde_json::json!({
            "__REALTIME_TIMESTAMP": "5",
            "MESSAGE": "ship_result outcome=fatal status=412",
            "F_OUTCOME": "fatal",
            "F_STATUS_CODE": "412",
            "F_PROBLEM_TYPE": "out-of-window",
            "F_EPISODE_ID": "E1",
            "F_ERROR": "412 out-of-window: too old",
        })
        .to_string();
        let plain = ship("fatal", 412, "out-of-window", "E1", 5);
        let Event::Ship(a) = parse_line(&prefixed, &W).unwrap().event else {
            panic!("not a ship event")
        };
        let Event::Ship(b) = parse_line(&plain, &W).unwrap().event else {
            panic!("not a ship event")
        };
        assert_eq!(a.problem_type, b.problem_type);
        assert_eq!(
            (a.outcome, a.status, a.episode_id),
            (b.outcome, b.status, b.episode_id)
        );
        assert_eq!(a.error.as_deref(), Some("412 out-of-window: too old"));
    }

    #[test]
    fn a_json_log_line_as_the_journal_message_is_read_structured() {
        // `--log-format json` under systemd: stderr becomes MESSAGE.
        let inner = r#"{"timestamp":"2027-01-15T07:59:00.000001Z","level":"WARN","message":"ship_result outcome=repack status=400","episode_id":"E5","outcome":"repack","status_code":400,"problem_type":"digest-mismatch","error":"400 digest-mismatch: Repr-Digest differs","attempt":1}"#;
        let entry = serde_json::json!({
            "MESSAGE": inner,
            "__REALTIME_TIMESTAMP": "1799999940000000",
            "_SYSTEMD_UNIT": "episode-shipper.service",
        })
        .to_string();
        let line = parse_line(&entry, &W).unwrap();
        assert_eq!(line.at_us, Some(1_799_999_940_000_000));
        assert_eq!(
            line.event,
            Event::Ship(ShipEvent {
                outcome: Some("repack".into()),
                status: Some(400),
                problem_type: Some("digest-mismatch".into()),
                episode_id: Some("E5".into()),
                error: Some("400 digest-mismatch: Repr-Digest differs".into()),
            })
        );
        // Without the journal's stamp, the line's own timestamp counts.
        let bare = serde_json::json!({ "MESSAGE": inner }).to_string();
        assert_eq!(
            parse_line(&bare, &W).unwrap().at_us,
            Some(1_799_999_940_000_001)
        );
    }

    #[test]
    fn a_repack_has_its_own_line_after_the_rejections() {
        let lines = [
            ship("repack", 400, "digest-mismatch", "R1", 1),
            ship("repack", 400, "length-mismatch", "R1", 1),
            ship("fatal", 400, "missing-code-commit", "X1", 1),
            ship("fatal", 412, "out-of-window", "E1", 1),
            ship("transient", 503, "", "T1", 1),
        ];
        let s = classify_journal(lines.iter().map(String::as_str), &W);
        let row = journal_row(&s, &ctx(), &SCOPE);
        let findings = row.findings();
        assert!(
            findings[0].starts_with("1 ship(s) rejected as out-of-window"),
            "{findings:?}"
        );
        assert!(
            findings[1].starts_with("1 ship(s) rejected as bad request (400 missing-code-commit"),
            "{findings:?}"
        );
        assert_eq!(
            findings[2],
            "2 ship(s) re-packed after a digest/length mismatch (400 digest-mismatch ×1, 400 length-mismatch ×1) across 1 episode(s)"
        );
        assert!(
            findings[3].starts_with("1 transient failure(s) (503 ×1)"),
            "{findings:?}"
        );
        let fixes = row.fixes();
        assert!(
            fixes
                .iter()
                .any(|f| f.contains("dmesg") && f.contains("`episode-shipper status`")),
            "{fixes:?}"
        );
        // Alone it is yellow.
        let s = classify_journal([lines[0].as_str()], &W);
        assert_eq!(journal_row(&s, &ctx(), &SCOPE).level(), Level::Yellow);
    }
}
