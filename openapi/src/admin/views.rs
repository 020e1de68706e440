//! What the admin API shows: events, actions and attempts, with secret values masked
//! unless the server is configured to reveal them.

use std::collections::BTreeMap;

use poem_openapi::{Enum, Object};
use serde_json::Value;
use switchboard_core::{
    event::{Event, EventStatus},
    mask::{mask_by_name, mask_pointers, mask_raw_body, mask_values},
    outbox::{Action, Attempt, AttemptOutcome, DeliveryStatus},
    route::scripts::CompileError,
};

/// An event's status.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Status {
    /// Stored; waiting for its route.
    Received,
    /// Its route ran; its actions are in the outbox.
    Routed,
    /// Its route failed; parked for replay.
    Failed,
    /// The body did not match the provider's schema; kept for an operator.
    Quarantined,
}

impl From<Status> for EventStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Received => EventStatus::Received,
            Status::Routed => EventStatus::Routed,
            Status::Failed => EventStatus::Failed,
            Status::Quarantined => EventStatus::Quarantined,
        }
    }
}

impl From<EventStatus> for Status {
    fn from(s: EventStatus) -> Self {
        match s {
            EventStatus::Received => Status::Received,
            EventStatus::Routed => Status::Routed,
            EventStatus::Failed => Status::Failed,
            EventStatus::Quarantined => Status::Quarantined,
        }
    }
}

/// A delivery's status.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Delivery {
    /// Queued, not tried yet (or replayed).
    Pending,
    /// Being sent.
    Sending,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Delivered.
    Sent,
    /// Failed for good; replayable.
    Dead,
    /// Not sent: its `valid_for` ran out first (an OTP nobody can use any more).
    Expired,
}

impl From<Delivery> for DeliveryStatus {
    fn from(s: Delivery) -> Self {
        match s {
            Delivery::Pending => DeliveryStatus::Pending,
            Delivery::Sending => DeliveryStatus::Sending,
            Delivery::Retrying => DeliveryStatus::Retrying,
            Delivery::Sent => DeliveryStatus::Sent,
            Delivery::Dead => DeliveryStatus::Dead,
            Delivery::Expired => DeliveryStatus::Expired,
        }
    }
}

impl From<DeliveryStatus> for Delivery {
    fn from(s: DeliveryStatus) -> Self {
        match s {
            DeliveryStatus::Pending => Delivery::Pending,
            DeliveryStatus::Sending => Delivery::Sending,
            DeliveryStatus::Retrying => Delivery::Retrying,
            DeliveryStatus::Sent => Delivery::Sent,
            DeliveryStatus::Dead => Delivery::Dead,
            DeliveryStatus::Expired => Delivery::Expired,
        }
    }
}

/// The route of an event: its last run, and the actions of every run.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct RouteView {
    /// The script that ran, if one matched.
    pub script: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// How many times the route has run.
    pub runs: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// Ids of the actions its runs queued, oldest first (a replay adds to them).
    pub actions: Vec<String>,
}

/// A stored event, as an operator sees it.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct EventView {
    /// Id (UUIDv7: ids sort by arrival).
    pub id: String,
    /// The provider that authenticated it.
    pub provider: String,
    /// The endpoint it arrived on.
    pub endpoint: String,
    /// Its type, which chooses its route.
    #[oai(rename = "type")]
    pub event_type: String,
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// Where it is in its life.
    pub status: Status,
    /// The provider-scoped key it was de-duplicated on.
    pub idempotency_key: String,
    /// Hex SHA-256 of the body.
    pub fingerprint: String,
    /// The normalised body. Secret values (OTPs) are replaced by `******` unless the
    /// server is configured to reveal them.
    pub data: Option<Value>,
    /// Request facts kept with the event (the api key used, the client certificate, ...).
    pub meta: BTreeMap<String, String>,
    /// Remarks: unknown enum values, a conflicting body, ...
    pub flags: Vec<String>,
    /// The earlier event with the same key and another body, if any.
    pub conflict_of: Option<String>,
    /// Why the body was quarantined.
    pub quarantine_reason: Option<String>,
    /// The last run of its route.
    pub route: Option<RouteView>,
    /// The body as received, only in the detail view: parsed and masked like `data`, or
    /// verbatim (a string) when secrets may be revealed.
    pub body: Option<Value>,
    /// Its actions with every attempt, only in the detail view.
    pub actions: Option<Vec<ActionView>>,
}

