//! The receiver's decisions before it reads a body (protocol.md steps 1–3).
//!
//! Pure functions over plain values: the request's headers, the caller's identity,
//! the configured limits, `now`, the free bytes and the stored entry are all passed
//! in. The route handler calls them in protocol order (authenticate, bind identity,
//! validate, admit, dedupe) and only acts on their answers; nothing here touches the
//! clock, the disk or the network.

use std::time::Duration;

use episode_common::problem::Slug;
use episode_common::wire::{self, header, parse_started_at};
use episode_common::{ByteSize, Dur, EpisodeId, HostId, Sha256};
use http::HeaderMap;
use time::OffsetDateTime;

use crate::error::Refusal;
use crate::index::Entry;

/// Who is calling, as the TLS layer established it. Absent without mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's DNS SANs and subject CN.
    pub names: Vec<String>,
    /// What the index records as `client`.
    pub primary: Option<String>,
}

/// Step 1a: the bearer token, compared in constant time.
pub fn authenticate(authorization: Option<&str>, token: Option<&str>) -> Result<(), Refusal> {
    let Some(expected) = token else {
        return Ok(());
    };
    let presented = authorization.and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match presented {
        None => Err(Refusal::new(Slug::Unauthorized, "this receiver requires `Authorization: Bearer <token>`")
            .remediation("set receiver.bearer_token_file in the shipper config to a file holding the receiver's token")),
        Some(given) if constant_time_eq(given, expected) => Ok(()),
        Some(_) => Err(Refusal::new(Slug::Unauthorized, "the bearer token does not match")
            .remediation("make the shipper's receiver.bearer_token_file hold the receiver's current token")),
    }
}

/// Equal-time comparison: both sides are hashed first so neither content nor length
/// leaks through timing.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::of(a.as_bytes()).0, Sha256::of(b.as_bytes()).0);
    let diff = x
        .iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q));
    std::hint::black_box(diff) == 0
}

/// Step 1b: a host named in the path or in `X-Host-Id` must be one of the caller's
/// certificate identities; without mTLS, `X-Host-Id` must at least agree with the path.
pub fn bind_identity(
    peer: Option<&PeerIdentity>,
    path_host: Option<&str>,
    x_host_id: Option<&str>,
) -> Result<(), Refusal> {
    let named = path_host.into_iter().chain(x_host_id);
    if let Some(peer) = peer {
        for host in named {
            // Exact: the store is case-sensitive, so `LAB1` is another host than
            // `lab1` (its own directory, its own upload slots), whatever DNS says.
            if !peer.names.iter().any(|n| n == host) {
                return Err(Refusal::new(
                    Slug::ForbiddenIdentity,
                    format!("client certificate identities {:?} do not include host {host:?}", peer.names),
                )
                .remediation(
                    "give the host a client certificate whose CN or DNS SAN is its host_id, or fix host_id in shipper.toml",
                ));
            }
        }
    } else if let (Some(path_host), Some(x_host_id)) = (path_host, x_host_id)
        && path_host != x_host_id
    {
        return Err(Refusal::new(
            Slug::ForbiddenIdentity,
            format!("X-Host-Id {x_host_id:?} does not match the host {path_host:?} in the path"),
        ));
    }
    Ok(())
}

/// Step 1b, first: a request names its host in `X-Host-Id` at most once; with two
/// fields, which one speaks for the caller would be a guess (400 `invalid-id`).
pub fn one_host_id_header(n_fields: usize) -> Result<(), Refusal> {
    match n_fields {
        0 | 1 => Ok(()),
        n => Err(Refusal::new(
            Slug::InvalidId,
            format!("X-Host-Id appears {n} times; send it once"),
        )),
    }
}

/// Step 1c: ids, before any filesystem call.
pub fn parse_ids(host_id: &str, episode_id: &str) -> Result<(HostId, EpisodeId), Refusal> {
    let host = HostId::new(host_id).map_err(|e| Refusal::new(Slug::InvalidId, e.to_string()))?;
    let episode =
        EpisodeId::new(episode_id).map_err(|e| Refusal::new(Slug::InvalidId, e.to_string()))?;
    Ok((host, episode))
}

