//! `episode-shipper check`, and `preflight`, the start-up validations it shares with
//! `run` and `once`: a config error is exit 78 naming the file and key; what the
//! daemon copes with by itself is a note. Creates nothing.

use std::io::Write;
use std::path::Path;

use episode_common::config::ConfigError;
use episode_common::tls;

use crate::config::Config;
use crate::layout::DataRoot;
use crate::state::StateFile;

/// Prints the report, or returns the config error that stops the daemon too.
pub fn run(config: &Config, config_path: &Path, out: &mut impl Write) -> Result<(), ConfigError> {
    let lines = preflight(config, config_path)?;
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(format!(
        "config {}: ok (host_id {}, receiver {})",
        config_path.display(),
        config.host_id,
        config.base_url()
    ));
    for line in lines {
        say(line);
    }
    let root = DataRoot::new(&config.data_root);
    if root.state.is_dir()
        && let Err(e) = StateFile::peek(&root.state)
    {
        say(format!("note: {e}; it will be set aside at start"));
    }
    if root.outbox.is_dir() {
        let partials = crate::layout::entries(&root.outbox)
            .map(|e| e.iter().filter(|(n, _)| n.ends_with(".partial")).count())
            .unwrap_or(0);
        if partials > 0 {
            say(format!(
                "note: {partials} partial archive(s) in the outbox, removed at start"
            ));
        }
    }
    say("ok".into());
    Ok(())
}

/// The validations beyond the file's schema that `check`, `run` and `once` all make,
/// reading only: the data root can be used, and credential files that exist can be
/// used together. Returns what it found fine (and notes), or the error naming the key.
pub fn preflight(config: &Config, config_path: &Path) -> Result<Vec<String>, ConfigError> {
    let mut lines = Vec::new();
    let fail = |key: &str, msg: String| ConfigError::new(config_path, format!("{key}: {msg}"));
    let root = &config.data_root;
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => {
            return Err(fail(
                "data_root",
                format!("{} exists and is not a directory", root.display()),
            ));
        }
        Ok(_) if !writable(root) => {
            return Err(fail(
                "data_root",
                format!("{} is not writable by this user", root.display()),
            ));
        }
        Ok(_) => lines.push(format!("data_root {}: ok", root.display())),
        Err(_) => {
            let existing = root.ancestors().skip(1).find(|a| a.exists());
            match existing {
                Some(a) if a.is_dir() && writable(a) => lines.push(format!(
                    "data_root {}: absent, created at start",
                    root.display()
                )),
                Some(a) if !a.is_dir() => {
                    return Err(fail(
                        "data_root",
                        format!(
                            "{} cannot be created: {} is not a directory",
                            root.display(),
                            a.display()
                        ),
                    ));
                }
                _ => {
                    return Err(fail(
                        "data_root",
                        format!(
                            "{} does not exist and cannot be created by this user",
                            root.display()
                        ),
                    ));
                }
            }
        }
    }
    let r = &config.receiver;
    let present = |p: &Option<std::path::PathBuf>| p.as_ref().filter(|p| p.exists()).cloned();
    for (key, path) in [
        ("receiver.ca_bundle", &r.ca_bundle),
        ("receiver.client_cert", &r.client_cert),
        ("receiver.client_key", &r.client_key),
        ("receiver.bearer_token_file", &r.bearer_token_file),
    ] {
        if let Some(path) = path.as_ref().filter(|p| !p.exists()) {
            lines.push(format!(
                "note: {key} {} does not exist yet; shipping waits for it (no restart needed)",
                path.display()
            ));
        }
    }
    let roots = match present(&r.ca_bundle) {
        Some(p) => {
            let certs =
                tls::load_certs(&p).map_err(|e| fail("receiver.ca_bundle", e.to_string()))?;
            lines.push(format!("receiver.ca_bundle {}: ok", p.display()));
            Some(certs)
        }
        None => None,
    };
    let chain = match present(&r.client_cert) {
        Some(p) => {
            Some(tls::load_certs(&p).map_err(|e| fail("receiver.client_cert", e.to_string()))?)
        }
        None => None,
    };
    let key = match present(&r.client_key) {
        Some(p) => Some(tls::load_key(&p).map_err(|e| fail("receiver.client_key", e.to_string()))?),
        None => None,
    };
    if let (Some(chain), Some(key)) = (chain, key) {
        // The pair must go together: rustls checks the key against the leaf.
        tls::client_config(Some(roots.as_deref().unwrap_or(&[])), Some((chain, key))).map_err(
            |e| {
                fail(
                    "receiver.client_key",
                    format!(
                        "{} does not go with receiver.client_cert {}: {e}",
                        r.client_key.as_ref().expect("present").display(),
                        r.client_cert.as_ref().expect("present").display()
                    ),
                )
            },
        )?;
        lines.push(format!(
            "receiver.client_cert and receiver.client_key {}: ok, a pair",
            r.client_key.as_ref().expect("present").display()
        ));
    }
    if let Some(p) = present(&r.bearer_token_file) {
        std::fs::read_to_string(&p).map_err(|e| {
            fail(
                "receiver.bearer_token_file",
                format!("{}: {e}", p.display()),
            )
        })?;
        lines.push(format!("receiver.bearer_token_file {}: ok", p.display()));
    }
    Ok(lines)
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}
