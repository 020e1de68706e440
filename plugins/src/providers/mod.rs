//! The provider plugins and their registry.
//!
//! A provider is one folder of the same shape (`mod.rs`, `config.rs`, `verify.rs`,
//! `model.rs`, `api.rs`, `tests.rs`) whose `mod.rs` exports a [`Plugin`], plus one line in
//! [`BUILTIN`]. Everything else — the configuration, the served app and its spec, `check`,
//! development secrets, `simulate`, `init`, admin replays — reads the providers from here:
//! [`BUILTIN`] is the only list of them (`tests/it/architecture.rs` holds it to that).
//!
//! [`generic`] is not a provider but a factory: a `[providers.<name>]` table with
//! `kind = "generic"` or a preset (`stripe`, `standard-webhooks`, ...) becomes a provider at
//! start-up, with no Rust written.
//!
//! What does not live here: storage, listeners, the admin API. A provider hands a
//! [`switchboard_core::ingest::Submission`] to the engine and answers what it returns.

pub mod generic;

use std::{any::Any, collections::BTreeMap, fmt, future::Future, pin::Pin, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use serde_json::Value;

use crate::http::Limits;

/// Declares each provider folder's module and lists its [`Plugin`] in [`BUILTIN`].
macro_rules! registry {
    ($($provider:ident),* $(,)?) => {
        $(pub mod $provider;)*

        /// Every built-in provider, in the order the spec documents them.
        pub const BUILTIN: &[&Plugin] = &[$(&$provider::PLUGIN),*];
    };
}

// The registry: adding a provider is its folder and its name here.
registry!(pomelo, verifyvasp, verestro);

/// A built-in provider, as registered in [`BUILTIN`].
pub struct Plugin {
    /// Its name in configuration, events, metrics and routes (`routes/<name>/`).
    pub name: &'static str,
    /// One line for `switchboard simulate --help` and `check`.
    pub summary: &'static str,
    /// Its settings when the configuration has no `[providers.<name>]` table.
    pub default: fn() -> Box<dyn Provider>,
    /// Reads its `[providers.<name>]` table. The error names the field at fault.
    pub parse: fn(Value) -> Result<Box<dyn Provider>, String>,
    /// Its commented example for `switchboard init` (TOML, every line a comment or blank).
    pub example: &'static str,
}

/// The built-in plugin of this name.
pub fn builtin(name: &str) -> Option<&'static Plugin> {
    BUILTIN.iter().copied().find(|p| p.name == name)
}

/// Reads one `[providers.<name>]` table: a built-in's settings, or a generic provider's
/// (`kind = ...`). The error names the key at fault below `providers.<name>`.
pub fn parse(name: &str, table: Value) -> Result<Box<dyn Provider>, String> {
    match builtin(name) {
        Some(p) => (p.parse)(table),
        None => generic::parse(name, table),
    }
}

/// A configured provider: its settings, and everything switchboard does with them. One
/// implementation per built-in provider (its config type) and one for generic providers.
pub trait Provider: ProviderObject + fmt::Debug + Send + Sync + 'static {
    /// Its name (`[providers.<name>]`).
    fn name(&self) -> &str;
    /// Its settings as they would be written in the configuration.
    fn to_value(&self) -> Value;

    /// Checks what serde cannot. Errors name the key (`providers.<name>.<field>`).
    fn validate(&self) -> crate::Result<()>;
    /// Its endpoints as configured (no secrets needed).
    fn endpoints(&self) -> Vec<EndpointInfo>;
    /// Whether it authenticates by client certificate, so it must be served on a
    /// mutual-TLS listener.
    fn client_certificates(&self) -> bool {
        false
    }
    /// Whether it accepts requests without authentication (a generic provider with
    /// `scheme = "none"`): allowed only on a loopback or mutual-TLS listener.
    fn unauthenticated(&self) -> bool {
        false
    }
    /// Builds the running provider: resolves its secrets. Errors name the key at fault.
    fn build(&self, limits: Limits) -> crate::Result<Built>;
    /// Its operations for the spec, at their declared paths, without secrets: an OpenAPI
    /// document whose `paths`, `tags` and `components` are merged into the served one.
    fn spec(&self) -> Value;
    /// Fills the secrets it leaves empty from development secrets (loopback only; the
    /// caller decides). Records what it filled in `dev`.
    fn dev_secrets(&mut self, dev: &mut DevSecrets);
    /// Lines `switchboard check` prints about it beyond its paths: what it will enforce
    /// (pins), legacy algorithms, ...
    fn check_notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Its event types, when the body chooses them from a documented set (VerifyVASP's
    /// `callbackType`): only these become metric labels, anything else is counted as
    /// `other`. `None`: the first few types seen are labels of their own.
    fn event_types(&self) -> Option<Vec<String>> {
        None
    }
    /// A correctly authenticated sample request, for `switchboard simulate <name>`.
    /// `fetch` GETs a path of the target (Verestro's public key, to encrypt to).
    fn sample<'a>(&'a self, opts: &'a SampleOptions, fetch: &'a dyn Fetch) -> SampleFuture<'a>;
}

