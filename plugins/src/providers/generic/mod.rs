//! Generic providers: a `[providers.<name>]` table with `kind = "generic"` or a preset
//! (`standard-webhooks`, `stripe`, `github`, `shopify`, `slack`, `twilio`) becomes a provider at
//! start-up, with everything a built-in one has: exactly-once ingest, quarantine, routes
//! under `routes/<name>/`, admin listing and replay, metrics, an operation in the served
//! spec at its configured path, and `switchboard simulate <name>`.
//!
//! [`config`] holds the settings and the presets, [`verify`] the authentication (HMAC with
//! configurable headers and signed content, bearer, a named header, HTTP Basic, mutual TLS,
//! none), [`api`] the endpoint. Not a provider folder of its own kind: the factory of
//! them, so it is not in [`super::BUILTIN`].

pub mod api;
pub mod config;
#[cfg(test)]
mod tests;
pub mod verify;

use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_core::peer::Pins;

use self::{
    config::{
        Algorithm, BodyFormat, Encoding, GenericConfig, Kind, Scheme, SignatureFormat, Source,
    },
    verify::{Auth, HmacScheme, MIN_SECRET_BYTES, Part},
};
use super::{
    Built, DevSecrets, EndpointInfo, Fetch, Provider, ProviderInfo, Sample, SampleFuture,
    SampleOptions, from_table, to_table,
};
use crate::{Error, http::Limits};

/// The commented example `switchboard init` writes.
pub const EXAMPLE: &str = r#"# Any other provider, from configuration (see the README, "Add a provider"):
# [providers.stripe]
# kind = "stripe"                  # or standard-webhooks, github, shopify, slack, twilio, generic
# path = "/hooks/stripe"
# secrets = ["env:STRIPE_WEBHOOK_SECRET"]   # several while rotating
# answer = { status = 200, body = '{"received":true}' }
#
# [providers.acme]
# kind = "generic"
# path = "/hooks/acme"
# secrets = ["env:ACME_SECRET"]
# event_type = { json = "/event" }
# dedup_key = { header = "X-Acme-Delivery" }
# auth = { scheme = "hmac", algorithm = "sha256", signature_header = "X-Acme-Signature", signature_prefix = "sha256=", signature_encoding = "hex", signed_content = "{timestamp}.{body}", timestamp_header = "X-Acme-Timestamp", tolerance = "5m" }
"#;

/// A provider made from configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Generic {
    /// Its name (`[providers.<name>]`).
    pub name: String,
    /// Its settings as written.
    pub cfg: GenericConfig,
}

