//! Pomelo's settings (`[providers.pomelo]`).

use serde::{Deserialize, Serialize};
use switchboard_core::{secret::SecretRef, units::HumanDuration};

/// The path served when none is configured.
pub const DEFAULT_PATH: &str = "/pomelo/tokenization/otp";

/// `[providers.pomelo]`: the tokenization OTP webhook.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PomeloConfig {
    /// Path the webhook is served at (the `{path_defined_by_you}` given to Pomelo).
    pub path: String,
    /// The endpoint Pomelo signs and sends in `X-Endpoint`. Defaults to `path`; set it when
    /// a proxy in front of switchboard rewrites the path.
    pub signed_endpoint: Option<String>,
    /// How far `X-Timestamp` may be from our clock, in either direction.
    pub timestamp_tolerance: HumanDuration,
    /// The api-key / api-secret pairs Pomelo may sign with. Several may be active at once,
    /// which is how secrets rotate. Without any, every request is refused with 401.
    pub keys: Vec<PomeloKey>,
    /// How long a repeat of a notification is recognised as one (Pomelo's retry horizon).
    /// Pomelo bodies carry no id, so repeats are recognised by endpoint + body hash; past
    /// this window an identical body is a new notification, not a retry. Pomelo does not
    /// publish its retry schedule; an OTP is useless after minutes, so an hour covers every
    /// useful retry without swallowing a genuine resend for the whole `store.retention`.
    pub dedup_window: HumanDuration,
}

/// One api-key / api-secret pair.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PomeloKey {
    /// The `X-Api-Key` value that selects this pair.
    pub api_key: String,
    /// The api-secret exactly as Pomelo hands it over (base64 text). Its base64-decoded
    /// bytes are the HMAC key. `env:NAME` or `file:PATH` recommended.
    pub api_secret: SecretRef,
}

impl Default for PomeloConfig {
    fn default() -> Self {
        PomeloConfig {
            path: DEFAULT_PATH.into(),
            signed_endpoint: None,
            timestamp_tolerance: HumanDuration::secs(300),
            keys: Vec::new(),
            dedup_window: HumanDuration::secs(3600),
        }
    }
}

impl PomeloConfig {
    /// The value `X-Endpoint` must carry.
    pub fn signed_endpoint(&self) -> &str {
        self.signed_endpoint.as_deref().unwrap_or(&self.path)
    }
}
