//! switchboard's plugins.
//!
//! What lives here: the provider registry and the `Provider` trait ([`providers`]), one
//! folder per provider (Pomelo, VerifyVASP, Verestro), each of the same shape: `mod.rs`
//! (docs, its registration and `impl Provider`), `config.rs` (its settings),
//! `verify.rs` (authentication as plain functions over bytes and header values: no HTTP
//! framework), `model.rs` (the typed, documented bodies), `api.rs` (its poem-openapi
//! operations and answers) and `tests.rs`; and `providers::generic`, which makes
//! providers from configuration (HMAC, bearer, key header, Basic, mTLS, none; presets).
//! [`http`] holds the glue every provider's `api.rs` shares: reading a bounded body,
//! replaying a stored answer, mapping an engine error to the answer that makes a provider
//! retry.
//!
//! [`channels`] holds the channel plugins (email via lettre, SMS gateways, HTTP, console),
//! one folder each, of the same shape; [`services`] the named internal services route
//! scripts look data up from and deliver to.
//!
//! What does not live here: the store, idempotency, the admin API, listeners. Plugins hand
//! a [`switchboard_core::ingest::Submission`] to the engine and answer what it returns.
#![forbid(unsafe_code)]

pub mod channels;
pub mod error;
pub mod http;
pub mod providers;
pub mod services;
pub mod types;

pub use error::{Error, Result};
