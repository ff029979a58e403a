//! The receiver's live credentials (TLS server config, bearer token), read again
//! when their files change or on SIGHUP; a file that does not load keeps the last
//! good credentials in force and says why in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use episode_common::tls;
use rustls::ServerConfig;

use episode_common::fsx::FileStamp;

use crate::config::Config;

#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Files {
    tls: Option<TlsFiles>,
    token: Option<PathBuf>,
}

pub struct Credentials {
    files: RwLock<Files>,
    server_config: RwLock<Option<Arc<ServerConfig>>>,
    token: RwLock<Option<Arc<str>>>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

/// When `Credentials::reload` reads the files again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reread {
    /// Only if one changed (size, mtime or inode) since the last look.
    IfChanged,
    /// Always (SIGHUP).
    Always,
}

impl Credentials {
    /// Loads everything the config names; the error names the config key.
    pub fn load(config: &Config) -> Result<Self, String> {
        let tls_files = config.tls.as_ref().map(|t| TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: t.client_ca.clone(),
        });
        let token_file = config.auth.bearer_token_file.clone();
        let server_config = match &tls_files {
            Some(files) => Some(Arc::new(build_server_config(files)?)),
            None => None,
        };
        let token = match &token_file {
            Some(path) => {
                Some(read_token(path).map_err(|e| format!("auth.bearer_token_file: {e}"))?)
            }
            None => None,
        };
        let credentials = Self {
            files: RwLock::new(Files {
                tls: tls_files,
                token: token_file,
            }),
            server_config: RwLock::new(server_config),
            token: RwLock::new(token),
            stamps: Mutex::new(Vec::new()),
        };
        *credentials.stamps.lock().unwrap_or_else(|e| e.into_inner()) =
            credentials.current_stamps();
        Ok(credentials)
    }

    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server_config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn token(&self) -> Option<Arc<str>> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_tls(&self) -> bool {
        self.files().tls.is_some()
    }

    fn files(&self) -> Files {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn current_stamps(&self) -> Vec<Option<FileStamp>> {
        let files = self.files();
        let mut watched = Vec::new();
        if let Some(t) = &files.tls {
            watched.push(&t.cert);
            watched.push(&t.key);
            watched.extend(t.client_ca.as_ref());
        }
        watched.extend(files.token.as_ref());
        watched.into_iter().map(|p| FileStamp::of(p)).collect()
    }

    /// Takes over `new` (loaded from a reloaded config, maybe naming other files):
    /// its files are watched from now on and its certificates and token serve.
    pub fn adopt(&self, new: Credentials) {
        *self.files.write().unwrap_or_else(|e| e.into_inner()) = new.files();
        *self
            .server_config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = new.server_config();
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = new.token();
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = self.current_stamps();
    }

    /// Re-reads the files, when `reread` says so. Blocking; call it off the async
    /// workers.
    pub fn reload(&self, reread: Reread) {
        let now = self.current_stamps();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if reread == Reread::IfChanged && *stamps == now {
                return;
            }
            *stamps = now;
        }
        let files = self.files();
        if let Some(files) = &files.tls {
            match build_server_config(files) {
                Ok(cfg) => {
                    *self
                        .server_config
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(cfg));
                    tracing::info!(event = %episode_common::Event::CredentialsReloaded, file = %files.cert.display(), "new connections use the certificates on disk");
                }
                Err(e) => {
                    tracing::warn!(event = %episode_common::Event::CredentialsReloadFailed, error = %e, "keeping the last good certificates")
                }
            }
        }
        if let Some(path) = &files.token {
            match read_token(path) {
                Ok(token) => {
                    let mut current = self.token.write().unwrap_or_else(|e| e.into_inner());
                    if current.as_deref() != Some(&*token) {
                        *current = Some(token);
                        tracing::info!(event = %episode_common::Event::CredentialsReloaded, file = %path.display(), "the token file changed");
                    }
                }
                Err(e) => {
                    tracing::warn!(event = %episode_common::Event::CredentialsReloadFailed, error = %e, "keeping the last good token")
                }
            }
        }
    }
}

fn build_server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let chain = tls::load_certs(&files.cert).map_err(|e| format!("tls.cert: {e}"))?;
    let key = tls::load_key(&files.key).map_err(|e| format!("tls.key: {e}"))?;
    let client_ca = match &files.client_ca {
        Some(path) => Some(tls::load_certs(path).map_err(|e| format!("tls.client_ca: {e}"))?),
        None => None,
    };
    tls::server_config(chain, key, client_ca.as_deref()).map_err(|e| format!("tls: {e}"))
}

fn read_token(path: &PathBuf) -> Result<Arc<str>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token.into())
}
