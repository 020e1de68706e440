//! The domain and the engine of switchboard.
//!
//! What lives here: the event and its lifecycle ([`event`]), the outbox's actions and the
//! state changes they go through ([`outbox`]), the storage interface and its embedded
//! backend on sled ([`store`]; PostgreSQL is the `switchboard-postgres` crate),
//! exactly-once acceptance of a notification ([`ingest`]), the route runtime ([`route`]),
//! the deliverer ([`delivery`]), masking of secret values ([`mask`]), metrics
//! ([`metrics`]), and the configuration types the engine needs ([`config`], [`secret`],
//! [`units`]).
//!
//! What never lives here: anything that knows HTTP (poem, hyper, status-code mapping) or any
//! one provider's contract. Providers describe a notification to [`ingest::Ingestor`] as a
//! plain [`ingest::Submission`]; the answer they want to give is opaque bytes to this crate.
#![forbid(unsafe_code)]

pub mod config;
pub mod delivery;
pub mod error;
pub mod event;
pub mod fsutil;
pub mod ingest;
pub mod mask;
pub mod metrics;
pub mod outbox;
pub mod peer;
pub mod route;
pub mod secret;
pub mod store;
pub mod units;

pub use error::{Error, Result};
