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

use crate::{
    secret::SecretRef,
    units::{ByteSize, HumanDuration},
};

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
    /// Memory the database may use for its page cache (sled).
    pub cache_capacity: ByteSize,
    /// sled: a start replays the database's log written since its last snapshot. Past
    /// this much log since the last one, a new snapshot is written in the background, so
    /// a start (after a stop or a crash) replays at most about this much, whatever the
    /// size of the store. Smaller: quicker starts, more reading while running.
    pub checkpoint_after: ByteSize,
    /// `sled`: the embedded database under `path`, one process (the default). `postgres`:
    /// a PostgreSQL database shared by every instance (`url`).
    pub backend: StoreBackend,
    /// PostgreSQL: the connection URL, `postgres://user:password@host:port/db` (a secret:
    /// write `env:NAME` or `file:PATH`).
    pub url: Option<SecretRef>,
    /// PostgreSQL: most connections this instance opens.
    pub pool_size: u32,
    /// PostgreSQL: TLS to the database.
    pub tls: DatabaseTls,
    /// PostgreSQL: how long an event being routed or an action being sent stays one
    /// instance's before another may take it over (the instance renews it while it
    /// works). After a crash, its work resumes elsewhere within this.
    pub lease: HumanDuration,
}

/// Where the store lives.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// The embedded database (sled) under `store.path`: one process, no configuration.
    #[default]
    Sled,
    /// A PostgreSQL database shared by several instances.
    Postgres,
}

/// TLS to the database.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseTls {
    /// `disable`, `prefer` (the default: TLS when the server offers it), `require`,
    /// `verify-ca` or `verify-full` (the server's certificate and name are checked).
    pub mode: DatabaseTlsMode,
    /// PEM file of the CA the database's certificate chains to (for `verify-ca` and
    /// `verify-full`; default: the public web PKI).
    pub ca_file: Option<PathBuf>,
}

/// How TLS to the database is used.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseTlsMode {
    /// Never.
    Disable,
    /// When the server offers it.
    #[default]
    Prefer,
    /// Always, without checking the certificate.
    Require,
    /// Always, with the certificate checked against `ca_file`.
    VerifyCa,
    /// Always, with the certificate and the host name checked.
    VerifyFull,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data"),
            retention: HumanDuration::secs(7 * 86_400),
            sweep_interval: HumanDuration::secs(60),
            duplicate_wait: HumanDuration::secs(5),
            cache_capacity: ByteSize::mib(64),
            checkpoint_after: ByteSize::mib(128),
            backend: StoreBackend::Sled,
            url: None,
            pool_size: 32,
            tls: DatabaseTls::default(),
            lease: HumanDuration::secs(30),
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
        if self.checkpoint_after.0 < 1024 * 1024 {
            return Err(crate::Error::config(
                "store.checkpoint_after",
                "must be at least 1MiB",
            ));
        }
        if self.backend == StoreBackend::Postgres {
            if self.url.is_none() {
                return Err(crate::Error::config(
                    "store.url",
                    "is required with backend = \"postgres\" (`env:NAME` or `file:PATH`)",
                ));
            }
            if self.pool_size < 2 {
                return Err(crate::Error::config(
                    "store.pool_size",
                    "must be at least 2 (one connection listens for the other instances)",
                ));
            }
            if self.lease.get() < std::time::Duration::from_secs(3) {
                return Err(crate::Error::config("store.lease", "must be at least 3s"));
            }
        }
        Ok(())
    }
}

