//! The receiver row: `GET /v1/health` over the shipper's own transport.
//!
//! `probe` calls `episode_shipper::transport::Transport::health` (same TLS setup,
//! credentials, token and headers as the daemon: no second HTTP client) under a
//! deadline and times it; `receiver_row` judges the answer (pure), saying how
//! long every answer took: 200 is green (yellow when the receiver's clock and
//! ours differ by more than a minute, the usual cause of 412s); 401/403/404 are
//! red with the credential or URL fix; 408/429/5xx are yellow (the shipper
//! retries by itself); no answer is red with the transport's own words. Sends
//! nothing but the health request.

use std::time::{Duration, Instant};

use episode_common::wire::HealthBody;
use episode_shipper::config::Config;
use episode_shipper::transport::{Failure, Transport};

use crate::fixes::{self, Context};
use crate::report::{Check, Level, Row};

/// Clock difference with the receiver beyond which the row turns yellow.
pub const MAX_SKEW_SECS: i64 = 60;

/// What the health request gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Answer {
        status: u16,
        /// The transport's one-line description (problem detail or status).
        error: String,
        latency_ms: u64,
        version: Option<String>,
        /// The receiver's clock minus ours, in seconds, when it said.
        skew_secs: Option<i64>,
        /// The receiver's reason for a 503.
        reason: Option<String>,
    },
    Failure {
        failure: Failure,
        latency_ms: u64,
    },
    TimedOut(Duration),
}

/// The deadline for the whole request: the connect timeout plus a margin, at most 30 s.
pub fn deadline(config: &Config) -> Duration {
    (config.receiver.connect_timeout.get() + Duration::from_secs(5)).min(Duration::from_secs(30))
}

/// Sends `GET /v1/health` with the shipper's transport.
pub async fn probe(config: &Config) -> Health {
    let transport = Transport::new(config);
    let limit = deadline(config);
    let start = Instant::now();
    let answer = tokio::time::timeout(limit, transport.health()).await;
    let latency_ms = start.elapsed().as_millis() as u64;
    match answer {
        Err(_) => Health::TimedOut(limit),
        Ok(Err(failure)) => Health::Failure {
            failure,
            latency_ms,
        },
        Ok(Ok(answer)) => {
            let body: Option<HealthBody> = serde_json::from_value(answer.body.clone()).ok();
            let now = time::OffsetDateTime::now_utc();
            let skew_secs = body
                .as_ref()
                .and_then(|b| episode_common::wire::parse_started_at(&b.server_time).ok())
                .map(|server| (server - now).whole_seconds());
            Health::Answer {
                status: answer.status,
                error: answer.error(),
                latency_ms,
                version: body.as_ref().map(|b| b.version.clone()),
                skew_secs,
                reason: body.and_then(|b| b.reason),
            }
        }
    }
}

