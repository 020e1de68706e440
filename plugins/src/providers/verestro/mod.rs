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

pub use api::{ENDPOINTS, VerestroApi};
pub use config::VerestroConfig;

use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_core::peer::Pins;

use super::{
    Built, DevSecrets, EndpointInfo, Fetch, Plugin, Provider, ProviderInfo, Reparsed, Sample,
    SampleFuture, SampleOptions, api_endpoint, api_spec, from_table, to_table,
};
use crate::{Error, http::Limits};

/// The provider's name in events, metrics and routes.
pub const NAME: &str = "verestro";

/// The declared path of the public key.
pub const PUBLIC_KEY_PATH: &str = "/public-key";

/// The registration in [`super::BUILTIN`].
pub const PLUGIN: Plugin = Plugin {
    name: NAME,
    summary: "A Verestro notification over mutual TLS, optionally encrypted (JWE): otp, verification-in-progress, verification-accepted, verification-rejected, card-locked, card-unlocked, lock-reason-added, lock-reason-removed.",
    default: || Box::new(VerestroConfig::default()),
    parse: |table| Ok(Box::new(from_table::<VerestroConfig>(table)?)),
    example: r#"# Verestro on a mutual-TLS listener (`switchboard ca init`, then `ca sign-csr` for its CSR).
# [listeners.verestro]
# listen = "127.0.0.1:8443"
# providers = ["verestro"]
# tls = { cert = "data/tls/server.crt", key = "data/tls/server.key", client_ca = "data/ca/ca.crt" }
# [providers.verestro]   # (the table `init` wrote above: add the pins there)
# pin_sha256 = ["<the SHA-256 fingerprint `ca sign-csr` printed>"]
"#,
};