/// One delivery attempt.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct AttemptView {
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// `in_flight`, `sent`, `failed`, `rejected` (permanent), `interrupted` (the process
    /// stopped during it; it was resumed) or `expired` (not attempted: no longer valid).
    pub outcome: String,
    /// Why it failed.
    pub error: Option<String>,
    /// What the other side answered.
    pub detail: Option<String>,
}

/// An action in the outbox.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct ActionView {
    /// Id; also the `Idempotency-Key` of its HTTP deliveries and its email's Message-ID.
    pub id: String,
    /// The event whose route queued it.
    pub event_id: String,
    /// The event's provider.
    pub provider: String,
    /// The event's type.
    pub event_type: String,
    /// `email`, `sms`, `http` or `log`.
    pub channel: String,
    /// Where it is.
    pub status: Delivery,
    /// What is sent (secret values masked unless revealed).
    pub payload: Value,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When the next attempt is due (RFC 3339), if one is scheduled.
    pub due_at: Option<String>,
}

/// A script that does not compile (its last good version keeps running).
#[derive(Object, Debug, Clone)]
#[oai(skip_serializing_if_is_none)]
pub struct CompileErrorView {
    /// The script, relative to the routes directory.
    pub file: String,
    /// 1-based line.
    pub line: Option<u64>,
    /// 1-based column.
    pub column: Option<u64>,
    /// What is wrong.
    pub message: String,
    /// Whether a last good version runs meanwhile. If not, the events it would handle are
    /// parked as `failed` (replay them once it compiles).
    pub running: bool,
}

impl CompileErrorView {
    /// The error, and whether a good version of its script runs.
    pub fn new(e: CompileError, running: bool) -> Self {
        CompileErrorView {
            file: e.file,
            line: e.line.map(|l| l as u64),
            column: e.column.map(|c| c as u64),
            message: e.message,
            running,
        }
    }
}

fn outcome(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::InFlight => "in_flight",
        AttemptOutcome::Sent => "sent",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Rejected => "rejected",
        AttemptOutcome::Interrupted => "interrupted",
        AttemptOutcome::Expired => "expired",
    }
}

fn attempt(a: Attempt) -> AttemptView {
    AttemptView {
        started_at: a.started_at.to_rfc3339(),
        finished_at: a.finished_at.map(|t| t.to_rfc3339()),
        outcome: outcome(a.outcome).into(),
        error: a.error,
        detail: a.detail,
    }
}

/// An action as shown.
pub fn action(a: Action, reveal: bool) -> ActionView {
    let payload = if reveal {
        a.payload.clone()
    } else {
        let mut p = mask_values(&a.payload, &a.secrets);
        mask_by_name(&mut p);
        p
    };
    ActionView {
        id: a.id.to_string(),
        event_id: a.event_id.to_string(),
        provider: a.provider,
        event_type: a.event_type,
        channel: a.channel,
        status: a.status.into(),
        payload,
        attempts: a.attempts.into_iter().map(attempt).collect(),
        created_at: a.created_at.to_rfc3339(),
        due_at: a.due_ms.and_then(|ms| {
            chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
                .map(|t| t.to_rfc3339())
        }),
    }
}

/// An event as shown; with its body and actions in the detail view.
pub fn event(e: Event, detail: Option<Vec<Action>>, reveal: bool) -> EventView {
    let mut data = e.data;
    let body = detail.as_ref().map(|_| {
        if reveal {
            Value::String(String::from_utf8_lossy(&e.body).into_owned())
        } else {
            let mut b = mask_raw_body(&e.body);
            mask_pointers(&mut b, &e.secret_paths);
            b
        }
    });
    if !reveal {
        if let Some(d) = data.as_mut() {
            mask_pointers(d, &e.secret_paths);
            mask_by_name(d);
        }
    }
    EventView {
        id: e.id.to_string(),
        provider: e.provider,
        endpoint: e.endpoint,
        event_type: e.event_type,
        received_at: e.received_at.to_rfc3339(),
        status: e.status.into(),
        idempotency_key: e.idempotency_key,
        fingerprint: e.fingerprint,
        data,
        meta: e.meta,
        flags: e.flags,
        conflict_of: e.conflict_of.map(|i| i.to_string()),
        quarantine_reason: e.quarantine_reason,
        route: e.route.map(|r| RouteView {
            script: r.script,
            at: r.at.to_rfc3339(),
            runs: r.runs,
            error: r.error,
            actions: r.actions.iter().map(ToString::to_string).collect(),
        }),
        body,
        actions: detail.map(|acts| acts.into_iter().map(|a| action(a, reveal)).collect()),
    }
}
