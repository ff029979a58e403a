//! How the shipper reads a receiver's answer (protocol.md, last table).
//!
//! A pure function from `(status, problem type)` to a `Class`; the shipper matches on
//! the class and never branches on raw status codes itself. A connection-level
//! failure (no response at all) is always `Class::Transient`.

use crate::problem::Slug;

/// What an answer means for the episode that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Stored (201) or already stored (200): retire the episode.
    Shipped,
    /// A different archive is stored under the key: leave the episode, re-check rarely.
    Conflict,
    /// The bytes arrived damaged: drop the outbox archive and pack again.
    Repack,
    /// The receiver will never take this episode as it is: quarantine it.
    Fatal,
    /// Configuration or credentials are wrong: pause all shipping, quarantine nothing.
    Hold,
    /// Try again later with backoff.
    Transient,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Shipped => "shipped",
            Class::Conflict => "conflict",
            Class::Repack => "repack",
            Class::Fatal => "fatal",
            Class::Hold => "hold",
            Class::Transient => "transient",
        }
    }
}

/// Classifies an HTTP answer to a PUT.
///
/// Beyond the table: only 201 and 200 mean "stored". Any other 2xx (204 from a
/// WebDAV server, 202, …), 1xx or 3xx means the URL does not point at a receiver
/// that stores our archives, so it holds (redirects are never followed: a PUT
/// turned into a GET elsewhere proves nothing); 5xx other than 501 is transient,
/// because a server error is never a reason to give an episode up.
pub fn classify(status: u16, problem_type: Option<&str>) -> Class {
    match status {
        200 | 201 => Class::Shipped,
        409 => Class::Conflict,
        400 => match problem_type.and_then(Slug::parse) {
            Some(Slug::DigestMismatch | Slug::LengthMismatch) => Class::Repack,
            _ => Class::Fatal,
        },
        401 | 403 | 404 | 405 | 501 => Class::Hold,
        408 | 429 | 500 | 502 | 503 | 504 | 507 => Class::Transient,
        _ if status < 400 => Class::Hold,
        _ if status < 500 => Class::Fatal,
        _ => Class::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_protocol_table() {
        let table: &[(u16, Option<&str>, Class)] = &[
            (201, None, Class::Shipped),
            (200, None, Class::Shipped),
            (409, Some("conflict"), Class::Conflict),
            (400, Some("digest-mismatch"), Class::Repack),
            (400, Some("length-mismatch"), Class::Repack),
            (400, Some("missing-code-commit"), Class::Fatal),
            (400, Some("invalid-id"), Class::Fatal),
            (400, None, Class::Fatal),
            (411, None, Class::Fatal),
            (412, Some("out-of-window"), Class::Fatal),
            (413, Some("too-large"), Class::Fatal),
            (415, None, Class::Fatal),
            (422, None, Class::Fatal),
            (418, None, Class::Fatal),
            (401, Some("unauthorized"), Class::Hold),
            (403, Some("forbidden-identity"), Class::Hold),
            (404, None, Class::Hold),
            (405, None, Class::Hold),
            (501, None, Class::Hold),
            (301, None, Class::Hold),
            (302, None, Class::Hold),
            (303, None, Class::Hold),
            (307, None, Class::Hold),
            (308, None, Class::Hold),
            (202, None, Class::Hold),
            (203, None, Class::Hold),
            (204, None, Class::Hold),
            (206, None, Class::Hold),
            (100, None, Class::Hold),
            (408, Some("body-timeout"), Class::Transient),
            (429, Some("too-many-uploads"), Class::Transient),
            (500, Some("internal"), Class::Transient),
            (502, None, Class::Transient),
            (503, None, Class::Transient),
            (504, None, Class::Transient),
            (507, Some("insufficient-storage"), Class::Transient),
        ];
        for &(status, problem, want) in table {
            assert_eq!(classify(status, problem), want, "{status} {problem:?}");
        }
    }

    #[test]
    fn the_edges_never_lose_an_episode() {
        // A repack slug on a status other than 400 is not a repack.
        assert_eq!(classify(409, Some("digest-mismatch")), Class::Conflict);
        assert_eq!(classify(500, Some("digest-mismatch")), Class::Transient);
        // Unknown server errors are retried, never quarantined.
        for status in [505, 506, 508, 511, 599] {
            assert_eq!(classify(status, None), Class::Transient, "{status}");
        }
        // Only 201 and 200 mean stored: a WebDAV server's 204 stores nothing of ours.
        for status in [202, 204, 205, 207, 226, 299] {
            assert_eq!(classify(status, None), Class::Hold, "{status}");
        }
    }
}
