//! The storage seam: one interface ([`Backend`]), two implementations.
//!
//! - [`sled`](self::sled): the embedded default, one process over one directory, no
//!   configuration. Claims of an earlier process run are recognised by a boot id; leases
//!   are the process's own bookkeeping.
//! - PostgreSQL (the `switchboard-postgres` crate): several instances over one database,
//!   claims held by open transactions, work claimed with `FOR UPDATE SKIP LOCKED` and
//!   leases that another instance takes over when they run out, LISTEN/NOTIFY to wake the
//!   other instances.
//!
//! Everything above this module talks to a [`Store`]: a cheap clone of the backend plus
//! the in-process wake-ups of the route and delivery workers. The invariants of
//! `ARCHITECTURE.md` are written against [`Backend`] and tested against both:
//!
//! - a key is claimed by exactly one request at a time ([`Backend::claim`]); a concurrent
//!   duplicate waits for the owner, up to its deadline, and then gets the owner's answer
//!   byte for byte, only once that answer is durable;
//! - [`Backend::commit`] returns once the event and its answer are durable: no `2xx`
//!   before that;
//! - every stored event that is not routed, failed or quarantined is in the inbox (as
//!   [`Backend::take_inbox`] sees it: the embedded store keeps the events it hands to its
//!   own route workers there in memory, see [`Backend::commit`]);
//! - an event is routed by one worker at a time ([`Backend::take_inbox`] leases it), and a
//!   route's actions are written with the event's `routed` mark, atomically;
//! - an action is marked `sending`, durably, before it is sent
//!   ([`Backend::start_attempt`]), and a `sending` action whose owner went away is resumed
//!   under the same id ([`Backend::resume_interrupted`]).
//!
//! What lives elsewhere: the state changes themselves (what `routed`, `failed`, an attempt's
//! end mean for an event or an action) are plain functions in [`crate::outbox`], shared by
//! both backends, so that the two cannot drift apart in meaning.

pub mod sled;

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::{
    Result,
    event::{Event, EventId, EventStatus},
    metrics::Histogram,
    outbox::{Action, ActionFilter, ActionId, ActionSpec, Due, SendResult},
};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds of a duration, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An answer exactly as it was (or will be) given, so that every duplicate gets the same
/// bytes. Opaque to this crate: the HTTP face builds and replays it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    #[serde(with = "crate::event::base64_bytes")]
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// An answer without a body.
    pub fn empty(status: u16) -> Self {
        StoredResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &Value) -> Self {
        StoredResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

/// A request for a de-duplication key.
#[derive(Clone, Debug)]
pub struct ClaimRequest<'a> {
    /// The provider-scoped key.
    pub key: &'a str,
    /// Hex SHA-256 of the body.
    pub fingerprint: &'a str,
    /// How long to wait for a concurrent request that owns the key.
    pub wait: Duration,
}

/// The right to store an event under a key, until [`Backend::commit`] or until dropped
/// (which gives the key up, as if the request had never come).
pub struct OwnedClaim {
    /// The id to store the event under.
    event_id: EventId,
    /// Whether the key was free: no earlier run left anything under it (see
    /// [`OwnedClaim::taken_over`]).
    fresh: bool,
    /// The backend's own hold on the key (a pending record, an open transaction).
    hold: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for OwnedClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedClaim")
            .field("event_id", &self.event_id)
            .finish_non_exhaustive()
    }
}

impl OwnedClaim {
    /// A claim that reserved `event_id`, held by the backend's `hold`.
    pub fn new(event_id: EventId, hold: impl std::any::Any + Send) -> Self {
        OwnedClaim {
            event_id,
            fresh: true,
            hold: Box::new(hold),
        }
    }

    /// Marks a claim taken over from a run that crashed: what it left under the key may
    /// be stored already (and even routed), so the commit's event is not handed to the
    /// route workers from memory.
    pub fn taken_over(mut self) -> Self {
        self.fresh = false;
        self
    }