/// What a boxed provider needs of its concrete type: copies and typed access. Every
/// `Clone` provider has it (the blanket implementation below); none writes it by hand.
pub trait ProviderObject {
    /// A copy.
    fn clone_box(&self) -> Box<dyn Provider>;
    /// For typed access to a built-in's settings.
    fn as_any(&self) -> &dyn Any;
    /// For typed access to a built-in's settings.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Provider + Clone> ProviderObject for T {
    fn clone_box(&self) -> Box<dyn Provider> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Clone for Box<dyn Provider> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A running provider.
pub struct Built {
    /// What the server reports and routes by.
    pub info: ProviderInfo,
    /// Its operations, at their declared paths ([`EndpointInfo::canonical`]).
    pub endpoint: poem::endpoint::BoxEndpoint<'static, poem::Response>,
    /// Parses a kept body again (a replay of a quarantined event).
    pub reparse: Arc<dyn Reparse>,
}

/// Parses a kept body again as its provider would on arrival.
pub trait Reparse: Send + Sync {
    /// `event_type` and `meta` are the stored event's. The error is the reason it still
    /// does not parse.
    fn reparse(
        &self,
        event_type: &str,
        body: &[u8],
        meta: &BTreeMap<String, String>,
    ) -> Result<Reparsed, String>;
}

impl<F> Reparse for F
where
    F: Fn(&str, &[u8], &BTreeMap<String, String>) -> Result<Reparsed, String> + Send + Sync,
{
    fn reparse(
        &self,
        event_type: &str,
        body: &[u8],
        meta: &BTreeMap<String, String>,
    ) -> Result<Reparsed, String> {
        self(event_type, body, meta)
    }
}

/// What `switchboard simulate` asks of a provider's sample.
#[derive(Clone, Debug, Default)]
pub struct SampleOptions {
    /// Which notification (`otp`, `tx-report`, ...); each provider has its default.
    pub event: Option<String>,
    /// The body to send instead of the sample.
    pub body: Option<Vec<u8>>,
    /// The OTP to put in the sample (default: random).
    pub otp: Option<String>,
    /// The key id or api-key to sign with (default: the configured one).
    pub key_id: Option<String>,
    /// The secret or token to sign with (default: the configured one).
    pub secret: Option<String>,
    /// Encrypt the body (providers that support it).
    pub encrypt: bool,
    /// The idempotency key to send.
    pub idempotency_key: Option<String>,
}

/// A sample request.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The path to send it to (as configured).
    pub path: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// What a provider's sample returns.
pub type SampleFuture<'a> = Pin<Box<dyn Future<Output = crate::Result<Sample>> + Send + 'a>>;

/// GETs a path of the target and returns its JSON answer (for `simulate`).
pub trait Fetch: Send + Sync {
    /// The JSON answer of `GET <target><path>`, or why there is none.
    fn get_json<'a>(
        &'a self,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;
}

/// Development secrets, by name: those already generated (read from the data directory),
/// and whether new ones may be generated. Providers take what they need with
/// [`DevSecrets::token`] and [`DevSecrets::base64`] and record what they filled.
#[derive(Default)]
pub struct DevSecrets {
    /// The values, by name (`pomelo_api_key`, `stripe_secret`, ...).
    pub values: BTreeMap<String, String>,
    /// Whether a missing value may be generated (`serve`); otherwise it stays missing
    /// (`simulate` only reads).
    pub generate: bool,
    /// Whether a value was generated just now (the file must be written).
    pub changed: bool,
    /// The settings filled, for the log (`providers.pomelo.keys`).
    pub filled: Vec<String>,
    /// What to print once, as (label, value), for secrets generated just now.
    pub shown: Vec<(String, String)>,
}

impl fmt::Debug for DevSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevSecrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .field("filled", &self.filled)
            .finish()
    }
}

