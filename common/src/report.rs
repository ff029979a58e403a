//! A `check` report as JSON: the lines a command printed, each with its level, for
//! `--json`. One rule for both programs: a line naming a PROBLEM is a problem, one
//! starting `note:` a note, anything else information.

use serde::Serialize;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Line {
    pub level: &'static str,
    pub message: String,
}

/// `{"ok": bool, "lines": [{"level": "info|note|problem", "message"}…]}` (one line
/// of JSON) from a report's text; `error` (a config error) is added when given.
pub fn check_json(ok: bool, text: &str, error: Option<&str>) -> String {
    let lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let message = l.trim();
            let level = if message.contains("PROBLEM") {
                "problem"
            } else if message.starts_with("note:") {
                "note"
            } else {
                "info"
            };
            Line {
                level,
                message: message.to_owned(),
            }
        })
        .collect();
    let mut value = serde_json::json!({ "ok": ok, "lines": lines });
    if let Some(error) = error {
        value["error"] = error.into();
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_gets_its_level() {
        let text =
            "config /x: ok\n  PROBLEM row a/b has no archive\nnote: outbox has 1 partial\n\n";
        let v: serde_json::Value = serde_json::from_str(&check_json(false, text, None)).unwrap();
        assert_eq!(v["ok"], false);
        let levels: Vec<&str> = v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["level"].as_str().unwrap())
            .collect();
        assert_eq!(levels, ["info", "problem", "note"]);
        assert_eq!(v["lines"][1]["message"], "PROBLEM row a/b has no archive");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn a_config_error_is_named() {
        let v: serde_json::Value =
            serde_json::from_str(&check_json(false, "", Some("config /x: key `listen`: bad")))
                .unwrap();
        assert_eq!(v["error"], "config /x: key `listen`: bad");
        assert_eq!(v["lines"].as_array().unwrap().len(), 0);
    }
}
