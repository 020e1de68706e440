//! The route workers: they take events from the inbox, run their script, and record what
//! it decided: the actions and the routed event in one atomic write, or the event parked
//! as failed. One failing script never blocks the others. A run that failed because a
//! lookup timed out or its service was unavailable is run again after a short wait
//! (`routes.lookup_retries`) before the event is parked; the event stays in the inbox
//! meanwhile, so a restart picks it up too.
//!
//! **From memory.** On the embedded store (one process routes its inbox), an event this
//! process has just committed is handed to the route tasks as it is ([`Store::commit`]),
//! not read back from the inbox and the store. With worker processes (where a run that
//! ends without an outcome is seen), its inbox entry is kept in memory by the store until
//! it is routed (see the store's "inbox in memory"); in process, where each run is
//! counted on disk in the entry, it is written. When the tasks' queue is full, the event's
//! id waits in memory (in flight) and the dispatcher hands it over, read back, as the
//! queue drains; past [`MOST_OVERFLOW`] of those, the commit wakes the dispatcher, which
//! reads the inbox as before. A handed event is in flight from before its commit makes it
//! visible in the inbox (the dispatcher passes over what is in flight), so the two paths
//! never run it twice, even when the dispatcher reads the inbox while a commit waits for
//! its flush.
//!
//! **Crashes.** Runs go to worker processes ([`super::pool`]) unless `routes.isolation =
//! "in_process"`. A run whose worker dies (a stack overflow, a failed allocation, the
//! hard deadline) is seen by the server, and its event is parked `failed` at once: a
//! poison event costs one worker, never a loop. The server itself cannot be taken down by
//! a script there, so a stop of the whole server (a `kill -9`, a reboot) is never held
//! against the events whose runs it cut: they simply run again.
//!
//! In process, a script can take the whole server down with it, and nothing is left to
//! see the crash: so there each run is counted on disk before it starts
//! ([`Store::set_route_starts`], with the event's place in the inbox), the count goes
//! once its outcome is recorded, and an event whose runs did not finish
//! `routes.max_crashes` times is parked `failed` instead of being run at every start. An
//! event with a run that did not finish is a suspect: it runs alone (no other run at the
//! same time), so that the events that merely ran beside a poison one when it took the
//! server down are not counted again, and only the poison one reaches the limit. (A
//! server killed from outside twice while the same run is in flight parks that event too:
//! in process, a crash cannot be told from a kill.) There are more route tasks than run
//! slots (`routes.workers`): a task counts its run and waits for that write to be flushed
//! (many such writes share one flush) before it takes a slot, so the flush does not hold a
//! slot idle.
//!
//! Outcomes are recorded off the async threads: a run that queued a hundred actions never
//! holds up an async worker that another provider's answer waits for.
//!
//! **Frames.** Under load a route task takes several queued events at once (a fair share
//! of the queue per run slot, or as many as are expected to run within [`FRAME_TIME`] if
//! that is more) and hands their runs to one worker process in one frame
//! (at most [`FRAME_BUDGET`] bytes of events): one write and one wake-up of the worker
//! for all of them. Each outcome is recorded as soon as the worker gives it. When the
//! worker dies during a run of a frame, the runs after it never started and go back to
//! the inbox, and that run is run again alone before it is blamed (the other events of
//! its frame shared the worker's memory).
//!
//! Shutdown ([`Router::run`]'s `stop`): no new event is taken; the runs in flight (the
//! whole frame a worker was handed) may finish within the grace period; past it they are
//! ended and their events stay in the inbox, untouched (a run cancelled by shutdown is not
//! a script failure), for the next start.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use rhai::AST;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    Lookup, RUN_STACK, RunFailure, RunLimits, log_safe,
    pool::{Ended, Job, Pool},
    scripts::{Resolved, Scripts},
};
use crate::{
    config::{Isolation, RoutesConfig},
    event::{Event, EventId, EventStatus},
    metrics::Metrics,
    outbox::ActionSpec,
    store::Store,
};

/// Inbox entries read at a time.
const INBOX_PAGE: usize = 256;

