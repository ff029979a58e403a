//! One run of the doctor: gather the facts, build the eight rows in order.
//!
//! Owns the order of the rows and what happens when the config does not load
//! (the rows that need it are shown as skipped; service and journal still run).
//! The slow probes (the health request, systemctl, journalctl) run side by side.
//! Fails only when the doctor itself cannot work (no async runtime): everything
//! about the host is a row, never an error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use episode_shipper::config::Config;
use episode_shipper::status;

use crate::fixes::Context;
use crate::journal::{Scope, Window, classify_journal, journal_row, unreadable_row};
use crate::report::{Check, Report, Row};
use crate::source::{JournalText, read_journal};
use crate::{certs, config, data, receiver, service, since};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub since: Duration,
    pub unit: String,
    pub journal_file: Option<PathBuf>,
}

fn health(config: &Config) -> anyhow::Result<receiver::Health> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime for the health request")?;
    Ok(runtime.block_on(receiver::probe(config)))
}

/// Runs every check.
pub fn diagnose(opts: &Options) -> anyhow::Result<Report> {
    let now = time::OffsetDateTime::now_utc();
    let now_unix = now.unix_timestamp();
    let now_us = i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    // Whole seconds, as journalctl's `--since=@<secs>` gets it: both draw the same line.
    let cutoff_us = since::cutoff_us(now_us, opts.since).div_euclid(1_000_000) * 1_000_000;
    let window = Window {
        cutoff_us,
        now_us,
        utc_offset_secs: utc_offset_secs(now_unix),
    };
    let loaded = Config::load(&opts.config);
    let config = loaded.as_ref().ok();
    let cert_facts = config.map(|c| certs::gather(c, now_unix));
    let mut ctx = Context::new(&opts.config, config, &opts.unit);
    ctx.cert_identities = cert_facts.as_ref().and_then(certs::CertFacts::identities);
    let ctx = ctx;

    std::thread::scope(|scope| -> anyhow::Result<Report> {
        let health = config.map(|c| scope.spawn(move || health(c)));
        let unit = opts.unit.as_str();
        let service = scope.spawn(move || service::probe(unit));
        let journal = read_journal(&opts.unit, cutoff_us, opts.journal_file.as_deref());
        let state = config.map(|c| (status::collect(c), data::access(c), config::probe(c)));

        let skipped =
            |check| Row::skipped(check, "the config did not load", "fix the config row first");
        let mut rows = Vec::with_capacity(Check::ALL.len());
        match (&loaded, &state) {
            (Ok(c), Some((_, _, named))) => rows.push(config::config_row(c, named, &ctx)),
            (Err(e), _) => rows.push(config::failed_row(e, &ctx)),
            (Ok(_), None) => unreachable!("a loaded config is probed"),
        }
        match &cert_facts {
            Some(f) => rows.push(certs::certificates_row(f, now_unix, &ctx)),
            None => rows.push(skipped(Check::Certificates)),
        }
        match (health, config) {
            (Some(handle), Some(c)) => {
                let answer = handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("the health request panicked"))??;
                rows.push(receiver::receiver_row(&answer, c.base_url(), &ctx));
            }
            _ => rows.push(skipped(Check::Receiver)),
        }
        let service = service
            .join()
            .map_err(|_| anyhow::anyhow!("systemctl probe panicked"))?;
        rows.push(service::service_row(&service, &ctx));
        match &state {
            Some((status, access, _)) => {
                rows.push(data::backlog_row(status, access, &ctx));
                rows.push(data::quarantine_row(status, access, &ctx));
                rows.push(data::hold_row(status, now_unix, &ctx));
            }
            None => {
                rows.push(skipped(Check::Backlog));
                rows.push(skipped(Check::Quarantine));
                rows.push(skipped(Check::Hold));
            }
        }
        let label = since::label(opts.since);
        let source = match &opts.journal_file {
            Some(path) => format!("file {}", path.display()),
            None => format!("unit {}", opts.unit),
        };
        rows.push(match journal {
            JournalText::Lines(text) => journal_row(
                &classify_journal(text.lines(), &window),
                &ctx,
                &Scope {
                    since: &label,
                    source: &source,
                    journal_file: opts.journal_file.as_deref(),
                    now_us,
                },
            ),
            JournalText::Unreadable { reason, fix } => unreadable_row(&reason, &fix),
        });
        Ok(Report { rows })
    })
}

/// The local time zone's offset from UTC at `unix` (seconds), as `journalctl -o
/// short` uses it for its stamps; 0 when it cannot be learned.
pub fn utc_offset_secs(unix: i64) -> i32 {
    // time_t is 64 bits wherever the doctor runs; a stamp past 2038 on a 32-bit
    // time_t wraps, and the offset of some other date is still a fair guess.
    let t = unix as libc::time_t;
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid
    // for the call, and localtime_r (unlike localtime) keeps no shared result.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if filled {
        i32::try_from(tm.tm_gmtoff).unwrap_or(0)
    } else {
        0
    }
}
