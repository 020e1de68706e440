//! The durable count of route runs that started and have not finished, per event: a
//! poison event (one whose run kills the worker, or the whole server when scripts run in
//! process, or that is running whenever the machine goes down) is parked after
//! `routes.max_crashes` such runs instead of being run at every start forever.
//!
//! The count lives in the value of the event's inbox marker (`n` + event id, empty for
//! zero, else a 4-byte big-endian count), so it costs one write per run and needs no
//! clearing: whatever takes the event out of the inbox (its route recorded, routed or
//! failed) forgets it, and a replay puts the marker back empty. Two store methods, kept
//! apart from the store's own writes: [`Store::route_run_starts`] reads the count and
//! [`Store::set_route_run_starts`] sets it, one more before a run (flushed before the run
//! starts), zero after a run that leaves the event in the inbox (a lookup retry), back to
//! what it was when shutdown hands a run back. It never puts a marker back that is gone.

use crate::{
    Result,
    event::EventId,
    store::{INBOX, Store, key},
};

fn count_of(value: &[u8]) -> u32 {
    <[u8; 4]>::try_from(value).map_or(0, u32::from_be_bytes)
}

impl Store {
    /// How many runs of `id`'s route have started since it entered the inbox and did not
    /// finish (0 when it is not in the inbox).
    pub fn route_run_starts(&self, id: EventId) -> Result<u32> {
        Ok(self
            .tree
            .get(key(INBOX, id.as_bytes()))?
            .map_or(0, |v| count_of(&v)))
    }

    /// Sets that count, if the event is still in the inbox. Returns the sequence number
    /// to wait for with [`Store::durable`].
    pub fn set_route_run_starts(&self, id: EventId, started: u32) -> Result<u64> {
        let k = key(INBOX, id.as_bytes());
        let value: Vec<u8> = if started == 0 {
            Vec::new()
        } else {
            started.to_be_bytes().to_vec()
        };
        self.write(|tree| {
            tree.fetch_and_update(&k, |old| old.map(|_| value.clone()))
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    #[tokio::test]
    async fn the_count_rides_on_the_inbox_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().to_path_buf(),
            ..StoreConfig::default()
        })
        .unwrap();
        let id = EventId::new();
        store.tree.insert(key(INBOX, id.as_bytes()), &[]).unwrap();
        assert_eq!(store.route_run_starts(id).unwrap(), 0);
        let seq = store.set_route_run_starts(id, 1).unwrap();
        store.durable(seq).await.unwrap();
        store.set_route_run_starts(id, 2).unwrap();
        assert_eq!(store.route_run_starts(id).unwrap(), 2);
        assert_eq!(
            store.inbox(None, 10).unwrap(),
            vec![id],
            "still in the inbox"
        );
        store.set_route_run_starts(id, 0).unwrap();
        assert_eq!(store.route_run_starts(id).unwrap(), 0);
        // Out of the inbox, the count is gone, and setting it does not bring it back.
        store.set_route_run_starts(id, 2).unwrap();
        store.inbox_remove(id).unwrap();
        store.set_route_run_starts(id, 1).unwrap();
        assert!(store.inbox(None, 10).unwrap().is_empty());
        assert_eq!(store.route_run_starts(id).unwrap(), 0);
    }
}
