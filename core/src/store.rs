//! The durable store: one sled tree with prefixed key spaces.
//!
//! | prefix | key                                  | value                          |
//! |--------|--------------------------------------|--------------------------------|
//! | `i`    | provider-scoped idempotency key      | [`IdemRecord`] (JSON)          |
//! | `e`    | event id (16 bytes, time-ordered)    | [`Event`] (JSON)               |
//! | `q`    | event id                             | empty: quarantine index        |
//! | `x`    | expiry ms (8 bytes BE) + event id    | idempotency key: expiry index  |
//!
//! **Ordered writes instead of batches.** sled 0.34's `apply_batch` costs about four plain
//! inserts of fixed overhead, so a commit is a sequence of single-key writes in an order
//! that is safe at every crash point: expiry entry, event, then the idempotency record
//! that makes the key done. sled's log is recovered as a contiguous prefix (everything up
//! to its highest contiguous stable LSN), and each write of the sequence completes before
//! the next starts, so a recovered done-record implies its event. A crash earlier in the
//! sequence leaves the claim pending: the next request with the key takes it over and
//! reuses the event id the claim reserved, so no event is ever stored twice.
//!
//! **Group commit.** A write is durable only once [`Store::durable`] has returned for its
//! sequence number: one flusher task runs `sled::Db::flush` for all writers that arrived
//! while the previous flush ran, so durability costs one fsync per batch of requests, not
//! per request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::{
    Error, Result,
    config::StoreConfig,
    event::{Event, EventId, EventStatus},
};

pub(crate) const IDEM: u8 = b'i';
pub(crate) const EVENT: u8 = b'e';
pub(crate) const QUARANTINE: u8 = b'q';
pub(crate) const EXPIRY: u8 = b'x';
/// Events waiting for their route.
pub(crate) const INBOX: u8 = b'n';
/// Outbox actions.
pub(crate) const ACTION: u8 = b'a';
/// Actions due: due ms (8 bytes BE) + action id.
pub(crate) const DUE: u8 = b's';
/// Actions being sent.
pub(crate) const SENDING: u8 = b'o';

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        StoredResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

/// The idempotency record of one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdemRecord {
    /// Hex SHA-256 of the body that claimed the key.
    pub fingerprint: String,
    /// Where the claim is.
    pub state: IdemState,
}

/// Where a claim is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdemState {
    /// A request of process run `boot` owns the key and is storing its event under
    /// `event_id`.
    Pending {
        /// The owning process run.
        boot: u64,
        /// The id reserved for the event, reused by whoever takes the claim over.
        event_id: EventId,
    },
    /// Finished: every later request with this key gets `response`.
    Done {
        /// The event stored under this key, if one was.
        event_id: Option<EventId>,
        /// The answer given.
        response: StoredResponse,
        /// When the key was finished (Unix ms); absent in records written before
        /// de-duplication windows existed, which then last the whole retention.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
}

/// What [`Store::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The caller now owns the key and must finish with [`Store::commit`] or
    /// [`Store::release`], storing its event under `event_id`.
    Owned {
        /// The id to store the event under.
        event_id: EventId,
        /// The claim was left pending by a run that crashed; its event may already be
        /// stored under `event_id`.
        taken_over: bool,
    },
    /// Another request of this process run owns the key.
    Pending,
    /// The key is finished.
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
}

impl EventFilter {
    fn matches(&self, e: &Event) -> bool {
        self.provider.as_deref().is_none_or(|p| p == e.provider)
            && self.event_type.as_deref().is_none_or(|t| t == e.event_type)
            && self.status.is_none_or(|s| s == e.status)
    }
}

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

#[derive(Clone, Copy, Debug, Default)]
struct FlushState {
    /// Every write with a sequence number at or below this is on disk.
    flushed: u64,
    /// A flush covering sequence numbers up to this failed.
    failed: u64,
}

