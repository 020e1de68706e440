//! `[channels.http]`.

use serde::{Deserialize, Serialize};

/// `[channels.http]`: deliveries to named services (`http::deliver`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Most deliveries at once.
    pub concurrency: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { concurrency: 32 }
    }
}