    /// Whether the key was free (not [`OwnedClaim::taken_over`]).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The id to store the event under.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    /// The backend's hold, at [`Backend::commit`] of `event`: refused when the claim is
    /// another backend's, or reserved another id than the event's.
    pub fn into_hold<T: 'static>(self, event: &Event) -> Result<Box<T>> {
        let hold = self
            .hold
            .downcast::<T>()
            .map_err(|_| crate::Error::Unavailable("a claim of another store".into()))?;
        if self.event_id != event.id {
            return Err(crate::Error::Unavailable(
                "an event stored under another id than its claim reserved".into(),
            ));
        }
        Ok(hold)
    }
}

/// What [`Backend::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The caller owns the key and must store its event with [`Backend::commit`].
    Owned(OwnedClaim),
    /// The key is finished, and what it answered is durable.
    Done {
        /// The fingerprint of the body that claimed it.
        fingerprint: String,
        /// The event stored under it.
        event_id: Option<EventId>,
        /// The answer to replay.
        response: StoredResponse,
    },
}

/// Events matching all the given criteria.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only this status.
    pub status: Option<EventStatus>,
    /// Only events received at or after this millisecond (ms since the epoch). Ids are
    /// UUIDv7, so this bounds a listing's scan, not only its result.
    pub since_ms: Option<u64>,
}

impl EventFilter {
    /// Whether `e` matches.
    pub fn matches(&self, e: &Event) -> bool {
        self.provider.as_deref().is_none_or(|p| p == e.provider)
            && self.event_type.as_deref().is_none_or(|t| t == e.event_type)
            && self.status.is_none_or(|s| s == e.status)
            && self.since().is_none_or(|s| e.id >= s)
    }

    /// The smallest id `since_ms` admits.
    pub fn since(&self) -> Option<EventId> {
        self.since_ms.map(|ms| EventId(first_id_at(ms)))
    }
}

/// The smallest UUIDv7 of the millisecond `ms`: every id made at or after `ms` sorts at
/// or after it, every id made before sorts before it.
pub fn first_id_at(ms: u64) -> uuid::Uuid {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    uuid::Uuid::from_bytes(b)
}

/// When (ms since the epoch) a time-ordered id was made: the inverse of [`first_id_at`].
pub fn id_ms(id: &uuid::Uuid) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&id.as_bytes()[..6]);
    u64::from_be_bytes(b)
}

/// How many records fell in each window: `counts[i]` for `windows[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// One count per window, in the order the windows were given.
    pub counts: Vec<u64>,
}

/// Counts per key (provider and status, or channel and status) over windows.
pub type CountsBy<K> = std::collections::HashMap<K, Counts>;

/// One page of events, newest first.
#[derive(Debug)]
pub struct Page {
    /// The events.
    pub items: Vec<Event>,
    /// Pass this as `before` to get the next page; `None` on the last page.
    pub next: Option<EventId>,
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Idempotency records removed.
    pub keys: usize,
    /// Events removed.
    pub events: usize,
    /// Expired events kept because they wait for an operator.
    pub kept: usize,
}

/// What the start-up consistency check found and mended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Events waiting for their route that were missing from the inbox, put back.
    pub inbox_added: usize,
    /// Inbox entries of events that are gone or no longer wait, removed.
    pub inbox_removed: usize,
}

/// Figures about the backend, for benchmarks and the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    /// Flushes to disk so far (group commit makes this far smaller than writes).
    pub flushes: Option<u64>,
    /// Bytes on disk.
    pub size_on_disk: Option<u64>,
    /// Atomic batches written, and the commits and route runs they held (a backend that
    /// combines the writes of concurrent requests: the second divided by the first is
    /// the combined batch's size).
    pub batches: Option<(u64, u64)>,
}