struct Durability {
    /// Sequence number of the last write handed out.
    written: AtomicU64,
    /// Writes applied but not yet numbered (see [`Store::durable_visible`]).
    in_progress: AtomicU64,
    state: watch::Sender<FlushState>,
    kick: Notify,
    flushes: AtomicU64,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    pub(crate) tree: sled::Tree,
    durability: Arc<Durability>,
    /// Identifies this process run: a pending claim of another run is stale.
    boot: u64,
    /// Stops the flusher (and so releases the database) when the last clone is dropped.
    _flusher: Arc<AbortOnDrop>,
    /// Woken when events are waiting for their route.
    pub(crate) inbox: Arc<Notify>,
    /// Woken when actions are due.
    pub(crate) outbox: Arc<Notify>,
    /// Held by every read-modify-write of an action (`outbox.rs`).
    outbox_lock: Arc<std::sync::Mutex<()>>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn expiry_key(at_ms: u64, event_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + event_id.len());
    k.push(EXPIRY);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(event_id);
    k
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| Error::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    })
}

/// A record that cannot be decoded is left out of a listing (and logged), so that one bad
/// record does not hide every other; any other error ends the listing.
pub(crate) fn skip_unreadable(e: Error) -> Result<()> {
    match e {
        Error::Corrupt { key, source } => {
            tracing::error!(key = %key, error = %source, "an unreadable record is left out");
            Ok(())
        }
        other => Err(other),
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types always serialise.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the database under `cfg.path/db` and starts its flusher task.
    /// Must be called inside a Tokio runtime.
    pub fn open(cfg: &StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(&cfg.path).map_err(|e| {
            Error::config(
                "store.path",
                format!("cannot create {}: {e}", cfg.path.display()),
            )
        })?;
        let db = sled::Config::new()
            .path(cfg.path.join("db"))
            .cache_capacity(cfg.cache_capacity.0)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    Error::config(
                        "store.path",
                        format!(
                            "{} is in use by another running switchboard",
                            cfg.path.display()
                        ),
                    )
                }
                other => Error::Store(other),
            })?;
        let tree = db.open_tree("switchboard")?;
        let durability = Arc::new(Durability {
            written: AtomicU64::new(0),
            in_progress: AtomicU64::new(0),
            state: watch::Sender::new(FlushState::default()),
            kick: Notify::new(),
            flushes: AtomicU64::new(0),
        });
        let flusher = tokio::spawn(run_flusher(db.clone(), durability.clone()));
        Ok(Store {
            db,
            tree,
            durability,
            boot: rand::random(),
            _flusher: Arc::new(AbortOnDrop(flusher.abort_handle())),
            inbox: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
            outbox_lock: Arc::default(),
        })
    }

    /// Claims `idem_key` for a body with `fingerprint`, atomically (compare-and-swap).
    ///
    /// A pending claim left by an earlier process run (a crash between claim and commit)
    /// is taken over, with the event id it reserved.
    pub fn claim(&self, idem_key: &str, fingerprint: &str) -> Result<Claim> {
        self.claim_within(idem_key, fingerprint, None)
    }

    /// [`Store::claim`] with a de-duplication window: a key finished longer than `window`
    /// ago is free again (taken over by compare-and-swap, under a new event id), so a
    /// genuine resend after the provider's retry horizon is a new event. `None`: a
    /// finished key holds for the whole retention.
    pub fn claim_within(
        &self,
        idem_key: &str,
        fingerprint: &str,
        window: Option<Duration>,
    ) -> Result<Claim> {
        let k = key(IDEM, idem_key.as_bytes());
        let mut event_id = EventId::new();
        let mut expected: Option<sled::IVec> = None;
        loop {
            let mine = encode(&IdemRecord {
                fingerprint: fingerprint.to_owned(),
                state: IdemState::Pending {
                    boot: self.boot,
                    event_id,
                },
            });
            match self
                .tree
                .compare_and_swap(&k, expected.as_ref(), Some(mine.as_slice()))?
            {
                Ok(()) => {
                    return Ok(Claim::Owned {
                        event_id,
                        taken_over: expected.is_some(),
                    });
                }
                Err(cas) => {
                    let Some(current) = cas.current else {
                        expected = None;
                        continue;
                    };
                    let rec: IdemRecord = decode(&k, &current)?;
                    match rec.state {
                        IdemState::Pending { boot, .. } if boot == self.boot => {
                            return Ok(Claim::Pending);
                        }
                        IdemState::Pending {
                            event_id: reserved, ..
                        } => {
                            tracing::info!("taking over a claim left by an earlier run");
                            event_id = reserved;
                            expected = Some(current);
                        }
                        IdemState::Done {
                            at_ms: Some(at), ..
                        } if window.is_some_and(|w| {
                            now_ms().saturating_sub(at)
                                > u64::try_from(w.as_millis()).unwrap_or(u64::MAX)
                        }) =>
                        {
                            // Past the window: the key is free again. The old event keeps
                            // its expiry entry; the sweeper removes a key only while it
                            // still belongs to the expired event.
                            event_id = EventId::new();
                            expected = Some(current);
                        }
                        IdemState::Done {
                            event_id, response, ..
                        } => {
                            return Ok(Claim::Done {
                                fingerprint: rec.fingerprint,
                                event_id,
                                response,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Gives up a claim this process run owns (the request failed before its commit).
    pub fn release(&self, idem_key: &str) -> Result<()> {
        let k = key(IDEM, idem_key.as_bytes());
        if let Some(current) = self.tree.get(&k)? {
            let rec: IdemRecord = decode(&k, &current)?;
            if matches!(rec.state, IdemState::Pending { boot, .. } if boot == self.boot) {
                // Only remove it if nobody replaced it meanwhile.
                let _ = self
                    .tree
                    .compare_and_swap(&k, Some(current), None::<&[u8]>)?;
            }
        }
        Ok(())
    }

    /// Finishes a claim: stores `event` and marks the key done with `response`. With
    /// `write_event` false the event is already stored (a claim taken over after a crash)
    /// and only the key is marked done. Returns the sequence number for
    /// [`Store::durable`].
    pub fn commit(
        &self,
        idem_key: &str,
        fingerprint: &str,
        event: &Event,
        write_event: bool,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<u64> {
        let expires = now_ms().saturating_add(u64::try_from(retention.as_millis()).unwrap_or(0));
        let id = event.id.as_bytes();
        let done = encode(&IdemRecord {
            fingerprint: fingerprint.to_owned(),
            state: IdemState::Done {
                event_id: Some(event.id),
                response: response.clone(),
                at_ms: Some(now_ms()),
            },
        });
        self.write(|tree| {
            // The order matters: see the module documentation.
            tree.insert(expiry_key(expires, id), idem_key.as_bytes())?;
            if write_event {
                if event.status == EventStatus::Quarantined {
                    tree.insert(key(QUARANTINE, id), &[])?;
                }
                tree.insert(key(EVENT, id), encode(event))?;
                if event.status == EventStatus::Received {
                    tree.insert(key(INBOX, id), &[])?;
                }
            }
            tree.insert(key(IDEM, idem_key.as_bytes()), done)?;
            Ok(())
        })
    }

    /// The lock every read-modify-write of an action holds. Never held across an await.
    pub(crate) fn outbox_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.outbox_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `writes` and numbers them for [`Store::durable`].
    pub(crate) fn write(
        &self,
        writes: impl FnOnce(&sled::Tree) -> Result<(), sled::Error>,
    ) -> Result<u64> {
        let d = &self.durability;
        d.in_progress.fetch_add(1, SeqCst);
        let res = writes(&self.tree);
        let seq = d.written.fetch_add(1, SeqCst) + 1;
        d.in_progress.fetch_sub(1, SeqCst);
        res?;
        d.kick.notify_one();
        Ok(seq)
    }

    /// Waits until the write numbered `seq` is on disk.
    pub async fn durable(&self, seq: u64) -> Result<()> {
        let d = &self.durability;
        let mut rx = d.state.subscribe();
        if rx.borrow().flushed >= seq {
            return Ok(());
        }
        d.kick.notify_one();
        let state = *rx
            .wait_for(|s| s.flushed >= seq || s.failed >= seq)
            .await
            .map_err(|_| Error::Unavailable("the flusher stopped".into()))?;
        if state.flushed >= seq {
            Ok(())
        } else {
            Err(Error::Durability("see the log for the cause".into()))
        }
    }

    /// Waits until everything a reader can see now is on disk: used before replaying an
    /// answer that another request stored, which may not be flushed yet.
    pub async fn durable_visible(&self) -> Result<()> {
        let d = &self.durability;
        // A write that is visible has either been numbered already, or is still between
        // its apply and its numbering (in_progress > 0): then take a fresh number, which
        // is only flushed by a flush that starts after now.
        let seq = if d.in_progress.load(SeqCst) == 0 {
            d.written.load(SeqCst)
        } else {
            d.written.fetch_add(1, SeqCst) + 1
        };
        self.durable(seq).await
    }

    /// How many flushes have run (group commit makes this far smaller than the number of
    /// writes).
    pub fn flush_count(&self) -> u64 {
        self.durability.flushes.load(SeqCst)
    }

    /// Flushes everything now (shutdown).
    pub async fn flush(&self) -> Result<()> {
        let seq = self.durability.written.fetch_add(1, SeqCst) + 1;
        self.durable(seq).await
    }

    /// Reads one event.
    pub fn event(&self, id: EventId) -> Result<Option<Event>> {
        let k = key(EVENT, id.as_bytes());
        self.tree.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Events matching `filter`, newest first, strictly older than `before`.
    pub fn events(
        &self,
        filter: &EventFilter,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<Page> {
        let start = key(EVENT, &[]);
        let end = match before {
            Some(id) => key(EVENT, id.as_bytes()),
            None => key(EVENT + 1, &[]),
        };
        let quarantine_only = filter.status == Some(EventStatus::Quarantined);
        let mut items = Vec::new();
        let mut next = None;
        if quarantine_only {
            // Walk the quarantine index instead of every event.
            let qend = match before {
                Some(id) => key(QUARANTINE, id.as_bytes()),
                None => key(QUARANTINE + 1, &[]),
            };
            for entry in self.tree.range(key(QUARANTINE, &[])..qend).rev() {
                let (k, _) = entry?;
                let Some(id) = EventId::from_slice(&k[1..]) else {
                    continue;
                };
                let e = match self.event(id) {
                    Ok(Some(e)) => e,
                    Ok(None) => continue,
                    Err(e) => {
                        skip_unreadable(e)?;
                        continue;
                    }
                };
                if filter.matches(&e) {
                    if items.len() == limit {
                        next = items.last().map(|e: &Event| e.id);
                        break;
                    }
                    items.push(e);
                }
            }
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
            if filter.matches(&e) {
                if items.len() == limit {
                    next = items.last().map(|e| e.id);
                    break;
                }
                items.push(e);
            }
        }
        Ok(Page { items, next })
    }

    /// Number of stored events (a full scan; for tests and the CLI).
    pub fn event_count(&self) -> usize {
        self.tree.scan_prefix([EVENT]).count()
    }

    /// Removes every event whose expiry is at or before `now_ms`, with its idempotency
    /// record and its actions. An expired event that is not done (waiting for its route,
    /// failed, quarantined, or with an action not delivered) is kept, and its expiry
    /// pushed back by `retention`.
    pub fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept> {
        let mut swept = Swept::default();
        let end = expiry_key(now_ms.saturating_add(1), &[]);
        for entry in self.tree.range(key(EXPIRY, &[])..end) {
            let (xk, idem_key) = entry?;
            let Some(id) = xk.get(9..).and_then(EventId::from_slice) else {
                self.tree.remove(&xk)?;
                continue;
            };
            let event = self.event(id)?;
            let keep = match &event {
                Some(e) => !e.status.expires() || !self.all_sent(e)?,
                None => false,
            };
            match event {
                Some(_) if keep => {
                    let later =
                        now_ms.saturating_add(u64::try_from(retention.as_millis()).unwrap_or(0));
                    self.tree
                        .insert(expiry_key(later, id.as_bytes()), idem_key)?;
                    swept.kept += 1;
                }
                found => {
                    // The idempotency record goes only if it still belongs to this event (a
                    // retry after a crash may have finished the key with another event).
                    let ik = key(IDEM, &idem_key);
                    if let Some(v) = self.tree.get(&ik)? {
                        let rec: IdemRecord = decode(&ik, &v)?;
                        let owner = match rec.state {
                            IdemState::Done { event_id, .. } => event_id,
                            IdemState::Pending { event_id, .. } => Some(event_id),
                        };
                        if owner == Some(id) {
                            self.tree.remove(&ik)?;
                            swept.keys += 1;
                        }
                    }
                    if let Some(e) = &found {
                        self.remove_actions(e)?;
                        self.tree.remove(key(EVENT, id.as_bytes()))?;
                        swept.events += 1;
                    }
                    self.tree.remove(key(QUARANTINE, id.as_bytes()))?;
                    self.tree.remove(key(INBOX, id.as_bytes()))?;
                }
            }
            self.tree.remove(&xk)?;
        }
        Ok(swept)
    }

    /// Readiness: the database answers a read, and the last flush did not fail.
    pub fn check(&self) -> Result<()> {
        self.tree.get([0u8])?;
        let state = *self.durability.state.borrow();
        if state.failed > state.flushed {
            return Err(Error::Durability("the last flush to disk failed".into()));
        }
        Ok(())
    }

    /// Size of the database on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// How many times the flusher yields to the runtime before each flush (see
/// `run_flusher`). Measured with `switchboard-bench`: 0 → 18k, 8 → 22k durable
/// events/s; beyond 16 the delay starts to cost more than the batching saves.
const FLUSH_YIELDS: u32 = 8;

async fn run_flusher(db: sled::Db, d: Arc<Durability>) {
    loop {
        d.kick.notified().await;
        loop {
            // Let writers that are already runnable reach their write first, so that they
            // share this flush: an adaptive commit delay that costs nothing when idle.
            for _ in 0..FLUSH_YIELDS {
                tokio::task::yield_now().await;
            }
            let target = d.written.load(SeqCst);
            if target <= d.state.borrow().flushed {
                break;
            }
            let db2 = db.clone();
            let res = tokio::task::spawn_blocking(move || db2.flush()).await;
            d.flushes.fetch_add(1, SeqCst);
            match res {
                Ok(Ok(_)) => d.state.send_modify(|s| s.flushed = s.flushed.max(target)),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "flush to disk failed");
                    d.state.send_modify(|s| s.failed = s.failed.max(target));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush task failed");
                    d.state.send_modify(|s| s.failed = s.failed.max(target));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            path: dir.to_path_buf(),
            ..StoreConfig::default()
        }
    }

    fn event(status: EventStatus) -> Event {
        Event {
            id: EventId::new(),
            provider: "p".into(),
            endpoint: "/p".into(),
            event_type: "t".into(),
            received_at: chrono::Utc::now(),
            status,
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            body: b"{}".to_vec(),
            data: None,
            meta: BTreeMap::new(),
            flags: vec![],
            conflict_of: None,
            quarantine_reason: None,
            secret_paths: vec![],
            route: None,
        }
    }

    #[tokio::test]
    async fn claim_is_exclusive_and_done_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        assert!(matches!(
            store.claim("k", "f1").unwrap(),
            Claim::Owned { .. }
        ));
        assert!(matches!(store.claim("k", "f1").unwrap(), Claim::Pending));
        let e = event(EventStatus::Received);
        let resp = StoredResponse::empty(204);
        let seq = store
            .commit("k", "f1", &e, true, &resp, Duration::from_secs(60))
            .unwrap();
        store.durable(seq).await.unwrap();
        match store.claim("k", "f2").unwrap() {
            Claim::Done {
                fingerprint,
                event_id,
                response,
            } => {
                assert_eq!(fingerprint, "f1");
                assert_eq!(event_id, Some(e.id));
                assert_eq!(response, resp);
            }
            other => panic!("expected done, got {other:?}"),
        }
        assert_eq!(store.event(e.id).unwrap(), Some(e));
    }

    /// A finished key holds for its provider's de-duplication window, then is free again
    /// (a new event id); without a window it holds for the whole retention.
    #[tokio::test]
    async fn a_finished_key_is_free_again_past_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        let Claim::Owned { event_id, .. } = store.claim("k", "f").unwrap() else {
            panic!("fresh key");
        };
        let mut e = event(EventStatus::Received);
        e.id = event_id;
        let seq = store
            .commit(
                "k",
                "f",
                &e,
                true,
                &StoredResponse::empty(204),
                Duration::from_secs(60),
            )
            .unwrap();
        store.durable(seq).await.unwrap();
        let hour = Some(Duration::from_secs(3600));
        assert!(matches!(
            store.claim_within("k", "f", hour).unwrap(),
            Claim::Done { .. }
        ));
        assert!(matches!(
            store.claim_within("k", "f", None).unwrap(),
            Claim::Done { .. }
        ));
        std::thread::sleep(Duration::from_millis(5));
        match store
            .claim_within("k", "f", Some(Duration::from_millis(1)))
            .unwrap()
        {
            Claim::Owned {
                event_id: again,
                taken_over,
            } => {
                assert_ne!(again, e.id, "a new event, not the old one's id");
                assert!(taken_over);
            }
            other => panic!("expected the key free again, got {other:?}"),
        }
        // Now pending for this run: a concurrent repeat waits, as for any claim.
        assert!(matches!(
            store.claim_within("k", "f", None).unwrap(),
            Claim::Pending
        ));
        assert_eq!(
            store.event(e.id).unwrap(),
            Some(e),
            "the first event is kept"
        );
    }

    #[tokio::test]
    async fn released_claims_can_be_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        assert!(matches!(
            store.claim("k", "f").unwrap(),
            Claim::Owned { .. }
        ));
        store.release("k").unwrap();
        assert!(matches!(
            store.claim("k", "f").unwrap(),
            Claim::Owned { .. }
        ));
    }

    #[tokio::test]
    async fn pending_claims_of_an_earlier_run_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let reserved = {
            let store = Store::open(&cfg(dir.path())).unwrap();
            let Claim::Owned {
                event_id,
                taken_over: false,
            } = store.claim("k", "f").unwrap()
            else {
                panic!("a fresh key is owned")
            };
            store.flush().await.unwrap();
            event_id
        };
        tokio::task::yield_now().await;
        let store = Store::open(&cfg(dir.path())).unwrap();
        let Claim::Owned {
            event_id,
            taken_over,
        } = store.claim("k", "f").unwrap()
        else {
            panic!("a stale claim is taken over")
        };
        assert!(taken_over);
        assert_eq!(event_id, reserved, "the reserved event id is reused");
    }

    #[tokio::test]
    async fn sweep_removes_expired_but_keeps_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        let ok = event(EventStatus::Routed);
        let bad = event(EventStatus::Quarantined);
        let r = StoredResponse::empty(204);
        store.claim("a", "f").unwrap();
        store
            .commit("a", "f", &ok, true, &r, Duration::from_secs(1))
            .unwrap();
        store.claim("b", "f").unwrap();
        store
            .commit("b", "f", &bad, true, &r, Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            store.sweep(now_ms(), Duration::from_secs(60)).unwrap(),
            Swept::default()
        );
        let later = now_ms() + 2_000;
        let swept = store.sweep(later, Duration::from_secs(60)).unwrap();
        assert_eq!(
            swept,
            Swept {
                keys: 1,
                events: 1,
                kept: 1
            }
        );
        assert!(store.event(ok.id).unwrap().is_none());
        assert!(store.event(bad.id).unwrap().is_some());
        assert!(matches!(
            store.claim("a", "f").unwrap(),
            Claim::Owned { .. }
        ));
        assert!(store.event(bad.id).unwrap().is_some());
        // The kept event's expiry moved: a second sweep at the same time removes nothing.
        assert_eq!(
            store.sweep(later, Duration::from_secs(60)).unwrap(),
            Swept::default()
        );
    }

    #[tokio::test]
    async fn pages_are_newest_first_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        let r = StoredResponse::empty(204);
        let mut ids = vec![];
        for i in 0..5 {
            let mut e = event(if i % 2 == 0 {
                EventStatus::Received
            } else {
                EventStatus::Quarantined
            });
            e.event_type = format!("t{}", i % 2);
            ids.push(e.id);
            let k = format!("k{i}");
            store.claim(&k, "f").unwrap();
            store
                .commit(&k, "f", &e, true, &r, Duration::from_secs(60))
                .unwrap();
        }
        let all = store.events(&EventFilter::default(), None, 2).unwrap();
        assert_eq!(
            all.items.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![ids[4], ids[3]]
        );
        let rest = store.events(&EventFilter::default(), all.next, 10).unwrap();
        assert_eq!(rest.items.len(), 3);
        assert!(rest.next.is_none());
        let q = EventFilter {
            status: Some(EventStatus::Quarantined),
            ..Default::default()
        };
        let qp = store.events(&q, None, 10).unwrap();
        assert_eq!(
            qp.items.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![ids[3], ids[1]]
        );
        let t0 = EventFilter {
            event_type: Some("t0".into()),
            ..Default::default()
        };
        assert_eq!(store.events(&t0, None, 10).unwrap().items.len(), 3);
    }

    #[tokio::test]
    async fn schedule_entries_of_the_old_format_move_to_their_channel() {
        use crate::outbox::{ActionSpec, Due, due_key};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        let e = event(EventStatus::Received);
        store.claim("k", "f").unwrap();
        let r = StoredResponse::empty(204);
        store
            .commit("k", "f", &e, true, &r, Duration::from_secs(60))
            .unwrap();
        let spec = ActionSpec {
            channel: "email".into(),
            payload: serde_json::json!({"to": "a@example.com", "subject": "s", "text": "t"}),
        };
        let (_, actions) = store.route_done(&e, None, vec![spec]).unwrap();
        let a = &actions[0];
        let at = a.due_ms.unwrap();
        // As the schedule entry was written before queues were kept per channel.
        store.tree.remove(due_key("email", at, &a.id)).unwrap();
        let mut old = vec![DUE];
        old.extend(at.to_be_bytes());
        old.extend(a.id.0.as_bytes());
        store.tree.insert(old, &[]).unwrap();
        let later = at + 1;
        assert!(store.due("email", later, 8).unwrap().is_empty());
        store.resume_interrupted().unwrap();
        assert_eq!(
            store.due("email", later, 8).unwrap(),
            vec![Due {
                id: a.id,
                at_ms: at
            }]
        );
        assert!(store.tree.scan_prefix([DUE, 0]).next().is_none());
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        let r = StoredResponse::empty(204);
        let mut tasks = vec![];
        for i in 0..200 {
            let store = store.clone();
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let k = format!("k{i}");
                store.claim(&k, "f").unwrap();
                let e = event(EventStatus::Received);
                let seq = store
                    .commit(&k, "f", &e, true, &r, Duration::from_secs(60))
                    .unwrap();
                store.durable(seq).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.event_count(), 200);
        assert!(
            store.flush_count() < 200,
            "flushes: {}",
            store.flush_count()
        );
    }
}
