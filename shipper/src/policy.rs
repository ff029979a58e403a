//! Pure rules of the shipper: class → action, pack failure → scope, backoff with
//! full jitter, `Retry-After`. No clock, no randomness, no I/O; table-tested here.

use std::time::Duration;

use episode_common::Class;

/// How many digest/length mismatches an episode may have before it is quarantined.
pub const MAX_REPACKS: u32 = 3;
/// How often a conflicting episode is checked again.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(3600);
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What to do after an answer (or a failure to get one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Move the episode to shipped/.
    Retire,
    /// Leave the episode; check it again after `CONFLICT_RECHECK`.
    LeaveConflict,
    /// Drop the outbox archive and pack again now.
    Repack,
    /// Move the episode to quarantine/ with the reason.
    Quarantine,
    /// Pause all shipping and re-check after a backoff.
    Hold,
    /// Back off (all shipping) and retry the episode later; end the pass.
    Backoff,
}

/// The action for a class, given how many times this episode was already repacked.
pub fn action(class: Class, repacks_so_far: u32) -> Action {
    match class {
        Class::Shipped => Action::Retire,
        Class::Conflict => Action::LeaveConflict,
        Class::Repack if repacks_so_far + 1 >= MAX_REPACKS => Action::Quarantine,
        Class::Repack => Action::Repack,
        Class::Fatal => Action::Quarantine,
        Class::Hold => Action::Hold,
        Class::Transient => Action::Backoff,
    }
}

/// Whether an answer given while shipping is on hold ends the hold: only an answer
/// that shows the receiver took our request as valid (stored, conflict, damaged
/// bytes, a rejection of the episode itself). A transient failure (connection
/// refused, 503) says nothing about our credentials: the hold stays and its
/// re-check is pushed back, so a flapping receiver does not flap the hold.
pub fn ends_hold(class: Class) -> bool {
    match class {
        Class::Shipped | Class::Conflict | Class::Repack | Class::Fatal => true,
        Class::Hold | Class::Transient => false,
    }
}

/// What a failure to pack an episode calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackFailure {
    /// A file changed while it was packed: the episode is not stable yet; try it
    /// again after `initial_backoff`, counted as no failure.
    NotStable,
    /// The host cannot pack anything now (disk full, quota, read-only file system,
    /// out of memory): a transient failure that backs off all shipping and ends the
    /// pass, like a 503.
    Host,
    /// Something about this episode (a file unreadable or gone): a transient failure
    /// of this episode alone, which backs off exponentially with its attempts while
    /// the others still ship.
    Episode,
}

/// Classifies a packing error (`unstable`: a file changed while packed).
pub fn pack_failure(unstable: bool, kind: std::io::ErrorKind) -> PackFailure {
    use std::io::ErrorKind as K;
    if unstable {
        return PackFailure::NotStable;
    }
    match kind {
        K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::OutOfMemory => {
            PackFailure::Host
        }
        _ => PackFailure::Episode,
    }
}

/// Whether the retention cleanup runs in a pass at `now_unix`: every pass when
/// `interval_secs` is 0, else once `interval_secs` passed since the last one.
pub fn cleanup_due(last_cleanup_unix: Option<i64>, interval_secs: i64, now_unix: i64) -> bool {
    interval_secs == 0 || last_cleanup_unix.is_none_or(|last| now_unix - last >= interval_secs)
}

/// The delay before retry number `failures` (1 for the first retry): uniform
/// ("full jitter") between `initial` and the exponential cap
/// `min(max, initial × 2^failures)`, so the first retry waits between `initial` and
/// `2 × initial` and a fleet that failed together does not retry together.
/// The floor is `initial`, not zero, on purpose: a restart or crash loop that
/// re-rolls the dice can never retry sooner than `initial_backoff`.
/// `unit` is uniform in [0, 1).
pub fn backoff(failures: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let exponent = failures.clamp(1, 31);
    let cap = initial
        .saturating_mul(1u32 << exponent)
        .min(max)
        .max(initial);
    let spread = cap - initial;
    initial + spread.mul_f64(unit.clamp(0.0, 1.0))
}

