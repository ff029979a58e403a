//! PEM loading, certificate facts and rustls configs for both sides.
//!
//! Owns: reading certificate chains and keys from PEM files (errors name the file),
//! the identity of a certificate (subject CN and DNS SANs), its validity window, and
//! building the rustls `ServerConfig` (receiver) and `ClientConfig` (shipper, doctor,
//! load generator) with the aws-lc-rs provider passed explicitly, so no process-wide
//! provider has to be installed. Also turns a buried `rustls::Error` into a sentence.
//! Reads files only when asked to load them; holds no state.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificates { path: PathBuf },
    #[error("{}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: malformed PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("{0}")]
    Config(String),
}

/// The crypto provider used everywhere (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// All certificates in a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(path, &read(path)?)
}

/// Parses PEM certificates already read from `path` (named in errors).
pub fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(path, &read(path)?)
}

pub fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject_cn: Option<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub is_ca: bool,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| TlsError::Parse(e.to_string()))?;
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let dns_sans = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(TlsError::Parse(e.to_string())),
        };
        Ok(Self {
            subject_cn,
            dns_sans,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
        })
    }

    /// The names a client certificate may act as: its DNS SANs, then its subject CN,
    /// each once (a CN usually repeats a SAN).
    pub fn identities(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self
            .dns_sans
            .iter()
            .map(String::as_str)
            .chain(self.subject_cn.as_deref())
        {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// One name to record as the client of a request (CN, else the first SAN).
    pub fn primary_identity(&self) -> Option<&str> {
        self.subject_cn
            .as_deref()
            .or(self.dns_sans.first().map(String::as_str))
    }
}

fn root_store(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate rejected: {e}")))?;
    }
    Ok(roots)
}

/// The receiver's TLS config: HTTP/1.1, TLS 1.2+, and, with `client_ca`, a client
/// certificate chaining to it is required (the handshake fails without one).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&[CertificateDer<'static>]>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                    .build()
                    .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Config(format!(
            "server certificate and key: {}",
            explain_rustls(&e)
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client's TLS config: trust `roots` only (or the system bundle when `None`),
/// and present `identity` (chain, key) for mTLS. A key that does not match its
/// certificate is an error here, not at the first handshake.
pub fn client_config(
    roots: Option<&[CertificateDer<'static>]>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let roots = match roots {
        Some(ca) => root_store(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            TlsError::Config(format!(
                "client certificate and key: {}",
                explain_rustls(&e)
            ))
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The system's trust roots (`rustls-native-certs`: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, else the platform's store).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(TlsError::Config(format!(
            "no ca_bundle configured and no system CA certificates found (set receiver.ca_bundle, or SSL_CERT_FILE/SSL_CERT_DIR){}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        )));
    }
    Ok(roots)
}

/// Checks that `chain` (leaf first) is a valid client certificate under `ca` at `now`.
pub fn verify_client_chain(
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), TlsError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| TlsError::Config("empty certificate chain".into()))?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| TlsError::Config(explain_rustls(&e)))
}

/// A sentence for a rustls error, in the words an operator uses.
pub fn explain_rustls(err: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match err {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "certificate is not signed by a trusted CA".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate is not valid yet (check the clock)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "certificate is not valid for the host name in the URL".into()
        }
        E::InvalidCertificate(C::BadSignature) => "certificate has a bad signature".into(),
        E::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "certificate is not valid for this purpose (extended key usage)".into()
        }
        E::InvalidCertificate(C::Revoked) => "certificate is revoked".into(),
        E::NoCertificatesPresented => "no client certificate presented".into(),
        E::InconsistentKeys(_) => "private key does not match the certificate".into(),
        E::AlertReceived(alert) => format!("peer refused the TLS handshake ({alert:?})"),
        other => other.to_string(),
    }
}

/// Finds a rustls error buried in an error chain (reqwest → hyper → io → rustls) and
/// explains it; `None` when there is none. Also recognises the alert text a client
/// sees when the server refuses its certificate under TLS 1.3.
pub fn explain_tls_failure(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(tls));
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(explain_rustls(tls));
            }
            let text = inner.to_string();
            if ["CertificateRequired", "BadCertificate", "UnknownCA"]
                .iter()
                .any(|a| text.contains(a))
            {
                return Some(format!("receiver refused the client certificate ({text})"));
            }
            current = Some(inner);
            continue;
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use episode_test_pki::{Ca, LeafSpec, Purpose};

    struct Pki {
        ca_pem: String,
        leaf_pem: String,
        leaf_key_pem: String,
        other_key_pem: String,
    }

    fn pki() -> Pki {
        pki_named("test-ca")
    }

    fn pki_named(ca_name: &str) -> Pki {
        let ca = Ca::new(ca_name);
        let leaf = ca.leaf(LeafSpec {
            names: vec!["lab1.example".into()],
            cn: "lab1",
            purpose: Purpose::Client,
            from: -time::Duration::days(1),
            until: time::Duration::days(365),
        });
        let other = Ca::new("unrelated").client(
            "lab1",
            -time::Duration::days(1),
            time::Duration::days(365),
        );
        Pki {
            ca_pem: ca.pem,
            leaf_pem: leaf.cert,
            leaf_key_pem: leaf.key,
            other_key_pem: other.key,
        }
    }

    #[test]
    fn reads_identity_and_validity() {
        let pki = pki();
        let certs = parse_certs(Path::new("leaf.pem"), pki.leaf_pem.as_bytes()).unwrap();
        let info = CertInfo::parse(&certs[0]).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("lab1"));
        assert_eq!(info.identities(), ["lab1.example", "lab1"]);
        assert!(info.not_after > info.not_before);
        assert!(!info.is_ca);
    }

    #[test]
    fn errors_name_the_file() {
        let err = parse_certs(Path::new("/x/empty.pem"), b"").unwrap_err();
        assert_eq!(err.to_string(), "/x/empty.pem: no PEM certificate found");
        let err = parse_key(Path::new("/x/k.pem"), b"nothing").unwrap_err();
        assert!(
            err.to_string().starts_with("/x/k.pem: no PEM private key"),
            "{err}"
        );
        let err = load_certs(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn client_config_rejects_a_key_of_another_certificate() {
        let pki = pki();
        let ca = parse_certs(Path::new("ca"), pki.ca_pem.as_bytes()).unwrap();
        let chain = parse_certs(Path::new("leaf"), pki.leaf_pem.as_bytes()).unwrap();
        let good = parse_key(Path::new("k"), pki.leaf_key_pem.as_bytes()).unwrap();
        let bad = parse_key(Path::new("k"), pki.other_key_pem.as_bytes()).unwrap();
        assert!(client_config(Some(&ca), Some((chain.clone(), good))).is_ok());
        let err = client_config(Some(&ca), Some((chain, bad))).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn verifies_a_client_chain_against_its_ca_only() {
        let pki = pki();
        let other = pki_other_ca();
        let chain = parse_certs(Path::new("leaf"), pki.leaf_pem.as_bytes()).unwrap();
        let ca = parse_certs(Path::new("ca"), pki.ca_pem.as_bytes()).unwrap();
        verify_client_chain(&chain, &ca, UnixTime::now()).unwrap();
        let err = verify_client_chain(&chain, &other, UnixTime::now()).unwrap_err();
        assert!(
            err.to_string().contains("not signed by a trusted CA"),
            "{err}"
        );
    }

    fn pki_other_ca() -> Vec<CertificateDer<'static>> {
        let p = pki_named("other-ca");
        parse_certs(Path::new("other"), p.ca_pem.as_bytes()).unwrap()
    }
}
