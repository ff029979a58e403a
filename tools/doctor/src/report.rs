//! The doctor's answer: rows of (check, level, findings, fixes) and how they print.
//!
//! Owns the vocabulary (`Check`, `Level`, `Row`, `Report`), the exit code a report
//! means (0 no red row, 1 a red row), the `--json` document and the human table
//! (ANSI colours only when asked to). Gathers nothing and decides no level: the
//! row builders in the other modules do that.
//!
//! Invariant: a row that is not green carries at least one fix; the JSON `fix` is
//! `null` exactly when the row is green.

use std::fmt::Write as _;

use serde::Serialize;

/// How bad a row is. Ordered: `Green < Yellow < Red`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Green,
    Yellow,
    Red,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Green => "green",
            Level::Yellow => "yellow",
            Level::Red => "red",
        }
    }
}

/// The rows, in the order they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    Config,
    Certificates,
    Receiver,
    Service,
    Backlog,
    Quarantine,
    Hold,
    Journal,
}

impl Check {
    pub const ALL: [Check; 8] = [
        Check::Config,
        Check::Certificates,
        Check::Receiver,
        Check::Service,
        Check::Backlog,
        Check::Quarantine,
        Check::Hold,
        Check::Journal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Config => "config",
            Check::Certificates => "certificates",
            Check::Receiver => "receiver",
            Check::Service => "service",
            Check::Backlog => "backlog",
            Check::Quarantine => "quarantine",
            Check::Hold => "hold",
            Check::Journal => "journal",
        }
    }
}

/// One row: its level is the worst of its findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub check: Check,
    /// Not run because something it needs is missing (shown as "skip").
    pub skipped: bool,
    findings: Vec<(Level, String)>,
    fixes: Vec<(Level, String)>,
}

impl Row {
    pub fn new(check: Check) -> Self {
        Self {
            check,
            skipped: false,
            findings: Vec::new(),
            fixes: Vec::new(),
        }
    }

    /// A row that could not be checked because `why`.
    pub fn skipped(check: Check, why: &str, fix: &str) -> Self {
        let mut row = Self::new(check);
        row.skipped = true;
        row.note(Level::Yellow, format!("skipped: {why}"));
        row.fix(Level::Yellow, fix);
        row
    }

    /// Adds a finding of `level`.
    pub fn note(&mut self, level: Level, finding: impl Into<String>) -> &mut Self {
        self.findings.push((level, finding.into()));
        self
    }

    /// Adds a fix for a finding of `level` (duplicates are dropped).
    pub fn fix(&mut self, level: Level, fix: impl Into<String>) -> &mut Self {
        let fix = fix.into();
        if !self.fixes.iter().any(|(_, f)| *f == fix) {
            self.fixes.push((level, fix));
        }
        self
    }

    pub fn level(&self) -> Level {
        self.findings
            .iter()
            .map(|(l, _)| *l)
            .max()
            .unwrap_or(Level::Green)
    }

    /// The findings, worst first (stable otherwise).
    pub fn findings(&self) -> Vec<&str> {
        sorted(&self.findings)
    }

    /// The fixes, worst first; empty for a green row.
    pub fn fixes(&self) -> Vec<&str> {
        if self.level() == Level::Green {
            return Vec::new();
        }
        sorted(&self.fixes)
    }

    /// The findings as one line.
    pub fn finding_line(&self) -> String {
        self.findings().join("; ")
    }

    /// The fixes as one line; `None` when the row is green.
    pub fn fix_line(&self) -> Option<String> {
        match self.level() {
            Level::Green => None,
            _ => {
                let fixes = self.fixes();
                Some(if fixes.is_empty() {
                    "no automatic fix known: read the finding".to_owned()
                } else {
                    fixes.join("; ")
                })
            }
        }
    }
}

fn sorted(items: &[(Level, String)]) -> Vec<&str> {
    let mut items: Vec<&(Level, String)> = items.iter().collect();
    items.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
    items.into_iter().map(|(_, s)| s.as_str()).collect()
}

