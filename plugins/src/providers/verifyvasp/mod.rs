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

use std::sync::Arc;

use serde_json::Value;

use super::{
    Built, DevSecrets, EndpointInfo, Fetch, Plugin, Provider, ProviderInfo, Reparsed, Sample,
    SampleFuture, SampleOptions, api_endpoint, api_spec, from_table, to_table,
};
use crate::{Error, http::Limits};

/// The registration in [`super::BUILTIN`].
pub const PLUGIN: Plugin = Plugin {
    name: NAME,
    summary: "A VerifyVASP callback with its bearer token (verification-result, tx-report, error-report).",
    default: || Box::new(VerifyVaspConfig::default()),
    parse: |table| Ok(Box::new(from_table::<VerifyVaspConfig>(table)?)),
    example: r#"# [providers.verifyvasp]
# path = "/verifyvasp/callback"
# token = "env:VERIFYVASP_TOKEN"
"#,
};

/// The provider's name in events, metrics and routes.
pub const NAME: &str = "verifyvasp";

/// The documented `callbackType` values.
pub const KNOWN_TYPES: [&str; 3] = ["VERIFICATION_RESULT", "TX_REPORT", "ERROR_REPORT"];

/// The event type of a quarantined callback.
pub const QUARANTINE_EVENT_TYPE: &str = "unparsed";

/// The event type of a `callbackType`: lower snake case (`VERIFICATION_RESULT` →
/// `verification_result`), safe as a route file name.
pub fn event_type(callback_type: &str) -> String {
    super::event_type_of(callback_type, QUARANTINE_EVENT_TYPE)
}

impl Provider for VerifyVaspConfig {
    fn name(&self) -> &str {
        NAME
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(
            KNOWN_TYPES
                .iter()
                .map(|t| event_type(t))
                .chain([QUARANTINE_EVENT_TYPE.to_owned()])
                .collect(),
        )
    }

    fn to_value(&self) -> Value {
        to_table(self)
    }

    fn validate(&self) -> crate::Result<()> {
        super::validate_path("providers.verifyvasp.path", &self.path)
    }

    fn endpoints(&self) -> Vec<EndpointInfo> {
        vec![EndpointInfo {
            canonical: config::DEFAULT_PATH.into(),
            path: self.path.clone(),
            key: "providers.verifyvasp.path".into(),
        }]
    }

    fn build(&self, limits: Limits) -> crate::Result<Built> {
        let verifier = verify::Verifier::new(self)?;
        let info = ProviderInfo {
            name: NAME.into(),
            credentials: usize::from(verifier.is_configured()),
            endpoints: self.endpoints(),
            client_certificates: false,
        };
        Ok(Built {
            info,
            endpoint: api_endpoint(VerifyVaspApi::new(verifier, self.path.clone())),
            reparse: Arc::new(move |_: &str, body: &[u8], _: &_| reparse(body, &limits)),
        })
    }

    fn spec(&self) -> Value {
        api_spec(VerifyVaspApi::new(
            verify::Verifier::unconfigured(),
            self.path.clone(),
        ))
    }

    fn dev_secrets(&mut self, dev: &mut DevSecrets) {
        if self.token.is_some() {
            return;
        }
        if let Some(t) = dev.token("verifyvasp_token", "dev-vasp-") {
            dev.filled("providers.verifyvasp.token", &[("verifyvasp token", &t)]);
            self.token = Some(switchboard_core::secret::SecretRef::Literal(t));
        }
    }

    fn sample<'a>(&'a self, opts: &'a SampleOptions, _: &'a dyn Fetch) -> SampleFuture<'a> {
        Box::pin(async move {
            let token = match (&opts.secret, &self.token) {
                (Some(t), _) => t.clone(),
                (None, Some(t)) => t
                    .resolve()
                    .map_err(|m| Error::config("providers.verifyvasp.token", m))?
                    .expose()
                    .to_owned(),
                (None, None) => {
                    return Err(Error::config(
                        "providers.verifyvasp.token",
                        "no token: pass --secret, configure one, or start `switchboard serve` once to generate development secrets",
                    ));
                }
            };
            let [vr, tx, er] = model::seed_examples();
            let mut sample = match opts.event.as_deref().unwrap_or("verification-result") {
                "verification-result" => vr,
                "tx-report" => tx,
                "error-report" => er,
                other => {
                    return Err(Error::config(
                        "event",
                        format!(
                            "`{other}` is not a VerifyVASP callback (verification-result, tx-report, error-report)"
                        ),
                    ));
                }
            };
            sample["data"]["verificationUuid"] = Value::String(uuid::Uuid::new_v4().to_string());
            let body = opts
                .body
                .clone()
                .unwrap_or_else(|| serde_json::to_vec(&sample).unwrap_or_default());
            Ok(Sample {
                path: self.path.clone(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("authorization".into(), format!("Bearer {token}")),
                ],
                body,
            })
        })
    }
}

/// Parses a stored body again (a replay of a quarantined event).
pub fn reparse(body: &[u8], limits: &Limits) -> Result<Reparsed, String> {
    let fp = switchboard_core::ingest::fingerprint(body);
    match api::classify(body, limits, &fp) {
        (event_type, _, switchboard_core::ingest::Content::Parsed { data, flags }) => {
            Ok(Reparsed {
                event_type,
                data,
                flags,
            })
        }
        (_, _, switchboard_core::ingest::Content::Quarantined { reason }) => Err(reason),
    }
}