/// A `/v1/*` path no route matched (after authentication): under `/v1/episodes`
/// anything but exactly `{host_id}/{episode_id}` is an invalid id (400), anything
/// else is not found (404).
pub fn unrouted_v1(path: &str) -> Refusal {
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    if rest == "/episodes" || rest.starts_with("/episodes/") {
        return Refusal::new(
            Slug::InvalidId,
            "an episode path is /v1/episodes/{host_id}/{episode_id}, each id one path segment",
        );
    }
    Refusal::new(Slug::NotFound, "no such route")
}

/// A PUT's headers, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutHeaders {
    pub content_length: u64,
    pub sha256: Sha256,
    pub tar_sha256: Option<Sha256>,
    pub code_commit: Option<String>,
    pub started_at: Option<OffsetDateTime>,
}

/// All field lines of a list-valued digest header, joined as HTTP combines them.
fn joined(headers: &HeaderMap, name: &str) -> Result<Option<String>, Refusal> {
    let mut values = Vec::new();
    for v in headers.get_all(name) {
        let v = v
            .to_str()
            .map_err(|_| not_ascii(Slug::BadDigestHeader, name))?;
        values.push(v.trim());
    }
    let joined = values.join(", ");
    Ok(Some(joined).filter(|s| !s.trim_matches([',', ' ']).is_empty()))
}

/// A header's value, trimmed; one that is not visible ASCII is answered with
/// `slug`, the problem of that header being absent or malformed.
fn text<'a>(headers: &'a HeaderMap, name: &str, slug: Slug) -> Result<Option<&'a str>, Refusal> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| not_ascii(slug, name)),
    }
}

fn not_ascii(slug: Slug, name: &str) -> Refusal {
    Refusal::new(slug, format!("{name} is not visible ASCII"))
}

/// Whether a PUT must carry `X-Code-Commit` (the `require_code_commit` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCommit {
    Required,
    Optional,
}

/// What `X-Episode-Started-At` is for: with an acceptance window it is required
/// and checked; without one it is only recorded (a malformed one is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedAt {
    Checked,
    Recorded,
}

