//! Configuration types the engine owns, and the layering every configuration goes through.
//!
//! Layers, later winning: embedded defaults → the TOML file → `SWITCHBOARD_*` environment
//! variables (`SWITCHBOARD_STORE__RETENTION=14d` sets `store.retention`; `__` separates
//! levels, and only variables containing `__` are read, so `SWITCHBOARD_`-prefixed names
//! stay free for `env:` secret references). Then the result is validated and resolved.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::units::{ByteSize, HumanDuration};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Builds the layered configuration: defaults of `T`, then `file` (if any), then the
/// environment. Extraction errors name the key and the file it came from.
pub fn layered<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
) -> Result<T, Box<figment::Error>> {
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    fig.extract().map_err(Box::new)
}

/// Where and for how long the store keeps things.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory holding switchboard's data: the database (`db/`) and, when development
    /// secrets are enabled, `dev-secrets.toml`. Created if missing.
    pub path: PathBuf,
    /// How long idempotency records and events are kept. Must exceed every provider's
    /// retry horizon, so that a late retry is still recognised as a duplicate. Events that
    /// wait for an operator (quarantined) are kept until handled.
    pub retention: HumanDuration,
    /// How often the sweeper removes expired records.
    pub sweep_interval: HumanDuration,
    /// How long a concurrent duplicate waits for the first request with its key before it
    /// is answered "try again" (a 5xx or the provider's equivalent).
    pub duplicate_wait: HumanDuration,
    /// Memory the database may use for its page cache.
    pub cache_capacity: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data"),
            retention: HumanDuration::secs(7 * 86_400),
            sweep_interval: HumanDuration::secs(60),
            duplicate_wait: HumanDuration::secs(5),
            cache_capacity: ByteSize::mib(64),
        }
    }
}

impl StoreConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> crate::Result<()> {
        if self.retention.get().as_secs() < 60 {
            return Err(crate::Error::config(
                "store.retention",
                "must be at least one minute",
            ));
        }
        if self.sweep_interval.get().is_zero() {
            return Err(crate::Error::config(
                "store.sweep_interval",
                "must be greater than zero",
            ));
        }
        if self.duplicate_wait.get().is_zero() {
            return Err(crate::Error::config(
                "store.duplicate_wait",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
