//! The embedded backend: one sled tree with prefixed key spaces, one process.
//!
//! | prefix | key                                            | value                          |
//! |--------|------------------------------------------------|--------------------------------|
//! | `i`    | provider-scoped idempotency key                | [`IdemRecord`] (JSON)          |
//! | `e`    | event id (16 bytes, time-ordered)              | [`Event`] (JSON)               |
//! | `q`    | event id                                       | empty: quarantine index        |
//! | `x`    | expiry ms (8 bytes BE) + event id              | idempotency key: when a kept event is looked at again |
//! | `n`    | event id                                       | the inbox (but see "The inbox in memory"): unfinished runs (4 bytes BE) + idempotency key |
//! | `a`    | action id (16 bytes, time-ordered)             | [`Action`] (JSON)              |
//! | `s`    | channel + 0 + due ms (8 bytes BE) + action id  | empty: one schedule per channel|
//! | `o`    | action id                                      | empty: being sent              |
//! | `m`    | a name                                         | the store's own facts (`mclean`: the last stop was graceful; `mswept`: the id below which every event has been looked at by the sweep; `msettled`: the time below which the start-up check need not look, see "The inbox in memory") |
//!
//! **One atomic write per commit, combined across requests.** A claim is held in memory
//! (sled is one process: the directory is locked), so a claim costs a read, not a write.
//! The commit is one sled batch: inbox entry (unless it is kept in memory, below), event
//! and the idempotency record that makes the key done. sled recovers a batch whole or not
//! at all, so a crash leaves either every write of a commit or none: a stored event always
//! has its done record, and a key is never done without its event. sled 0.34's
//! `apply_batch` has a fixed cost (it takes sled's global write lock and seals the log's
//! I/O buffer twice, each seal a fresh 512 KiB buffer and a write with `sync_file_range`
//! on sled's thread pool), so batches are **combined**: a commit waits for a flush anyway,
//! so it hands its batch to the flusher, which applies every batch queued since its last
//! flush as one, then flushes; a route run that queues actions joins the batches of
//! concurrent route runs (flat combining, see [`Combiner`]); a route run that queues
//! nothing, or fails, needs no batch: the event's new status, then its removal from the
//! inbox (if it has an entry on disk), as plain writes. A claim is released only once its
//! batch is applied, so a duplicate never finds the key free in between.
//!
//! **The inbox in memory.** An event handed to this process's route workers at its commit
//! (they run scripts in worker processes, so a run that ends without an outcome is seen,
//! and none is counted on disk) gets no `n` entry: its entry is kept in
//! [`Inner::unlisted`] until its route is recorded, and [`Backend::take_inbox`] lists it
//! with the entries on disk, so a run handed back (a lookup retry, a stop, a full queue)
//! is found as before. That saves two of the five writes of an event: the entry and its
//! removal. At most [`MOST_UNLISTED`] entries are kept so (a routing backlog beyond that
//! is written as before). What covers a restart instead: a graceful stop writes the
//! entries still in memory (those of commits still under way too) before it marks the
//! stop clean, and after a crash the start-up check puts back an entry for each event
//! that still waits. A stop is marked clean only once that
//! check has finished, so a stop soon after a crash leaves it to the next start. The check
//! reads only the events received since `msettled`: about once a second, while events
//! come, a task takes the time of the oldest event that may still rely on an entry in
//! memory (the oldest entry in memory, the oldest claim not yet committed) or, if there is
//! none, of a few seconds ago; it waits for a flush of everything written so far (so every
//! route recorded before that time is on disk), then writes that time. Every event before
//! it is routed or has its entry on disk, so after a crash the check reads the last
//! seconds of events, not the whole store (before, it read every event, and sled kept what
//! it read: 150-190 MB after a crash on a store of 100-200k events). Three details keep
//! that true: a graceful stop takes its entries out of memory only once they are written
//! (it may be killed before it ends); the oldest claim and entry are read under one lock
//! (a commit moves an id from one to the other); and a start lowers a settled time ahead
//! of the clock. A routed
//! status that was not flushed before a crash leaves the event waiting, so it is routed
//! again, as when the entry's removal was lost.
//!
//! Stores written by earlier versions hold claims as `pending` idempotency records (a
//! commit was then a sequence of single writes): such a record is a claim of a run that
//! crashed, and the next request with its key takes it over and reuses the event id it
//! reserved, so no event is stored twice; an inbox entry whose event was never written
//! is kept while such a record names its key (see [`SledBackend::inbox_remove`]).
//!
//! **Group commit.** A write is durable only once `durable` has returned for its sequence
//! number: one flusher task runs `sled::Db::flush` and then `fdatasync`
//! (`sled::Db::sync_data`, a patch of ours: sled's flush ends with `sync_file_range`,
//! which leaves the drive's cache and a grown file's size unsynced) for all writers that
//! arrived while the previous flush ran, so durability costs one sync per batch of
//! requests, not per request.
//!
//! **Expiry from the ids.** Event ids are time-ordered, so the events themselves are the
//! expiry index: the sweep looks at the events received before `now - store.retention`,
//! from where its last pass ended (`mswept`). An event that must stay (it waits for its
//! route or an operator, or has an action not settled) gets an `x` entry, which brings it
//! back to the sweep `retention` later. (Earlier versions wrote an `x` entry with every
//! commit, one more key per event; those are swept as they come due.)
//!
//! **Leases** are this process's own: the route and delivery workers keep the set of what
//! they work on, and nothing else opens the directory (sled locks it).

mod outbox;
mod stats;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::{
    Backend, Claim, ClaimRequest, CountsBy, EventFilter, OwnedClaim, Page, Repaired, StoreStats,
    StoredResponse, Swept, first_id_at, id_ms, millis, now_ms,
};
use crate::{
    Error, Result,
    config::StoreConfig,
    event::{Event, EventId, EventStatus},
    metrics::Histogram,
    outbox::{Action, ActionFilter, ActionId, ActionSpec, Due, SendResult},
};

pub(crate) const IDEM: u8 = b'i';
pub(crate) const EVENT: u8 = b'e';
pub(crate) const QUARANTINE: u8 = b'q';
pub(crate) const EXPIRY: u8 = b'x';
/// Events waiting for their route.
pub(crate) const INBOX: u8 = b'n';
/// Outbox actions.
pub(crate) const ACTION: u8 = b'a';
/// Actions due: channel + 0 + due ms (8 bytes BE) + action id.
pub(crate) const DUE: u8 = b's';
/// Actions being sent.
pub(crate) const SENDING: u8 = b'o';
/// Present (under the `m` prefix, the store's own facts) when the last process run ended with a graceful stop.
const CLEAN: &[u8] = b"mclean";
/// The first event id the sweep has not looked at yet (16 bytes).
const SWEPT: &[u8] = b"mswept";
/// A time (ms since the epoch, 8 bytes big-endian) before which every event is routed or
/// has its inbox entry on disk: where the start-up check after a crash starts to read.
const SETTLED: &[u8] = b"msettled";
/// How often the settled time is brought forward while events come.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
/// How far behind the clock the settled time stays when nothing is in memory: the time
/// between an id being made and its claim being listed is covered exactly (see
/// [`Claims::fresh_id`]); this covers the wall clock stepping back.
const SETTLE_MARGIN_MS: u64 = 5_000;

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
    /// Written by earlier versions only (claims are now held in memory): a request of
    /// process run `boot` owned the key and was storing its event under `event_id`. Found
    /// now, it is the claim of a run that crashed, taken over by the next request.
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
        /// Until when (ms since the epoch) a request with this key is a duplicate; past
        /// it, the key is free again (the provider's de-duplication window). `None`: for
        /// as long as the record is kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<u64>,
    },
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

