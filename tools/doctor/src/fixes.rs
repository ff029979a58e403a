//! The canonical fixes: one sentence with the exact command for each kind of
//! trouble, shared by the journal, quarantine, hold and receiver rows so the same
//! problem always gets the same advice.
//!
//! Owns `Context` (what a fix may quote: the config path, host id, credential
//! paths, the client certificate's identities, the unit) and the texts. Pure: it
//! reads nothing; a fact the caller could not learn is simply left out.

use std::path::{Path, PathBuf};

use episode_shipper::config::{Config, DEFAULT_PATH};

/// The shipper's unit when `--unit` is not given.
pub const DEFAULT_UNIT: &str = "episode-shipper";

/// What a fix may name. Everything is optional: the config may not have loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub config_path: PathBuf,
    pub host_id: Option<String>,
    pub url: Option<String>,
    pub data_root: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    /// The client certificate's CN and DNS SANs, when it could be read.
    pub cert_identities: Option<Vec<String>>,
    pub unit: String,
}

impl Context {
    pub fn new(config_path: &Path, config: Option<&Config>, unit: &str) -> Self {
        let mut ctx = Self {
            config_path: config_path.to_owned(),
            unit: unit.to_owned(),
            ..Self::default()
        };
        if let Some(c) = config {
            ctx.host_id = Some(c.host_id.to_string());
            ctx.url = Some(c.base_url().to_owned());
            ctx.data_root = Some(c.data_root.clone());
            ctx.bearer_token_file = c.receiver.bearer_token_file.clone();
            ctx.client_cert = c.receiver.client_cert.clone();
        }
        ctx
    }

    /// `episode-shipper <args>`, with `--config F` when the doctor was not using the
    /// default config (placed last: the shipper's `--config` is global).
    pub fn shipper(&self, args: &str) -> String {
        if self.config_path == Path::new(DEFAULT_PATH) {
            format!("`episode-shipper {args}`")
        } else {
            format!(
                "`episode-shipper {args} --config {}`",
                self.config_path.display()
            )
        }
    }

    /// `episode-doctor <args>`, with the `--config F` and `--unit U` this run used
    /// when they are not the defaults.
    pub fn doctor(&self, args: &str) -> String {
        let mut out = format!("`episode-doctor {args}");
        if self.config_path != Path::new(DEFAULT_PATH) {
            out.push_str(&format!(" --config {}", self.config_path.display()));
        }
        if !self.unit.is_empty() && self.unit != DEFAULT_UNIT {
            out.push_str(&format!(" --unit {}", self.unit));
        }
        out.push('`');
        out
    }

    fn host(&self) -> String {
        self.host_id
            .as_deref()
            .map_or("host_id".into(), |h| format!("host_id {h:?}"))
    }

    fn quarantine_dir(&self) -> String {
        self.data_root.as_deref().map_or_else(
            || "<data_root>/quarantine".into(),
            |d| d.join("quarantine").display().to_string(),
        )
    }
}

/// 412 out-of-window.
pub fn out_of_window(ctx: &Context) -> String {
    format!(
        "check the clock with `timedatectl` (synchronized? the receiver judges the window by the episodes' started_at); once the clock or the receiver's window is right: {}",
        ctx.shipper("requeue --status 412")
    )
}

/// A fatal rejection other than 412: `status` with its problem type, if any.
pub fn fatal(ctx: &Context, status: u16, problem_type: Option<&str>) -> String {
    let requeue = ctx.shipper(&format!("requeue --status {status}"));
    match (status, problem_type) {
        (412, _) => out_of_window(ctx),
        (_, Some("missing-code-commit")) => format!(
            "have the recorder write code_commit into meta.json (and add it to the quarantined episodes' meta.json), then {requeue}"
        ),
        (_, Some("missing-started-at")) => format!(
            "have the recorder write started_at into meta.json (and add it to the quarantined episodes' meta.json), then {requeue}"
        ),
        (_, Some("invalid-id")) => format!(
            "episode ids must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}: rename the directories in {}, then {requeue}",
            ctx.quarantine_dir()
        ),
        (413, _) | (_, Some("too-large")) => format!(
            "the episodes exceed the receiver's max_episode_bytes: raise it on the receiver, then {requeue}"
        ),
        _ => format!(
            "read {}/<id>/quarantine_reason.json, fix the cause, then {requeue}",
            ctx.quarantine_dir()
        ),
    }
}

/// 401: the receiver wants a (different) bearer token.
pub fn unauthorized(ctx: &Context) -> String {
    match &ctx.bearer_token_file {
        Some(path) => format!(
            "the receiver refused the bearer token: put the receiver's token in receiver.bearer_token_file ({}), then {}",
            path.display(),
            ctx.shipper("ping")
        ),
        None => format!(
            "the receiver requires a bearer token: set receiver.bearer_token_file in {} to a file holding it, then {}",
            ctx.config_path.display(),
            ctx.shipper("ping")
        ),
    }
}

