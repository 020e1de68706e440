//! Pomelo's HMAC scheme, as plain functions over header values and body bytes.
//!
//! `X-Signature: hmac-sha256 base64(HMAC-SHA256(key, timestamp + endpoint + body))`, where
//! `key` is the base64-*decoded* api-secret selected by `X-Api-Key`, the three parts are
//! concatenated with no separator, and `X-Timestamp` (unix seconds) must lie within the
//! tolerance on either side of our clock. Every failure is one 401 to the caller; the
//! reason is only counted and logged.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::config::PomeloConfig;
use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The shortest decoded api-secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The scheme prefix of `X-Signature`.
pub const SCHEME: &str = "hmac-sha256";

/// The four authentication headers of a request, as received.
#[derive(Clone, Copy, Debug)]
pub struct SignedHeaders<'a> {
    /// `X-Api-Key`.
    pub api_key: &'a str,
    /// `X-Signature`.
    pub signature: &'a str,
    /// `X-Timestamp`.
    pub timestamp: &'a str,
    /// `X-Endpoint`.
    pub endpoint: &'a str,
}

/// Why a request was refused. Never told to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key pair is configured: everything is refused.
    NotConfigured,
    /// `X-Api-Key` matches no configured pair.
    UnknownKey,
    /// `X-Signature` is not `hmac-sha256 <base64>`.
    MalformedSignature,
    /// The signature does not match.
    BadSignature,
    /// `X-Timestamp` is not an integer.
    MalformedTimestamp,
    /// `X-Timestamp` is older than the tolerance.
    Stale,
    /// `X-Timestamp` is further in the future than the tolerance.
    Future,
    /// `X-Endpoint` is not this endpoint.
    Endpoint,
}

impl Refusal {
    /// A metric label for the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::UnknownKey => "unknown_key",
            Refusal::MalformedSignature => "malformed_signature",
            Refusal::BadSignature => "bad_signature",
            Refusal::MalformedTimestamp => "malformed_timestamp",
            Refusal::Stale => "stale",
            Refusal::Future => "future",
            Refusal::Endpoint => "endpoint",
        }
    }
}

struct Key {
    api_key: String,
    hmac_key: Vec<u8>,
    /// How the key is named in logs and events: its position, never its value.
    label: String,
}

/// Verifies requests against the configured key pairs.
pub struct Verifier {
    keys: Vec<Key>,
    endpoint: String,
    tolerance_secs: i64,
}

impl Verifier {
    /// Resolves the configured secrets. Errors name the setting at fault.
    pub fn new(cfg: &PomeloConfig) -> Result<Self> {
        let mut keys = Vec::with_capacity(cfg.keys.len());
        for (i, k) in cfg.keys.iter().enumerate() {
            let at = format!("providers.pomelo.keys[{i}]");
            if k.api_key.is_empty() {
                return Err(Error::config(format!("{at}.api_key"), "is empty"));
            }
            if keys.iter().any(|o: &Key| o.api_key == k.api_key) {
                return Err(Error::config(
                    format!("{at}.api_key"),
                    "is configured twice",
                ));
            }
            let secret = k
                .api_secret
                .resolve()
                .map_err(|m| Error::config(format!("{at}.api_secret"), m))?;
            let hmac_key = decode_secret(secret.expose()).ok_or_else(|| {
                Error::config(
                    format!("{at}.api_secret"),
                    "is not base64 text (Pomelo hands api-secrets over base64-encoded)",
                )
            })?;
            if hmac_key.len() < MIN_SECRET_BYTES {
                return Err(Error::config(
                    format!("{at}.api_secret"),
                    format!(
                        "decodes to {} bytes; at least {MIN_SECRET_BYTES} are required (a short secret can be guessed)",
                        hmac_key.len()
                    ),
                ));
            }
            keys.push(Key {
                api_key: k.api_key.clone(),
                hmac_key,
                label: format!("keys[{i}]"),
            });
        }
        Ok(Verifier {
            keys,
            endpoint: cfg.signed_endpoint().to_owned(),
            tolerance_secs: i64::try_from(cfg.timestamp_tolerance.get().as_secs())
                .unwrap_or(i64::MAX),
        })
    }

    /// A verifier with no keys, which refuses everything (used to describe the API).
    pub fn unconfigured(cfg: &PomeloConfig) -> Self {
        Verifier {
            keys: Vec::new(),
            endpoint: cfg.signed_endpoint().to_owned(),
            tolerance_secs: 0,
        }
    }

    /// How many key pairs are active.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks a request. On success returns the label of the key pair that signed it.
    pub fn verify(
        &self,
        h: &SignedHeaders<'_>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<&str, Refusal> {
        if self.keys.is_empty() {
            return Err(Refusal::NotConfigured);
        }
        let key = self
            .keys
            .iter()
            .find(|k| bool::from(k.api_key.as_bytes().ct_eq(h.api_key.as_bytes())))
            .ok_or(Refusal::UnknownKey)?;
        let ts: i64 = h
            .timestamp
            .trim()
            .parse()
            .map_err(|_| Refusal::MalformedTimestamp)?;
        if now_unix.saturating_sub(ts) > self.tolerance_secs {
            return Err(Refusal::Stale);
        }
        if ts.saturating_sub(now_unix) > self.tolerance_secs {
            return Err(Refusal::Future);
        }
        if h.endpoint != self.endpoint {
            return Err(Refusal::Endpoint);
        }
        let presented = parse_signature(h.signature).ok_or(Refusal::MalformedSignature)?;
        let mut mac =
            HmacSha256::new_from_slice(&key.hmac_key).map_err(|_| Refusal::BadSignature)?;
        mac.update(h.timestamp.as_bytes());
        mac.update(h.endpoint.as_bytes());
        mac.update(body);
        mac.verify_slice(&presented)
            .map_err(|_| Refusal::BadSignature)?;
        Ok(&key.label)
    }
}

/// The HMAC key of an api-secret: its base64-decoded bytes.
pub fn decode_secret(api_secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(api_secret.trim())
        .ok()
        .filter(|k| !k.is_empty())
}

fn parse_signature(header: &str) -> Option<Vec<u8>> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    STANDARD.decode(b64.trim()).ok()
}

/// The `X-Signature` value for a request (used by `switchboard simulate`).
pub fn sign(hmac_key: &[u8], timestamp: &str, endpoint: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(hmac_key).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(endpoint.as_bytes());
    mac.update(body);
    format!("{SCHEME} {}", STANDARD.encode(mac.finalize().into_bytes()))
}