/// All rows of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub rows: Vec<Row>,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    check: &'a str,
    level: Level,
    finding: String,
    findings: Vec<&'a str>,
    fix: Option<String>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    rows: Vec<JsonRow<'a>>,
    worst: Level,
}

impl Report {
    pub fn worst(&self) -> Level {
        self.rows
            .iter()
            .map(Row::level)
            .max()
            .unwrap_or(Level::Green)
    }

    /// 1 when a row is red, else 0 (2 is for a doctor that could not run).
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Level::Red => 1,
            _ => 0,
        }
    }

    /// `{"rows": [{"check", "level", "finding", "findings", "fix"}…], "worst": …}`:
    /// `findings` worst first, `finding` the same joined with "; ".
    pub fn to_json(&self) -> String {
        let doc = JsonReport {
            rows: self
                .rows
                .iter()
                .map(|r| JsonRow {
                    check: r.check.as_str(),
                    level: r.level(),
                    finding: r.finding_line(),
                    findings: r.findings(),
                    fix: r.fix_line(),
                })
                .collect(),
            worst: self.worst(),
        };
        serde_json::to_string_pretty(&doc).expect("the report serializes")
    }

    /// The human table: one line per finding, then one "fix" line per fix.
    pub fn to_table(&self, colour: bool) -> String {
        let paint = |code: &str, text: &str| {
            if colour {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text.to_owned()
            }
        };
        let width = Check::ALL
            .iter()
            .map(|c| c.as_str().len())
            .max()
            .unwrap_or(0)
            + 2;
        let mut out = String::new();
        for row in &self.rows {
            let (label, code) = match (row.skipped, row.level()) {
                (true, _) => ("skip", "2"),
                (false, Level::Green) => ("ok", "32"),
                (false, Level::Yellow) => ("warn", "33"),
                (false, Level::Red) => ("FAIL", "1;31"),
            };
            let state = paint(code, &format!("{label:<5}"));
            for (i, finding) in row.findings().iter().enumerate() {
                if i == 0 {
                    let _ = writeln!(out, "{:<width$}{state} {finding}", row.check.as_str());
                } else {
                    let _ = writeln!(out, "{:<width$}{:<5} {finding}", "", "");
                }
            }
            if row.findings().is_empty() {
                let _ = writeln!(out, "{:<width$}{state}", row.check.as_str());
            }
            // A skipped row's fix only says which row to fix first: not worth a line.
            for fix in row.fixes().into_iter().filter(|_| !row.skipped) {
                let _ = writeln!(out, "{:<width$}{} {fix}", "", paint("36", "fix  "));
            }
        }
        let count = |level| self.rows.iter().filter(|r| r.level() == level).count();
        let (red, yellow) = (count(Level::Red), count(Level::Yellow));
        let summary = match (red, yellow) {
            (0, 0) => paint("32", "all green"),
            (0, y) => paint("33", &format!("{y} warning(s), nothing red")),
            (r, y) => paint("1;31", &format!("{r} red, {y} yellow")),
        };
        let _ = writeln!(out, "\n{summary}");
        out
    }
}

