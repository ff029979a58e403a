//! SHA-256 digests and their HTTP field forms.
//!
//! Owns `Sha256`, the one digest type on both sides, and the RFC 9530 field syntax
//! (`sha-256=:<base64>:`, a structured-field dictionary that may list other
//! algorithms too). Hashing itself is done by callers with `sha2`; this module only
//! names, parses and formats digests.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

/// Why a digest field or hex string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("no sha-256 member (expected `sha-256=:<base64>:`)")]
    NoSha256,
    #[error("the sha-256 value is not a byte sequence `:<base64>:`")]
    NotByteSequence,
    #[error("the sha-256 value is not valid base64")]
    BadBase64,
    #[error("the sha-256 value decodes to {0} bytes, not 32")]
    WrongLength(usize),
    #[error("not 64 hex digits")]
    BadHex,
    #[error("more than one sha-256 value, and they differ")]
    Ambiguous,
}

impl Sha256 {
    /// The digest of `bytes` (a convenience for small inputs and tests).
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// Lowercase hex, the form in JSON bodies and the index.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, DigestError> {
        // Table-driven: the receiver decodes two of these per index row at start-up.
        const fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => 0xff,
            }
        }
        const TABLE: [u8; 256] = {
            let mut t = [0xffu8; 256];
            let mut i = 0;
            while i < 256 {
                t[i] = nibble(i as u8);
                i += 1;
            }
            t
        };
        let bytes = s.trim().as_bytes();
        if bytes.len() != 64 {
            return Err(DigestError::BadHex);
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
            if (hi | lo) & 0xf0 != 0 {
                return Err(DigestError::BadHex);
            }
            *o = hi << 4 | lo;
        }
        Ok(Self(out))
    }

    /// The RFC 9530 field value: `sha-256=:<base64>:`.
    pub fn to_field(&self) -> String {
        format!("sha-256=:{}:", BASE64.encode(self.0))
    }

    /// Reads the `sha-256` member of an RFC 9530 `Repr-Digest`/`Content-Digest` value,
    /// ignoring other algorithms and member parameters. Repeated field lines arrive
    /// joined by commas; repeated `sha-256` members must agree.
    pub fn from_field(value: &str) -> Result<Self, DigestError> {
        let mut found: Option<Self> = None;
        for member in value.split(',') {
            let Some((key, rest)) = member.trim().split_once('=') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            // Drop structured-field parameters (`;name=value`) after the item.
            let item = rest.split(';').next().unwrap_or("").trim();
            let inner = item
                .strip_prefix(':')
                .and_then(|s| s.strip_suffix(':'))
                .ok_or(DigestError::NotByteSequence)?;
            let bytes = BASE64.decode(inner).map_err(|_| DigestError::BadBase64)?;
            let array: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| DigestError::WrongLength(bytes.len()))?;
            match found {
                Some(earlier) if earlier.0 != array => return Err(DigestError::Ambiguous),
                _ => found = Some(Self(array)),
            }
        }
        found.ok_or(DigestError::NoSha256)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn formats_and_parses_rfc9530_fields() {
        let d = Sha256::of(b"");
        assert_eq!(d.to_hex(), EMPTY_HEX);
        assert_eq!(d.to_field(), format!("sha-256=:{EMPTY_B64}:"));
        assert_eq!(Sha256::from_field(&d.to_field()), Ok(d));
    }

    #[test]
    fn picks_sha256_among_other_members_and_parameters() {
        let d = Sha256::of(b"");
        let cases = [
            format!("sha-512=:AAAA:, sha-256=:{EMPTY_B64}:"),
            format!("SHA-256=:{EMPTY_B64}:"),
            format!("  sha-256=:{EMPTY_B64}:;q=1 "),
        ];
        for c in cases {
            assert_eq!(Sha256::from_field(&c), Ok(d), "{c}");
        }
    }

    #[test]
    fn rejects_malformed_fields() {
        let cases = [
            ("", DigestError::NoSha256),
            ("sha-512=:AAAA:", DigestError::NoSha256),
            (EMPTY_HEX, DigestError::NoSha256),
            ("sha-256=abc", DigestError::NotByteSequence),
            ("sha-256=:!!!:", DigestError::BadBase64),
            ("sha-256=:AAAA:", DigestError::WrongLength(3)),
            (
                "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:, sha-256=:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE=:",
                DigestError::Ambiguous,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Sha256::from_field(input), Err(want), "{input}");
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(Sha256::from_hex(EMPTY_HEX).unwrap(), Sha256::of(b""));
        assert_eq!(Sha256::from_hex("abc"), Err(DigestError::BadHex));
        assert_eq!(
            Sha256::from_hex(&EMPTY_HEX.to_uppercase()).unwrap(),
            Sha256::of(b"")
        );
        let bad = format!("{}g", &EMPTY_HEX[..63]);
        assert_eq!(Sha256::from_hex(&bad), Err(DigestError::BadHex));
        let json = serde_json::to_string(&Sha256::of(b"")).unwrap();
        assert_eq!(json, format!("\"{EMPTY_HEX}\""));
        assert_eq!(
            serde_json::from_str::<Sha256>(&json).unwrap(),
            Sha256::of(b"")
        );
    }
}
