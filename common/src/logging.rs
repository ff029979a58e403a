//! Log output of the daemons and tools in shipper.md's "Log schema", chosen once
//! at start-up: native journal datagrams under systemd, else text or JSON lines on
//! stderr; one record renders all three, so they cannot drift (ARCHITECTURE.md).

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

pub use tracing::Level;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::events::{Event, field};

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// A value longer than this is cut when a datagram is too large to send whole.
const TRUNCATE_AT: usize = 4096;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Journal under systemd, readable lines otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (auto, text, json)")),
        }
    }
}

/// Installs the global subscriber. `identifier` is the journal's SYSLOG_IDENTIFIER.
pub fn init(format: LogFormat, identifier: &str) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Auto
        && std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(lines) = Lines::journal(Path::new(JOURNAL_SOCKET), identifier)
    {
        registry.with(lines).init();
        return;
    }
    let lines = match format {
        LogFormat::Json => Lines::new(Sink::Json(Out::Stderr)),
        LogFormat::Auto | LogFormat::Text => Lines::new(Sink::Text(Out::Stderr)),
    };
    registry.with(lines).init();
}

/// One value of a field, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::U64(n) => n.to_string(),
            Value::I64(n) => n.to_string(),
            Value::F64(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::Value::from(s.as_str()),
            Value::U64(n) => serde_json::Value::from(*n),
            Value::I64(n) => serde_json::Value::from(*n),
            Value::F64(n) => serde_json::Value::from(*n),
            Value::Bool(b) => serde_json::Value::from(*b),
        }
    }
}

/// One log line before rendering: the event, the human note, the fields in the
/// order the call site wrote them (each once, none empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub level: Level,
    /// The `event` field; `log` for a line without one (from a library).
    pub event: String,
    /// The human note (tracing's message), if the call site wrote one.
    pub message: Option<String>,
    pub fields: Vec<(&'static str, Value)>,
}

impl Record {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The journal's `MESSAGE`: what `journalctl` shows by default. A
    /// `ship_result` reads `ship_result outcome=… status=…`; other events their
    /// name, then the note.
    pub fn journal_message(&self) -> String {
        if self.event == Event::ShipResult.as_str() {
            let get = |n| self.get(n).map(Value::text).unwrap_or_default();
            return format!(
                "{} outcome={} status={}",
                self.event,
                get(field::OUTCOME),
                get(field::STATUS_CODE)
            );
        }
        match &self.message {
            Some(note) => format!("{}: {note}", self.event),
            None => self.event.clone(),
        }
    }

    /// The text line (no newline): `<time> <LEVEL> [note] event=<name> key=value…`;
    /// a value with a space, quote or `=` is quoted.
    pub fn text(&self, timestamp: &str) -> String {
        let mut line = format!("{timestamp} {:>5} ", self.level);
        if let Some(note) = &self.message {
            line.push_str(note);
            line.push(' ');
        }
        line.push_str("event=");
        line.push_str(&self.event);
        for (name, value) in &self.fields {
            line.push(' ');
            line.push_str(name);
            line.push('=');
            match value {
                Value::Str(s)
                    if s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') =>
                {
                    line.push_str(&format!("{s:?}"))
                }
                v => line.push_str(&v.text()),
            }
        }
        line
    }

