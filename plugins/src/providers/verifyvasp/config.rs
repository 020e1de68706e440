//! VerifyVASP's settings (`[providers.verifyvasp]`).

use serde::{Deserialize, Serialize};
use switchboard_core::secret::SecretRef;

/// The path served when none is configured.
pub const DEFAULT_PATH: &str = "/verifyvasp/callback";

/// `[providers.verifyvasp]`: the travel-rule verification callback.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyVaspConfig {
    /// Path the callback is served at (the enclave's `VEGA_VERIFICATION_CALLBACK_API_PATH`).
    pub path: String,
    /// The bearer token the enclave sends (`VEGA_VERIFICATION_AUTHORIZATION_TOKEN`).
    /// Without it, every request is refused with 401. `env:NAME` or `file:PATH`
    /// recommended.
    pub token: Option<SecretRef>,
}

impl Default for VerifyVaspConfig {
    fn default() -> Self {
        VerifyVaspConfig {
            path: DEFAULT_PATH.into(),
            token: None,
        }
    }
}
