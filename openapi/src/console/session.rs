//! Console sessions: an unguessable id in an HttpOnly, SameSite=Strict cookie, and a CSRF
//! token that the page sends back in a header on every state-changing request.
//!
//! Sessions live in memory (a restart signs everyone out) and are bounded in number and
//! age. Only a SHA-256 of each id is kept, and ids and tokens are compared in constant
//! time.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use switchboard_core::secret::Secret;

/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; signing in beyond it ends the oldest.
const MAX_SESSIONS: usize = 256;

struct Session {
    csrf: Secret,
    expires: Instant,
}

/// The signed-in sessions.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session: its id (for the cookie) and its CSRF token (for the page).
    pub fn create(&self) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS {
            if let Some(oldest) = m.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                m.remove(&oldest);
            }
        }
        m.insert(
            hash(&id),
            Session {
                csrf: Secret::new(csrf.clone()),
                expires: now + LIFETIME,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session, if `id` is one.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&hash(id))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.csrf.expose().to_owned())
    }

    /// Whether `id` is a live session and `presented` its CSRF token.
    pub fn check_csrf(&self, id: &str, presented: &str) -> bool {
        let m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&hash(id))
            .is_some_and(|s| s.expires > Instant::now() && s.csrf.matches(presented.as_bytes()))
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        let mut m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&hash(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_needs_its_own_csrf_token_and_ends_on_logout() {
        let s = Sessions::default();
        let (id, csrf) = s.create();
        let (other, other_csrf) = s.create();
        assert_ne!(id, other);
        assert_eq!(s.csrf(&id).as_deref(), Some(csrf.as_str()));
        assert!(s.check_csrf(&id, &csrf));
        assert!(!s.check_csrf(&id, &other_csrf));
        assert!(!s.check_csrf(&id, ""));
        assert!(s.csrf("forged").is_none());
        s.remove(&id);
        assert!(s.csrf(&id).is_none());
        assert!(!s.check_csrf(&id, &csrf));
        assert!(s.check_csrf(&other, &other_csrf));
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        let first = s.create().0;
        for _ in 0..MAX_SESSIONS {
            s.create();
        }
        assert!(s.csrf(&first).is_none(), "the oldest session made room");
        assert_eq!(s.by_hash.lock().unwrap().len(), MAX_SESSIONS);
    }
}
