//! The one throw-away PKI of every test crate and tool: CAs, intermediates, and
//! server ("localhost", 127.0.0.1) and client (CN = DNS SAN = host) certificates,
//! made with rcgen and handed out as PEM text; writing files is the caller's.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that issues intermediates, server and client certificates.
pub struct Ca {
    /// The CA certificate, what a client or receiver trusts.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, as PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Server,
    Client,
}

/// A leaf to issue: its DNS names (SANs), subject CN, purpose and validity
/// (`from`..`until`, relative to now).
pub struct LeafSpec<'a> {
    pub names: Vec<String>,
    pub cn: &'a str,
    pub purpose: Purpose,
    pub from: Duration,
    pub until: Duration,
}

impl Ca {
    /// A self-signed CA with common name `cn`, valid from a day ago for ten years.
    pub fn new(cn: &str) -> Self {
        Self::with_validity(cn, -Duration::days(1), Duration::days(3650))
    }

    /// A self-signed CA with common name `cn`, valid `from`..`until` from now.
    pub fn with_validity(cn: &str, from: Duration, until: Duration) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let params = ca_params(cn, from, until);
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's private key (PEM), for tools that hand the CA on.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// An intermediate CA named `cn`, issued by this one, valid `from`..`until`.
    pub fn intermediate(&self, cn: &str, from: Duration, until: Duration) -> Ca {
        let key = KeyPair::generate().expect("intermediate key");
        let params = ca_params(cn, from, until);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for "localhost" and 127.0.0.1, valid for a year.
    pub fn server(&self) -> Leaf {
        self.leaf(LeafSpec {
            names: vec!["localhost".into(), "127.0.0.1".into()],
            cn: "localhost",
            purpose: Purpose::Server,
            from: -Duration::days(1),
            until: Duration::days(365),
        })
    }

    /// A client certificate for `host` (CN and DNS SAN), valid `from`..`until`.
    pub fn client(&self, host: &str, from: Duration, until: Duration) -> Leaf {
        self.leaf(LeafSpec {
            names: vec![host.to_owned()],
            cn: host,
            purpose: Purpose::Client,
            from,
            until,
        })
    }

    /// Any leaf certificate (other names than a host's, other validity).
    pub fn leaf(&self, spec: LeafSpec<'_>) -> Leaf {
        let mut params = CertificateParams::new(spec.names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, spec.cn);
        (params.extended_key_usages, params.key_usages) = match spec.purpose {
            Purpose::Server => (
                vec![ExtendedKeyUsagePurpose::ServerAuth],
                vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ],
            ),
            Purpose::Client => (
                vec![ExtendedKeyUsagePurpose::ClientAuth],
                vec![KeyUsagePurpose::DigitalSignature],
            ),
        };
        let now = OffsetDateTime::now_utc();
        params.not_before = now + spec.from;
        params.not_after = now + spec.until;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn ca_params(cn: &str, from: Duration, until: Duration) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now + from;
    params.not_after = now + until;
    params
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    fn names(pem: &str) -> (String, Vec<String>, bool, i64, i64) {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let sans = match cert.subject_alternative_name().unwrap() {
            Some(ext) => ext
                .value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(dns) => (*dns).to_owned(),
                    GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                    other => format!("{other:?}"),
                })
                .collect(),
            None => Vec::new(),
        };
        let validity = cert.validity();
        (
            cn,
            sans,
            cert.is_ca(),
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        )
    }

    #[test]
    fn client_certificates_name_their_host_and_keep_the_validity_asked_for() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let root = Ca::new("root CA");
        let issuing = root.intermediate("issuing", -Duration::days(2), Duration::days(9));
        let leaf = issuing.client("lab1", -Duration::days(30), -Duration::days(3));
        let (cn, sans, is_ca, not_before, not_after) = names(&leaf.cert);
        assert_eq!(
            (cn.as_str(), sans, is_ca),
            ("lab1", vec!["lab1".into()], false)
        );
        assert!(
            (not_before - (now - 30 * 86_400)).abs() <= 2,
            "{not_before}"
        );
        assert!((not_after - (now - 3 * 86_400)).abs() <= 2, "{not_after}");
        let (cn, _, is_ca, _, not_after) = names(&issuing.pem);
        assert_eq!((cn.as_str(), is_ca), ("issuing", true));
        assert!((not_after - (now + 9 * 86_400)).abs() <= 2, "{not_after}");
        assert!(leaf.key.contains("PRIVATE KEY"), "{}", leaf.key);
    }

    #[test]
    fn a_server_certificate_serves_localhost_and_the_loopback_address() {
        let server = Ca::new("test CA").server();
        let (cn, sans, is_ca, _, _) = names(&server.cert);
        assert_eq!(cn, "localhost");
        assert!(!is_ca);
        assert_eq!(sans[0], "localhost");
        assert!(
            sans[1].starts_with("ip:") && sans[1].contains("127"),
            "{sans:?}"
        );
    }
}
