//! RFC 9457 problem details: the error body of every 4xx/5xx.
//!
//! Owns the closed set of problem slugs, each with its status code and title, so the
//! receiver cannot answer a slug with the wrong status and the shipper can match on
//! a slug instead of a string.

use serde::{Deserialize, Serialize};

/// The media type of a problem body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

macro_rules! slugs {
    ($($variant:ident = ($slug:literal, $status:literal, $title:literal)),* $(,)?) => {
        /// The `type` of a problem body.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Slug { $($variant),* }

        impl Slug {
            pub const ALL: &'static [Slug] = &[$(Slug::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Slug::$variant => $slug),* }
            }

            /// The status code this problem is always answered with.
            pub fn status(self) -> u16 {
                match self { $(Slug::$variant => $status),* }
            }

            pub fn title(self) -> &'static str {
                match self { $(Slug::$variant => $title),* }
            }

            pub fn parse(s: &str) -> Option<Slug> {
                match s { $($slug => Some(Slug::$variant),)* _ => None }
            }
        }
    };
}

slugs! {
    Unauthorized = ("unauthorized", 401, "Missing or wrong bearer token"),
    ForbiddenIdentity = ("forbidden-identity", 403, "Client identity does not match the host"),
    InvalidId = ("invalid-id", 400, "Invalid host or episode id"),
    LengthRequired = ("length-required", 411, "Content-Length is required"),
    MissingDigest = ("missing-digest", 400, "Repr-Digest is required"),
    BadDigestHeader = ("bad-digest-header", 400, "Malformed digest header"),
    MissingCodeCommit = ("missing-code-commit", 400, "X-Code-Commit is required"),
    MissingStartedAt = ("missing-started-at", 400, "X-Episode-Started-At is required"),
    UnsupportedMediaType = ("unsupported-media-type", 415, "Unsupported Content-Type"),
    OutOfWindow = ("out-of-window", 412, "Episode start time outside the acceptance window"),
    TooLarge = ("too-large", 413, "Episode archive too large"),
    InsufficientStorage = ("insufficient-storage", 507, "Not enough free space on the receiver"),
    TooManyUploads = ("too-many-uploads", 429, "Too many concurrent uploads"),
    Conflict = ("conflict", 409, "A different archive is already stored under this key"),
    LengthMismatch = ("length-mismatch", 400, "Body length differs from Content-Length"),
    DigestMismatch = ("digest-mismatch", 400, "Body sha256 differs from Repr-Digest"),
    BodyTimeout = ("body-timeout", 408, "Request body stalled"),
    NotFound = ("not-found", 404, "Not found"),
    MethodNotAllowed = ("method-not-allowed", 405, "Method not allowed"),
    Unavailable = ("unavailable", 503, "Receiver unavailable"),
    BadRequest = ("bad-request", 400, "Malformed HTTP request"),
    UriTooLong = ("uri-too-long", 414, "Request target too long"),
    HeadersTooLarge = ("headers-too-large", 431, "Request header fields too large"),
    Internal = ("internal", 500, "Internal error"),
}