    /// The JSON line (no newline): `timestamp`, `level`, `event`, the fields, and
    /// `message` when there is a note.
    pub fn json(&self, timestamp: &str) -> String {
        // Written in this order (a map would sort the keys): when, how bad, what.
        let mut line = String::from("{");
        let mut put = |key: &str, value: serde_json::Value| {
            if line.len() > 1 {
                line.push(',');
            }
            line.push_str(&serde_json::Value::from(key).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        };
        put("timestamp", timestamp.into());
        put("level", self.level.as_str().into());
        put(field::EVENT, self.event.as_str().into());
        for (name, value) in &self.fields {
            put(name, value.json());
        }
        if let Some(note) = &self.message {
            put("message", note.as_str().into());
        }
        line.push('}');
        line
    }

    /// The journal entry's fields: `MESSAGE`, `MESSAGE_ID`, `PRIORITY`,
    /// `SYSLOG_IDENTIFIER`, `EVENT`, then each field upper-cased.
    pub fn journal_fields(&self, identifier: &str) -> Vec<(String, String)> {
        let priority = match self.level {
            Level::ERROR => "3",
            Level::WARN => "4",
            Level::INFO => "6",
            Level::DEBUG | Level::TRACE => "7",
        };
        let mut out = vec![("MESSAGE".to_owned(), self.journal_message())];
        if let Some(event) = Event::parse(&self.event) {
            out.push(("MESSAGE_ID".to_owned(), event.message_id().to_owned()));
        }
        out.push(("PRIORITY".to_owned(), priority.to_owned()));
        out.push(("SYSLOG_IDENTIFIER".to_owned(), identifier.to_owned()));
        out.push((journal_name(field::EVENT), self.event.clone()));
        for (name, value) in &self.fields {
            out.push((journal_name(name), value.text()));
        }
        out
    }
}

/// The journal field name of the log field `name`: upper case, `.` as `_`,
/// other characters dropped, no leading `_` (journald reserves those).
pub fn journal_name(name: &str) -> String {
    name.chars()
        .map(|c| if c == '.' { '_' } else { c })
        .skip_while(|&c| c == '_')
        .filter(|&c| c == '_' || c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// journald's native protocol: `KEY=value\n`, or for a value with a newline
/// `KEY\n`, its length as 64-bit little endian, the value, `\n`.
pub fn encode_journal(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

#[derive(Default)]
struct Collect {
    event: Option<String>,
    message: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl Collect {
    fn put(&mut self, field: &Field, value: Value) {
        if matches!(&value, Value::Str(s) if s.is_empty()) {
            return;
        }
        match field.name() {
            "message" => {
                if let Value::Str(s) = value {
                    self.message = Some(s);
                }
            }
            "event" => self.event = Some(value.text()),
            name if self.fields.iter().any(|(n, _)| *n == name) => {}
            name => self.fields.push((name, value)),
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_owned()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::U64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::I64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
}

/// Where rendered lines go.
enum Out {
    Stderr,
    #[cfg(test)]
    Buffer(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

impl Out {
    fn line(&self, line: String) {
        match self {
            Out::Stderr => {
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(format!("{line}\n").as_bytes());
            }
            #[cfg(test)]
            Out::Buffer(lines) => lines.lock().unwrap().push(line),
        }
    }
}

enum Sink {
    Text(Out),
    Json(Out),
    Journal {
        socket: UnixDatagram,
        path: PathBuf,
        identifier: String,
    },
}

/// The layer: renders each event as one line of its sink's format.
pub struct Lines {
    sink: Sink,
}

impl Lines {
    fn new(sink: Sink) -> Self {
        Self { sink }
    }

    /// Native journal output to the socket at `path` (`JOURNAL_SOCKET`); fails
    /// when nothing listens there.
    pub fn journal(path: &Path, identifier: &str) -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Self::new(Sink::Journal {
            socket,
            path: path.to_owned(),
            identifier: identifier.to_owned(),
        }))
    }

    fn emit(&self, record: &Record) {
        match &self.sink {
            Sink::Text(out) => out.line(record.text(&timestamp())),
            Sink::Json(out) => out.line(record.json(&timestamp())),
            Sink::Journal {
                socket,
                path,
                identifier,
            } => {
                let mut fields = record.journal_fields(identifier);
                let sent = socket.send(&encode_journal(&fields));
                if sent.is_err() {
                    // Too large for one datagram (or journald restarted): cut long
                    // values and try once more on a fresh address lookup.
                    for (_, value) in &mut fields {
                        if value.len() > TRUNCATE_AT {
                            let mut end = TRUNCATE_AT;
                            while !value.is_char_boundary(end) {
                                end -= 1;
                            }
                            value.truncate(end);
                        }
                    }
                    let _ = socket.send_to(&encode_journal(&fields), path);
                }
            }
        }
    }
}

fn timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(format)
        .unwrap_or_default()
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Lines {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        event.record(&mut collect);
        let record = Record {
            level: *event.metadata().level(),
            event: collect
                .event
                .unwrap_or_else(|| Event::Log.as_str().to_owned()),
            message: collect.message,
            fields: collect.fields,
        };
        self.emit(&record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;
    use std::sync::{Arc, Mutex};

    fn capture(sink: impl FnOnce(Out) -> Sink, log: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber =
            tracing_subscriber::registry().with(Lines::new(sink(Out::Buffer(lines.clone()))));
        tracing::subscriber::with_default(subscriber, log);
        lines.lock().unwrap().clone()
    }

    fn ship_result(problem_type: Option<&str>, error: Option<&str>) {
        tracing::warn!(
            event = %Event::ShipResult,
            episode_id = "E1",
            outcome = %Outcome::Transient,
            status_code = 503u16,
            problem_type,
            error,
            attempt = 2u32,
            bytes = 1000u64,
            duration_ms = 12u64,
        );
    }

    #[test]
    fn text_lines_carry_the_event_and_each_field_once_without_empty_ones() {
        let lines = capture(Sink::Text, || {
            ship_result(None, Some("503 unavailable: try again"));
            tracing::info!(event = %Event::Stopping, signal = "SIGTERM", error = "", "no new episode");
        });
        let ship = &lines[0];
        assert!(ship.contains(" WARN event=ship_result episode_id=E1 outcome=transient status_code=503 error=\"503 unavailable: try again\" attempt=2 bytes=1000 duration_ms=12"), "{ship}");
        assert!(!ship.contains("problem_type"), "{ship}");
        assert!(
            !ship.contains("ship_result outcome="),
            "not repeated: {ship}"
        );
        let stopping = &lines[1];
        assert!(
            stopping.ends_with(" INFO no new episode event=stopping signal=SIGTERM"),
            "{stopping}"
        );
    }

    #[test]
    fn json_lines_carry_the_event_and_typed_fields_without_empty_ones() {
        let lines = capture(Sink::Json, || {
            ship_result(Some("unavailable"), None);
            tracing::info!("a library's line");
        });
        assert!(
            lines[0].starts_with(r#"{"timestamp":"#)
                && lines[0].contains(
                    r#","level":"WARN","event":"ship_result","episode_id":"E1","outcome":"#
                ),
            "{}",
            lines[0]
        );
        let ship: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(ship["event"], "ship_result");
        assert_eq!(ship["outcome"], "transient");
        assert_eq!(ship["status_code"], 503);
        assert_eq!(ship["problem_type"], "unavailable");
        assert_eq!(ship["level"], "WARN");
        assert!(ship.get("error").is_none(), "{ship}");
        assert!(ship.get("message").is_none(), "{ship}");
        let other: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(other["event"], "log");
        assert_eq!(other["message"], "a library's line");
    }

    #[test]
    fn the_journal_gets_message_id_and_a_classifiable_message_over_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journald = UnixDatagram::bind(&path).unwrap();
        let lines = Lines::journal(&path, "episode-shipper").unwrap();
        let subscriber = tracing_subscriber::registry().with(lines);
        tracing::subscriber::with_default(subscriber, || {
            ship_result(Some("unavailable"), Some("503 unavailable:\nline two"));
        });
        let mut buf = vec![0u8; 65536];
        journald
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = journald.recv(&mut buf).unwrap();
        let fields = decode_journal(&buf[..n]);
        let get = |k: &str| {
            let all: Vec<&String> = fields
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v)
                .collect();
            assert!(all.len() <= 1, "{k} appears {} times", all.len());
            all.first().map(|s| s.as_str())
        };
        assert_eq!(
            get("MESSAGE"),
            Some("ship_result outcome=transient status=503")
        );
        assert_eq!(get("MESSAGE_ID"), Some(Event::ShipResult.message_id()));
        assert_eq!(get("EVENT"), Some("ship_result"));
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("episode-shipper"));
        assert_eq!(get("STATUS_CODE"), Some("503"));
        assert_eq!(get("PROBLEM_TYPE"), Some("unavailable"));
        assert_eq!(get("ERROR"), Some("503 unavailable:\nline two"));
        assert_eq!(get("EPISODE_ID"), Some("E1"));
    }

    #[test]
    fn a_line_too_large_for_one_datagram_is_sent_with_its_long_values_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journald = UnixDatagram::bind(&path).unwrap();
        let lines = Lines::journal(&path, "episode-receiver").unwrap();
        let subscriber = tracing_subscriber::registry().with(lines);
        let huge = "x".repeat(1 << 20);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(event = %Event::StorageFailed, error = huge.as_str(), "index append failed");
        });
        let mut buf = vec![0u8; 1 << 16];
        journald
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = journald.recv(&mut buf).unwrap();
        let fields = decode_journal(&buf[..n]);
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("ERROR").map(|e| e.len()), Some(TRUNCATE_AT));
        assert_eq!(
            get("MESSAGE").as_deref(),
            Some("storage_failed: index append failed")
        );
    }

    /// journald's side of the native protocol, for the test above.
    fn decode_journal(mut data: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n').unwrap();
            let head = &data[..nl];
            if let Some(eq) = head.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8(head[..eq].to_vec()).unwrap(),
                    String::from_utf8(head[eq + 1..].to_vec()).unwrap(),
                ));
                data = &data[nl + 1..];
            } else {
                let len = u64::from_le_bytes(data[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let value = &data[nl + 9..nl + 9 + len];
                assert_eq!(data[nl + 9 + len], b'\n');
                out.push((
                    String::from_utf8(head.to_vec()).unwrap(),
                    String::from_utf8(value.to_vec()).unwrap(),
                ));
                data = &data[nl + 10 + len..];
            }
        }
        out
    }

    #[test]
    fn field_names_become_journal_names() {
        assert_eq!(journal_name("status_code"), "STATUS_CODE");
        assert_eq!(journal_name("_private"), "PRIVATE");
        assert_eq!(journal_name("log.target"), "LOG_TARGET");
    }
}
