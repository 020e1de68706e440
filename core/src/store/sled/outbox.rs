//! The sled backend's inbox and outbox: the key spaces `n`, `a`, `s` and `o`.
//!
//! A route's actions, their schedule entries and the event marked routed are one atomic
//! batch (combined with the batches of other route runs and commits, see
//! [`super::Combiner`]): a crash mid-route leaves either nothing of it or all of it. Every
//! read-modify-write of an action holds the outbox lock, so a replay cannot interleave
//! with an attempt. What each change means is written once, in [`crate::outbox`].

use uuid::Uuid;

use super::{
    ACTION, DUE, EVENT, INBOX, Inner, QUARANTINE, SENDING, Write, decode, encode, key,
    skip_unreadable,
};
use crate::{
    Result,
    event::{Event, EventId},
    outbox::{self, Action, ActionFilter, ActionId, ActionSpec, Due, SendResult},
    store::now_ms,
};

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

/// The batch that stores `a` as it is now, with its schedule entry if it has one.
fn put_action(batch: &mut sled::Batch, a: &Action) {
    if let Some(at) = a.due_ms {
        batch.insert(due_key(&a.channel, at, &a.id), &[]);
    }
    batch.insert(key(ACTION, a.id.0.as_bytes()), encode(a));
}

impl Inner {
    fn outbox_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.outbox_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `limit` events waiting for their route, oldest first, after `after` if given
    /// (a page of a scan).
    pub(super) fn inbox(&self, after: Option<EventId>, limit: usize) -> Result<Vec<EventId>> {
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
        // With the entries kept in memory: the first `limit` of both, in order.
        {
            let unlisted = self.unlisted();
            let from = match after {
                Some(id) => std::ops::Bound::Excluded(id),
                None => std::ops::Bound::Unbounded,
            };
            out.extend(
                unlisted
                    .range((from, std::ops::Bound::Unbounded))
                    .map(|(id, _)| *id)
                    .take(limit),
            );
        }
        out.sort_unstable();
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }

    /// The writes of a successful route: its actions, their schedule, the event marked
    /// routed and out of the inbox (applied as one batch). `listed`: its inbox entry is on
    /// disk (not kept in memory, see [`Inner::unlisted`]).
    pub(super) fn route_done(
        &self,
        event: &Event,
        script: Option<String>,
        specs: Vec<ActionSpec>,
        listed: bool,
    ) -> (Vec<Write>, Vec<Action>) {
        let actions = outbox::new_actions(event, specs, now_ms());
        let routed = outbox::routed(event, script, &actions);
        let mut writes = Vec::with_capacity(2 + 2 * actions.len());
        for a in &actions {
            if let Some(at) = a.due_ms {
                writes.push((due_key(&a.channel, at, &a.id), Some(Vec::new())));
            }
            writes.push((key(ACTION, a.id.0.as_bytes()), Some(encode(a))));
        }
        writes.push((key(EVENT, event.id.as_bytes()), Some(encode(&routed))));
        if listed {
            writes.push((key(INBOX, event.id.as_bytes()), None));
        }
        (writes, actions)
    }

    /// The writes of a failed route: the event parked `failed`, out of the inbox
    /// (`listed`: as in [`Inner::route_done`]).
    pub(super) fn route_failed(
        &self,
        event: &Event,
        script: Option<String>,
        error: String,
        listed: bool,
    ) -> Vec<Write> {
        let failed = outbox::failed(event, script, error);
        let mut writes = vec![(key(EVENT, event.id.as_bytes()), Some(encode(&failed)))];
        if listed {
            writes.push((key(INBOX, event.id.as_bytes()), None));
        }
        writes
    }

    pub(super) fn replay_event(
        &self,
        id: EventId,
        reparsed: Option<(String, serde_json::Value, Vec<String>)>,
    ) -> Result<Option<Event>> {
        let Some(e) = self.event(id)? else {
            return Ok(None);
        };
        let e = outbox::replayed(e, reparsed)?;
        let mut batch = sled::Batch::default();
        batch.insert(key(EVENT, id.as_bytes()), encode(&e));
        batch.remove(key(QUARANTINE, id.as_bytes()));
        batch.insert(
            key(INBOX, id.as_bytes()),
            super::inbox_value(0, e.idempotency_key.as_bytes()),
        );
        self.batch(batch)?;
        Ok(Some(e))
    }

