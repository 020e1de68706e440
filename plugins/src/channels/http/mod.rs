//! The HTTP channel: `http::deliver(service, path, body)` as a POST to a named service,
//! with the action's id as a stable `Idempotency-Key`. Only 2xx is success; `Retry-After`
//! is honoured.

pub mod config;
pub mod send;

use std::sync::Arc;

pub use config::HttpConfig;
use switchboard_core::delivery::Channel;

use crate::services::Services;

/// Builds the channel.
pub fn build(cfg: &HttpConfig, services: Services) -> Arc<dyn Channel> {
    Arc::new(send::Http {
        services,
        concurrency: cfg.concurrency.max(1),
    })
}
