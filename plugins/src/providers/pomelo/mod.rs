//! Pomelo: the card tokenization OTP webhook (`PROVIDERS.md` §3).
//!
//! One `POST` at a configurable path, signed with HMAC-SHA256 by one of several
//! api-key/api-secret pairs ([`verify`]). No idempotency header: repeats are recognised by
//! endpoint + body hash. Success is `204`; Pomelo retries on any 4xx/5xx, so a failure on
//! our side is a `503` and a duplicate is a `204`.

pub mod api;
pub mod config;
pub mod model;
#[cfg(test)]
mod tests;
pub mod verify;

pub use api::PomeloApi;
pub use config::PomeloConfig;

use super::{EndpointInfo, ProviderInfo};

/// The provider's name in events, metrics and routes.
pub const NAME: &str = "pomelo";

/// The event type of a tokenization OTP.
pub const EVENT_TYPE: &str = "tokenization_otp";

/// Builds the plugin from its configuration, resolving its secrets.
pub fn build(cfg: &PomeloConfig) -> crate::Result<(PomeloApi, ProviderInfo)> {
    let verifier = verify::Verifier::new(cfg)?;
    let info = info(cfg, verifier.key_count());
    Ok((PomeloApi::new(verifier, cfg.path.clone()), info))
}

/// The plugin with no credentials, for describing the API.
pub fn describe(cfg: &PomeloConfig) -> PomeloApi {
    PomeloApi::new(verify::Verifier::unconfigured(cfg), cfg.path.clone())
}

/// The endpoints as configured.
pub fn info(cfg: &PomeloConfig, credentials: usize) -> ProviderInfo {
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
    let p = crate::http::parse_json::<model::TokenizationOtp>(body, limits)?;
    Ok(super::Reparsed {
        event_type: EVENT_TYPE.into(),
        data: p.data,
        flags: p.flags,
    })
}
