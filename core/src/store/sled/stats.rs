//! Counts for the operator's overview: events per provider and status, and deliveries per
//! channel and status, over recent windows. Event and action ids are UUIDv7, so their keys
//! sort by time: a window is a range scan from the key of its start, never a walk over the
//! whole store, and only the fields a count needs are decoded from each record.

use serde::{Deserialize, de::DeserializeOwned};

use super::{ACTION, EVENT, Inner, decode, key, skip_unreadable};
use crate::{
    Result,
    event::EventStatus,
    outbox::DeliveryStatus,
    store::{Counts, CountsBy, first_id_at},
};

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

impl Inner {
    /// One range scan of `prefix` from the earliest window, counting each record under
    /// the key `group` gives its head.
    fn count<H: DeserializeOwned, K: std::hash::Hash + Eq>(
        &self,
        prefix: u8,
        windows: &[u64],
        group: impl Fn(H) -> K,
    ) -> Result<CountsBy<K>> {
        let mut out: CountsBy<K> = CountsBy::new();
        let Some(&earliest) = windows.iter().min() else {
            return Ok(out);
        };
        let start = key(prefix, first_id_at(earliest).as_bytes());
        for entry in self.tree.range(start..key(prefix + 1, &[])) {
            let (k, v) = entry?;
            let head: H = match decode(&k, &v) {
                Ok(h) => h,
                Err(e) => {
                    skip_unreadable(e)?;
                    continue;
                }
            };
            let at = key_ms(&k).unwrap_or(0);
            let c: &mut Counts = out.entry(group(head)).or_default();
            c.counts.resize(windows.len(), 0);
            for (i, w) in windows.iter().enumerate() {
                if at >= *w {
                    c.counts[i] += 1;
                }
            }
        }
        Ok(out)
    }

    pub(super) fn event_counts(&self, windows: &[u64]) -> Result<CountsBy<(String, EventStatus)>> {
        self.count(EVENT, windows, |h: EventHead| (h.provider, h.status))
    }

    pub(super) fn action_counts(
        &self,
        windows: &[u64],
    ) -> Result<CountsBy<(String, DeliveryStatus)>> {
        self.count(ACTION, windows, |h: ActionHead| (h.channel, h.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_millisecond_bounds_every_id_made_in_it() {
        let id = uuid::Uuid::now_v7();
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(first_id_at(ms) <= id);
        assert!(first_id_at(ms + 1) > id);
        let mut k = vec![EVENT];
        k.extend_from_slice(id.as_bytes());
        assert_eq!(key_ms(&k), Some(ms));
    }
}