/// Checks the settings serde cannot.
pub fn validate(cfg: &VerestroConfig) -> crate::Result<()> {
    if !cfg.path_prefix.is_empty() {
        super::validate_path("providers.verestro.path_prefix", &cfg.path_prefix)?;
    }
    for e in &cfg.require_encryption {
        if e != "*" && !ENDPOINTS.iter().any(|(n, _)| n == e) {
            return Err(Error::config(
                "providers.verestro.require_encryption",
                format!(
                    "unknown endpoint `{e}` (known: {}, or *)",
                    ENDPOINTS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    for (i, pin) in cfg.pin_sha256.iter().enumerate() {
        if !super::is_sha256_fingerprint(pin) {
            return Err(Error::config(
                format!("providers.verestro.pin_sha256[{i}]"),
                "is not a SHA-256 fingerprint (64 hex digits, colons allowed), such as the one `switchboard ca sign-csr` prints",
            ));
        }
    }
    Ok(())
}

impl Provider for VerestroConfig {
    fn name(&self) -> &str {
        NAME
    }

    fn to_value(&self) -> Value {
        to_table(self)
    }

    fn validate(&self) -> crate::Result<()> {
        validate(self)
    }

    fn endpoints(&self) -> Vec<EndpointInfo> {
        let key = "providers.verestro.path_prefix";
        ENDPOINTS
            .iter()
            .map(|(_, p)| *p)
            .chain([PUBLIC_KEY_PATH])
            .map(|p| EndpointInfo {
                canonical: p.into(),
                path: format!("{}{p}", self.path_prefix),
                key: key.into(),
            })
            .collect()
    }

    fn client_certificates(&self) -> bool {
        true
    }

    fn build(&self, limits: Limits) -> crate::Result<Built> {
        validate(self)?;
        let keys = jwe::Keys::new(self)?;
        let pins = Pins::new(&self.pin_sha256, &self.pin_subject);
        let info = ProviderInfo {
            name: NAME.into(),
            // Verestro authenticates by client certificate; its credentials are the
            // listener's. This counts the JWE keys.
            credentials: keys.len(),
            endpoints: self.endpoints(),
            client_certificates: true,
        };
        let api = VerestroApi::new(self.clone(), keys, pins);
        let replay = api.replay();
        Ok(Built {
            info,
            endpoint: api_endpoint(api),
            reparse: Arc::new(move |event_type: &str, body: &[u8], meta: &_| {
                reparse(event_type, body, &limits, &replay, meta)
            }),
        })
    }

    fn spec(&self) -> Value {
        api_spec(VerestroApi::new(
            self.clone(),
            jwe::Keys::none(),
            Pins::default(),
        ))
    }

    fn dev_secrets(&mut self, _: &mut DevSecrets) {
        // Verestro authenticates by client certificate: nothing to generate.
    }

    fn check_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.pin_sha256.is_empty() && self.pin_subject.is_empty() {
            notes.push(
                "no pins: any client certificate chaining to the listener's CA is accepted".into(),
            );
        }
        for p in &Pins::new(&self.pin_sha256, &[]).sha256 {
            notes.push(format!("pin sha256 {p}"));
        }
        for s in &self.pin_subject {
            notes.push(format!("pin subject {s}"));
        }
        notes
    }

    fn sample<'a>(&'a self, opts: &'a SampleOptions, fetch: &'a dyn Fetch) -> SampleFuture<'a> {
        Box::pin(async move {
            let event = opts.event.as_deref().unwrap_or("otp");
            let (endpoint, sample) = sample_body(event)?;
            let plain = opts
                .body
                .clone()
                .unwrap_or_else(|| serde_json::to_vec(&sample).unwrap_or_default());
            let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            // Verestro sends no key with card lock and unlock.
            let key = opts.idempotency_key.clone().or_else(|| {
                (!matches!(endpoint, "cardLocked" | "cardUnlocked"))
                    .then(|| uuid::Uuid::new_v4().to_string())
            });
            if let Some(k) = key {
                headers.push(("x-idempotency-key".into(), k));
            }
            let body = if opts.encrypt {
                let path = format!("{}{PUBLIC_KEY_PATH}", self.path_prefix);
                let answer = fetch
                    .get_json(&path)
                    .await
                    .map_err(|e| Error::Simulate(format!("GET {path}: {e}")))?;
                let pem = answer["publicKey"]
                    .as_str()
                    .and_then(jwe::parse_public_key)
                    .ok_or_else(|| {
                        Error::Simulate("the target served no usable public key".into())
                    })?;
                let token = jwe::encrypt(&pem, &plain)
                    .ok_or_else(|| Error::Simulate("encryption failed".into()))?;
                headers.push(("encrypted-request".into(), "true".into()));
                serde_json::to_vec(&json!({"payload": token})).unwrap_or_default()
            } else {
                plain
            };
            Ok(Sample {
                path: format!("{}/notifications/{endpoint}", self.path_prefix),
                headers,
                body,
            })
        })
    }
}

/// The endpoint and a sample body of a `simulate` event name (the seeds' examples, with
/// fresh values).
fn sample_body(event: &str) -> crate::Result<(&'static str, Value)> {
    let otp = format!("{:06}", rand::random::<u32>() % 1_000_000);
    let kyc = |status: &str, reason: Value| {
        json!({"verificationId": uuid::Uuid::new_v4(), "userId": "1337", "email": "leonbakiewicz@gmail.com",
               "firstName": "Leon", "lastName": "Bakiewicz", "status": status, "reason": reason})
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let lock = json!({"resourceType": "corporation", "resourceId": uuid::Uuid::new_v4(),
                      "lockReason": "FRAUD_SUSPECTED", "timestamp": now});
    Ok(match event {
        "otp" => (
            "otp",
            json!({"storageCustomerId": "1337", "storageCardId": "1337",
            "balanceId": uuid::Uuid::new_v4(), "amount": "1000", "currency": "PLN",
            "merchantName": "merchant test", "otp": otp}),
        ),
        "verification-in-progress" => ("verificationInProgress", kyc("IN_PROGRESS", Value::Null)),
        "verification-accepted" => ("verificationAccepted", kyc("ACCEPTED", Value::Null)),
        "verification-rejected" => (
            "verificationRejected",
            kyc("REJECTED", json!("INVALID_CUSTOMER_DATA")),
        ),
        "card-locked" => (
            "cardLocked",
            json!({"dcCardId": "11", "date": now, "reason": "PIN_TRIES_EXCEEDED"}),
        ),
        "card-unlocked" => ("cardUnlocked", json!({"dcCardId": "11", "date": now})),
        "lock-reason-added" => ("transactionalLockReasonAdded", lock),
        "lock-reason-removed" => ("transactionalLockReasonRemoved", lock),
        other => {
            return Err(Error::config(
                "event",
                format!(
                    "`{other}` is not a Verestro notification ({})",
                    PLUGIN.summary
                ),
            ));
        }
    })
}

fn parse<T: poem_openapi::types::ParseFromJSON + poem_openapi::types::ToJSON + model::Remarks>(
    endpoint: &str,
    body: &[u8],
    limits: &Limits,
) -> Result<Reparsed, String> {
    let p = crate::http::parse_json_lenient::<T>(body, limits)?;
    let mut flags = p.flags;
    flags.extend(p.value.remarks(endpoint));
    Ok(Reparsed {
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
    limits: &Limits,
    replay: &Replay,
    meta: &std::collections::BTreeMap<String, String>,
) -> Result<Reparsed, String> {
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