/// Events committed while the route tasks' queue was full that wait in memory for the
/// dispatcher (their ids): past it, the dispatcher finds them by reading the inbox.
const MOST_OVERFLOW: usize = 65_536;

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
    /// Events committed while the route tasks' queue was full, oldest first: still in
    /// flight, handed to the tasks by the dispatcher as the queue drains (see
    /// [`Router::overflow`]).
    overflow: Mutex<VecDeque<EventId>>,
    /// Wakes the dispatcher for [`Router::overflow`] without a read of the inbox.
    overflowed: Notify,
    /// Runs of an event that failed on a transient lookup failure, so far.
    retried: Mutex<HashMap<EventId, usize>>,
    isolation: Isolation,
    /// The worker processes (used with `Isolation::Process`).
    pool: Pool,
    /// Unfinished runs after which an event is parked instead of run again.
    max_crashes: u32,
    /// Ends the runs in flight (shutdown, once the grace period is over).
    abort: CancellationToken,
    /// Held shared by every run, exclusively by a suspect's.
    alone: tokio::sync::RwLock<()>,
    /// Runs at once (`routes.workers`): worker processes or threads.
    slots: tokio::sync::Semaphore,
    /// How long a run in a worker takes, lately (see [`RunTime`]).
    run_time: RunTime,
}

/// A moving average of how long a run in a worker process takes, as the router sees it:
/// from the frame's hand-over, or the previous run's answer, to the run's answer (lookups
/// and the pipe included). It sizes frames (see [`Router::next_works`]).
struct RunTime(AtomicU64);

impl RunTime {
    /// Before any run is measured, runs are taken to be slow: frames spread over the
    /// workers.
    fn new() -> RunTime {
        RunTime(AtomicU64::new(nanos(FRAME_TIME)))
    }

    fn observe(&self, took: Duration) {
        // Each run moves the average an eighth of the way (racing updates may lose one).
        let old = self.0.load(SeqCst);
        let new = old - old / 8 + nanos(took) / 8;
        self.0.store(new, SeqCst);
    }

    /// How many runs are expected to fit in [`FRAME_TIME`].
    fn fitting(&self) -> usize {
        let each = self.0.load(SeqCst).max(1);
        usize::try_from(nanos(FRAME_TIME) / each).unwrap_or(usize::MAX)
    }
}