/// Reads a `[providers.<name>]` table that names no built-in provider.
pub fn parse(name: &str, table: Value) -> Result<Box<dyn Provider>, String> {
    if table.get("kind").is_none() {
        return Err(format!(
            "`{name}` is not a built-in provider ({}): give it a `kind` (generic, standard-webhooks, stripe, github, shopify, slack)",
            super::BUILTIN
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let cfg: GenericConfig = from_table(table)?;
    let g = Generic {
        name: name.to_owned(),
        cfg,
    };
    g.check().map_err(|(key, m)| format!("{key}: {m}"))?;
    Ok(Box::new(g))
}

/// The settings a generic provider runs with, preset applied.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The authentication, without its secrets.
    pub auth: config::AuthConfig,
    /// The event type's source.
    pub event_type: Option<Source>,
    /// The de-duplication key's source.
    pub dedup_key: Option<Source>,
    /// What the preset documents.
    pub doc: String,
}

impl Generic {
    fn key(&self, field: &str) -> String {
        format!("providers.{}.{field}", self.name)
    }

    /// The settings with the preset filled in.
    pub fn resolved(&self) -> Resolved {
        let preset = self.cfg.kind.preset();
        let auth = match &preset {
            Some(p) => self.cfg.auth.clone().over(&p.auth),
            None => self.cfg.auth.clone(),
        };
        Resolved {
            auth,
            event_type: self
                .cfg
                .event_type
                .clone()
                .or_else(|| preset.as_ref().and_then(|p| p.event_type.clone())),
            dedup_key: self
                .cfg
                .dedup_key
                .clone()
                .or_else(|| preset.as_ref().and_then(|p| p.dedup_key.clone())),
            doc: self
                .cfg
                .description
                .clone()
                .or_else(|| preset.map(|p| p.doc.to_owned()))
                .unwrap_or_else(|| {
                    format!("A provider configured as `[providers.{}]`.", self.name)
                }),
        }
    }

    /// How the body is read.
    pub fn format(&self) -> BodyFormat {
        self.cfg.format.unwrap_or(if self.cfg.kind == Kind::Twilio {
            BodyFormat::Form
        } else {
            BodyFormat::Json
        })
    }

    /// Checks the settings (not the secrets): `(key relative to the table, message)`.
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return bad(
                "name",
                "a provider's name is lower-case letters, digits, `_` and `-` (it names its routes folder)",
            );
        }
        if let Err(e) = super::validate_path("path", &self.cfg.path) {
            return bad("path", &e.to_string().replacen("path: ", "", 1));
        }
        let r = self.resolved();
        let a = &r.auth;
        let Some(scheme) = a.scheme else {
            return bad(
                "auth.scheme",
                "is required for kind = \"generic\" (hmac, bearer, header, basic, mtls, none)",
            );
        };
        if scheme == Scheme::Hmac {
            if a.signature_header.as_deref().is_none_or(str::is_empty) {
                return bad("auth.signature_header", "is required for HMAC");
            }
            let parts = verify::template(a.signed_content.as_deref().unwrap_or("{body}"))
                .map_err(|m| ("auth.signed_content".to_owned(), m))?;
            if !parts.contains(&Part::Body) && !parts.contains(&Part::Form) {
                return bad(
                    "auth.signed_content",
                    "must contain {body} (or {form}): the signature must cover the body",
                );
            }
            let stripe = a.signature_format == Some(SignatureFormat::Stripe);
            if parts.contains(&Part::Timestamp) && a.timestamp_header.is_none() && !stripe {
                return bad(
                    "auth.timestamp_header",
                    "is required when the signed content has {timestamp}",
                );
            }
            if (a.timestamp_header.is_some() || stripe) && a.tolerance.is_none() {
                return bad(
                    "auth.tolerance",
                    "is required with a timestamp (how far it may be from our clock)",
                );
            }
            if a.tolerance.is_some_and(|t| t.get().is_zero()) {
                return bad("auth.tolerance", "must be greater than zero");
            }
            if parts.contains(&Part::Url) && a.public_url.as_deref().is_none_or(str::is_empty) {
                return bad(
                    "auth.public_url",
                    "is required when the signed content has {url} (the URL the provider calls, e.g. https://hooks.example.com)",
                );
            }
            if parts.contains(&Part::Form) && self.format() != BodyFormat::Form {
                return bad(
                    "format",
                    "must be \"form\" when the signed content has {form}",
                );
            }
            if parts.contains(&Part::Id) && a.id_header.is_none() {
                return bad(
                    "auth.id_header",
                    "is required when the signed content has {id}",
                );
            }
            if a.signature_encoding == Some(Encoding::Raw) {
                return bad("auth.signature_encoding", "is hex or base64");
            }
        }
        if scheme == Scheme::Header && a.header.as_deref().is_none_or(str::is_empty) {
            return bad("auth.header", "names the header that holds the secret");
        }
        if scheme == Scheme::Basic && a.username.as_deref().is_none_or(str::is_empty) {
            return bad("auth.username", "is required for HTTP Basic");
        }
        for (i, pin) in a.pin_sha256.iter().flatten().enumerate() {
            if !super::is_sha256_fingerprint(pin) {
                return bad(
                    &format!("auth.pin_sha256[{i}]"),
                    "is not a SHA-256 fingerprint (64 hex digits, colons allowed)",
                );
            }
        }
        if matches!(scheme, Scheme::Mtls | Scheme::None) && !self.cfg.secrets.is_empty() {
            return bad("secrets", "are not used by this scheme");
        }
        for (k, s) in [("event_type", &r.event_type), ("dedup_key", &r.dedup_key)] {
            if let Some(s) = s {
                let n = usize::from(s.header.is_some())
                    + usize::from(s.json.is_some())
                    + usize::from(s.constant.is_some());
                if n != 1 {
                    return bad(k, "takes exactly one of header, json, constant");
                }
                if s.json
                    .as_deref()
                    .is_some_and(|p| !p.is_empty() && !p.starts_with('/'))
                {
                    return bad(
                        &format!("{k}.json"),
                        "is a JSON pointer: it starts with `/`",
                    );
                }
            }
        }
        if !(200..=299).contains(&self.cfg.answer.status) {
            return bad(
                "answer.status",
                "must be a 2xx status (errors are switchboard's own)",
            );
        }
        if self.cfg.answer.status == 204 && !self.cfg.answer.body.is_empty() {
            return bad(
                "answer.body",
                "a 204 answer has no body: set answer.status (e.g. 200)",
            );
        }
        for (i, p) in self.cfg.secret_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return bad(
                    &format!("secret_paths[{i}]"),
                    "is a JSON pointer: it starts with `/`",
                );
            }
        }
        Ok(())
    }

    /// Resolves the secrets into the running authentication. Errors name the key.
    pub fn auth(&self) -> crate::Result<Auth> {
        let r = self.resolved();
        let a = &r.auth;
        let mut secrets = Vec::new();
        for (i, s) in self.cfg.secrets.iter().enumerate() {
            let key = self.key(&format!("secrets[{i}]"));
            let text = s.resolve().map_err(|m| Error::config(&key, m))?;
            secrets.push((key, text.expose().to_owned()));
        }
        let lower = |h: &Option<String>| h.as_ref().map(|h| h.to_ascii_lowercase());
        Ok(match a.scheme.unwrap_or(Scheme::None) {
            Scheme::Hmac => {
                let encoding = a.key_encoding.unwrap_or(Encoding::Raw);
                let mut keys = Vec::new();
                for (key, text) in secrets {
                    let text = text.trim();
                    let body = match &a.key_prefix {
                        Some(p) => text.strip_prefix(p.as_str()).unwrap_or(text),
                        None => text,
                    };
                    let k = verify::decode(body, encoding).ok_or_else(|| {
                        Error::config(&key, format!("is not {encoding:?} text").to_lowercase())
                    })?;
                    if k.len() < MIN_SECRET_BYTES {
                        return Err(Error::config(
                            &key,
                            format!(
                                "is {} bytes as a key; at least {MIN_SECRET_BYTES} are required (a short secret can be guessed)",
                                k.len()
                            ),
                        ));
                    }
                    keys.push(k);
                }
                Auth::Hmac(HmacScheme {
                    algorithm: a.algorithm.unwrap_or(Algorithm::Sha256),
                    keys,
                    header: lower(&a.signature_header).unwrap_or_default(),
                    format: a.signature_format.unwrap_or(SignatureFormat::Plain),
                    prefix: a.signature_prefix.clone().unwrap_or_default(),
                    encoding: a.signature_encoding.unwrap_or(Encoding::Hex),
                    content: verify::template(a.signed_content.as_deref().unwrap_or("{body}"))
                        .map_err(|m| Error::config(self.key("auth.signed_content"), m))?,
                    timestamp_header: lower(&a.timestamp_header),
                    id_header: lower(&a.id_header),
                    public_url: a.public_url.clone().unwrap_or_default(),
                    tolerance_secs: a
                        .tolerance
                        .map_or(0, |t| i64::try_from(t.get().as_secs()).unwrap_or(i64::MAX)),
                })
            }
            Scheme::Bearer => Auth::Bearer(bytes(secrets)),
            Scheme::Header => Auth::Header(lower(&a.header).unwrap_or_default(), bytes(secrets)),
            Scheme::Basic => Auth::Basic(a.username.clone().unwrap_or_default(), bytes(secrets)),
            Scheme::Mtls => Auth::Mtls(Pins::new(
                a.pin_sha256.as_deref().unwrap_or_default(),
                a.pin_subject.as_deref().unwrap_or_default(),
            )),
            Scheme::None => Auth::None,
        })
    }
}

