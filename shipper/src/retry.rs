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
    use episode_common::Sha256;
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
            let judgement = judge(reply);
            assert_eq!(
                (
                    judgement.class,
                    judgement.outcome,
                    judgement.status,
                    judgement.connection_level
                ),
                (class, outcome, status, connection_level)
            );
        }
        let judgement = judge(Reply::Answer(answer(400, Some(Slug::MissingCodeCommit))));
        assert_eq!(
            judgement.problem_type.as_deref(),
            Some("missing-code-commit")
        );
        assert!(
            judgement.error.contains("400 missing-code-commit"),
            "{}",
            judgement.error
        );
    }

    #[test]
    fn a_2xx_that_stores_nothing_or_a_redirect_holds_and_says_why() {
        let judgement = judge(Reply::Answer(answer(204, None)));
        assert_eq!(
            (judgement.class, judgement.outcome),
            (Class::Hold, Outcome::Hold)
        );
        assert!(
            judgement
                .error
                .starts_with("HTTP 204: receiver.url does not point at an episode receiver"),
            "{}",
            judgement.error
        );
        let redirect = Answer {
            location: Some("https://elsewhere/x".into()),
            ..answer(303, None)
        };
        let judgement = judge(Reply::Answer(redirect));
        assert_eq!(judgement.class, Class::Hold);
        assert!(
            judgement
                .error
                .contains("HTTP 303 redirect to https://elsewhere/x (redirects are not followed)")
                && judgement.error.contains("receiver.url"),
            "{}",
            judgement.error
        );
        // A stored answer carries no error text.
        assert_eq!(judge(Reply::Answer(answer(201, None))).error, "");
    }

    const NOW: i64 = 1_000_000_000_000;
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn timing() -> RetryConfig {
        RetryConfig {
            initial_backoff: episode_common::Dur(S(5)),
            max_backoff: episode_common::Dur(S(600)),
        }
    }

    fn tick(unit: f64) -> Tick {
        Tick { now_ms: NOW, unit }
    }

    fn id(name: &str) -> EpisodeId {
        EpisodeId::new(name).unwrap()
    }

    fn kind(effect: Effect) -> &'static str {
        match effect {
            Effect::Retire => "retire",
            Effect::KeepInOutbox => "keep",
            Effect::Repack => "repack",
            Effect::Quarantine => "quarantine",
            Effect::Hold { .. } => "hold",
            Effect::BackOff { .. } => "backoff",
        }
    }

    fn decide(state: &mut State, counts: &mut PassCounts, reply: Reply, unit: f64) -> Decision {
        let judgement = judge(reply);
        on_answer(state, counts, &id("E1"), &judgement, tick(unit), &timing())
    }

    fn status(status: u16) -> Reply {
        Reply::Answer(answer(status, None))
    }

    fn problem(slug: Slug) -> Reply {
        Reply::Answer(answer(slug.status(), Some(slug)))
    }

    fn digests() -> Digests {
        Digests {
            sha256: Sha256::of(b"archive"),
            tar_sha256: Sha256::of(b"tar"),
            bytes: 10,
        }
    }

    #[test]
    fn every_row_of_the_classification_table_has_its_effect() {
        let connection = || Reply::Failure(Failure::Connection("refused".into()));
        let stalled = || Reply::Failure(Failure::Stalled("no bytes for 60s".into()));
        // (reply, repacks so far, effect): protocol.md, "How the shipper reads a response".
        let table: Vec<(Reply, u32, &str)> = vec![
            (status(201), 0, "retire"),
            (status(200), 0, "retire"),
            (Reply::HeadMatch(answer(200, None)), 0, "retire"),
            (problem(Slug::Conflict), 0, "keep"),
            (Reply::HeadConflict(answer(200, None)), 0, "keep"),
            (problem(Slug::DigestMismatch), 0, "repack"),
            (problem(Slug::DigestMismatch), 1, "repack"),
            (problem(Slug::DigestMismatch), 2, "quarantine"),
            (problem(Slug::LengthMismatch), 0, "repack"),
            (problem(Slug::LengthMismatch), 2, "quarantine"),
            (problem(Slug::MissingCodeCommit), 0, "quarantine"),
            (problem(Slug::InvalidId), 0, "quarantine"),
            (status(400), 0, "quarantine"),
            (problem(Slug::LengthRequired), 0, "quarantine"),
            (problem(Slug::OutOfWindow), 0, "quarantine"),
            (problem(Slug::TooLarge), 0, "quarantine"),
            (problem(Slug::UnsupportedMediaType), 0, "quarantine"),
            (status(422), 0, "quarantine"),
            (status(418), 0, "quarantine"),
            (problem(Slug::Unauthorized), 0, "hold"),
            (problem(Slug::ForbiddenIdentity), 0, "hold"),
            (status(404), 0, "hold"),
            (status(405), 0, "hold"),
            (status(501), 0, "hold"),
            (status(301), 0, "hold"),
            (status(307), 0, "hold"),
            (status(204), 0, "hold"),
            (problem(Slug::BodyTimeout), 0, "backoff"),
            (problem(Slug::TooManyUploads), 0, "backoff"),
            (problem(Slug::Internal), 0, "backoff"),
            (status(502), 0, "backoff"),
            (status(503), 0, "backoff"),
            (status(504), 0, "backoff"),
            (problem(Slug::InsufficientStorage), 0, "backoff"),
            (connection(), 0, "backoff"),
            (stalled(), 0, "backoff"),
        ];
        for (reply, repacks, want) in table {
            let what = format!("{reply:?} after {repacks} repacks");
            let mut state = State::default();
            state.episodes.insert(
                "E1".into(),
                EpisodeState {
                    repacks,
                    ..EpisodeState::default()
                },
            );
            let decision = decide(&mut state, &mut PassCounts::default(), reply, 0.0);
            assert_eq!(kind(decision.effect), want, "{what}");
            assert_eq!(decision.attempt, 1, "{what}");
            assert_eq!(
                decision.effect.stops_pass(),
                want == "hold" || want == "backoff",
                "{what}"
            );
            let episode = &state.episodes["E1"];
            match want {
                "keep" => {
                    let conflict = episode.conflict.as_ref().unwrap();
                    assert_eq!(conflict.recheck_ms, NOW + 3_600_000, "{what}");
                    assert_eq!(conflict.since_unix, NOW / 1000, "{what}");
                }
                "repack" => assert_eq!(episode.repacks, repacks + 1, "{what}"),
                "hold" => assert!(state.hold.is_some() && state.backoff.is_none(), "{what}"),
                "backoff" => assert!(state.backoff.is_some() && state.hold.is_none(), "{what}"),
                _ => assert!(state.hold.is_none() && state.backoff.is_none(), "{what}"),
            }
        }
    }

    #[test]
    fn a_conflict_keeps_its_first_date_and_the_stored_digest() {
        let mut state = State::default();
        let stored = Problem::new(Slug::Conflict, "differs").with("stored_sha256", "ab12");
        let reply = Reply::Answer(Answer {
            problem: Some(stored),
            ..answer(409, None)
        });
        decide(&mut state, &mut PassCounts::default(), reply, 0.0);
        let first = state.episodes["E1"].conflict.clone().unwrap();
        assert_eq!(first.stored_sha256.as_deref(), Some("ab12"));
        let later = Tick {
            now_ms: NOW + 3_600_000,
            unit: 0.0,
        };
        let judgement = judge(problem(Slug::Conflict));
        let decision = on_answer(
            &mut state,
            &mut PassCounts::default(),
            &id("E1"),
            &judgement,
            later,
            &timing(),
        );
        assert_eq!(decision.attempt, 2);
        let again = state.episodes["E1"].conflict.clone().unwrap();
        assert_eq!(again.since_unix, first.since_unix, "since is kept");
        assert_eq!(again.recheck_ms, NOW + 2 * 3_600_000);
    }

    #[test]
    fn a_hold_starts_once_counts_once_per_pass_and_grows_between_passes() {
        let mut state = State::default();
        let mut counts = PassCounts::default();
        // First hold answer: the hold starts, one failure, re-checked after the backoff.
        let first = decide(&mut state, &mut counts, problem(Slug::Unauthorized), 0.0);
        assert_eq!(
            first.effect,
            Effect::Hold {
                delay: S(5),
                started: true
            }
        );
        let hold = state.hold.clone().unwrap();
        assert_eq!((hold.failures, hold.status_code), (1, 401));
        assert_eq!(hold.recheck_ms, NOW + 5_000);
        assert_eq!(hold.since_unix, NOW / 1000);
        assert_eq!(hold.problem_type.as_deref(), Some("unauthorized"));
        // A second answer of the same pass (in flight together) counts once.
        let second = decide(&mut state, &mut counts, status(403), 1.0);
        assert_eq!(
            second.effect,
            Effect::Hold {
                delay: S(10),
                started: false
            }
        );
        assert_eq!(state.hold.as_ref().unwrap().failures, 1);
        // The next pass's probe, held again: two failures, the cap doubles.
        let third = decide(&mut state, &mut PassCounts::default(), status(404), 1.0);
        assert_eq!(
            third.effect,
            Effect::Hold {
                delay: S(20),
                started: false
            }
        );
        let hold = state.hold.clone().unwrap();
        assert_eq!((hold.failures, hold.status_code), (2, 404));
        assert_eq!(hold.since_unix, NOW / 1000, "since is kept");
        // A hold answer's Retry-After is honoured too.
        let reply = Reply::Answer(Answer {
            retry_after: Some(S(120)),
            ..answer(401, Some(Slug::Unauthorized))
        });
        let fourth = decide(&mut state, &mut PassCounts::default(), reply, 0.0);
        assert_eq!(
            fourth.effect,
            Effect::Hold {
                delay: S(120),
                started: false
            }
        );
    }

    #[test]
    fn only_an_answer_about_the_episode_ends_a_hold_and_a_transient_pushes_its_recheck() {
        let held = || State {
            hold: Some(Hold {
                since_unix: 1,
                status_code: 401,
                problem_type: None,
                error: "401".into(),
                failures: 3,
                recheck_ms: NOW + 1_000,
            }),
            ..State::default()
        };
        let table: Vec<(Reply, bool)> = vec![
            (status(201), true),
            (status(200), true),
            (problem(Slug::Conflict), true),
            (problem(Slug::DigestMismatch), true),
            (problem(Slug::MissingCodeCommit), true),
            (status(401), false),
            (status(503), false),
            (Reply::Failure(Failure::Connection("refused".into())), false),
        ];
        for (reply, ends) in table {
            let what = format!("{reply:?}");
            let mut state = held();
            let decision = decide(&mut state, &mut PassCounts::default(), reply, 0.0);
            assert_eq!(decision.hold_ended, ends, "{what}");
            assert_eq!(state.hold.is_none(), ends, "{what}");
        }
        // The transient kept the hold and pushed its re-check past the backoff.
        let mut state = held();
        let decision = decide(&mut state, &mut PassCounts::default(), status(503), 1.0);
        assert_eq!(decision.effect, Effect::BackOff { delay: S(10) });
        assert_eq!(state.hold.as_ref().unwrap().recheck_ms, NOW + 10_000);
        assert_eq!(state.hold.as_ref().unwrap().failures, 3);
    }

    #[test]
    fn a_backoff_counts_once_per_pass_grows_between_passes_and_any_other_answer_clears_it() {
        let mut state = State::default();
        let mut counts = PassCounts::default();
        let first = decide(&mut state, &mut counts, status(503), 1.0);
        assert_eq!(first.effect, Effect::BackOff { delay: S(10) });
        let backoff = state.backoff.clone().unwrap();
        assert_eq!((backoff.failures, backoff.until_ms), (1, NOW + 10_000));
        assert_eq!(
            (backoff.last_status, backoff.last_error.as_str()),
            (503, "HTTP 503")
        );
        let episode = &state.episodes["E1"];
        assert_eq!(episode.next_attempt_ms, Some(NOW + 10_000));
        assert!(!episode.head_first, "an HTTP answer was read");
        // Answers in flight together count once.
        decide(&mut state, &mut counts, status(502), 1.0);
        assert_eq!(state.backoff.as_ref().unwrap().failures, 1);
        // The next pass's failure: two, with a connection failure asking HEAD first next.
        let refused = Reply::Failure(Failure::Connection("refused".into()));
        let third = decide(&mut state, &mut PassCounts::default(), refused, 1.0);
        assert_eq!(third.effect, Effect::BackOff { delay: S(20) });
        assert_eq!(state.backoff.as_ref().unwrap().failures, 2);
        assert_eq!(state.backoff.as_ref().unwrap().last_status, 0);
        assert!(state.episodes["E1"].head_first, "the answer may be lost");
        assert_eq!(state.episodes["E1"].attempts, 3);
        // Retry-After is honoured, up to an hour.
        for (retry_after, want) in [(S(120), S(120)), (S(86_400), S(3600))] {
            let reply = Reply::Answer(Answer {
                retry_after: Some(retry_after),
                ..answer(429, Some(Slug::TooManyUploads))
            });
            let decision = decide(&mut state, &mut PassCounts::default(), reply, 0.0);
            assert_eq!(decision.effect, Effect::BackOff { delay: want });
        }
        // Any answer that is not transient clears the backoff.
        decide(
            &mut state,
            &mut PassCounts::default(),
            problem(Slug::Conflict),
            0.0,
        );
        assert!(state.backoff.is_none());
    }

    #[test]
    fn a_retired_or_quarantined_episode_leaves_no_record() {
        let mut state = State::default();
        decide(&mut state, &mut PassCounts::default(), status(503), 0.0);
        retired(&mut state, &id("E1"), NOW);
        assert!(state.episodes.is_empty());
        assert_eq!(state.last_success_unix, Some(NOW / 1000));
        decide(&mut state, &mut PassCounts::default(), status(400), 0.0);
        quarantined(&mut state, &id("E1"));
        assert!(state.episodes.is_empty());
    }

    #[test]
    fn a_quarantine_reason_says_who_erred_and_what_the_shipper_did() {
        let judgement = judge(problem(Slug::MissingCodeCommit));
        let reason = quarantine_reason(
            &id("E1"),
            &judgement,
            Some("meta.json too large".into()),
            2,
            &digests(),
            NOW,
        );
        assert_eq!(reason.error, "client error 400; meta.json too large");
        assert_eq!(reason.problem_type.as_deref(), Some("missing-code-commit"));
        assert_eq!(
            (reason.attempts, reason.quarantined_at_unix),
            (2, NOW / 1000)
        );
        assert_eq!(reason.sha256, Some(Sha256::of(b"archive").to_hex()));
        assert_eq!(reason.episode_id.as_deref(), Some("E1"));
        assert_eq!(reason.quarantined_at_wall, "2001-09-09T01:46:40Z");
        let server = quarantine_reason(&id("E1"), &judge(status(599)), None, 1, &digests(), NOW);
        assert_eq!(server.error, "server error 599");
    }

    #[test]
    fn a_pass_sends_only_when_no_hold_backoff_or_crash_guard_is_pending() {
        let ready = || vec![id("E1"), id("E2"), id("E3")];
        let hold = |recheck_ms| Hold {
            since_unix: 1,
            status_code: 401,
            problem_type: None,
            error: "denied".into(),
            failures: 1,
            recheck_ms,
        };
        let backoff = |until_ms| Backoff {
            failures: 1,
            until_ms,
            last_status: 503,
            last_error: "HTTP 503".into(),
        };
        let marker = |resume_ms| PassUnderWay {
            started_ms: 0,
            unfinished: 2,
            resume_ms,
        };
        let open = Gate::Open(ready());
        let table = [
            (State::default(), open.clone()),
            (
                State {
                    hold: Some(hold(NOW + 1)),
                    backoff: Some(backoff(NOW + 1)),
                    ..State::default()
                },
                Gate::OnHold {
                    error: "denied".into(),
                },
            ),
            (
                State {
                    hold: Some(hold(NOW)),
                    ..State::default()
                },
                open.clone(),
            ),
            (
                State {
                    backoff: Some(backoff(NOW + 1)),
                    pass_under_way: Some(marker(NOW + 1)),
                    ..State::default()
                },
                Gate::BackingOff {
                    until_ms: NOW + 1,
                    last_error: "HTTP 503".into(),
                },
            ),
            (
                State {
                    backoff: Some(backoff(NOW)),
                    ..State::default()
                },
                open.clone(),
            ),
            (
                State {
                    pass_under_way: Some(marker(NOW + 1)),
                    ..State::default()
                },
                Gate::CrashLoopGuard {
                    unfinished: 2,
                    resume_ms: NOW + 1,
                },
            ),
            (
                State {
                    pass_under_way: Some(marker(NOW)),
                    ..State::default()
                },
                open,
            ),
        ];
        for (state, want) in table {
            assert_eq!(gate(&state, ready(), NOW), want, "{state:?}");
        }
        assert_eq!(
            gate(
                &State {
                    hold: Some(hold(NOW + 1)),
                    ..State::default()
                },
                ready(),
                NOW
            )
            .stopped_by()
            .as_deref(),
            Some("on hold: denied")
        );
    }

    #[test]
    fn the_queue_skips_episodes_waiting_for_their_retry_or_conflict_recheck() {
        let ready = vec![id("E1"), id("E2"), id("E3"), id("E4"), id("E5")];
        let conflict = |recheck_ms| Conflict {
            since_unix: 1,
            stored_sha256: None,
            recheck_ms,
        };
        let mut state = State::default();
        let records = [
            ("E1", Some(NOW + 1), None),
            ("E2", Some(NOW), None),
            ("E3", None, Some(conflict(NOW + 1))),
            ("E4", None, Some(conflict(NOW))),
        ];
        for (name, next_attempt_ms, conflict) in records {
            state.episodes.insert(
                name.into(),
                EpisodeState {
                    next_attempt_ms,
                    conflict,
                    ..EpisodeState::default()
                },
            );
        }
        assert_eq!(
            gate(&state, ready, NOW),
            Gate::Open(vec![id("E2"), id("E4"), id("E5")]),
            "oldest first, due ones only"
        );
    }

    #[test]
    fn passes_that_never_end_make_the_next_start_wait_longer_each_time() {
        let mut state = State::default();
        // (unit, unfinished after the mark, resume after): the backoff of that count.
        let table = [
            (1.0, 1, 10_000),
            (1.0, 2, 20_000),
            (0.0, 3, 5_000),
            (1.0, 4, 80_000),
        ];
        for (unit, unfinished, resume_after) in table {
            start_pass(&mut state, tick(unit), &timing());
            let marker = state.pass_under_way.clone().unwrap();
            assert_eq!(marker.unfinished, unfinished);
            assert_eq!(marker.started_ms, NOW);
            assert_eq!(marker.resume_ms, NOW + resume_after, "{unfinished}");
        }
    }

    #[test]
    fn pack_failures_wait_back_off_the_episode_or_the_host() {
        let timing = timing();
        let mut state = State::default();
        let mut counts = PassCounts::default();
        let episode_id = id("E1");
        let fail = |state: &mut State, counts: &mut PassCounts, failure| {
            on_pack_failure(
                state,
                counts,
                &episode_id,
                failure,
                "boom",
                tick(1.0),
                &timing,
            )
        };
        // Not stable yet: tried again after about initial_backoff; no failure counted.
        let effect = fail(&mut state, &mut counts, PackFailure::NotStable);
        assert_eq!(effect, PackEffect::TryLater { delay: S(10) });
        let episode = &state.episodes["E1"];
        assert_eq!(episode.attempts, 0);
        assert_eq!(episode.next_attempt_ms, Some(NOW + 10_000));
        assert_eq!(episode.last_error.as_deref(), Some("not stable yet: boom"));
        assert!(state.backoff.is_none());
        // The episode's own failure: it backs off alone, longer each time.
        for (attempt, delay) in [(1, S(10)), (2, S(20)), (3, S(40))] {
            let effect = fail(&mut state, &mut counts, PackFailure::Episode);
            assert_eq!(effect, PackEffect::EpisodeBacksOff { delay, attempt });
            assert_eq!(
                state.episodes["E1"].last_error.as_deref(),
                Some("packing: boom")
            );
        }
        assert!(state.backoff.is_none(), "the others still ship");
        // The host's failure: all shipping backs off, counted once per pass.
        for _ in 0..2 {
            let effect = fail(&mut state, &mut counts, PackFailure::Host);
            assert_eq!(
                effect,
                PackEffect::HostBacksOff {
                    delay: S(10),
                    error: "packing: boom".into()
                }
            );
        }
        let backoff = state.backoff.clone().unwrap();
        assert_eq!((backoff.failures, backoff.last_status), (1, 0));
        assert_eq!(backoff.until_ms, NOW + 10_000);
        assert_eq!(state.episodes["E1"].next_attempt_ms, Some(NOW + 10_000));
    }

    #[test]
    fn head_goes_first_after_a_lost_answer_a_conflict_or_for_a_large_archive() {
        let mut state = State::default();
        let (e1, e2, e3) = (id("E1"), id("E2"), id("E3"));
        state.episodes.insert(
            "E1".into(),
            EpisodeState {
                head_first: true,
                ..EpisodeState::default()
            },
        );
        state.episodes.insert(
            "E2".into(),
            EpisodeState {
                conflict: Some(Conflict {
                    since_unix: 1,
                    stored_sha256: None,
                    recheck_ms: 0,
                }),
                ..EpisodeState::default()
            },
        );
        let table = [
            (&e1, 10, Approach::HeadFirst),
            (&e2, 10, Approach::HeadFirst),
            (&e3, 10, Approach::Put),
            (&e3, HEAD_FIRST_BYTES, Approach::Put),
            (&e3, HEAD_FIRST_BYTES + 1, Approach::HeadFirst),
        ];
        for (episode_id, bytes, want) in table {
            assert_eq!(
                approach(&state, episode_id, bytes),
                want,
                "{episode_id} {bytes}"
            );
        }
    }

    #[test]
    fn a_head_answer_settles_the_episode_or_lets_the_put_go_ahead() {
        let stored = |repr, tar| Answer {
            repr_digest: repr,
            tar_digest: tar,
            ..answer(200, None)
        };
        let ours = digests();
        let other = Some(Sha256::of(b"other"));
        let table = [
            (stored(Some(ours.sha256), None), Some("match")),
            (stored(other, Some(ours.tar_sha256)), Some("match")),
            (stored(other, other), Some("conflict")),
            (stored(None, None), None),
            (answer(404, None), None),
            (answer(401, Some(Slug::Unauthorized)), Some("answer")),
            (answer(503, None), Some("answer")),
            (answer(400, Some(Slug::InvalidId)), None),
        ];
        for (head, want) in table {
            let what = format!("{head:?}");
            let got = after_head(head, &ours).map(|reply| match reply {
                Reply::HeadMatch(_) => "match",
                Reply::HeadConflict(_) => "conflict",
                Reply::Answer(_) => "answer",
                Reply::Failure(_) => "failure",
            });
            assert_eq!(got, want, "{what}");
        }
    }
}
