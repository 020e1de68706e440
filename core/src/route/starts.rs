//! The durable count of route runs that started and have not finished, per event: a
//! poison event (one whose run kills the worker, or the whole server when scripts run in
//! process, or that is running whenever the machine goes down) is parked after
//! `routes.max_crashes` such runs instead of being run at every start forever.
//!
//! Key space `r` + event id → [`Starts`] (JSON). Two store methods, kept apart from the
//! store's own writes so that they stay small: [`Store::route_run_starts`] reads the
//! count, [`Store::set_route_run_starts`] sets it: one more before a run (flushed before
//! the run starts), zero after the run's outcome is recorded (not flushed: a crash before
//! it counts one run too many, never one too few), back to what it was when shutdown
//! hands a run back. A count is tied to the event's number of completed runs
//! (`route.runs`), so a replayed event starts again from zero even if a stale count was
//! left behind.

use serde::{Deserialize, Serialize};

use crate::{
    Result,
    event::Event,
    store::{Store, decode, encode, key},
};

/// Prefix of the key space.
const STARTS: u8 = b'r';

/// Runs of an event started since its route last completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Starts {
    /// The event's completed runs (`route.runs`) when these started.
    pub after_runs: u32,
    /// Runs started and not finished, this one included.
    pub started: u32,
}

impl Store {
    /// How many runs of `event`'s route have started since it last completed (routed or
    /// failed) and did not finish.
    pub fn route_run_starts(&self, event: &Event) -> Result<u32> {
        let k = key(STARTS, event.id.as_bytes());
        let runs = event.route.as_ref().map_or(0, |r| r.runs);
        Ok(self
            .tree
            .get(&k)?
            .and_then(|v| decode::<Starts>(&k, &v).ok())
            .filter(|s| s.after_runs == runs)
            .map_or(0, |s| s.started))
    }

    /// Sets that count: one more before a run starts (then wait for [`Store::durable`] of
    /// the returned sequence number), zero once its outcome is recorded, back to what it
    /// was when shutdown hands the run back.
    pub fn set_route_run_starts(&self, event: &Event, started: u32) -> Result<u64> {
        let k = key(STARTS, event.id.as_bytes());
        let value = Starts {
            after_runs: event.route.as_ref().map_or(0, |r| r.runs),
            started,
        };
        self.write(|tree| {
            if started == 0 {
                tree.remove(&k)?;
            } else {
                tree.insert(&k, encode(&value))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::StoreConfig,
        event::{EventId, RouteRun},
    };

    #[tokio::test]
    async fn starts_are_kept_per_completed_run() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().to_path_buf(),
            ..StoreConfig::default()
        };
        let mut event = Event {
            id: EventId::new(),
            provider: "p".into(),
            endpoint: "/p".into(),
            event_type: "t".into(),
            received_at: chrono::Utc::now(),
            status: crate::event::EventStatus::Received,
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            body: vec![],
            data: None,
            meta: Default::default(),
            flags: vec![],
            conflict_of: None,
            quarantine_reason: None,
            secret_paths: vec![],
            route: None,
        };
        let store = Store::open(&cfg).unwrap();
        assert_eq!(store.route_run_starts(&event).unwrap(), 0);
        let seq = store.set_route_run_starts(&event, 1).unwrap();
        store.durable(seq).await.unwrap();
        store.set_route_run_starts(&event, 2).unwrap();
        assert_eq!(store.route_run_starts(&event).unwrap(), 2);
        store.set_route_run_starts(&event, 0).unwrap();
        assert_eq!(store.route_run_starts(&event).unwrap(), 0);
        // A count left from before the event's last completed run does not carry over.
        store.set_route_run_starts(&event, 2).unwrap();
        event.route = Some(RouteRun {
            script: None,
            at: chrono::Utc::now(),
            runs: 1,
            error: Some("failed".into()),
            actions: vec![],
        });
        assert_eq!(store.route_run_starts(&event).unwrap(), 0);
    }
}
