//! A generic provider's settings (`[providers.<name>]` with `kind = ...`), and the presets
//! that fill them for well-known providers.

use serde::{Deserialize, Serialize};
use switchboard_core::{
    secret::SecretRef,
    units::{ByteSize, HumanDuration},
};

/// `[providers.<name>]` of a provider made from configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    /// `generic`, or a preset that fills in `auth`, `event_type` and `dedup_key` for a
    /// well-known provider: `standard-webhooks`, `stripe`, `github`, `shopify`, `slack`,
    /// `twilio`.
    /// Anything set here explicitly wins over the preset.
    pub kind: Kind,
    /// The path the provider posts to. Required.
    pub path: String,
    /// How requests are authenticated (a preset sets everything but the secrets).
    #[serde(default)]
    pub auth: AuthConfig,
    /// The secrets (HMAC keys, tokens, passwords) accepted, newest first: several at once
    /// is how they rotate. `env:NAME` or `file:PATH` recommended.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Where the event type (which picks `routes/<name>/<type>.rhai`) comes from. It is
    /// made safe as a file name: lower case, anything but letters and digits becomes `_`
    /// (`payment_intent.succeeded` → `payment_intent_succeeded`). Default: the constant
    /// `event`.
    #[serde(default)]
    pub event_type: Option<Source>,
    /// Where the de-duplication key comes from. Repeats with the same key get the first
    /// answer and are stored once; a different body under the same key is kept as its own,
    /// flagged event. Without one (or when the request lacks it), the key is the endpoint
    /// and a hash of the body.
    #[serde(default)]
    pub dedup_key: Option<Source>,
    /// How long a repeat is recognised as one (the provider's retry horizon). Default: the
    /// whole `store.retention`.
    #[serde(default)]
    pub dedup_window: Option<HumanDuration>,
    /// How the body is read for routes: `json` (an object; anything else is kept in
    /// quarantine) or `form` (`application/x-www-form-urlencoded`, as an object of strings).
    /// Default `json` (`form` for `twilio`).
    #[serde(default)]
    pub format: Option<BodyFormat>,
    /// The answer to an accepted (or quarantined) notification, stored with it and given
    /// byte for byte to every repeat. Default `204` with no body.
    #[serde(default)]
    pub answer: AnswerConfig,
    /// JSON pointers of secret values in the body: masked in the admin API.
    #[serde(default)]
    pub secret_paths: Vec<String>,
    /// Largest body accepted (at most `server.body_limit`). Default: `server.body_limit`.
    #[serde(default)]
    pub body_limit: Option<ByteSize>,
    /// A line for the spec and `check`: what this provider is.
    #[serde(default)]
    pub description: Option<String>,
}

