//! Secrets in configuration: literal text, `env:NAME` or `file:PATH`.
//!
//! A [`SecretRef`] is what the configuration says; [`SecretRef::resolve`] turns it into a
//! [`Secret`] at start-up. Neither type ever prints its value: `Debug` and `Display` show
//! where the secret comes from, or `[redacted]`.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// Where a secret comes from, as written in the configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// The value itself, written in the configuration file. Fine for development; prefer
    /// `env:` or `file:` in production.
    Literal(String),
    /// `env:NAME`: read from the environment variable `NAME`.
    Env(String),
    /// `file:PATH`: read from a file; one trailing newline is removed.
    File(PathBuf),
}

impl SecretRef {
    /// Parses the configuration form: `env:NAME`, `file:PATH` or a literal value.
    pub fn parse(s: &str) -> Self {
        if let Some(name) = s.strip_prefix("env:") {
            SecretRef::Env(name.to_owned())
        } else if let Some(path) = s.strip_prefix("file:") {
            SecretRef::File(PathBuf::from(path))
        } else {
            SecretRef::Literal(s.to_owned())
        }
    }

    /// Reads the secret's value. The error names the variable or file, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Literal(v) => v.clone(),
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => {
                let mut v = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                v
            }
        };
        if value.is_empty() {
            return Err(format!("{self} is empty"));
        }
        Ok(Secret(value))
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Literal(_) => f.write_str("[literal secret]"),
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretRef::parse(&String::deserialize(d)?))
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SecretRef::Literal(v) => s.serialize_str(v),
            SecretRef::Env(name) => s.serialize_str(&format!("env:{name}")),
            SecretRef::File(path) => s.serialize_str(&format!("file:{}", path.display())),
        }
    }
}

/// A resolved secret value. It never prints itself.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value known to be secret (generated development secrets, for instance).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that needs it (a MAC key, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value, whatever their lengths.
    ///
    /// Both sides are hashed first, so the time taken reveals neither the length nor a
    /// common prefix of the secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(presented);
        a.ct_eq(&b).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse_and_never_print_values() {
        assert_eq!(SecretRef::parse("env:X"), SecretRef::Env("X".into()));
        assert_eq!(
            SecretRef::parse("file:/run/s"),
            SecretRef::File("/run/s".into())
        );
        let lit = SecretRef::parse("hunter2");
        assert!(!format!("{lit:?} {lit}").contains("hunter2"));
        let s = lit.resolve().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn file_secrets_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "abc\n").unwrap();
        let s = SecretRef::File(p).resolve().unwrap();
        assert_eq!(s.expose(), "abc");
    }

    #[test]
    fn missing_sources_name_themselves() {
        let e = SecretRef::Env("SWITCHBOARD_TEST_SURELY_UNSET".into())
            .resolve()
            .unwrap_err();
        assert!(e.contains("SWITCHBOARD_TEST_SURELY_UNSET"));
        assert!(SecretRef::Literal(String::new()).resolve().is_err());
    }
}
