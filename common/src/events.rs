//! The log vocabulary both daemons write and the doctor reads (shipper.md, "Log
//! schema"): every event name with its journal `MESSAGE_ID` (fixed forever), the
//! `ship_result` outcomes, and the field names. Declared once, here; nothing else spells them.

use std::fmt;

macro_rules! events {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $id:literal;)+) => {
        /// One kind of log line. The name goes in the field `event`, the id in the
        /// journal's `MESSAGE_ID`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Event {
            $($(#[$doc])* $variant,)+
        }

        impl Event {
            /// Every event, in declaration order.
            pub const ALL: &'static [Event] = &[$(Event::$variant,)+];

            /// The name in the `event` field.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Event::$variant => $name,)+
                }
            }

            /// The journal's `MESSAGE_ID`: 128 bits as 32 lowercase hex digits.
            pub const fn message_id(self) -> &'static str {
                match self {
                    $(Event::$variant => $id,)+
                }
            }
        }
    };
}

events! {
    // Both programs.
    /// Started and serving (receiver) or shipping (shipper).
    Ready => "ready", "073da10a81964d359b3195df74f0c463";
    /// A stop signal arrived; draining.
    Stopping => "stopping", "713b20dcc54442699a6d6fe1e1a64e94";
    /// Stopped cleanly.
    Stopped => "stopped", "cebc56caf3f3411aa80a65c7c85e5ddc";
    /// The configuration file was read again (SIGHUP) and applied.
    ConfigReloaded => "config_reloaded", "be28d984e04540199c164875c35d2594";
    /// A new configuration was refused; the running one is kept.
    ConfigReloadRefused => "config_reload_refused", "92861597229542439897aba419e49d15";
    /// Credential files changed on disk and were loaded.
    CredentialsReloaded => "credentials_reloaded", "e112b3f4a3504c07904b804ea607e6d0";
    /// Credential files changed but cannot be used; the last good ones are kept.
    CredentialsReloadFailed => "credentials_reload_failed", "004b7cf6313f4ec5a46084332e7edf99";
    /// Leftovers of an earlier run were removed.
    OrphansSwept => "orphans_swept", "07b4c5c439c841a6ad392fd32406550e";
    /// A durable step (fsync, rename, append, state save) failed.
    StorageFailed => "storage_failed", "acf120e646a34b0cab94e8c8f27314f5";
    /// The service manager could not be told something (sd_notify).
    NotifyFailed => "notify_failed", "64bfa69937e94c92b86f98630ae9e4d7";
    /// A line from a library: not an event of ours.
    Log => "log", "797784612fa348c0901dd245f264d599";

    // The shipper.
    /// One upload attempt ended.
    ShipResult => "ship_result", "c21515caae0946e3921767c9a508467a";
    /// One pass ended (its totals in `pass_bytes`, `pass_duration_ms`).
    PassComplete => "pass_complete", "2a154e5df3e14db3815fb0c2480ee406";
    /// An episode was moved to quarantine.
    Quarantined => "quarantined", "a2434588d9eb4ebab3e015502a96997c";
    /// Shipping paused: the receiver rejects our configuration or credentials.
    HoldStarted => "hold_started", "f2c5f26342844424a0f9bf3a40fc1fc6";
    /// Shipping resumed.
    HoldEnded => "hold_ended", "2151b29183af481ba163321a25e05f10";
    /// The last pass died; uploads wait out a backoff.
    CrashLoopGuard => "crash_loop_guard", "55c5dafae39b4720b41f117c5583dce7";
    /// Old quarantine entries removed (`quarantine.keep_days`).
    QuarantineCleaned => "quarantine_cleaned", "a42a227175b84fb2a9c41e7f7ac34245";
    /// Old shipped episodes removed (`shipped_keep_days`).
    ShippedCleaned => "shipped_cleaned", "1d7df0524ccc4229a8cbdcf173f8b637";
    /// An episode could not be packed; retried later.
    PackFailed => "pack_failed", "13805ebe43c04ea4a9418d304853bec2";
    /// A file of an episode is not archived (not a file, directory or symlink).
    FileSkipped => "file_skipped", "ad74af3ecd1045b4878f96214dffcc3a";
    /// An outbox archive cannot be reused; packed again.
    OutboxStale => "outbox_stale", "8e7f988308e04c6795dfe627d1dca10a";
    /// meta.json has a value that cannot be sent; sent without that header.
    MetaWarning => "meta_warning", "62648ffa2a4a42f98d13e881595a6f6f";
    /// A directory in episodes/ is not a valid episode id.
    InvalidEpisodeDir => "invalid_episode_dir", "eecb1b2a3aaa4435ad437bd901303811";
    /// episodes/ (or another directory the shipper must read) cannot be listed.
    ListFailed => "list_failed", "4111660a21654d66ade9901072636609";
    /// shipped/<id> existed already; both kept.
    KeptBoth => "kept_both", "57970950254945d5adf99bc732467587";
    /// `shutdown_grace` elapsed with an upload in flight.
    GraceElapsed => "grace_elapsed", "c669b2786875436a983443952c9efc33";
    /// inotify is unavailable; scans run every `scan_interval` only.
    WatchUnavailable => "watch_unavailable", "40533f8c081142c787dac18e53260837";

    // The receiver.
    /// An upload was stored (201).
    Stored => "stored", "c8e4cc56dacc477f85985c788b544ee1";
    /// A PUT was answered without storing (every status but 201).
    PutAnswered => "put_answered", "3439ecef2e8b4898970abde36c59c5ac";
    /// The client stopped sending mid-body.
    UploadAbandoned => "upload_abandoned", "eca1bb9596d346d48b36a7c8338a1506";
    /// A TLS handshake failed or timed out.
    TlsHandshakeFailed => "tls_handshake_failed", "0e2cbd243aa442baa49d44e8062b39ff";
    /// The index was loaded and compared with the store.
    IndexLoaded => "index_loaded", "4965d9bd686a49ee8617a2658a574553";
    /// An index line cannot be read; kept in the file, ignored.
    IndexBadLine => "index_bad_line", "3f18390339484d85b75a220005f97a46";
    /// Episodes restored after a lost archive have a later row; the last is used.
    IndexSupersededRows => "index_superseded_rows", "be2d972234364b09890d60f47c06218c";
    /// An archive had no index row; the row was rebuilt and added.
    Reconciled => "reconciled", "0c56632efb934de8bbbfac5ff5ff894c";
    /// Index rows whose archive is not in the store.
    ArchiveMissing => "archive_missing", "4c8a35d0ed624c44b4dfd540d5bbf5f3";
    /// Partial uploads of the last run removed from incoming/.
    IncomingEmptied => "incoming_emptied", "ebaa86286e1244c98f53221e14c69499";
    /// A partial upload nobody writes any more was removed.
    StaleUploadRemoved => "stale_upload_removed", "170a128c8d204b3cb18a71e707c86d05";
    /// How this filesystem is used (no O_TMPFILE, no syncfs): slower, as safe.
    StorageMode => "storage_mode", "6052a8182afa4ba5930711581918dbc9";
    /// A connection could not be accepted, or ended with an error.
    ConnectionFailed => "connection_failed", "15a89fe7e62645ec957385f07bfe370d";
    /// The receiver's disk is full.
    DiskFull => "disk_full", "142d8bc2fc7a4786a75078ef405d38dc";

    // Metrics (observability.md).
    /// The metrics listener is serving (`url`).
    MetricsListening => "metrics_listening", "b42c31f39e0c4985a0bc51486c8dd881";
    /// Metrics could not be encoded, written or served.
    MetricsFailed => "metrics_failed", "21e00989aaed4fd587a19c613368d129";

    // Added with the hardening (issue 11).
    /// An archive's size differs from its index row; the row is not trusted.
    ArchiveSizeMismatch => "archive_size_mismatch", "fdd14b20e48f446f984174d455632d14";
    /// Connections above three quarters of the cap; the idlest are closed.
    ConnectionPressure => "connection_pressure", "facf2526c0774880a56a123c389f7805";
    /// An entry of episodes/ looks finished but is not (done.marker not a file, a symlinked dir).
    EpisodeNotReady => "episode_not_ready", "904356d89620406aa9e2c7de8003b295";
    /// A file changed while it was packed; packed again later.
    EpisodeNotStable => "episode_not_stable", "dd3faf7d0ddf41118659bbdf48bdf792";
    /// Rows of one key disagree and the last one does not match the archive.
    IndexRowUntrusted => "index_row_untrusted", "87323331d03741e382bc1b67fe253236";
    /// Rows of one key disagree and the archive cannot be read to settle them.
    IndexRowUnverifiable => "index_row_unverifiable", "0e8e2a05d63747e79a7479da56dc3ec6";
    /// The index's torn last line was completed.
    IndexTailCompleted => "index_tail_completed", "2f004a2deefe4e5cba68fe46a79c18a5";
    /// The index's torn last line was cut off.
    IndexTailCut => "index_tail_cut", "dc4ff293e04249ef80b345a6589aadf5";
    /// A requeue interrupted by a crash was finished.
    RequeueFinished => "requeue_finished", "a64242f7f8134b0ca4c15b120f5f7e13";
    /// A requeue interrupted by a crash could not be finished yet.
    RequeueNotFinished => "requeue_not_finished", "3701330f05d4492cb8b1bfe99f8f03e7";
    /// SIGHUP cannot be handled; reload by restarting.
    SighupUnavailable => "sighup_unavailable", "5f18f0b82d6c41fab35c0208433b1e0e";
    /// The background audit of the store's sizes ended.
    StoreAudited => "store_audited", "647da5ef552b48a6a877f4ab75398fd2";
    /// Something not a regular file sits under an archive name in the store.
    StoreEntryNotRegular => "store_entry_not_regular", "3d9092fd5296492fa35eaf4ff6a961fc";
    /// The index writer is dead or stuck: no more watchdog pings.
    WatchdogWithheld => "watchdog_withheld", "c5d2370fa9364d06a66106e31f6939f2";
}

