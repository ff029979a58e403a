//! The shipper's retry state machine: a reply judged, then the retry state's next
//! value and the one effect the pass executes; and which ready episodes a pass may send.
//! Pure: `now` and a random unit come in as a `Tick`; no clock, no randomness, no I/O.

use std::time::Duration;

use episode_common::wire::format_rfc3339;
use episode_common::{Class, EpisodeId, Outcome, classify};

use crate::config::RetryConfig;
use crate::pack::Digests;
use crate::policy::{self, Action, PackFailure};
use crate::quarantine::Reason;
use crate::state::{Backoff, Conflict, EpisodeState, Hold, PassUnderWay, State};
use crate::transport::{Answer, Failure};

/// Archives larger than this are asked about with HEAD before they are sent: the
/// receiver drains at most 1 MiB of a body it answered early (200, 409, 4xx) and
/// closes the connection otherwise, so the answer to a larger PUT may be lost to a
/// reset; a HEAD costs one round trip and never loses it.
pub const HEAD_FIRST_BYTES: u64 = 1 << 20;

/// The moment a decision is taken: the wall clock (Unix ms) and a uniform random
/// number in [0, 1) for the jitter, both read by the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    pub now_ms: i64,
    pub unit: f64,
}

/// What this pass already counted: answers to uploads in flight together raise the
/// backoff's (or the hold's) failure count once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub backoff_counted: bool,
    pub hold_counted: bool,
}

/// What the receiver said about one episode, or why it said nothing.
#[derive(Debug)]
pub enum Reply {
    Answer(Answer),
    /// HEAD found the same archive (or tar content) stored.
    HeadMatch(Answer),
    /// HEAD found a different archive stored.
    HeadConflict(Answer),
    Failure(Failure),
}

/// A reply in the terms the shipper acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub class: Class,
    pub outcome: Outcome,
    pub status: u16,
    pub problem_type: Option<String>,
    pub error: String,
    /// No HTTP answer: the response may have been lost.
    pub connection_level: bool,
    pub retry_after: Option<Duration>,
    /// The sha256 the receiver holds, when it reported a conflict.
    pub stored_sha256: Option<String>,
    /// The receiver's body (kept for a quarantine reason).
    pub body: serde_json::Value,
}

/// Judges a reply (protocol.md's last table, through `classify`).
pub fn judge(reply: Reply) -> Judgement {
    let base = |class, outcome, answer: &Answer| Judgement {
        class,
        outcome,
        status: answer.status,
        problem_type: answer.problem_type().map(str::to_owned),
        error: answer.error(),
        connection_level: false,
        retry_after: answer.retry_after,
        stored_sha256: None,
        body: serde_json::Value::Null,
    };
    match reply {
        Reply::Answer(answer) => {
            let class = classify(answer.status, answer.problem_type());
            let outcome = match class {
                Class::Shipped if answer.status == 201 => Outcome::Shipped,
                Class::Shipped => Outcome::AlreadyPresent,
                Class::Conflict => Outcome::Conflict,
                Class::Repack => Outcome::Repack,
                Class::Fatal => Outcome::Fatal,
                Class::Hold => Outcome::Hold,
                Class::Transient => Outcome::Transient,
            };
            let mut judgement = base(class, outcome, &answer);
            if class == Class::Hold && answer.problem.is_none() && answer.status < 400 {
                // A 1xx, a 2xx other than 201/200, or a redirect: not our receiver.
                let what = match answer.error() {
                    e if e.is_empty() => format!("HTTP {}", answer.status),
                    e => e,
                };
                judgement.error = format!(
                    "{what}: receiver.url does not point at an episode receiver (only 201 or 200 mean stored)"
                );
            }
            judgement.stored_sha256 = answer
                .problem
                .as_ref()
                .and_then(|p| p.extra.get("stored_sha256"))
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            judgement.body = answer.body;
            judgement
        }
        Reply::HeadMatch(answer) => base(Class::Shipped, Outcome::AlreadyPresent, &answer),
        Reply::HeadConflict(answer) => Judgement {
            status: 409,
            error: format!(
                "HEAD: a different archive is stored (sha256 {})",
                answer.repr_digest.map(|d| d.to_hex()).unwrap_or_default()
            ),
            stored_sha256: answer.repr_digest.map(|d| d.to_hex()),
            ..base(Class::Conflict, Outcome::Conflict, &answer)
        },
        Reply::Failure(failure) => Judgement {
            class: Class::Transient,
            outcome: Outcome::Transient,
            status: 0,
            problem_type: None,
            error: failure.to_string(),
            connection_level: true,
            retry_after: None,
            stored_sha256: None,
            body: serde_json::Value::Null,
        },
    }
}

