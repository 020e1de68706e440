//! The store a configuration asks for: the embedded one under `store.path`, or a
//! PostgreSQL database shared by several instances (`store.backend = "postgres"`).

use std::sync::Arc;

use switchboard_core::{
    config::{StoreBackend, StoreConfig},
    store::{Signals, Store},
};
use switchboard_postgres::PgBackend;

use crate::Result;

/// Opens the configured store. PostgreSQL's schema is brought up to date first, under an
/// advisory lock. Must run inside a Tokio runtime.
pub async fn open(cfg: &StoreConfig) -> Result<Store> {
    match cfg.backend {
        StoreBackend::Sled => Ok(Store::open_sled(cfg)?),
        StoreBackend::Postgres => {
            let signals = Arc::new(Signals::default());
            let backend = PgBackend::connect(cfg, signals.clone()).await?;
            Ok(Store::new(Arc::new(backend), signals))
        }
    }
}
