//! SIGHUP: the config file read again; the reloadable keys take effect for new
//! requests and connections, and a config that is invalid or changes a fixed key
//! (`listen`, the ops listener and its token, `[fleet]`, the paths,
//! `max_connections`, `[tls]` present) is refused whole.

use crate::AppState;
use crate::config::Config;
use crate::credentials::{Credentials, Reread};

/// The keys a reload may not change, each with its value as text.
fn fixed(config: &Config) -> [(&'static str, String); 9] {
    [
        ("listen", config.listen.to_string()),
        ("metrics_listen", format!("{:?}", config.metrics_listen)),
        ("ops_token_file", format!("{:?}", config.ops_token_file)),
        (
            "fleet.stale_after",
            format!("{:?}", config.fleet.stale_after.dur),
        ),
        ("store_root", format!("{:?}", config.store_root)),
        ("incoming_root", format!("{:?}", config.incoming_root)),
        ("index_path", format!("{:?}", config.index_path)),
        ("max_connections", config.max_connections.to_string()),
        ("tls", config.tls.is_some().to_string()),
    ]
}

/// The keys a reload may change, each with its value as text.
fn reloadable(config: &Config) -> [(&'static str, String); 14] {
    let tls = config.tls.as_ref();
    [
        ("max_episode_bytes", config.max_episode_bytes.to_string()),
        (
            "require_code_commit",
            config.require_code_commit.to_string(),
        ),
        ("free_space_reserve", config.free_space_reserve.to_string()),
        (
            "max_concurrent_uploads",
            config.max_concurrent_uploads.to_string(),
        ),
        (
            "max_uploads_per_host",
            config.max_uploads_per_host.to_string(),
        ),
        ("body_idle_timeout", config.body_idle_timeout.to_string()),
        (
            "header_read_timeout",
            config.header_read_timeout.to_string(),
        ),
        ("handshake_timeout", config.handshake_timeout.to_string()),
        ("shutdown_grace", config.shutdown_grace.to_string()),
        ("window", format!("{:?}", config.window)),
        ("tls.cert", format!("{:?}", tls.map(|t| &t.cert))),
        ("tls.key", format!("{:?}", tls.map(|t| &t.key))),
        ("tls.client_ca", format!("{:?}", tls.map(|t| &t.client_ca))),
        (
            "auth.bearer_token_file",
            format!("{:?}", config.auth.bearer_token_file),
        ),
    ]
}

/// The first key a reload may not change that `new` changes.
pub fn changed_fixed_key(old: &Config, new: &Config) -> Option<&'static str> {
    fixed(old)
        .into_iter()
        .zip(fixed(new))
        .find(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
}

/// The reloadable keys whose values differ.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    reloadable(old)
        .into_iter()
        .zip(reloadable(new))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

/// The key a config error is about: the unknown field, the key on the quoted TOML
/// line, or the `key:` the message starts with; `config` when none is found.
pub fn key_of(message: &str) -> String {
    if let Some(rest) = message.split("unknown field `").nth(1)
        && let Some(key) = rest.split('`').next()
    {
        return key.to_owned();
    }
    let is_key = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    for line in message.lines() {
        if let Some((number, rest)) = line.split_once(" | ")
            && number.trim().parse::<u64>().is_ok()
            && let Some((key, _)) = rest.split_once('=')
            && is_key(key.trim())
        {
            return key.trim().to_owned();
        }
    }
    match message.split_once(": ") {
        Some((key, _)) if is_key(key) => key.to_owned(),
        _ => "config".to_owned(),
    }
}

fn refused(key: &str, error: &str) {
    tracing::error!(
        event = %episode_common::Event::ConfigReloadRefused,
        key,
        error,
        "the new config is refused; the running one stays"
    );
}

/// Reads the config file again and puts it in force, or refuses it (see the
/// module doc). Credential files are read again either way. Blocking.
pub fn on_hangup(state: &AppState) {
    let path = &state.config_path;
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            refused(&key_of(&e.message), &e.to_string());
            state.credentials.reload(Reread::Always);
            return;
        }
    };
    let live = state.live();
    if let Some(key) = changed_fixed_key(&state.config, &new) {
        refused(
            key,
            &format!("{key} cannot change while the receiver runs; restart it"),
        );
        state.credentials.reload(Reread::Always);
        return;
    }
    let credentials = match Credentials::load(&new) {
        Ok(c) => c,
        Err(e) => {
            refused(&key_of(&e), &e);
            state.credentials.reload(Reread::Always);
            return;
        }
    };
    let changed = changed_keys(&live.config, &new);
    state.credentials.adopt(credentials);
    state.set_live(crate::Live::new(new));
    tracing::info!(event = %episode_common::Event::ConfigReloaded, path = %path.display(), changed = ?changed, "config reloaded; new requests and connections use it");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        episode_common::config::parse_toml(std::path::Path::new("r.toml"), text).unwrap()
    }

    #[test]
    fn tells_fixed_keys_from_reloadable_ones() {
        let old = config("max_episode_bytes = \"1MiB\"\n");
        assert_eq!(changed_fixed_key(&old, &old), None);
        assert_eq!(changed_keys(&old, &old), Vec::<&str>::new());
        let new = config("max_episode_bytes = \"1KiB\"\n[window]\nmax_age = \"1d\"\n");
        assert_eq!(changed_fixed_key(&old, &new), None);
        assert_eq!(changed_keys(&old, &new), ["max_episode_bytes", "window"]);
        for (text, key) in [
            ("store_root = \"/elsewhere\"\n", "store_root"),
            ("listen = \"127.0.0.1:1\"\n", "listen"),
            ("max_connections = 5\n", "max_connections"),
            ("[tls]\ncert = \"/c\"\nkey = \"/k\"\n", "tls"),
        ] {
            assert_eq!(changed_fixed_key(&old, &config(text)), Some(key), "{text}");
        }
    }

    #[test]
    fn finds_the_key_a_config_error_is_about() {
        let toml = "TOML parse error at line 1, column 21\n  |\n1 | max_episode_bytes = \"lots\"\n  |                     ^^^^^^\ninvalid size";
        assert_eq!(key_of(toml), "max_episode_bytes");
        assert_eq!(
            key_of("TOML parse error\nunknown field `listn`, expected one of `listen`"),
            "listn"
        );
        assert_eq!(
            key_of("max_uploads_per_host: must be at least 1"),
            "max_uploads_per_host"
        );
        assert_eq!(key_of("tls.cert: cannot read /x: No such file"), "tls.cert");
        assert_eq!(key_of("something odd"), "config");
    }
}
