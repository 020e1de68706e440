//! VerifyVASP's bearer token, compared in constant time.

use switchboard_core::secret::Secret;

use super::config::VerifyVaspConfig;
use crate::{Error, Result};

/// Why a request was refused. Never told to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token is configured: everything is refused.
    NotConfigured,
    /// The token does not match.
    BadToken,
}

impl Refusal {
    /// A metric label for the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::BadToken => "bad_token",
        }
    }
}

/// Verifies the bearer token.
pub struct Verifier {
    token: Option<Secret>,
}

impl Verifier {
    /// Resolves the configured token. Errors name the setting at fault.
    pub fn new(cfg: &VerifyVaspConfig) -> Result<Self> {
        let token = cfg
            .token
            .as_ref()
            .map(|t| {
                t.resolve()
                    .map_err(|m| Error::config("providers.verifyvasp.token", m))
            })
            .transpose()?;
        Ok(Verifier { token })
    }

    /// A verifier with no token, which refuses everything (used to describe the API).
    pub fn unconfigured() -> Self {
        Verifier { token: None }
    }

    /// Whether a token is configured.
    pub fn is_configured(&self) -> bool {
        self.token.is_some()
    }

    /// Checks the presented bearer token.
    pub fn verify(&self, presented: &str) -> Result<(), Refusal> {
        let token = self.token.as_ref().ok_or(Refusal::NotConfigured)?;
        if token.matches(presented.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::BadToken)
        }
    }
}
