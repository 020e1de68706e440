//! The provider plugins, one folder each, all of the same shape.

pub mod pomelo;
pub mod verestro;
pub mod verifyvasp;

/// Every provider, by name.
pub const NAMES: [&str; 3] = [pomelo::NAME, verestro::NAME, verifyvasp::NAME];

use poem_openapi::Tags;
use serde::{Deserialize, Serialize};

/// The tags grouping operations in the spec and the docs.
#[derive(Tags)]
pub enum ProviderTag {
    /// Pomelo: card tokenization OTP webhook, authenticated by HMAC-SHA256.
    Pomelo,
    /// VerifyVASP: travel-rule verification callbacks, authenticated by a bearer token.
    #[oai(rename = "VerifyVASP")]
    VerifyVasp,
    /// Verestro: card-issuing notifications (3DS OTP, KYC, card locks, transactional lock
    /// reasons). Authenticated by mutual TLS: the client certificate must chain to the
    /// CA of the listener Verestro is served on (`switchboard ca sign-csr` signs
    /// Verestro's CSR) and may be pinned. Bodies may be JWE-encrypted to `GET /public-key`.
    Verestro,
}

/// `[providers]`: one table per provider.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    /// Pomelo (tokenization OTP webhook).
    pub pomelo: pomelo::PomeloConfig,
    /// Verestro (card-issuing notifications, mutual TLS and JWE).
    pub verestro: verestro::VerestroConfig,
    /// VerifyVASP (travel-rule callbacks).
    pub verifyvasp: verifyvasp::VerifyVaspConfig,
}

/// What the server needs to know of one endpoint of a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The path the operation is declared at (its default).
    pub canonical: &'static str,
    /// The path it is served at, as configured.
    pub path: String,
}

/// What the server reports of a provider at start-up and routes requests by.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    /// Its name.
    pub name: &'static str,
    /// How many credentials are active; 0 means every request is refused with 401.
    pub credentials: usize,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Whether it authenticates by client certificate, so it must be served on a
    /// mutual-TLS listener.
    pub client_certificates: bool,
}

/// A quarantined body parsed again by its provider, for an operator's replay after a fix
/// (of the provider's schema in a newer switchboard, or of the body itself).
#[derive(Debug)]
pub struct Reparsed {
    /// The event type the body parses as.
    pub event_type: String,
    /// The normalised data.
    pub data: serde_json::Value,
    /// Remarks (unknown enum values, ...).
    pub flags: Vec<String>,
}

/// Parses a stored body again as `provider` would on arrival. The error is the reason it
/// still does not parse.
pub fn reparse(
    provider: &str,
    event_type: &str,
    body: &[u8],
    limits: &crate::http::Limits,
    verestro: &verestro::Replay,
    meta: &std::collections::BTreeMap<String, String>,
) -> Result<Reparsed, String> {
    match provider {
        pomelo::NAME => pomelo::reparse(body, limits),
        verifyvasp::NAME => verifyvasp::reparse(body, limits),
        verestro::NAME => verestro::reparse(event_type, body, limits, verestro, meta),
        other => Err(format!("unknown provider `{other}`")),
    }
}

/// Checks that a configured path is usable: absolute, no query, no spaces.
pub fn validate_path(key: &str, path: &str) -> crate::Result<()> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.contains(['?', '#', ' ', '{', '}', '*'])
        && !path.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::config(
            key,
            format!("`{path}` is not a usable path (absolute, no trailing slash, no query)"),
        ))
    }
}