impl std::fmt::Display for Slug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem+json body. `type` is the bare slug (protocol.md), not a URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub slug: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
    /// Machine-readable extras (e.g. the stored sha256 of a conflict, the size limit).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(slug: Slug, detail: impl Into<String>) -> Self {
        Self {
            slug: slug.as_str().to_owned(),
            title: slug.title().to_owned(),
            status: slug.status(),
            detail: detail.into(),
            remediation: None,
            extra: serde_json::Map::new(),
        }
    }

    pub fn remediation(mut self, text: impl Into<String>) -> Self {
        self.remediation = Some(text.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Reads a problem body leniently, as a client must: `type` (a string) is all it
    /// needs; `title`, `status` and `detail` are taken when present and of the right
    /// shape, else left empty (0 for `status`); every other member goes to `extra`.
    /// `None` when the value is not an object with a string `type`. (Deserializing
    /// `Problem` itself is strict: the receiver always sends all four.)
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        let object = value.as_object()?;
        let slug = object.get("type")?.as_str()?.to_owned();
        let text = |key: &str| {
            object
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let status = object
            .get("status")
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let remediation = object
            .get("remediation")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let extra = object
            .iter()
            .filter(|(k, _)| {
                !["type", "title", "status", "detail", "remediation"].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Self {
            slug,
            title: text("title"),
            status,
            detail: text("detail"),
            remediation,
            extra,
        })
    }

    /// The slug, when it is one we know.
    pub fn known_slug(&self) -> Option<Slug> {
        Slug::parse(&self.slug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slug_round_trips_and_has_an_error_status() {
        for &slug in Slug::ALL {
            assert_eq!(Slug::parse(slug.as_str()), Some(slug));
            assert!((400..600).contains(&slug.status()), "{slug}");
        }
        assert_eq!(Slug::parse("nope"), None);
    }

    #[test]
    fn the_slugs_are_protocol_mds_closed_list() {
        // protocol.md "Errors", plus the ones it names no slug for (404, 405, 503,
        // and the receiver's answers to requests HTTP/1.1 cannot parse).
        let spec = [
            "unauthorized",
            "forbidden-identity",
            "invalid-id",
            "length-required",
            "missing-digest",
            "bad-digest-header",
            "missing-code-commit",
            "missing-started-at",
            "unsupported-media-type",
            "out-of-window",
            "too-large",
            "insufficient-storage",
            "too-many-uploads",
            "conflict",
            "length-mismatch",
            "digest-mismatch",
            "body-timeout",
            "internal",
        ];
        let unnamed = [
            ("not-found", 404),
            ("method-not-allowed", 405),
            ("unavailable", 503),
            ("bad-request", 400),
            ("uri-too-long", 414),
            ("headers-too-large", 431),
        ];
        let mut ours: Vec<&str> = Slug::ALL.iter().map(|s| s.as_str()).collect();
        let mut want: Vec<&str> = spec
            .iter()
            .copied()
            .chain(unnamed.iter().map(|u| u.0))
            .collect();
        ours.sort_unstable();
        want.sort_unstable();
        assert_eq!(ours, want);
        for (slug, status) in unnamed {
            assert_eq!(Slug::parse(slug).map(Slug::status), Some(status));
        }
    }

    #[test]
    fn problem_serializes_with_type_and_extras() {
        let p = Problem::new(Slug::Conflict, "stored archive differs")
            .remediation("pick a new episode id")
            .with("stored_sha256", "ab");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "conflict");
        assert_eq!(v["status"], 409);
        assert_eq!(v["stored_sha256"], "ab");
        assert_eq!(v["remediation"], "pick a new episode id");
        let back: Problem = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, p);
        assert_eq!(Problem::from_json(&v), Some(p));
    }

    #[test]
    fn a_client_reads_the_type_on_its_own() {
        // A proxy or another implementation may send `type` alone.
        let p = Problem::from_json(&serde_json::json!({"type": "digest-mismatch"})).unwrap();
        assert_eq!(p.known_slug(), Some(Slug::DigestMismatch));
        assert_eq!((p.title.as_str(), p.status, p.detail.as_str()), ("", 0, ""));
        let p = Problem::from_json(&serde_json::json!({
            "type": "too-large", "status": "413", "detail": 7, "max_bytes": 10
        }))
        .unwrap();
        assert_eq!(
            (p.slug.as_str(), p.status, p.detail.as_str()),
            ("too-large", 0, "")
        );
        assert_eq!(p.extra["max_bytes"], 10);
        for not_a_problem in [
            serde_json::json!({"title": "x", "status": 400, "detail": "y"}),
            serde_json::json!({"type": 400}),
            serde_json::json!(["type"]),
            serde_json::json!("digest-mismatch"),
        ] {
            assert_eq!(Problem::from_json(&not_a_problem), None, "{not_a_problem}");
        }
    }
}