impl DevSecrets {
    /// The value stored as `name`, or (when generating) `make()`, then stored.
    pub fn take(&mut self, name: &str, make: impl FnOnce() -> String) -> Option<String> {
        if let Some(v) = self.values.get(name) {
            return Some(v.clone());
        }
        if !self.generate {
            return None;
        }
        let v = make();
        self.values.insert(name.to_owned(), v.clone());
        self.changed = true;
        Some(v)
    }

    /// A random token `<prefix><32 hex digits>` stored as `name`.
    pub fn token(&mut self, name: &str, prefix: &str) -> Option<String> {
        self.take(name, || {
            format!("{prefix}{}", hex::encode(random_bytes(16)))
        })
    }

    /// `bytes` random bytes as base64 text after `prefix`, stored as `name`.
    pub fn base64(&mut self, name: &str, prefix: &str, bytes: usize) -> Option<String> {
        use base64::Engine;
        self.take(name, || {
            format!(
                "{prefix}{}",
                base64::engine::general_purpose::STANDARD.encode(random_bytes(bytes))
            )
        })
    }

    /// Records that `setting` was filled, and shows `(label, value)` once.
    pub fn filled(&mut self, setting: impl Into<String>, shown: &[(&str, &str)]) {
        self.filled.push(setting.into());
        self.shown.extend(
            shown
                .iter()
                .map(|(l, v)| ((*l).to_owned(), (*v).to_owned())),
        );
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b
}

/// `[providers]`: one table per provider. Every built-in is present (with its defaults
/// when not configured); any other name is a generic provider.
#[derive(Clone, Debug)]
pub struct ProvidersConfig {
    entries: Vec<Box<dyn Provider>>,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersConfig {
            entries: BUILTIN.iter().map(|p| (p.default)()).collect(),
        }
    }
}

impl ProvidersConfig {
    /// Every provider: the built-ins in [`BUILTIN`] order, then generic ones by name.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Provider> {
        self.entries.iter().map(|b| b.as_ref())
    }

    /// Every provider, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn Provider>> {
        self.entries.iter_mut()
    }

    /// Every provider's name.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|p| p.name()).collect()
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Provider> {
        self.iter().find(|p| p.name() == name)
    }

    /// The settings of the built-in provider whose config type is `T`.
    pub fn typed<T: 'static>(&self) -> &T {
        self.iter()
            .find_map(|p| p.as_any().downcast_ref::<T>())
            .expect("every built-in provider is always configured")
    }

    /// The settings of the built-in provider whose config type is `T`, to change.
    pub fn typed_mut<T: 'static>(&mut self) -> &mut T {
        self.entries
            .iter_mut()
            .find_map(|p| p.as_any_mut().downcast_mut::<T>())
            .expect("every built-in provider is always configured")
    }

    /// Adds or replaces the provider called `name` from its table (as in the file).
    pub fn set(&mut self, name: &str, table: Value) -> Result<(), String> {
        let p = parse(name, table).map_err(|e| format!("providers.{name}: {e}"))?;
        match self.entries.iter_mut().find(|e| e.name() == name) {
            Some(slot) => *slot = p,
            None => self.entries.push(p),
        }
        Ok(())
    }
}

impl PartialEq for ProvidersConfig {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.name() == b.name() && a.to_value() == b.to_value())
    }
}

