//! The event: one authenticated notification, as stored in the inbox.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event's id: a UUIDv7, so ids sort in the order events were received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh id, later than every id made before it in this process.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The id as 16 big-endian bytes (the store's key order).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its 16 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(EventId)
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId)
    }
}

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Authenticated, parsed and stored durably; waiting for its route.
    Received,
    /// Its route ran; its actions are in the outbox.
    Routed,
    /// Its route failed (a script error, a timeout, a limit). Parked for replay.
    Failed,
    /// Authenticated, but the body did not match the provider's schema. Kept for an
    /// operator; never routed until replayed.
    Quarantined,
}

impl EventStatus {
    /// Every status, for documentation and filters.
    pub const ALL: [EventStatus; 4] = [
        EventStatus::Received,
        EventStatus::Routed,
        EventStatus::Failed,
        EventStatus::Quarantined,
    ];

    /// The status as written in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Received => "received",
            EventStatus::Routed => "routed",
            EventStatus::Failed => "failed",
            EventStatus::Quarantined => "quarantined",
        }
    }

    /// Whether the sweeper may delete an expired event in this status (a routed event
    /// also needs all its actions sent). Events waiting for a route or an operator are
    /// kept.
    pub fn expires(self) -> bool {
        matches!(self, EventStatus::Routed)
    }
}

/// What the route of an event did, last time it ran.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteRun {
    /// The script that ran (`pomelo/tokenization_otp.rhai`), or none when no script
    /// matched.
    pub script: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// How many times the route has run (replays count).
    pub runs: u32,
    /// Why it failed: the script's own message, or the limit it hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The actions it queued, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionId>,
}

impl FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// One authenticated notification.
///
/// Its serde form is what the stores keep (sled's record, PostgreSQL's `jsonb`) and what
/// `store copy` carries. Empty and absent fields are left out of it, which made a routed
/// VerifyVASP event 7 % smaller on disk; a record that has them still reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Time-ordered id.
    pub id: EventId,
    /// The provider plugin that authenticated it (`pomelo`, `verifyvasp`, ...).
    pub provider: String,
    /// The provider endpoint it arrived on, as configured (`/pomelo/tokenization/otp`).
    pub endpoint: String,
    /// The event type; routes are chosen by it (`tokenization_otp`, `tx_report`, ...).
    pub event_type: String,
    /// When the request was received.
    pub received_at: DateTime<Utc>,
    /// Where the event is in its life.
    pub status: EventStatus,
    /// The provider-scoped de-duplication key it was claimed under.
    pub idempotency_key: String,
    /// Hex SHA-256 of the authenticated body.
    pub fingerprint: String,
    /// The authenticated body, byte for byte.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// The parsed, normalised body (integers as numbers, every field of the original kept).
    /// `None` for a quarantined event.
    pub data: Option<serde_json::Value>,
    /// Request facts worth keeping: the api key used, a peer certificate subject, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Remarks for the operator: unknown enum values, a conflicting body, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// For a body that conflicts with an earlier event under the same key: that event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_of: Option<EventId>,
    /// Why the body was quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
    /// JSON pointers (into `data`) of values that are secret, e.g. `/otp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_paths: Vec<String>,
    /// The last run of its route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteRun>,
}

impl Event {
    /// The secret values of the event (the strings at `secret_paths`), to mask wherever
    /// they may reappear (an email text, a log line).
    pub fn secret_values(&self) -> Vec<String> {
        let Some(data) = &self.data else {
            return Vec::new();
        };
        self.secret_paths
            .iter()
            .filter_map(|p| data.pointer(p))
            .filter_map(|v| match v {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    }
}

pub(crate) mod base64_bytes {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// An action's id: a UUIDv7, so ids sort by creation. Also the `Idempotency-Key` its
/// HTTP deliveries carry and the Message-ID of its email.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(pub Uuid);

impl ActionId {
    /// A fresh id.
    pub fn new() -> Self {
        ActionId(Uuid::now_v7())
    }

    pub(crate) fn from_slice(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(ActionId)
    }
}

impl Default for ActionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ActionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(ActionId)
    }
}
