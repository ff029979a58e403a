//! `ApiError`, every answer that is not a success, and `Refusal`, the one a client
//! is told about (a 4xx, 429, 503, 507); both become problem+json here and only
//! here, and a failure of the receiver's own is logged here, once.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use episode_common::Event;
use episode_common::problem::{PROBLEM_CONTENT_TYPE, Slug};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

/// A request refused for a reason the client is told: its slug (which fixes the
/// status and title), a detail, and the remediation and extras protocol.md names.
/// Not an error of the receiver's: never logged as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub slug: Slug,
    pub detail: Cow<'static, str>,
    pub remediation: Option<Cow<'static, str>>,
    /// Machine-readable extras (the stored sha256 of a conflict, the size limit).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Refusal {
    pub fn new(slug: Slug, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            slug,
            detail: detail.into(),
            remediation: None,
            extra: serde_json::Map::new(),
        }
    }

    pub fn remediation(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        self.remediation = Some(text.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The problem+json body (the same members, in the same order, as
    /// `episode_common::Problem`).
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            slug: &'static str,
            title: &'static str,
            status: u16,
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            remediation: Option<&'a str>,
            #[serde(flatten)]
            extra: &'a serde_json::Map<String, serde_json::Value>,
        }
        serde_json::to_vec(&Body {
            slug: self.slug.as_str(),
            title: self.slug.title(),
            status: self.slug.status(),
            detail: &self.detail,
            remediation: self.remediation.as_deref(),
            extra: &self.extra,
        })
        .unwrap_or_default()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.slug, self.detail)
    }
}

impl IntoResponse for Refusal {
    /// The problem+json answer, with the headers its slug calls for
    /// (`WWW-Authenticate`, `Retry-After`) and its type for the metrics.
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.slug.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.to_json()).into_response();
        response
            .extensions_mut()
            .insert(crate::metrics::ProblemType(self.slug.as_str()));
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        let retry_after = match self.slug {
            Slug::Unauthorized => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                None
            }
            Slug::TooManyUploads => Some("1"),
            Slug::Unavailable => Some("5"),
            Slug::InsufficientStorage => Some("60"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

/// Every answer that is not a success, one variant per kind of cause.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client is told why (4xx, 429, 503, 507); not logged as an error.
    #[error("{0}")]
    Refused(Refusal),
    /// Storing an upload failed at `what`: a full disk is a 507 (`disk_full`, a
    /// warning), anything else a 500 like `Internal`.
    #[error("{what}")]
    Storage {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The receiver failed at `what`: a 500 with a generic body, the cause logged
    /// once (`storage_failed`) and never shown to the client.
    #[error("{what}")]
    Internal {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Refused(refusal) => refusal.into_response(),
            ApiError::Storage { what, source } if episode_common::fsx::is_no_space(&source) => {
                tracing::warn!(event = %Event::DiskFull, error = %source, "{what}");
                Refusal::new(Slug::InsufficientStorage, "the receiver's disk is full")
                    .remediation("free space on the receiver's store")
                    .into_response()
            }
            ApiError::Storage { what, source } => internal(what, &source),
            ApiError::Internal { what, source } => internal(what, &*source),
        }
    }
}

/// The 500 of a failure of the receiver's own, its cause logged once.
fn internal(what: &str, source: &dyn std::error::Error) -> Response {
    tracing::error!(event = %Event::StorageFailed, error = %source, "{what}");
    Refusal::new(
        Slug::Internal,
        "the receiver failed to store the upload; it is safe to retry",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use episode_common::Problem;

    use super::*;

    #[test]
    fn a_refusal_is_the_same_problem_body_the_wire_type_reads() {
        let refusal = Refusal::new(Slug::Conflict, "stored archive differs")
            .remediation("pick a new episode id")
            .with("stored_sha256", "ab")
            .with("stored_bytes", 7);
        let problem = Problem::new(Slug::Conflict, "stored archive differs")
            .remediation("pick a new episode id")
            .with("stored_sha256", "ab")
            .with("stored_bytes", 7);
        assert_eq!(
            refusal.to_json(),
            serde_json::to_vec(&problem).unwrap(),
            "the same bytes"
        );
        let plain = Refusal::new(Slug::TooManyUploads, "busy");
        assert_eq!(
            plain.to_json(),
            serde_json::to_vec(&Problem::new(Slug::TooManyUploads, "busy")).unwrap()
        );
    }

    #[test]
    fn failures_of_our_own_answer_with_a_generic_500_and_a_full_disk_with_507() {
        let broken = ApiError::Internal {
            what: "publish",
            source: "an existing entry vanished".into(),
        }
        .into_response();
        assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let full = ApiError::Storage {
            what: "writing an upload",
            source: std::io::Error::from_raw_os_error(28),
        }
        .into_response();
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.headers()[http::header::RETRY_AFTER], "60");
        let io = ApiError::Storage {
            what: "writing an upload",
            source: std::io::Error::other("EIO"),
        }
        .into_response();
        assert_eq!(io.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            io.extensions()
                .get::<crate::metrics::ProblemType>()
                .map(|p| p.0),
            Some("internal")
        );
    }
}