/// The receiver row for `url` (the base URL).
pub fn receiver_row(health: &Health, url: &str, ctx: &Context) -> Row {
    let mut row = Row::new(Check::Receiver);
    let endpoint = format!("{url}/v1/health");
    let reach = format!(
        "check that the receiver runs and that this host reaches {url} (receiver.url, DNS, firewall), then {}",
        ctx.shipper("ping")
    );
    match health {
        Health::TimedOut(after) => {
            row.note(
                Level::Red,
                format!("no answer from {endpoint} within {}s", after.as_secs()),
            );
            row.fix(Level::Red, reach);
        }
        Health::Failure {
            failure,
            latency_ms,
        } => match failure {
            Failure::Material(m) if m.contains("Permission denied") => {
                row.note(
                    Level::Yellow,
                    format!("not tested: this user cannot read the TLS material ({m})"),
                );
                row.fix(Level::Yellow, fixes::permission());
            }
            Failure::Material(m) => {
                row.note(Level::Red, format!("cannot connect: {m}"));
                row.fix(
                    Level::Red,
                    format!(
                        "install or fix the file it names (see the certificates and config rows); the shipper picks it up without a restart, then {}",
                        ctx.shipper("ping")
                    ),
                );
            }
            Failure::Connection(m) | Failure::Stalled(m) | Failure::Local(m) => {
                row.note(
                    Level::Red,
                    format!("unreachable after {latency_ms} ms: {m}"),
                );
                if m.starts_with("TLS:") {
                    row.fix(
                        Level::Red,
                        "the TLS handshake failed: check receiver.ca_bundle against the receiver's certificate, and the client certificate (certificates row)",
                    );
                }
                row.fix(Level::Red, reach);
            }
        },
        Health::Answer {
            status,
            error,
            latency_ms,
            version,
            skew_secs,
            reason,
        } => {
            let status = *status;
            let said = if error.is_empty() {
                status.to_string()
            } else {
                error.clone()
            };
            match status {
                200 => {
                    let version = version
                        .as_deref()
                        .map(|v| format!(" (receiver {v})"))
                        .unwrap_or_default();
                    row.note(
                        Level::Green,
                        format!("200 from {endpoint} in {latency_ms} ms{version}"),
                    );
                    if let Some(skew) = skew_secs.filter(|s| s.abs() > MAX_SKEW_SECS) {
                        let side = if skew > 0 { "behind" } else { "ahead of" };
                        row.note(
                            Level::Yellow,
                            format!("this host's clock is {}s {side} the receiver's", skew.abs()),
                        );
                        row.fix(
                            Level::Yellow,
                            "check the clock with `timedatectl` (NTP synchronized?): a wrong clock gets episodes rejected as out-of-window (412)",
                        );
                    }
                }
                401 => {
                    row.note(
                        Level::Red,
                        format!("{said} from {endpoint} in {latency_ms} ms"),
                    );
                    row.fix(Level::Red, fixes::unauthorized(ctx));
                }
                403 => {
                    row.note(
                        Level::Red,
                        format!("{said} from {endpoint} in {latency_ms} ms"),
                    );
                    row.fix(Level::Red, fixes::forbidden(ctx));
                }
                408 | 429 | 500 | 502..=599 => {
                    let reason = reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    row.note(
                        Level::Yellow,
                        format!("{said}{reason} from {endpoint} in {latency_ms} ms: the receiver is up but not accepting now"),
                    );
                    row.fix(Level::Yellow, fixes::transient(ctx));
                }
                _ => {
                    row.note(
                        Level::Red,
                        format!("{said} from {endpoint} in {latency_ms} ms"),
                    );
                    row.fix(Level::Red, fixes::misdirected(ctx));
                }
            }
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, error: &str, skew: Option<i64>) -> Health {
        Health::Answer {
            status,
            error: error.into(),
            latency_ms: 3,
            version: Some("0.1.0".into()),
            skew_secs: skew,
            reason: None,
        }
    }

    fn ctx() -> Context {
        Context {
            config_path: episode_shipper::config::DEFAULT_PATH.into(),
            host_id: Some("lab1".into()),
            bearer_token_file: Some("/etc/t".into()),
            ..Context::default()
        }
    }

    #[test]
    fn judges_the_health_answer() {
        let url = "https://r:8443";
        let row = receiver_row(&answer(200, "", Some(1)), url, &ctx());
        assert_eq!(row.level(), Level::Green);
        assert_eq!(
            row.finding_line(),
            "200 from https://r:8443/v1/health in 3 ms (receiver 0.1.0)"
        );
        let row = receiver_row(&answer(200, "", Some(-600)), url, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert!(row.finding_line().contains("600s ahead of"));
        assert!(row.fix_line().unwrap().contains("timedatectl"));
        let row = receiver_row(
            &answer(401, "401 unauthorized: no token", None),
            url,
            &ctx(),
        );
        assert_eq!(row.level(), Level::Red);
        assert!(row.fix_line().unwrap().contains("/etc/t"));
        let row = receiver_row(&answer(403, "403 forbidden-identity: x", None), url, &ctx());
        assert!(row.fix_line().unwrap().contains("host_id \"lab1\""));
        assert!(
            row.finding_line().ends_with(" in 3 ms"),
            "{}",
            row.finding_line()
        );
        let row = receiver_row(&answer(404, "HTTP 404", None), url, &ctx());
        assert_eq!(row.level(), Level::Red);
        assert!(row.fix_line().unwrap().contains("receiver.url (?)"));
        assert_eq!(
            receiver_row(
                &answer(401, "401 unauthorized: no token", None),
                url,
                &ctx()
            )
            .finding_line(),
            "401 unauthorized: no token from https://r:8443/v1/health in 3 ms"
        );
        assert_eq!(
            row.finding_line(),
            "HTTP 404 from https://r:8443/v1/health in 3 ms"
        );
        let row = receiver_row(&answer(503, "HTTP 503", None), url, &ctx());
        assert_eq!(row.level(), Level::Yellow);
        assert_eq!(
            row.finding_line(),
            "HTTP 503 from https://r:8443/v1/health in 3 ms: the receiver is up but not accepting now"
        );
        assert!(row.fix_line().unwrap().contains("`episode-shipper ping`"));
        let row = receiver_row(&answer(501, "HTTP 501", None), url, &ctx());
        assert_eq!(row.level(), Level::Red);
    }

    #[test]
    fn failures_quote_the_transport() {
        let url = "https://127.0.0.1:1";
        let row = receiver_row(
            &Health::Failure {
                failure: Failure::Connection("error sending request: Connection refused".into()),
                latency_ms: 1,
            },
            url,
            &ctx(),
        );
        assert_eq!(row.level(), Level::Red);
        assert!(row.finding_line().contains("Connection refused"));
        assert!(row.fix_line().unwrap().contains("`episode-shipper ping`"));
        let row = receiver_row(
            &Health::Failure {
                failure: Failure::Material(
                    "mTLS material missing: receiver.client_cert /c.pem does not exist (yet)"
                        .into(),
                ),
                latency_ms: 0,
            },
            url,
            &ctx(),
        );
        assert_eq!(row.level(), Level::Red);
        assert!(row.finding_line().contains("mTLS material missing"));
        let row = receiver_row(
            &Health::Failure {
                failure: Failure::Material(
                    "mTLS material missing: receiver.client_key: cannot read /k: Permission denied (os error 13)".into(),
                ),
                latency_ms: 0,
            },
            url,
            &ctx(),
        );
        assert_eq!(row.level(), Level::Yellow);
        assert_eq!(
            receiver_row(&Health::TimedOut(Duration::from_secs(15)), url, &ctx()).level(),
            Level::Red
        );
    }
}