/// How an episode is first asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approach {
    /// HEAD first: the last answer was lost, a conflict is re-checked, or the
    /// archive is too large for an early answer to survive.
    HeadFirst,
    /// PUT straight away.
    Put,
}

/// How to ask about an episode whose archive is `bytes` long.
pub fn approach(state: &State, episode_id: &EpisodeId, bytes: u64) -> Approach {
    let asked_before = state
        .episodes
        .get(episode_id.as_str())
        .is_some_and(|e| e.head_first || e.conflict.is_some());
    if asked_before || bytes > HEAD_FIRST_BYTES {
        Approach::HeadFirst
    } else {
        Approach::Put
    }
}

/// Reads a HEAD answer: the reply it settles, or `None` when the PUT goes ahead
/// (nothing stored, or an answer about the HEAD itself that a PUT may contradict).
pub fn after_head(answer: Answer, digests: &Digests) -> Option<Reply> {
    match answer.status {
        200 => {
            let same = answer.repr_digest == Some(digests.sha256)
                || answer.tar_digest == Some(digests.tar_sha256);
            if same {
                Some(Reply::HeadMatch(answer))
            } else if answer.repr_digest.is_some() {
                Some(Reply::HeadConflict(answer))
            } else {
                None
            }
        }
        404 => None,
        status => matches!(
            classify(status, answer.problem_type()),
            Class::Hold | Class::Transient
        )
        .then_some(Reply::Answer(answer)),
    }
}

/// Why a pass sends nothing, or what it may send.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Shipping is on hold and its re-check is not due.
    OnHold { error: String },
    /// The global backoff has not run out.
    BackingOff { until_ms: i64, last_error: String },
    /// Passes died under way; uploads wait for the crash-loop backoff.
    CrashLoopGuard { unfinished: u32, resume_ms: i64 },
    /// These episodes are due, oldest first (the others wait for their retry time
    /// or a conflict re-check).
    Open(Vec<EpisodeId>),
}

impl Gate {
    /// Why the pass stops before it sends anything, if it does.
    pub fn stopped_by(&self) -> Option<String> {
        match self {
            Gate::OnHold { error } => Some(format!("on hold: {error}")),
            Gate::BackingOff {
                until_ms,
                last_error,
            } => Some(format!(
                "backing off until {} after: {last_error}",
                rfc3339(*until_ms)
            )),
            Gate::CrashLoopGuard {
                unfinished,
                resume_ms,
            } => Some(format!(
                "crash-loop guard: {unfinished} pass(es) in a row did not finish; uploads resume at {}",
                rfc3339(*resume_ms)
            )),
            Gate::Open(_) => None,
        }
    }
}

/// Which of the `ready` episodes (oldest first) a pass starting at `now_ms` may
/// send. A hold whose re-check is due lets the pass run: its first upload is the probe.
pub fn gate(state: &State, ready: Vec<EpisodeId>, now_ms: i64) -> Gate {
    if let Some(hold) = &state.hold
        && now_ms < hold.recheck_ms
    {
        return Gate::OnHold {
            error: hold.error.clone(),
        };
    }
    if let Some(backoff) = &state.backoff
        && now_ms < backoff.until_ms
    {
        return Gate::BackingOff {
            until_ms: backoff.until_ms,
            last_error: backoff.last_error.clone(),
        };
    }
    if let Some(marker) = &state.pass_under_way
        && now_ms < marker.resume_ms
    {
        return Gate::CrashLoopGuard {
            unfinished: marker.unfinished,
            resume_ms: marker.resume_ms,
        };
    }
    let due = |episode_id: &EpisodeId| match state.episodes.get(episode_id.as_str()) {
        None => true,
        Some(e) => {
            e.next_attempt_ms.is_none_or(|t| t <= now_ms)
                && e.conflict.as_ref().is_none_or(|c| c.recheck_ms <= now_ms)
        }
    };
    Gate::Open(ready.into_iter().filter(due).collect())
}

/// Marks a pass that starts uploading (the crash-loop guard): if it never ends, the
/// next start waits `resume_ms`, a backoff growing with the passes in a row that
/// never ended, drawn now so a restart cannot re-roll it.
pub fn start_pass(state: &mut State, tick: Tick, timing: &RetryConfig) {
    let unfinished = state
        .pass_under_way
        .as_ref()
        .map_or(0, |m| m.unfinished)
        .saturating_add(1);
    let wait = delay(timing, unfinished, None, tick.unit);
    state.pass_under_way = Some(PassUnderWay {
        started_ms: tick.now_ms,
        unfinished,
        resume_ms: tick.now_ms + wait.as_millis() as i64,
    });
}

