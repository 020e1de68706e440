//! The PostgreSQL backend of switchboard's store ([`switchboard_core::store::Backend`]):
//! several instances over one database.
//!
//! What lives here: the schema (embedded, versioned migrations in `migrations/`, applied
//! under PostgreSQL's advisory lock so that instances starting together do not race), the
//! connection pool (sqlx, rustls to the database), the backend, LISTEN/NOTIFY wake-ups, the
//! leases and their renewal, and the import of an embedded store.
//! What never lives here: HTTP, providers, or any rule about what a state change means
//! (those are `switchboard_core::outbox`'s, shared with the embedded backend).
//!
//! How the promises of the store hold across instances:
//! - **A key is claimed by one request at a time.** A claim is an `INSERT` into `sb_keys`
//!   inside an open transaction; a concurrent duplicate's `INSERT … ON CONFLICT` waits for
//!   that transaction (bounded by `lock_timeout`), then reads the committed answer. A
//!   crashed instance's transaction is rolled back by the server, so no claim is left
//!   pending.
//! - **No 2xx before the event is durable:** the event, the key's answer and the wake-up
//!   of the other instances commit together.
//! - **Routing and delivery are leased:** an instance takes inbox events and due actions
//!   with `FOR UPDATE SKIP LOCKED`, stamping them with its id and a lease it renews while it
//!   works. When it dies, its leases run out and another instance takes the work over. A
//!   route is recorded only by the lease's owner; an action is started only from `pending`
//!   or `retrying` under its row lock, so two instances never send it at once.
//! - **Sweeping** runs under a transaction-level advisory lock: one instance at a time.
#![forbid(unsafe_code)]

mod backend;
mod import;

use std::{
    collections::HashSet,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgSslMode},
};
use switchboard_core::{
    Error, Result,
    config::{DatabaseTlsMode, StoreConfig},
    event::EventId,
    outbox::ActionId,
    store::Signals,
};
use uuid::Uuid;

pub use import::Imported;

/// The migrations, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The notification channel that wakes the route workers of every instance.
const INBOX_CHANNEL: &str = "sb_inbox";
/// The notification channel that wakes the delivery workers of every instance.
const OUTBOX_CHANNEL: &str = "sb_outbox";

/// The PostgreSQL backend. See the crate documentation.
pub struct PgBackend {
    pool: PgPool,
    /// This instance, as lease owner.
    instance: Uuid,
    /// How long work stays this instance's without a renewal.
    lease: Duration,
    /// How long events and their keys are kept.
    retention: Duration,
    /// What this instance holds leases on now, renewed in the background.
    held: Arc<Held>,
    /// Keys a request of this instance is claiming now: a concurrent duplicate arriving
    /// here waits for it in memory, instead of taking a database connection to wait in
    /// PostgreSQL (a storm of duplicates would otherwise empty the pool).
    claiming: Arc<Claiming>,
    /// Where each ingest transaction's `COMMIT` time goes (see `Backend::time_flushes`).
    flush_time: std::sync::OnceLock<switchboard_core::metrics::Histogram>,
    /// Stops the background tasks when the backend is dropped.
    _tasks: Vec<AbortOnDrop>,
}

/// Keys being claimed by this instance, each with the wake-up of its waiters.
pub(crate) type Claiming = Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>;

#[derive(Default)]
struct Held {
    events: Mutex<HashSet<EventId>>,
    actions: Mutex<HashSet<ActionId>>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A database error as the engine's: the message names tables and constraints, never
/// values.
pub(crate) fn db(e: sqlx::Error) -> Error {
    Error::Database(e.to_string())
}

/// Where the schema of a database stands, for `switchboard check` and `migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The newest migration applied to the database, if any.
    pub applied: Option<i64>,
    /// The newest migration this binary knows.
    pub known: i64,
}

fn connect_options(cfg: &StoreConfig) -> Result<PgConnectOptions> {
    let url = cfg
        .url
        .as_ref()
        .ok_or_else(|| Error::config("store.url", "is required for the postgres backend"))?
        .resolve()
        .map_err(|m| Error::config("store.url", m))?;
    let mut opts = PgConnectOptions::from_str(url.expose())
        .map_err(|e| Error::config("store.url", format!("not a PostgreSQL URL: {e}")))?
        .application_name("switchboard")
        .disable_statement_logging()
        .ssl_mode(match cfg.tls.mode {
            DatabaseTlsMode::Disable => PgSslMode::Disable,
            DatabaseTlsMode::Prefer => PgSslMode::Prefer,
            DatabaseTlsMode::Require => PgSslMode::Require,
            DatabaseTlsMode::VerifyCa => PgSslMode::VerifyCa,
            DatabaseTlsMode::VerifyFull => PgSslMode::VerifyFull,
        });
    if let Some(ca) = &cfg.tls.ca_file {
        opts = opts.ssl_root_cert(ca);
    }
    Ok(opts)
}