/// 403: the client certificate does not name this host.
pub fn forbidden(ctx: &Context) -> String {
    let cert = match (&ctx.client_cert, &ctx.cert_identities) {
        (Some(path), Some(ids)) => format!(
            "{} names [{}]",
            path.display(),
            ids.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (Some(path), None) => format!("check {}", path.display()),
        (None, _) => "no receiver.client_cert is configured".into(),
    };
    format!(
        "the client certificate's CN or a DNS SAN must equal {} ({cert}): issue a certificate for this host or correct host_id in {}, then {}",
        ctx.host(),
        ctx.config_path.display(),
        ctx.shipper("ping")
    )
}

/// 404, 405, 501, 3xx: the URL is not a receiver's API.
pub fn misdirected(ctx: &Context) -> String {
    format!(
        "receiver.url ({}) does not point at an episode receiver: correct it in {}, then {}",
        ctx.url.as_deref().unwrap_or("?"),
        ctx.config_path.display(),
        ctx.shipper("ping")
    )
}

/// A hold for `status`.
pub fn hold(ctx: &Context, status: u16) -> String {
    match status {
        401 => unauthorized(ctx),
        403 => forbidden(ctx),
        _ => misdirected(ctx),
    }
}

/// 409: a different archive is stored under the same id.
pub fn conflict(ctx: &Context, episode_ids: &[String]) -> String {
    let ids = if episode_ids.is_empty() {
        "those ids".into()
    } else {
        list(episode_ids, 5)
    };
    format!(
        "a different archive is already stored under {ids}: investigate before anything else (was the episode re-recorded or edited after shipping? {} shows the receiver's sha256); the shipper leaves these episodes in place and re-checks hourly",
        ctx.shipper("status")
    )
}

/// 400 digest-mismatch / length-mismatch: the receiver got other bytes than were
/// packed, and the shipper packed the episode again.
pub fn repacked(ctx: &Context) -> String {
    format!(
        "the bytes arrived damaged and the shipper packed again (quarantined on the third time): if it repeats, check this host's disk and memory (`sudo dmesg | grep -i -e error -e ecc -e corrupt`) and the network path; {} shows each episode's attempts",
        ctx.shipper("status")
    )
}

/// Transient failures: the shipper retries by itself.
pub fn transient(ctx: &Context) -> String {
    format!(
        "{} shows whether the receiver answers now; the shipper retries by itself with backoff",
        ctx.shipper("ping")
    )
}

/// The shipper keeps dying in the middle of passes.
pub fn crash_loop(ctx: &Context) -> String {
    format!(
        "find why it dies: `journalctl -u {} -b` (panic, watchdog) and `dmesg | grep -i oom` (killed for memory: lower `memory_budget`); uploads resume by themselves after the logged time",
        ctx.unit
    )
}

/// Running as a user who cannot read something the shipper can.
pub fn permission() -> String {
    "run the doctor as root or as the shipper's user: `sudo episode-doctor` (or `sudo -u episode-shipper episode-doctor`)".into()
}

/// "a, b, c (+2 more)".
pub fn list(items: &[String], max: usize) -> String {
    let mut out = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        out.push_str(&format!(" (+{} more)", items.len() - max));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            config_path: DEFAULT_PATH.into(),
            host_id: Some("lab1".into()),
            url: Some("https://r:8443".into()),
            data_root: Some("/var/lib/episode-shipper".into()),
            bearer_token_file: Some("/etc/episode-shipper/token".into()),
            client_cert: Some("/etc/episode-shipper/client.pem".into()),
            cert_identities: Some(vec!["lab2".into()]),
            unit: "episode-shipper".into(),
        }
    }

    #[test]
    fn fixes_name_the_canonical_commands_and_paths() {
        let c = ctx();
        let f = out_of_window(&c);
        assert!(f.contains("`timedatectl`"), "{f}");
        assert!(f.contains("`episode-shipper requeue --status 412`"), "{f}");
        let f = fatal(&c, 400, Some("missing-code-commit"));
        assert!(
            f.contains("meta.json") && f.contains("requeue --status 400"),
            "{f}"
        );
        assert!(fatal(&c, 413, Some("too-large")).contains("max_episode_bytes"));
        assert!(
            fatal(&c, 415, None)
                .contains("/var/lib/episode-shipper/quarantine/<id>/quarantine_reason.json")
        );
        assert!(unauthorized(&c).contains("/etc/episode-shipper/token"));
        let f = forbidden(&c);
        assert!(
            f.contains("host_id \"lab1\"") && f.contains("client.pem names [\"lab2\"]"),
            "{f}"
        );
        assert!(misdirected(&c).contains("https://r:8443"));
        assert!(conflict(&c, &["E1".into()]).contains("E1"));
        assert!(transient(&c).contains("`episode-shipper ping`"));
        let f = repacked(&c);
        assert!(
            f.contains("dmesg") && f.contains("`episode-shipper status`"),
            "{f}"
        );
    }

    #[test]
    fn doctor_commands_repeat_the_non_default_options() {
        assert_eq!(ctx().doctor("--since 1d"), "`episode-doctor --since 1d`");
        let c = Context {
            config_path: "/tmp/s.toml".into(),
            unit: "shipper-b".into(),
            ..ctx()
        };
        assert_eq!(
            c.doctor("--since 1d --journal-file F"),
            "`episode-doctor --since 1d --journal-file F --config /tmp/s.toml --unit shipper-b`"
        );
    }

    #[test]
    fn a_non_default_config_is_passed_along() {
        let c = Context {
            config_path: "/tmp/s.toml".into(),
            ..ctx()
        };
        assert_eq!(
            c.shipper("requeue --status 412"),
            "`episode-shipper requeue --status 412 --config /tmp/s.toml`"
        );
    }

    #[test]
    fn without_a_config_fixes_still_read() {
        let c = Context {
            config_path: "/x.toml".into(),
            ..Context::default()
        };
        assert!(unauthorized(&c).contains("set receiver.bearer_token_file in /x.toml"));
        assert!(forbidden(&c).contains("no receiver.client_cert"));
        assert!(fatal(&c, 400, None).contains("<data_root>/quarantine"));
    }

    #[test]
    fn lists_are_cut_short() {
        let items: Vec<String> = (1..=7).map(|i| format!("E{i}")).collect();
        assert_eq!(list(&items, 3), "E1, E2, E3 (+4 more)");
        assert_eq!(list(&items[..2], 3), "E1, E2");
    }
}
