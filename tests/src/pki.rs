//! The PKI of one test environment (`episode_test_pki`'s CAs), as PEM files.
//!
//! Owns the test CA, the receiver's server certificate ("localhost" and 127.0.0.1),
//! the lab hosts' client certificates (CN and DNS SAN = host), an unrelated "rogue"
//! CA with its own lab1 certificate, and issuing more (expired, expiring, from a new
//! CA for reload tests). Everything is written as PEM under `<root>/pki/`; nothing
//! here talks to a network. Invariant: every path it hands out exists and holds a
//! complete PEM file.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

/// A certificate authority (`episode_test_pki::Ca`) whose certificates are written
/// as PEM files into its directory.
pub struct Ca {
    /// The CA certificate (PEM), what a client or receiver trusts.
    pub cert: PathBuf,
    dir: PathBuf,
    ca: episode_test_pki::Ca,
}

impl Ca {
    /// A new self-signed CA named `name`, written to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create pki dir");
        let ca = episode_test_pki::Ca::new(&format!("{name} test CA"));
        let cert_path = dir.join(format!("{name}-ca.pem"));
        write(&cert_path, &ca.pem);
        Self {
            cert: cert_path,
            dir: dir.to_owned(),
            ca,
        }
    }

    /// A server certificate for "localhost" and 127.0.0.1 (ServerAuth), written as
    /// `<dir>/<file_stem>.pem` and `<dir>/<file_stem>.key`.
    pub fn issue_server(&self, file_stem: &str) -> (PathBuf, PathBuf) {
        self.write_leaf(self.ca.server(), file_stem)
    }

    /// A client certificate for `host` (CN = host, DNS SAN = host, ClientAuth) valid
    /// from `not_before` to `not_after`, written as `<dir>/<file_stem>.pem`/`.key`.
    pub fn issue_client_named(
        &self,
        host: &str,
        file_stem: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        let now = OffsetDateTime::now_utc();
        let leaf = self.ca.client(host, not_before - now, not_after - now);
        self.write_leaf(leaf, file_stem)
    }

    fn write_leaf(&self, leaf: episode_test_pki::Leaf, file_stem: &str) -> (PathBuf, PathBuf) {
        let cert_path = self.dir.join(format!("{file_stem}.pem"));
        let key_path = self.dir.join(format!("{file_stem}.key"));
        write(&cert_path, &leaf.cert);
        write(&key_path, &leaf.key);
        (cert_path, key_path)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The PKI of one `TestEnv`, as PEM files under `<root>/pki/`.
pub struct Pki {
    dir: PathBuf,
    /// The test CA (trusted by clients for the server, and by the receiver for clients).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// lab1's certificate from an unrelated CA: the receiver must refuse it.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    /// The rogue CA itself.
    pub rogue_ca: PathBuf,
    test_ca: Ca,
    n_issued: std::sync::atomic::AtomicUsize,
}

/// Hosts with a ready-made client certificate.
pub const HOSTS: &[&str] = &["lab1", "lab2"];

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let test_ca = Ca::new(dir, "test");
        let (server_cert, server_key) = test_ca.issue_server("server");
        let now = OffsetDateTime::now_utc();
        let (nb, na) = (
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        );
        for host in HOSTS {
            test_ca.issue_client_named(host, &format!("client-{host}"), nb, na);
        }
        let rogue = Ca::new(&dir.join("rogue"), "rogue");
        let (rogue_cert, rogue_key) = rogue.issue_client_named("lab1", "client-lab1", nb, na);
        Self {
            dir: dir.to_owned(),
            ca: test_ca.cert.clone(),
            server_cert,
            server_key,
            rogue_cert,
            rogue_key,
            rogue_ca: rogue.cert.clone(),
            test_ca,
            n_issued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The test CA, to issue more certificates from.
    pub fn test_ca(&self) -> &Ca {
        &self.test_ca
    }

    /// The client certificate of `host` ("lab1" or "lab2").
    pub fn client_cert(&self, host: &str) -> PathBuf {
        self.known(host).join(format!("client-{host}.pem"))
    }

    /// The client key of `host` ("lab1" or "lab2").
    pub fn client_key(&self, host: &str) -> PathBuf {
        self.known(host).join(format!("client-{host}.key"))
    }

    fn known(&self, host: &str) -> &Path {
        assert!(
            HOSTS.contains(&host),
            "no ready-made client certificate for {host:?}; use Pki::issue_client"
        );
        &self.dir
    }

    /// A client certificate for `host` from the test CA with the given validity
    /// (expired, not yet valid, expiring soon). Each call writes new files.
    pub fn issue_client(
        &self,
        host: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        let n = self
            .n_issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.test_ca
            .issue_client_named(host, &format!("issued-{n}-{host}"), not_before, not_after)
    }

    /// A new, unrelated CA under `<root>/pki/<name>/` (for certificate-rotation tests).
    pub fn new_ca(&self, name: &str) -> Ca {
        Ca::new(&self.dir.join(name), name)
    }
}