async fn pool(cfg: &StoreConfig) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(cfg.pool_size.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options(cfg)?)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot connect to the database: {e}")))
}

/// Applies the migrations this binary knows that the database lacks, under the advisory
/// lock sqlx takes (two instances starting together do not race), and returns where the
/// schema stands.
pub async fn migrate(cfg: &StoreConfig) -> Result<SchemaStatus> {
    let pool = pool(cfg).await?;
    run_migrations(&pool).await?;
    let status = schema_status_of(&pool).await;
    pool.close().await;
    status
}

async fn run_migrations(pool: &PgPool) -> Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| Error::Database(format!("migrating the schema: {e}")))
}

/// Connects and reads where the schema stands, changing nothing (`switchboard check`).
pub async fn schema_status(cfg: &StoreConfig) -> Result<SchemaStatus> {
    let pool = pool(cfg).await?;
    let status = schema_status_of(&pool).await;
    pool.close().await;
    status
}

async fn schema_status_of(pool: &PgPool) -> Result<SchemaStatus> {
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let applied = match table {
        None => None,
        Some(_) => sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(db)?,
    };
    Ok(SchemaStatus { applied, known })
}

impl PgBackend {
    /// Connects, brings the schema up to date and starts listening for the other
    /// instances (their writes wake this one's workers through `signals`).
    pub async fn connect(cfg: &StoreConfig, signals: Arc<Signals>) -> Result<PgBackend> {
        let pool = pool(cfg).await?;
        run_migrations(&pool).await?;
        let lease = cfg.lease.get();
        let held = Arc::new(Held::default());
        let instance = Uuid::new_v4();
        let listener = tokio::spawn(listen(pool.clone(), signals));
        let renewer = tokio::spawn(renew(pool.clone(), instance, lease, held.clone()));
        tracing::info!(instance = %instance, "store: PostgreSQL");
        Ok(PgBackend {
            pool,
            instance,
            lease,
            retention: cfg.retention.get(),
            held,
            claiming: Arc::default(),
            flush_time: std::sync::OnceLock::new(),
            _tasks: vec![
                AbortOnDrop(listener.abort_handle()),
                AbortOnDrop(renewer.abort_handle()),
            ],
        })
    }
}

/// Wakes this instance's workers when another instance (or this one) writes work.
async fn listen(pool: PgPool, signals: Arc<Signals>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the other instances; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen_all([INBOX_CHANNEL, OUTBOX_CHANNEL]).await {
            tracing::warn!(error = %e, "cannot listen for the other instances; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match n.channel() {
                    INBOX_CHANNEL => signals.inbox.notify_one(),
                    OUTBOX_CHANNEL => signals.outbox.notify_one(),
                    _ => {}
                },
                // The connection was lost and re-established: wake both, in case a
                // notification was missed meanwhile.
                Ok(None) => {
                    signals.inbox.notify_one();
                    signals.outbox.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for the other instances failed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

/// Renews the leases of what this instance works on, three times per lease.
async fn renew(pool: PgPool, instance: Uuid, lease: Duration, held: Arc<Held>) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let events: Vec<Uuid> = held
            .events
            .lock()
            .map(|h| h.iter().map(|i| i.0).collect())
            .unwrap_or_default();
        let actions: Vec<Uuid> = held
            .actions
            .lock()
            .map(|h| h.iter().map(|i| i.0).collect())
            .unwrap_or_default();
        let secs = lease.as_secs_f64();
        if !events.is_empty() {
            let r = sqlx::query(
                "UPDATE sb_events SET lease_until = now() + make_interval(secs => $3) \
                 WHERE id = ANY($1) AND lease_owner = $2 AND status = 'received'",
            )
            .bind(&events)
            .bind(instance)
            .bind(secs)
            .execute(&pool)
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot renew the leases of events being routed");
            }
        }
        if !actions.is_empty() {
            let r = sqlx::query(
                "UPDATE sb_actions SET lease_until = now() + make_interval(secs => $3) \
                 WHERE id = ANY($1) AND lease_owner = $2",
            )
            .bind(&actions)
            .bind(instance)
            .bind(secs)
            .execute(&pool)
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot renew the leases of actions being sent");
            }
        }
    }
}