/// The durable state of switchboard: idempotency records, events, the inbox, the outbox.
///
/// Every method is safe to call from several tasks, and (for backends that support it)
/// from several processes at once.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `sled` or `postgres`, for logs.
    fn name(&self) -> &'static str;

    // --- Acceptance -------------------------------------------------------------------

    /// Claims a key for a body. A concurrent request that owns the key is waited for, up
    /// to `req.wait` (then [`crate::Error::InFlight`]). A finished key is returned as
    /// [`Claim::Done`] only once its answer is durable.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim>;

    /// Whether this process alone routes the inbox (an embedded store), so that an event
    /// it has just committed can go to its route workers from memory, without a read
    /// of the inbox and of the event; its inbox entry still covers a restart. A store
    /// shared by several instances hands out inbox entries as leases instead.
    fn routes_in_memory(&self) -> bool {
        false
    }

    /// Stores `event` (its id is the claim's) and finishes the key with `response`.
    /// Returns once both are durable. A quarantined event is kept out of the inbox; any
    /// other goes into it.
    ///
    /// `handed`: the event goes to this process's route workers from memory (only when
    /// [`Backend::routes_in_memory`]), where a run that does not finish is seen. A backend
    /// may then keep its inbox entry in memory instead of writing it, as long as
    /// [`Backend::take_inbox`] lists it until its route is recorded, a graceful stop
    /// writes it, and the start-up check after a crash puts it back (its event waits).
    async fn commit(
        &self,
        claim: OwnedClaim,
        event: &Event,
        response: &StoredResponse,
        dedup_window: Option<Duration>,
        handed: bool,
    ) -> Result<()>;

    // --- Events -----------------------------------------------------------------------

    /// One event.
    async fn event(&self, id: EventId) -> Result<Option<Event>>;

    /// Events matching `filter`, newest first, strictly older than `before`.
    async fn events(
        &self,
        filter: &EventFilter,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<Page>;

    /// Number of stored events.
    async fn event_count(&self) -> Result<usize>;

    /// Events received since each of `windows` (ms since the epoch), counted per
    /// provider and current status.
    async fn event_counts(&self, windows: &[u64]) -> Result<CountsBy<(String, EventStatus)>>;

    /// Actions queued since each of `windows` (ms since the epoch), counted per channel
    /// and current status.
    async fn action_counts(
        &self,
        windows: &[u64],
    ) -> Result<CountsBy<(String, crate::outbox::DeliveryStatus)>>;

    // --- Routing ----------------------------------------------------------------------

    /// Up to `limit` events waiting for their route, oldest first, after `after` (a
    /// cursor, which backends that lease may ignore), each leased to this process: no
    /// other process routes them while it holds them (it renews the lease as it works).
    async fn take_inbox(&self, after: Option<EventId>, limit: usize) -> Result<Vec<EventId>>;

    /// Keeps an event leased for `wait` more (its route runs again after a lookup retry).
    async fn defer(&self, id: EventId, wait: Duration) -> Result<()>;

    /// How many runs of the event's route started since it entered the inbox and did not
    /// finish (0 when it does not wait). A poison event (one whose run kills its worker, or
    /// the whole server) is recognised by it.
    async fn route_starts(&self, id: EventId) -> Result<u32>;

    /// Sets that count, durably (it is counted before a run starts, so that a crash of the
    /// whole server still counts), if the event still waits. Recording the route (done or
    /// failed) forgets it; a replay starts it again at zero.
    async fn set_route_starts(&self, id: EventId, started: u32) -> Result<()>;

    /// Gives up the lease of an event this process took but did not route (a stop): it
    /// stays in the inbox, untouched, for whoever takes it next.
    async fn release(&self, id: EventId) -> Result<()>;

    /// Takes an event that is gone or no longer waits out of the inbox.
    async fn inbox_remove(&self, id: EventId) -> Result<()>;

    /// Records a successful route: the actions, their schedule and the event marked
    /// routed, atomically. `None` when the event no longer waits for its route (another
    /// process routed it after its lease ran out): then nothing is written.
    async fn route_done(
        &self,
        event: &Event,
        script: Option<String>,
        specs: Vec<ActionSpec>,
    ) -> Result<Option<Vec<Action>>>;

    /// Records a failed route: the event is parked `failed` with the error.
    async fn route_failed(
        &self,
        event: &Event,
        script: Option<String>,
        error: String,
    ) -> Result<()>;

    /// Puts an event back in the inbox (an operator's replay). A quarantined event must
    /// come with its parsed data.
    async fn replay_event(
        &self,
        id: EventId,
        reparsed: Option<(String, Value, Vec<String>)>,
    ) -> Result<Option<Event>>;

    // --- Delivery ---------------------------------------------------------------------

    /// Up to `limit` actions of `channel` due at `now_ms`, earliest first, each leased to
    /// this process (renewed while it holds them).
    async fn take_due(&self, channel: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>>;

    /// When the earliest scheduled action of `channel` is due.
    async fn next_due(&self, channel: &str) -> Result<Option<u64>>;

    /// Marks the action behind `due` `sending` with a new attempt, durably, and returns
    /// it. `None` when nothing is due behind the entry any more (replayed, delivered,
    /// expired meanwhile); a stale schedule entry is dropped on the way.
    async fn start_attempt(&self, channel: &str, due: Due) -> Result<Option<Action>>;

    /// Records how the running attempt ended; schedules the next one at `retry_at_ms`,
    /// or marks the action dead when there is none.
    async fn finish_attempt(
        &self,
        action: Action,
        result: &SendResult,
        retry_at_ms: Option<u64>,
    ) -> Result<Action>;

    /// Gives back an action this process took (a stop before its attempt started).
    async fn release_due(&self, id: ActionId) -> Result<()>;

    /// Settles an action whose message ran out of validity: `expired`, never sent.
    async fn expire_action(&self, id: ActionId) -> Result<Option<Action>>;

    /// Actions left `sending` by a process that stopped (this one before a restart, or
    /// another whose lease ran out): their attempt is marked interrupted and they are due
    /// again now. Returns how many.
    async fn resume_interrupted(&self) -> Result<usize>;

    /// Schedules an action again now (an operator's replay), whatever its status except
    /// `sending` and `expired`, which are returned unchanged.
    async fn replay_action(&self, id: ActionId) -> Result<Option<Action>>;

    /// One action.
    async fn action(&self, id: ActionId) -> Result<Option<Action>>;

    /// The actions of every route run of an event, oldest first.
    async fn actions_of(&self, event: &Event) -> Result<Vec<Action>>;

    /// Actions matching `filter`, newest first, strictly older than `before`.
    async fn actions(
        &self,
        filter: &ActionFilter,
        before: Option<ActionId>,
        limit: usize,
    ) -> Result<(Vec<Action>, Option<ActionId>)>;

    // --- Upkeep -----------------------------------------------------------------------

    /// Removes what expired at `now_ms` (one process at a time: a backend shared by
    /// several may skip a sweep another is running). Events that wait for a route or an
    /// operator, or have an action not settled, are kept and their expiry pushed back by
    /// `retention`.
    async fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept>;

    /// Checks and mends the inbox invariant: every stored event that is not routed,
    /// failed or quarantined is in the inbox, and nothing else is.
    async fn consistency_check(&self) -> Result<Repaired>;

    /// Readiness: the backend answers, and its last write to disk did not fail.
    async fn check(&self) -> Result<()>;

    /// Makes everything written so far durable (the end of a graceful stop).
    async fn flush(&self) -> Result<()>;

    /// Figures for benchmarks.
    fn stats(&self) -> StoreStats;

    /// Hands the backend the histogram its flushes to disk are timed into
    /// ([`Metrics::store_flush_seconds`](crate::metrics::Metrics::store_flush_seconds)):
    /// the embedded store times each group flush, PostgreSQL each ingest transaction's
    /// `COMMIT`. Called once, at start-up.
    fn time_flushes(&self, into: Histogram);
}

/// In-process wake-ups of the route and delivery workers. A backend shared by several
/// processes also wakes them when another process writes (LISTEN/NOTIFY).
#[derive(Default)]
pub struct Signals {
    /// Events are waiting for their route.
    pub inbox: Notify,
    /// Actions are due.
    pub outbox: Notify,
    /// The route workers' door for events just committed, while they run (see
    /// [`Store::commit`]).
    handoff: std::sync::RwLock<Option<Arc<dyn Handoff>>>,
}

/// Takes events just committed to the inbox straight to the route workers.
pub trait Handoff: Send + Sync {
    /// Marks `id` in flight before its commit makes it visible in the inbox, so that the
    /// inbox path never takes it as well. `false`: not taking it (it is in flight already).
    fn reserve(&self, id: EventId) -> bool;
    /// The committed event, reserved before. `true`: this process routes it, from memory
    /// or, when the route tasks are all busy, by its id once they have room (it stays in
    /// flight meanwhile). `false`: not taken (stopping, or too many wait already); its
    /// reservation is gone, and it is found in the inbox instead.
    fn take(&self, event: Event) -> bool;
    /// Gives a reservation up (the commit failed or was abandoned).
    fn cancel(&self, id: EventId);
    /// Whether a run that ends without an outcome is seen by the route workers (they run
    /// scripts in worker processes), so that the inbox entry of an event they take from
    /// memory need not be on disk while it is in flight (see [`Backend::commit`]). `false`
    /// when runs are counted on disk in the inbox entry (scripts in process).
    fn sees_every_run(&self) -> bool {
        false
    }
}

/// A [`Handoff::reserve`] that is given up unless its event is taken: whatever stopped
/// the commit, the event (if it was stored) is then found in the inbox.
struct Reserved<'a> {
    /// `None` once the event was offered.
    handoff: Option<Arc<dyn Handoff>>,
    id: EventId,
    store: &'a Store,
}

