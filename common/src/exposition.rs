//! The Prometheus text format (0.0.4) from an OpenMetrics text exposition.
//!
//! `prometheus-client` writes OpenMetrics, whose counters are declared without
//! their `_total` sample suffix; node_exporter's textfile collector and
//! `promtool check metrics` read the older text format, where the declared name
//! is the sample's. This renames counter declarations, drops `# UNIT` and `# EOF`.

/// The content type of what `to_text_format` returns.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites an OpenMetrics exposition as the Prometheus text format.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let declaration = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = declaration {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_declared_under_their_sample_name() {
        let om = "# HELP a_responses Answers.\n# TYPE a_responses counter\na_responses_total{code=\"200\"} 2\n\
                  # HELP a_free_bytes Free.\n# TYPE a_free_bytes gauge\n# UNIT a_free_bytes bytes\na_free_bytes 7\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_responses_total Answers.\n# TYPE a_responses_total counter\na_responses_total{code=\"200\"} 2\n\
             # HELP a_free_bytes Free.\n# TYPE a_free_bytes gauge\na_free_bytes 7\n"
        );
    }
}