    pub(super) fn action(&self, id: ActionId) -> Result<Option<Action>> {
        let k = key(ACTION, id.0.as_bytes());
        self.tree.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    pub(super) fn actions_of(&self, event: &Event) -> Result<Vec<Action>> {
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

    pub(super) fn actions(
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
                    skip_unreadable(e)?;
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
    pub(super) fn due(&self, channel: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>> {
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

    pub(super) fn next_due(&self, channel: &str) -> Result<Option<u64>> {
        let prefix = due_prefix(channel);
        Ok(self
            .tree
            .scan_prefix(&prefix)
            .next()
            .transpose()?
            .and_then(|(k, _)| due_ms_at(&k, prefix.len())))
    }

    /// Marks the action behind `due` `sending`. A schedule entry that no action stands
    /// behind any more (its action is gone, unreadable, or scheduled at another time) is
    /// removed: left in place, it would be returned as due on every pass and take a slot.
    /// Returns the action and the sequence number of its `sending` mark.
    pub(super) fn start_attempt(&self, channel: &str, due: Due) -> Result<Option<(Action, u64)>> {
        let _outbox = self.outbox_lock();
        let entry = due_key(channel, due.at_ms, &due.id);
        let mut a = match self.action(due.id) {
            Ok(Some(a)) if a.channel == channel && a.due_ms == Some(due.at_ms) => a,
            Ok(_) | Err(crate::Error::Corrupt { .. }) => {
                if self.tree.remove(&entry)?.is_some() {
                    tracing::warn!(action_id = %due.id, channel, "a schedule entry with no action behind it was removed");
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut batch = sled::Batch::default();
        batch.remove(entry);
        if !a.start() {
            batch.insert(key(ACTION, due.id.0.as_bytes()), encode(&a));
            self.batch(batch)?;
            return Ok(None);
        }
        batch.insert(key(ACTION, due.id.0.as_bytes()), encode(&a));
        batch.insert(key(SENDING, due.id.0.as_bytes()), &[]);
        let seq = self.batch(batch)?;
        Ok(Some((a, seq)))
    }

    pub(super) fn finish_attempt(
        &self,
        mut a: Action,
        result: &SendResult,
        retry_at_ms: Option<u64>,
    ) -> Result<Action> {
        let _outbox = self.outbox_lock();
        a.finish(result, retry_at_ms);
        let mut batch = sled::Batch::default();
        put_action(&mut batch, &a);
        batch.remove(key(SENDING, a.id.0.as_bytes()));
        self.batch(batch)?;
        Ok(a)
    }

    pub(super) fn resume_interrupted(&self) -> Result<usize> {
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
                a.interrupt(now);
                put_action(&mut batch, &a);
            }
            self.batch(batch)?;
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
            self.batch(batch)?;
        }
        if moved > 0 {
            tracing::info!(
                actions = moved,
                "schedule entries moved to their channel's queue"
            );
        }
        Ok(moved)
    }

    pub(super) fn replay_action(&self, id: ActionId) -> Result<Option<Action>> {
        Ok(self
            .change_action(id, |a| a.replay(now_ms()))?
            .map(|(a, _)| a))
    }

    /// Applies `change` to an action under the outbox lock and, when it says it changed
    /// it, stores it with its schedule entry moved. `None` when there is no such action;
    /// otherwise the action and whether it changed.
    fn change_action(
        &self,
        id: ActionId,
        change: impl FnOnce(&mut Action) -> bool,
    ) -> Result<Option<(Action, bool)>> {
        let _outbox = self.outbox_lock();
        let Some(mut a) = self.action(id)? else {
            return Ok(None);
        };
        let old_due = a.due_ms;
        if !change(&mut a) {
            return Ok(Some((a, false)));
        }
        let mut batch = sled::Batch::default();
        if let Some(at) = old_due {
            batch.remove(due_key(&a.channel, at, &id));
        }
        put_action(&mut batch, &a);
        self.batch(batch)?;
        Ok(Some((a, true)))
    }

    /// Removes an event's actions (the sweeper, with the event).
    pub(super) fn remove_actions(&self, event: &Event) -> Result<()> {
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

    /// Whether every action of a routed event is settled for good (then the event may
    /// expire).
    pub(super) fn all_settled(&self, event: &Event) -> Result<bool> {
        Ok(self.actions_of(event)?.iter().all(Action::settled))
    }

    pub(super) fn expire_action(&self, id: ActionId) -> Result<Option<Action>> {
        Ok(self
            .change_action(id, Action::expire)?
            .and_then(|(a, expired)| expired.then_some(a)))
    }
}