fn bytes(secrets: Vec<(String, String)>) -> Vec<Vec<u8>> {
    secrets
        .into_iter()
        .map(|(_, s)| s.trim().as_bytes().to_vec())
        .collect()
}

/// The event type of a value: lower snake case, safe as a route file name.
pub fn event_type(value: &str) -> String {
    super::event_type_of(value, "event")
}

impl Provider for Generic {
    fn name(&self) -> &str {
        &self.name
    }

    fn to_value(&self) -> Value {
        to_table(&self.cfg)
    }

    fn validate(&self) -> crate::Result<()> {
        self.check()
            .map_err(|(k, m)| Error::config(self.key(&k), m))
    }

    fn endpoints(&self) -> Vec<EndpointInfo> {
        vec![EndpointInfo {
            canonical: self.cfg.path.clone(),
            path: self.cfg.path.clone(),
            key: self.key("path"),
        }]
    }

    fn client_certificates(&self) -> bool {
        self.resolved().auth.scheme == Some(Scheme::Mtls)
    }

    fn unauthenticated(&self) -> bool {
        self.resolved().auth.scheme == Some(Scheme::None)
    }

    fn build(&self, limits: Limits) -> crate::Result<Built> {
        self.validate()?;
        let auth = self.auth()?;
        let info = ProviderInfo {
            name: self.name.clone(),
            credentials: auth.credentials(),
            endpoints: self.endpoints(),
            client_certificates: self.client_certificates(),
        };
        let inner = Arc::new(api::Inner::new(self, auth, limits));
        let reparser = inner.clone();
        Ok(Built {
            info,
            endpoint: poem::EndpointExt::boxed(api::GenericEndpoint(inner)),
            reparse: Arc::new(move |event_type: &str, body: &[u8], _: &_| {
                reparser.reparse(event_type, body)
            }),
        })
    }

