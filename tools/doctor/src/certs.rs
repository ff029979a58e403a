//! The certificates row: the CA bundle, client certificate and key the shipper's
//! config names.
//!
//! `gather` loads them with the same `episode_common::tls` functions the shipper's
//! transport uses (no second PEM or X.509 reader) and records facts: present,
//! parsed, the key matches (rustls refuses a client config otherwise), the chain
//! verifies against `ca_bundle`, validity windows, identities. `certificates_row`
//! judges those facts against a `now` it is given (pure): yellow when something
//! (the CA, the client certificate or any intermediate in its chain) expires
//! within 14 days, red within 2 days or when expired, missing or broken. For a
//! plain http:// receiver the shipper still loads the files it names (a missing
//! or broken one stops shipping: red) but never presents them, so expiry, chain
//! and identity problems are at most yellow there.
//! Writes nothing and never contacts the receiver.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use episode_common::tls::{self, CertInfo, TlsError};
use episode_shipper::config::Config;
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::fixes::{self, Context};
use crate::report::{Check, Level, Row};

/// Days before expiry at which a certificate turns yellow.
pub const YELLOW_DAYS: i64 = 14;
/// Days before expiry at which a certificate turns red.
pub const RED_DAYS: i64 = 2;

/// What loading one configured file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded<T> {
    NotConfigured,
    Missing(PathBuf),
    /// Exists, but this user may not read it.
    Denied(PathBuf, String),
    /// Unreadable or unparsable for another reason.
    Bad(PathBuf, String),
    Ok(PathBuf, T),
}

impl<T> Loaded<T> {
    pub fn value(&self) -> Option<&T> {
        match self {
            Loaded::Ok(_, v) => Some(v),
            _ => None,
        }
    }
}

/// Everything the row says, learned from the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The receiver URL is https:// (the material is used).
    pub tls: bool,
    pub host_id: String,
    pub ca: Loaded<Vec<CertInfo>>,
    /// The leaf of the client chain.
    pub cert: Loaded<CertInfo>,
    /// The rest of the client chain (intermediates), in file order.
    pub intermediates: Vec<CertInfo>,
    pub key: Loaded<()>,
    /// `None` when not both cert and key could be loaded.
    pub key_matches: Option<Result<(), String>>,
    /// `None` when there is no client certificate or CA to check against.
    pub chains: Option<Result<(), String>>,
}

impl CertFacts {
    /// The client certificate's identities (DNS SANs, then CN), when it was read.
    pub fn identities(&self) -> Option<Vec<String>> {
        self.cert.value().map(CertInfo::identities)
    }
}

fn classify_error<T>(path: &Path, err: TlsError) -> Loaded<T> {
    match &err {
        TlsError::Read { source, .. } if source.kind() == ErrorKind::NotFound => {
            Loaded::Missing(path.to_owned())
        }
        TlsError::Read { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
            Loaded::Denied(path.to_owned(), err.to_string())
        }
        _ => Loaded::Bad(path.to_owned(), err.to_string()),
    }
}

fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs.max(0) as u64))
}

