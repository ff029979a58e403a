//! The fleet page (observability.md, "The fleet page"): one HTML document, no
//! script, no external asset, refreshed by the browser every 30 s.
//!
//! `render` is pure: a `FleetView` in, the page out. Every text from outside
//! (host ids, problem types) is escaped.

use std::fmt::Write as _;

use crate::fleet::{FleetView, HOURS, HostState};

/// What the page shows besides the view.
pub struct Page<'a> {
    pub view: &'a FleetView,
    /// `[fleet] stale_after` as written.
    pub stale_after: &'a str,
    /// Unix seconds the receiver started (rejections are counted since).
    pub started_at: i64,
    pub version: &'a str,
}

/// HTML-escapes `text`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "42s", "5m", "3h 12m", "4d 2h".
pub fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// "0 B", "512 B", "1.5 KiB", "12.0 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn utc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

const STYLE: &str = "
:root{--ink:#1f2933;--muted:#66788a;--line:#e4e7eb;--bg:#f7f8fa;--ok:#2f7d4f;--ok-bg:#e6f4ea;
--stale:#ffffff;--stale-bg:#c62828;--rej:#3b2300;--rej-bg:#ffb300;--bar:#5b7a99}
*{box-sizing:border-box}
body{margin:0;font:13px/1.35 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--ink);background:var(--bg)}
header{display:flex;align-items:baseline;gap:16px;padding:12px 20px 4px}
h1{font-size:18px;margin:0}
.meta{color:var(--muted)}
main{padding:0 20px 24px;max-width:1280px}
.tiles{display:flex;gap:8px;margin:8px 0 12px;flex-wrap:wrap}
.tile{background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:118px}
.tile b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.tile span{color:var(--muted);font-size:12px}
.tile.stale{background:var(--stale-bg);border-color:var(--stale-bg);color:var(--stale)}
.tile.stale span{color:#ffe0e0}
.tile.rejecting{background:var(--rej-bg);border-color:var(--rej-bg);color:var(--rej)}
.tile.rejecting span{color:var(--rej)}
.tile.okay b{color:var(--ok)}
figure{margin:0 0 12px;background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px 12px 4px}
figcaption{color:var(--muted);font-size:12px;margin-bottom:4px}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:var(--muted)}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);font-variant-numeric:tabular-nums}
th,td{padding:2px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{position:sticky;top:0;background:#eef1f4;font-weight:600;font-size:12px;color:#3e4c59}
td.n,th.n{text-align:right}
td.host{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px;max-width:300px;overflow:hidden;text-overflow:ellipsis}
.age{color:var(--muted)}
.badge{display:inline-block;min-width:72px;text-align:center;border-radius:3px;padding:0 6px;font-size:11px;font-weight:700;letter-spacing:.04em;text-transform:uppercase}
tr.ok .badge{color:var(--ok);background:var(--ok-bg)}
tr.stale td{background:#fdecea}
tr.stale .badge{color:var(--stale);background:var(--stale-bg)}
tr.rejecting td{background:#fff6df}
tr.rejecting .badge{color:var(--rej);background:var(--rej-bg)}
.rej{color:#8a4b00}
tr.ok .rej{color:var(--muted)}
footer{color:var(--muted);font-size:12px;margin-top:8px}
";

fn tile(out: &mut String, class: &str, value: &str, label: &str) {
    let _ = write!(
        out,
        "<div class=\"tile {class}\"><b>{value}</b><span>{label}</span></div>"
    );
}

/// The plot of episodes stored per hour over the last 7 days: one bar per hour,
/// an hour without any (after the first hour with some) a red tick on the
/// baseline, so a gap is seen.
fn plot(out: &mut String, view: &FleetView) {
    const W: usize = 1220;
    const H: usize = 110;
    const TOP: usize = 14;
    const BOTTOM: usize = 18;
    let per_hour = &view.per_hour;
    let max = per_hour.iter().copied().max().unwrap_or(0).max(1);
    let bar = W as f64 / HOURS as f64;
    let base = (H - BOTTOM) as f64;
    let height = (H - BOTTOM - TOP) as f64;
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"episodes stored per hour, last 7 days\">"
    );
    let now_hour = view.now.div_euclid(3600);
    let first = per_hour.iter().position(|n| *n > 0).unwrap_or(HOURS);
    for (i, n) in per_hour.iter().enumerate() {
        let x = i as f64 * bar;
        let hour = now_hour - (HOURS - 1 - i) as i64;
        if hour.rem_euclid(24) == 0 {
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{base}\" stroke=\"#e4e7eb\"/>"
            );
        }
        if hour.rem_euclid(24) == 0 && x < (W - 70) as f64 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{}\">{}</text>",
                x + 2.0,
                H - 4,
                &utc(hour * 3600)[..10]
            );
        }
        if *n == 0 && i < first {
            continue;
        }
        if *n == 0 {
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"3\" fill=\"#e57373\"><title>{}: none</title></rect>",
                base - 3.0,
                bar - 1.0,
                utc(hour * 3600)
            );
            continue;
        }
        let h = (*n as f64 / max as f64 * height).max(1.0);
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"var(--bar)\"><title>{}: {n}</title></rect>",
            base - h,
            bar - 1.0,
            utc(hour * 3600)
        );
    }
    let _ = write!(
        out,
        "<line x1=\"0\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\" stroke=\"#9aa5b1\"/>\
         <text x=\"{}\" y=\"10\" text-anchor=\"end\">max {} per hour</text></svg>",
        W - 2,
        group(max)
    );
}

