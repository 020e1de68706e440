//! The whole configuration: embedded defaults → TOML file → `SWITCHBOARD_*` environment,
//! then validated. Every field's `///` comment is its reference documentation.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use switchboard_core::{
    config::{DeliveryConfig, RoutesConfig, StoreConfig},
    secret::SecretRef,
    units::{ByteSize, HumanDuration},
};
use switchboard_plugins::{
    channels::ChannelsConfig,
    providers::{ProviderInfo, ProvidersConfig},
    services::ServiceConfig,
};

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
    /// `[providers.<name>]`: one table per provider: a built-in one (`pomelo`, `verestro`,
    /// `verifyvasp`), or any other name with `kind = "generic"` or a preset (`stripe`,
    /// `standard-webhooks`, `github`, `shopify`, `slack`, `twilio`).
    pub providers: ProvidersConfig,
    /// `[listeners.<name>]`: further TLS listeners, each serving the providers it lists
    /// (and only there), e.g. Verestro on a mutual-TLS port.
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// `[routes]`: the route scripts and their sandbox.
    pub routes: RoutesConfig,
    /// `[delivery]`: retries of the outbox.
    pub delivery: DeliveryConfig,
    /// `[channels.*]`: how actions leave (email, SMS, HTTP).
    pub channels: ChannelsConfig,
    /// `[services.<name>]`: internal HTTP services scripts look data up from and deliver
    /// to.
    pub services: BTreeMap<String, ServiceConfig>,
}

/// The name of the `[server]` listener.
pub const MAIN_LISTENER: &str = "main";

