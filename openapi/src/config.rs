//! The whole configuration: embedded defaults → TOML file → `SWITCHBOARD_*` environment,
//! then validated. Every field's `///` comment is its reference documentation.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use switchboard_core::{
    config::StoreConfig,
    secret::SecretRef,
    units::{ByteSize, HumanDuration},
};
use switchboard_plugins::providers::{ProvidersConfig, validate_path};

use crate::{Error, Result};

/// The root of `switchboard.toml`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the listener and request limits.
    pub server: ServerConfig,
    /// `[store]`: the embedded database and retention.
    pub store: StoreConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[admin]`: the admin API.
    pub admin: AdminConfig,
    /// `[dev]`: conveniences for a first run.
    pub dev: DevConfig,
    /// `[providers.*]`: one table per provider.
    pub providers: ProvidersConfig,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Port 0 picks a free port (printed at start-up).
    pub listen: SocketAddr,
    /// Most client connections open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers before the connection is closed.
    pub header_read_timeout: HumanDuration,
    /// Time a request may take from headers to answer (a slow body included); past it the
    /// client gets `408`.
    pub request_timeout: HumanDuration,
    /// Largest request body accepted, with or without a Content-Length.
    pub body_limit: ByteSize,
    /// Deepest JSON nesting accepted in a body.
    pub json_max_depth: usize,
    /// On SIGTERM or Ctrl-C, time given to requests in flight before the process exits.
    pub shutdown_grace: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 1024,
            header_read_timeout: HumanDuration::secs(10),
            request_timeout: HumanDuration::secs(30),
            body_limit: ByteSize::mib(1),
            json_max_depth: 32,
            shutdown_grace: HumanDuration::secs(30),
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `switchboard=debug,info`, ... `RUST_LOG` wins
    /// when set.
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// `[admin]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the admin API. Without it the admin API refuses everything with 401.
    pub token: Option<SecretRef>,
    /// Show OTPs and other secret values in admin answers. Off: they are masked.
    pub reveal_secrets: bool,
}

/// `[dev]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// Generate development secrets for every provider secret and the admin token that is
    /// not configured, write them to `<store.path>/dev-secrets.toml` (mode 0600) and print
    /// them once. Only ever done when `server.listen` is a loopback address; otherwise an
    /// unconfigured provider refuses every request. Turn off in production.
    pub secrets: bool,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig { secrets: true }
    }
}

impl Config {
    /// Loads the layered configuration. With no file, the embedded defaults and the
    /// environment apply. Errors name the file and the key at fault.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "{}: no such configuration file",
                    path.display()
                )));
            }
        }
        // figment's messages name the key and its source (the file, or the environment).
        let cfg: Config = switchboard_core::config::layered(file).map_err(|e| {
            Error::Config(e.to_string().replace("for key \"default.", "for key \""))
        })?;
        cfg.validate().map_err(|e| match file {
            Some(p) => Error::Config(format!("{}: {e}", p.display())),
            None => e,
        })?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, paths, clashes between endpoints.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: &str| Err(Error::Config(format!("{key}: {msg}")));
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        if self.server.body_limit.0 == 0 {
            return bad("server.body_limit", "must be greater than zero");
        }
        if !(2..=256).contains(&self.server.json_max_depth) {
            return bad("server.json_max_depth", "must be between 2 and 256");
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.request_timeout", self.server.request_timeout),
        ] {
            if d.get().is_zero() {
                return bad(key, "must be greater than zero");
            }
        }
        self.store
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        let paths = [
            ("providers.pomelo.path", &self.providers.pomelo.path),
            ("providers.verifyvasp.path", &self.providers.verifyvasp.path),
        ];
        for (i, (key, path)) in paths.iter().enumerate() {
            validate_path(key, path).map_err(|e| Error::Config(e.to_string()))?;
            if crate::app::RESERVED_PREFIXES
                .iter()
                .any(|r| path.as_str() == *r || path.starts_with(&format!("{r}/")))
            {
                return bad(key, &format!("`{path}` is reserved for switchboard itself"));
            }
            if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
                return bad(key, &format!("`{path}` is already used by {other}"));
            }
        }
        if let Some(e) = &self.providers.pomelo.signed_endpoint {
            validate_path("providers.pomelo.signed_endpoint", e)
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        if let Err(e) = tracing_subscriber_filter_check(&self.log.level) {
            return bad("log.level", &e);
        }
        Ok(())
    }

    /// The directory holding the database and generated files.
    pub fn data_dir(&self) -> &PathBuf {
        &self.store.path
    }
}

fn tracing_subscriber_filter_check(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("`{level}` is not a log filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store.path, PathBuf::from("./data"));
        assert_eq!(c.server.body_limit, ByteSize::mib(1));
        let mut bad = c.clone();
        bad.log.level = "info,=[".into();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("log.level")
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("lisen") && e.contains("c.toml"), "{e}");
        std::fs::write(&p, "[server]\nlisten = \n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn clashing_paths_are_refused() {
        let mut c = Config::default();
        c.providers.verifyvasp.path = c.providers.pomelo.path.clone();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("providers.verifyvasp.path"), "{e}");
        let mut c = Config::default();
        c.providers.pomelo.path = "/admin/x".into();
        assert!(c.validate().unwrap_err().to_string().contains("reserved"));
    }
}
