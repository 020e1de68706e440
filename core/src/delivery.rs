//! The delivery workers: they take due actions from the outbox and hand them to their
//! channel, with a concurrency limit per channel, retries on a schedule with jitter, a
//! dead letter after the last attempt, and every attempt recorded.
//!
//! Each attempt is marked `sending` (durably) before the channel is called and marked
//! `sent`, `retrying` or `dead` after: SMTP has no idempotency, so after a crash an action
//! found `sending` is known to be ambiguous; it is resumed (at least once). An action whose
//! `valid_for` has run out is not sent at all: it ends `expired`.
//!
//! Shutdown ([`Deliverer::run`]'s `stop`): no attempt starts any more; attempts in flight
//! get the grace period to finish and be recorded, so a send that went out is never sent
//! again after the restart. One still running past the grace period is handed back: its
//! `sending` mark stays, and the next start (or, on a shared store, another instance once
//! its lease has run out) resumes it (at least once).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::DeliveryConfig,
    metrics::{ChannelLabels, DeliveryLabels, Metrics},
    outbox::{Action, ActionId, Due, SendResult},
    store::{Store, now_ms},
};

/// How often actions that another process left `sending` are looked for.
const RESUME_EVERY: Duration = Duration::from_secs(10);

/// A way out: email, SMS, HTTP, the log.
pub trait Channel: Send + Sync {
    /// Performs one attempt.
    fn send<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, SendResult>;

    /// Most attempts at once.
    fn concurrency(&self) -> usize;
}

/// Delivers the outbox.
pub struct Deliverer {
    store: Store,
    channels: HashMap<String, Arc<dyn Channel>>,
    cfg: DeliveryConfig,
    metrics: Arc<Metrics>,
    in_flight: Mutex<InFlight>,
    /// Every attempt task, to wait for at shutdown.
    attempts: TaskTracker,
    /// Ends the attempts still running once the grace period is over.
    abort: CancellationToken,
}

/// Attempts running now: by action, and how many per channel.
#[derive(Default)]
struct InFlight {
    actions: HashSet<ActionId>,
    per_channel: HashMap<String, usize>,
}

/// When the attempt after `failures` failed ones is due, or `None` when there is none.
/// A `Retry-After` longer than the schedule's wait is honoured (up to a day); a shorter
/// one does not hurry the schedule.
pub fn next_attempt(
    cfg: &DeliveryConfig,
    failures: usize,
    retry_after: Option<Duration>,
    now_ms: u64,
) -> Option<u64> {
    let base = cfg.schedule.get(failures.checked_sub(1)?)?.get();
    let spread = if cfg.jitter > 0.0 {
        1.0 + cfg.jitter * (rand::random::<f64>() * 2.0 - 1.0)
    } else {
        1.0
    };
    let mut wait = base.mul_f64(spread);
    if let Some(after) = retry_after {
        wait = wait.max(after.min(Duration::from_secs(86_400)));
    }
    Some(now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)))
}

