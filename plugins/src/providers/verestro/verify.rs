//! Verestro's authentication: the client certificate the mutual-TLS listener verified,
//! optionally pinned. Plain functions over what the listener recorded.

use std::sync::Arc;

use switchboard_core::peer::{ConnectionInfo, PeerIdentity, Pins};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It did not arrive with a verified client certificate (not a mutual-TLS listener).
    NoCertificate,
    /// The certificate chains to the CA but is not one of the pinned ones.
    NotPinned,
}

impl Refusal {
    /// A metric label for the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_client_certificate",
            Refusal::NotPinned => "certificate_not_pinned",
        }
    }
}

/// The verified client certificate of the connection, if it passes the pins.
pub fn check(conn: Option<&ConnectionInfo>, pins: &Pins) -> Result<Arc<PeerIdentity>, Refusal> {
    let peer = conn
        .and_then(|c| c.peer.clone())
        .ok_or(Refusal::NoCertificate)?;
    if pins.allow(&peer) {
        Ok(peer)
    } else {
        Err(Refusal::NotPinned)
    }
}
