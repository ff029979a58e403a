//! `episode-receiver index`: stored episodes by host and time received, read-only.
//!
//! `select` is the pure part (filter, order, limit) over resolved entries; `Source`
//! is the index kind they come from. The JSONL file is read by `index::load`, so a
//! key with several rows resolves as start-up resolves it (the last row wins); a
//! second kind (the shared mode's database) is a second variant of `Source`.

use std::io;
use std::path::PathBuf;

use episode_common::{Dur, EpisodeId, HostId, Sha256};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use crate::index::{self, Entry};

/// Which stored episodes to list. Times are Unix seconds of `received_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub host_id: Option<HostId>,
    /// Received at or after.
    pub since: Option<i64>,
    /// Received before.
    pub until: Option<i64>,
    /// The most recently received `limit` of the matches.
    pub limit: Option<usize>,
}

impl Query {
    /// Whether an entry of `host_id` is one the query asks for (the limit aside).
    pub fn matches(&self, host_id: &HostId, entry: &Entry) -> bool {
        self.host_id.as_ref().is_none_or(|h| h == host_id)
            && self.since.is_none_or(|t| entry.received_at >= t)
            && self.until.is_none_or(|t| entry.received_at < t)
    }
}

/// One stored episode as the query prints it: the index row's fields the index
/// keeps in memory (`started_at` and `client` stay in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    pub host_id: HostId,
    pub episode_id: EpisodeId,
    pub sha256: Sha256,
    pub tar_sha256: Option<Sha256>,
    pub bytes: u64,
    pub code_commit: Option<String>,
    pub received_at: String,
    #[serde(skip)]
    pub received_unix: i64,
}

impl Hit {
    pub fn new(host_id: HostId, episode_id: EpisodeId, entry: &Entry) -> Self {
        Hit {
            received_at: entry.received_at_rfc3339(),
            received_unix: entry.received_at,
            host_id,
            episode_id,
            sha256: entry.sha256,
            tar_sha256: entry.tar_sha256,
            bytes: entry.bytes,
            code_commit: entry.code_commit.as_deref().map(str::to_owned),
        }
    }
}

/// The matching entries, oldest first (then by host and id); with a limit, the most
/// recent `limit` of them.
pub fn select(
    entries: impl IntoIterator<Item = (HostId, EpisodeId, Entry)>,
    query: &Query,
) -> Vec<Hit> {
    let hits = entries
        .into_iter()
        .filter(|(host_id, _, entry)| query.matches(host_id, entry))
        .map(|(host_id, episode_id, entry)| Hit::new(host_id, episode_id, &entry))
        .collect();
    order_and_limit(hits, query.limit)
}

/// Oldest first (then by host and id); with a limit, the most recent `limit`.
fn order_and_limit(mut hits: Vec<Hit>, limit: Option<usize>) -> Vec<Hit> {
    hits.sort_by(|a, b| {
        (a.received_unix, &a.host_id, &a.episode_id).cmp(&(
            b.received_unix,
            &b.host_id,
            &b.episode_id,
        ))
    });
    if let Some(limit) = limit {
        hits.drain(..hits.len().saturating_sub(limit));
    }
    hits
}

/// A `--since`/`--until` value: RFC 3339, a UTC date (`2026-12-01`), or an age
/// before `now` (`24h`, `7d`). Returns Unix seconds.
pub fn parse_when(text: &str, now: OffsetDateTime) -> Result<i64, String> {
    let s = text.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = Date::parse(s, &day) {
        return Ok(date.midnight().assume_utc().unix_timestamp());
    }
    match Dur::parse(s) {
        Ok(age) => Ok(now.unix_timestamp() - age.get().as_secs() as i64),
        Err(_) => Err(format!(
            "{text:?} is not a time: expected RFC 3339 (2026-12-01T10:00:00Z), a date (2026-12-01) or an age (24h, 7d)"
        )),
    }
}

/// Where the rows come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The embedded mode's JSONL index file.
    Jsonl(PathBuf),
}

/// What a query found, and what the index said along the way.
#[derive(Debug, Default)]
pub struct Answer {
    pub hits: Vec<Hit>,
    /// Unreadable rows, skipped: `(line number, error)`.
    pub bad_lines: Vec<(u64, String)>,
}

impl Source {
    /// Runs the query. Blocking (reads the whole index).
    pub fn query(&self, query: &Query) -> io::Result<Answer> {
        match self {
            Source::Jsonl(path) => {
                if !path.exists() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("index {}: no such file", path.display()),
                    ));
                }
                let (idx, report) = index::load(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("index {}: {e}", path.display()))
                })?;
                // Only the matches are copied out of a possibly large index.
                let mut hits = Vec::new();
                idx.visit(query.host_id.as_ref(), |host_id, episode_id, entry| {
                    if query.matches(host_id, entry) {
                        hits.push(Hit::new(host_id.clone(), episode_id.clone(), entry));
                    }
                });
                Ok(Answer {
                    hits: order_and_limit(hits, query.limit),
                    bad_lines: report.bad_lines,
                })
            }
        }
    }
}