/// `[routes]`: the route scripts and their sandbox.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Directory of the route scripts (`<provider>/<event>.rhai`). When it does not exist,
    /// the scripts embedded in the binary are used (`switchboard init` writes them out).
    pub dir: PathBuf,
    /// Events routed at once.
    pub workers: usize,
    /// Longest a script may run, time spent waiting on lookups not counted.
    pub deadline: HumanDuration,
    /// Most operations a script may perform in one run.
    pub max_operations: u64,
    /// Deepest function-call nesting.
    pub max_call_levels: usize,
    /// Longest string a script may build.
    pub max_string_size: ByteSize,
    /// Most elements of an array or entries of a map a script may build.
    pub max_collection_size: usize,
    /// Longest one lookup (`http::get`, `http::post`) may take.
    pub lookup_timeout: HumanDuration,
    /// Longest all lookups of one run may take together.
    pub lookup_budget: HumanDuration,
    /// When a run fails because a lookup timed out or its service answered 5xx/429, the
    /// waits before running the route again; after the last, the event is `failed`.
    pub lookup_retries: Vec<HumanDuration>,
    /// How often the scripts are checked for changes (SIGHUP reloads at once).
    pub reload_interval: HumanDuration,
    /// Where scripts run: `process` (default), in worker processes that `serve` starts
    /// from its own binary (`switchboard route-worker`), each under a memory limit and
    /// killed when a run overstays its deadline, so that nothing a script does can stop
    /// the server; or `in_process`, on threads of the server itself (a crash there takes
    /// the server down, and only the crash counter keeps a restart from running the same
    /// event again and again).
    pub isolation: Isolation,
    /// Address space a worker process may use (its `RLIMIT_AS`: the binary, its stacks
    /// and its heap together). A run that needs more ends the worker, and its event is
    /// `failed` as a crash.
    pub worker_memory: ByteSize,
    /// Most actions (messages, deliveries, log lines) one run may queue.
    pub max_actions: usize,
    /// Most bytes of `print` and `debug` output one run may write.
    pub max_output: ByteSize,
    /// Deepest nesting of arrays and maps that may be printed, compared, turned into
    /// JSON or queued in an action (2 to 100).
    pub max_value_depth: usize,
    /// With `isolation = "in_process"`: runs of one event that may end without finishing
    /// (the whole server crashed or was killed during them) before the event is parked
    /// `failed` instead of being run again; counted on disk before each run starts. (In
    /// worker processes a crash parks its event at once, and a stop of the server is not
    /// the script's fault.)
    pub max_crashes: u32,
}

/// Where route scripts run (`routes.isolation`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// In worker processes, children of `serve` (the default).
    #[default]
    Process,
    /// On threads of the server.
    InProcess,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            dir: PathBuf::from("routes"),
            workers: 8,
            deadline: HumanDuration::millis(250),
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_string_size: ByteSize::kib(64),
            max_collection_size: 10_000,
            lookup_timeout: HumanDuration::secs(2),
            lookup_budget: HumanDuration::secs(5),
            lookup_retries: vec![
                HumanDuration::secs(1),
                HumanDuration::secs(5),
                HumanDuration::secs(20),
            ],
            reload_interval: HumanDuration::secs(1),
            isolation: Isolation::Process,
            worker_memory: ByteSize::mib(512),
            max_actions: 100,
            max_output: ByteSize::kib(16),
            max_value_depth: 64,
            max_crashes: 2,
        }
    }
}

/// `[delivery]`: retries of the outbox.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Waits before each retry; after the last, an action is `dead`. The default
    /// follows the webhook industry: seconds, then minutes, then hours, about a day in
    /// all.
    pub schedule: Vec<HumanDuration>,
    /// Random spread of each wait, as a fraction (0.2: ±20 %), so that retries of many
    /// actions do not arrive together.
    pub jitter: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            schedule: [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600]
                .into_iter()
                .map(HumanDuration::secs)
                .collect(),
            jitter: 0.2,
        }
    }
}

impl RoutesConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> crate::Result<()> {
        let positive = |key: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(crate::Error::config(key, "must be greater than zero"))
            }
        };
        positive("routes.workers", self.workers > 0)?;
        positive("routes.deadline", !self.deadline.get().is_zero())?;
        positive("routes.max_operations", self.max_operations > 0)?;
        positive("routes.max_call_levels", self.max_call_levels > 0)?;
        positive(
            "routes.lookup_timeout",
            !self.lookup_timeout.get().is_zero(),
        )?;
        positive(
            "routes.reload_interval",
            !self.reload_interval.get().is_zero(),
        )?;
        positive("routes.max_actions", self.max_actions > 0)?;
        positive("routes.max_crashes", self.max_crashes > 0)?;
        if !(2..=100).contains(&self.max_value_depth) {
            return Err(crate::Error::config(
                "routes.max_value_depth",
                "must be between 2 and 100",
            ));
        }
        if self.worker_memory.0 < 64 << 20 {
            return Err(crate::Error::config(
                "routes.worker_memory",
                "must be at least 64MiB (the worker's binary and stacks count too)",
            ));
        }
        Ok(())
    }
}

impl DeliveryConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> crate::Result<()> {
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(crate::Error::config(
                "delivery.jitter",
                "must be at least 0 and below 1",
            ));
        }
        Ok(())
    }
}
