//! VerifyVASP: the travel-rule verification callback (`PROVIDERS.md` §2).
//!
//! One `POST` at a configurable path, authenticated by a bearer token compared in
//! constant time ([`verify`]). Every authenticated call is answered `200 {"result": true}`
//! within the enclave's one-second budget: malformed bodies are quarantined, repeats are
//! answered from the first, and a different body for the same verification is kept as its
//! own, flagged event.

pub mod api;
pub mod config;
pub mod model;
#[cfg(test)]
mod tests;
pub mod verify;

pub use api::VerifyVaspApi;
pub use config::VerifyVaspConfig;

use super::{EndpointInfo, ProviderInfo};

/// The provider's name in events, metrics and routes.
pub const NAME: &str = "verifyvasp";

/// The documented `callbackType` values.
pub const KNOWN_TYPES: [&str; 3] = ["VERIFICATION_RESULT", "TX_REPORT", "ERROR_REPORT"];

/// The event type of a quarantined callback.
pub const QUARANTINE_EVENT_TYPE: &str = "unparsed";

/// The event type of a `callbackType`: lower snake case (`VERIFICATION_RESULT` →
/// `verification_result`), safe as a route file name.
pub fn event_type(callback_type: &str) -> String {
    let t: String = callback_type
        .chars()
        .take(64)
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    if t.is_empty() {
        QUARANTINE_EVENT_TYPE.into()
    } else {
        t
    }
}

/// Builds the plugin from its configuration, resolving its secret.
pub fn build(cfg: &VerifyVaspConfig) -> crate::Result<(VerifyVaspApi, ProviderInfo)> {
    let verifier = verify::Verifier::new(cfg)?;
    let info = info(cfg, usize::from(verifier.is_configured()));
    Ok((VerifyVaspApi::new(verifier, cfg.path.clone()), info))
}

/// The plugin with no credentials, for describing the API.
pub fn describe(cfg: &VerifyVaspConfig) -> VerifyVaspApi {
    VerifyVaspApi::new(verify::Verifier::unconfigured(), cfg.path.clone())
}

/// The endpoints as configured.
pub fn info(cfg: &VerifyVaspConfig, credentials: usize) -> ProviderInfo {
    ProviderInfo {
        name: NAME,
        credentials,
        endpoints: vec![EndpointInfo {
            canonical: config::DEFAULT_PATH,
            path: cfg.path.clone(),
        }],
        client_certificates: false,
    }
}

/// Parses a stored body again (a replay of a quarantined event).
pub fn reparse(body: &[u8], limits: &crate::http::Limits) -> Result<super::Reparsed, String> {
    let fp = switchboard_core::ingest::fingerprint(body);
    match api::classify(body, limits, &fp) {
        (event_type, _, switchboard_core::ingest::Content::Parsed { data, flags }) => {
            Ok(super::Reparsed {
                event_type,
                data,
                flags,
            })
        }
        (_, _, switchboard_core::ingest::Content::Quarantined { reason }) => Err(reason),
    }
}