/// Paths switchboard serves itself: no provider may be configured at or under them. The
/// one list: the front labels requests by it and `validate` refuses provider paths in it.
pub const RESERVED_PATHS: &[&str] = &[
    "/admin",
    "/console",
    "/docs",
    "/openapi.json",
    "/openapi.yaml",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Whether `path` is one of [`RESERVED_PATHS`] or under one.
pub fn is_reserved(path: &str) -> bool {
    RESERVED_PATHS.iter().any(|r| {
        path == *r
            || path
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// TLS settings of a listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by any intermediates.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificate(s) client certificates must chain to. When set,
    /// the listener requires a client certificate (mutual TLS): a client without one, or
    /// with one from another CA, fails the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Time a client has to complete the TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
}

fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

/// `[listeners.<name>]`: a further TLS listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port.
    pub listen: SocketAddr,
    /// Its TLS settings (required: further listeners are always TLS).
    pub tls: TlsConfig,
    /// The providers served here (their `[providers.<name>]` names: `verestro`, a generic
    /// provider, ...). They are then served only here, not on the `[server]` listener.
    pub providers: Vec<String>,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Port 0 picks a free port (printed at start-up).
    pub listen: SocketAddr,
    /// Most client connections open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers before the connection is closed; on a
    /// new connection (HTTP/1.1 or HTTP/2), the time it has to start its first request.
    pub header_read_timeout: HumanDuration,
    /// Time a connection may stay open with no request running, after its first request
    /// (bytes that start no request, such as HTTP/2 PINGs, do not count).
    pub idle_timeout: HumanDuration,
    /// Time a request may take from headers to answer (a slow body included); past it the
    /// client gets `408`.
    pub request_timeout: HumanDuration,
    /// Largest request body accepted, with or without a Content-Length.
    pub body_limit: ByteSize,
    /// Deepest JSON nesting accepted in a body.
    pub json_max_depth: usize,
    /// On SIGTERM or Ctrl-C, time given to requests in flight before the process exits.
    pub shutdown_grace: HumanDuration,
    /// Serve HTTPS (and, with `client_ca`, require client certificates) on this listener.
    pub tls: Option<TlsConfig>,
    /// How often certificate, key and CA files are checked for changes (they are reloaded
    /// without a restart; SIGHUP reloads at once).
    pub tls_reload_interval: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 1024,
            header_read_timeout: HumanDuration::secs(10),
            idle_timeout: HumanDuration::secs(60),
            request_timeout: HumanDuration::secs(30),
            body_limit: ByteSize::mib(1),
            json_max_depth: 32,
            shutdown_grace: HumanDuration::secs(30),
            tls: None,
            tls_reload_interval: HumanDuration::secs(5),
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
        let mut cfg: Config = switchboard_core::config::layered(file).map_err(|e| {
            Error::Config(e.to_string().replace("for key \"default.", "for key \""))
        })?;
        if let Some(dir) = file.and_then(Path::parent) {
            cfg = cfg.relative_to(dir).map_err(|e| match file {
                Some(p) => Error::Config(format!("{}: {e}", p.display())),
                None => e,
            })?;
        }
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
        // Stored events are read back with serde_json, which refuses more than 128 levels
        // (the body sits two levels down in the record): keep well under it.
        if !(2..=100).contains(&self.server.json_max_depth) {
            return bad("server.json_max_depth", "must be between 2 and 100");
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.request_timeout", self.server.request_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if d.get().is_zero() {
                return bad(key, "must be greater than zero");
            }
        }
        self.store
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        self.routes
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        self.delivery
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        for p in self.providers.iter() {
            p.validate().map_err(|e| Error::Config(e.to_string()))?;
        }
        // Every configured path: none under switchboard's own, no two alike.
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for info in self.provider_infos() {
            for e in &info.endpoints {
                if is_reserved(&e.path) {
                    return bad(
                        &e.key,
                        &format!("`{}` is reserved for switchboard itself", e.path),
                    );
                }
                if let Some(other) = seen.insert(e.path.clone(), info.name.clone()) {
                    return bad(
                        &e.key,
                        &format!("`{}` is already served for {other}", e.path),
                    );
                }
            }
        }
        if let Err(e) = tracing_subscriber_filter_check(&self.log.level) {
            return bad("log.level", &e);
        }
        if self.server.tls_reload_interval.get().is_zero() {
            return bad("server.tls_reload_interval", "must be greater than zero");
        }
        for p in self.providers.iter().filter(|p| p.unauthenticated()) {
            let listener = self.listener_of(p.name());
            let (addr, tls) = match self.listeners.get(listener) {
                Some(l) => (l.listen, Some(&l.tls)),
                None => (self.server.listen, self.server.tls.as_ref()),
            };
            let mutual = tls.is_some_and(|t| t.client_ca.is_some());
            if !addr.ip().is_loopback() && !mutual {
                return bad(
                    &format!("providers.{}.auth.scheme", p.name()),
                    &format!(
                        "`none` is allowed only on a loopback listener or a mutual-TLS one, and it is served on {listener} ({addr})"
                    ),
                );
            }
        }
        let mut bound: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, l) in &self.listeners {
            let at = format!("listeners.{name}");
            if name == MAIN_LISTENER || name.is_empty() {
                return bad(&at, "this name is reserved for the [server] listener");
            }
            if l.listen == self.server.listen && l.listen.port() != 0 {
                return bad(
                    &format!("{at}.listen"),
                    "is the address of the [server] listener",
                );
            }
            if l.providers.is_empty() {
                return bad(&format!("{at}.providers"), "lists no provider");
            }
            for p in &l.providers {
                if self.providers.get(p).is_none() {
                    return bad(
                        &format!("{at}.providers"),
                        &format!(
                            "unknown provider `{p}` (known: {})",
                            self.providers.names().join(", ")
                        ),
                    );
                }
                if let Some(other) = bound.insert(p, name) {
                    return bad(
                        &format!("{at}.providers"),
                        &format!("`{p}` is already served by listeners.{other}"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Every provider's endpoints as configured (no secrets needed).
    pub fn provider_infos(&self) -> Vec<ProviderInfo> {
        self.providers
            .iter()
            .map(|p| ProviderInfo {
                name: p.name().to_owned(),
                credentials: 0,
                endpoints: p.endpoints(),
                client_certificates: p.client_certificates(),
            })
            .collect()
    }

    /// The configuration with every relative path resolved against `dir` (the
    /// configuration file's directory): `file:` secrets, TLS files, CA files, the store and
    /// the routes directory. So `switchboard check -c /etc/switchboard/switchboard.toml`
    /// reads the same files from any working directory, as systemd units and containers
    /// expect.
    pub fn relative_to(&self, dir: &Path) -> Result<Config> {
        let mut v = serde_json::to_value(self).map_err(|e| Error::Config(e.to_string()))?;
        resolve_paths(&mut v, dir, None);
        serde_json::from_value(v).map_err(|e| Error::Config(e.to_string()))
    }

    /// The listener each provider is served on (`main` unless a `[listeners.*]` lists it).
    pub fn listener_of(&self, provider: &str) -> &str {
        self.listeners
            .iter()
            .find(|(_, l)| l.providers.iter().any(|p| p == provider))
            .map(|(n, _)| n.as_str())
            .unwrap_or(MAIN_LISTENER)
    }

    /// The directory holding the database and generated files.
    pub fn data_dir(&self) -> &PathBuf {
        &self.store.path
    }
}

/// Walks a serialized configuration: `file:` strings anywhere, and the settings that are
/// file system paths, become absolute under `dir`.
fn resolve_paths(v: &mut serde_json::Value, dir: &Path, parent: Option<&str>) {
    use serde_json::Value;
    let absolute = |p: &str| -> String {
        let path = Path::new(p);
        if path.is_absolute() || p.is_empty() {
            p.to_owned()
        } else {
            dir.join(path).to_string_lossy().into_owned()
        }
    };
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let is_path = matches!(
                    (parent, k.as_str()),
                    (Some("tls"), "cert" | "key" | "client_ca")
                        | (Some("store"), "path")
                        | (Some("routes"), "dir")
                        | (_, "ca_file")
                );
                match child {
                    Value::String(s) if is_path => *s = absolute(s),
                    _ => resolve_paths(child, dir, Some(k)),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| resolve_paths(i, dir, parent)),
        Value::String(s) => {
            if let Some(p) = s.strip_prefix("file:") {
                *s = format!("file:{}", absolute(p));
            }
        }
        _ => {}
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
        c.providers
            .set(
                "verifyvasp",
                serde_json::json!({"path": "/pomelo/tokenization/otp"}),
            )
            .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("providers.verifyvasp.path"), "{e}");
        let mut c = Config::default();
        c.providers
            .set("pomelo", serde_json::json!({"path": "/admin/x"}))
            .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("reserved"));
        assert!(
            is_reserved("/metrics") && is_reserved("/admin/events") && !is_reserved("/metricsx")
        );
    }
}