/// An inbox entry's value: how many runs of the event's route started and did not finish
/// (4 bytes, big-endian), then the key the event was claimed under.
pub(crate) fn inbox_value(starts: u32, idem_key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + idem_key.len());
    v.extend_from_slice(&starts.to_be_bytes());
    v.extend_from_slice(idem_key);
    v
}

/// The parts of an inbox entry's value; an entry of a store older than both is empty.
pub(crate) fn parse_inbox(v: &[u8]) -> (u32, &[u8]) {
    match v.split_first_chunk::<4>() {
        Some((n, key)) => (u32::from_be_bytes(*n), key),
        None => (0, &[]),
    }
}

/// The status of a stored event, read without decoding the whole record: serde writes
/// `status` before the body and the data, so its first occurrence is the event's own.
fn status_of(v: &[u8]) -> Option<EventStatus> {
    const FIELD: &[u8] = b"\"status\":\"";
    let at = v.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let len = v[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&v[at..at + len]).ok()?.parse().ok()
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
    /// Writes applied but not yet numbered (see [`Inner::durable_visible`]).
    in_progress: AtomicU64,
    state: watch::Sender<FlushState>,
    kick: Notify,
    flushes: AtomicU64,
    /// The batches of commits waiting for the next flush, which applies them as one
    /// batch first (see `run_flusher`).
    commits: std::sync::Mutex<Vec<Job>>,
    /// Combined batches applied, and the jobs they held.
    batches: AtomicU64,
    batched_jobs: AtomicU64,
    /// Where each flush's time goes (see [`Backend::time_flushes`]).
    flush_time: std::sync::OnceLock<Histogram>,
    /// The next combined batch is not applied and fails, as if sled had refused it.
    #[cfg(test)]
    fail_next_batch: AtomicBool,
}

impl Durability {
    /// Runs `writes` and numbers them for [`Inner::durable`].
    fn write(
        &self,
        tree: &sled::Tree,
        writes: impl FnOnce(&sled::Tree) -> Result<(), sled::Error>,
    ) -> Result<u64> {
        self.in_progress.fetch_add(1, SeqCst);
        let res = writes(tree);
        let seq = self.written.fetch_add(1, SeqCst) + 1;
        self.in_progress.fetch_sub(1, SeqCst);
        res?;
        self.kick.notify_one();
        Ok(seq)
    }

    /// Applies the batches of `jobs` as one atomic batch and tells each job how it went.
    fn apply_jobs(&self, tree: &sled::Tree, jobs: Vec<Job>) {
        let mut batch = sled::Batch::default();
        for j in &jobs {
            for (k, v) in &j.writes {
                match v {
                    Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                    None => batch.remove(k.as_slice()),
                }
            }
        }
        let res = self.write(tree, |tree| {
            #[cfg(test)]
            if self.fail_next_batch.swap(false, SeqCst) {
                return Err(sled::Error::Unsupported("refused by a test".into()));
            }
            tree.apply_batch(batch)
        });
        self.batches.fetch_add(1, SeqCst);
        self.batched_jobs.fetch_add(jobs.len() as u64, SeqCst);
        if res.is_ok() {
            for j in &jobs {
                fault::after(j.step);
                if j.step == "commit" {
                    // The crash points of the earlier ordered commit: one commit's batch is
                    // atomic, so each is now "this commit applied, not yet flushed".
                    for step in ["expiry", "inbox", "event", "done"] {
                        fault::after(step);
                    }
                }
            }
        }
        let res = res.map_err(|e| e.to_string());
        for j in jobs {
            if let (Err(_), Some(f)) = (&res, j.on_failure) {
                f();
            }
            drop(j.keep);
            let _ = j.done.send(res.clone());
        }
    }
}

/// Writes sled snapshots while the store runs (a patch of ours, see
/// `vendor/sled/PATCHED.md`). A start reads the newest snapshot and replays the log
/// written after it, and sled 0.34 writes one only when it opens: a start would replay
/// everything written since the previous start, which grows with how long that ran (430
/// ms for the 1.3 GB of 360k events). A thread looks at the log's growth four times a second and
/// writes a snapshot once `store.checkpoint_after` more of it is stable, so a start
/// replays at most about that much. Stopped (and joined) when the backend is dropped.
struct Checkpoints {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpoint thread looks at how much log was written.
const CHECKPOINT_LOOK: Duration = Duration::from_millis(250);

impl Checkpoints {
    fn start(db: sled::Db, after: u64) -> Checkpoints {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                // sled wrote a snapshot of everything there was when it opened.
                let mut last = db.stable_lsn();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_LOOK)
                {
                    let stable = db.stable_lsn();
                    if stable - last < after {
                        continue;
                    }
                    let began = std::time::Instant::now();
                    // A panic in sled's code must not end the snapshots for good.
                    let taken =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.checkpoint()));
                    match taken.unwrap_or_else(|_| {
                        Err(sled::Error::ReportableBug(
                            "a store snapshot panicked".into(),
                        ))
                    }) {
                        Ok(written) => tracing::debug!(
                            written,
                            log_read = stable - last,
                            ms = began.elapsed().as_millis() as u64,
                            "store snapshot"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "store snapshot failed: the next start replays more of the log"
                        ),
                    }
                    last = stable;
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no store snapshot thread: starts replay the whole log");
                None
            }
        };
        Checkpoints {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A snapshot under way is finished (it holds the database open).
            let _ = t.join();
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a crash is simulated, for the crash tests (debug builds only):
/// `SWITCHBOARD_CRASH_AT=<step>:<n>` aborts the process right after the `n`th `step`:
/// `commit` (the `n`th commit's batch is applied, not yet flushed; `expiry`, `inbox`,
/// `event` and `done`, the steps of the earlier ordered commit, now mean the same) or
/// `route` (the `n`th route run is written).
#[cfg(debug_assertions)]
mod fault {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering::SeqCst},
    };

    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);

    pub(super) fn after(step: &str) {
        let plan = PLAN.get_or_init(|| {
            let v = std::env::var("SWITCHBOARD_CRASH_AT").ok()?;
            let (s, n) = v.split_once(':')?;
            Some((s.to_owned(), n.parse().ok()?))
        });
        if let Some((s, n)) = plan {
            if s == step && SEEN.fetch_add(1, SeqCst) + 1 == *n {
                eprintln!("SWITCHBOARD_CRASH_AT: aborting after the write of `{step}`");
                std::process::abort();
            }
        }
    }
}