/// The page.
pub fn render(page: &Page<'_>) -> String {
    let view = page.view;
    let now = view.now;
    let mut out = String::with_capacity(4096 + view.hosts.len() * 420);
    let (n_stale, n_rejecting, n_ok) = (
        view.count(HostState::Stale),
        view.count(HostState::Rejecting),
        view.count(HostState::Ok),
    );
    let title = match (n_stale, n_rejecting) {
        (0, 0) => format!("Fleet: all {} ok", view.hosts.len()),
        (s, r) => format!("Fleet: {s} stale, {r} rejecting"),
    };
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\
         <header><h1>Episode fleet</h1><span class=\"meta\">generated {} UTC · stale after {} without a stored episode · refreshes every 30 s</span></header><main>",
        utc(now),
        escape(page.stale_after),
    );
    let sum = |f: fn(&crate::fleet::HostRow) -> u64| view.hosts.iter().map(f).sum::<u64>();
    out.push_str("<section class=\"tiles\" aria-label=\"fleet totals\">");
    tile(&mut out, "", &group(view.hosts.len() as u64), "hosts");
    let loud = |n: usize, class: &'static str| if n > 0 { class } else { "" };
    tile(
        &mut out,
        loud(n_stale, "stale"),
        &group(n_stale as u64),
        "stale",
    );
    tile(
        &mut out,
        loud(n_rejecting, "rejecting"),
        &group(n_rejecting as u64),
        "rejecting",
    );
    tile(&mut out, "okay", &group(n_ok as u64), "ok");
    tile(
        &mut out,
        "",
        &group(sum(|h| h.episodes_24h)),
        "episodes, 24 h",
    );
    tile(&mut out, "", &bytes(sum(|h| h.bytes_24h)), "stored, 24 h");
    tile(
        &mut out,
        "",
        &group(sum(|h| h.episodes_total)),
        "episodes, total",
    );
    tile(
        &mut out,
        "",
        &bytes(sum(|h| h.bytes_total)),
        "stored, total",
    );
    out.push_str("</section><figure><figcaption>Episodes stored per hour, last 7 days (UTC); a red mark is an hour with none</figcaption>");
    plot(&mut out, view);
    out.push_str(
        "</figure><table><thead><tr><th>state</th><th>host</th><th>last stored (UTC)</th><th class=\"n\">age</th>\
         <th class=\"n\">episodes 24 h</th><th class=\"n\">bytes 24 h</th><th class=\"n\">episodes total</th>\
         <th class=\"n\">bytes total</th><th>last rejection</th></tr></thead><tbody>",
    );
    for h in &view.hosts {
        let state = h.state.as_str();
        let host = escape(h.host_id.as_str());
        let _ = write!(
            out,
            "<tr class=\"{state}\"><td><span class=\"badge\">{state}</span></td><td class=\"host\" title=\"{host}\">{host}</td>\
             <td>{}</td><td class=\"n age\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"rej\">",
            utc(h.last_stored),
            age(now - h.last_stored),
            group(h.episodes_24h),
            bytes(h.bytes_24h),
            group(h.episodes_total),
            bytes(h.bytes_total),
        );
        match &h.last_rejection {
            Some(r) => {
                let _ = write!(
                    out,
                    "{} {} · {} ago",
                    r.status_code,
                    escape(&r.problem_type),
                    age(now - r.at)
                );
            }
            None => out.push('—'),
        }
        out.push_str("</td></tr>");
    }
    if view.hosts.is_empty() {
        out.push_str("<tr><td colspan=\"9\">No host has stored an episode yet.</td></tr>");
    }
    let _ = write!(
        out,
        "</tbody></table><footer>Rejections (a 4xx answer other than 409, 408 and 429) are counted since the receiver started, {} UTC; \
         everything else comes from the index. The same data as JSON: <a href=\"api/hosts\">/api/hosts</a>. episode-receiver {}</footer></main></body></html>",
        utc(page.started_at),
        escape(page.version),
    );
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Answers, HostStats, Stats, view};

    const NOW: i64 = 1_800_000_000;

    fn page_of(
        stats: &Stats,
        answers: &std::collections::HashMap<episode_common::HostId, Answers>,
    ) -> String {
        let v = view(stats, answers, NOW, 86_400);
        render(&Page {
            view: &v,
            stale_after: "24h",
            started_at: NOW - 600,
            version: "0.1.0",
        })
    }

    fn host(s: &str) -> episode_common::HostId {
        episode_common::HostId::new(s).unwrap()
    }

    #[test]
    fn shows_each_host_with_its_state_and_refreshes() {
        let mut stats = Stats::default();
        let mut s = HostStats::default();
        s.add(NOW - 2 * 86_400, 2048);
        stats.insert(host("lab-gone"), s);
        let mut s = HostStats::default();
        s.add(NOW - 60, 1 << 20);
        stats.insert(host("lab-fine"), s);
        let html = page_of(&stats, &Default::default());
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"30\">"));
        assert!(html.contains("<tr class=\"stale\"><td><span class=\"badge\">stale</span></td><td class=\"host\" title=\"lab-gone\">lab-gone</td>"), "{html}");
        assert!(html.contains(">lab-fine</td>"));
        assert!(html.find("lab-gone") < html.find("lab-fine"), "worst first");
        assert!(html.contains("2d 0h"));
        assert!(html.contains("1.0 MiB"));
        assert!(html.contains("<svg"));
        assert!(
            !html.contains("<script") && !html.contains("http://") && !html.contains("https://")
        );
    }

    #[test]
    fn escapes_what_comes_from_outside() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
        let mut stats = Stats::default();
        let mut s = HostStats::default();
        s.add(NOW, 1);
        stats.insert(host("lab-1"), s);
        let mut answers = std::collections::HashMap::new();
        answers
            .entry(host("lab-1"))
            .or_insert_with(Answers::default)
            .record(NOW, 400, Some("<script>alert(1)</script>"));
        let html = page_of(&stats, &answers);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("400 &lt;script&gt;"));
    }

    #[test]
    fn formats_ages_and_sizes() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(3 * 3600 + 120), "3h 2m");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(group(1_234_567), "1\u{202f}234\u{202f}567");
    }
}
