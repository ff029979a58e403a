//! The fleet as the collector sees it: per-host aggregates of the index (last
//! stored, totals, stored per hour over 7 days), kept up to date as rows are loaded
//! and committed, plus each host's last answer since start; and `view`, the pure
//! function that turns them into the fleet page's rows, worst state first.
//!
//! Invariant: a request reads the aggregates, never the index map.

use std::collections::HashMap;

use episode_common::HostId;

/// Hours in the plot of the fleet page (7 days).
pub const HOURS: usize = 168;
const SECS_PER_HOUR: i64 = 3600;

#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    /// Hours since the epoch this slot counts; a slot of another hour is stale.
    hour: i64,
    episodes: u32,
    bytes: u64,
}

/// One host's stored episodes, aggregated.
#[derive(Debug, Clone)]
pub struct HostStats {
    /// Unix seconds of the latest `received_at`.
    pub last_stored: i64,
    pub episodes_total: u64,
    pub bytes_total: u64,
    /// A ring of the last `HOURS` hours, slot `hour % HOURS`.
    hours: Box<[Hour; HOURS]>,
}

impl Default for HostStats {
    fn default() -> Self {
        Self {
            last_stored: i64::MIN,
            episodes_total: 0,
            bytes_total: 0,
            hours: Box::new([Hour::default(); HOURS]),
        }
    }
}

impl HostStats {
    /// Counts one stored episode.
    pub fn add(&mut self, received_at: i64, bytes: u64) {
        self.last_stored = self.last_stored.max(received_at);
        self.episodes_total += 1;
        self.bytes_total += bytes;
        let hour = received_at.div_euclid(SECS_PER_HOUR);
        let slot = &mut self.hours[hour.rem_euclid(HOURS as i64) as usize];
        if slot.hour < hour {
            *slot = Hour {
                hour,
                episodes: 0,
                bytes: 0,
            };
        }
        if slot.hour == hour {
            slot.episodes += 1;
            slot.bytes += bytes;
        }
    }

    /// Uncounts an episode whose row was replaced by a later one (its archive lost
    /// and uploaded again). `last_stored` stays: the later row is at least as late.
    pub fn remove(&mut self, received_at: i64, bytes: u64) {
        self.episodes_total = self.episodes_total.saturating_sub(1);
        self.bytes_total = self.bytes_total.saturating_sub(bytes);
        let hour = received_at.div_euclid(SECS_PER_HOUR);
        let slot = &mut self.hours[hour.rem_euclid(HOURS as i64) as usize];
        if slot.hour == hour {
            slot.episodes = slot.episodes.saturating_sub(1);
            slot.bytes = slot.bytes.saturating_sub(bytes);
        }
    }

    /// Adds this host's episodes per hour into `plot` (oldest hour first, the last
    /// entry is the hour of `now`); returns the episodes and bytes of the 24 clock
    /// hours up to `now`.
    fn fold_hours(&self, now: i64, plot: &mut [u64; HOURS]) -> (u64, u64) {
        let now_hour = now.div_euclid(SECS_PER_HOUR);
        let (mut episodes, mut bytes) = (0, 0);
        for slot in self.hours.iter() {
            let back = now_hour - slot.hour;
            if !(0..HOURS as i64).contains(&back) || slot.episodes == 0 {
                continue;
            }
            plot[HOURS - 1 - back as usize] += u64::from(slot.episodes);
            if back < 24 {
                episodes += u64::from(slot.episodes);
                bytes += slot.bytes;
            }
        }
        (episodes, bytes)
    }
}

/// Per-host aggregates of the whole index.
pub type Stats = HashMap<HostId, HostStats, foldhash::fast::RandomState>;

/// A 4xx answer other than 409 (and other than the transient 408 and 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub at: i64,
    pub status_code: u16,
    pub problem_type: String,
}

/// A host's answers since the receiver started.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// Its last answer (transient ones aside) was a rejection.
    pub rejecting: bool,
    pub last_rejection: Option<Rejection>,
}

/// What an answer says about a host: `Some(true)` a rejection, `Some(false)` an
/// acceptance (2xx, or 409: the episode is there, only different), `None` neither
/// (transient: 408, 429, 5xx; the host's state stays as it was).
pub fn is_rejection(status: u16) -> Option<bool> {
    match status {
        200..=299 | 409 => Some(false),
        408 | 429 => None,
        400..=499 => Some(true),
        _ => None,
    }
}