impl Reserved<'_> {
    /// See [`Handoff::sees_every_run`].
    fn sees_every_run(&self) -> bool {
        self.handoff.as_ref().is_some_and(|h| h.sees_every_run())
    }

    /// Offers the committed event (see [`Handoff::take`]).
    fn take(mut self, event: Event) -> bool {
        self.handoff.take().is_some_and(|h| h.take(event))
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handoff.take() {
            h.cancel(self.id);
            self.store.signal_inbox();
        }
    }
}

/// The store: a backend and the wake-ups of its workers. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    signals: Arc<Signals>,
}

impl Store {
    /// A store over `backend`, waking through `signals` (which the backend may also
    /// hold, to wake this process when another writes).
    pub fn new(backend: Arc<dyn Backend>, signals: Arc<Signals>) -> Store {
        Store { backend, signals }
    }

    /// The embedded store under `cfg.path/db`. Must be called inside a Tokio runtime.
    pub fn open_sled(cfg: &crate::config::StoreConfig) -> Result<Store> {
        let backend = sled::SledBackend::open(cfg)?;
        Ok(Store::new(Arc::new(backend), Arc::default()))
    }

    /// The backend underneath.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Wakes the route workers.
    pub fn signal_inbox(&self) {
        self.signals.inbox.notify_one();
    }