impl Deliverer {
    /// A deliverer over `store` with these channels (by name).
    pub fn new(
        store: Store,
        channels: HashMap<String, Arc<dyn Channel>>,
        cfg: DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Deliverer> {
        Arc::new(Deliverer {
            store,
            channels,
            cfg,
            metrics,
            in_flight: Mutex::new(InFlight::default()),
            attempts: TaskTracker::new(),
            abort: CancellationToken::new(),
        })
    }

    /// Delivers until `stop` is cancelled. First resumes what a crash left `sending`, and
    /// on a shared store, every few seconds, what another instance left.
    ///
    /// Each channel has its own queue and takes from it only as many actions as it has
    /// room for, so a slow or failing channel never holds up another. Once stopped, no
    /// attempt starts; those in flight get `grace` to finish and be recorded, then the
    /// rest are handed back. Returns when no attempt runs any more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, grace: Duration) {
        self.deliver(&stop).await;
        self.attempts.close();
        if tokio::time::timeout(grace, self.attempts.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "deliveries still being sent after the grace period are handed back; the next start resumes them");
            self.abort.cancel();
            self.attempts.wait().await;
        }
    }

    async fn deliver(self: &Arc<Self>, stop: &CancellationToken) {
        let mut resumed_at: Option<std::time::Instant> = None;
        while !stop.is_cancelled() {
            if resumed_at.is_none_or(|at| at.elapsed() >= RESUME_EVERY) {
                match self.store.resume_interrupted().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(actions = n, "resuming deliveries interrupted by a stop")
                    }
                    Err(e) => tracing::error!(error = %e, "cannot resume interrupted deliveries"),
                }
                resumed_at = Some(std::time::Instant::now());
            }
            let now = now_ms();
            let mut next = None::<u64>;
            for (name, channel) in &self.channels {
                let room = channel
                    .concurrency()
                    .max(1)
                    .saturating_sub(self.running(name));
                if room > 0 {
                    let due = self
                        .store
                        .take_due(name, now, room)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::error!(error = %e, "cannot read the outbox");
                            Vec::new()
                        });
                    for d in due {
                        self.clone().dispatch(name, d);
                    }
                }
                if let Ok(Some(at)) = self.store.next_due(name).await {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            let wait = match next {
                Some(at) if at > now => Duration::from_millis((at - now).min(1_000)),
                // Due now but no room: a finishing attempt signals.
                Some(_) => Duration::from_millis(250),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                () = self.store.outbox_signalled() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {}
            }
        }
    }

    fn running(&self, channel: &str) -> usize {
        self.in_flight
            .lock()
            .map(|f| f.per_channel.get(channel).copied().unwrap_or(0))
            .unwrap_or(usize::MAX)
    }

    fn dispatch(self: Arc<Self>, channel: &str, due: Due) {
        let id = due.id;
        let fresh = self
            .in_flight
            .lock()
            .map(|mut f| {
                let fresh = f.actions.insert(id);
                if fresh {
                    *f.per_channel.entry(channel.to_owned()).or_insert(0) += 1;
                }
                fresh
            })
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let channel = channel.to_owned();
        let tracker = self.attempts.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = self.attempt(&channel, due) => {}
                () = self.abort.cancelled() => {
                    tracing::warn!(action_id = %id, channel = %channel, "delivery handed back at shutdown; the next start resumes it");
                }
            }
            if let Ok(mut f) = self.in_flight.lock() {
                f.actions.remove(&id);
                if let Some(n) = f.per_channel.get_mut(&channel) {
                    *n = n.saturating_sub(1);
                }
            }
            self.store.signal_outbox();
        });
    }

    /// Attempts the action behind a schedule entry, if it is still due.
    async fn attempt(&self, channel_name: &str, due: Due) {
        let id = due.id;
        let Some(channel) = self.channels.get(channel_name) else {
            let _ = self.store.release_due(id).await;
            return;
        };
        let expired = match self.store.action(id).await {
            Ok(Some(a)) => a.expires_at().is_some_and(|at| chrono::Utc::now() >= at),
            // Gone or unreadable: starting the attempt drops the stale entry.
            Ok(None) | Err(crate::Error::Corrupt { .. }) => false,
            Err(e) => {
                tracing::error!(action_id = %id, error = %e, "cannot read an action");
                let _ = self.store.release_due(id).await;
                return;
            }
        };
        if expired {
            match self.store.expire_action(id).await {
                Ok(Some(a)) => {
                    self.metrics
                        .deliveries
                        .get_or_create(&DeliveryLabels {
                            channel: channel_name.to_owned(),
                            outcome: "expired".into(),
                        })
                        .inc();
                    tracing::warn!(action_id = %id, event_id = %a.event_id, channel = %channel_name, "not sent: the message is no longer valid");
                }
                Ok(None) => {}
                Err(e) => tracing::error!(action_id = %id, error = %e, "cannot expire an action"),
            }
            return;
        }
        // Nothing leaves before the `sending` mark (and so the routed event and its actions,
        // written before it) is on disk: a crash after a send must find the action again,
        // with the same id, or the message would go twice under two ids.
        let action = match self.store.start_attempt(channel_name, due).await {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e @ crate::Error::Durability(_)) => {
                // Marked `sending`, but not known to be on disk: not sent, tried again.
                tracing::error!(action_id = %id, error = %e, "the store cannot flush; not sending");
                if let Ok(Some(a)) = self.store.action(id).await {
                    let result = SendResult::Retry {
                        error: "not sent: the store could not record the attempt on disk".into(),
                        after: None,
                    };
                    let retry_at = next_attempt(&self.cfg, a.failures() + 1, None, now_ms());
                    if let Err(e) = self.store.finish_attempt(a, &result, retry_at).await {
                        tracing::error!(action_id = %id, error = %e, "cannot record a delivery attempt");
                    }
                }
                return;
            }
            Err(e) => {
                tracing::error!(action_id = %id, error = %e, "cannot start a delivery");
                let _ = self.store.release_due(id).await;
                return;
            }
        };
        let result = channel.send(&action).await;
        let failures = action.failures() + usize::from(!matches!(result, SendResult::Sent(_)));
        let retry_at = match &result {
            SendResult::Retry { after, .. } => next_attempt(&self.cfg, failures, *after, now_ms()),
            _ => None,
        };
        let outcome = match (&result, retry_at) {
            (SendResult::Sent(_), _) => "sent",
            (SendResult::Retry { .. }, Some(_)) => "retry",
            (SendResult::Permanent(_), _) => "rejected",
            (SendResult::Retry { .. }, None) => "dead",
        };
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                channel: channel_name.to_owned(),
                outcome: outcome.into(),
            })
            .inc();
        match &result {
            SendResult::Sent(_) => {
                let took = chrono::Utc::now() - action.received_at;
                self.metrics
                    .delivered_seconds
                    .get_or_create(&ChannelLabels {
                        channel: channel_name.to_owned(),
                    })
                    .observe(took.num_microseconds().unwrap_or(0) as f64 / 1e6);
                tracing::info!(action_id = %id, event_id = %action.event_id, channel = %channel_name, "delivered");
            }
            SendResult::Retry { error, .. } if retry_at.is_some() => {
                tracing::warn!(action_id = %id, channel = %channel_name, attempt = failures, error = %error, "delivery failed; will retry");
            }
            SendResult::Retry { error, .. } | SendResult::Permanent(error) => {
                tracing::error!(action_id = %id, event_id = %action.event_id, channel = %channel_name, attempt = failures, error = %error, "delivery dead; replay it once the cause is fixed");
            }
        }
        if let Err(e) = self.store.finish_attempt(action, &result, retry_at).await {
            tracing::error!(action_id = %id, error = %e, "cannot record a delivery attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HumanDuration;

    #[test]
    fn the_schedule_ends_and_a_longer_retry_after_wins() {
        let cfg = DeliveryConfig {
            schedule: vec![HumanDuration::secs(10), HumanDuration::secs(60)],
            jitter: 0.2,
        };
        let at = next_attempt(&cfg, 1, None, 0).unwrap();
        assert!((8_000..=12_000).contains(&at), "{at}");
        let at = next_attempt(&cfg, 2, None, 0).unwrap();
        assert!((48_000..=72_000).contains(&at), "{at}");
        assert_eq!(next_attempt(&cfg, 3, None, 0), None, "then dead");
        let at = next_attempt(&cfg, 1, Some(Duration::from_secs(3)), 0).unwrap();
        assert!(
            (8_000..=12_000).contains(&at),
            "a short Retry-After does not hurry the schedule: {at}"
        );
        assert_eq!(
            next_attempt(&cfg, 1, Some(Duration::from_secs(600)), 0),
            Some(600_000),
            "a longer one is honoured"
        );
        assert_eq!(
            next_attempt(&cfg, 1, Some(Duration::from_secs(7 * 86_400)), 0),
            Some(86_400_000),
            "up to a day"
        );
        let default = DeliveryConfig::default();
        let total: Duration = default.schedule.iter().map(|d| d.get()).sum();
        assert!(
            total > Duration::from_secs(20 * 3600) && total < Duration::from_secs(36 * 3600),
            "about a day: {total:?}"
        );
    }
}
