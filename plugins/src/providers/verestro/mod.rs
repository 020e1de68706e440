//! Verestro: card-issuing notifications (`PROVIDERS.md` §1) behind mutual TLS, with JWE.
//!
//! Eight `POST /notifications/...` endpoints and `GET /public-key`. Authentication is the
//! client certificate that the mutual-TLS listener verified, optionally pinned
//! ([`verify`]); bodies may be encrypted to our RSA key ([`jwe`]). Success is `204`; an
//! unusable request is `422 {"detail": CODE}`, which Verestro never retries, so a failure
//! on our side is a `503`. `X-Idempotency-Key` makes repeats identical and a reused key
//! with another body `422 IDEMPOTENCY_KEY_REUSED`; without a key (card lock/unlock), repeats
//! are recognised by endpoint and body.

pub mod api;
pub mod config;
pub mod jwe;
pub mod model;
#[cfg(test)]
mod tests;
pub mod verify;

pub use api::VerestroApi;
pub use config::VerestroConfig;
use switchboard_core::peer::Pins;

use super::{EndpointInfo, ProviderInfo};

/// The provider's name in events, metrics and routes.
pub const NAME: &str = "verestro";

/// The notification endpoints: (event type, declared path).
pub const ENDPOINTS: [(&str, &str); 8] = [
    ("otp", "/notifications/otp"),
    (
        "verificationInProgress",
        "/notifications/verificationInProgress",
    ),
    (
        "verificationAccepted",
        "/notifications/verificationAccepted",
    ),
    (
        "verificationRejected",
        "/notifications/verificationRejected",
    ),
    ("cardLocked", "/notifications/cardLocked"),
    ("cardUnlocked", "/notifications/cardUnlocked"),
    (
        "transactionalLockReasonAdded",
        "/notifications/transactionalLockReasonAdded",
    ),
    (
        "transactionalLockReasonRemoved",
        "/notifications/transactionalLockReasonRemoved",
    ),
];

/// The declared path of the public key.
pub const PUBLIC_KEY_PATH: &str = "/public-key";

/// Checks the settings serde cannot.
pub fn validate(cfg: &VerestroConfig) -> crate::Result<()> {
    if !cfg.path_prefix.is_empty() {
        super::validate_path("providers.verestro.path_prefix", &cfg.path_prefix)?;
    }
    for e in &cfg.require_encryption {
        if e != "*" && !ENDPOINTS.iter().any(|(n, _)| n == e) {
            return Err(crate::Error::config(
                "providers.verestro.require_encryption",
                format!(
                    "unknown endpoint `{e}` (known: {}, or *)",
                    ENDPOINTS.map(|(n, _)| n).join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the plugin from its configuration, loading its JWE keys.
pub fn build(cfg: &VerestroConfig) -> crate::Result<(VerestroApi, ProviderInfo)> {
    validate(cfg)?;
    let keys = jwe::Keys::new(cfg)?;
    let pins = Pins::new(&cfg.pin_sha256, &cfg.pin_subject);
    let info = info(cfg, keys.len());
    Ok((VerestroApi::new(cfg.clone(), keys, pins), info))
}

/// The plugin with no keys, for describing the API.
pub fn describe(cfg: &VerestroConfig) -> VerestroApi {
    VerestroApi::new(cfg.clone(), jwe::Keys::none(), Pins::default())
}

/// The endpoints as configured.
pub fn info(cfg: &VerestroConfig, jwe_keys: usize) -> ProviderInfo {
    let mut endpoints: Vec<EndpointInfo> = ENDPOINTS
        .iter()
        .map(|(_, p)| EndpointInfo {
            canonical: p,
            path: format!("{}{p}", cfg.path_prefix),
        })
        .collect();
    endpoints.push(EndpointInfo {
        canonical: PUBLIC_KEY_PATH,
        path: format!("{}{PUBLIC_KEY_PATH}", cfg.path_prefix),
    });
    ProviderInfo {
        name: NAME,
        // Verestro authenticates by client certificate; its credentials are the
        // listener's. This counts the JWE keys.
        credentials: jwe_keys,
        endpoints,
        client_certificates: true,
    }
}

fn parse<T: poem_openapi::types::ParseFromJSON + poem_openapi::types::ToJSON + model::Remarks>(
    endpoint: &str,
    body: &[u8],
    limits: &crate::http::Limits,
) -> Result<super::Reparsed, String> {
    let p = crate::http::parse_json_lenient::<T>(body, limits)?;
    let mut flags = p.flags;
    flags.extend(p.value.remarks(endpoint));
    Ok(super::Reparsed {
        event_type: endpoint.into(),
        data: p.data,
        flags,
    })
}

/// What replaying a stored body needs: the keys and the encryption policy configured now.
#[derive(Clone)]
pub struct Replay {
    /// The decryption keys.
    pub keys: jwe::Keys,
    /// `require_encryption` as configured.
    pub require_encryption: Vec<String>,
}

/// Parses a stored body again as the endpoint it arrived on (the event type). A body kept
/// as it arrived because it could not be decrypted then is decrypted with today's keys; a
/// body refused as plaintext where encryption is required (`meta.refused`) stays refused
/// while the endpoint is on `require_encryption`. (A body that arrived encrypted and
/// failed the schema is stored decrypted: it is not plaintext from the network.)
pub fn reparse(
    endpoint: &str,
    body: &[u8],
    limits: &crate::http::Limits,
    replay: &Replay,
    meta: &std::collections::BTreeMap<String, String>,
) -> Result<super::Reparsed, String> {
    use model::*;
    let decrypted;
    let body = match api::envelope(body) {
        Some(token) => {
            decrypted = replay.keys.decrypt(&token).map_err(|e| match e {
                jwe::JweError::Invalid => "the encrypted token is malformed".to_owned(),
                jwe::JweError::CantDecrypt => {
                    "no active key decrypts the token (or its algorithm is refused)".to_owned()
                }
            })?;
            decrypted.plaintext.as_slice()
        }
        None if meta.get("refused").map(String::as_str) == Some("ENCRYPTION_REQUIRED")
            && config::encryption_required(&replay.require_encryption, endpoint) =>
        {
            return Err(format!(
                "{} (take the endpoint off the list to accept this body)",
                api::refusal_reason(model::ErrorCode::EncryptionRequired)
            ));
        }
        None => body,
    };
    match endpoint {
        "otp" => parse::<OtpNotification>(endpoint, body, limits),
        "verificationInProgress" | "verificationAccepted" | "verificationRejected" => {
            parse::<VerificationNotification>(endpoint, body, limits)
        }
        "cardLocked" => parse::<CardLocked>(endpoint, body, limits),
        "cardUnlocked" => parse::<CardUnlocked>(endpoint, body, limits),
        "transactionalLockReasonAdded" | "transactionalLockReasonRemoved" => {
            parse::<LockReasonChange>(endpoint, body, limits)
        }
        other => Err(format!("unknown Verestro endpoint `{other}`")),
    }
}