/// Colour only on a terminal, never with `NO_COLOR` set (to anything but "") or
/// `TERM=dumb`.
pub fn use_colour(stdout_is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> bool {
    stdout_is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(check: Check, notes: &[(Level, &str)], fixes: &[(Level, &str)]) -> Row {
        let mut r = Row::new(check);
        for (l, n) in notes {
            r.note(*l, *n);
        }
        for (l, f) in fixes {
            r.fix(*l, *f);
        }
        r
    }

    #[test]
    fn a_row_is_as_bad_as_its_worst_finding_and_lists_it_first() {
        let r = row(
            Check::Certificates,
            &[
                (Level::Green, "key matches"),
                (Level::Red, "expired"),
                (Level::Yellow, "CA expires soon"),
            ],
            &[
                (Level::Yellow, "renew the CA"),
                (Level::Red, "renew the cert"),
            ],
        );
        assert_eq!(r.level(), Level::Red);
        assert_eq!(r.findings(), ["expired", "CA expires soon", "key matches"]);
        assert_eq!(
            r.fix_line().as_deref(),
            Some("renew the cert; renew the CA")
        );
        assert_eq!(Row::new(Check::Hold).level(), Level::Green);
    }

    #[test]
    fn a_green_row_has_no_fix() {
        let r = row(
            Check::Hold,
            &[(Level::Green, "not paused")],
            &[(Level::Yellow, "x")],
        );
        assert_eq!(r.fix_line(), None);
        assert!(r.fixes().is_empty());
    }

    #[test]
    fn json_lists_a_rows_findings_worst_first_and_joins_them_in_finding() {
        let journal = row(
            Check::Journal,
            &[
                (Level::Green, "3 shipped"),
                (Level::Red, "2 ship(s) rejected as out-of-window (412)"),
                (Level::Yellow, "1 transient failure(s)"),
            ],
            &[],
        );
        let json: serde_json::Value = serde_json::from_str(
            &Report {
                rows: vec![journal],
            }
            .to_json(),
        )
        .unwrap();
        let row = &json["rows"][0];
        assert_eq!(
            row["findings"],
            serde_json::json!([
                "2 ship(s) rejected as out-of-window (412)",
                "1 transient failure(s)",
                "3 shipped"
            ])
        );
        assert_eq!(
            row["finding"],
            "2 ship(s) rejected as out-of-window (412); 1 transient failure(s); 3 shipped"
        );
    }

    #[test]
    fn exit_code_and_worst_follow_the_rows() {
        let green = row(Check::Config, &[(Level::Green, "ok")], &[]);
        let yellow = row(
            Check::Journal,
            &[(Level::Yellow, "x")],
            &[(Level::Yellow, "f")],
        );
        let red = row(Check::Hold, &[(Level::Red, "x")], &[(Level::Red, "f")]);
        let report = |rows: Vec<Row>| Report { rows };
        assert_eq!(report(vec![green.clone()]).exit_code(), 0);
        assert_eq!(
            report(vec![green.clone(), yellow.clone()]).worst(),
            Level::Yellow
        );
        assert_eq!(report(vec![green.clone(), yellow.clone()]).exit_code(), 0);
        let all = report(vec![green, yellow, red]);
        assert_eq!(all.exit_code(), 1);
        let json: serde_json::Value = serde_json::from_str(&all.to_json()).unwrap();
        assert_eq!(json["worst"], "red");
        assert_eq!(json["rows"][0]["fix"], serde_json::Value::Null);
        assert_eq!(json["rows"][1]["level"], "yellow");
        assert_eq!(json["rows"][2]["fix"], "f");
        for row in json["rows"].as_array().unwrap() {
            let findings: Vec<&str> = row["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            assert_eq!(row["finding"], findings.join("; "), "{row}");
        }
    }

    #[test]
    fn the_table_is_plain_without_colour_and_aligned() {
        let report = Report {
            rows: vec![
                row(Check::Config, &[(Level::Green, "ok")], &[]),
                row(
                    Check::Journal,
                    &[(Level::Red, "12 ship(s)"), (Level::Green, "3 shipped")],
                    &[(Level::Red, "`timedatectl`")],
                ),
            ],
        };
        let plain = report.to_table(false);
        assert!(!plain.contains('\x1b'), "{plain}");
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines[0], "config        ok    ok");
        assert_eq!(lines[1], "journal       FAIL  12 ship(s)");
        assert_eq!(lines[2], "                    3 shipped");
        assert_eq!(lines[3], "              fix   `timedatectl`");
        assert!(report.to_table(true).contains("\x1b[1;31mFAIL"));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None, Some("xterm")));
        assert!(use_colour(true, Some(""), None));
        assert!(!use_colour(true, Some("1"), Some("xterm")));
        assert!(!use_colour(false, None, Some("xterm")));
        assert!(!use_colour(true, None, Some("dumb")));
    }
}