/// How many of `queued` events a route task takes: a fair share per worker, or as many as
/// `fitting` runs if that is more, at most [`MOST_AT_ONCE`].
fn share(queued: usize, workers: usize, fitting: usize) -> usize {
    let fair = queued.div_ceil(workers);
    fair.max(fitting.min(queued)).min(MOST_AT_ONCE)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A worker process idle this long is ended (but the last one used).
const IDLE_WORKER: Duration = Duration::from_secs(60);

/// Route tasks per run slot: the tasks that wait for their count's flush share it.
const TASKS_PER_SLOT: usize = 4;

/// Events a route task takes at once at most (runs handed to one worker in one frame).
const MOST_AT_ONCE: usize = 32;

/// The runs of one frame to a worker are expected to take this long at most, all
/// together: while runs are quick, the queue goes to one worker in one frame (one write,
/// one wake-up of one process) rather than a frame of a few runs to each worker; slow
/// runs (lookups) still spread over the workers. An event waits at most about this long
/// behind the other runs of its frame.
const FRAME_TIME: Duration = Duration::from_millis(1);

/// Bytes of events (bodies, counted twice: as received and as parsed) one frame to a
/// worker holds at most, but always one event: far below the frame limit, and little of
/// the worker's memory.
const FRAME_BUDGET: usize = 1 << 20;

/// The share of `event` in a frame to a worker, roughly.
fn frame_bytes(event: &Event) -> usize {
    2 * event.body.len() + 256
}

/// A run for a worker process: the event, its script's path and text, and when its
/// routing started.
type WorkerRun = (Event, String, Arc<str>, std::time::Instant);

/// The router's outcome of a worker's.
fn outcome_of(ended: Ended) -> Outcome {
    match ended {
        Ended::Finished(r) => Outcome::Finished(r),
        Ended::Crashed(m) => Outcome::Crashed(m),
        Ended::Cancelled => Outcome::Cancelled(0),
        Ended::Unavailable(m) => Outcome::Unavailable(0, m),
        Ended::NotRun => Outcome::NotRun,
    }
}

/// An event for a route task: from the inbox (read it), or handed over by the commit
/// that stored it (see [`Store::commit`]).
enum Work {
    Inbox(EventId),
    Committed(Box<Event>),
}

impl Work {
    fn id(&self) -> EventId {
        match self {
            Work::Inbox(id) => *id,
            Work::Committed(e) => e.id,
        }
    }
}

/// Events queued for the route tasks at most: what commits hand over while every task
/// is busy waits here (in memory; each is in the inbox too) instead of being read back.
const QUEUED: usize = 1024;

/// The door of commits to the route tasks ([`Store::commit`]): an event is in flight from
/// before its commit makes it visible in the inbox, so the dispatcher never takes it too;
/// once committed it goes to the tasks if there is room, otherwise the commit wakes the
/// dispatcher, which finds it in the inbox.
struct Door {
    router: std::sync::Weak<Router>,
    tx: mpsc::Sender<Work>,
}

impl crate::store::Handoff for Door {
    fn reserve(&self, id: EventId) -> bool {
        self.router.upgrade().is_some_and(|r| r.take_flight(id))
    }

    fn take(&self, event: Event) -> bool {
        let id = event.id;
        if self.tx.try_send(Work::Committed(Box::new(event))).is_ok() {
            return true;
        }
        // The queue is full: its id waits, in flight, for the dispatcher.
        if self.router.upgrade().is_some_and(|r| r.overflow(id)) {
            return true;
        }
        self.cancel(id);
        false
    }

    fn cancel(&self, id: EventId) {
        if let Some(r) = self.router.upgrade() {
            r.land(id);
        }
    }

    fn sees_every_run(&self) -> bool {
        self.router.upgrade().is_some_and(|r| !r.counts_runs())
    }
}

/// How a run ended, as the router records it.
enum Outcome {
    /// The script finished (or there was none, or it does not compile).
    Finished(Result<Vec<ActionSpec>, RunFailure>),
    /// Its worker died or was killed: parked `failed` with this message.
    Crashed(String),
    /// It did not finish this many times before: parked `failed`, not run.
    Poison(u32),
    /// Shutdown ended it: the event stays in the inbox as it is, its count back at this.
    Cancelled(u32),
    /// It could not run now (no worker, the store could not count it): tried again soon,
    /// its count back at this.
    Unavailable(u32, String),
    /// Its worker ended at an earlier run of the same frame: run again at once.
    NotRun,
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
        let pool = Pool::new(cfg, lookups.names());
        Arc::new(Router {
            store,
            scripts,
            lookups,
            limits: RunLimits::from_config(cfg),
            workers: cfg.workers.max(1),
            retry_waits: cfg.lookup_retries.iter().map(|d| d.get()).collect(),
            metrics,
            in_flight: Mutex::new(HashSet::new()),
            overflow: Mutex::new(VecDeque::new()),
            overflowed: Notify::new(),
            retried: Mutex::new(HashMap::new()),
            isolation: cfg.isolation,
            pool,
            max_crashes: cfg.max_crashes.max(1),
            abort: CancellationToken::new(),
            alone: tokio::sync::RwLock::new(()),
            slots: tokio::sync::Semaphore::new(cfg.workers.max(1)),
            run_time: RunTime::new(),
        })
    }

    /// The scripts.
    pub fn scripts(&self) -> &Arc<Scripts> {
        &self.scripts
    }

    /// The worker processes.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where scripts run.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The limits of a run.
    pub fn limits(&self) -> RunLimits {
        self.limits
    }

    /// Routes until `stop` is cancelled: a dispatcher that reads the inbox when signalled
    /// (and every second, as a safety net), the events commits hand over from memory,
    /// and `workers` workers. Then no run starts any more; the runs in flight get `grace`
    /// to finish, after which they are ended (their events stay in the inbox) and the
    /// idle workers are closed. Returns when nothing of the router runs any more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, grace: Duration) {
        let tasks = self.workers * TASKS_PER_SLOT;
        let (tx, rx) = mpsc::channel::<Work>(tasks.max(QUEUED));
        self.store.set_handoff(Some(Arc::new(Door {
            router: Arc::downgrade(&self),
            tx: tx.clone(),
        })));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (me, rx, stop) = (self.clone(), rx.clone(), stop.clone());
            workers.spawn(async move {
                loop {
                    let next = tokio::select! {
                        biased;
                        () = stop.cancelled() => None,
                        works = me.next_works(&rx) => works,
                    };
                    let Some(works) = next else { break };
                    for (id, wait) in me.route_all(works).await {
                        match wait {
                            // Still in flight (so not dispatched again) until the wait is over.
                            Some(wait) => {
                                if let Err(e) = me.store.defer(id, wait).await {
                                    tracing::error!(event_id = %id, error = %e, "cannot keep an event's lease for its retry");
                                }
                                let (me, stop) = (me.clone(), stop.clone());
                                tokio::spawn(async move {
                                    tokio::select! {
                                        () = tokio::time::sleep(wait) => {}
                                        () = stop.cancelled() => {}
                                    }
                                    me.release(id, true);
                                });
                            }
                            None => me.release(id, false),
                        }
                    }
                }
            });
        }
        self.dispatch(&tx, &stop).await;
        self.store.set_handoff(None);
        drop(tx);
        let drained = tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?grace, "route runs still in flight after the grace period are ended; their events stay in the inbox");
            self.abort.cancel();
            while workers.join_next().await.is_some() {}
        }
        self.pool.close().await;
    }

    /// Ends `id`'s time in flight without waking anyone.
    fn land(&self, id: EventId) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.remove(&id);
        }
    }

    /// Marks `id` in flight; `false` if it already was.
    fn take_flight(&self, id: EventId) -> bool {
        self.in_flight
            .lock()
            .map(|mut f| f.insert(id))
            .unwrap_or(false)
    }

    /// Queues `id`, committed while the route tasks' queue was full, for the dispatcher
    /// (it stays in flight). `false` when [`MOST_OVERFLOW`] wait already: the inbox has it.
    fn overflow(&self, id: EventId) -> bool {
        let Ok(mut o) = self.overflow.lock() else {
            return false;
        };
        if o.len() >= MOST_OVERFLOW {
            return false;
        }
        o.push_back(id);
        let waiting = o.len();
        drop(o);
        tracing::debug!(event_id = %id, waiting, "the route tasks' queue is full: the event waits in memory for the dispatcher");
        self.overflowed.notify_one();
        true
    }

    /// Hands inbox events to the workers until `stop`.
    async fn dispatch(&self, tx: &mpsc::Sender<Work>, stop: &CancellationToken) {
        let mut read_inbox = true;
        // The inbox is read at least once a second after the previous read ended, as a
        // safety net, however busy the overflow list keeps the dispatcher.
        let mut next_read = tokio::time::Instant::now();
        while !stop.is_cancelled() {
            // What commits queued while the tasks' queue was full, in order, until the
            // inbox's read is due.
            while tokio::time::Instant::now() < next_read {
                let Some(id) = self.overflow.lock().ok().and_then(|mut o| o.pop_front()) else {
                    break;
                };
                tokio::select! {
                    sent = tx.send(Work::Inbox(id)) => if sent.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
            if read_inbox || tokio::time::Instant::now() >= next_read {
                if !self.read_inbox(tx, stop).await {
                    return;
                }
                next_read = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            // The read was due before the list was empty: go on with the list.
            if self.overflow.lock().is_ok_and(|o| !o.is_empty()) {
                read_inbox = false;
                continue;
            }
            self.pool.retire_idle(IDLE_WORKER);
            read_inbox = tokio::select! {
                () = self.store.inbox_signalled() => true,
                () = self.overflowed.notified() => false,
                () = tokio::time::sleep_until(next_read) => true,
                () = stop.cancelled() => return,
            };
        }
    }

    /// Reads the whole inbox and hands what is not in flight to the workers. It is read a
    /// page at a time from a cursor, so that events still in flight (waiting out a lookup
    /// retry, say) never hide the ones behind them. `false` once the router stops.
    async fn read_inbox(&self, tx: &mpsc::Sender<Work>, stop: &CancellationToken) -> bool {
        let mut cursor: Option<EventId> = None;
        loop {
            let ids = match self.store.take_inbox(cursor, INBOX_PAGE).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox");
                    return true;
                }
            };
            let at_end = ids.len() < INBOX_PAGE;
            cursor = ids.last().copied();
            for id in ids {
                if !self.take_flight(id) {
                    continue;
                }
                tokio::select! {
                    sent = tx.send(Work::Inbox(id)) => if sent.is_err() { return false },
                    () = stop.cancelled() => return false,
                }
            }
            if at_end {
                return true;
            }
        }
    }

    /// Ends an event's time in flight. The dispatcher reads the inbox again if the event
    /// stays there (`again`: its run is to be tried again). An event that stays there for
    /// a reason no run foresaw (its outcome could not be written) is found by the
    /// dispatcher's read every second.
    fn release(&self, id: EventId, again: bool) {
        self.land(id);
        if again {
            self.store.signal_inbox();
        }
    }

    /// The next events for a route task: one, waiting for it, and as many more as are
    /// queued already, up to a fair share of the queue per run slot, or as many as are
    /// expected to run within [`FRAME_TIME`] if that is more (at most [`MOST_AT_ONCE`]):
    /// under load a worker gets many runs per frame, while a few slow events still spread
    /// over the workers. One at a time in process (a suspect runs alone).
    async fn next_works(&self, rx: &tokio::sync::Mutex<mpsc::Receiver<Work>>) -> Option<Vec<Work>> {
        let mut rx = rx.lock().await;
        let first = rx.recv().await?;
        let most = match self.isolation {
            Isolation::InProcess => 1,
            Isolation::Process => share(1 + rx.len(), self.workers, self.run_time.fitting()),
        };
        let mut works = Vec::with_capacity(most);
        works.push(first);
        while works.len() < most {
            match rx.try_recv() {
                Ok(w) => works.push(w),
                Err(_) => break,
            }
        }
        Some(works)
    }

    /// Routes these events: each that still waits for its route has its script run and
    /// its outcome recorded (the runs of worker processes handed to one worker in one
    /// frame, each recorded as soon as it ends). Returns, for each, a wait when its run
    /// should be tried again after it.
    async fn route_all(&self, works: Vec<Work>) -> Vec<(EventId, Option<Duration>)> {
        let mut done = Vec::with_capacity(works.len());
        let mut in_workers = Vec::new();
        for work in works {
            let id = work.id();
            let event = match self.waiting(work).await {
                Ok(event) => event,
                Err(wait) => {
                    done.push((id, wait));
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let script = self.scripts.resolve(&event.provider, &event.event_type);
            let (outcome, name) = match script {
                Resolved::Missing => {
                    tracing::warn!(provider = %event.provider, event_type = %event.event_type, "no route script for this event; nothing to do");
                    (Outcome::Finished(Ok(Vec::new())), None)
                }
                Resolved::Broken(e) => {
                    let message =
                        format!("the script does not compile and has no good version: {e}");
                    let failure = RunFailure {
                        message,
                        retryable: false,
                    };
                    (Outcome::Finished(Err(failure)), Some(e.file))
                }
                Resolved::Script(name, ast, _) if self.isolation == Isolation::InProcess => (
                    self.counted_run(&event, name.clone(), ast).await,
                    Some(name),
                ),
                Resolved::Script(name, _, source) => {
                    in_workers.push((event, name, source, started));
                    continue;
                }
            };
            done.push((
                id,
                self.finish(&event, name.as_deref(), outcome, started).await,
            ));
        }
        if !in_workers.is_empty() {
            done.extend(self.run_in_workers(&in_workers).await);
        }
        done
    }

    /// The event of `work` if it still waits for its route. Otherwise it leaves the inbox
    /// (`Err(None)`), or its read is tried again after a wait (`Err(Some(wait))`).
    async fn waiting(&self, work: Work) -> Result<Event, Option<Duration>> {
        let id = work.id();
        let read = match work {
            // Just committed to the inbox by this process: nothing else can have routed
            // it, since it has been in flight from the start.
            Work::Committed(event) => Ok(Some(*event)),
            Work::Inbox(id) => self.store.event(id).await,
        };
        match read {
            Ok(Some(e)) if e.status == EventStatus::Received => Ok(e),
            Ok(_) => {
                let _ = self.store.inbox_remove(id).await;
                if let Ok(mut r) = self.retried.lock() {
                    r.remove(&id);
                }
                Err(None)
            }
            Err(e @ crate::Error::Corrupt { .. }) => {
                // Trying again cannot help: take it out of the inbox (the record stays).
                tracing::error!(event_id = %id, error = %e, "an unreadable event cannot be routed; it leaves the inbox");
                let _ = self.store.inbox_remove(id).await;
                Err(None)
            }
            Err(e) => {
                tracing::error!(event_id = %id, error = %e, "cannot read an event to route; trying again in a second");
                Err(Some(Duration::from_secs(1)))
            }
        }
    }

    /// Runs these scripts in worker processes, in frames of at most [`FRAME_BUDGET`] bytes
    /// of events (one each, when a run slot is free), and records each outcome as soon as
    /// the worker has given it (while it goes on with the next run). A run whose worker
    /// died or was killed in a frame with other runs is run again alone before it is
    /// blamed: the frame's other events shared the worker's memory and its first run's
    /// time.
    async fn run_in_workers(&self, runs: &[WorkerRun]) -> Vec<(EventId, Option<Duration>)> {
        let mut done = Vec::with_capacity(runs.len());
        let mut from = 0;
        while from < runs.len() {
            let mut to = from + 1;
            let mut bytes = frame_bytes(&runs[from].0);
            while to < runs.len() && bytes + frame_bytes(&runs[to].0) <= FRAME_BUDGET {
                bytes += frame_bytes(&runs[to].0);
                to += 1;
            }
            let (recorded, suspect) = self.run_frame(&runs[from..to]).await;
            done.extend(recorded);
            if let Some(i) = suspect {
                let run = &runs[from + i];
                tracing::warn!(event_id = %run.0.id, script = %run.1, "a route worker died during this event's run in a frame with other runs; running it again alone");
                done.extend(self.run_frame(std::slice::from_ref(run)).await.0);
            }
            from = to;
        }
        done
    }

    /// A run slot, or `None` at the end of the grace period.
    async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::select! {
            s = self.slots.acquire() => s.ok(),
            () = self.abort.cancelled() => None,
        }
    }

    /// Runs these scripts in one worker process, in one frame, recording each outcome as
    /// it comes. Returns what was recorded, and the run (its index in `runs`) whose
    /// worker died or was killed during it, if there were other runs in the frame: that
    /// one is not recorded.
    async fn run_frame(
        &self,
        runs: &[WorkerRun],
    ) -> (Vec<(EventId, Option<Duration>)>, Option<usize>) {
        let jobs: Vec<Job<'_>> = runs
            .iter()
            .map(|(event, name, source, _)| Job {
                script: name,
                source,
                event,
                limits: self.limits,
                output: None,
                services: Vec::new(),
            })
            .collect();
        let alone = jobs.len() == 1;
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Outcome)>();
        let run = async move {
            let Some(_slot) = self.slot().await else {
                for i in 0..jobs.len() {
                    let _ = tx.send((i, Outcome::Cancelled(0)));
                }
                return;
            };
            let mut last = std::time::Instant::now();
            self.pool
                .run_all(&jobs, &self.lookups, &self.abort, |i, ended| {
                    if matches!(ended, Ended::Finished(_) | Ended::Crashed(_)) {
                        let now = std::time::Instant::now();
                        self.run_time.observe(now - last);
                        last = now;
                    }
                    let _ = tx.send((i, outcome_of(ended)));
                })
                .await;
        };
        let record = async {
            let mut done = Vec::with_capacity(runs.len());
            let mut suspect = None;
            while let Some((i, outcome)) = rx.recv().await {
                if !alone && matches!(outcome, Outcome::Crashed(_)) {
                    suspect = Some(i);
                    continue;
                }
                let (event, name, _, started) = &runs[i];
                let wait = self.finish(event, Some(name), outcome, *started).await;
                done.push((event.id, wait));
            }
            (done, suspect)
        };
        tokio::join!(run, record).1
    }

    /// Records how the run of `event` ended, counts and logs it. Returns a wait when the
    /// run should be tried again after it.
    async fn finish(
        &self,
        event: &Event,
        script_name: Option<&str>,
        outcome: Outcome,
        started: std::time::Instant,
    ) -> Option<Duration> {
        self.metrics
            .route_seconds
            .observe(started.elapsed().as_secs_f64());
        let id = event.id;
        let script_name = script_name.map(str::to_owned);
        let retries = self
            .retried
            .lock()
            .map(|mut r| {
                if matches!(&outcome, Outcome::Finished(Err(f)) if f.retryable) {
                    let n = r.entry(id).or_insert(0);
                    *n += 1;
                    *n
                } else {
                    r.remove(&id).unwrap_or(0)
                }
            })
            .unwrap_or(usize::MAX);
        let (provider, event_type) = (event.provider.clone(), event.event_type.clone());
        let count = |outcome: &str| {
            self.metrics
                .routes
                .get_or_create(&crate::metrics::RouteLabels {
                    provider: provider.clone(),
                    event_type: self.metrics.event_type_label(&provider, &event_type),
                    outcome: outcome.to_owned(),
                })
                .inc();
        };
        let script_label = script_name.as_deref().unwrap_or("none").to_owned();
        match outcome {
            Outcome::Finished(Ok(specs)) => {
                let n = specs.len();
                // No wait for the flush here: a delivery marks its attempt `sending` and waits
                // for that later write to be durable before it sends, which covers this one.
                match self.record(event, script_name, Ok(specs)).await {
                    Ok(()) => {
                        count("routed");
                        tracing::info!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = %script_label, actions = n, "event routed");
                    }
                    Err(e) => tracing::error!(event_id = %id, error = %e, "cannot record a route"),
                }
                None
            }
            Outcome::Finished(Err(failure))
                if failure.retryable && retries <= self.retry_waits.len() =>
            {
                let wait = self.retry_waits[retries - 1];
                count("retry");
                self.set_starts(event, 0).await;
                tracing::warn!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = %script_label, error = %log_safe(&failure.message), retry_in = ?wait, "route failed on a lookup; running it again soon");
                Some(wait)
            }
            Outcome::Finished(Err(failure)) => {
                count("failed");
                tracing::warn!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = %script_label, error = %log_safe(&failure.message), "route failed; the event is parked for replay");
                self.park(event, script_name, failure.message).await;
                None
            }
            Outcome::Crashed(message) => {
                count("crashed");
                tracing::error!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = %script_label, error = %log_safe(&message), "route run crashed; the event is parked for replay");
                self.park(event, script_name, message).await;
                None
            }
            Outcome::Poison(n) => {
                count("crashed");
                let message = format!(
                    "the route run did not finish {n} times (its worker or the whole server crashed or was killed during it), so it is not run again (routes.max_crashes); fix the script, then replay the event"
                );
                tracing::error!(event_id = %id, provider = %event.provider, event_type = %event.event_type, script = %script_label, "{message}");
                self.park(event, script_name, message).await;
                None
            }
            Outcome::Cancelled(prior) => {
                count("cancelled");
                self.set_starts(event, prior).await;
                tracing::info!(event_id = %id, script = %script_label, "route run ended by shutdown; the event stays in the inbox");
                None
            }
            Outcome::NotRun => {
                tracing::info!(event_id = %id, script = %script_label, "the worker ended at an earlier event of the same frame; running this one again");
                Some(Duration::ZERO)
            }
            Outcome::Unavailable(prior, why) => {
                self.set_starts(event, prior).await;
                tracing::error!(event_id = %id, error = %log_safe(&why), "cannot run a route now; trying again in 5s");
                Some(Duration::from_secs(5))
            }
        }
    }

    /// Runs the script in process: the run is counted on disk first, and runs alone if an
    /// earlier run of the event did not finish.
    async fn counted_run(&self, event: &Event, name: String, ast: Arc<AST>) -> Outcome {
        let prior = match self.store.route_starts(event.id).await {
            Ok(n) => n,
            Err(e) => {
                return Outcome::Unavailable(0, format!("cannot read the run count: {e}"));
            }
        };
        if prior >= self.max_crashes {
            return Outcome::Poison(prior);
        }
        let abort = &self.abort;
        let (_shared, _alone);
        if prior == 0 {
            _shared = tokio::select! {
                g = self.alone.read() => g,
                () = abort.cancelled() => return Outcome::Cancelled(prior),
            };
        } else {
            tracing::warn!(event_id = %event.id, unfinished = prior, "an earlier run of this event did not finish; running it alone");
            _alone = tokio::select! {
                g = self.alone.write() => g,
                () = abort.cancelled() => return Outcome::Cancelled(prior),
            };
        }
        if let Err(e) = self.store.set_route_starts(event.id, prior + 1).await {
            return Outcome::Unavailable(prior, format!("cannot count the run on disk: {e}"));
        }
        let Some(_slot) = self.slot().await else {
            return Outcome::Cancelled(prior);
        };
        match self.run_in_process(event, name, ast).await {
            Some(Outcome::Unavailable(_, m)) => Outcome::Unavailable(prior, m),
            Some(outcome) => outcome,
            None => Outcome::Cancelled(prior),
        }
    }

    /// Runs the script on a thread of its own (a large stack; not a runtime thread, so
    /// shutdown need not wait for it). `None` when shutdown ended it.
    async fn run_in_process(&self, event: &Event, name: String, ast: Arc<AST>) -> Option<Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let engine = self.scripts.engine().clone();
        let (ev, lookups, limits) = (event.clone(), self.lookups.clone(), self.limits);
        let handle = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("route-run".into())
            .stack_size(RUN_STACK)
            .spawn(move || {
                let r = super::run_script(&engine, &ast, &name, &ev, lookups, &limits, handle);
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            return Some(Outcome::Unavailable(
                0,
                format!("cannot start a thread for the run: {e}"),
            ));
        }
        tokio::select! {
            r = rx => Some(match r {
                Ok(r) => Outcome::Finished(r),
                Err(_) => Outcome::Crashed("the script crashed: its run panicked (see the log)".into()),
            }),
            () = self.abort.cancelled() => None,
        }
    }

    /// Records a finished run (routed with its actions, or failed); the store does the
    /// writing off the async threads. The event leaves the inbox, and its run count with
    /// it.
    async fn record(
        &self,
        event: &Event,
        script: Option<String>,
        outcome: Result<Vec<ActionSpec>, String>,
    ) -> crate::Result<()> {
        match outcome {
            Ok(specs) => {
                if self.store.route_done(event, script, specs).await?.is_none() {
                    tracing::warn!(event_id = %event.id, "the event was routed elsewhere meanwhile (its lease ran out); this run's actions are dropped");
                }
                Ok(())
            }
            Err(message) => self.store.route_failed(event, script, message).await,
        }
    }

    async fn park(&self, event: &Event, script: Option<String>, message: String) {
        if let Err(e) = self.record(event, script, Err(message)).await {
            tracing::error!(event_id = %event.id, error = %e, "cannot record a failed route");
        }
    }

    /// Whether runs are counted on disk before they start (in process only: see the
    /// module documentation).
    fn counts_runs(&self) -> bool {
        self.isolation == Isolation::InProcess
    }

    /// Sets the run count of an event that stays in the inbox: zero after a finished run,
    /// back to what it was when the run was handed back.
    async fn set_starts(&self, event: &Event, to: u32) {
        if !self.counts_runs() {
            return;
        }
        if let Err(e) = self.store.set_route_starts(event.id, to).await {
            tracing::error!(event_id = %event.id, error = %e, "cannot set a route's run count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_runs_go_to_one_worker_and_slow_ones_spread() {
        let t = RunTime::new();
        // Nothing measured yet: slow, a fair share of 16 events for each of 8 workers.
        assert_eq!(t.fitting(), 1);
        assert_eq!(share(16, 8, t.fitting()), 2);
        for _ in 0..64 {
            t.observe(Duration::from_micros(20));
        }
        // About 50 runs of 20 µs fit in a frame: the whole queue, up to the cap.
        assert!((40..=50).contains(&t.fitting()), "{}", t.fitting());
        assert_eq!(share(16, 8, t.fitting()), 16);
        assert_eq!(share(100, 8, t.fitting()), MOST_AT_ONCE);
        assert_eq!(share(1, 8, t.fitting()), 1);
        // One run that waits 50 ms for a lookup: frames spread again at once.
        t.observe(Duration::from_millis(50));
        assert_eq!(t.fitting(), 0);
        assert_eq!(share(16, 8, t.fitting()), 2);
        assert_eq!(share(3, 8, t.fitting()), 1);
    }
}
