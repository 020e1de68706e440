//! The outbox: actions that routes queued, their deliveries and every attempt.
//!
//! | prefix | key                               | value                        |
//! |--------|-----------------------------------|------------------------------|
//! | `n`    | event id                          | empty: events to route       |
//! | `a`    | action id (16 bytes, ordered)     | [`Action`] (JSON)            |
//! | `s`    | channel + 0 + due ms (8 bytes BE) + action id | empty: schedule, one queue per channel |
//! | `o`    | action id                         | empty: being sent            |
//!
//! A route's actions, their schedule entries and the event marked routed are one atomic
//! batch: a crash mid-route leaves either nothing of it or all of it. An action is marked
//! `sending` (and that is flushed) before its channel is called, then `sent`, `retrying`,
//! `dead`, or `expired` (a message that was only valid for a while, such as an OTP); after
//! a crash, actions found `sending` are resumed. Every read-modify-write of an action holds
//! the store's outbox lock, so a replay cannot interleave with an attempt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Error, Result,
    event::{Event, EventId, EventStatus, RouteRun},
    store::{ACTION, DUE, EVENT, INBOX, SENDING, Store, decode, encode, key, now_ms},
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
    fn matches(&self, a: &Action) -> bool {
        self.status.is_none_or(|s| s == a.status)
            && self.channel.as_deref().is_none_or(|c| c == a.channel)
            && self.provider.as_deref().is_none_or(|p| p == a.provider)
    }
}

/// The start of a channel's schedule: `s` + channel + 0.
fn due_prefix(channel: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 26);
    k.push(DUE);
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k
}

pub(crate) fn due_key(channel: &str, due_ms: u64, id: &ActionId) -> Vec<u8> {
    let mut k = due_prefix(channel);
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(id.0.as_bytes());
    k
}

/// The due time in a schedule key whose time starts at byte `at`.
fn due_ms_at(k: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(at..at + 8)?.try_into().ok()?))
}