/// What the pass does with an episode after its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Move it to shipped/ (then `retired`).
    Retire,
    /// A conflict, recorded: keep its archive in the outbox for the re-check.
    KeepInOutbox,
    /// Drop its outbox archive and pack it again.
    Repack,
    /// Move it to quarantine/ with `quarantine_reason` (then `quarantined`).
    Quarantine,
    /// Shipping is on hold (`started`: it was not before); the pass stops.
    Hold { delay: Duration, started: bool },
    /// All shipping backs off; keep its archive in the outbox; the pass stops.
    BackOff { delay: Duration },
}

impl Effect {
    /// Whether the pass starts no more uploads after this.
    pub fn stops_pass(self) -> bool {
        matches!(self, Effect::Hold { .. } | Effect::BackOff { .. })
    }
}

/// A decision about one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// The answer ended a hold.
    pub hold_ended: bool,
    pub effect: Effect,
}

/// Acts on a judged answer about `episode_id` in `state`: the retry state moves on,
/// and the effect says what the pass must do.
pub fn on_answer(
    state: &mut State,
    counts: &mut PassCounts,
    episode_id: &EpisodeId,
    judgement: &Judgement,
    tick: Tick,
    timing: &RetryConfig,
) -> Decision {
    let now_ms = tick.now_ms;
    let episode = record_of(state, episode_id);
    let attempt = episode.attempts + 1;
    let action = policy::action(judgement.class, episode.repacks);
    let hold_ended = policy::ends_hold(judgement.class) && state.hold.take().is_some();
    if judgement.class != Class::Transient {
        state.backoff = None;
    }
    let effect = match action {
        Action::Retire => Effect::Retire,
        Action::LeaveConflict => {
            let episode = record_of(state, episode_id);
            let since_unix = episode
                .conflict
                .as_ref()
                .map_or(now_ms / 1000, |c| c.since_unix);
            record(episode, judgement, attempt, now_ms);
            episode.conflict = Some(Conflict {
                since_unix,
                stored_sha256: judgement.stored_sha256.clone(),
                recheck_ms: now_ms + policy::CONFLICT_RECHECK.as_millis() as i64,
            });
            Effect::KeepInOutbox
        }
        Action::Repack => {
            let episode = record_of(state, episode_id);
            record(episode, judgement, attempt, now_ms);
            episode.repacks += 1;
            Effect::Repack
        }
        Action::Quarantine => Effect::Quarantine,
        Action::Hold => {
            let previous = state.hold.as_ref().map(|h| h.failures);
            let failures = match previous {
                Some(n) if counts.hold_counted => n,
                other => other.unwrap_or(0) + 1,
            };
            counts.hold_counted = true;
            let wait = delay(timing, failures, judgement.retry_after, tick.unit);
            let since_unix = state.hold.as_ref().map_or(now_ms / 1000, |h| h.since_unix);
            record(record_of(state, episode_id), judgement, attempt, now_ms);
            state.hold = Some(Hold {
                since_unix,
                status_code: judgement.status,
                problem_type: judgement.problem_type.clone(),
                error: judgement.error.clone(),
                failures,
                recheck_ms: now_ms + wait.as_millis() as i64,
            });
            Effect::Hold {
                delay: wait,
                started: previous.is_none(),
            }
        }
        Action::Backoff => {
            let wait = back_off(
                state,
                counts,
                judgement.status,
                &judgement.error,
                judgement.retry_after,
                tick,
                timing,
            );
            let episode = record_of(state, episode_id);
            record(episode, judgement, attempt, now_ms);
            episode.next_attempt_ms = Some(now_ms + wait.as_millis() as i64);
            episode.head_first = judgement.connection_level;
            Effect::BackOff { delay: wait }
        }
    };
    Decision {
        attempt,
        hold_ended,
        effect,
    }
}

/// After `Effect::Retire` succeeded: the episode's record goes, the success counts.
pub fn retired(state: &mut State, episode_id: &EpisodeId, now_ms: i64) {
    state.episodes.remove(episode_id.as_str());
    state.last_success_unix = Some(now_ms / 1000);
}

/// After `Effect::Quarantine` succeeded: the episode's record goes.
pub fn quarantined(state: &mut State, episode_id: &EpisodeId) {
    state.episodes.remove(episode_id.as_str());
}