/// JSON lines: one object per hit, written as they are made (a whole index may be
/// asked for).
pub fn write_json_lines(hits: &[Hit], out: &mut impl io::Write) -> io::Result<()> {
    for hit in hits {
        serde_json::to_writer(&mut *out, hit)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A table with a header, then a count.
pub fn write_table(hits: &[Hit], out: &mut impl io::Write) -> io::Result<()> {
    const HEADER: [&str; 6] = [
        "RECEIVED_AT",
        "HOST",
        "EPISODE",
        "BYTES",
        "CODE_COMMIT",
        "SHA256",
    ];
    let cells = |h: &Hit| {
        [
            h.received_at.clone(),
            h.host_id.to_string(),
            h.episode_id.to_string(),
            h.bytes.to_string(),
            h.code_commit.clone().unwrap_or_else(|| "-".into()),
            h.sha256.to_hex(),
        ]
    };
    let mut widths = HEADER.map(str::len);
    for hit in hits {
        for (w, cell) in widths.iter_mut().zip(cells(hit)) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut dyn io::Write, cells: [&str; 6]| {
        let mut text = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            text.push_str(&format!("{cell:<w$}  "));
        }
        writeln!(out, "{}", text.trim_end())
    };
    if !hits.is_empty() {
        line(out, HEADER)?;
        for hit in hits {
            let row = cells(hit);
            line(out, row.each_ref().map(String::as_str))?;
        }
    }
    writeln!(out, "{} episode(s)", hits.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(received_at: i64, byte: u8) -> Entry {
        Entry {
            sha256: Sha256([byte; 32]),
            tar_sha256: None,
            bytes: u64::from(byte),
            received_at,
            code_commit: Some("abc".into()),
        }
    }

    fn rows() -> Vec<(HostId, EpisodeId, Entry)> {
        [
            ("lab2", "e3", 300),
            ("lab1", "e1", 100),
            ("lab1", "e2", 200),
            ("lab2", "e0", 100),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (h, e, t))| {
            (
                HostId::new(h).unwrap(),
                EpisodeId::new(e).unwrap(),
                entry(t, i as u8),
            )
        })
        .collect()
    }

    fn keys(hits: &[Hit]) -> Vec<String> {
        hits.iter()
            .map(|h| format!("{}/{}", h.host_id, h.episode_id))
            .collect()
    }

    #[test]
    fn selects_by_host_and_time_oldest_first_and_limits_to_the_newest() {
        let lab1 = Some(HostId::new("lab1").unwrap());
        let cases: &[(Query, &[&str])] = &[
            (
                Query::default(),
                &["lab1/e1", "lab2/e0", "lab1/e2", "lab2/e3"],
            ),
            (
                Query {
                    host_id: lab1.clone(),
                    ..Query::default()
                },
                &["lab1/e1", "lab1/e2"],
            ),
            (
                Query {
                    since: Some(200),
                    ..Query::default()
                },
                &["lab1/e2", "lab2/e3"],
            ),
            (
                Query {
                    until: Some(200),
                    ..Query::default()
                },
                &["lab1/e1", "lab2/e0"],
            ),
            (
                Query {
                    since: Some(100),
                    until: Some(300),
                    ..Query::default()
                },
                &["lab1/e1", "lab2/e0", "lab1/e2"],
            ),
            (
                Query {
                    limit: Some(2),
                    ..Query::default()
                },
                &["lab1/e2", "lab2/e3"],
            ),
            (
                Query {
                    limit: Some(0),
                    ..Query::default()
                },
                &[],
            ),
            (
                Query {
                    host_id: lab1,
                    limit: Some(1),
                    ..Query::default()
                },
                &["lab1/e2"],
            ),
            (
                Query {
                    host_id: Some(HostId::new("lab9").unwrap()),
                    ..Query::default()
                },
                &[],
            ),
        ];
        for (query, want) in cases {
            assert_eq!(keys(&select(rows(), query)), *want, "{query:?}");
        }
    }

    #[test]
    fn a_hit_prints_as_the_index_row_prints_it() {
        let hits = select(
            rows(),
            &Query {
                limit: Some(1),
                ..Query::default()
            },
        );
        let mut json = Vec::new();
        write_json_lines(&hits, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["host_id"], "lab2");
        assert_eq!(v["episode_id"], "e3");
        assert_eq!(v["received_at"], "1970-01-01T00:05:00Z");
        assert_eq!(v["sha256"], "00".repeat(32));
        assert_eq!(v["tar_sha256"], serde_json::Value::Null);
        assert_eq!(v["code_commit"], "abc");
        assert!(v.get("received_unix").is_none());
        let mut table = Vec::new();
        write_table(&hits, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.starts_with("RECEIVED_AT"), "{table}");
        assert!(table.ends_with("1 episode(s)\n"), "{table}");
    }

    #[test]
    fn when_is_rfc3339_a_date_or_an_age() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(parse_when("1970-01-12T13:46:40Z", now), Ok(1_000_000));
        assert_eq!(parse_when("1970-01-02", now), Ok(86_400));
        assert_eq!(parse_when("24h", now), Ok(1_000_000 - 86_400));
        assert_eq!(parse_when("7d", now), Ok(1_000_000 - 7 * 86_400));
        let err = parse_when("yesterday", now).unwrap_err();
        assert!(err.contains("\"yesterday\" is not a time"), "{err}");
    }
}
