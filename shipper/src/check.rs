//! `episode-shipper check`: the config and the on-disk state, read-only, fit to be
//! an `ExecStartPre`.
//!
//! Owns the verdict: a config error is fatal (exit 78, decided before this runs), a
//! data root that cannot be used is a problem (exit 1), and everything the daemon
//! copes with by itself (certificates not issued yet, a corrupt state file, outbox
//! orphans) is reported as a note but does not stop the start. Creates nothing.

use std::io::Write;
use std::path::Path;

use episode_common::tls;

use crate::config::Config;
use crate::layout::DataRoot;
use crate::state::StateFile;

/// Prints the report; returns false when the daemon could not work.
pub fn run(config: &Config, config_path: &Path, out: &mut impl Write) -> bool {
    let mut ok = true;
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(format!(
        "config {}: ok (host_id {}, receiver {})",
        config_path.display(),
        config.host_id,
        config.base_url()
    ));
    let root = DataRoot::new(&config.data_root);
    match std::fs::metadata(&root.root) {
        Ok(m) if !m.is_dir() => {
            ok = false;
            say(format!(
                "PROBLEM data_root {} is not a directory",
                root.root.display()
            ));
        }
        Ok(_) => {
            if writable(&root.root) {
                say(format!("data_root {}: ok", root.root.display()));
            } else {
                ok = false;
                say(format!(
                    "PROBLEM data_root {} is not writable by this user",
                    root.root.display()
                ));
            }
        }
        Err(_) => match root.root.ancestors().skip(1).find(|a| a.exists()) {
            Some(parent) if writable(parent) => say(format!(
                "data_root {}: absent, created at start",
                root.root.display()
            )),
            _ => {
                ok = false;
                say(format!(
                    "PROBLEM data_root {} does not exist and cannot be created",
                    root.root.display()
                ));
            }
        },
    }
    let r = &config.receiver;
    let files = [
        ("receiver.ca_bundle", r.ca_bundle.as_ref()),
        ("receiver.client_cert", r.client_cert.as_ref()),
        ("receiver.client_key", r.client_key.as_ref()),
        ("receiver.bearer_token_file", r.bearer_token_file.as_ref()),
    ];
    for (key, path) in files {
        let Some(path) = path else { continue };
        if !path.exists() {
            say(format!(
                "note: {key} {} does not exist yet; shipping waits for it (no restart needed)",
                path.display()
            ));
            continue;
        }
        let parsed = match key {
            "receiver.ca_bundle" | "receiver.client_cert" => {
                tls::load_certs(path).map(|_| ()).map_err(|e| e.to_string())
            }
            "receiver.client_key" => tls::load_key(path).map(|_| ()).map_err(|e| e.to_string()),
            _ => std::fs::read_to_string(path)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(()) => say(format!("{key} {}: ok", path.display())),
            Err(e) => say(format!(
                "note: {key}: {e}; shipping fails until it is fixed"
            )),
        }
    }
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
    if ok {
        say("ok".into());
    }
    ok
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}