#[cfg(not(debug_assertions))]
mod fault {
    #[inline(always)]
    pub(super) fn after(_step: &str) {}
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    durability: Arc<Durability>,
    /// The claims of this process run.
    claims: Arc<Claims>,
    /// Applies the batches of concurrent route runs together.
    combiner: Combiner,
    /// How long events and their keys are kept.
    retention: Duration,
    /// Held by every read-modify-write of an action.
    outbox_lock: std::sync::Mutex<()>,
    /// Whether the last process run ended with a graceful stop (then the start-up check
    /// has nothing to look for).
    was_clean: bool,
    /// The inbox entries kept in memory: events handed to this process's route workers at
    /// their commit, with no `n` entry on disk, until their route is recorded (see the
    /// module documentation); each with its idempotency key.
    unlisted: Arc<std::sync::Mutex<BTreeMap<EventId, Vec<u8>>>>,
    /// Whether nothing a crash left behind is still to be looked for: the last stop was
    /// graceful, or the start-up check has finished. A graceful stop is marked clean only
    /// then (the check is what finds the events whose inbox entries were in memory).
    checked: AtomicBool,
    /// Set once the actions a stop left `sending` were resumed.
    resumed: AtomicBool,
    /// Stops the flusher (and so releases the database) when the backend is dropped.
    _flusher: AbortOnDrop,
    /// Brings the settled time forward ([`run_settler`]).
    _settler: AbortOnDrop,
    /// Writes sled's snapshots while the store runs.
    _checkpoints: Checkpoints,
}

/// The embedded backend. See the module documentation.
pub struct SledBackend {
    inner: Arc<Inner>,
}

/// The keys claimed by requests of this process run and not yet committed (or released).
/// Only this process opens the directory, so this is every claim there is.
#[derive(Default)]
struct Claims {
    keys: std::sync::Mutex<HashSet<String>>,
    /// The event ids the owned claims reserved, until their commit is applied (or they are
    /// released): the settled time stays below them.
    ids: std::sync::Mutex<BTreeSet<EventId>>,
    /// Woken whenever a claim finishes or is released.
    settled: Notify,
}

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<EventId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new event id, listed among the claims' ids under the same lock that
    /// [`Inner::settled_before`] reads the clock under: an id it does not see is made after
    /// it looked.
    fn fresh_id(&self) -> EventId {
        let mut ids = self.ids();
        let id = EventId::new();
        ids.insert(id);
        id
    }
}

/// A claim this process run holds: the key leaves [`Claims`] when this is dropped, which
/// is after its commit's batch is applied (or when the request gives up).
struct SledClaim {
    claims: Arc<Claims>,
    key: String,
    fingerprint: String,
    event_id: EventId,
}

impl Drop for SledClaim {
    fn drop(&mut self) {
        self.claims.ids().remove(&self.event_id);
        self.claims.lock().remove(&self.key);
        self.claims.settled.notify_waiters();
    }
}

/// One write of a batch: a value to insert, or `None` to remove the key.
type Write = (Vec<u8>, Option<Vec<u8>>);

/// A batch waiting in the [`Combiner`].
struct Job {
    writes: Vec<Write>,
    /// Dropped once the batch is applied (a claim, released only then).
    keep: Option<SledClaim>,
    /// Called if the batch fails, before the claim is released.
    on_failure: Option<Box<dyn FnOnce() + Send>>,
    /// For the fault-injection hook: `commit` or `route`.
    step: &'static str,
    done: tokio::sync::oneshot::Sender<std::result::Result<u64, String>>,
}

/// Flat combining of the batches that do not wait for a flush (route runs that queue
/// actions): each writer queues its batch, and whoever finds no batch being applied
/// applies everything queued as one sled batch (one write lock, one pair of I/O-buffer
/// seals), then looks again. A batch of one request is still atomic: it is part of a
/// larger atomic batch. (Commits wait for a flush anyway: the flusher applies theirs.)
#[derive(Default)]
struct Combiner {
    queue: std::sync::Mutex<Vec<Job>>,
    busy: AtomicBool,
}

/// Restricts the store's directory to its owner: it holds OTPs and card data in clear.
#[cfg(unix)]
fn restrict(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    for entry in entries.flatten() {
        let p = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => restrict(&p),
            Ok(t) if t.is_file() => {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
            _ => {}
        }
    }
}

#[cfg(not(unix))]
fn restrict(_path: &std::path::Path) {}

impl SledBackend {
    /// Opens (or creates) the database under `cfg.path/db` and starts its flusher task.
    /// Must be called inside a Tokio runtime.
    pub fn open(cfg: &StoreConfig) -> Result<SledBackend> {
        let dir = cfg.path.join("db");
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::config(
                "store.path",
                format!("cannot create {}: {e}", cfg.path.display()),
            )
        })?;
        restrict(&dir);
        let db = sled::Config::new()
            .path(&dir)
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
        // The files sled made now (a new store) are the owner's alone too.
        restrict(&dir);
        let tree = db.open_tree("switchboard")?;
        // A crash from here on must not pass for a graceful stop.
        let was_clean = tree.remove(CLEAN)?.is_some();
        // A settled time ahead of the clock (it stepped back while the process was down)
        // would let the check after a crash skip the events of this run: brought back.
        let floor = now_ms().saturating_sub(SETTLE_MARGIN_MS);
        let ahead = settled_in(&tree)?.is_some_and(|t| t > floor);
        if ahead {
            tree.insert(SETTLED, &floor.to_be_bytes())?;
        }
        if was_clean || ahead {
            db.flush()?;
            db.sync_data()?;
        }
        let durability = Arc::new(Durability {
            written: AtomicU64::new(0),
            in_progress: AtomicU64::new(0),
            state: watch::Sender::new(FlushState::default()),
            kick: Notify::new(),
            flushes: AtomicU64::new(0),
            commits: std::sync::Mutex::new(Vec::new()),
            batches: AtomicU64::new(0),
            batched_jobs: AtomicU64::new(0),
            flush_time: std::sync::OnceLock::new(),
            #[cfg(test)]
            fail_next_batch: AtomicBool::new(false),
        });
        let flusher = tokio::spawn(run_flusher(db.clone(), tree.clone(), durability.clone()));
        let checkpoints = Checkpoints::start(db.clone(), cfg.checkpoint_after.0);
        Ok(SledBackend {
            inner: Arc::new_cyclic(|me| Inner {
                _settler: AbortOnDrop(tokio::spawn(run_settler(me.clone())).abort_handle()),
                db,
                tree,
                durability,
                claims: Arc::default(),
                combiner: Combiner::default(),
                retention: cfg.retention.get(),
                outbox_lock: std::sync::Mutex::new(()),
                was_clean,
                unlisted: Arc::default(),
                checked: AtomicBool::new(was_clean),
                resumed: AtomicBool::new(false),
                _flusher: AbortOnDrop(flusher.abort_handle()),
                _checkpoints: checkpoints,
            }),
        })
    }

    /// Every record of the store, for copying it elsewhere (`switchboard store copy`).
    pub fn export(&self) -> Result<Export> {
        self.inner.export()
    }
}

