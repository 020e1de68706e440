//! The durable count of route runs that started and have not finished, per event: a
//! poison event (one whose run kills the worker, or the whole server when scripts run in
//! process, or that is running whenever the machine goes down) is parked after
//! `routes.max_crashes` such runs instead of being run at every start forever.
//!
//! Key space `r` + event id → [`Starts`] (JSON). Two store methods, kept apart from the
//! store's own writes so that they stay small: [`Store::route_run_starting`] before a run
//! (its write is flushed before the run starts) and [`Store::route_run_finished`] after
//! the run's outcome is recorded (not flushed: a crash before it counts one run too many,
//! never one too few). A count is tied to the event's number of completed runs
//! (`route.runs`), so a replayed event starts again from zero even if a stale count was
//! left behind.

use serde::{Deserialize, Serialize};

use crate::{
    Result,
    event::{Event, EventId},
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
    /// Counts a start of `event`'s route. Returns how many runs have started since its
    /// route last completed, this one included, and the sequence number to wait for with
    /// [`Store::durable`] before the run begins.
    pub fn route_run_starting(&self, event: &Event) -> Result<(u32, u64)> {
        let k = key(STARTS, event.id.as_bytes());
        let runs = event.route.as_ref().map_or(0, |r| r.runs);
        let mut count = 0;
        let seq = self.write(|tree| {
            let old = tree.get(&k)?;
            let mut s = old
                .as_deref()
                .and_then(|v| decode::<Starts>(&k, v).ok())
                .filter(|s| s.after_runs == runs)
                .unwrap_or(Starts {
                    after_runs: runs,
                    started: 0,
                });
            s.started = s.started.saturating_add(1);
            count = s.started;
            tree.insert(&k, encode(&s))?;
            Ok(())
        })?;
        Ok((count, seq))
    }

    /// Forgets the starts of `id`'s route: its run finished (routed, failed, or handed back
    /// untouched at shutdown).
    pub fn route_run_finished(&self, id: EventId) -> Result<()> {
        self.write(|tree| tree.remove(key(STARTS, id.as_bytes())).map(|_| ()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::StoreConfig, event::RouteRun};

    #[tokio::test]
    async fn starts_count_up_and_reset_after_a_completed_run() {
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
        let (n, seq) = store.route_run_starting(&event).unwrap();
        assert_eq!(n, 1);
        store.durable(seq).await.unwrap();
        let (n, seq) = store.route_run_starting(&event).unwrap();
        assert_eq!(n, 2);
        store.durable(seq).await.unwrap();
        assert_eq!(store.route_run_starting(&event).unwrap().0, 3);
        store.route_run_finished(event.id).unwrap();
        assert_eq!(store.route_run_starting(&event).unwrap().0, 1);
        // A count left from before the event's last completed run does not carry over.
        event.route = Some(RouteRun {
            script: None,
            at: chrono::Utc::now(),
            runs: 1,
            error: Some("failed".into()),
            actions: vec![],
        });
        assert_eq!(store.route_run_starting(&event).unwrap().0, 1);
    }
}
