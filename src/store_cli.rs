//! `switchboard migrate` and `switchboard store copy`: the PostgreSQL store's schema, and
//! moving an embedded store into it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use switchboard_core::{
    config::{StoreBackend, StoreConfig},
    store::sled::SledBackend,
};
use switchboard_openapi::config::Config;
use switchboard_postgres::{PgBackend, SchemaStatus};

/// What `switchboard store` does.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy an embedded (sled) store into the PostgreSQL database of a configuration:
    /// events (quarantined ones included), de-duplication keys with their answers, and
    /// every delivery with its attempts. Stop the server that uses the embedded store
    /// first. Copying twice is harmless.
    Copy {
        /// The embedded store's directory (its `store.path`, e.g. `./data`).
        #[arg(long)]
        from: PathBuf,
        /// The configuration naming the PostgreSQL database (`store.backend = "postgres"`).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
    },
}

fn postgres_of(path: &Path) -> anyhow::Result<StoreConfig> {
    let config = Config::load(Some(path))?;
    if config.store.backend != StoreBackend::Postgres {
        bail!(
            "{}: store.backend is not \"postgres\": nothing to migrate",
            path.display()
        );
    }
    Ok(config.store)
}

/// Describes where a schema stands, for `check` and `migrate`.
pub fn describe(s: &SchemaStatus) -> String {
    match s.applied {
        Some(v) if v == s.known => format!("schema version {v} (current)"),
        Some(v) if v > s.known => format!(
            "schema version {v}, newer than this binary's {}: upgrade switchboard",
            s.known
        ),
        Some(v) => format!(
            "schema version {v}; {} will be applied at start-up or by `switchboard migrate`",
            s.known
        ),
        None => format!(
            "empty; schema version {} will be created at start-up or by `switchboard migrate`",
            s.known
        ),
    }
}

/// `switchboard migrate`.
pub async fn migrate(path: &Path) -> anyhow::Result<()> {
    let cfg = postgres_of(path)?;
    let status = switchboard_postgres::migrate(&cfg)
        .await
        .context("migrating the database")?;
    out!("{}: {}", path.display(), describe(&status));
    Ok(())
}

/// `switchboard store ...`.
pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Copy { from, config } => {
            let cfg = postgres_of(&config)?;
            let sled = SledBackend::open(&StoreConfig {
                path: from.clone(),
                ..StoreConfig::default()
            })
            .with_context(|| format!("opening the embedded store in {}", from.display()))?;
            let export = sled.export()?;
            drop(sled);
            let pg = PgBackend::connect(&cfg, Default::default())
                .await
                .context("connecting to the database")?;
            let done = pg.import(&export).await?;
            out!(
                "copied from {}: {} of {} events, {} of {} keys, {} of {} deliveries (the rest were there already)",
                from.display(),
                done.events,
                export.events.len(),
                done.keys,
                export.keys.len(),
                done.actions,
                export.actions.len()
            );
            Ok(())
        }
    }
}
