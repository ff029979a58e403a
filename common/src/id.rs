//! Host and episode identifiers.
//!
//! Owns the one validation rule for ids that reach a filesystem path. A `HostId` or
//! `EpisodeId` can only be built by validating, so any path made from one is a single,
//! safe component: no separators, no `..`, no leading dot, bounded length.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} must start with a letter or digit")]
    BadStart { kind: &'static str },
    #[error("{kind} may contain only letters, digits, '.', '_' and '-'")]
    BadChar { kind: &'static str },
    #[error("{kind} must not contain '..'")]
    DotDot { kind: &'static str },
}

fn validate(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(IdError::Empty { kind });
    };
    if bytes.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadStart { kind });
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdError::BadChar { kind });
    }
    if s.contains("..") {
        return Err(IdError::DotDot { kind });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// The longest id accepted.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate($kind, s, $max)?;
                Ok(Self(s.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Lets maps keyed by ids be searched with a `&str` (same hash and equality).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&*self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A lab host: `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, no `..`.
    HostId,
    "host_id",
    64
);
id_type!(
    /// An episode: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, no `..` (ULIDs in practice).
    EpisodeId,
    "episode_id",
    128
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ulids_and_test_ids() {
        for ok in [
            "01EPISODE",
            "01J9Z8XK4T5V6W7X8Y9Z0A1B2C",
            "lab1",
            "a",
            "a.b_c-d",
            "A9",
        ] {
            assert!(EpisodeId::new(ok).is_ok(), "{ok}");
        }
        assert!(HostId::new(&"h".repeat(64)).is_ok());
        assert!(EpisodeId::new(&"e".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_everything_that_could_escape_a_directory() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty { kind: "episode_id" }),
            ("..", IdError::BadStart { kind: "episode_id" }),
            (".hidden", IdError::BadStart { kind: "episode_id" }),
            ("-x", IdError::BadStart { kind: "episode_id" }),
            ("a/b", IdError::BadChar { kind: "episode_id" }),
            ("a\\b", IdError::BadChar { kind: "episode_id" }),
            ("a b", IdError::BadChar { kind: "episode_id" }),
            ("a%2f", IdError::BadChar { kind: "episode_id" }),
            ("é", IdError::BadStart { kind: "episode_id" }),
            ("a\0", IdError::BadChar { kind: "episode_id" }),
            ("a..b", IdError::DotDot { kind: "episode_id" }),
            ("ab..", IdError::DotDot { kind: "episode_id" }),
        ];
        for (input, want) in cases {
            assert_eq!(EpisodeId::new(input).unwrap_err(), *want, "{input:?}");
        }
        assert_eq!(
            HostId::new(&"h".repeat(65)).unwrap_err(),
            IdError::TooLong {
                kind: "host_id",
                max: 64
            }
        );
        assert_eq!(
            EpisodeId::new(&"e".repeat(129)).unwrap_err(),
            IdError::TooLong {
                kind: "episode_id",
                max: 128
            }
        );
    }

    #[test]
    fn deserializing_validates() {
        let ok: HostId = serde_json::from_str("\"lab1\"").unwrap();
        assert_eq!(ok.as_str(), "lab1");
        let err = serde_json::from_str::<HostId>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("host_id"), "{err}");
    }
}
