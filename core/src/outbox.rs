//! The outbox: actions that routes queued, their deliveries and every attempt, as plain
//! data and the state changes both storage backends apply to it.
//!
//! An action is `pending` when its route queues it, `sending` while an attempt runs (a
//! mark that is durable before its channel is called), then `sent`, `retrying`, `dead`,
//! or `expired` (a message that was only valid for a while, such as an OTP). After a stop,
//! an action found `sending` is resumed: its attempt is marked interrupted and it is due
//! again, under the same id. The transitions below ([`routed`], [`failed`], [`replayed`],
//! [`Action::start`], [`Action::finish`], ...) are the only place these rules are written;
//! the backends in [`crate::store`] store their results.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Error, Result,
    event::{Event, EventId, EventStatus, RouteRun},
    units::HumanDuration,
};

pub use crate::event::ActionId;

/// What a script asked for: a channel and what to send through it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// `email`, `sms`, `http` or `log`.
    pub channel: String,
    /// The message: `{to, subject, text, html?}`, `{to, text}`,
    /// `{service, path, body}`, `{message}`.
    pub payload: Value,
}

/// Where a delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued, not tried yet (or replayed).
    Pending,
    /// Being sent now (or when the process stopped).
    Sending,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Delivered.
    Sent,
    /// Failed for good (a permanent error, or the last attempt). Replayable.
    Dead,
    /// Not sent: its `valid_for` ran out first (an OTP nobody can use any more).
    Expired,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Sending,
        DeliveryStatus::Retrying,
        DeliveryStatus::Sent,
        DeliveryStatus::Dead,
        DeliveryStatus::Expired,
    ];

    /// The status as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Expired => "expired",
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Still running.
    InFlight,
    /// Delivered.
    Sent,
    /// Failed; retried if attempts remain.
    Failed,
    /// Failed in a way retrying cannot fix.
    Rejected,
    /// The process stopped during the attempt; it was resumed.
    Interrupted,
    /// Not attempted: the message was no longer valid.
    Expired,
}

/// One attempt to deliver an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Why it failed (never a secret: channels describe errors, not payloads).
    pub error: Option<String>,
    /// What the other side said on success (an SMTP reply, an HTTP status).
    pub detail: Option<String>,
}

/// An action in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Its id.
    pub id: ActionId,
    /// The event whose route queued it.
    pub event_id: EventId,
    /// The event's provider.
    pub provider: String,
    /// The event's type.
    pub event_type: String,
    /// `email`, `sms`, `http` or `log`.
    pub channel: String,
    /// What to send.
    pub payload: Value,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When the event was received (for the ingest-to-delivery latency).
    pub received_at: DateTime<Utc>,
    /// When it is due next, ms since the epoch.
    pub due_ms: Option<u64>,
    /// Values to mask wherever the action is shown or logged (the event's OTP, ...).
    pub secrets: Vec<String>,
    /// Attempts before this index belong to an earlier schedule: an operator's replay
    /// starts a new one.
    #[serde(default)]
    pub schedule_from: usize,
}

impl Action {
    /// Failed attempts of the current schedule (interrupted ones do not count).
    pub fn failures(&self) -> usize {
        self.attempts
            .iter()
            .skip(self.schedule_from)
            .filter(|a| matches!(a.outcome, AttemptOutcome::Failed | AttemptOutcome::Rejected))
            .count()
    }

    /// When the message stops being worth sending: the event's arrival plus the
    /// `valid_for` the script gave (`email::send(#{..., valid_for: "10m"})`), if any.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        let valid_for: HumanDuration = self.payload.get("valid_for")?.as_str()?.parse().ok()?;
        let d = chrono::Duration::from_std(valid_for.get()).ok()?;
        self.received_at.checked_add_signed(d)
    }

    /// The payload with the secret values masked, for people and logs.
    pub fn masked_payload(&self) -> Value {
        crate::mask::mask_values(&self.payload, &self.secrets)
    }
}