/// Step 1d: `Content-Length` (411), the digest (400), `X-Code-Commit` (400),
/// `X-Episode-Started-At` (400) and `Content-Type` (415), in that order.
pub fn parse_put_headers(
    headers: &HeaderMap,
    episode_id: &EpisodeId,
    code_commit_rule: CodeCommit,
    started_at_rule: StartedAt,
) -> Result<PutHeaders, Refusal> {
    let window_set = started_at_rule == StartedAt::Checked;
    let content_length = match text(
        headers,
        http::header::CONTENT_LENGTH.as_str(),
        Slug::LengthRequired,
    )? {
        None => {
            return Err(Refusal::new(
                Slug::LengthRequired,
                "send the archive with a Content-Length header",
            )
            .remediation(
                "send the exact body size in Content-Length; chunked uploads are not accepted",
            ));
        }
        Some(v) => v.parse::<u64>().map_err(|_| {
            Refusal::new(
                Slug::LengthRequired,
                format!("Content-Length {v:?} is not a number"),
            )
            .remediation("send the exact body size in bytes in Content-Length")
        })?,
    };

    let repr = joined(headers, header::REPR_DIGEST)?;
    let content = joined(headers, header::CONTENT_DIGEST)?;
    let legacy = text(headers, header::X_CONTENT_SHA256, Slug::BadDigestHeader)?;
    let bad_digest = |name: &str, e: episode_common::digest::DigestError| {
        Refusal::new(Slug::BadDigestHeader, format!("{name}: {e}"))
            .remediation("send `Repr-Digest: sha-256=:<base64 of the 32-byte sha256 of the body>:`")
    };
    let parsed_repr = repr
        .map(|v| Sha256::from_field(&v).map_err(|e| bad_digest("Repr-Digest", e)))
        .transpose()?;
    let parsed_content = content
        .map(|v| Sha256::from_field(&v).map_err(|e| bad_digest("Content-Digest", e)))
        .transpose()?;
    let sha256 = match (parsed_repr, parsed_content) {
        (Some(r), Some(c)) if r != c => {
            return Err(Refusal::new(
                Slug::BadDigestHeader,
                "Repr-Digest and Content-Digest disagree",
            ));
        }
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => match legacy {
            Some(hex) => Sha256::from_hex(hex).map_err(|e| bad_digest("X-Content-SHA256", e))?,
            None => {
                return Err(Refusal::new(Slug::MissingDigest, "the PUT carries no Repr-Digest")
                    .remediation("send `Repr-Digest: sha-256=:<base64 of the 32-byte sha256 of the body>:`"));
            }
        },
    };
    let tar_sha256 = text(headers, header::X_TAR_DIGEST, Slug::BadDigestHeader)?
        .map(|v| Sha256::from_field(v).map_err(|e| bad_digest("X-Tar-Digest", e)))
        .transpose()?;

    let code_commit =
        text(headers, header::X_CODE_COMMIT, Slug::MissingCodeCommit)?.map(str::to_owned);
    match &code_commit {
        None if code_commit_rule == CodeCommit::Required => {
            return Err(Refusal::new(Slug::MissingCodeCommit, "the PUT carries no X-Code-Commit").remediation(
                "record code_commit in the episode's meta.json (the commit of the recorder), then requeue it: \
                 episode-shipper requeue --status 400",
            ));
        }
        Some(c) if c.len() > 128 || !c.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(Refusal::new(
                Slug::MissingCodeCommit,
                "X-Code-Commit is not a commit id: it must be at most 128 visible ASCII characters",
            )
            .remediation(
                "record the recorder's commit id as code_commit in the episode's meta.json, then requeue it: \
                 episode-shipper requeue --status 400",
            ));
        }
        _ => {}
    }

    // Without a window the start time is only recorded: a malformed one is dropped.
    let started_at = match text(
        headers,
        header::X_EPISODE_STARTED_AT,
        Slug::MissingStartedAt,
    ) {
        Ok(Some(v)) => match parse_started_at(v) {
            Ok(t) => Some(t),
            Err(e) if window_set => {
                return Err(Refusal::new(
                    Slug::MissingStartedAt,
                    format!("X-Episode-Started-At {v:?} could not be parsed ({e}); send RFC 3339 or Unix seconds"),
                )
                .remediation("fix started_at in the episode's meta.json, then requeue it: episode-shipper requeue --status 400"));
            }
            Err(_) => None,
        },
        Ok(None) => wire::ulid_time(episode_id.as_str()),
        Err(problem) if window_set => return Err(problem),
        Err(_) => None,
    };
    if window_set && started_at.is_none() {
        return Err(Refusal::new(
            Slug::MissingStartedAt,
            "this receiver has an acceptance window, and the PUT carries no X-Episode-Started-At \
             (and the episode id is not a ULID)",
        )
        .remediation("record started_at in the episode's meta.json, then requeue it: episode-shipper requeue --status 400"));
    }

    // Every line counts: a second Content-Type cannot smuggle another media type in.
    for ct in headers.get_all(http::header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .map_err(|_| not_ascii(Slug::UnsupportedMediaType, "Content-Type"))?;
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // curl's `--data-binary` declares a form unless told otherwise; nobody sends
        // an archive as a real form, so that default counts as no declaration.
        let curl_default = media == "application/x-www-form-urlencoded";
        if !curl_default && !wire::ARCHIVE_CONTENT_TYPES.contains(&media.as_str()) {
            return Err(Refusal::new(
                Slug::UnsupportedMediaType,
                format!(
                    "Content-Type {ct:?} is not one of {:?}",
                    wire::ARCHIVE_CONTENT_TYPES
                ),
            )
            .remediation("send `Content-Type: application/zstd`, or none (curl: -T FILE)"));
        }
    }
    Ok(PutHeaders {
        content_length,
        sha256,
        tar_sha256,
        code_commit,
        started_at,
    })
}

/// The limits of step 2.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_episode_bytes: ByteSize,
    pub free_space_reserve: ByteSize,
    pub window: Option<(Dur, Dur)>,
}