impl Event {
    /// The event named `name`.
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.iter().copied().find(|e| e.as_str() == name)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one upload attempt ended: `ship_result`'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Shipped,
    AlreadyPresent,
    Conflict,
    Repack,
    Fatal,
    Hold,
    Transient,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Shipped,
        Outcome::AlreadyPresent,
        Outcome::Conflict,
        Outcome::Repack,
        Outcome::Fatal,
        Outcome::Hold,
        Outcome::Transient,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Shipped => "shipped",
            Outcome::AlreadyPresent => "already_present",
            Outcome::Conflict => "conflict",
            Outcome::Repack => "repack",
            Outcome::Fatal => "fatal",
            Outcome::Hold => "hold",
            Outcome::Transient => "transient",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Field names, one per thing across both programs. Call sites spell them as
/// tracing field identifiers; `logging`'s tests check every field a line carries is
/// one of `ALL`.
pub mod field {
    /// The event's name (`Event::as_str`).
    pub const EVENT: &str = "event";
    pub const HOST_ID: &str = "host_id";
    pub const EPISODE_ID: &str = "episode_id";
    pub const OUTCOME: &str = "outcome";
    /// The HTTP status; 0 when there was no response.
    pub const STATUS_CODE: &str = "status_code";
    /// The RFC 9457 problem slug; absent when the answer had none.
    pub const PROBLEM_TYPE: &str = "problem_type";
    /// What went wrong, for a person; absent when nothing did.
    pub const ERROR: &str = "error";
    pub const ATTEMPT: &str = "attempt";
    /// The bytes of one archive (one upload, one stored file).
    pub const BYTES: &str = "bytes";
    /// How long one request took.
    pub const DURATION_MS: &str = "duration_ms";
    /// A pass's total bytes sent.
    pub const PASS_BYTES: &str = "pass_bytes";
    /// A pass's wall time.
    pub const PASS_DURATION_MS: &str = "pass_duration_ms";

