//! JWE (compact serialization) for Verestro: requests encrypted to our key, and answers
//! encrypted to theirs.
//!
//! The policy is checked on the protected header before josekit sees the token: length
//! capped, `alg` RSA-OAEP-256 or RSA-OAEP only, `enc` A256GCM only, no `zip`, no `crit`.
//! Decryption keys rotate: several may be active; the token's `kid` picks one when it
//! names a known key, otherwise each is tried in order.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use josekit::jwe::{
    self, JweDecrypter, JweHeader, RSA_OAEP, RSA_OAEP_256, alg::rsaes::RsaesJweDecrypter,
};
use serde_json::{Map, Value};

use super::config::VerestroConfig;
use crate::{Error, Result};

/// Smallest RSA key accepted.
pub const MIN_BITS: u32 = 2048;
/// The only content encryption accepted.
pub const ENC: &str = "A256GCM";

/// Why a token was refused, as Verestro's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JweError {
    /// Not a compact JWE, or longer than allowed (`INVALID_PAYLOAD`).
    Invalid,
    /// A refused algorithm or header, a wrong key, a tampered token
    /// (`CANT_DECRYPT_PAYLOAD`).
    CantDecrypt,
}

/// What a decrypted token's header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Its `alg`.
    pub alg: String,
    /// The kid of the key that decrypted it.
    pub kid: String,
}

struct Key {
    kid: String,
    oaep: RsaesJweDecrypter,
    oaep256: RsaesJweDecrypter,
    public_pem: String,
}

/// The active decryption keys, newest first. Cheap to clone (shared).
#[derive(Clone)]
pub struct Keys {
    keys: std::sync::Arc<Vec<Key>>,
    max_len: usize,
}

impl Keys {
    /// Loads the configured keys. Errors name the setting at fault.
    pub fn new(cfg: &VerestroConfig) -> Result<Self> {
        let mut keys = Vec::new();
        for (i, k) in cfg.jwe_keys.iter().enumerate() {
            let at = format!("providers.verestro.jwe_keys[{i}].private_key");
            let pem = k.private_key.resolve().map_err(|m| Error::config(&at, m))?;
            let pkey = openssl::pkey::PKey::private_key_from_pem(pem.expose().as_bytes())
                .map_err(|_| Error::config(&at, "is not a PEM private key"))?;
            let rsa = pkey
                .rsa()
                .map_err(|_| Error::config(&at, "is not an RSA key"))?;
            if pkey.bits() < MIN_BITS {
                return Err(Error::config(
                    &at,
                    format!("is {} bits; at least {MIN_BITS} are required", pkey.bits()),
                ));
            }
            let public_pem = String::from_utf8(
                pkey.public_key_to_pem()
                    .map_err(|_| Error::config(&at, "has no usable public key"))?,
            )
            .unwrap_or_default();
            let private_der = rsa
                .private_key_to_der()
                .map_err(|_| Error::config(&at, "cannot be encoded"))?;
            let decrypter = |alg: josekit::jwe::alg::rsaes::RsaesJweAlgorithm| {
                alg.decrypter_from_der(&private_der)
                    .map_err(|e| Error::config(&at, format!("cannot decrypt with it: {e}")))
            };
            let kid = k.kid.clone().unwrap_or_else(|| format!("key-{i}"));
            if keys.iter().any(|o: &Key| o.kid == kid) {
                return Err(Error::config(
                    format!("providers.verestro.jwe_keys[{i}].kid"),
                    format!("`{kid}` is used twice"),
                ));
            }
            keys.push(Key {
                oaep: decrypter(RSA_OAEP)?,
                oaep256: decrypter(RSA_OAEP_256)?,
                kid,
                public_pem,
            });
        }
        Ok(Keys {
            keys: std::sync::Arc::new(keys),
            max_len: cfg.max_token_length.as_usize(),
        })
    }

