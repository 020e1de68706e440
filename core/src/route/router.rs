//! The route workers: they take events from the inbox, run their script, and record what
//! it decided: the actions and the routed event in one atomic write, or the event parked
//! as failed. One failing script never blocks the others. A run that failed because a
//! lookup timed out or its service was unavailable is run again after a short wait
//! (`routes.lookup_retries`) before the event is parked; the event stays in the inbox
//! meanwhile, so a restart picks it up too.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    Lookup, RunFailure, RunLimits,
    scripts::{Resolved, Scripts},
};
use crate::{
    config::RoutesConfig,
    event::{EventId, EventStatus},
    metrics::Metrics,
    store::Store,
};

/// Inbox entries read at a time.
const INBOX_PAGE: usize = 256;

/// Routes the events of the inbox.
pub struct Router {
    store: Store,
    scripts: Arc<Scripts>,
    lookups: Arc<dyn Lookup>,
    limits: RunLimits,
    workers: usize,
    retry_waits: Vec<Duration>,
    metrics: Arc<Metrics>,
    in_flight: Mutex<HashSet<EventId>>,
    /// Runs of an event that failed on a transient lookup failure, so far.
    retried: Mutex<HashMap<EventId, usize>>,
}

impl Router {
    /// A router over `store` with these scripts and services.
    pub fn new(
        store: Store,
        scripts: Arc<Scripts>,
        lookups: Arc<dyn Lookup>,
        cfg: &RoutesConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Router> {
        Arc::new(Router {
            store,
            scripts,
            lookups,
            limits: RunLimits {
                deadline: cfg.deadline.get(),
                lookup_timeout: cfg.lookup_timeout.get(),
                lookup_budget: cfg.lookup_budget.get(),
            },
            workers: cfg.workers.max(1),
            retry_waits: cfg.lookup_retries.iter().map(|d| d.get()).collect(),
            metrics,
            in_flight: Mutex::new(HashSet::new()),
            retried: Mutex::new(HashMap::new()),
        })
    }

    /// The scripts.
    pub fn scripts(&self) -> &Arc<Scripts> {
        &self.scripts
    }

    /// Runs until the task is dropped: a dispatcher that reads the inbox when signalled
    /// (and every second, as a safety net), and `workers` workers.
    pub async fn run(self: Arc<Self>) {
        let (tx, rx) = mpsc::channel::<EventId>(self.workers * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut workers = Vec::new();
        for _ in 0..self.workers {
            let (me, rx) = (self.clone(), rx.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(id) = next else { break };
                    match me.route(id).await {
                        // Still in flight (so not dispatched again) until the wait is over.
                        Some(wait) => {
                            if let Err(e) = me.store.defer(id, wait).await {
                                tracing::error!(event_id = %id, error = %e, "cannot keep an event's lease for its retry");
                            }
                            let me = me.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                me.release(id);
                            });
                        }
                        None => me.release(id),
                    }
                }
            }));
        }
        // The inbox is read a page at a time from a cursor, so that events still in
        // flight (waiting out a lookup retry, say) never hide the ones behind them; past
        // the end, the next pass starts from the beginning again.
        let mut cursor: Option<EventId> = None;
        loop {
            let ids = match self.store.take_inbox(cursor, INBOX_PAGE).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox");
                    Vec::new()
                }
            };
            let at_end = ids.len() < INBOX_PAGE;
            cursor = if at_end { None } else { ids.last().copied() };
            for id in ids {
                let fresh = self
                    .in_flight
                    .lock()
                    .map(|mut f| f.insert(id))
                    .unwrap_or(false);
                if fresh && tx.send(id).await.is_err() {
                    return;
                }
            }
            if !at_end {
                continue;
            }
            tokio::select! {
                () = self.store.inbox_signalled() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn release(&self, id: EventId) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.remove(&id);
        }
        self.store.signal_inbox();
    }

    /// Routes one event. Returns a wait when the run should be tried again after it.
    pub async fn route(&self, id: EventId) -> Option<Duration> {
        let event = match self.store.event(id).await {
            Ok(Some(e)) if e.status == EventStatus::Received => e,
            Ok(_) => {
                let _ = self.store.inbox_remove(id).await;
                if let Ok(mut r) = self.retried.lock() {
                    r.remove(&id);
                }
                return None;
            }
            Err(e @ crate::Error::Corrupt { .. }) => {
                // Trying again cannot help: take it out of the inbox (the record stays).
                tracing::error!(event_id = %id, error = %e, "an unreadable event cannot be routed; it leaves the inbox");
                let _ = self.store.inbox_remove(id).await;
                return None;
            }
            Err(e) => {
                tracing::error!(event_id = %id, error = %e, "cannot read an event to route; trying again in a second");
                return Some(Duration::from_secs(1));
            }
        };
        let started = std::time::Instant::now();
        let script = self.scripts.resolve(&event.provider, &event.event_type);
        let script_name = script.name().map(str::to_owned);
        let outcome = match script {
            Resolved::Missing => {
                tracing::warn!(provider = %event.provider, event_type = %event.event_type, "no route script for this event; nothing to do");
                Ok(Vec::new())
            }
            Resolved::Broken(e) => Err(RunFailure {
                message: format!("the script does not compile and has no good version: {e}"),
                retryable: false,
            }),
            Resolved::Script(name, ast) => {
                let engine = self.scripts.engine().clone();
                let (ev, lookups, limits) = (event.clone(), self.lookups.clone(), self.limits);
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    super::run_script(&engine, &ast, &name, &ev, lookups, &limits, handle)
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(event_id = %id, error = %e, "a route run panicked");
                    Err(RunFailure {
                        message: "internal error: the route run stopped (see the log)".into(),
                        retryable: false,
                    })
                })
            }
        };
        let retries = self
            .retried
            .lock()
            .map(|mut r| {
                if outcome.as_ref().is_err_and(|f| f.retryable) {
                    let n = r.entry(id).or_insert(0);
                    *n += 1;
                    *n
                } else {
                    r.remove(&id).unwrap_or(0)
                }
            })
            .unwrap_or(usize::MAX);
        let label = |outcome: &str| crate::metrics::RouteLabels {
            provider: event.provider.clone(),
            event_type: event.event_type.clone(),
            outcome: outcome.to_owned(),
        };
        match outcome {
            Ok(specs) => {
                let count = specs.len();
                // No wait for the flush here: a delivery marks its attempt `sending` and waits
                // for that later write to be durable before it sends, which covers this one.
                match self
                    .store
                    .route_done(&event, script_name.clone(), specs)
                    .await
                {
                    Ok(None) => {
                        tracing::warn!(event_id = %id, "the event was routed elsewhere meanwhile (its lease ran out); this run's actions are dropped");
                    }
                    Ok(Some(_)) => {
                        self.metrics.routes.get_or_create(&label("routed")).inc();
                        tracing::info!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = script_name.as_deref().unwrap_or("none"), actions = count, "event routed");
                    }
                    Err(e) => tracing::error!(event_id = %id, error = %e, "cannot record a route"),
                }
            }
            Err(failure) if failure.retryable && retries <= self.retry_waits.len() => {
                let wait = self.retry_waits[retries - 1];
                self.metrics.routes.get_or_create(&label("retry")).inc();
                tracing::warn!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = script_name.as_deref().unwrap_or("none"), error = %failure, retry_in = ?wait, "route failed on a lookup; running it again soon");
                return Some(wait);
            }
            Err(failure) => {
                if failure.retryable {
                    if let Ok(mut r) = self.retried.lock() {
                        r.remove(&id);
                    }
                }
                self.metrics.routes.get_or_create(&label("failed")).inc();
                tracing::warn!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = script_name.as_deref().unwrap_or("none"), error = %failure, "route failed; the event is parked for replay");
                if let Err(e) = self
                    .store
                    .route_failed(&event, script_name, failure.message)
                    .await
                {
                    tracing::error!(event_id = %id, error = %e, "cannot record a failed route");
                }
            }
        }
        self.metrics
            .route_seconds
            .observe(started.elapsed().as_secs_f64());
        None
    }
}