/// Everything a sled store holds, decoded: what another backend imports.
#[derive(Debug, Default)]
pub struct Export {
    /// Idempotency records that are done: key, fingerprint, event, answer, until when
    /// (ms) the key answers duplicates.
    pub keys: Vec<ExportedKey>,
    /// Every event, with its expiry (ms since the epoch).
    pub events: Vec<(Event, u64)>,
    /// Every action.
    pub actions: Vec<Action>,
}

/// One finished idempotency key.
#[derive(Debug, Clone)]
pub struct ExportedKey {
    /// The provider-scoped key.
    pub key: String,
    /// The fingerprint of the body that claimed it.
    pub fingerprint: String,
    /// The event stored under it.
    pub event_id: Option<EventId>,
    /// The answer it replays.
    pub response: StoredResponse,
    /// Until when it answers duplicates (ms since the epoch), if not until it expires.
    pub until_ms: Option<u64>,
}

impl Inner {
    /// Runs `writes` and numbers them for [`Inner::durable`].
    fn write(&self, writes: impl FnOnce(&sled::Tree) -> Result<(), sled::Error>) -> Result<u64> {
        self.durability.write(&self.tree, writes)
    }

    fn batch(&self, batch: sled::Batch) -> Result<u64> {
        self.write(|tree| tree.apply_batch(batch))
    }

    /// `writes` as plain single writes, in their order.
    fn write_in_order(&self, writes: Vec<Write>) -> Result<u64> {
        self.write(|tree| {
            for (k, v) in writes {
                match v {
                    Some(v) => tree.insert(k, v).map(|_| ())?,
                    None => tree.remove(k).map(|_| ())?,
                }
            }
            Ok(())
        })
    }

    /// Applies `writes` atomically, now, combined with the batches other tasks queued
    /// meanwhile. Returns the sequence number to wait for with [`Inner::durable`].
    async fn apply(&self, writes: Vec<Write>, step: &'static str) -> Result<u64> {
        let (done, applied) = tokio::sync::oneshot::channel();
        let c = &self.combiner;
        let queue = || c.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue().push(Job {
            writes,
            keep: None,
            on_failure: None,
            step,
            done,
        });
        // Become the combiner unless another task is one; it will find this job (it looks
        // at the queue again after clearing `busy`).
        while !c.busy.swap(true, SeqCst) {
            let jobs = std::mem::take(&mut *queue());
            if !jobs.is_empty() {
                self.durability.apply_jobs(&self.tree, jobs);
            }
            c.busy.store(false, SeqCst);
            if queue().is_empty() {
                break;
            }
        }
        outcome(applied.await)
    }

    /// Hands the batch of a commit to the flusher, which applies it with the other
    /// commits queued meanwhile as one batch right before its next flush, then drops
    /// `claim`. Returns the sequence number to wait for with [`Inner::durable`].
    async fn apply_before_flush(
        &self,
        writes: Vec<Write>,
        claim: SledClaim,
        on_failure: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<u64> {
        let (done, applied) = tokio::sync::oneshot::channel();
        let d = &self.durability;
        d.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Job {
                writes,
                keep: Some(claim),
                on_failure,
                step: "commit",
                done,
            });
        d.kick.notify_one();
        outcome(applied.await)
    }

