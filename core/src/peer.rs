//! What a connection tells about its client: which listener it came in on, and the
//! certificate it presented when the listener verifies client certificates (mutual TLS).
//! Filled in by the listener, read by provider plugins that pin certificates.

use std::{fmt, sync::Arc};

/// The verified client certificate of a mutual-TLS connection (its leaf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject distinguished name, RFC 4514 form (`CN=verestro,O=Verestro,C=PL`).
    pub subject: String,
    /// Issuer distinguished name, RFC 4514 form.
    pub issuer: String,
    /// Lower-case hex SHA-256 of the certificate's DER encoding.
    pub sha256: String,
    /// Serial number, hex.
    pub serial: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sha256 {})", self.subject, self.sha256)
    }
}

/// The connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The listener's name: `main` for `[server]`, otherwise its `[listeners.<name>]`.
    pub listener: Arc<str>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate the listener verified, on a mutual-TLS listener.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// Which client certificates a provider accepts beyond "chains to the configured CA".
/// Empty lists mean no pinning.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// Allowed SHA-256 fingerprints (hex, colons and case ignored).
    pub sha256: Vec<String>,
    /// Allowed subjects (RFC 4514, compared exactly after trimming).
    pub subjects: Vec<String>,
}

impl Pins {
    /// Normalises fingerprints (`AB:CD:..` → `abcd..`).
    pub fn new(sha256: &[String], subjects: &[String]) -> Self {
        Pins {
            sha256: sha256
                .iter()
                .map(|f| f.replace(':', "").trim().to_ascii_lowercase())
                .collect(),
            subjects: subjects.iter().map(|s| s.trim().to_owned()).collect(),
        }
    }

    /// Whether any pin is configured.
    pub fn is_empty(&self) -> bool {
        self.sha256.is_empty() && self.subjects.is_empty()
    }

    /// Whether `peer` passes: with no pins, every verified peer does; otherwise its
    /// fingerprint or its subject must be listed.
    pub fn allow(&self, peer: &PeerIdentity) -> bool {
        self.is_empty()
            || self.sha256.contains(&peer.sha256)
            || self.subjects.contains(&peer.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_match_fingerprint_or_subject() {
        let peer = PeerIdentity {
            subject: "CN=verestro".into(),
            issuer: "CN=ca".into(),
            sha256: "abcd".into(),
            serial: "01".into(),
        };
        assert!(Pins::default().allow(&peer));
        assert!(Pins::new(&["AB:CD".into()], &[]).allow(&peer));
        assert!(Pins::new(&[], &[" CN=verestro ".into()]).allow(&peer));
        assert!(!Pins::new(&["ffff".into()], &["CN=other".into()]).allow(&peer));
    }
}