/// Step 2 (but slots, which the caller takes next): acceptance window (412), size
/// (413) and free space (507). `free_bytes` is what is left after uploads in flight.
pub fn admit(
    put: &PutHeaders,
    limits: &Limits,
    now: OffsetDateTime,
    free_bytes: u64,
) -> Result<(), Refusal> {
    if let (Some((max_age, max_future)), Some(started)) = (limits.window, put.started_at) {
        let requeue = "check the clock on the recording host (timedatectl); once it is right, \
                       requeue: episode-shipper requeue --status 412";
        // Saturating: a window wider than the calendar accepts everything that way.
        let earliest = time::Duration::try_from(max_age.get())
            .ok()
            .and_then(|d| now.checked_sub(d));
        let latest = time::Duration::try_from(max_future.get())
            .ok()
            .and_then(|d| now.checked_add(d));
        if earliest.is_some_and(|earliest| started < earliest) {
            return Err(Refusal::new(
                Slug::OutOfWindow,
                format!(
                    "episode started at {}, {} before the receiver's clock ({}); the window accepts up to {max_age}",
                    wire::format_rfc3339(started),
                    human(now - started),
                    wire::format_rfc3339(now),
                ),
            )
            .remediation(requeue));
        }
        if latest.is_some_and(|latest| started > latest) {
            return Err(Refusal::new(
                Slug::OutOfWindow,
                format!(
                    "episode started at {}, {} after the receiver's clock ({}); the window accepts up to {max_future}",
                    wire::format_rfc3339(started),
                    human(started - now),
                    wire::format_rfc3339(now),
                ),
            )
            .remediation(requeue));
        }
    }
    let max = limits.max_episode_bytes.get();
    if put.content_length > max {
        return Err(Refusal::new(
            Slug::TooLarge,
            format!(
                "the archive is {} bytes; this receiver accepts at most {max} ({})",
                put.content_length,
                ByteSize(max)
            ),
        )
        .with("max_bytes", max)
        .remediation("raise max_episode_bytes on the receiver, or split the episode"));
    }
    let needed = put
        .content_length
        .saturating_add(limits.free_space_reserve.get());
    if free_bytes < needed {
        return Err(Refusal::new(
            Slug::InsufficientStorage,
            format!(
                "{} free, and this upload needs {} plus the {} reserve",
                ByteSize(free_bytes),
                ByteSize(put.content_length),
                limits.free_space_reserve
            ),
        )
        .remediation("free space on the receiver's store, or lower free_space_reserve"));
    }
    Ok(())
}

fn human(d: time::Duration) -> String {
    let secs = d.whole_seconds().unsigned_abs();
    episode_common::Dur(Duration::from_secs(if secs >= 86_400 {
        secs / 86_400 * 86_400
    } else {
        secs
    }))
    .to_string()
}

/// Step 3: what is already stored under the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedupe {
    /// Nothing stored: read the body.
    New,
    /// The same archive (or the same tar content) is stored: 200.
    AlreadyPresent(Entry),
    /// Something else is stored: 409.
    Conflict(Refusal),
}