    fn spec(&self) -> Value {
        api::spec(self)
    }

    fn dev_secrets(&mut self, dev: &mut DevSecrets) {
        let r = self.resolved();
        let needs = matches!(
            r.auth.scheme,
            Some(Scheme::Hmac | Scheme::Bearer | Scheme::Header | Scheme::Basic)
        );
        if !needs || !self.cfg.secrets.is_empty() {
            return;
        }
        let name = format!("{}_secret", self.name.replace('-', "_"));
        let prefix = r.auth.key_prefix.clone().unwrap_or_default();
        let value = match (r.auth.scheme, r.auth.key_encoding) {
            (Some(Scheme::Hmac), Some(Encoding::Base64)) => dev.base64(&name, &prefix, 32),
            (Some(Scheme::Hmac), Some(Encoding::Hex)) => dev.token(&name, &prefix),
            _ => dev.token(&name, &format!("{prefix}dev-{}-", self.name)),
        };
        if let Some(v) = value {
            dev.filled(
                self.key("secrets"),
                &[(&format!("{} secret", self.name), &v)],
            );
            self.cfg
                .secrets
                .push(switchboard_core::secret::SecretRef::Literal(v));
        }
    }

    fn check_notes(&self) -> Vec<String> {
        let r = self.resolved();
        let mut notes = vec![format!(
            "kind {}, {} authentication",
            self.cfg.kind.as_str(),
            match r.auth.scheme {
                Some(Scheme::Hmac) => "HMAC",
                Some(Scheme::Bearer) => "bearer token",
                Some(Scheme::Header) => "API-key header",
                Some(Scheme::Basic) => "HTTP Basic",
                Some(Scheme::Mtls) => "mutual TLS",
                Some(Scheme::None) | None => "no",
            }
        )];
        if r.auth.scheme == Some(Scheme::Hmac) && r.auth.algorithm == Some(Algorithm::Sha1) {
            notes.push(
                "HMAC-SHA1 is a legacy algorithm: use SHA-256 if the provider offers it".into(),
            );
        }
        for p in &Pins::new(r.auth.pin_sha256.as_deref().unwrap_or_default(), &[]).sha256 {
            notes.push(format!("pin sha256 {p}"));
        }
        for s in r.auth.pin_subject.iter().flatten() {
            notes.push(format!("pin subject {s}"));
        }
        notes
    }