/// Loads and checks the material `[receiver]` names, as of `now_unix`.
pub fn gather(config: &Config, now_unix: i64) -> CertFacts {
    let r = &config.receiver;
    let mut ca_ders: Option<Vec<CertificateDer<'static>>> = None;
    let ca = match &r.ca_bundle {
        None => Loaded::NotConfigured,
        Some(p) => match tls::load_certs(p) {
            Err(e) => classify_error(p, e),
            Ok(ders) => {
                let infos: Result<Vec<CertInfo>, TlsError> =
                    ders.iter().map(CertInfo::parse).collect();
                match infos {
                    Ok(infos) => {
                        ca_ders = Some(ders);
                        Loaded::Ok(p.clone(), infos)
                    }
                    Err(e) => Loaded::Bad(p.clone(), format!("{}: {e}", p.display())),
                }
            }
        },
    };
    let mut chain: Option<Vec<CertificateDer<'static>>> = None;
    let mut intermediates = Vec::new();
    let cert = match &r.client_cert {
        None => Loaded::NotConfigured,
        Some(p) => match tls::load_certs(p) {
            Err(e) => classify_error(p, e),
            Ok(ders) => {
                let infos: Result<Vec<CertInfo>, (usize, TlsError)> = ders
                    .iter()
                    .enumerate()
                    .map(|(i, d)| CertInfo::parse(d).map_err(|e| (i, e)))
                    .collect();
                match infos {
                    Ok(mut infos) => {
                        chain = Some(ders);
                        let leaf = infos.remove(0);
                        intermediates = infos;
                        Loaded::Ok(p.clone(), leaf)
                    }
                    Err((0, e)) => Loaded::Bad(p.clone(), format!("{}: {e}", p.display())),
                    Err((i, e)) => Loaded::Bad(
                        p.clone(),
                        format!("{}: certificate #{} of the chain: {e}", p.display(), i + 1),
                    ),
                }
            }
        },
    };
    let mut key_der = None;
    let key = match &r.client_key {
        None => Loaded::NotConfigured,
        Some(p) => match tls::load_key(p) {
            Err(e) => classify_error(p, e),
            Ok(k) => {
                key_der = Some(k);
                Loaded::Ok(p.clone(), ())
            }
        },
    };
    let key_matches = match (&chain, key_der) {
        (Some(chain), Some(key)) => {
            // Any trust anchor will do: only the key/certificate pairing is tested.
            let roots = ca_ders.clone().unwrap_or_else(|| chain.clone());
            Some(
                tls::client_config(Some(&roots), Some((chain.clone(), key)))
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        }
        _ => None,
    };
    let chains = match (&chain, &ca_ders, cert.value()) {
        (Some(chain), Some(ca), Some(info)) => {
            // Judge the chain inside the validity of all its certificates, so an
            // expired one reads as "expired" (below), not as "does not chain".
            let all = || std::iter::once(info).chain(&intermediates);
            let from = all().map(|i| i.not_before).max().unwrap_or(info.not_before);
            let until = all().map(|i| i.not_after).min().unwrap_or(info.not_after);
            let at = if (from..=until).contains(&now_unix) {
                now_unix
            } else if from <= until {
                from + (until - from) / 2
            } else {
                info.not_before + (info.not_after - info.not_before) / 2
            };
            Some(tls::verify_client_chain(chain, ca, unix_time(at)).map_err(|e| e.to_string()))
        }
        _ => None,
    };
    CertFacts {
        tls: config.base_url().starts_with("https://"),
        host_id: config.host_id.to_string(),
        ca,
        cert,
        intermediates,
        key,
        key_matches,
        chains,
    }
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// The level and words for a validity window as of `now` (all Unix seconds).
pub fn expiry(not_before: i64, not_after: i64, now: i64) -> (Level, String) {
    if now < not_before {
        return (
            Level::Red,
            format!(
                "not valid until {} (check the clock with `timedatectl`)",
                date(not_before)
            ),
        );
    }
    let left = not_after - now;
    let days = left / 86_400;
    if left <= 0 {
        let ago = -left / 86_400;
        let when = if ago == 0 {
            "today".to_owned()
        } else {
            format!("{ago} day(s) ago")
        };
        (Level::Red, format!("expired {when} ({})", date(not_after)))
    } else if days < RED_DAYS {
        (
            Level::Red,
            format!("expires in {} hour(s) ({})", left / 3600, date(not_after)),
        )
    } else if days < YELLOW_DAYS {
        (
            Level::Yellow,
            format!("expires in {days} day(s) ({})", date(not_after)),
        )
    } else {
        (
            Level::Green,
            format!("valid {days} more day(s) (until {})", date(not_after)),
        )
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The certificates row, as of `now_unix`.
pub fn certificates_row(f: &CertFacts, now_unix: i64, ctx: &Context) -> Row {
    let mut row = Row::new(Check::Certificates);
    let nothing = matches!(f.ca, Loaded::NotConfigured)
        && matches!(f.cert, Loaded::NotConfigured)
        && matches!(f.key, Loaded::NotConfigured);
    if !f.tls {
        row.note(
            Level::Green,
            if nothing {
                "plain http:// receiver: no TLS material in use"
            } else {
                "receiver.url is http://: the shipper loads the TLS files (a missing or broken one stops shipping) but does not present them"
            },
        );
        if nothing {
            return row;
        }
    }
    // Problems that only matter once the files are used on the wire.
    let used = |level: Level| {
        if f.tls {
            level
        } else {
            level.min(Level::Yellow)
        }
    };
    let unused = if f.tls {
        ""
    } else {
        " (not used while receiver.url is http://)"
    };
    let cert_path = match &f.cert {
        Loaded::Missing(p) | Loaded::Denied(p, _) | Loaded::Bad(p, _) | Loaded::Ok(p, _) => {
            Some(p.clone())
        }
        Loaded::NotConfigured => None,
    };
    let key_path = match &f.key {
        Loaded::Missing(p) | Loaded::Denied(p, _) | Loaded::Bad(p, _) | Loaded::Ok(p, _) => {
            Some(p.clone())
        }
        Loaded::NotConfigured => None,
    };
    let install = format!(
        "install this host's client certificate and key at {} and {} (CN or DNS SAN = host_id {:?}); the shipper picks them up without a restart, then {}",
        cert_path
            .as_deref()
            .map_or("?".into(), |p| p.display().to_string()),
        key_path
            .as_deref()
            .map_or("?".into(), |p| p.display().to_string()),
        f.host_id,
        ctx.shipper("ping")
    );

    // The CA bundle.
    match &f.ca {
        Loaded::NotConfigured if f.tls => {
            row.note(
                Level::Green,
                "receiver checked against the system CA bundle (no receiver.ca_bundle)",
            );
        }
        Loaded::NotConfigured => {}
        Loaded::Missing(p) => {
            row.note(
                Level::Red,
                format!("receiver.ca_bundle {} does not exist", p.display()),
            );
            row.fix(
                Level::Red,
                format!(
                    "install the receiver's CA certificate at {} (the shipper reads it without a restart)",
                    p.display()
                ),
            );
        }
        Loaded::Denied(_, e) => {
            row.note(Level::Yellow, format!("receiver.ca_bundle: {e}"));
            row.fix(Level::Yellow, fixes::permission());
        }
        Loaded::Bad(p, e) => {
            row.note(Level::Red, format!("receiver.ca_bundle: {e}"));
            row.fix(
                Level::Red,
                format!(
                    "replace {} with the PEM certificate(s) of the CA that signed the receiver",
                    p.display()
                ),
            );
        }
        Loaded::Ok(p, infos) => match infos.iter().min_by_key(|i| i.not_after) {
            None => {}
            Some(soonest) => {
                let (level, words) = expiry(soonest.not_before, soonest.not_after, now_unix);
                let level = used(level);
                let name = soonest
                    .subject_cn
                    .clone()
                    .unwrap_or_else(|| soonest.subject.clone());
                let unused = if level == Level::Green { "" } else { unused };
                row.note(level, format!("CA {name:?} {words}{unused}"));
                if level != Level::Green {
                    row.fix(
                        level,
                        format!(
                            "have the CA {name:?} renewed and install the new bundle at {}",
                            p.display()
                        ),
                    );
                }
            }
        },
    }

    // The client certificate.
    match &f.cert {
        Loaded::NotConfigured => {
            if f.tls {
                row.note(Level::Green, "no client certificate configured (no mTLS)");
            }
        }
        Loaded::Missing(p) => {
            row.note(
                Level::Red,
                format!(
                    "client certificate {} does not exist (first boot: not issued yet?)",
                    p.display()
                ),
            );
            row.fix(Level::Red, install.clone());
        }
        Loaded::Denied(_, e) => {
            row.note(Level::Yellow, format!("receiver.client_cert: {e}"));
            row.fix(Level::Yellow, fixes::permission());
        }
        Loaded::Bad(p, e) => {
            row.note(Level::Red, format!("receiver.client_cert: {e}"));
            row.fix(
                Level::Red,
                format!(
                    "replace {} with this host's PEM certificate (chain, leaf first)",
                    p.display()
                ),
            );
        }
        Loaded::Ok(p, info) => {
            let (level, words) = expiry(info.not_before, info.not_after, now_unix);
            let level = used(level);
            let ids = info.identities();
            let suffix = if level == Level::Green { "" } else { unused };
            row.note(
                level,
                format!("client certificate [{}] {words}{suffix}", quoted(&ids)),
            );
            if level != Level::Green {
                row.fix(
                    level,
                    format!(
                        "renew the client certificate at {} (same CN/SAN {:?}); the shipper picks it up without a restart",
                        p.display(),
                        f.host_id
                    ),
                );
            }
            for inter in &f.intermediates {
                let (level, words) = expiry(inter.not_before, inter.not_after, now_unix);
                if level == Level::Green {
                    continue;
                }
                let level = used(level);
                let name = inter
                    .subject_cn
                    .clone()
                    .unwrap_or_else(|| inter.subject.clone());
                row.note(
                    level,
                    format!(
                        "intermediate certificate {name:?} in {} {words}{unused}",
                        p.display()
                    ),
                );
                row.fix(
                    level,
                    format!(
                        "install at {} the chain with the CA's current intermediate (leaf first, then the intermediate); the shipper picks it up without a restart",
                        p.display()
                    ),
                );
            }
            if !ids.contains(&f.host_id) {
                let level = used(Level::Red);
                let consequence = if f.tls {
                    ": the receiver will answer 403"
                } else {
                    unused
                };
                row.note(
                    level,
                    format!(
                        "client certificate names [{}], not host_id {:?}{consequence}",
                        quoted(&ids),
                        f.host_id
                    ),
                );
                row.fix(level, fixes::forbidden(ctx));
            }
        }
    }

    // The key.
    match &f.key {
        Loaded::NotConfigured | Loaded::Ok(..) => {}
        Loaded::Missing(p) => {
            row.note(
                Level::Red,
                format!("client key {} does not exist", p.display()),
            );
            row.fix(Level::Red, install.clone());
        }
        Loaded::Denied(_, e) => {
            row.note(Level::Yellow, format!("receiver.client_key: {e}"));
            row.fix(Level::Yellow, fixes::permission());
        }
        Loaded::Bad(p, e) => {
            row.note(Level::Red, format!("receiver.client_key: {e}"));
            row.fix(
                Level::Red,
                format!(
                    "replace {} with the PEM private key issued with the certificate",
                    p.display()
                ),
            );
        }
    }
    match &f.key_matches {
        None => {}
        Some(Ok(())) => {
            row.note(Level::Green, "key matches");
        }
        Some(Err(e)) if e.contains("does not match") => {
            row.note(
                Level::Red,
                format!(
                    "the key {} does not belong to the certificate {}",
                    key_path
                        .as_deref()
                        .map_or("?".into(), |p| p.display().to_string()),
                    cert_path
                        .as_deref()
                        .map_or("?".into(), |p| p.display().to_string()),
                ),
            );
            row.fix(
                Level::Red,
                "install the key that was issued with the certificate (or issue a new pair); the shipper picks them up without a restart",
            );
        }
        Some(Err(e)) => {
            row.note(Level::Red, format!("certificate and key unusable: {e}"));
            row.fix(Level::Red, install.clone());
        }
    }

    // The chain.
    match (&f.chains, f.cert.value()) {
        (Some(Ok(())), _) => {
            row.note(Level::Green, "chains to receiver.ca_bundle");
        }
        (Some(Err(e)), _) if e.contains("purpose") => {
            let level = used(Level::Red);
            row.note(level, format!("client certificate: {e}{unused}"));
            row.fix(
                level,
                "issue the client certificate with extendedKeyUsage clientAuth",
            );
        }
        (Some(Err(e)), info) => {
            let issuer = info.map(|i| i.issuer.clone()).unwrap_or_default();
            row.note(
                Level::Yellow,
                format!(
                    "client certificate does not chain to receiver.ca_bundle ({e}; issuer {issuer}); fine if the receiver trusts a different client CA"
                ),
            );
            row.fix(
                Level::Yellow,
                format!(
                    "check that the receiver's tls.client_ca is the CA that issued the client certificate ({issuer}); if it is, nothing to do"
                ),
            );
        }
        (None, _) => {}
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn expiry_thresholds() {
        let now = 1_800_000_000;
        let table: &[(i64, i64, Level, &str)] = &[
            (
                now - DAY,
                now + 365 * DAY,
                Level::Green,
                "valid 365 more day(s)",
            ),
            (
                now - DAY,
                now + 14 * DAY,
                Level::Green,
                "valid 14 more day(s)",
            ),
            (
                now - DAY,
                now + 14 * DAY - 1,
                Level::Yellow,
                "expires in 13 day(s)",
            ),
            (
                now - DAY,
                now + 2 * DAY,
                Level::Yellow,
                "expires in 2 day(s)",
            ),
            (
                now - DAY,
                now + 2 * DAY - 1,
                Level::Red,
                "expires in 47 hour(s)",
            ),
            (now - DAY, now + DAY, Level::Red, "expires in 24 hour(s)"),
            (
                now - 9 * DAY,
                now - 3 * DAY,
                Level::Red,
                "expired 3 day(s) ago",
            ),
            (now - 9 * DAY, now, Level::Red, "expired today"),
            (now + DAY, now + 9 * DAY, Level::Red, "not valid until"),
        ];
        for &(nb, na, level, words) in table {
            let (l, w) = expiry(nb, na, now);
            assert_eq!(l, level, "{w}");
            assert!(w.starts_with(words), "{w} !~ {words}");
        }
    }

    fn info(cn: &str, not_before: i64, not_after: i64) -> CertInfo {
        CertInfo {
            subject_cn: Some(cn.into()),
            dns_sans: vec![],
            subject: format!("CN={cn}"),
            issuer: "CN=ca".into(),
            not_before,
            not_after,
            is_ca: false,
        }
    }

    fn facts() -> CertFacts {
        let now = 1_800_000_000;
        CertFacts {
            tls: true,
            host_id: "lab1".into(),
            ca: Loaded::Ok(
                "/c/ca.pem".into(),
                vec![info("ca", now - DAY, now + 3650 * DAY)],
            ),
            cert: Loaded::Ok(
                "/c/client.pem".into(),
                info("lab1", now - DAY, now + 365 * DAY),
            ),
            intermediates: vec![],
            key: Loaded::Ok("/c/client.key".into(), ()),
            key_matches: Some(Ok(())),
            chains: Some(Ok(())),
        }
    }

    fn ctx() -> Context {
        Context {
            config_path: "/c/shipper.toml".into(),
            host_id: Some("lab1".into()),
            client_cert: Some("/c/client.pem".into()),
            cert_identities: Some(vec!["lab2".into()]),
            ..Context::default()
        }
    }

    #[test]
    fn rules_of_the_row() {
        let now = 1_800_000_000;
        let good = certificates_row(&facts(), now, &ctx());
        assert_eq!(good.level(), Level::Green, "{}", good.finding_line());
        assert!(good.finding_line().contains("key matches"));
        assert!(good.finding_line().contains("chains to receiver.ca_bundle"));

        let mut f = facts();
        f.cert = Loaded::Missing("/c/client.pem".into());
        f.key_matches = None;
        f.chains = None;
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Red);
        assert!(row.finding_line().contains("/c/client.pem does not exist"));
        assert!(row.fix_line().unwrap().contains("/c/client.key"));

        let mut f = facts();
        f.key_matches = Some(Err(
            "client certificate and key: private key does not match the certificate".into(),
        ));
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Red);
        assert!(row.findings()[0].starts_with("the key /c/client.key does not belong"));

        let mut f = facts();
        f.chains = Some(Err("certificate is not signed by a trusted CA".into()));
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.finding_line().contains("different client CA"));

        let mut f = facts();
        f.cert = Loaded::Ok(
            "/c/client.pem".into(),
            info("lab2", now - DAY, now + 365 * DAY),
        );
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Red);
        assert!(row.finding_line().contains("not host_id \"lab1\""));

        let mut f = facts();
        f.ca = Loaded::Ok(
            "/c/ca.pem".into(),
            vec![info("ca", now - DAY, now + 5 * DAY)],
        );
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.findings()[0].starts_with("CA \"ca\" expires in 5 day(s)"));

        let f = CertFacts {
            tls: false,
            ca: Loaded::NotConfigured,
            cert: Loaded::NotConfigured,
            key: Loaded::NotConfigured,
            key_matches: None,
            chains: None,
            ..facts()
        };
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Green);
        assert_eq!(
            row.finding_line(),
            "plain http:// receiver: no TLS material in use"
        );
    }

    #[test]
    fn over_http_only_broken_files_are_red() {
        let now = 1_800_000_000;
        let http = |f: CertFacts| CertFacts { tls: false, ..f };
        // Expired leaf, expired CA, another host's name: used on the wire only.
        let mut f = http(facts());
        f.cert = Loaded::Ok(
            "/c/client.pem".into(),
            info("lab2", now - 9 * DAY, now - DAY),
        );
        f.ca = Loaded::Ok(
            "/c/ca.pem".into(),
            vec![info("ca", now - 9 * DAY, now - DAY)],
        );
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Yellow, "{}", row.finding_line());
        let line = row.finding_line();
        assert!(
            line.contains(
                "client certificate [\"lab2\"] expired 1 day(s) ago (2027-01-14) (not used while receiver.url is http://)"
            ),
            "{line}"
        );
        assert!(line.contains("CA \"ca\" expired"), "{line}");
        assert!(
            line.contains("not host_id \"lab1\" (not used while"),
            "{line}"
        );
        assert!(!line.contains("will answer 403"), "{line}");
        assert!(line.contains("the shipper loads the TLS files"), "{line}");
        // The transport loads them even for http://: missing or mismatched is red.
        let mut f = http(facts());
        f.key = Loaded::Missing("/c/client.key".into());
        f.key_matches = None;
        assert_eq!(certificates_row(&f, now, &ctx()).level(), Level::Red);
        let mut f = http(facts());
        f.key_matches = Some(Err("private key does not match the certificate".into()));
        assert_eq!(certificates_row(&f, now, &ctx()).level(), Level::Red);
        // The same expired leaf over https:// is red.
        let mut f = facts();
        f.cert = Loaded::Ok(
            "/c/client.pem".into(),
            info("lab1", now - 9 * DAY, now - DAY),
        );
        assert_eq!(certificates_row(&f, now, &ctx()).level(), Level::Red);
    }

    #[test]
    fn every_certificate_of_the_client_chain_is_checked() {
        let now = 1_800_000_000;
        let mut f = facts();
        f.intermediates = vec![
            info("issuing 2025", now - 900 * DAY, now - 3 * DAY),
            info("root-signed", now - DAY, now + 5 * DAY),
        ];
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Red);
        let findings = row.findings();
        assert!(
            findings[0].starts_with(
                "intermediate certificate \"issuing 2025\" in /c/client.pem expired 3 day(s) ago"
            ),
            "{findings:?}"
        );
        assert!(
            findings[1].starts_with(
                "intermediate certificate \"root-signed\" in /c/client.pem expires in 5 day(s)"
            ),
            "{findings:?}"
        );
        assert!(row.fix_line().unwrap().contains("current intermediate"));
        // Valid intermediates say nothing of their own.
        f.intermediates = vec![info("fine", now - DAY, now + 900 * DAY)];
        let row = certificates_row(&f, now, &ctx());
        assert_eq!(row.level(), Level::Green);
        assert!(!row.finding_line().contains("intermediate"));
    }
}