/// The reason file of an episode quarantined after `judgement` (`note`: what the
/// shipper itself did that explains the answer).
pub fn quarantine_reason(
    episode_id: &EpisodeId,
    judgement: &Judgement,
    note: Option<String>,
    attempts: u32,
    digests: &Digests,
    now_ms: i64,
) -> Reason {
    let mut error = if judgement.status >= 500 {
        format!("server error {}", judgement.status)
    } else {
        format!("client error {}", judgement.status)
    };
    if let Some(note) = &note {
        error.push_str(&format!("; {note}"));
    }
    Reason {
        status_code: judgement.status,
        problem_type: judgement.problem_type.clone(),
        error,
        shipper_note: note,
        body: judgement.body.clone(),
        attempts,
        sha256: Some(digests.sha256.to_hex()),
        quarantined_at_wall: rfc3339(now_ms),
        quarantined_at_unix: now_ms / 1000,
        shipper_version: crate::VERSION.to_owned(),
        episode_id: Some(episode_id.to_string()),
    }
}

/// What the pass does after an episode failed to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackEffect {
    /// A file changed while packed: packed again after `delay`; no failure.
    TryLater { delay: Duration },
    /// This episode backs off alone; the others still ship.
    EpisodeBacksOff { delay: Duration, attempt: u32 },
    /// The host cannot pack now: all shipping backs off and the pass stops.
    HostBacksOff { delay: Duration, error: String },
}

/// Acts on a failure to pack `episode_id` (`policy::pack_failure` gave `failure`;
/// `error` is the I/O error's text).
pub fn on_pack_failure(
    state: &mut State,
    counts: &mut PassCounts,
    episode_id: &EpisodeId,
    failure: PackFailure,
    error: &str,
    tick: Tick,
    timing: &RetryConfig,
) -> PackEffect {
    let now_ms = tick.now_ms;
    match failure {
        PackFailure::NotStable => {
            let wait = delay(timing, 1, None, tick.unit);
            let episode = record_of(state, episode_id);
            episode.next_attempt_ms = Some(now_ms + wait.as_millis() as i64);
            episode.last_error = Some(format!("not stable yet: {error}"));
            PackEffect::TryLater { delay: wait }
        }
        PackFailure::Episode => {
            let episode = record_of(state, episode_id);
            episode.attempts += 1;
            let wait = delay(timing, episode.attempts, None, tick.unit);
            episode.next_attempt_ms = Some(now_ms + wait.as_millis() as i64);
            episode.last_status = 0;
            episode.last_error = Some(format!("packing: {error}"));
            episode.last_attempt_unix = now_ms / 1000;
            PackEffect::EpisodeBacksOff {
                delay: wait,
                attempt: episode.attempts,
            }
        }
        PackFailure::Host => {
            let error = format!("packing: {error}");
            let wait = back_off(state, counts, 0, &error, None, tick, timing);
            let episode = record_of(state, episode_id);
            episode.next_attempt_ms = Some(now_ms + wait.as_millis() as i64);
            episode.last_status = 0;
            episode.last_error = Some(error.clone());
            episode.last_attempt_unix = now_ms / 1000;
            PackEffect::HostBacksOff { delay: wait, error }
        }
    }
}

/// The wait before retry number `failures`, in whole milliseconds (what is
/// persisted is what is waited): the jittered backoff, or a longer `Retry-After`.
pub fn delay(
    timing: &RetryConfig,
    failures: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let backoff = policy::backoff(
        failures,
        timing.initial_backoff.get(),
        timing.max_backoff.get(),
        unit,
    );
    let wait = policy::retry_delay(backoff, retry_after);
    Duration::from_millis(wait.as_millis() as u64)
}

/// A Unix-ms time as RFC 3339 (whole seconds).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(format_rfc3339)
        .unwrap_or_default()
}

/// Raises the global backoff after a transient failure (counted once per pass) and
/// pushes a hold's re-check past it: a transient failure says nothing about the
/// credentials. Returns the delay.
fn back_off(
    state: &mut State,
    counts: &mut PassCounts,
    status: u16,
    error: &str,
    retry_after: Option<Duration>,
    tick: Tick,
    timing: &RetryConfig,
) -> Duration {
    let previous = state.backoff.as_ref().map(|b| b.failures);
    let failures = match previous {
        Some(n) if counts.backoff_counted => n,
        other => other.unwrap_or(0) + 1,
    };
    counts.backoff_counted = true;
    let wait = delay(timing, failures, retry_after, tick.unit);
    let until_ms = tick.now_ms + wait.as_millis() as i64;
    if let Some(hold) = state.hold.as_mut() {
        hold.recheck_ms = hold.recheck_ms.max(until_ms);
    }
    state.backoff = Some(Backoff {
        failures,
        until_ms,
        last_status: status,
        last_error: error.to_owned(),
    });
    wait
}