impl Answers {
    /// Records an answer to this host.
    pub fn record(&mut self, at: i64, status_code: u16, problem_type: Option<&str>) {
        match is_rejection(status_code) {
            Some(true) => {
                self.rejecting = true;
                self.last_rejection = Some(Rejection {
                    at,
                    status_code,
                    problem_type: problem_type.unwrap_or("about:blank").to_owned(),
                });
            }
            Some(false) => self.rejecting = false,
            None => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Stale,
    Rejecting,
    Ok,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Stale => "stale",
            HostState::Rejecting => "rejecting",
            HostState::Ok => "ok",
        }
    }
}

/// One row of the fleet page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub host_id: HostId,
    pub state: HostState,
    pub last_stored: i64,
    pub episodes_24h: u64,
    pub bytes_24h: u64,
    pub episodes_total: u64,
    pub bytes_total: u64,
    pub last_rejection: Option<Rejection>,
}

/// The fleet page's data.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub now: i64,
    pub stale_after_secs: i64,
    pub hosts: Vec<HostRow>,
    /// Episodes stored per hour, the last `HOURS` hours, oldest first.
    pub per_hour: Box<[u64; HOURS]>,
}

impl FleetView {
    pub fn count(&self, state: HostState) -> usize {
        self.hosts.iter().filter(|h| h.state == state).count()
    }
}

/// The fleet at `now`: one row per host that ever stored an episode, worst state
/// first (stale, rejecting, ok), then the oldest last-stored first, then by id.
pub fn view(
    stats: &Stats,
    answers: &HashMap<HostId, Answers>,
    now: i64,
    stale_after_secs: i64,
) -> FleetView {
    let mut per_hour = Box::new([0u64; HOURS]);
    let mut hosts: Vec<HostRow> = stats
        .iter()
        .filter(|(_, s)| s.episodes_total > 0)
        .map(|(host_id, s)| {
            let (episodes_24h, bytes_24h) = s.fold_hours(now, &mut per_hour);
            let answers = answers.get(host_id);
            let state = if now - s.last_stored >= stale_after_secs {
                HostState::Stale
            } else if answers.is_some_and(|a| a.rejecting) {
                HostState::Rejecting
            } else {
                HostState::Ok
            };
            HostRow {
                host_id: host_id.clone(),
                state,
                last_stored: s.last_stored,
                episodes_24h,
                bytes_24h,
                episodes_total: s.episodes_total,
                bytes_total: s.bytes_total,
                last_rejection: answers.and_then(|a| a.last_rejection.clone()),
            }
        })
        .collect();
    hosts.sort_by(|a, b| {
        (a.state, a.last_stored, &a.host_id).cmp(&(b.state, b.last_stored, &b.host_id))
    });
    FleetView {
        now,
        stale_after_secs,
        hosts,
        per_hour,
    }
}