    /// No keys: every encrypted request is refused.
    pub fn none() -> Self {
        Keys {
            keys: std::sync::Arc::new(Vec::new()),
            max_len: 0,
        }
    }

    /// How many keys are active.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `base64(PEM)` of the current public key, as `GET /public-key` serves it.
    pub fn public_key_b64(&self) -> Option<String> {
        self.keys.first().map(|k| STANDARD.encode(&k.public_pem))
    }

    /// Checks the policy and decrypts.
    pub fn decrypt(&self, token: &str) -> Result<Decrypted, JweError> {
        let header = policy(token, self.max_len)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kid = header.get("kid").and_then(Value::as_str);
        let named: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| Some(k.kid.as_str()) == kid)
            .collect();
        let candidates: Vec<&Key> = if named.is_empty() {
            self.keys.iter().collect()
        } else {
            named
        };
        for key in candidates {
            let decrypter: &dyn JweDecrypter = if alg == "RSA-OAEP" {
                &key.oaep
            } else {
                &key.oaep256
            };
            if let Ok((plaintext, _)) = jwe::deserialize_compact(token, decrypter) {
                return Ok(Decrypted {
                    plaintext,
                    alg,
                    kid: key.kid.clone(),
                });
            }
        }
        Err(JweError::CantDecrypt)
    }
}

/// Reads and checks the protected header.
pub fn policy(token: &str, max_len: usize) -> Result<Map<String, Value>, JweError> {
    if token.len() > max_len {
        return Err(JweError::Invalid);
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 5 || parts[0].is_empty() || parts[3].is_empty() {
        return Err(JweError::Invalid);
    }
    let mut decoded = Vec::with_capacity(4);
    for p in &parts[1..] {
        decoded.push(URL_SAFE_NO_PAD.decode(p).map_err(|_| JweError::Invalid)?);
    }
    // A256GCM: a 96-bit IV and a full 128-bit tag. A shorter tag would make forgery a
    // matter of a few hundred tries; an empty IV makes OpenSSL panic.
    if decoded[0].is_empty() || decoded[1].len() != 12 || decoded[3].len() != 16 {
        return Err(JweError::CantDecrypt);
    }
    let header = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| JweError::Invalid)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| JweError::Invalid)?;
    let alg = header.get("alg").and_then(Value::as_str);
    if !matches!(alg, Some("RSA-OAEP-256") | Some("RSA-OAEP")) {
        return Err(JweError::CantDecrypt);
    }
    if header.get("enc").and_then(Value::as_str) != Some(ENC) {
        return Err(JweError::CantDecrypt);
    }
    if header.contains_key("zip") || header.contains_key("crit") {
        return Err(JweError::CantDecrypt);
    }
    Ok(header)
}

/// A new RSA key pair of `bits` bits: (private key PEM, PKCS#8; public key PEM).
pub fn generate(bits: u32) -> Result<(String, String)> {
    if bits < MIN_BITS {
        return Err(Error::config(
            "--bits",
            format!("at least {MIN_BITS} bits are required"),
        ));
    }
    let fail = |e: openssl::error::ErrorStack| Error::config("key generation", e.to_string());
    let rsa = openssl::rsa::Rsa::generate(bits).map_err(fail)?;
    let pkey = openssl::pkey::PKey::from_rsa(rsa).map_err(fail)?;
    let private = pkey.private_key_to_pem_pkcs8().map_err(fail)?;
    let public = pkey.public_key_to_pem().map_err(fail)?;
    Ok((
        String::from_utf8(private).unwrap_or_default(),
        String::from_utf8(public).unwrap_or_default(),
    ))
}