impl Serialize for ProvidersConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let map: serde_json::Map<String, Value> = self
            .entries
            .iter()
            .map(|p| (p.name().to_owned(), p.to_value()))
            .collect();
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ProvidersConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tables = BTreeMap::<String, Value>::deserialize(d)?;
        let mut cfg = ProvidersConfig::default();
        for (name, table) in tables {
            cfg.set(&name, table).map_err(D::Error::custom)?;
        }
        Ok(cfg)
    }
}

/// Reads `T` from a table; the error names the field (`hmac.secrets[0]: ...`).
pub fn from_table<T: serde::de::DeserializeOwned>(table: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(table).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// Its settings as a JSON value (for [`Provider::to_value`]).
pub fn to_table<T: Serialize>(cfg: &T) -> Value {
    serde_json::to_value(cfg).unwrap_or(Value::Null)
}

/// What the server needs to know of one endpoint of a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The path the operation is declared at (its default).
    pub canonical: String,
    /// The path it is served at, as configured.
    pub path: String,
    /// The setting that configures the path, for error messages.
    pub key: String,
}

/// What the server reports of a provider at start-up and routes requests by.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    /// Its name.
    pub name: String,
    /// How many credentials are active; 0 means every request is refused with 401.
    pub credentials: usize,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Whether it authenticates by client certificate, so it must be served on a
    /// mutual-TLS listener.
    pub client_certificates: bool,
}

/// A quarantined body parsed again by its provider, for an operator's replay after a fix
/// (of the provider's schema in a newer switchboard, or of the body itself).
#[derive(Debug)]
pub struct Reparsed {
    /// The event type the body parses as.
    pub event_type: String,
    /// The normalised data.
    pub data: serde_json::Value,
    /// Remarks (unknown enum values, ...).
    pub flags: Vec<String>,
}

/// The running providers' re-parsers, by name (for admin replays).
#[derive(Clone, Default)]
pub struct Reparsers(BTreeMap<String, Arc<dyn Reparse>>);

impl Reparsers {
    /// Registers `name`'s re-parser.
    pub fn insert(&mut self, name: &str, r: Arc<dyn Reparse>) {
        self.0.insert(name.to_owned(), r);
    }

    /// Parses a stored body again as `provider` would on arrival. The error is the reason
    /// it still does not parse.
    pub fn reparse(
        &self,
        provider: &str,
        event_type: &str,
        body: &[u8],
        meta: &BTreeMap<String, String>,
    ) -> Result<Reparsed, String> {
        match self.0.get(provider) {
            Some(r) => r.reparse(event_type, body, meta),
            None => Err(format!("unknown provider `{provider}`")),
        }
    }
}

/// The spec of one poem-openapi API, for [`Provider::spec`].
pub fn api_spec<T: poem_openapi::OpenApi>(api: T) -> Value {
    let svc = poem_openapi::OpenApiService::new(api, "", "");
    serde_json::from_str(&svc.spec()).unwrap_or(Value::Null)
}

/// One poem-openapi API as an endpoint, for [`Built::endpoint`].
pub fn api_endpoint<T: poem_openapi::OpenApi + 'static>(
    api: T,
) -> poem::endpoint::BoxEndpoint<'static, poem::Response> {
    use poem::{EndpointExt, IntoEndpoint};
    poem_openapi::OpenApiService::new(api, "", "")
        .into_endpoint()
        .map_to_response()
        .boxed()
}

/// A value from a body or header as an event type: lower snake case, at most 64
/// characters, safe as a route file name; `empty` when nothing is left.
pub fn event_type_of(value: &str, empty: &str) -> String {
    let t: String = value
        .chars()
        .take(64)
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    if t.is_empty() { empty.into() } else { t }
}

/// Whether `pin` is a SHA-256 certificate fingerprint: 64 hex digits, colons allowed.
pub fn is_sha256_fingerprint(pin: &str) -> bool {
    let hex: String = pin.trim().chars().filter(|c| *c != ':').collect();
    hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Checks that a configured path is usable: absolute, no query, no spaces.
pub fn validate_path(key: &str, path: &str) -> crate::Result<()> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.contains(['?', '#', ' ', '{', '}', '*'])
        && !path.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::config(
            key,
            format!("`{path}` is not a usable path (absolute, no trailing slash, no query)"),
        ))
    }
}
