//! Read-only queries for the operator's overview and time-bounded listings: counts of
//! events per provider and status, and of deliveries per channel and status, over recent
//! windows; and a page of events received after a given time.
//!
//! Event and action ids are UUIDv7, so their keys sort by time: a window is a range scan
//! from the key of its start, never a walk over the whole store. Only the few fields a
//! count needs are decoded from each record.
//!
//! What must not live here: any write. These queries sit beside `store.rs` so that the
//! storage interface can take them over as they are.

use std::collections::HashMap;

use serde::Deserialize;
use uuid::Uuid;

use crate::{
    Result,
    event::{Event, EventId, EventStatus},
    outbox::DeliveryStatus,
    store::{ACTION, EVENT, EventFilter, Page, Store, decode, key, skip_unreadable},
};

/// The smallest UUIDv7 of the millisecond `ms`: every id made at or after `ms` sorts at
/// or after it, every id made before sorts before it.
pub fn first_id_at(ms: u64) -> Uuid {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

/// How many records fell in each window: `counts[i]` for `windows[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// One count per window, in the order the windows were given.
    pub counts: Vec<u64>,
}

/// The fields of an event a count needs.
#[derive(Deserialize)]
struct EventHead {
    provider: String,
    status: EventStatus,
}

/// The fields of an action a count needs.
#[derive(Deserialize)]
struct ActionHead {
    channel: String,
    status: DeliveryStatus,
}

/// The millisecond timestamp of a UUIDv7 key (prefix byte, then the id).
fn key_ms(k: &[u8]) -> Option<u64> {
    let t = k.get(1..7)?;
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(t);
    Some(u64::from_be_bytes(b))
}

/// Whether `e` passes `filter` (as [`Store::events`] decides).
fn matches(filter: &EventFilter, e: &Event) -> bool {
    filter.provider.as_deref().is_none_or(|p| p == e.provider)
        && filter
            .event_type
            .as_deref()
            .is_none_or(|t| t == e.event_type)
        && filter.status.is_none_or(|s| s == e.status)
}

impl Store {
    /// Events received since each of `windows` (ms since the epoch), counted per provider
    /// and status. One range scan from the earliest window.
    pub fn event_counts(&self, windows: &[u64]) -> Result<HashMap<(String, EventStatus), Counts>> {
        let mut out: HashMap<(String, EventStatus), Counts> = HashMap::new();
        let Some(&earliest) = windows.iter().min() else {
            return Ok(out);
        };
        let start = key(EVENT, first_id_at(earliest).as_bytes());
        for entry in self.tree.range(start..key(EVENT + 1, &[])) {
            let (k, v) = entry?;
            let head: EventHead = match decode(&k, &v) {
                Ok(h) => h,
                Err(e) => {
                    skip_unreadable(e)?;
                    continue;
                }
            };
            let at = key_ms(&k).unwrap_or(0);
            let c = out.entry((head.provider, head.status)).or_default();
            c.counts.resize(windows.len(), 0);
            for (i, w) in windows.iter().enumerate() {
                if at >= *w {
                    c.counts[i] += 1;
                }
            }
        }
        Ok(out)
    }

    /// Actions queued since each of `windows` (ms since the epoch), counted per channel
    /// and status. One range scan from the earliest window.
    pub fn action_counts(
        &self,
        windows: &[u64],
    ) -> Result<HashMap<(String, DeliveryStatus), Counts>> {
        let mut out: HashMap<(String, DeliveryStatus), Counts> = HashMap::new();
        let Some(&earliest) = windows.iter().min() else {
            return Ok(out);
        };
        let start = key(ACTION, first_id_at(earliest).as_bytes());
        for entry in self.tree.range(start..key(ACTION + 1, &[])) {
            let (k, v) = entry?;
            let head: ActionHead = match decode(&k, &v) {
                Ok(h) => h,
                Err(e) => {
                    skip_unreadable(e)?;
                    continue;
                }
            };
            let at = key_ms(&k).unwrap_or(0);
            let c = out.entry((head.channel, head.status)).or_default();
            c.counts.resize(windows.len(), 0);
            for (i, w) in windows.iter().enumerate() {
                if at >= *w {
                    c.counts[i] += 1;
                }
            }
        }
        Ok(out)
    }

    /// Like [`Store::events`], but only events received at or after `since_ms`: the scan
    /// stops at the window's start instead of walking older events.
    pub fn events_since(
        &self,
        filter: &EventFilter,
        since_ms: u64,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<Page> {
        let start = key(EVENT, first_id_at(since_ms).as_bytes());
        let end = match before {
            Some(id) => key(EVENT, id.as_bytes()),
            None => key(EVENT + 1, &[]),
        };
        let mut items = Vec::new();
        let mut next = None;
        if start >= end {
            return Ok(Page { items, next });
        }
        for entry in self.tree.range(start..end).rev() {
            let (k, v) = entry?;
            let e: Event = match decode(&k, &v) {
                Ok(e) => e,
                Err(e) => {
                    skip_unreadable(e)?;
                    continue;
                }
            };
            if matches(filter, &e) {
                if items.len() == limit {
                    next = items.last().map(|e: &Event| e.id);
                    break;
                }
                items.push(e);
            }
        }
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_millisecond_bounds_every_id_made_in_it() {
        let id = Uuid::now_v7();
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(first_id_at(ms) <= id);
        assert!(first_id_at(ms + 1) > id);
        let mut k = vec![EVENT];
        k.extend_from_slice(id.as_bytes());
        assert_eq!(key_ms(&k), Some(ms));
    }
}
