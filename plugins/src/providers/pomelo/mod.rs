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

use std::sync::Arc;

use serde_json::Value;

use super::{
    Built, DevSecrets, EndpointInfo, Fetch, Plugin, Provider, ProviderInfo, Reparsed, Sample,
    SampleFuture, SampleOptions, api_endpoint, api_spec, from_table, to_table,
};
use crate::{Error, http::Limits};

/// The provider's name in events, metrics and routes.
pub const NAME: &str = "pomelo";

/// The event type of a tokenization OTP.
pub const EVENT_TYPE: &str = "tokenization_otp";

/// The registration in [`super::BUILTIN`].
pub const PLUGIN: Plugin = Plugin {
    name: NAME,
    summary: "A Pomelo tokenization OTP, signed with HMAC-SHA256.",
    default: || Box::new(PomeloConfig::default()),
    parse: |table| Ok(Box::new(from_table::<PomeloConfig>(table)?)),
    example: r#"# [providers.pomelo]
# path = "/pomelo/tokenization/otp"
# [[providers.pomelo.keys]]
# api_key = "your-pomelo-api-key"
# api_secret = "env:POMELO_API_SECRET"   # base64 text, as Pomelo hands it over
"#,
};

impl Provider for PomeloConfig {
    fn name(&self) -> &str {
        NAME
    }

    fn to_value(&self) -> Value {
        to_table(self)
    }

    fn validate(&self) -> crate::Result<()> {
        super::validate_path("providers.pomelo.path", &self.path)?;
        if let Some(e) = &self.signed_endpoint {
            super::validate_path("providers.pomelo.signed_endpoint", e)?;
        }
        Ok(())
    }

    fn endpoints(&self) -> Vec<EndpointInfo> {
        vec![EndpointInfo {
            canonical: config::DEFAULT_PATH.into(),
            path: self.path.clone(),
            key: "providers.pomelo.path".into(),
        }]
    }

    fn build(&self, limits: Limits) -> crate::Result<Built> {
        let verifier = verify::Verifier::new(self)?;
        let info = ProviderInfo {
            name: NAME.into(),
            credentials: verifier.key_count(),
            endpoints: self.endpoints(),
            client_certificates: false,
        };
        Ok(Built {
            info,
            endpoint: api_endpoint(PomeloApi::new(
                verifier,
                self.path.clone(),
                self.dedup_window.get(),
            )),
            reparse: Arc::new(move |_: &str, body: &[u8], _: &_| reparse(body, &limits)),
        })
    }

    fn spec(&self) -> Value {
        api_spec(PomeloApi::new(
            verify::Verifier::unconfigured(self),
            self.path.clone(),
            self.dedup_window.get(),
        ))
    }

    fn dev_secrets(&mut self, dev: &mut DevSecrets) {
        if !self.keys.is_empty() {
            return;
        }
        let (Some(api_key), Some(api_secret)) = (
            dev.token("pomelo_api_key", "dev-pomelo-"),
            dev.base64("pomelo_api_secret", "", 32),
        ) else {
            return;
        };
        dev.filled(
            "providers.pomelo.keys",
            &[
                ("pomelo api-key", &api_key),
                ("pomelo api-secret", &api_secret),
            ],
        );
        self.keys.push(config::PomeloKey {
            api_key,
            api_secret: switchboard_core::secret::SecretRef::Literal(api_secret),
        });
    }

    fn sample<'a>(&'a self, opts: &'a SampleOptions, _: &'a dyn Fetch) -> SampleFuture<'a> {
        Box::pin(async move {
            let (key, secret) = match (&opts.key_id, &opts.secret) {
                (Some(k), Some(s)) => (k.clone(), s.clone()),
                _ => match self.keys.first() {
                    Some(k) => (
                        k.api_key.clone(),
                        k.api_secret
                            .resolve()
                            .map_err(|m| Error::config("providers.pomelo.keys[0].api_secret", m))?
                            .expose()
                            .to_owned(),
                    ),
                    None => {
                        return Err(Error::config(
                            "providers.pomelo.keys",
                            "no api-key: pass --key-id and --secret, configure one, or start `switchboard serve` once to generate development secrets",
                        ));
                    }
                },
            };
            let hmac_key = verify::decode_secret(&secret).ok_or_else(|| {
                Error::config("providers.pomelo.keys[0].api_secret", "is not base64 text")
            })?;
            let otp = opts
                .otp
                .clone()
                .unwrap_or_else(|| format!("{:06}", rand::random::<u32>() % 1_000_000));
            let body = opts.body.clone().unwrap_or_else(|| {
                serde_json::to_vec(&serde_json::json!({
                    "token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_123456789"},
                    "otp": otp,
                    "to": "m***@example.com",
                    "contact_method": "EMAIL",
                }))
                .unwrap_or_default()
            });
            let endpoint = self.signed_endpoint().to_owned();
            let ts = chrono::Utc::now().timestamp().to_string();
            let signature = verify::sign(&hmac_key, &ts, &endpoint, &body);
            Ok(Sample {
                path: self.path.clone(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-api-key".into(), key),
                    ("x-signature".into(), signature),
                    ("x-timestamp".into(), ts),
                    ("x-endpoint".into(), endpoint),
                ],
                body,
            })
        })
    }
}

/// Parses a stored body again (a replay of a quarantined event).
pub fn reparse(body: &[u8], limits: &Limits) -> Result<Reparsed, String> {
    let p = crate::http::parse_json::<model::TokenizationOtp>(body, limits)?;
    Ok(Reparsed {
        event_type: EVENT_TYPE.into(),
        data: p.data,
        flags: p.flags,
    })
}