/// The wait after a transient answer: the backoff, or the server's `Retry-After`
/// (capped at an hour) when that is longer.
pub fn retry_delay(backoff: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(ra) => backoff.max(ra.min(MAX_RETRY_AFTER)),
        None => backoff,
    }
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date in any
/// of its three forms (IMF-fixdate, obsolete RFC 850, asctime) relative to `now`.
/// A date in the past is no wait.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_classes() {
        let table = [
            (Class::Shipped, 0, Action::Retire),
            (Class::Conflict, 0, Action::LeaveConflict),
            (Class::Repack, 0, Action::Repack),
            (Class::Repack, 1, Action::Repack),
            (Class::Repack, 2, Action::Quarantine),
            (Class::Fatal, 0, Action::Quarantine),
            (Class::Hold, 0, Action::Hold),
            (Class::Transient, 0, Action::Backoff),
            (Class::Transient, 99, Action::Backoff),
        ];
        for (class, repacks, want) in table {
            assert_eq!(
                action(class, repacks),
                want,
                "{class:?} after {repacks} repacks"
            );
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_and_never_undercuts_the_initial() {
        let (i, m) = (Duration::from_secs(5), Duration::from_secs(600));
        let s = Duration::from_secs;
        // (failures, unit, delay): the cap doubles from 2 × initial; the floor stays.
        let table = [
            (0, 0.0, s(5)),
            (0, 1.0, s(10)),
            (1, 0.0, s(5)),
            (1, 0.5, Duration::from_millis(7500)),
            (1, 1.0, s(10)),
            (2, 0.0, s(5)),
            (2, 1.0, s(20)),
            (3, 0.5, Duration::from_millis(22_500)),
            (3, 1.0, s(40)),
            (6, 1.0, s(320)),
            (7, 1.0, s(600)),
            (7, 0.0, s(5)),
        ];
        for (failures, unit, want) in table {
            assert_eq!(backoff(failures, i, m, unit), want, "{failures} {unit}");
        }
        // The first retry is spread, not a fixed `initial`: a fleet does not retry
        // in lockstep.
        assert_ne!(backoff(1, i, m, 0.1), backoff(1, i, m, 0.9));
        assert_eq!(
            backoff(8, i, m, 1.0),
            Duration::from_secs(600),
            "capped at max"
        );
        assert_eq!(
            backoff(3, i, Duration::from_secs(1), 1.0),
            i,
            "a max below initial is initial"
        );
        assert_eq!(
            backoff(1000, i, m, 1.0),
            Duration::from_secs(600),
            "no overflow"
        );
        for failures in 1..40 {
            for unit in [0.0, 0.3, 0.999] {
                let d = backoff(failures, i, m, unit);
                assert!(d >= i && d <= m, "{failures} {unit} {d:?}");
            }
        }
    }

    #[test]
    fn pack_failures_are_transient_by_scope() {
        use std::io::ErrorKind as K;
        let table = [
            (true, K::UnexpectedEof, PackFailure::NotStable),
            (true, K::Other, PackFailure::NotStable),
            (false, K::StorageFull, PackFailure::Host),
            (false, K::QuotaExceeded, PackFailure::Host),
            (false, K::ReadOnlyFilesystem, PackFailure::Host),
            (false, K::OutOfMemory, PackFailure::Host),
            (false, K::NotFound, PackFailure::Episode),
            (false, K::PermissionDenied, PackFailure::Episode),
            (false, K::Other, PackFailure::Episode),
        ];
        for (unstable, kind, want) in table {
            assert_eq!(pack_failure(unstable, kind), want, "{unstable} {kind:?}");
        }
    }

    #[test]
    fn cleanup_runs_every_pass_at_interval_zero_else_once_per_interval() {
        // (last cleanup, interval, now, due)
        let table = [
            (None, 0, 100, true),
            (Some(100), 0, 100, true),
            (None, 3600, 100, true),
            (Some(100), 3600, 3699, false),
            (Some(100), 3600, 3700, true),
            (Some(100), 3600, 50, false),
        ];
        for (last, interval, now, due) in table {
            assert_eq!(
                cleanup_due(last, interval, now),
                due,
                "{last:?} {interval} {now}"
            );
        }
    }

    #[test]
    fn only_an_answer_about_the_episode_ends_a_hold() {
        let table = [
            (Class::Shipped, true),
            (Class::Conflict, true),
            (Class::Repack, true),
            (Class::Fatal, true),
            (Class::Hold, false),
            (Class::Transient, false),
        ];
        for (class, ends) in table {
            assert_eq!(ends_hold(class), ends, "{class:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour() {
        let b = Duration::from_secs(5);
        assert_eq!(retry_delay(b, None), b);
        assert_eq!(retry_delay(b, Some(Duration::from_secs(1))), b);
        assert_eq!(
            retry_delay(b, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_delay(b, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn parses_retry_after_seconds_and_all_three_date_forms() {
        use std::time::{SystemTime, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(784_111_657); // Sun, 06 Nov 1994 08:47:37 GMT
        let s = Duration::from_secs;
        let table = [
            ("120", Some(s(120))),
            (" 0 ", Some(s(0))),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(s(120))),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(s(120))),
            ("Sun Nov  6 08:49:37 1994", Some(s(120))),
            ("Sun, 06 Nov 1994 08:40:00 GMT", Some(Duration::ZERO)),
            ("soon", None),
            ("-5", None),
            ("1.5", None),
            ("", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
        // Capped when it is acted on.
        let far = parse_retry_after("99999999999999999999999", SystemTime::now());
        assert_eq!(retry_delay(s(5), far), MAX_RETRY_AFTER);
    }
}