/// How a channel's attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum SendResult {
    /// Delivered; what the other side said.
    Sent(Option<String>),
    /// Failed; worth retrying (after the given wait, if the other side asked for one).
    Retry {
        /// Why.
        error: String,
        /// `Retry-After`, if any.
        after: Option<Duration>,
    },
    /// Failed; retrying cannot help (a 4xx, an SMTP 5xx).
    Permanent(String),
}

/// Actions matching all the given criteria.
#[derive(Clone, Debug, Default)]
pub struct ActionFilter {
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Only this channel.
    pub channel: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
}

impl ActionFilter {
    /// Whether `a` matches.
    pub fn matches(&self, a: &Action) -> bool {
        self.status.is_none_or(|s| s == a.status)
            && self.channel.as_deref().is_none_or(|c| c == a.channel)
            && self.provider.as_deref().is_none_or(|p| p == a.provider)
    }
}

/// A schedule entry: the action, and when it is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The action.
    pub id: ActionId,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// The actions an event's earlier route runs queued.
fn earlier_actions(event: &Event) -> Vec<ActionId> {
    event
        .route
        .as_ref()
        .map(|r| r.actions.clone())
        .unwrap_or_default()
}

/// The actions a route queued, each `pending` and due at `due_ms`.
pub fn new_actions(event: &Event, specs: Vec<ActionSpec>, due_ms: u64) -> Vec<Action> {
    let now = Utc::now();
    let secrets = event.secret_values();
    specs
        .into_iter()
        .map(|s| Action {
            id: ActionId::new(),
            event_id: event.id,
            provider: event.provider.clone(),
            event_type: event.event_type.clone(),
            channel: s.channel,
            payload: s.payload,
            status: DeliveryStatus::Pending,
            attempts: Vec::new(),
            created_at: now,
            received_at: event.received_at,
            due_ms: Some(due_ms),
            secrets: secrets.clone(),
            schedule_from: 0,
        })
        .collect()
}

/// The event once its route ran and queued `actions`. A replayed event keeps the actions
/// of its earlier runs: they stay visible, keep their own state, and go with the event
/// when it expires.
pub fn routed(event: &Event, script: Option<String>, actions: &[Action]) -> Event {
    let mut routed = event.clone();
    routed.status = EventStatus::Routed;
    let mut ids = earlier_actions(event);
    ids.extend(actions.iter().map(|a| a.id));
    routed.route = Some(RouteRun {
        script,
        at: Utc::now(),
        runs: event.route.as_ref().map_or(0, |r| r.runs) + 1,
        error: None,
        actions: ids,
    });
    routed
}

/// The event once its route failed with `error`: parked for replay.
pub fn failed(event: &Event, script: Option<String>, error: String) -> Event {
    let mut failed = event.clone();
    failed.status = EventStatus::Failed;
    failed.route = Some(RouteRun {
        script,
        at: Utc::now(),
        runs: event.route.as_ref().map_or(0, |r| r.runs) + 1,
        error: Some(error),
        actions: earlier_actions(event),
    });
    failed
}

/// The event put back for its route to run again (an operator's replay). A quarantined
/// event must come with its parsed data (`event_type`, `data`, `flags`).
pub fn replayed(mut e: Event, reparsed: Option<(String, Value, Vec<String>)>) -> Result<Event> {
    if let Some((event_type, data, flags)) = reparsed {
        e.event_type = event_type;
        e.data = Some(data);
        e.flags.extend(flags);
        e.quarantine_reason = None;
    }
    if e.data.is_none() {
        return Err(Error::Unavailable(
            "a quarantined event needs its body parsed first".into(),
        ));
    }
    e.status = EventStatus::Received;
    Ok(e)
}

impl Action {
    /// Starts an attempt: `sending`, with an attempt in flight, off the schedule. `false`
    /// (and nothing changed but the schedule) when the action is not waiting to be sent.
    pub fn start(&mut self) -> bool {
        self.due_ms = None;
        if !matches!(
            self.status,
            DeliveryStatus::Pending | DeliveryStatus::Retrying
        ) {
            return false;
        }
        self.status = DeliveryStatus::Sending;
        self.attempts.push(Attempt {
            started_at: Utc::now(),
            finished_at: None,
            outcome: AttemptOutcome::InFlight,
            error: None,
            detail: None,
        });
        true
    }