    /// Waits for new events in the inbox.
    pub async fn inbox_signalled(&self) {
        self.signals.inbox.notified().await;
    }

    /// Wakes the delivery workers.
    pub fn signal_outbox(&self) {
        self.signals.outbox.notify_one();
    }

    /// Waits for actions to become due.
    pub async fn outbox_signalled(&self) {
        self.signals.outbox.notified().await;
    }

    /// See [`Backend::claim`].
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        self.backend.claim(req).await
    }

    /// Installs (or, with `None`, removes) the route workers' [`Handoff`].
    pub fn set_handoff(&self, handoff: Option<Arc<dyn Handoff>>) {
        if let Ok(mut h) = self.signals.handoff.write() {
            *h = handoff;
        }
    }

    /// See [`Backend::commit`]. An event that waits for its route is handed to the route
    /// workers from memory when the backend allows it and the key was free; otherwise
    /// they are woken to read the inbox.
    pub async fn commit(
        &self,
        claim: OwnedClaim,
        event: Event,
        response: &StoredResponse,
        dedup_window: Option<Duration>,
    ) -> Result<()> {
        let waits = event.status == EventStatus::Received;
        let reserved = if waits && claim.is_fresh() && self.backend.routes_in_memory() {
            self.reserve(event.id)
        } else {
            None
        };
        let handed = reserved.as_ref().is_some_and(Reserved::sees_every_run);
        self.backend
            .commit(claim, &event, response, dedup_window, handed)
            .await?;
        // Not taken: `take` gave the reservation up, and the inbox has the event.
        if reserved.is_some_and(|r| r.take(event)) {
            return Ok(());
        }
        if waits {
            self.signal_inbox();
        }
        Ok(())
    }

    fn reserve(&self, id: EventId) -> Option<Reserved<'_>> {
        let handoff = self.signals.handoff.read().ok()?.clone()?;
        handoff.reserve(id).then(|| Reserved {
            handoff: Some(handoff),
            id,
            store: self,
        })
    }

    /// See [`Backend::event`].
    pub async fn event(&self, id: EventId) -> Result<Option<Event>> {
        self.backend.event(id).await
    }

    /// See [`Backend::events`].
    pub async fn events(
        &self,
        filter: &EventFilter,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<Page> {
        self.backend.events(filter, before, limit).await
    }

    /// See [`Backend::event_count`].
    pub async fn event_count(&self) -> Result<usize> {
        self.backend.event_count().await
    }

    /// See [`Backend::event_counts`].
    pub async fn event_counts(&self, windows: &[u64]) -> Result<CountsBy<(String, EventStatus)>> {
        self.backend.event_counts(windows).await
    }

    /// See [`Backend::action_counts`].
    pub async fn action_counts(
        &self,
        windows: &[u64],
    ) -> Result<CountsBy<(String, crate::outbox::DeliveryStatus)>> {
        self.backend.action_counts(windows).await
    }

    /// See [`Backend::take_inbox`].
    pub async fn take_inbox(&self, after: Option<EventId>, limit: usize) -> Result<Vec<EventId>> {
        self.backend.take_inbox(after, limit).await
    }

    /// See [`Backend::defer`].
    pub async fn defer(&self, id: EventId, wait: Duration) -> Result<()> {
        self.backend.defer(id, wait).await
    }

    /// See [`Backend::route_starts`].
    pub async fn route_starts(&self, id: EventId) -> Result<u32> {
        self.backend.route_starts(id).await
    }

    /// See [`Backend::set_route_starts`].
    pub async fn set_route_starts(&self, id: EventId, started: u32) -> Result<()> {
        self.backend.set_route_starts(id, started).await
    }

    /// See [`Backend::release`].
    pub async fn release(&self, id: EventId) -> Result<()> {
        self.backend.release(id).await
    }

    /// See [`Backend::inbox_remove`].
    pub async fn inbox_remove(&self, id: EventId) -> Result<()> {
        self.backend.inbox_remove(id).await
    }

    /// See [`Backend::route_done`]; wakes the delivery workers.
    pub async fn route_done(
        &self,
        event: &Event,
        script: Option<String>,
        specs: Vec<ActionSpec>,
    ) -> Result<Option<Vec<Action>>> {
        let done = self.backend.route_done(event, script, specs).await?;
        if done.as_ref().is_some_and(|a| !a.is_empty()) {
            self.signal_outbox();
        }
        Ok(done)
    }

    /// See [`Backend::route_failed`].
    pub async fn route_failed(
        &self,
        event: &Event,
        script: Option<String>,
        error: String,
    ) -> Result<()> {
        self.backend.route_failed(event, script, error).await
    }

    /// See [`Backend::replay_event`]; wakes the route workers.
    pub async fn replay_event(
        &self,
        id: EventId,
        reparsed: Option<(String, Value, Vec<String>)>,
    ) -> Result<Option<Event>> {
        let e = self.backend.replay_event(id, reparsed).await?;
        if e.is_some() {
            self.signal_inbox();
        }
        Ok(e)
    }

    /// See [`Backend::take_due`].
    pub async fn take_due(&self, channel: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>> {
        self.backend.take_due(channel, now_ms, limit).await
    }

    /// See [`Backend::next_due`].
    pub async fn next_due(&self, channel: &str) -> Result<Option<u64>> {
        self.backend.next_due(channel).await
    }

    /// See [`Backend::start_attempt`].
    pub async fn start_attempt(&self, channel: &str, due: Due) -> Result<Option<Action>> {
        self.backend.start_attempt(channel, due).await
    }

    /// See [`Backend::finish_attempt`].
    pub async fn finish_attempt(
        &self,
        action: Action,
        result: &SendResult,
        retry_at_ms: Option<u64>,
    ) -> Result<Action> {
        self.backend
            .finish_attempt(action, result, retry_at_ms)
            .await
    }

    /// See [`Backend::release_due`].
    pub async fn release_due(&self, id: ActionId) -> Result<()> {
        self.backend.release_due(id).await
    }

    /// See [`Backend::expire_action`].
    pub async fn expire_action(&self, id: ActionId) -> Result<Option<Action>> {
        self.backend.expire_action(id).await
    }

    /// See [`Backend::resume_interrupted`]; wakes the delivery workers.
    pub async fn resume_interrupted(&self) -> Result<usize> {
        let n = self.backend.resume_interrupted().await?;
        if n > 0 {
            self.signal_outbox();
        }
        Ok(n)
    }

    /// See [`Backend::replay_action`]; wakes the delivery workers.
    pub async fn replay_action(&self, id: ActionId) -> Result<Option<Action>> {
        let a = self.backend.replay_action(id).await?;
        if a.is_some() {
            self.signal_outbox();
        }
        Ok(a)
    }

    /// See [`Backend::action`].
    pub async fn action(&self, id: ActionId) -> Result<Option<Action>> {
        self.backend.action(id).await
    }

    /// See [`Backend::actions_of`].
    pub async fn actions_of(&self, event: &Event) -> Result<Vec<Action>> {
        self.backend.actions_of(event).await
    }

    /// See [`Backend::actions`].
    pub async fn actions(
        &self,
        filter: &ActionFilter,
        before: Option<ActionId>,
        limit: usize,
    ) -> Result<(Vec<Action>, Option<ActionId>)> {
        self.backend.actions(filter, before, limit).await
    }

    /// See [`Backend::sweep`].
    pub async fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept> {
        self.backend.sweep(now_ms, retention).await
    }

    /// See [`Backend::consistency_check`]; wakes the route workers when it mended
    /// something.
    pub async fn consistency_check(&self) -> Result<Repaired> {
        let r = self.backend.consistency_check().await?;
        if r.inbox_added > 0 {
            self.signal_inbox();
        }
        Ok(r)
    }

    /// See [`Backend::check`].
    pub async fn check(&self) -> Result<()> {
        self.backend.check().await
    }

    /// See [`Backend::flush`].
    pub async fn flush(&self) -> Result<()> {
        self.backend.flush().await
    }

    /// See [`Backend::stats`].
    pub fn stats(&self) -> StoreStats {
        self.backend.stats()
    }

    /// See [`Backend::time_flushes`].
    pub fn time_flushes(&self, into: Histogram) {
        self.backend.time_flushes(into);
    }
}