/// What a generic provider is.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Everything configured by hand.
    Generic,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`,
    /// `whsec_` secrets).
    StandardWebhooks,
    /// Stripe (`Stripe-Signature: t=…,v1=…`).
    Stripe,
    /// GitHub (`X-Hub-Signature-256: sha256=<hex>`).
    Github,
    /// Shopify (`X-Shopify-Hmac-Sha256: <base64>`).
    Shopify,
    /// Slack (`X-Slack-Signature: v0=<hex>` over `v0:<timestamp>:<body>`).
    Slack,
    /// Twilio (`X-Twilio-Signature: <base64 HMAC-SHA1>` over the public URL and the sorted
    /// form fields). Needs `auth.public_url`.
    Twilio,
}

impl Kind {
    /// Its name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Generic => "generic",
            Kind::StandardWebhooks => "standard-webhooks",
            Kind::Stripe => "stripe",
            Kind::Github => "github",
            Kind::Shopify => "shopify",
            Kind::Slack => "slack",
            Kind::Twilio => "twilio",
        }
    }
}

/// `[providers.<name>.auth]`. Every field is optional: a preset fills them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `hmac`, `bearer` (`Authorization: Bearer <secret>`), `header` (the named `header`
    /// holds the secret), `basic` (HTTP Basic: `username` and a secret as password),
    /// `mtls` (the client certificate a mutual-TLS listener verified, with optional pins)
    /// or `none` (only on a loopback listener or a mutual-TLS one: `check` refuses it
    /// otherwise).
    pub scheme: Option<Scheme>,
    /// HMAC: `sha256`, `sha512`, or `sha1` (legacy providers only; `check` flags it).
    pub algorithm: Option<Algorithm>,
    /// HMAC: how a secret's text becomes the key: `raw` (its bytes), `base64` or `hex`.
    pub key_encoding: Option<Encoding>,
    /// HMAC: a prefix the secrets carry that is not part of the key (`whsec_`).
    pub key_prefix: Option<String>,
    /// HMAC: the header with the signature(s).
    pub signature_header: Option<String>,
    /// HMAC: `plain` (one signature, after `signature_prefix`), `stripe`
    /// (`t=<ts>,v1=<sig>,v1=<sig>`) or `standard-webhooks` (`v1,<sig> v1,<sig>`). Several
    /// signatures in one header are accepted if any matches.
    pub signature_format: Option<SignatureFormat>,
    /// HMAC, `plain`: the text before the signature (`sha256=`), compared without case.
    pub signature_prefix: Option<String>,
    /// HMAC: how signatures are written: `hex` or `base64`.
    pub signature_encoding: Option<Encoding>,
    /// HMAC: what is signed, with `{body}` (the raw bytes), `{timestamp}`, `{id}`,
    /// `{method}`, `{path}`, `{url}` (`public_url` + path + query) and `{form}` (the form
    /// fields sorted by name, each name then its value). Default `{body}`.
    pub signed_content: Option<String>,
    /// HMAC: the header with the Unix timestamp that is signed (Stripe's is inside its
    /// signature header).
    pub timestamp_header: Option<String>,
    /// HMAC: the header `{id}` comes from (`webhook-id`).
    pub id_header: Option<String>,
    /// HMAC: the public base URL the provider calls (`https://hooks.example.com`), which
    /// `{url}` starts with (the path and query follow): a proxy in front may change the
    /// URL switchboard sees, so it is configured.
    pub public_url: Option<String>,
    /// HMAC: how far the timestamp may be from our clock, in either direction.
    pub tolerance: Option<HumanDuration>,
    /// `header`: the header that holds the secret (`X-Api-Key`).
    pub header: Option<String>,
    /// `basic`: the user name.
    pub username: Option<String>,
    /// `mtls`: allowed client certificates by SHA-256 fingerprint (hex; colons allowed).
    pub pin_sha256: Option<Vec<String>>,
    /// `mtls`: allowed client certificates by subject, RFC 4514.
    pub pin_subject: Option<Vec<String>>,
}

/// How a generic provider authenticates.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// A keyed hash over the raw body (and more).
    Hmac,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// A named header holding the secret.
    Header,
    /// HTTP Basic.
    Basic,
    /// The client certificate of a mutual-TLS listener.
    Mtls,
    /// Nothing (loopback or mutual TLS only).
    None,
}

/// HMAC hash functions.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
    /// HMAC-SHA1: legacy.
    Sha1,
}

/// Text encodings of bytes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The text's own bytes (keys only).
    Raw,
    /// Standard base64 (URL-safe accepted too when decoding).
    Base64,
    /// Hexadecimal, either case.
    Hex,
}

/// How signatures are laid out in their header.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureFormat {
    /// One signature, after an optional prefix.
    Plain,
    /// `t=<timestamp>,v1=<sig>[,v1=<sig>...]`.
    Stripe,
    /// `v1,<sig>[ v1,<sig>...]`.
    StandardWebhooks,
}

/// Where a value comes from: exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Source {
    /// A request header.
    pub header: Option<String>,
    /// A JSON pointer into the body (`/type`, `/data/id`).
    pub json: Option<String>,
    /// A constant.
    pub constant: Option<String>,
}

/// How the body is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// A JSON object.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// The answer to an accepted notification.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    /// Its status, 200 to 299.
    pub status: u16,
    /// Its body, as text.
    pub body: String,
    /// Its `Content-Type`, when it has a body. Default `application/json`.
    pub content_type: Option<String>,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        AnswerConfig {
            status: 204,
            body: String::new(),
            content_type: None,
        }
    }
}

/// The settings a preset implies, applied under what the configuration says.
pub struct Preset {
    /// The authentication.
    pub auth: AuthConfig,
    /// The event type.
    pub event_type: Option<Source>,
    /// The de-duplication key.
    pub dedup_key: Option<Source>,
    /// Its documentation, for the spec.
    pub doc: &'static str,
}

fn header(h: &str) -> Option<Source> {
    Some(Source {
        header: Some(h.into()),
        ..Source::default()
    })
}

fn json(p: &str) -> Option<Source> {
    Some(Source {
        json: Some(p.into()),
        ..Source::default()
    })
}

fn hmac(header: &str, format: SignatureFormat, encoding: Encoding, content: &str) -> AuthConfig {
    AuthConfig {
        scheme: Some(Scheme::Hmac),
        algorithm: Some(Algorithm::Sha256),
        key_encoding: Some(Encoding::Raw),
        signature_header: Some(header.into()),
        signature_format: Some(format),
        signature_encoding: Some(encoding),
        signed_content: Some(content.into()),
        ..AuthConfig::default()
    }
}