    /// Ends the running attempt with `result`: `sent`, `retrying` at `retry_at_ms`, or
    /// `dead` when there is no next attempt.
    pub fn finish(&mut self, result: &SendResult, retry_at_ms: Option<u64>) {
        let (outcome, error, detail) = match result {
            SendResult::Sent(d) => (AttemptOutcome::Sent, None, d.clone()),
            SendResult::Retry { error, .. } => (AttemptOutcome::Failed, Some(error.clone()), None),
            SendResult::Permanent(error) => (AttemptOutcome::Rejected, Some(error.clone()), None),
        };
        if let Some(last) = self.attempts.last_mut() {
            last.finished_at = Some(Utc::now());
            last.outcome = outcome;
            last.error = error;
            last.detail = detail;
        }
        self.due_ms = None;
        self.status = match (result, retry_at_ms) {
            (SendResult::Sent(_), _) => DeliveryStatus::Sent,
            (SendResult::Retry { .. }, Some(at)) => {
                self.due_ms = Some(at);
                DeliveryStatus::Retrying
            }
            _ => DeliveryStatus::Dead,
        };
    }

    /// Resumes an attempt cut short by a stop: the attempt is marked interrupted and the
    /// action is due again at `now_ms`, under the same id (at least once).
    pub fn interrupt(&mut self, now_ms: u64) {
        if let Some(last) = self
            .attempts
            .last_mut()
            .filter(|l| l.outcome == AttemptOutcome::InFlight)
        {
            last.outcome = AttemptOutcome::Interrupted;
            last.finished_at = Some(Utc::now());
            last.error = Some("the process stopped during this attempt".into());
        }
        if self.status == DeliveryStatus::Sending {
            self.status = DeliveryStatus::Retrying;
            self.due_ms = Some(now_ms);
        }
    }

    /// An operator's replay: due now, with a new retry schedule. `false` (unchanged) for
    /// an action being sent or expired: one is under way, the other no longer worth
    /// sending.
    pub fn replay(&mut self, now_ms: u64) -> bool {
        if matches!(
            self.status,
            DeliveryStatus::Sending | DeliveryStatus::Expired
        ) {
            return false;
        }
        self.status = DeliveryStatus::Pending;
        self.due_ms = Some(now_ms);
        // A new schedule: the retries of the old one are not held against it.
        self.schedule_from = self.attempts.len();
        true
    }

    /// Settles an action whose message ran out of validity before it could be sent:
    /// `expired`, off the schedule, with the reason as an attempt. `false` (unchanged)
    /// when it is not waiting to be sent.
    pub fn expire(&mut self) -> bool {
        if !matches!(
            self.status,
            DeliveryStatus::Pending | DeliveryStatus::Retrying
        ) {
            return false;
        }
        self.due_ms = None;
        let now = Utc::now();
        let valid_for = self
            .payload
            .get("valid_for")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        self.status = DeliveryStatus::Expired;
        // An attempt cut short by a stop may have reached the receiver: do not claim that
        // nothing went out.
        let interrupted = self
            .attempts
            .iter()
            .any(|t| t.outcome == AttemptOutcome::Interrupted);
        let verb = if interrupted {
            "not sent again (an interrupted attempt may have reached the receiver)"
        } else {
            "not sent"
        };
        self.attempts.push(Attempt {
            started_at: now,
            finished_at: Some(now),
            outcome: AttemptOutcome::Expired,
            error: Some(format!(
                "{verb}: it was valid for {valid_for} after the event arrived"
            )),
            detail: None,
        });
        true
    }

    /// Whether the action is settled for good (then its event may expire).
    pub fn settled(&self) -> bool {
        matches!(self.status, DeliveryStatus::Sent | DeliveryStatus::Expired)
    }
}