pub fn dedupe(sha256: Sha256, tar_sha256: Option<Sha256>, stored: Option<Entry>) -> Dedupe {
    let Some(entry) = stored else {
        return Dedupe::New;
    };
    let same_content = tar_sha256.is_some() && entry.tar_sha256 == tar_sha256;
    if entry.sha256 == sha256 || same_content {
        return Dedupe::AlreadyPresent(entry);
    }
    let problem = Refusal::new(
        Slug::Conflict,
        format!("a different archive (sha256 {}) is already stored under this key", entry.sha256),
    )
    .with("stored_sha256", entry.sha256.to_hex())
    .with("stored_bytes", entry.bytes)
    .remediation("an episode id was reused for different data: keep both, and re-record or rename the new one");
    Dedupe::Conflict(problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ep() -> EpisodeId {
        EpisodeId::new("01EPISODE").unwrap()
    }

    fn good_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("4"));
        h.insert(
            "repr-digest",
            HeaderValue::from_str(&Sha256::of(b"data").to_field()).unwrap(),
        );
        h.insert("x-code-commit", HeaderValue::from_static("abc123"));
        h.insert(
            "x-episode-started-at",
            HeaderValue::from_static("2026-11-22T10:00:00Z"),
        );
        h.insert("content-type", HeaderValue::from_static("application/zstd"));
        h
    }

    fn slug_of<T: std::fmt::Debug>(r: Result<T, Refusal>) -> String {
        r.unwrap_err().slug.as_str().to_owned()
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(authenticate(None, None).is_ok());
        assert!(authenticate(Some("Bearer s3cret"), Some("s3cret")).is_ok());
        assert!(authenticate(Some("bearer  s3cret "), Some("s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            assert_eq!(
                slug_of(authenticate(bad, Some("s3cret"))),
                "unauthorized",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn identity_binds_path_and_header_hosts() {
        let peer = PeerIdentity {
            names: vec!["lab1.example".into(), "lab1".into()],
            primary: Some("lab1".into()),
        };
        assert!(bind_identity(Some(&peer), Some("lab1"), Some("lab1")).is_ok());
        assert!(bind_identity(Some(&peer), Some("lab1.example"), None).is_ok());
        assert_eq!(
            slug_of(bind_identity(Some(&peer), Some("lab2"), None)),
            "forbidden-identity"
        );
        assert_eq!(
            slug_of(bind_identity(Some(&peer), Some("lab1"), Some("lab2"))),
            "forbidden-identity"
        );
        assert_eq!(
            slug_of(bind_identity(Some(&peer), None, Some("lab2"))),
            "forbidden-identity"
        );
        assert!(bind_identity(None, Some("lab1"), None).is_ok());
        assert_eq!(
            slug_of(bind_identity(None, Some("lab1"), Some("lab2"))),
            "forbidden-identity"
        );
    }

    #[test]
    fn a_second_x_host_id_is_refused_not_ignored() {
        assert!(one_host_id_header(0).is_ok());
        assert!(one_host_id_header(1).is_ok());
        assert_eq!(slug_of(one_host_id_header(2)), "invalid-id");
    }

    #[test]
    fn certificate_names_match_hosts_exactly_not_ignoring_case() {
        let peer = PeerIdentity {
            names: vec!["LAB1.Example.ORG".into(), "Lab2".into()],
            primary: Some("Lab2".into()),
        };
        assert!(bind_identity(Some(&peer), Some("LAB1.Example.ORG"), None).is_ok());
        assert!(bind_identity(Some(&peer), Some("Lab2"), Some("Lab2")).is_ok());
        for (path, header) in [
            (Some("lab1.example.org"), None),
            (Some("lab2"), None),
            (Some("Lab2"), Some("LAB2")),
            (None, Some("lab2")),
        ] {
            assert_eq!(
                slug_of(bind_identity(Some(&peer), path, header)),
                "forbidden-identity",
                "{path:?} {header:?}"
            );
        }
    }

    #[test]
    fn a_window_wider_than_the_calendar_saturates_instead_of_panicking() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let huge = Dur(Duration::from_secs(u64::MAX / 4));
        let wide = Limits {
            window: Some((huge, huge)),
            ..limits()
        };
        for started in [i64::from(i32::MIN), 0, 1_000_000, i64::from(i32::MAX)] {
            assert!(
                admit(&put(10, started), &wide, now, 10_000).is_ok(),
                "{started}"
            );
        }
        // Only one side huge: the other still applies.
        let old_ok = Limits {
            window: Some((huge, Dur(Duration::from_secs(3600)))),
            ..limits()
        };
        assert!(admit(&put(10, i64::from(i32::MIN)), &old_ok, now, 10_000).is_ok());
        assert_eq!(
            slug_of(admit(&put(10, 1_000_000 + 3601), &old_ok, now, 10_000)),
            "out-of-window"
        );
    }

    #[test]
    fn unrouted_v1_paths_are_invalid_ids_under_episodes_else_not_found() {
        for path in [
            "/v1/episodes",
            "/v1/episodes/",
            "/v1/episodes/lab1",
            "/v1/episodes/lab1/",
            "/v1/episodes/lab1/E1/extra",
            "/v1/episodes/lab1/../../etc/passwd",
        ] {
            let p = unrouted_v1(path);
            assert_eq!(
                (p.slug.as_str(), p.slug.status()),
                ("invalid-id", 400),
                "{path}"
            );
        }
        for path in [
            "/v1",
            "/v1/",
            "/v1/nothing",
            "/v1/episodesX/a/b",
            "/v1/health/x",
        ] {
            let p = unrouted_v1(path);
            assert_eq!(
                (p.slug.as_str(), p.slug.status()),
                ("not-found", 404),
                "{path}"
            );
        }
    }

    #[test]
    fn a_value_that_is_not_ascii_gets_the_slug_of_its_header() {
        let cases: &[(&str, &str)] = &[
            ("content-length", "length-required"),
            ("repr-digest", "bad-digest-header"),
            ("x-tar-digest", "bad-digest-header"),
            ("x-code-commit", "missing-code-commit"),
            ("x-episode-started-at", "missing-started-at"),
            ("content-type", "unsupported-media-type"),
        ];
        for &(name, want) in cases {
            let mut h = good_headers();
            h.insert(name, HeaderValue::from_bytes(b"caf\xe9").unwrap());
            let problem =
                parse_put_headers(&h, &ep(), CodeCommit::Required, StartedAt::Checked).unwrap_err();
            assert_eq!(problem.slug.as_str(), want, "{name}");
            assert!(
                problem.detail.contains("not visible ASCII"),
                "{name}: {}",
                problem.detail
            );
        }
        // Without a window, a start time is only recorded: a bad one is dropped.
        let mut h = good_headers();
        h.insert(
            "x-episode-started-at",
            HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        assert_eq!(
            parse_put_headers(&h, &ep(), CodeCommit::Required, StartedAt::Recorded)
                .unwrap()
                .started_at,
            None
        );
        // An unparseable start time says so.
        let mut h = good_headers();
        h.insert("x-episode-started-at", HeaderValue::from_static("tuesday"));
        let problem =
            parse_put_headers(&h, &ep(), CodeCommit::Required, StartedAt::Checked).unwrap_err();
        assert!(
            problem.detail.contains("could not be parsed"),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn header_problems_come_in_protocol_order() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("content-length", None, "length-required"),
            ("content-length", Some("abc"), "length-required"),
            ("repr-digest", None, "missing-digest"),
            ("repr-digest", Some("md5=:AAAA:"), "bad-digest-header"),
            ("repr-digest", Some("sha-256=:AAAA:"), "bad-digest-header"),
            ("x-code-commit", None, "missing-code-commit"),
            ("x-code-commit", Some("has space"), "missing-code-commit"),
            ("x-episode-started-at", None, "missing-started-at"),
            (
                "x-episode-started-at",
                Some("tuesday"),
                "missing-started-at",
            ),
            ("content-type", Some("text/plain"), "unsupported-media-type"),
            ("x-tar-digest", Some("nonsense"), "bad-digest-header"),
        ];
        for &(name, value, want) in cases {
            let mut h = good_headers();
            match value {
                Some(v) => h.insert(name, HeaderValue::from_static(v)),
                None => h.remove(name),
            };
            assert_eq!(
                slug_of(parse_put_headers(
                    &h,
                    &ep(),
                    CodeCommit::Required,
                    StartedAt::Checked
                )),
                want,
                "{name}={value:?}"
            );
        }
        // Several problems at once: the earliest step wins.
        let mut h = good_headers();
        h.remove("content-length");
        h.remove("repr-digest");
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(
            slug_of(parse_put_headers(
                &h,
                &ep(),
                CodeCommit::Required,
                StartedAt::Checked
            )),
            "length-required"
        );
        let mut h = good_headers();
        h.remove("repr-digest");
        h.remove("x-code-commit");
        assert_eq!(
            slug_of(parse_put_headers(
                &h,
                &ep(),
                CodeCommit::Required,
                StartedAt::Checked
            )),
            "missing-digest"
        );
    }

    #[test]
    fn headers_accept_alternatives() {
        let mut h = good_headers();
        let field = h.remove("repr-digest").unwrap();
        h.insert("content-digest", field);
        h.remove("x-code-commit");
        h.remove("x-episode-started-at");
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let put = parse_put_headers(&h, &ep(), CodeCommit::Optional, StartedAt::Recorded).unwrap();
        assert_eq!(put.sha256, Sha256::of(b"data"));
        assert_eq!((put.code_commit, put.started_at), (None, None));
        // Legacy hex digest of the cron-script peer.
        let mut h = good_headers();
        h.remove("repr-digest");
        h.insert(
            "x-content-sha256",
            HeaderValue::from_str(&Sha256::of(b"data").to_hex()).unwrap(),
        );
        assert_eq!(
            parse_put_headers(&h, &ep(), CodeCommit::Required, StartedAt::Checked)
                .unwrap()
                .sha256,
            Sha256::of(b"data")
        );
        // A ULID id stands in for a missing start time.
        let mut h = good_headers();
        h.remove("x-episode-started-at");
        let ulid = EpisodeId::new("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        assert!(
            parse_put_headers(&h, &ulid, CodeCommit::Required, StartedAt::Checked)
                .unwrap()
                .started_at
                .is_some()
        );
        // Without a window, a malformed start time is ignored rather than fatal.
        let mut h = good_headers();
        h.insert("x-episode-started-at", HeaderValue::from_static("tuesday"));
        assert_eq!(
            parse_put_headers(&h, &ep(), CodeCommit::Required, StartedAt::Recorded)
                .unwrap()
                .started_at,
            None
        );
        // Repr-Digest and Content-Digest must agree when both are sent.
        let mut h = good_headers();
        h.insert(
            "content-digest",
            HeaderValue::from_str(&Sha256::of(b"other").to_field()).unwrap(),
        );
        assert_eq!(
            slug_of(parse_put_headers(
                &h,
                &ep(),
                CodeCommit::Required,
                StartedAt::Checked
            )),
            "bad-digest-header"
        );
    }

    fn limits() -> Limits {
        Limits {
            max_episode_bytes: ByteSize(1000),
            free_space_reserve: ByteSize(100),
            window: Some((
                Dur(Duration::from_secs(86_400)),
                Dur(Duration::from_secs(3600)),
            )),
        }
    }

    fn put(len: u64, started: i64) -> PutHeaders {
        PutHeaders {
            content_length: len,
            sha256: Sha256::of(b""),
            tar_sha256: None,
            code_commit: None,
            started_at: Some(OffsetDateTime::from_unix_timestamp(started).unwrap()),
        }
    }

    #[test]
    fn admission_checks_window_then_size_then_space() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let ok = 1_000_000;
        assert!(admit(&put(10, ok), &limits(), now, 10_000).is_ok());
        assert!(admit(&put(10, ok - 86_400), &limits(), now, 10_000).is_ok());
        assert!(admit(&put(10, ok + 3600), &limits(), now, 10_000).is_ok());
        assert_eq!(
            slug_of(admit(&put(10, ok - 86_401), &limits(), now, 10_000)),
            "out-of-window"
        );
        assert_eq!(
            slug_of(admit(&put(10, ok + 3601), &limits(), now, 10_000)),
            "out-of-window"
        );
        let too_large = admit(&put(1001, ok), &limits(), now, 10_000).unwrap_err();
        assert_eq!(
            (
                too_large.slug.as_str(),
                too_large.extra["max_bytes"].as_u64()
            ),
            ("too-large", Some(1000))
        );
        assert!(admit(&put(1000, ok), &limits(), now, 1100).is_ok());
        assert_eq!(
            slug_of(admit(&put(1000, ok), &limits(), now, 1099)),
            "insufficient-storage"
        );
        // Everything wrong at once: the window is decided first, then size.
        assert_eq!(
            slug_of(admit(&put(5000, 0), &limits(), now, 0)),
            "out-of-window"
        );
        assert_eq!(
            slug_of(admit(&put(5000, ok), &limits(), now, 0)),
            "too-large"
        );
    }

    #[test]
    fn dedupe_matches_on_archive_or_tar_digest() {
        let entry = Entry {
            sha256: Sha256::of(b"a"),
            tar_sha256: Some(Sha256::of(b"tar")),
            bytes: 1,
            received_at: 0,
            code_commit: None,
        };
        assert_eq!(dedupe(Sha256::of(b"a"), None, None), Dedupe::New);
        assert_eq!(
            dedupe(Sha256::of(b"a"), None, Some(entry.clone())),
            Dedupe::AlreadyPresent(entry.clone())
        );
        assert_eq!(
            dedupe(
                Sha256::of(b"b"),
                Some(Sha256::of(b"tar")),
                Some(entry.clone())
            ),
            Dedupe::AlreadyPresent(entry.clone())
        );
        let Dedupe::Conflict(p) = dedupe(
            Sha256::of(b"b"),
            Some(Sha256::of(b"x")),
            Some(entry.clone()),
        ) else {
            panic!("expected a conflict");
        };
        assert_eq!(p.extra["stored_sha256"], Sha256::of(b"a").to_hex());
        let no_tar = Entry {
            tar_sha256: None,
            ..entry
        };
        assert!(matches!(
            dedupe(Sha256::of(b"b"), None, Some(no_tar)),
            Dedupe::Conflict(_)
        ));
    }
}