impl Kind {
    /// What the preset sets (nothing for `generic`).
    pub fn preset(self) -> Option<Preset> {
        let five_minutes = Some(HumanDuration::secs(300));
        Some(match self {
            Kind::Generic => return None,
            Kind::StandardWebhooks => Preset {
                auth: AuthConfig {
                    key_encoding: Some(Encoding::Base64),
                    key_prefix: Some("whsec_".into()),
                    timestamp_header: Some("webhook-timestamp".into()),
                    id_header: Some("webhook-id".into()),
                    tolerance: five_minutes,
                    ..hmac(
                        "webhook-signature",
                        SignatureFormat::StandardWebhooks,
                        Encoding::Base64,
                        "{id}.{timestamp}.{body}",
                    )
                },
                event_type: json("/type"),
                dedup_key: header("webhook-id"),
                doc: "Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, id.timestamp.body)>` (several, space-separated, during a rotation), `webhook-id`, `webhook-timestamp` within 5 minutes; the key is the base64 after `whsec_`.",
            },
            Kind::Stripe => Preset {
                auth: AuthConfig {
                    tolerance: five_minutes,
                    ..hmac(
                        "Stripe-Signature",
                        SignatureFormat::Stripe,
                        Encoding::Hex,
                        "{timestamp}.{body}",
                    )
                },
                event_type: json("/type"),
                dedup_key: json("/id"),
                doc: "Stripe: `Stripe-Signature: t=<timestamp>,v1=<hex HMAC-SHA256(secret, timestamp.body)>` (several `v1` during a rotation), the timestamp within 5 minutes; the secret is the whole `whsec_...` text.",
            },
            Kind::Github => Preset {
                auth: AuthConfig {
                    signature_prefix: Some("sha256=".into()),
                    ..hmac(
                        "X-Hub-Signature-256",
                        SignatureFormat::Plain,
                        Encoding::Hex,
                        "{body}",
                    )
                },
                event_type: header("X-GitHub-Event"),
                dedup_key: header("X-GitHub-Delivery"),
                doc: "GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; the event type is `X-GitHub-Event`, repeats share `X-GitHub-Delivery`.",
            },
            Kind::Shopify => Preset {
                auth: hmac(
                    "X-Shopify-Hmac-Sha256",
                    SignatureFormat::Plain,
                    Encoding::Base64,
                    "{body}",
                ),
                event_type: header("X-Shopify-Topic"),
                dedup_key: header("X-Shopify-Webhook-Id"),
                doc: "Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>`; the event type is `X-Shopify-Topic`, repeats share `X-Shopify-Webhook-Id`.",
            },
            Kind::Slack => Preset {
                auth: AuthConfig {
                    signature_prefix: Some("v0=".into()),
                    timestamp_header: Some("X-Slack-Request-Timestamp".into()),
                    tolerance: five_minutes,
                    ..hmac(
                        "X-Slack-Signature",
                        SignatureFormat::Plain,
                        Encoding::Hex,
                        "v0:{timestamp}:{body}",
                    )
                },
                event_type: json("/type"),
                dedup_key: json("/event_id"),
                doc: "Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, v0:timestamp:body)>`, `X-Slack-Request-Timestamp` within 5 minutes.",
            },
            Kind::Twilio => Preset {
                auth: AuthConfig {
                    algorithm: Some(Algorithm::Sha1),
                    ..hmac(
                        "X-Twilio-Signature",
                        SignatureFormat::Plain,
                        Encoding::Base64,
                        "{url}{form}",
                    )
                },
                event_type: json("/MessageStatus"),
                dedup_key: header("I-Twilio-Idempotency-Token"),
                doc: "Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1(auth token, URL + each form field's name and value, sorted by name)>`, over the public URL Twilio called (`auth.public_url`); form-encoded bodies.",
            },
        })
    }
}

macro_rules! fill {
    ($into:expr, $from:expr, $($field:ident),*) => {
        $( if $into.$field.is_none() { $into.$field = $from.$field.clone(); } )*
    };
}

impl AuthConfig {
    /// This, with what `preset` sets filled in where this says nothing.
    pub fn over(mut self, preset: &AuthConfig) -> AuthConfig {
        fill!(
            self,
            preset,
            scheme,
            algorithm,
            key_encoding,
            key_prefix,
            signature_header,
            signature_format,
            signature_prefix,
            signature_encoding,
            signed_content,
            timestamp_header,
            id_header,
            tolerance,
            header,
            username,
            pin_sha256,
            pin_subject
        );
        self
    }
}
