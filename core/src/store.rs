//! The durable store: one sled tree with prefixed key spaces.
//!
//! | prefix | key                                  | value                    |
//! |--------|--------------------------------------|--------------------------|
//! | `i`    | provider-scoped idempotency key      | [`IdemRecord`] (JSON)    |
//! | `e`    | event id (16 bytes, time-ordered)    | [`Event`] (JSON)         |
//! | `q`    | event id                             | empty: quarantine index  |
//! | `x`    | expiry ms (8 bytes BE) + kind + key  | empty: expiry index      |
//!
//! Writes that belong together go in one atomic `apply_batch`. A write is durable only once
//! [`Store::durable`] has returned for its sequence number: one flusher task runs
//! `sled::Db::flush` for all writers that arrived while the previous flush ran (group
//! commit), so durability costs one fsync per batch of requests, not per request.

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

const IDEM: u8 = b'i';
const EVENT: u8 = b'e';
const QUARANTINE: u8 = b'q';
const EXPIRY: u8 = b'x';

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
    /// A request of process run `boot` owns the key and is storing its event.
    Pending {
        /// The owning process run.
        boot: u64,
    },
    /// Finished: every later request with this key gets `response`.
    Done {
        /// The event stored under this key, if one was.
        event_id: Option<EventId>,
        /// The answer given.
        response: StoredResponse,
    },
}

/// What [`Store::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The caller now owns the key and must finish with [`Store::commit`] or
    /// [`Store::release`].
    Owned,
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
    tree: sled::Tree,
    durability: Arc<Durability>,
    /// Identifies this process run: a pending claim of another run is stale.
    boot: u64,
    /// Stops the flusher (and so releases the database) when the last clone is dropped.
    _flusher: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn expiry_key(at_ms: u64, kind: u8, target: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + target.len());
    k.push(EXPIRY);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(target);
    k
}

fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| Error::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
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
        })
    }

    /// Claims `idem_key` for a body with `fingerprint`, atomically.
    ///
    /// A pending claim left by an earlier process run (a crash between claim and commit)
    /// is taken over.
    pub fn claim(&self, idem_key: &str, fingerprint: &str) -> Result<Claim> {
        let k = key(IDEM, idem_key.as_bytes());
        let mine = encode(&IdemRecord {
            fingerprint: fingerprint.to_owned(),
            state: IdemState::Pending { boot: self.boot },
        });
        let mut expected: Option<sled::IVec> = None;
        loop {
            match self
                .tree
                .compare_and_swap(&k, expected.as_ref(), Some(mine.as_slice()))?
            {
                Ok(()) => return Ok(Claim::Owned),
                Err(cas) => {
                    let Some(current) = cas.current else {
                        expected = None;
                        continue;
                    };
                    let rec: IdemRecord = decode(&k, &current)?;
                    match rec.state {
                        IdemState::Pending { boot } if boot == self.boot => {
                            return Ok(Claim::Pending);
                        }
                        IdemState::Pending { .. } => {
                            tracing::info!("taking over a claim left by an earlier run");
                            expected = Some(current);
                        }
                        IdemState::Done { event_id, response } => {
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
            if matches!(rec.state, IdemState::Pending { boot } if boot == self.boot) {
                // Only remove it if nobody replaced it meanwhile.
                let _ = self
                    .tree
                    .compare_and_swap(&k, Some(current), None::<&[u8]>)?;
            }
        }
        Ok(())
    }

    /// Finishes a claim: stores `event` (if any) and marks the key done with `response`,
    /// in one atomic write. Returns the write's sequence number for [`Store::durable`].
    pub fn commit(
        &self,
        idem_key: &str,
        fingerprint: &str,
        event: Option<&Event>,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<u64> {
        let expires = now_ms().saturating_add(u64::try_from(retention.as_millis()).unwrap_or(0));
        let mut batch = sled::Batch::default();
        let ik = key(IDEM, idem_key.as_bytes());
        batch.insert(
            ik.as_slice(),
            encode(&IdemRecord {
                fingerprint: fingerprint.to_owned(),
                state: IdemState::Done {
                    event_id: event.map(|e| e.id),
                    response: response.clone(),
                },
            }),
        );
        batch.insert(expiry_key(expires, IDEM, idem_key.as_bytes()), &[]);
        if let Some(e) = event {
            batch.insert(key(EVENT, e.id.as_bytes()), encode(e));
            batch.insert(expiry_key(expires, EVENT, e.id.as_bytes()), &[]);
            if e.status == EventStatus::Quarantined {
                batch.insert(key(QUARANTINE, e.id.as_bytes()), &[]);
            }
        }
        self.apply(batch)
    }

    fn apply(&self, batch: sled::Batch) -> Result<u64> {
        let d = &self.durability;
        d.in_progress.fetch_add(1, SeqCst);
        let res = self.tree.apply_batch(batch);
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
                let Some(e) = self.event(id)? else { continue };
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
            let e: Event = decode(&k, &v)?;
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

    /// Removes every record whose expiry is at or before `now_ms`. An expired event that
    /// waits for an operator is kept and its expiry pushed back by `retention`.
    pub fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept> {
        let mut swept = Swept::default();
        let end = expiry_key(now_ms.saturating_add(1), 0, &[]);
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for entry in self.tree.range(key(EXPIRY, &[])..end) {
            let (xk, _) = entry?;
            if xk.len() < 10 {
                batch.remove(xk);
                continue;
            }
            let kind = xk[9];
            let target = &xk[10..];
            match kind {
                IDEM => {
                    batch.remove(key(IDEM, target));
                    swept.keys += 1;
                }
                EVENT => {
                    let ek = key(EVENT, target);
                    if let Some(v) = self.tree.get(&ek)? {
                        let e: Event = decode(&ek, &v)?;
                        if e.status.expires() {
                            batch.remove(ek);
                            batch.remove(key(QUARANTINE, target));
                            swept.events += 1;
                        } else {
                            let later = now_ms
                                .saturating_add(u64::try_from(retention.as_millis()).unwrap_or(0));
                            batch.insert(expiry_key(later, EVENT, target), &[]);
                            swept.kept += 1;
                        }
                    }
                }
                _ => {}
            }
            batch.remove(xk);
            pending += 1;
            if pending >= 512 {
                self.apply(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        if pending > 0 {
            self.apply(batch)?;
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

async fn run_flusher(db: sled::Db, d: Arc<Durability>) {
    loop {
        d.kick.notified().await;
        loop {
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
        }
    }

    #[tokio::test]
    async fn claim_is_exclusive_and_done_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        assert!(matches!(store.claim("k", "f1").unwrap(), Claim::Owned));
        assert!(matches!(store.claim("k", "f1").unwrap(), Claim::Pending));
        let e = event(EventStatus::Received);
        let resp = StoredResponse::empty(204);
        let seq = store
            .commit("k", "f1", Some(&e), &resp, Duration::from_secs(60))
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

    #[tokio::test]
    async fn released_claims_can_be_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        assert!(matches!(store.claim("k", "f").unwrap(), Claim::Owned));
        store.release("k").unwrap();
        assert!(matches!(store.claim("k", "f").unwrap(), Claim::Owned));
    }

    #[tokio::test]
    async fn pending_claims_of_an_earlier_run_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&cfg(dir.path())).unwrap();
            assert!(matches!(store.claim("k", "f").unwrap(), Claim::Owned));
            store.flush().await.unwrap();
        }
        tokio::task::yield_now().await;
        let store = Store::open(&cfg(dir.path())).unwrap();
        assert!(matches!(store.claim("k", "f").unwrap(), Claim::Owned));
    }

    #[tokio::test]
    async fn sweep_removes_expired_but_keeps_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path())).unwrap();
        let ok = event(EventStatus::Received);
        let bad = event(EventStatus::Quarantined);
        let r = StoredResponse::empty(204);
        store.claim("a", "f").unwrap();
        store
            .commit("a", "f", Some(&ok), &r, Duration::from_secs(1))
            .unwrap();
        store.claim("b", "f").unwrap();
        store
            .commit("b", "f", Some(&bad), &r, Duration::from_secs(1))
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
                keys: 2,
                events: 1,
                kept: 1
            }
        );
        assert!(store.event(ok.id).unwrap().is_none());
        assert!(store.event(bad.id).unwrap().is_some());
        assert!(matches!(store.claim("a", "f").unwrap(), Claim::Owned));
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
                .commit(&k, "f", Some(&e), &r, Duration::from_secs(60))
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
                    .commit(&k, "f", Some(&e), &r, Duration::from_secs(60))
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
