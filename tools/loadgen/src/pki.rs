//! `pki`: a throwaway PKI for benchmarks (`episode_test_pki`'s, ECDSA P-256), written as files.
//!
//! Writes into one directory: `ca.pem`/`ca.key` (a self-signed CA), `server.pem`/
//! `server.key` (SANs `localhost` and `127.0.0.1`, for a receiver on loopback), and
//! per client `<name>.pem`/`<name>.key` whose subject CN and DNS SAN are `<name>`,
//! which is the host identity the receiver binds requests to. Keys are written
//! mode 0600. For benchmarks and tests only: no revocation, 30-day validity (the server's: a year).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use episode_test_pki::Ca;

/// Paths of a written PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a CA, a loopback server certificate and one client certificate per name.
pub fn write_pki(dir: &Path, clients: &[String]) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki {
        dir: dir.to_owned(),
    };
    let validity = (-time::Duration::hours(1), time::Duration::days(30));
    let ca = Ca::with_validity("episode-loadgen bench CA", validity.0, validity.1);
    write(&pki.ca(), &ca.pem, 0o644)?;
    write(&dir.join("ca.key"), &ca.key_pem(), 0o600)?;
    let server = ca.server();
    write(&pki.server_cert(), &server.cert, 0o644)?;
    write(&pki.server_key(), &server.key, 0o600)?;
    for name in clients {
        episode_common::HostId::new(name)
            .with_context(|| format!("client name {name:?} is not a valid host id"))?;
        let client = ca.client(name, validity.0, validity.1);
        write(&pki.client_cert(name), &client.cert, 0o644)?;
        write(&pki.client_key(name), &client.key, 0o600)?;
    }
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;
    use episode_common::tls::{CertInfo, load_certs, verify_client_chain};

    #[test]
    fn client_certificates_name_their_host_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_pki(dir.path(), &["lab1".into(), "lab2".into()]).unwrap();
        let ca = load_certs(&pki.ca()).unwrap();
        for host in ["lab1", "lab2"] {
            let chain = load_certs(&pki.client_cert(host)).unwrap();
            let info = CertInfo::parse(&chain[0]).unwrap();
            assert_eq!(info.subject_cn.as_deref(), Some(host));
            assert_eq!(info.dns_sans, [host]);
            verify_client_chain(&chain, &ca, rustls::pki_types::UnixTime::now()).unwrap();
        }
        assert!(write_pki(dir.path(), &["../x".into()]).is_err());
    }
}