    fn sample<'a>(&'a self, opts: &'a SampleOptions, _: &'a dyn Fetch) -> SampleFuture<'a> {
        Box::pin(async move { self.make_sample(opts) })
    }
}

impl Generic {
    fn make_sample(&self, opts: &SampleOptions) -> crate::Result<Sample> {
        let r = self.resolved();
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let body = match &opts.body {
            Some(b) => b.clone(),
            None => match self.format() {
                BodyFormat::Json => serde_json::to_vec(&json!({
                    "id": id, "event_id": id, "type": opts.event.as_deref().unwrap_or("sample.event"),
                    "data": {"otp": opts.otp.clone().unwrap_or_else(|| format!("{:06}", rand::random::<u32>() % 1_000_000))},
                }))
                .unwrap_or_default(),
                BodyFormat::Form => format!("id={id}&type=sample").into_bytes(),
            },
        };
        let mut headers = vec![(
            "content-type".to_owned(),
            match self.format() {
                BodyFormat::Json => "application/json",
                BodyFormat::Form => "application/x-www-form-urlencoded",
            }
            .to_owned(),
        )];
        for s in [&r.event_type, &r.dedup_key].into_iter().flatten() {
            if let Some(h) = &s.header {
                headers.push((
                    h.to_ascii_lowercase(),
                    opts.event.clone().unwrap_or_else(|| id.clone()),
                ));
            }
        }
        // The secret to sign with: `--secret`, else the first configured one.
        let signer = match &opts.secret {
            Some(s) => Generic {
                name: self.name.clone(),
                cfg: GenericConfig {
                    secrets: vec![switchboard_core::secret::SecretRef::Literal(s.clone())],
                    ..self.cfg.clone()
                },
            },
            None => self.clone(),
        };
        let auth = signer.auth()?;
        if auth.credentials() == 0 {
            return Err(Error::config(
                self.key("secrets"),
                "no secret: pass --secret, configure one, or start `switchboard serve` once to generate development secrets",
            ));
        }
        let secret = || -> crate::Result<String> {
            let s = signer.cfg.secrets.first().map(|s| s.resolve()).transpose();
            Ok(s.map_err(|m| Error::config(self.key("secrets[0]"), m))?
                .map(|s| s.expose().trim().to_owned())
                .unwrap_or_default())
        };
        match auth {
            Auth::Hmac(h) => {
                let ts = chrono::Utc::now().timestamp().to_string();
                let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                if let Some(t) = &h.timestamp_header {
                    headers.push((t.clone(), ts.clone()));
                }
                if let Some(i) = &h.id_header {
                    headers.retain(|(k, _)| k != i);
                    headers.push((i.clone(), msg_id.clone()));
                }
                let content = h.content(&verify::Values {
                    timestamp: &ts,
                    id: &msg_id,
                    method: "POST",
                    path: &self.cfg.path,
                    query: None,
                    body: &body,
                });
                headers.push((h.header.clone(), h.sign(&h.keys[0], &content, &ts)));
            }
            Auth::Bearer(_) => {
                headers.push(("authorization".into(), format!("Bearer {}", secret()?)))
            }
            Auth::Header(name, _) => headers.push((name, secret()?)),
            Auth::Basic(user, _) => {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", secret()?));
                headers.push(("authorization".into(), format!("Basic {b}")));
            }
            Auth::Mtls(_) | Auth::None => {}
        }
        Ok(Sample {
            path: self.cfg.path.clone(),
            headers,
            body,
        })
    }
}

/// Every kind, for messages.
pub fn kinds() -> [Kind; 7] {
    [
        Kind::Generic,
        Kind::StandardWebhooks,
        Kind::Stripe,
        Kind::Github,
        Kind::Shopify,
        Kind::Slack,
        Kind::Twilio,
    ]
}
