//! The readiness verdict (can an upload be stored now; if not, why, naming `index`
//! or `store`) and the watchdog rule. Pure: callers gather the readings
//! (`AppState::readiness`); `/v1/health` and `/readyz` both answer from `verdict`.

use std::time::Duration;

/// A batch on the committer that takes longer than this means the committer is
/// stuck (a hung disk): health is 503 and the watchdog is no longer pinged.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// A failed write of the committer keeps health at 503 this long, unless a later
/// batch succeeds first.
pub const ERROR_HOLDS_FOR: Duration = Duration::from_secs(30);

/// The free space the index's filesystem needs for one more row (a block: a row
/// is a few hundred bytes, and an append may need a fresh block).
pub const ROW_NEEDS: u64 = 4096;

/// Which part of the receiver a failure is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Index,
    Store,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Index => "index",
            Part::Store => "store",
        }
    }
}

/// A failed write the committer saw, and how long ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    pub part: Part,
    pub error: String,
    pub age: Duration,
}

/// Everything the verdict looks at, read by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readings {
    pub draining: bool,
    pub committer_alive: bool,
    /// How long the committer has been on its current batch (None: idle).
    pub committer_busy_for: Option<Duration>,
    pub last_failure: Option<WriteFailure>,
    /// Free bytes on the store's filesystem, or why they could not be read.
    pub store_free: Result<u64, String>,
    pub free_space_reserve: u64,
    /// Free bytes on the index's filesystem, or why they could not be read.
    pub index_free: Result<u64, String>,
    /// Why `store_root`/`incoming_root` cannot be written, if they cannot.
    pub store_unwritable: Option<String>,
}

/// Why uploads cannot be stored right now (`Err(reason)`), or `Ok` when they can.
/// The reason starts with `index:` or `store:` when one of them is at fault.
pub fn verdict(r: &Readings) -> Result<(), String> {
    if r.draining {
        return Err("draining: shutting down".to_owned());
    }
    if !r.committer_alive {
        return Err(
            "index: the index writer has stopped: uploads cannot be stored; restart the receiver"
                .to_owned(),
        );
    }
    if let Some(busy) = r.committer_busy_for.filter(|b| *b >= STUCK_AFTER) {
        return Err(format!(
            "index: the index writer has been on one batch for {}s: the disk is not answering",
            busy.as_secs()
        ));
    }
    if let Some(f) = r.last_failure.as_ref().filter(|f| f.age < ERROR_HOLDS_FOR) {
        return Err(format!(
            "{}: the last write failed {}s ago: {}",
            f.part.as_str(),
            f.age.as_secs(),
            f.error
        ));
    }
    match &r.index_free {
        Ok(free) if *free < ROW_NEEDS => {
            return Err(format!(
                "index: {free} bytes free on the index's filesystem, less than a row needs: uploads get 507"
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(format!("index: cannot read its free space: {e}")),
    }
    match &r.store_free {
        Ok(free) if *free < r.free_space_reserve => {
            return Err(format!(
                "store: {} free, below free_space_reserve {}: uploads get 507",
                episode_common::ByteSize(*free),
                episode_common::ByteSize(r.free_space_reserve)
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(format!("store: cannot read its free space: {e}")),
    }
    if let Some(why) = &r.store_unwritable {
        return Err(format!("store: {why}"));
    }
    Ok(())
}

/// Whether to send WATCHDOG=1 (systemd's `period`, pinged every half period): only
/// while the committer lives and has not been on one batch for `STUCK_AFTER` or
/// half the period, whichever is shorter (a hung disk must get the receiver
/// restarted, not kept alive).
pub fn should_ping(
    committer_alive: bool,
    committer_busy_for: Option<Duration>,
    period: Duration,
) -> bool {
    let stuck_after = STUCK_AFTER.min(period / 2);
    committer_alive && committer_busy_for.is_none_or(|b| b < stuck_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Readings {
        Readings {
            draining: false,
            committer_alive: true,
            committer_busy_for: None,
            last_failure: None,
            store_free: Ok(10 << 30),
            free_space_reserve: 1 << 30,
            index_free: Ok(10 << 30),
            store_unwritable: None,
        }
    }

    #[test]
    fn each_cause_names_the_part_at_fault() {
        assert_eq!(verdict(&ready()), Ok(()));
        let failure = |part, age| {
            Some(WriteFailure {
                part,
                error: "No space left on device (os error 28)".into(),
                age,
            })
        };
        let cases: Vec<(Readings, &str)> = vec![
            (
                Readings {
                    draining: true,
                    ..ready()
                },
                "draining",
            ),
            (
                Readings {
                    committer_alive: false,
                    ..ready()
                },
                "index:",
            ),
            (
                Readings {
                    committer_busy_for: Some(STUCK_AFTER),
                    ..ready()
                },
                "index:",
            ),
            (
                Readings {
                    last_failure: failure(Part::Index, Duration::ZERO),
                    ..ready()
                },
                "index:",
            ),
            (
                Readings {
                    last_failure: failure(Part::Store, Duration::from_secs(1)),
                    ..ready()
                },
                "store:",
            ),
            (
                Readings {
                    index_free: Ok(ROW_NEEDS - 1),
                    ..ready()
                },
                "index:",
            ),
            (
                Readings {
                    index_free: Err("EIO".into()),
                    ..ready()
                },
                "index:",
            ),
            (
                Readings {
                    store_free: Ok((1 << 30) - 1),
                    ..ready()
                },
                "store:",
            ),
            (
                Readings {
                    store_unwritable: Some("read-only".into()),
                    ..ready()
                },
                "store:",
            ),
        ];
        for (readings, prefix) in cases {
            let reason = verdict(&readings).expect_err(prefix);
            assert!(reason.starts_with(prefix), "{reason} for {readings:?}");
        }
    }

    #[test]
    fn a_busy_committer_or_an_old_failure_is_no_reason() {
        let busy = Readings {
            committer_busy_for: Some(STUCK_AFTER - Duration::from_millis(1)),
            ..ready()
        };
        assert_eq!(verdict(&busy), Ok(()));
        let old = Readings {
            last_failure: Some(WriteFailure {
                part: Part::Index,
                error: "x".into(),
                age: ERROR_HOLDS_FOR,
            }),
            ..ready()
        };
        assert_eq!(verdict(&old), Ok(()));
    }

    #[test]
    fn the_watchdog_is_fed_only_by_a_live_committer_that_is_not_stuck() {
        let minute = Duration::from_secs(60);
        assert!(should_ping(true, None, minute));
        assert!(should_ping(true, Some(Duration::from_secs(1)), minute));
        assert!(!should_ping(true, Some(STUCK_AFTER), minute));
        assert!(!should_ping(false, None, minute));
        // A short watchdog period makes "stuck" come sooner.
        let two = Duration::from_secs(2);
        assert!(should_ping(true, Some(Duration::from_millis(900)), two));
        assert!(!should_ping(true, Some(Duration::from_secs(1)), two));
    }
}