    /// Every field name a line of either program may carry, besides the human
    /// `message`.
    pub const ALL: &[&str] = &[
        EVENT,
        HOST_ID,
        EPISODE_ID,
        OUTCOME,
        STATUS_CODE,
        PROBLEM_TYPE,
        ERROR,
        ATTEMPT,
        BYTES,
        DURATION_MS,
        PASS_BYTES,
        PASS_DURATION_MS,
        // pass_complete's counts
        "scanned",
        "shipped",
        "already_present",
        "conflicts",
        "fatal",
        "transient_failures",
        "held",
        "repacked",
        "waiting",
        // lifecycle and the rest
        "signal",
        "version",
        "url",
        "receiver_url",
        "timeout",
        "status",
        "data_root",
        "rows",
        "archives",
        "load_ms",
        "list_ms",
        "compare_ms",
        "uploads_in_flight",
        "abandoned",
        "grace",
        "files",
        "n_files",
        "n_removed",
        "n_rows",
        "n_missing",
        "n_uploads",
        "first",
        "keep_days",
        "episodes",
        "unfinished",
        "resume_at",
        "recheck_in",
        "retry_in",
        "kept_as",
        "dir",
        "path",
        "url_path",
        "file",
        "reason",
        "remote",
        "sha256",
        "line",
        "index",
        "store_root",
        "incoming_root",
        // the hardening's events (issue 11)
        "archive_bytes",
        "archive_sha256",
        "row_bytes",
        "row_sha256",
        "offset",
        "changed",
        "config",
        "key",
        "max_connections",
        "open",
        "n_checked",
        "n_mismatched",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_message_ids_are_unique_and_well_formed() {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for e in Event::ALL {
            assert!(names.insert(e.as_str()), "{e} declared twice");
            assert!(ids.insert(e.message_id()), "{e}: MESSAGE_ID reused");
            let id = e.message_id();
            assert_eq!(id.len(), 32, "{e}: MESSAGE_ID is 128 bits");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{e}: MESSAGE_ID is lowercase hex"
            );
            assert!(
                e.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{e}: names are snake_case"
            );
            assert_eq!(Event::parse(e.as_str()), Some(*e));
        }
        assert_eq!(Event::parse("nope"), None);
    }

    #[test]
    fn message_ids_never_change() {
        // Journals outlive builds: a changed id would hide old lines from a
        // `journalctl MESSAGE_ID=…` query.
        assert_eq!(
            Event::ShipResult.message_id(),
            "c21515caae0946e3921767c9a508467a"
        );
        assert_eq!(
            Event::PassComplete.message_id(),
            "2a154e5df3e14db3815fb0c2480ee406"
        );
        assert_eq!(
            Event::Ready.message_id(),
            "073da10a81964d359b3195df74f0c463"
        );
    }

    #[test]
    fn outcomes_round_trip_and_match_the_spec() {
        let spec = "shipped|already_present|conflict|repack|fatal|hold|transient";
        let ours: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(ours.join("|"), spec);
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("Shipped"), None);
    }

    #[test]
    fn field_names_are_unique() {
        let mut seen = HashSet::new();
        for f in field::ALL {
            assert!(seen.insert(*f), "field {f} listed twice");
        }
    }
}