fn record_of<'a>(state: &'a mut State, episode_id: &EpisodeId) -> &'a mut EpisodeState {
    state
        .episodes
        .entry(episode_id.as_str().to_owned())
        .or_default()
}

fn record(episode: &mut EpisodeState, judgement: &Judgement, attempt: u32, now_ms: i64) {
    episode.attempts = attempt;
    episode.last_status = judgement.status;
    episode.last_problem = judgement.problem_type.clone();
    episode.last_error = Some(judgement.error.clone()).filter(|e| !e.is_empty());
    episode.last_attempt_unix = now_ms / 1000;
}

#[cfg(test)]
mod tests {
    use super::*;
    use episode_common::problem::{Problem, Slug};

    fn answer(status: u16, slug: Option<Slug>) -> Answer {
        Answer {
            status,
            problem: slug.map(|s| Problem::new(s, "detail")),
            body: serde_json::Value::Null,
            retry_after: None,
            repr_digest: None,
            tar_digest: None,
            location: None,
        }
    }

    #[test]
    fn judges_replies_into_outcomes() {
        let cases = [
            (
                Reply::Answer(answer(201, None)),
                Class::Shipped,
                Outcome::Shipped,
                201,
                false,
            ),
            (
                Reply::Answer(answer(200, None)),
                Class::Shipped,
                Outcome::AlreadyPresent,
                200,
                false,
            ),
            (
                Reply::HeadMatch(answer(200, None)),
                Class::Shipped,
                Outcome::AlreadyPresent,
                200,
                false,
            ),
            (
                Reply::HeadConflict(answer(200, None)),
                Class::Conflict,
                Outcome::Conflict,
                409,
                false,
            ),
            (
                Reply::Answer(answer(409, Some(Slug::Conflict))),
                Class::Conflict,
                Outcome::Conflict,
                409,
                false,
            ),
            (
                Reply::Answer(answer(400, Some(Slug::DigestMismatch))),
                Class::Repack,
                Outcome::Repack,
                400,
                false,
            ),
            (
                Reply::Answer(answer(400, Some(Slug::MissingCodeCommit))),
                Class::Fatal,
                Outcome::Fatal,
                400,
                false,
            ),
            (
                Reply::Answer(answer(401, Some(Slug::Unauthorized))),
                Class::Hold,
                Outcome::Hold,
                401,
                false,
            ),
            (
                Reply::Answer(answer(503, None)),
                Class::Transient,
                Outcome::Transient,
                503,
                false,
            ),
            (
                Reply::Failure(Failure::Connection("refused".into())),
                Class::Transient,
                Outcome::Transient,
                0,
                true,
            ),
            (
                Reply::Failure(Failure::Material("mTLS material missing".into())),
                Class::Transient,
                Outcome::Transient,
                0,
                true,
            ),
        ];
        for (reply, class, outcome, status, connection_level) in cases {
            let j = judge(reply);
            assert_eq!(
                (j.class, j.outcome, j.status, j.connection_level),
                (class, outcome, status, connection_level)
            );
        }
        let j = judge(Reply::Answer(answer(400, Some(Slug::MissingCodeCommit))));
        assert_eq!(j.problem_type.as_deref(), Some("missing-code-commit"));
        assert!(j.error.contains("400 missing-code-commit"), "{}", j.error);
    }

    #[test]
    fn a_2xx_that_stores_nothing_or_a_redirect_holds_and_says_why() {
        let j = judge(Reply::Answer(answer(204, None)));
        assert_eq!((j.class, j.outcome), (Class::Hold, Outcome::Hold));
        assert!(
            j.error
                .starts_with("HTTP 204: receiver.url does not point at an episode receiver"),
            "{}",
            j.error
        );
        let redirect = Answer {
            location: Some("https://elsewhere/x".into()),
            ..answer(303, None)
        };
        let j = judge(Reply::Answer(redirect));
        assert_eq!(j.class, Class::Hold);
        assert!(
            j.error
                .contains("HTTP 303 redirect to https://elsewhere/x (redirects are not followed)")
                && j.error.contains("receiver.url"),
            "{}",
            j.error
        );
        // A stored answer carries no error text.
        assert_eq!(judge(Reply::Answer(answer(201, None))).error, "");
    }
}
