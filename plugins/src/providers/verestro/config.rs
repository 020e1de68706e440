//! Verestro's settings (`[providers.verestro]`).

use serde::{Deserialize, Serialize};
use switchboard_core::{secret::SecretRef, units::ByteSize};

/// `[providers.verestro]`: Verestro's notifications, behind mutual TLS and JWE.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerestroConfig {
    /// Prefix of every Verestro path (`/notifications/otp`, `/public-key`): the base URL
    /// you give Verestro is `https://<host>:<port><path_prefix>`. Empty by default.
    pub path_prefix: String,
    /// Endpoints that must be encrypted (JWE): their names (`otp`, `verificationAccepted`,
    /// `cardLocked`, ...) or `*` for all. A plaintext request to one of them is answered
    /// `422 ENCRYPTION_REQUIRED`.
    pub require_encryption: Vec<String>,
    /// Allowed client certificates by SHA-256 fingerprint (hex; colons allowed). With no
    /// pins, any certificate chaining to the listener's CA is accepted.
    pub pin_sha256: Vec<String>,
    /// Allowed client certificates by subject, RFC 4514 (`CN=verestro,O=Verestro`).
    pub pin_subject: Vec<String>,
    /// Longest JWE token accepted (checked before parsing).
    pub max_token_length: ByteSize,
    /// Decryption keys, newest first. The first is the one `GET /public-key` serves;
    /// every key decrypts (rotation), picked by the token's `kid` when it has one.
    pub jwe_keys: Vec<JweKey>,
}

/// One JWE decryption key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JweKey {
    /// The RSA private key, PEM (`switchboard keys generate` writes one):
    /// `file:PATH` or `env:NAME`.
    pub private_key: SecretRef,
    /// Key id matched against a token's `kid` header. Default: the key's position
    /// (`key-0`, `key-1`, ...).
    #[serde(default)]
    pub kid: Option<String>,
}

impl Default for VerestroConfig {
    fn default() -> Self {
        VerestroConfig {
            path_prefix: String::new(),
            require_encryption: Vec::new(),
            pin_sha256: Vec::new(),
            pin_subject: Vec::new(),
            max_token_length: ByteSize::kib(512),
            jwe_keys: Vec::new(),
        }
    }
}

impl VerestroConfig {
    /// Whether plaintext is refused on endpoint `name`.
    pub fn requires_encryption(&self, name: &str) -> bool {
        encryption_required(&self.require_encryption, name)
    }
}

/// Whether endpoint `name` is in a `require_encryption` list (`*`: every endpoint).
pub fn encryption_required(list: &[String], name: &str) -> bool {
    list.iter().any(|e| e == "*" || e == name)
}