    /// Waits until the write numbered `seq` is on disk.
    async fn durable(&self, seq: u64) -> Result<()> {
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
    async fn durable_visible(&self) -> Result<()> {
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

    fn event(&self, id: EventId) -> Result<Option<Event>> {
        let k = key(EVENT, id.as_bytes());
        self.tree.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// One attempt at the key, without waiting. An owned key stays in [`Inner::claims`]
    /// until its [`SledClaim`] is dropped.
    fn try_claim(&self, req: &ClaimRequest<'_>) -> Result<TryClaim> {
        if !self.claims.lock().insert(req.key.to_owned()) {
            return Ok(TryClaim::Pending);
        }
        let found = self.claimed(req);
        if !matches!(found, Ok(TryClaim::Owned { .. })) {
            self.claims.lock().remove(req.key);
            self.claims.settled.notify_waiters();
        }
        found
    }

    /// What the durable record of a key this process holds in memory says.
    fn claimed(&self, req: &ClaimRequest<'_>) -> Result<TryClaim> {
        let k = key(IDEM, req.key.as_bytes());
        let Some(current) = self.tree.get(&k)? else {
            return Ok(TryClaim::Owned {
                event_id: self.claims.fresh_id(),
                taken_over: false,
            });
        };
        let rec: IdemRecord = decode(&k, &current)?;
        match rec.state {
            // Only earlier versions wrote these: a claim of a run that crashed.
            IdemState::Pending {
                event_id: reserved, ..
            } => {
                tracing::info!("taking over a claim left by an earlier run");
                Ok(TryClaim::Owned {
                    event_id: reserved,
                    taken_over: true,
                })
            }
            // Past the provider's de-duplication window: a new notification.
            IdemState::Done { until_ms, .. } if until_ms.is_some_and(|u| u <= now_ms()) => {
                Ok(TryClaim::Owned {
                    event_id: self.claims.fresh_id(),
                    taken_over: false,
                })
            }
            IdemState::Done {
                event_id, response, ..
            } => Ok(TryClaim::Done(Claim::Done {
                fingerprint: rec.fingerprint,
                event_id,
                response,
            })),
        }
    }

    /// The writes of a commit (see the module documentation), applied as one batch.
    /// `taken_over`: the claim took over a `pending` record an earlier version left (its
    /// event may already be stored). `handed`: the event goes to the route workers from
    /// memory, and its inbox entry may stay there ([`Inner::unlisted`]). Returns, with the
    /// writes, whether the entry is to be kept in memory.
    fn commit_writes(
        &self,
        claim: &SledClaim,
        taken_over: bool,
        event: &Event,
        response: &StoredResponse,
        dedup_window: Option<Duration>,
        handed: bool,
    ) -> Result<(Vec<Write>, bool)> {
        let now = now_ms();
        let id = event.id.as_bytes();
        // A claim an earlier version left pending may already have its event stored: keep
        // it when it is this very body (it may have been routed since), replace it
        // otherwise (it was never acknowledged).
        let existing = if taken_over {
            self.event(event.id)?
                .filter(|e| e.fingerprint == claim.fingerprint)
        } else {
            None
        };
        let done = encode(&IdemRecord {
            fingerprint: claim.fingerprint.clone(),
            state: IdemState::Done {
                event_id: Some(event.id),
                response: response.clone(),
                until_ms: dedup_window.map(|w| now.saturating_add(millis(w))),
            },
        });
        let idem_key = claim.key.as_bytes();
        let mut writes = Vec::with_capacity(3);
        let mut unlisted = false;
        match &existing {
            None => {
                match event.status {
                    EventStatus::Received if handed && self.unlisted().len() < MOST_UNLISTED => {
                        unlisted = true;
                    }
                    EventStatus::Received => {
                        writes.push((key(INBOX, id), Some(inbox_value(0, idem_key))));
                    }
                    EventStatus::Quarantined => {
                        writes.push((key(QUARANTINE, id), Some(Vec::new())));
                    }
                    _ => {}
                }
                writes.push((key(EVENT, id), Some(encode(event))));
            }
            // Stored by the run that crashed: make sure it is in the inbox if it still
            // waits (a store written before the inbox entry came first may lack it).
            Some(e) if e.status == EventStatus::Received => {
                if self.tree.get(key(INBOX, id))?.is_none() {
                    writes.push((key(INBOX, id), Some(inbox_value(0, idem_key))));
                }
            }
            Some(_) => {}
        }
        writes.push((key(IDEM, idem_key), Some(done)));
        Ok((writes, unlisted))
    }

    fn unlisted(&self) -> std::sync::MutexGuard<'_, BTreeMap<EventId, Vec<u8>>> {
        lock_unlisted(&self.unlisted)
    }

    /// A time (ms) before which no event relies on an inbox entry in memory: that of the
    /// oldest entry in memory or claim not yet committed (whose commit may keep its entry
    /// in memory), or [`SETTLE_MARGIN_MS`] before now when there is none. The clock is read
    /// under the claims' lock, so an id made after it is read is not older than it.
    ///
    /// The claims' lock is held while the entries in memory are read: a commit puts its
    /// id in memory before its claim lets go of it (which takes that lock), so no id
    /// moves from one to the other unseen between the two reads.
    fn settled_before(&self) -> u64 {
        let ids = self.claims.ids();
        let claimed = ids.first().map(|id| id_ms(&id.0));
        let floor = now_ms().saturating_sub(SETTLE_MARGIN_MS);
        let in_memory = self.unlisted().keys().next().map(|id| id_ms(&id.0));
        drop(ids);
        [in_memory, claimed]
            .into_iter()
            .flatten()
            .fold(floor, u64::min)
    }

    /// Where the start-up check after a crash starts to read events (see [`SETTLED`]).
    fn settled(&self) -> Result<Option<u64>> {
        settled_in(&self.tree)
    }

    /// Whether `id`'s inbox entry is kept in memory (see [`Inner::unlisted`]).
    fn is_unlisted(&self, id: EventId) -> bool {
        self.unlisted().contains_key(&id)
    }

    /// Writes the inbox entries kept in memory whose events still wait, or whose commit is
    /// still under way (a graceful stop: the next start does not look for them).
    ///
    /// The entries leave memory only once their batch is applied: until then they hold
    /// the settled time back, so it cannot pass them before they are on disk (the stop
    /// may be killed before it ends).
    fn list_unlisted(&self) -> Result<()> {
        let ids = self.unlisted().clone();
        let mut batch = sled::Batch::default();
        for (id, idem_key) in &ids {
            match self.event(*id) {
                Ok(Some(e)) if e.status != EventStatus::Received => {}
                Ok(_) => batch.insert(key(INBOX, id.as_bytes()), inbox_value(0, idem_key)),
                Err(Error::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.batch(batch)?;
        let mut unlisted = self.unlisted();
        for id in ids.keys() {
            unlisted.remove(id);
        }
        Ok(())
    }

    fn export(&self) -> Result<Export> {
        let mut out = Export::default();
        let mut expiry = std::collections::HashMap::new();
        for entry in self.tree.scan_prefix([EXPIRY]) {
            let (k, _) = entry?;
            if let (Some(at), Some(id)) = (
                k.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                k.get(9..).and_then(EventId::from_slice),
            ) {
                expiry.insert(id, at);
            }
        }
        for entry in self.tree.scan_prefix([IDEM]) {
            let (k, v) = entry?;
            let rec: IdemRecord = match decode(&k, &v) {
                Ok(r) => r,
                Err(e) => {
                    skip_unreadable(e)?;
                    continue;
                }
            };
            if let IdemState::Done {
                event_id,
                response,
                until_ms,
            } = rec.state
            {
                out.keys.push(ExportedKey {
                    key: String::from_utf8_lossy(&k[1..]).into_owned(),
                    fingerprint: rec.fingerprint,
                    event_id,
                    response,
                    until_ms,
                });
            }
        }
        for entry in self.tree.scan_prefix([EVENT]) {
            let (k, v) = entry?;
            match decode::<Event>(&k, &v) {
                Ok(e) => {
                    // Kept past its retention, or of an earlier version: its `x` entry;
                    // otherwise its retention from when it was received.
                    let received = u64::try_from(e.received_at.timestamp_millis()).unwrap_or(0);
                    let at = expiry
                        .get(&e.id)
                        .copied()
                        .unwrap_or_else(|| received.saturating_add(millis(self.retention)));
                    out.events.push((e, at));
                }
                Err(e) => skip_unreadable(e)?,
            }
        }
        for entry in self.tree.scan_prefix([ACTION]) {
            let (k, v) = entry?;
            match decode::<Action>(&k, &v) {
                Ok(a) => out.actions.push(a),
                Err(e) => skip_unreadable(e)?,
            }
        }
        Ok(out)
    }

    fn events(&self, filter: &EventFilter, before: Option<EventId>, limit: usize) -> Result<Page> {
        let quarantine_only = filter.status == Some(EventStatus::Quarantined);
        let mut items = Vec::new();
        let mut next = None;
        // Quarantined events are found through their index instead of every event.
        let prefix = if quarantine_only { QUARANTINE } else { EVENT };
        let since = filter.since();
        let start = key(
            prefix,
            since.as_ref().map_or(&[][..], |s| &s.as_bytes()[..]),
        );
        let end = match before {
            Some(id) => key(prefix, id.as_bytes()),
            None => key(prefix + 1, &[]),
        };
        if start >= end {
            return Ok(Page { items, next });
        }
        for entry in self.tree.range(start..end).rev() {
            let (k, v) = entry?;
            let found = if quarantine_only {
                match EventId::from_slice(&k[1..])
                    .map(|id| self.event(id))
                    .transpose()
                {
                    Ok(e) => e.flatten(),
                    Err(e) => {
                        skip_unreadable(e)?;
                        continue;
                    }
                }
            } else {
                match decode::<Event>(&k, &v) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        skip_unreadable(e)?;
                        continue;
                    }
                }
            };
            let Some(e) = found else { continue };
            if filter.matches(&e) {
                if items.len() == limit {
                    next = items.last().map(|e: &Event| e.id);
                    break;
                }
                items.push(e);
            }
        }
        Ok(Page { items, next })
    }

    fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept> {
        let mut swept = Swept::default();
        // The events received before the retention, not looked at yet.
        let from = self
            .tree
            .get(SWEPT)?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        let bound = first_id_at(now_ms.saturating_sub(millis(self.retention)));
        // Whether this pass's scan of the ids looked at `id` already.
        let scanned = |id: &EventId| {
            let id = id.as_bytes().as_slice();
            from.as_slice() <= id && id < bound.as_bytes().as_slice()
        };
        if from.as_slice() < bound.as_bytes().as_slice() {
            for entry in self
                .tree
                .range(key(EVENT, &from)..key(EVENT, bound.as_bytes()))
            {
                let (k, v) = entry?;
                let Some(id) = EventId::from_slice(&k[1..]) else {
                    continue;
                };
                match decode::<Event>(&k, &v) {
                    Ok(e) => {
                        let idem_key = e.idempotency_key.clone().into_bytes();
                        self.expire(id, Some(e), &idem_key, now_ms, retention, &mut swept)?;
                    }
                    Err(e) => skip_unreadable(e)?,
                }
            }
            self.tree.insert(SWEPT, bound.as_bytes().as_slice())?;
        }
        // Events kept by an earlier pass, and every expiry entry of earlier versions.
        let end = expiry_key(now_ms.saturating_add(1), &[]);
        for entry in self.tree.range(key(EXPIRY, &[])..end) {
            let (xk, idem_key) = entry?;
            // An earlier version's entry of an event the scan above just looked at (and
            // removed, or kept with an entry of its own) only goes.
            if let Some(id) = xk
                .get(9..)
                .and_then(EventId::from_slice)
                .filter(|id| !scanned(id))
            {
                let event = self.event(id)?;
                self.expire(id, event, &idem_key, now_ms, retention, &mut swept)?;
            }
            self.tree.remove(&xk)?;
        }
        Ok(swept)
    }

    /// Removes an event that expired (`event`: as stored, if it still is), with its key
    /// (if it is still the event's), its actions and its index entries; or keeps it
    /// another `retention` if it must stay.
    fn expire(
        &self,
        id: EventId,
        event: Option<Event>,
        idem_key: &[u8],
        now_ms: u64,
        retention: Duration,
        swept: &mut Swept,
    ) -> Result<()> {
        let keep = match &event {
            Some(e) => !e.status.expires() || !self.all_settled(e)?,
            None => false,
        };
        if keep {
            let later = now_ms.saturating_add(millis(retention));
            self.tree
                .insert(expiry_key(later, id.as_bytes()), idem_key)?;
            swept.kept += 1;
            return Ok(());
        }
        // The idempotency record goes only if it still belongs to this event (a retry
        // after a crash may have finished the key with another event).
        let ik = key(IDEM, idem_key);
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
        if let Some(e) = &event {
            self.remove_actions(e)?;
            self.tree.remove(key(EVENT, id.as_bytes()))?;
            swept.events += 1;
        }
        self.tree.remove(key(QUARANTINE, id.as_bytes()))?;
        self.tree.remove(key(INBOX, id.as_bytes()))?;
        Ok(())
    }

    /// Checks the inbox against the events received since the settled time (see
    /// [`Backend::consistency_check`] and [`SETTLED`]). Reads only each event's status, not
    /// the whole record.
    fn consistency_check(&self) -> Result<Repaired> {
        let mut repaired = Repaired::default();
        // Every event before the settled time is routed or has its entry on disk: only
        // those after it may have lost an entry that was in memory.
        let settled = self.settled()?;
        let from = key(EVENT, first_id_at(settled.unwrap_or(0)).as_bytes());
        let mut read = 0u64;
        let began = std::time::Instant::now();
        let inbox: HashSet<EventId> = self
            .tree
            .scan_prefix([INBOX])
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| EventId::from_slice(&k[1..]))
            .collect();
        let mut waiting = HashSet::new();
        for entry in self.tree.range(from..key(EVENT + 1, &[])) {
            let (k, v) = entry?;
            read += 1;
            let Some(id) = EventId::from_slice(&k[1..]) else {
                continue;
            };
            if status_of(&v) != Some(EventStatus::Received) {
                continue;
            }
            waiting.insert(id);
            // An event handed to the route workers by this process run has its entry in
            // memory; one of the run that crashed has none: it is put back. Read again
            // once it is known not to be in memory: a route records its event's status
            // before it takes the entry out of memory, so an event routed since the scan
            // read it is seen routed now, not put back.
            if !inbox.contains(&id) && !self.is_unlisted(id) {
                let Some(v) = self.tree.get(&k)? else {
                    continue;
                };
                if status_of(&v) != Some(EventStatus::Received) {
                    continue;
                }
                let e: Event = match decode(&k, &v) {
                    Ok(e) => e,
                    Err(e) => {
                        skip_unreadable(e)?;
                        continue;
                    }
                };
                // Numbered, so that the first settled time written after the check waits
                // for a flush of the entries it put back.
                self.write(|tree| {
                    tree.insert(
                        key(INBOX, id.as_bytes()),
                        inbox_value(0, e.idempotency_key.as_bytes()),
                    )
                    .map(|_| ())
                })?;
                tracing::debug!(event_id = %id, provider = %e.provider, "an event waiting for its route was missing from the inbox; put back");
                repaired.inbox_added += 1;
            }
        }
        for id in inbox.difference(&waiting) {
            // An entry whose event is not written yet belongs to a claim still pending, and
            // one before the settled time was not read above: `inbox_remove` reads the
            // event and keeps the entry of one that waits.
            if self.inbox_remove(*id)? {
                repaired.inbox_removed += 1;
            }
        }
        tracing::info!(
            events_read = read,
            from_ms = settled,
            ms = began.elapsed().as_millis() as u64,
            "the start-up check of the store has finished (the last stop was not graceful, or the store is new)"
        );
        self.checked.store(true, SeqCst);
        Ok(repaired)
    }

    /// Removes the inbox entry of an event that no longer waits for its route. An entry
    /// whose event is not stored yet is kept while the claim it names is pending (its
    /// commit is under way, or a crash interrupted it and the key's next request will
    /// finish it). Returns whether it was removed.
    fn inbox_remove(&self, id: EventId) -> Result<bool> {
        let mut removed = false;
        if self.is_unlisted(id) {
            let waits = match self.event(id) {
                Ok(Some(e)) => e.status == EventStatus::Received,
                // Its commit is under way: it is kept in memory before its event is visible.
                Ok(None) => true,
                Err(Error::Corrupt { .. }) => false,
                Err(e) => return Err(e),
            };
            if !waits {
                removed = self.unlisted().remove(&id).is_some();
            }
        }
        let ik = key(INBOX, id.as_bytes());
        let Some(value) = self.tree.get(&ik)? else {
            return Ok(removed);
        };
        let (_, idem_key) = parse_inbox(&value);
        let waiting = match self.event(id) {
            Ok(Some(e)) => e.status == EventStatus::Received,
            Ok(None) if idem_key.is_empty() => false,
            Ok(None) => {
                let k = key(IDEM, idem_key);
                match self.tree.get(&k)?.map(|v| decode::<IdemRecord>(&k, &v)) {
                    Some(Ok(IdemRecord {
                        state: IdemState::Pending { event_id, .. },
                        ..
                    })) => event_id == id,
                    _ => false,
                }
            }
            // Trying again cannot help: the record stays, out of the inbox.
            Err(Error::Corrupt { .. }) => false,
            Err(e) => return Err(e),
        };
        if waiting {
            return Ok(false);
        }
        Ok(self
            .tree
            .compare_and_swap(&ik, Some(value), None::<&[u8]>)?
            .is_ok())
    }
}

enum TryClaim {
    Owned { event_id: EventId, taken_over: bool },
    Pending,
    Done(Claim),
}

/// What a job's sender said.
fn outcome(
    r: std::result::Result<
        std::result::Result<u64, String>,
        tokio::sync::oneshot::error::RecvError,
    >,
) -> Result<u64> {
    match r {
        Ok(Ok(seq)) => Ok(seq),
        Ok(Err(e)) => Err(Error::Unavailable(format!("a store write failed: {e}"))),
        Err(_) => Err(Error::Unavailable("a store write was lost".into())),
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> Result<T> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| Error::Unavailable(format!("a store task failed: {e}")))?
}

#[async_trait::async_trait]
impl Backend for SledBackend {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn routes_in_memory(&self) -> bool {
        true
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + req.wait;
        loop {
            let settled = inner.claims.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match inner.try_claim(req)? {
                TryClaim::Owned {
                    event_id,
                    taken_over,
                } => {
                    let claim = OwnedClaim::new(
                        event_id,
                        SledClaim {
                            claims: inner.claims.clone(),
                            key: req.key.to_owned(),
                            fingerprint: req.fingerprint.to_owned(),
                            event_id,
                        },
                    );
                    return Ok(Claim::Owned(if taken_over {
                        claim.taken_over()
                    } else {
                        claim
                    }));
                }
                TryClaim::Done(done) => {
                    // The record may have been written by a request whose flush is still
                    // running: replay it only once it is on disk.
                    inner.durable_visible().await?;
                    return Ok(done);
                }
                TryClaim::Pending => {
                    if tokio::time::timeout_at(deadline, settled).await.is_err() {
                        return Err(Error::InFlight);
                    }
                }
            }
        }
    }

    async fn commit(
        &self,
        claim: OwnedClaim,
        event: &Event,
        response: &StoredResponse,
        dedup_window: Option<Duration>,
        handed: bool,
    ) -> Result<()> {
        let taken_over = !claim.is_fresh();
        let hold = claim.into_hold::<SledClaim>(event)?;
        let (writes, unlisted) =
            self.inner
                .commit_writes(&hold, taken_over, event, response, dedup_window, handed)?;
        // In the inbox (in memory) before the event is visible, as an entry written with it
        // would be; out of it again if the batch fails (whether or not this request still
        // waits for it).
        let on_failure: Option<Box<dyn FnOnce() + Send>> = if unlisted {
            self.inner
                .unlisted()
                .insert(event.id, hold.key.as_bytes().to_vec());
            let (set, id) = (self.inner.unlisted.clone(), event.id);
            Some(Box::new(move || {
                lock_unlisted(&set).remove(&id);
            }))
        } else {
            None
        };
        // The claim is let go once the batch is applied: from then on the key is done,
        // whatever happens to the flush, and the requests waiting for it find it so.
        let seq = self
            .inner
            .apply_before_flush(writes, *hold, on_failure)
            .await?;
        self.inner.durable(seq).await
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>> {
        self.inner.event(id)
    }

    async fn events(
        &self,
        filter: &EventFilter,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<Page> {
        self.inner.events(filter, before, limit)
    }

    async fn event_count(&self) -> Result<usize> {
        Ok(self.inner.tree.scan_prefix([EVENT]).count())
    }

    async fn event_counts(&self, windows: &[u64]) -> Result<CountsBy<(String, EventStatus)>> {
        let windows = windows.to_vec();
        blocking(&self.inner, move |inner| inner.event_counts(&windows)).await
    }

    async fn action_counts(
        &self,
        windows: &[u64],
    ) -> Result<CountsBy<(String, crate::outbox::DeliveryStatus)>> {
        let windows = windows.to_vec();
        blocking(&self.inner, move |inner| inner.action_counts(&windows)).await
    }

    async fn take_inbox(&self, after: Option<EventId>, limit: usize) -> Result<Vec<EventId>> {
        self.inner.inbox(after, limit)
    }

    async fn defer(&self, _id: EventId, _wait: Duration) -> Result<()> {
        Ok(())
    }

    async fn route_starts(&self, id: EventId) -> Result<u32> {
        Ok(self
            .inner
            .tree
            .get(key(INBOX, id.as_bytes()))?
            .map_or(0, |v| parse_inbox(&v).0))
    }

    async fn set_route_starts(&self, id: EventId, started: u32) -> Result<()> {
        let k = key(INBOX, id.as_bytes());
        // Never puts back an entry that is gone (the route was recorded meanwhile).
        let seq = self.inner.write(|tree| {
            tree.fetch_and_update(&k, |old| {
                old.map(|v| inbox_value(started, parse_inbox(v).1))
            })
            .map(|_| ())
        })?;
        self.inner.durable(seq).await
    }

    async fn release(&self, _id: EventId) -> Result<()> {
        Ok(())
    }

    async fn inbox_remove(&self, id: EventId) -> Result<()> {
        self.inner.inbox_remove(id).map(|_| ())
    }

    async fn route_done(
        &self,
        event: &Event,
        script: Option<String>,
        specs: Vec<ActionSpec>,
    ) -> Result<Option<Vec<Action>>> {
        let listed = !self.inner.is_unlisted(event.id);
        let (writes, actions) = self.inner.route_done(event, script, specs, listed);
        if actions.is_empty() {
            // Nothing to keep together with the routed mark: plain writes in an order that
            // is safe at a crash between them (an inbox entry of an event that no longer
            // waits is removed by the route workers and the start-up check).
            self.inner.write_in_order(writes)?;
            fault::after("route");
        } else {
            self.inner.apply(writes, "route").await?;
        }
        if !listed {
            self.inner.unlisted().remove(&event.id);
        }
        Ok(Some(actions))
    }

    async fn route_failed(
        &self,
        event: &Event,
        script: Option<String>,
        error: String,
    ) -> Result<()> {
        let listed = !self.inner.is_unlisted(event.id);
        let writes = self.inner.route_failed(event, script, error, listed);
        // As a route that queued nothing: the failed mark, then out of the inbox.
        self.inner.write_in_order(writes)?;
        if !listed {
            self.inner.unlisted().remove(&event.id);
        }
        Ok(())
    }

    async fn replay_event(
        &self,
        id: EventId,
        reparsed: Option<(String, Value, Vec<String>)>,
    ) -> Result<Option<Event>> {
        self.inner.replay_event(id, reparsed)
    }

    async fn take_due(&self, channel: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>> {
        self.inner.due(channel, now_ms, limit)
    }

    async fn next_due(&self, channel: &str) -> Result<Option<u64>> {
        self.inner.next_due(channel)
    }

    async fn start_attempt(&self, channel: &str, due: Due) -> Result<Option<Action>> {
        let Some((action, seq)) = self.inner.start_attempt(channel, due)? else {
            return Ok(None);
        };
        // Nothing leaves before the `sending` mark (and so the routed event and its
        // actions, written before it) is on disk.
        self.inner.durable(seq).await?;
        Ok(Some(action))
    }

    async fn finish_attempt(
        &self,
        action: Action,
        result: &SendResult,
        retry_at_ms: Option<u64>,
    ) -> Result<Action> {
        self.inner.finish_attempt(action, result, retry_at_ms)
    }

    async fn release_due(&self, _id: ActionId) -> Result<()> {
        Ok(())
    }

    async fn expire_action(&self, id: ActionId) -> Result<Option<Action>> {
        self.inner.expire_action(id)
    }

    async fn resume_interrupted(&self) -> Result<usize> {
        // Only what an earlier process run left: this one's attempts are its own.
        if self.inner.resumed.swap(true, SeqCst) {
            return Ok(0);
        }
        self.inner.resume_interrupted()
    }

    async fn replay_action(&self, id: ActionId) -> Result<Option<Action>> {
        self.inner.replay_action(id)
    }

    async fn action(&self, id: ActionId) -> Result<Option<Action>> {
        self.inner.action(id)
    }

    async fn actions_of(&self, event: &Event) -> Result<Vec<Action>> {
        self.inner.actions_of(event)
    }

    async fn actions(
        &self,
        filter: &ActionFilter,
        before: Option<ActionId>,
        limit: usize,
    ) -> Result<(Vec<Action>, Option<ActionId>)> {
        self.inner.actions(filter, before, limit)
    }

    async fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept> {
        blocking(&self.inner, move |inner| inner.sweep(now_ms, retention)).await
    }

    async fn consistency_check(&self) -> Result<Repaired> {
        if self.inner.was_clean {
            return Ok(Repaired::default());
        }
        blocking(&self.inner, Inner::consistency_check).await
    }

    async fn check(&self) -> Result<()> {
        self.inner.tree.get([0u8])?;
        let state = *self.inner.durability.state.borrow();
        if state.failed > state.flushed {
            return Err(Error::Durability("the last flush to disk failed".into()));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        // The end of a graceful stop: the next start need not look for what a crash
        // leaves behind, so the entries kept in memory are written first; unless the
        // start-up check did not finish: then the next start runs it again.
        self.inner.list_unlisted()?;
        let clean = self.inner.checked.load(SeqCst);
        if !clean {
            tracing::warn!(
                "the start-up check of the store did not finish; the next start runs it again"
            );
        }
        let seq = self.inner.write(|tree| {
            if clean {
                tree.insert(CLEAN, &[])?;
            }
            Ok(())
        })?;
        self.inner.durable(seq).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            flushes: Some(self.inner.durability.flushes.load(SeqCst)),
            size_on_disk: self.inner.db.size_on_disk().ok(),
            batches: Some((
                self.inner.durability.batches.load(SeqCst),
                self.inner.durability.batched_jobs.load(SeqCst),
            )),
        }
    }

    fn time_flushes(&self, into: Histogram) {
        // Once per process run; a second histogram would be a wiring mistake, and the
        // first keeps counting.
        let _ = self.inner.durability.flush_time.set(into);
    }
}

/// The most inbox entries kept in memory: past it, a handed event's entry is written with
/// it (a routing backlog lives on disk, not in memory).
const MOST_UNLISTED: usize = 16_384;

fn lock_unlisted(
    set: &std::sync::Mutex<BTreeMap<EventId, Vec<u8>>>,
) -> std::sync::MutexGuard<'_, BTreeMap<EventId, Vec<u8>>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many times the flusher yields to the runtime before each flush (see
/// `run_flusher`). Measured with `switchboard-bench`: 0 → 18k, 8 → 22k durable
/// events/s; beyond 16 the delay starts to cost more than the batching saves.
const FLUSH_YIELDS: u32 = 8;

/// The settled time ([`SETTLED`]) written in `tree`, if any.
fn settled_in(tree: &sled::Tree) -> Result<Option<u64>> {
    Ok(tree
        .get(SETTLED)?
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes))
}

/// Brings the settled time ([`SETTLED`]) forward about once a second while events come,
/// once the start-up check has nothing left to look for. Each new time is written only
/// after a flush of everything written before it was taken, so the routes recorded before
/// it are on disk by the time it is.
async fn run_settler(inner: std::sync::Weak<Inner>) {
    let mut last: Option<(u64, u64)> = None;
    loop {
        tokio::time::sleep(SETTLE_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        if !inner.checked.load(SeqCst) {
            continue;
        }
        // Nothing written since the last time: nothing new to cover (and no flush for it).
        let written = inner.durability.written.load(SeqCst);
        if last.is_some_and(|(_, w)| w == written) {
            continue;
        }
        let at = inner.settled_before();
        if inner.durable_visible().await.is_err() {
            continue;
        }
        if last.is_some_and(|(t, _)| t == at) {
            last = Some((at, written));
            continue;
        }
        match inner.write(|tree| tree.insert(SETTLED, &at.to_be_bytes()).map(|_| ())) {
            Ok(seq) => last = Some((at, seq)),
            Err(e) => tracing::warn!(error = %e, "the settled time was not written"),
        }
    }
}

async fn run_flusher(db: sled::Db, tree: sled::Tree, d: Arc<Durability>) {
    loop {
        d.kick.notified().await;
        loop {
            // Let writers that are already runnable reach their write first, so that they
            // share this flush: an adaptive commit delay that costs nothing when idle.
            for _ in 0..FLUSH_YIELDS {
                tokio::task::yield_now().await;
            }
            let commits = std::mem::take(&mut *d.commits.lock().unwrap_or_else(|p| p.into_inner()));
            if commits.is_empty() && d.written.load(SeqCst) <= d.state.borrow().flushed {
                break;
            }
            let (db2, tree2, d2) = (db.clone(), tree.clone(), d.clone());
            // The commits queued since the last flush, as one batch, then the flush.
            let res = tokio::task::spawn_blocking(move || {
                if !commits.is_empty() {
                    d2.apply_jobs(&tree2, commits);
                }
                let target = d2.written.load(SeqCst);
                let began = std::time::Instant::now();
                // sled's flush ends with `sync_file_range`, which leaves the drive's
                // cache and a grown file's size unsynced; `fdatasync` makes it durable.
                let flushed = db2.flush().and_then(|n| db2.sync_data().map(|()| n));
                if let Some(h) = d2.flush_time.get() {
                    h.observe(began.elapsed().as_secs_f64());
                }
                (target, flushed)
            })
            .await;
            d.flushes.fetch_add(1, SeqCst);
            match res {
                Ok((target, Ok(_))) => d.state.send_modify(|s| s.flushed = s.flushed.max(target)),
                Ok((target, Err(e))) => {
                    tracing::error!(error = %e, "flush to disk failed");
                    d.state.send_modify(|s| s.failed = s.failed.max(target));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush task failed");
                    let target = d.written.load(SeqCst);
                    d.state.send_modify(|s| s.failed = s.failed.max(target));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