/// `/api/hosts` (observability.md): the view as JSON, times in RFC 3339.
pub fn to_json(view: &FleetView, stale_after: &str) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        generated_at: String,
        stale_after: &'a str,
        hosts: Vec<Host<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Host<'a> {
        host_id: &'a str,
        state: HostState,
        last_stored_at: String,
        episodes_24h: u64,
        bytes_24h: u64,
        episodes_total: u64,
        bytes_total: u64,
        last_rejection: Option<LastRejection<'a>>,
    }
    #[derive(serde::Serialize)]
    struct LastRejection<'a> {
        at: String,
        status_code: u16,
        problem_type: &'a str,
    }
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map(episode_common::wire::format_rfc3339)
            .unwrap_or_default()
    };
    let body = Body {
        generated_at: at(view.now),
        stale_after,
        hosts: view
            .hosts
            .iter()
            .map(|h| Host {
                host_id: h.host_id.as_str(),
                state: h.state,
                last_stored_at: at(h.last_stored),
                episodes_24h: h.episodes_24h,
                bytes_24h: h.bytes_24h,
                episodes_total: h.episodes_total,
                bytes_total: h.bytes_total,
                last_rejection: h.last_rejection.as_ref().map(|r| LastRejection {
                    at: at(r.at),
                    status_code: r.status_code,
                    problem_type: &r.problem_type,
                }),
            })
            .collect(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn host(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }

    #[test]
    fn states_are_ordered_worst_first_then_oldest_last_stored() {
        let mut stats = Stats::default();
        for (name, age) in [
            ("fresh", 60),
            ("older", 3600),
            ("gone", 2 * DAY),
            ("rej", 10),
        ] {
            stats.entry(host(name)).or_default().add(NOW - age, 100);
        }
        stats
            .entry(host("gone2"))
            .or_default()
            .add(NOW - 3 * DAY, 5);
        let mut answers = HashMap::new();
        answers
            .entry(host("rej"))
            .or_insert_with(Answers::default)
            .record(NOW - 5, 413, Some("too-large"));
        let v = view(&stats, &answers, NOW, DAY);
        let order: Vec<(&str, HostState)> = v
            .hosts
            .iter()
            .map(|h| (h.host_id.as_str(), h.state))
            .collect();
        assert_eq!(
            order,
            [
                ("gone2", HostState::Stale),
                ("gone", HostState::Stale),
                ("rej", HostState::Rejecting),
                ("older", HostState::Ok),
                ("fresh", HostState::Ok),
            ]
        );
        let rej = &v.hosts[2];
        assert_eq!(rej.last_rejection.as_ref().unwrap().status_code, 413);
        assert_eq!(v.count(HostState::Stale), 2);
        let json: serde_json::Value = serde_json::from_str(&to_json(&v, "24h")).unwrap();
        assert_eq!(json["stale_after"], "24h");
        assert_eq!(json["hosts"][2]["state"], "rejecting");
        assert_eq!(
            json["hosts"][2]["last_rejection"]["problem_type"],
            "too-large"
        );
        assert_eq!(json["hosts"][0]["last_rejection"], serde_json::Value::Null);
        assert_eq!(json["hosts"][4]["episodes_24h"], 1);
    }

    #[test]
    fn an_acceptance_ends_rejecting_and_transient_answers_change_nothing() {
        let mut a = Answers::default();
        a.record(1, 403, Some("forbidden-identity"));
        assert!(a.rejecting);
        a.record(2, 429, Some("too-many-uploads"));
        a.record(3, 503, Some("unavailable"));
        assert!(a.rejecting, "transient answers keep the state");
        a.record(4, 409, Some("conflict"));
        assert!(!a.rejecting, "409 is no rejection");
        assert_eq!(
            a.last_rejection.as_ref().unwrap().at,
            1,
            "kept for the page"
        );
        a.record(5, 400, Some("digest-mismatch"));
        a.record(6, 201, None);
        assert!(!a.rejecting);
    }

    #[test]
    fn counts_the_last_24_hours_and_plots_7_days() {
        let mut s = HostStats::default();
        s.add(NOW, 10);
        s.add(NOW - 3600, 20);
        s.add(NOW - 23 * 3600, 40);
        s.add(NOW - 30 * 3600, 80);
        s.add(NOW - 8 * DAY, 160); // outside the plot, inside the totals
        let mut plot = [0u64; HOURS];
        let (episodes, bytes) = s.fold_hours(NOW, &mut plot);
        assert_eq!((episodes, bytes), (3, 70));
        assert_eq!((s.episodes_total, s.bytes_total), (5, 310));
        assert_eq!(plot[HOURS - 1], 1);
        assert_eq!(plot[HOURS - 31], 1);
        assert_eq!(plot.iter().sum::<u64>(), 4);
    }

    #[test]
    fn a_row_seen_after_a_newer_one_in_its_slot_is_too_old_to_plot() {
        let mut s = HostStats::default();
        s.add(NOW, 1);
        s.add(NOW - HOURS as i64 * 3600, 1); // same slot, a week older
        let mut plot = [0u64; HOURS];
        s.fold_hours(NOW, &mut plot);
        assert_eq!(plot.iter().sum::<u64>(), 1);
        assert_eq!(s.episodes_total, 2);
    }

    #[test]
    fn a_replaced_row_is_uncounted() {
        let mut s = HostStats::default();
        s.add(NOW - 100, 10);
        s.remove(NOW - 100, 10);
        s.add(NOW, 12);
        let mut plot = [0u64; HOURS];
        assert_eq!(s.fold_hours(NOW, &mut plot), (1, 12));
        assert_eq!((s.episodes_total, s.bytes_total), (1, 12));
    }
}