/// A public key as Verestro may send it in `Public-Key`: PEM, base64 of PEM, or base64 of
/// DER (SubjectPublicKeyInfo). Returns the PEM, or `None` if it is none of these.
pub fn parse_public_key(value: &str) -> Option<String> {
    let value = value.trim();
    let pem = if value.starts_with("-----BEGIN") {
        value.as_bytes().to_vec()
    } else {
        let raw = STANDARD.decode(value).ok()?;
        if raw.starts_with(b"-----BEGIN") {
            raw
        } else {
            openssl::pkey::PKey::public_key_from_der(&raw)
                .ok()?
                .public_key_to_pem()
                .ok()?
        }
    };
    let key = openssl::pkey::PKey::public_key_from_pem(&pem).ok()?;
    (key.rsa().is_ok() && key.bits() >= MIN_BITS)
        .then(|| String::from_utf8(pem).unwrap_or_default())
}

/// Encrypts `payload` to `public_pem` with RSA-OAEP-256 and A256GCM.
pub fn encrypt(public_pem: &str, payload: &[u8]) -> Option<String> {
    let mut header = JweHeader::new();
    header.set_content_encryption(ENC);
    let encrypter = RSA_OAEP_256.encrypter_from_pem(public_pem).ok()?;
    jwe::serialize_compact(payload, &header, &encrypter).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::verestro::config::JweKey;
    use switchboard_core::secret::SecretRef;

    fn keys_of(pems: &[&str]) -> Keys {
        let cfg = VerestroConfig {
            jwe_keys: pems
                .iter()
                .map(|p| JweKey {
                    private_key: SecretRef::Literal((*p).to_owned()),
                    kid: None,
                })
                .collect(),
            ..VerestroConfig::default()
        };
        Keys::new(&cfg).unwrap()
    }

    #[test]
    fn round_trip_rotation_and_policy() {
        let (old_private, old_public) = generate(2048).unwrap();
        let (new_private, new_public) = generate(2048).unwrap();
        let keys = keys_of(&[&new_private, &old_private]);
        assert_eq!(keys.public_key_b64().unwrap(), STANDARD.encode(&new_public));
        for public in [&new_public, &old_public] {
            let token = encrypt(public, b"{\"a\":1}").unwrap();
            let d = keys.decrypt(&token).unwrap();
            assert_eq!(d.plaintext, b"{\"a\":1}");
            assert_eq!(d.alg, "RSA-OAEP-256");
        }
        let (_, stranger) = generate(2048).unwrap();
        let token = encrypt(&stranger, b"x").unwrap();
        assert_eq!(keys.decrypt(&token), Err(JweError::CantDecrypt));
        assert_eq!(keys.decrypt("a.b.c"), Err(JweError::Invalid));
        assert_eq!(
            keys.decrypt(&"a".repeat(600 * 1024)),
            Err(JweError::Invalid)
        );
        assert!(generate(1024).is_err());

        // The IV and the tag must have A256GCM's sizes: an empty IV used to make OpenSSL
        // panic, a truncated tag made forgeries cheap.
        let token = encrypt(&new_public, b"{\"amount\":1000}").unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            p.join(".")
        };
        let tag = URL_SAFE_NO_PAD.decode(parts[4]).unwrap();
        for bad in [
            with(2, ""),
            with(2, &URL_SAFE_NO_PAD.encode([0u8; 8])),
            with(4, &URL_SAFE_NO_PAD.encode(&tag[..12])),
            with(4, &URL_SAFE_NO_PAD.encode(&tag[..1])),
            with(1, ""),
        ] {
            assert_eq!(keys.decrypt(&bad), Err(JweError::CantDecrypt), "{bad}");
        }
    }

    #[test]
    fn public_keys_are_read_in_every_form() {
        let (_, public) = generate(2048).unwrap();
        let der = openssl::pkey::PKey::public_key_from_pem(public.as_bytes())
            .unwrap()
            .public_key_to_der()
            .unwrap();
        assert!(parse_public_key(&public).is_some());
        assert!(parse_public_key(&STANDARD.encode(&public)).is_some());
        assert!(parse_public_key(&STANDARD.encode(der)).is_some());
        assert!(parse_public_key("garbage").is_none());
    }
}
