//! switchboard's HTTP face.
//!
//! What lives here: the root configuration ([`config`]) and development secrets
//! ([`devsecrets`]); the assembly of the poem-openapi service from the provider plugins, the
//! admin API ([`admin`]) and the system endpoints ([`system`]) into one endpoint
//! ([`app`]); the front that maps configured paths and counts requests ([`front`]); and the
//! listener with its timeouts and connection cap ([`server`]); the operator's console in
//! the browser ([`console`]), a client of the admin API. The committed spec,
//! `openapi/openapi.json`, is what [`app::spec`] produces for the default configuration.
//!
//! What does not live here: storage, idempotency (core), provider authentication and
//! contracts (plugins).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod console;
pub mod ctx;
pub mod devsecrets;
pub mod error;
pub mod front;
pub mod routes;
pub mod server;
pub mod storage;
pub mod system;
pub mod tls;

pub use error::{Error, Result};