/// The entry a schedule key whose time starts at byte `at` stands for: the inverse of
/// [`due_key`].
fn parse_due(k: &[u8], at: usize) -> Option<Due> {
    Some(Due {
        at_ms: due_ms_at(k, at)?,
        id: ActionId::from_slice(k.get(at + 8..)?)?,
    })
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

fn batch_write(store: &Store, batch: sled::Batch) -> Result<u64> {
    store.write(|tree| tree.apply_batch(batch))
}

impl Store {
    /// Wakes the route workers (new events in the inbox).
    pub fn signal_inbox(&self) {
        self.inbox.notify_one();
    }

    /// Waits for new events in the inbox.
    pub async fn inbox_signalled(&self) {
        self.inbox.notified().await;
    }

    /// Wakes the delivery workers (actions due).
    pub fn signal_outbox(&self) {
        self.outbox.notify_one();
    }

    /// Waits for actions to become due.
    pub async fn outbox_signalled(&self) {
        self.outbox.notified().await;
    }

    /// Up to `limit` events waiting for their route, oldest first, after `after` if given
    /// (a page of a scan).
    pub fn inbox(&self, after: Option<EventId>, limit: usize) -> Result<Vec<EventId>> {
        let start = match after {
            // Strictly after: the key of `after` followed by a zero byte.
            Some(id) => {
                let mut k = key(INBOX, id.as_bytes());
                k.push(0);
                k
            }
            None => vec![INBOX],
        };
        let mut out = Vec::new();
        for entry in self.tree.range(start..vec![INBOX + 1]).take(limit) {
            let (k, _) = entry?;
            if let Some(id) = EventId::from_slice(&k[1..]) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Forgets an inbox entry whose event is gone or was routed meanwhile.
    pub fn inbox_remove(&self, id: EventId) -> Result<()> {
        self.tree.remove(key(INBOX, id.as_bytes()))?;
        Ok(())
    }

    /// Records a successful route: the actions, their schedule and the event marked
    /// routed, in one atomic write. Returns the write's sequence number.
    pub fn route_done(
        &self,
        event: &Event,
        script: Option<String>,
        specs: Vec<ActionSpec>,
    ) -> Result<(u64, Vec<Action>)> {
        let now = Utc::now();
        let due = now_ms();
        let secrets = event.secret_values();
        let actions: Vec<Action> = specs
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
                due_ms: Some(due),
                secrets: secrets.clone(),
                schedule_from: 0,
            })
            .collect();
        let mut routed = event.clone();
        routed.status = EventStatus::Routed;
        // A replayed event keeps the actions of its earlier runs: they stay visible, keep
        // their own state, and go with the event when it expires.
        let mut ids = earlier_actions(event);
        ids.extend(actions.iter().map(|a| a.id));
        routed.route = Some(RouteRun {
            script,
            at: now,
            runs: event.route.as_ref().map_or(0, |r| r.runs) + 1,
            error: None,
            actions: ids,
        });
        let mut batch = sled::Batch::default();
        for a in &actions {
            batch.insert(key(ACTION, a.id.0.as_bytes()), encode(a));
            batch.insert(due_key(&a.channel, due, &a.id), &[]);
        }
        batch.insert(key(EVENT, event.id.as_bytes()), encode(&routed));
        batch.remove(key(INBOX, event.id.as_bytes()));
        let seq = batch_write(self, batch)?;
        Ok((seq, actions))
    }

    /// Records a failed route: the event is parked as failed with the error.
    pub fn route_failed(
        &self,
        event: &Event,
        script: Option<String>,
        error: String,
    ) -> Result<u64> {
        let mut failed = event.clone();
        failed.status = EventStatus::Failed;
        failed.route = Some(RouteRun {
            script,
            at: Utc::now(),
            runs: event.route.as_ref().map_or(0, |r| r.runs) + 1,
            error: Some(error),
            actions: earlier_actions(event),
        });
        let mut batch = sled::Batch::default();
        batch.insert(key(EVENT, event.id.as_bytes()), encode(&failed));
        batch.remove(key(INBOX, event.id.as_bytes()));
        batch_write(self, batch)
    }

    /// Puts an event back in the inbox so that its route runs again. A quarantined event
    /// must first get its parsed data (`data`, `event_type`, `flags`) from its provider.
    pub fn replay_event(
        &self,
        id: EventId,
        reparsed: Option<(String, Value, Vec<String>)>,
    ) -> Result<Option<Event>> {
        let Some(mut e) = self.event(id)? else {
            return Ok(None);
        };
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
        let mut batch = sled::Batch::default();
        batch.insert(key(EVENT, id.as_bytes()), encode(&e));
        batch.remove(key(crate::store::QUARANTINE, id.as_bytes()));
        batch.insert(key(INBOX, id.as_bytes()), &[]);
        batch_write(self, batch)?;
        self.signal_inbox();
        Ok(Some(e))
    }

    /// One action.
    pub fn action(&self, id: ActionId) -> Result<Option<Action>> {
        let k = key(ACTION, id.0.as_bytes());
        self.tree.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The actions of every route run of an event, oldest first.
    pub fn actions_of(&self, event: &Event) -> Result<Vec<Action>> {
        let ids = event
            .route
            .as_ref()
            .map(|r| r.actions.clone())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.action(id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Actions matching `filter`, newest first, strictly older than `before`.
    pub fn actions(
        &self,
        filter: &ActionFilter,
        before: Option<ActionId>,
        limit: usize,
    ) -> Result<(Vec<Action>, Option<ActionId>)> {
        let end = match before {
            Some(id) => key(ACTION, id.0.as_bytes()),
            None => key(ACTION + 1, &[]),
        };
        let mut items = Vec::new();
        let mut next = None;
        for entry in self.tree.range(key(ACTION, &[])..end).rev() {
            let (k, v) = entry?;
            let a: Action = match decode(&k, &v) {
                Ok(a) => a,
                Err(e) => {
                    crate::store::skip_unreadable(e)?;
                    continue;
                }
            };
            if filter.matches(&a) {
                if items.len() == limit {
                    next = items.last().map(|a: &Action| a.id);
                    break;
                }
                items.push(a);
            }
        }
        Ok((items, next))
    }

    /// Up to `limit` actions of `channel` due at `now_ms`, earliest first.
    pub fn due(&self, channel: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>> {
        let prefix = due_prefix(channel);
        let end = due_key(channel, now_ms.saturating_add(1), &ActionId(Uuid::nil()));
        let mut out = Vec::new();
        for entry in self.tree.range(prefix.clone()..end).take(limit) {
            let (k, _) = entry?;
            match parse_due(&k, prefix.len()) {
                Some(d) => out.push(d),
                // Not a key this code writes: it would be returned on every pass.
                None => {
                    self.tree.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes a schedule entry that no action stands behind any more: its action is gone
    /// or unreadable (the sweeper, a damaged record), or is scheduled at another time.
    /// Left in place, it would be returned as due on every pass and take a slot.
    pub fn drop_stale_due(&self, channel: &str, due: Due) -> Result<bool> {
        let _outbox = self.outbox_lock();
        let current = match self.action(due.id) {
            Ok(Some(a)) => a.channel == channel && a.due_ms == Some(due.at_ms),
            Ok(None) | Err(crate::Error::Corrupt { .. }) => false,
            Err(e) => return Err(e),
        };
        if current {
            return Ok(false);
        }
        self.tree.remove(due_key(channel, due.at_ms, &due.id))?;
        Ok(true)
    }

    /// When the earliest scheduled action of `channel` is due.
    pub fn next_due(&self, channel: &str) -> Result<Option<u64>> {
        let prefix = due_prefix(channel);
        Ok(self
            .tree
            .scan_prefix(&prefix)
            .next()
            .transpose()?
            .and_then(|(k, _)| due_ms_at(&k, prefix.len())))
    }

    /// Marks an action `sending` with a new attempt, taking it off the schedule. Returns
    /// `None` when it is no longer due (replayed, delivered meanwhile).
    pub fn start_attempt(&self, id: ActionId) -> Result<Option<(Action, u64)>> {
        let _outbox = self.outbox_lock();
        let Some(mut a) = self.action(id)? else {
            return Ok(None);
        };
        let mut batch = sled::Batch::default();
        if let Some(due) = a.due_ms.take() {
            batch.remove(due_key(&a.channel, due, &id));
        }
        if !matches!(a.status, DeliveryStatus::Pending | DeliveryStatus::Retrying) {
            batch_write(self, batch)?;
            return Ok(None);
        }
        a.status = DeliveryStatus::Sending;
        a.attempts.push(Attempt {
            started_at: Utc::now(),
            finished_at: None,
            outcome: AttemptOutcome::InFlight,
            error: None,
            detail: None,
        });
        batch.insert(key(ACTION, id.0.as_bytes()), encode(&a));
        batch.insert(key(SENDING, id.0.as_bytes()), &[]);
        let seq = batch_write(self, batch)?;
        Ok(Some((a, seq)))
    }

    /// Records how the running attempt ended; schedules the next one at `retry_at_ms`, or
    /// marks the action dead when there is none.
    pub fn finish_attempt(
        &self,
        mut a: Action,
        result: &SendResult,
        retry_at_ms: Option<u64>,
    ) -> Result<(Action, u64)> {
        let _outbox = self.outbox_lock();
        let now = Utc::now();
        let (outcome, error, detail) = match result {
            SendResult::Sent(d) => (AttemptOutcome::Sent, None, d.clone()),
            SendResult::Retry { error, .. } => (AttemptOutcome::Failed, Some(error.clone()), None),
            SendResult::Permanent(error) => (AttemptOutcome::Rejected, Some(error.clone()), None),
        };
        if let Some(last) = a.attempts.last_mut() {
            last.finished_at = Some(now);
            last.outcome = outcome;
            last.error = error;
            last.detail = detail;
        }
        let mut batch = sled::Batch::default();
        a.status = match (result, retry_at_ms) {
            (SendResult::Sent(_), _) => DeliveryStatus::Sent,
            (SendResult::Retry { .. }, Some(at)) => {
                a.due_ms = Some(at);
                batch.insert(due_key(&a.channel, at, &a.id), &[]);
                DeliveryStatus::Retrying
            }
            _ => DeliveryStatus::Dead,
        };
        batch.insert(key(ACTION, a.id.0.as_bytes()), encode(&a));
        batch.remove(key(SENDING, a.id.0.as_bytes()));
        let seq = batch_write(self, batch)?;
        Ok((a, seq))
    }

    /// Actions that were being sent when the process stopped: marked interrupted and
    /// scheduled again now. Returns how many.
    pub fn resume_interrupted(&self) -> Result<usize> {
        let _outbox = self.outbox_lock();
        self.migrate_due_keys()?;
        let ids: Vec<ActionId> = self
            .tree
            .scan_prefix([SENDING])
            .filter_map(|e| e.ok())
            .filter_map(|(k, _)| ActionId::from_slice(&k[1..]))
            .collect();
        let now = now_ms();
        for id in &ids {
            let mut batch = sled::Batch::default();
            batch.remove(key(SENDING, id.0.as_bytes()));
            if let Some(mut a) = self.action(*id)? {
                if let Some(last) = a
                    .attempts
                    .last_mut()
                    .filter(|l| l.outcome == AttemptOutcome::InFlight)
                {
                    last.outcome = AttemptOutcome::Interrupted;
                    last.finished_at = Some(Utc::now());
                    last.error = Some("the process stopped during this attempt".into());
                }
                if a.status == DeliveryStatus::Sending {
                    a.status = DeliveryStatus::Retrying;
                    a.due_ms = Some(now);
                    batch.insert(due_key(&a.channel, now, id), &[]);
                }
                batch.insert(key(ACTION, id.0.as_bytes()), encode(&a));
            }
            batch_write(self, batch)?;
        }
        Ok(ids.len())
    }

    /// Moves schedule entries of the format before due queues were kept per channel
    /// (`s{ms}{id}`: its second byte is the top byte of a millisecond time, zero, where a
    /// channel name would start) to their action's channel. Runs under the outbox lock.
    fn migrate_due_keys(&self) -> Result<usize> {
        let mut moved = 0;
        for entry in self.tree.scan_prefix([DUE, 0]) {
            let (k, _) = entry?;
            let mut batch = sled::Batch::default();
            batch.remove(k.clone());
            // The old format: the time right after the prefix byte.
            if let Some(Due { id, at_ms: at }) = parse_due(&k, 1) {
                match self.action(id) {
                    Ok(Some(a)) if a.due_ms == Some(at) => {
                        batch.insert(due_key(&a.channel, at, &id), &[]);
                        moved += 1;
                    }
                    // Gone, rescheduled or unreadable: the old entry stands for nothing.
                    Ok(_) | Err(crate::Error::Corrupt { .. }) => {}
                    // Not known now: keep the entry for the next start rather than lose
                    // a delivery.
                    Err(e) => return Err(e),
                }
            }
            batch_write(self, batch)?;
        }
        if moved > 0 {
            tracing::info!(
                actions = moved,
                "schedule entries moved to their channel's queue"
            );
        }
        Ok(moved)
    }

    /// Schedules an action again now (an operator's replay), whatever its status except
    /// `sending` and `expired` (those are returned unchanged: one is being sent, the other
    /// is no longer worth sending). Returns the action, or `None` if there is no such
    /// action.
    pub fn replay_action(&self, id: ActionId) -> Result<Option<Action>> {
        let _outbox = self.outbox_lock();
        let Some(mut a) = self.action(id)? else {
            return Ok(None);
        };
        if matches!(a.status, DeliveryStatus::Sending | DeliveryStatus::Expired) {
            return Ok(Some(a));
        }
        let mut batch = sled::Batch::default();
        if let Some(due) = a.due_ms.take() {
            batch.remove(due_key(&a.channel, due, &id));
        }
        let now = now_ms();
        a.status = DeliveryStatus::Pending;
        a.due_ms = Some(now);
        // A new schedule: the retries of the old one are not held against it.
        a.schedule_from = a.attempts.len();
        batch.insert(due_key(&a.channel, now, &id), &[]);
        batch.insert(key(ACTION, id.0.as_bytes()), encode(&a));
        batch_write(self, batch)?;
        self.signal_outbox();
        Ok(Some(a))
    }

    /// Removes an event's actions (the sweeper, with the event).
    pub(crate) fn remove_actions(&self, event: &Event) -> Result<()> {
        let _outbox = self.outbox_lock();
        for id in event.route.iter().flat_map(|r| r.actions.iter()) {
            if let Some(a) = self.action(*id)? {
                if let Some(due) = a.due_ms {
                    self.tree.remove(due_key(&a.channel, due, id))?;
                }
            }
            self.tree.remove(key(ACTION, id.0.as_bytes()))?;
        }
        Ok(())
    }

    /// Whether every action of a routed event is settled for good, sent or expired (then
    /// the event may expire).
    pub(crate) fn all_sent(&self, event: &Event) -> Result<bool> {
        for a in self.actions_of(event)? {
            if !matches!(a.status, DeliveryStatus::Sent | DeliveryStatus::Expired) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Settles an action whose message ran out of validity before it could be sent: it
    /// is taken off the schedule and marked `expired`, with the reason as an attempt.
    pub fn expire_action(&self, id: ActionId) -> Result<Option<Action>> {
        let _outbox = self.outbox_lock();
        let Some(mut a) = self.action(id)? else {
            return Ok(None);
        };
        if !matches!(a.status, DeliveryStatus::Pending | DeliveryStatus::Retrying) {
            return Ok(None);
        }
        let mut batch = sled::Batch::default();
        if let Some(due) = a.due_ms.take() {
            batch.remove(due_key(&a.channel, due, &id));
        }
        let now = Utc::now();
        let valid_for = a
            .payload
            .get("valid_for")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        a.status = DeliveryStatus::Expired;
        // An attempt cut short by a stop may have reached the receiver: do not claim
        // that nothing went out.
        let interrupted = a
            .attempts
            .iter()
            .any(|t| t.outcome == AttemptOutcome::Interrupted);
        let verb = if interrupted {
            "not sent again (an interrupted attempt may have reached the receiver)"
        } else {
            "not sent"
        };
        a.attempts.push(Attempt {
            started_at: now,
            finished_at: Some(now),
            outcome: AttemptOutcome::Expired,
            error: Some(format!(
                "{verb}: it was valid for {valid_for} after the event arrived"
            )),
            detail: None,
        });
        batch.insert(key(ACTION, id.0.as_bytes()), encode(&a));
        batch_write(self, batch)?;
        Ok(Some(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    #[tokio::test]
    async fn a_schedule_entry_with_no_action_behind_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().to_path_buf(),
            ..StoreConfig::default()
        })
        .unwrap();
        let orphan = ActionId(Uuid::now_v7());
        store
            .tree
            .insert(due_key("email", 5, &orphan), &[])
            .unwrap();
        let due = store.due("email", 10, 8).unwrap();
        assert_eq!(
            due,
            vec![Due {
                id: orphan,
                at_ms: 5
            }]
        );
        assert!(store.due("sms", 10, 8).unwrap().is_empty(), "per channel");
        assert!(store.drop_stale_due("email", due[0]).unwrap());
        assert!(store.due("email", 10, 8).unwrap().is_empty());
        assert_eq!(store.next_due("email").unwrap(), None);
    }

    #[tokio::test]
    async fn the_inbox_is_read_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().to_path_buf(),
            ..StoreConfig::default()
        })
        .unwrap();
        let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
        for id in &ids {
            store.tree.insert(key(INBOX, id.as_bytes()), &[]).unwrap();
        }
        let first = store.inbox(None, 3).unwrap();
        assert_eq!(first, ids[..3]);
        let rest = store.inbox(first.last().copied(), 3).unwrap();
        assert_eq!(rest, ids[3..]);
        assert!(store.inbox(rest.last().copied(), 3).unwrap().is_empty());
    }
}
