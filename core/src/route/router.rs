//! The route workers: they take events from the inbox, run their script, and record what
//! it decided: the actions and the routed event in one atomic write, or the event parked
//! as failed. One failing script never blocks the others.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{Lookup, RunLimits, scripts::Scripts};
use crate::{
    config::RoutesConfig,
    event::{EventId, EventStatus},
    metrics::Metrics,
    store::Store,
};

/// Routes the events of the inbox.
pub struct Router {
    store: Store,
    scripts: Arc<Scripts>,
    lookups: Arc<dyn Lookup>,
    limits: RunLimits,
    workers: usize,
    metrics: Arc<Metrics>,
    in_flight: Mutex<HashSet<EventId>>,
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
            metrics,
            in_flight: Mutex::new(HashSet::new()),
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
                    me.route(id).await;
                    if let Ok(mut f) = me.in_flight.lock() {
                        f.remove(&id);
                    }
                    me.store.signal_inbox();
                }
            }));
        }
        loop {
            let ids = match self.store.inbox(256) {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox");
                    Vec::new()
                }
            };
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
            tokio::select! {
                () = self.store.inbox_signalled() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Routes one event.
    pub async fn route(&self, id: EventId) {
        let event = match self.store.event(id) {
            Ok(Some(e)) if e.status == EventStatus::Received => e,
            Ok(_) => {
                let _ = self.store.inbox_remove(id);
                return;
            }
            Err(e) => {
                tracing::error!(event_id = %id, error = %e, "cannot read an event to route");
                return;
            }
        };
        let started = std::time::Instant::now();
        let script = self.scripts.resolve(&event.provider, &event.event_type);
        let outcome = match &script {
            None => {
                tracing::warn!(provider = %event.provider, event_type = %event.event_type, "no route script for this event; nothing to do");
                Ok(Vec::new())
            }
            Some((name, ast)) => {
                let (engine, ast, name) =
                    (self.scripts.engine().clone(), ast.clone(), name.clone());
                let (ev, lookups, limits) = (event.clone(), self.lookups.clone(), self.limits);
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    super::run_script(&engine, &ast, &name, &ev, lookups, &limits, handle)
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(event_id = %id, error = %e, "a route run panicked");
                    Err("internal error: the route run stopped (see the log)".into())
                })
            }
        };
        let script_name = script.map(|(n, _)| n);
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
                match self.store.route_done(&event, script_name.clone(), specs) {
                    Ok(_) => {
                        self.store.signal_outbox();
                        self.metrics.routes.get_or_create(&label("routed")).inc();
                        tracing::info!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = script_name.as_deref().unwrap_or("none"), actions = count, "event routed");
                    }
                    Err(e) => tracing::error!(event_id = %id, error = %e, "cannot record a route"),
                }
            }
            Err(error) => {
                self.metrics.routes.get_or_create(&label("failed")).inc();
                tracing::warn!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = script_name.as_deref().unwrap_or("none"), error = %error, "route failed; the event is parked for replay");
                if let Err(e) = self.store.route_failed(&event, script_name, error) {
                    tracing::error!(event_id = %id, error = %e, "cannot record a failed route");
                }
            }
        }
        self.metrics
            .route_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}
