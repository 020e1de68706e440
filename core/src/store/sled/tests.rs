use std::collections::BTreeMap;

use super::*;
use crate::{
    outbox::ActionSpec,
    store::{ClaimRequest, Store},
};

fn cfg(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        ..StoreConfig::default()
    }
}

/// Opens the store in `cfg.path`. A store just dropped may still be locked for a moment:
/// its aborted flusher task lets go of the database when the runtime next drops it, and
/// sled's own I/O threads after their last write. So a reopen waits for the lock, up to
/// 10 s, yielding to the runtime meanwhile. (A process that exits releases it at once.)
async fn open_with(cfg: &StoreConfig) -> (Store, Arc<SledBackend>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let backend = loop {
        match SledBackend::open(cfg) {
            Ok(b) => break Arc::new(b),
            Err(Error::Config { ref message, .. })
                if std::time::Instant::now() < deadline && message.contains("is in use") =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    (Store::new(backend.clone(), Arc::default()), backend)
}

async fn open(dir: &std::path::Path) -> (Store, Arc<SledBackend>) {
    open_with(&cfg(dir)).await
}

/// [`open`] with a retention of one second, for the sweep.
async fn open_retaining_1s(dir: &std::path::Path) -> (Store, Arc<SledBackend>) {
    open_with(&StoreConfig {
        retention: crate::units::HumanDuration::secs(1),
        ..cfg(dir)
    })
    .await
}

fn event(id: EventId, status: EventStatus) -> Event {
    Event {
        id,
        provider: "p".into(),
        endpoint: "/p".into(),
        event_type: "t".into(),
        received_at: chrono::Utc::now(),
        status,
        idempotency_key: "k".into(),
        fingerprint: "f".into(),
        body: b"{}".to_vec(),
        data: Some(serde_json::json!({})),
        meta: BTreeMap::new(),
        flags: vec![],
        conflict_of: None,
        quarantine_reason: None,
        secret_paths: vec![],
        route: None,
    }
}

/// Writes what the commit sequence of earlier versions left after a crash between its
/// claim and its done-record: a `pending` idempotency record of another process run.
fn old_pending(backend: &SledBackend, key_: &str, fp: &str) -> EventId {
    let id = EventId::new();
    let rec = IdemRecord {
        fingerprint: fp.into(),
        state: IdemState::Pending {
            boot: 7,
            event_id: id,
        },
    };
    backend
        .inner
        .tree
        .insert(key(IDEM, key_.as_bytes()), encode(&rec))
        .unwrap();
    id
}

fn req<'a>(key: &'a str, fp: &'a str) -> ClaimRequest<'a> {
    ClaimRequest {
        key,
        fingerprint: fp,
        wait: Duration::ZERO,
    }
}

/// Claims `key` and stores an event of `status` under it; returns the event.
async fn put(store: &Store, key: &str, status: EventStatus) -> Event {
    put_body(store, key, "f", status).await
}

/// [`put`] of a body whose fingerprint is `fp`; the event gets the id the claim reserved
/// (a taken-over claim's, when there was one).
async fn put_body(store: &Store, key: &str, fp: &str, status: EventStatus) -> Event {
    let Claim::Owned(c) = store.claim(&req(key, fp)).await.unwrap() else {
        panic!("{key} is taken")
    };
    let mut e = event(c.event_id(), status);
    e.idempotency_key = key.into();
    store
        .commit(c, e.clone(), &StoredResponse::empty(204), None)
        .await
        .unwrap();
    e
}

#[tokio::test]
async fn claim_is_exclusive_and_done_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let Claim::Owned(c) = store.claim(&req("k", "f1")).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        store.claim(&req("k", "f1")).await,
        Err(Error::InFlight)
    ));
    let e = event(c.event_id(), EventStatus::Received);
    let resp = StoredResponse::empty(204);
    store.commit(c, e.clone(), &resp, None).await.unwrap();
    match store.claim(&req("k", "f2")).await.unwrap() {
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
    assert_eq!(store.event(e.id).await.unwrap(), Some(e));
}

#[tokio::test]
async fn a_dropped_claim_frees_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let c = store.claim(&req("k", "f")).await.unwrap();
    drop(c);
    assert!(matches!(
        store.claim(&req("k", "f")).await.unwrap(),
        Claim::Owned(_)
    ));
}

#[tokio::test]
async fn pending_claims_of_an_earlier_run_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = {
        let (store, backend) = open(dir.path()).await;
        let id = old_pending(&backend, "k", "f");
        store.flush().await.unwrap();
        drop(store);
        drop(backend);
        id
    };
    let (store, _) = open(dir.path()).await;
    let Claim::Owned(c) = store.claim(&req("k", "f")).await.unwrap() else {
        panic!("a stale claim is taken over")
    };
    assert_eq!(c.event_id(), reserved, "the reserved event id is reused");
}

/// The defect of issue 9: a crash after the event was written but before it was in the
/// inbox (a store written by a version whose commit wrote the event first); the provider
/// resends, the claim is taken over, and the event must still be routed.
#[tokio::test]
async fn a_taken_over_claim_puts_its_waiting_event_in_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, backend) = open(dir.path()).await;
        let id = old_pending(&backend, "k", "f");
        let mut e = event(id, EventStatus::Received);
        e.idempotency_key = "k".into();
        backend
            .inner
            .tree
            .insert(key(EVENT, id.as_bytes()), encode(&e))
            .unwrap();
        store.flush().await.unwrap();
        id
    };
    let (store, _) = open(dir.path()).await;
    assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
    put(&store, "k", EventStatus::Received).await;
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![id]);
}

#[tokio::test]
async fn the_start_up_check_mends_the_inbox_after_a_crash_only() {
    let dir = tempfile::tempdir().unwrap();
    let (waiting, routed) = {
        let (store, backend) = open(dir.path()).await;
        let waiting = put(&store, "a", EventStatus::Received).await;
        let routed = put(&store, "b", EventStatus::Received).await;
        store.route_done(&routed, None, vec![]).await.unwrap();
        // Break the invariant both ways.
        let tree = &backend.inner.tree;
        tree.remove(key(INBOX, waiting.id.as_bytes())).unwrap();
        tree.insert(key(INBOX, routed.id.as_bytes()), b"b".as_slice())
            .unwrap();
        // No graceful stop: the process "crashes".
        backend.inner.db.flush().unwrap();
        (waiting, routed)
    };
    let (store, _) = open(dir.path()).await;
    let repaired = store.consistency_check().await.unwrap();
    assert_eq!(
        repaired,
        Repaired {
            inbox_added: 1,
            inbox_removed: 1
        }
    );
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![waiting.id]);
    let _ = routed;
    // After a graceful stop there is nothing to look for.
    store.flush().await.unwrap();
    drop(store);
    let (store, _) = open(dir.path()).await;
    assert_eq!(
        store.consistency_check().await.unwrap(),
        Repaired::default()
    );
}

/// An earlier version's commit wrote the inbox entry first: a crash right after it left
/// the entry, a pending record and no event. The entry stays while the record names its
/// key; the key's next request takes the claim over and stores the event under the id
/// the entry names, so it is routed.
#[tokio::test]
async fn an_inbox_entry_ahead_of_its_event_is_kept_while_its_claim_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    let id = old_pending(&backend, "k", "f");
    backend
        .inner
        .tree
        .insert(key(INBOX, id.as_bytes()), inbox_value(0, b"k"))
        .unwrap();
    store.inbox_remove(id).await.unwrap();
    assert_eq!(
        store.take_inbox(None, 10).await.unwrap(),
        vec![id],
        "kept while the claim is pending"
    );
    let e = put(&store, "k", EventStatus::Received).await;
    assert_eq!(e.id, id, "the stale claim is taken over");
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![id]);
    store.route_done(&e, None, vec![]).await.unwrap();
    assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
    // An entry with neither an event nor a pending record stands for nothing.
    let stray = EventId::new();
    backend
        .inner
        .tree
        .insert(key(INBOX, stray.as_bytes()), b"gone".as_slice())
        .unwrap();
    store.inbox_remove(stray).await.unwrap();
    assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
}

/// A sweep at `at` (a retention of one second past both events) that removes `gone`
/// with its key and keeps `kept`, and counts exactly that.
async fn sweep_removes_one_keeps_one(store: &Store, at: u64, gone: EventId, kept: EventId) {
    let swept = store.sweep(at, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            keys: 1,
            events: 1,
            kept: 1
        }
    );
    assert!(store.event(gone).await.unwrap().is_none());
    assert!(store.event(kept).await.unwrap().is_some());
}

#[tokio::test]
async fn sweep_removes_expired_but_keeps_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open_retaining_1s(dir.path()).await;
    let ok = put(&store, "a", EventStatus::Received).await;
    store.route_done(&ok, None, vec![]).await.unwrap();
    let bad = put(&store, "b", EventStatus::Quarantined).await;
    // The ids are the expiry index: a commit writes no expiry entry.
    let expiry_entries = || backend.inner.tree.scan_prefix([EXPIRY]).count();
    assert_eq!(expiry_entries(), 0);
    assert_eq!(
        store
            .sweep(now_ms(), Duration::from_secs(60))
            .await
            .unwrap(),
        Swept::default()
    );
    let later = now_ms() + 2_000;
    sweep_removes_one_keeps_one(&store, later, ok.id, bad.id).await;
    assert!(matches!(
        store.claim(&req("a", "f")).await.unwrap(),
        Claim::Owned(_)
    ));
    // The kept event's expiry moved: a second sweep at the same time removes nothing.
    assert_eq!(expiry_entries(), 1);
    assert_eq!(
        store.sweep(later, Duration::from_secs(60)).await.unwrap(),
        Swept::default()
    );
    // It comes back to the sweep a retention later, and is kept again.
    assert_eq!(
        store
            .sweep(later + 61_000, Duration::from_secs(60))
            .await
            .unwrap(),
        Swept {
            kept: 1,
            ..Swept::default()
        }
    );
    assert!(store.event(bad.id).await.unwrap().is_some());
}

#[tokio::test]
async fn pages_are_newest_first_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let mut ids = vec![];
    for i in 0..5 {
        let status = if i % 2 == 0 {
            EventStatus::Received
        } else {
            EventStatus::Quarantined
        };
        let Claim::Owned(c) = store.claim(&req(&format!("k{i}"), "f")).await.unwrap() else {
            panic!()
        };
        let mut e = event(c.event_id(), status);
        e.event_type = format!("t{}", i % 2);
        ids.push(e.id);
        store
            .commit(c, e.clone(), &StoredResponse::empty(204), None)
            .await
            .unwrap();
    }
    let all = store
        .events(&EventFilter::default(), None, 2)
        .await
        .unwrap();
    assert_eq!(
        all.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let rest = store
        .events(&EventFilter::default(), all.next, 10)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert!(rest.next.is_none());
    let q = EventFilter {
        status: Some(EventStatus::Quarantined),
        ..Default::default()
    };
    let qp = store.events(&q, None, 10).await.unwrap();
    assert_eq!(
        qp.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[3], ids[1]]
    );
    let t0 = EventFilter {
        event_type: Some("t0".into()),
        ..Default::default()
    };
    assert_eq!(store.events(&t0, None, 10).await.unwrap().items.len(), 3);
}

#[tokio::test]
async fn schedule_entries_of_the_old_format_move_to_their_channel() {
    use super::outbox::due_key;
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    let e = put(&store, "k", EventStatus::Received).await;
    let spec = ActionSpec {
        channel: "email".into(),
        payload: serde_json::json!({"to": "a@example.com", "subject": "s", "text": "t"}),
    };
    let actions = store
        .route_done(&e, None, vec![spec])
        .await
        .unwrap()
        .unwrap();
    let a = &actions[0];
    let at = a.due_ms.unwrap();
    // As the schedule entry was written before queues were kept per channel.
    let tree = &backend.inner.tree;
    tree.remove(due_key("email", at, &a.id)).unwrap();
    let mut old = vec![DUE];
    old.extend(at.to_be_bytes());
    old.extend(a.id.0.as_bytes());
    tree.insert(old, &[]).unwrap();
    let later = at + 1;
    let take = |store: Store| async move { store.take_due("email", later, 8).await.unwrap() };
    assert!(take(store.clone()).await.is_empty());
    store.resume_interrupted().await.unwrap();
    assert_eq!(
        take(store.clone()).await,
        vec![Due {
            id: a.id,
            at_ms: at
        }]
    );
    assert!(tree.scan_prefix([DUE, 0]).next().is_none());
}

#[tokio::test]
async fn a_schedule_entry_with_no_action_behind_it_is_dropped() {
    use super::outbox::due_key;
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    let orphan = ActionId(uuid::Uuid::now_v7());
    backend
        .inner
        .tree
        .insert(due_key("email", 5, &orphan), &[])
        .unwrap();
    let due = store.take_due("email", 10, 8).await.unwrap();
    assert_eq!(
        due,
        vec![Due {
            id: orphan,
            at_ms: 5
        }]
    );
    assert!(
        store.take_due("sms", 10, 8).await.unwrap().is_empty(),
        "per channel"
    );
    assert!(
        store
            .start_attempt("email", due[0])
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.take_due("email", 10, 8).await.unwrap().is_empty());
    assert_eq!(store.next_due("email").await.unwrap(), None);
}

#[tokio::test]
async fn the_inbox_is_read_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
    for id in &ids {
        backend
            .inner
            .tree
            .insert(key(INBOX, id.as_bytes()), &[])
            .unwrap();
    }
    let take = |after| {
        let store = store.clone();
        async move { store.take_inbox(after, 3).await.unwrap() }
    };
    let first = take(None).await;
    assert_eq!(first, ids[..3]);
    let rest = take(first.last().copied()).await;
    assert_eq!(rest, ids[3..]);
    assert!(take(rest.last().copied()).await.is_empty());
}

#[tokio::test]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let mut tasks = vec![];
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            put(&store, &format!("k{i}"), EventStatus::Received).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.event_count().await.unwrap(), 200);
    let flushes = store.stats().flushes.unwrap();
    assert!(flushes < 200, "flushes: {flushes}");
}

/// Concurrent commits are applied as combined batches, and a claim is held until its
/// batch is applied: a duplicate never finds the key free in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_are_combined_and_claims_held_until_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let mut tasks = vec![];
    for i in 0..400 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{}", i % 200);
            match store
                .claim(&ClaimRequest {
                    key: &key,
                    fingerprint: "f",
                    wait: Duration::from_secs(30),
                })
                .await
                .unwrap()
            {
                Claim::Owned(c) => {
                    let mut e = event(c.event_id(), EventStatus::Received);
                    e.idempotency_key = key.clone();
                    store
                        .commit(c, e.clone(), &StoredResponse::empty(204), None)
                        .await
                        .unwrap();
                    store.route_done(&e, None, vec![]).await.unwrap();
                    1
                }
                Claim::Done { response, .. } => {
                    assert_eq!(response, StoredResponse::empty(204));
                    0
                }
            }
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await.unwrap();
    }
    assert_eq!(stored, 200, "each key stored once");
    assert_eq!(store.event_count().await.unwrap(), 200);
    assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
    // Route runs that queue nothing are plain writes; the 200 commits went to the flusher,
    // which applies what queued up before each flush as one batch.
    let (batches, jobs) = store.stats().batches.unwrap();
    assert_eq!(jobs, 200, "one job per commit");
    assert!(
        batches <= store.stats().flushes.unwrap(),
        "at most one batch per flush: {batches}"
    );
}

/// A store an earlier version wrote (claims as durable records, a commit as ordered single
/// writes, with a crash between two of them) opens and works: its events are read, its
/// finished keys answer duplicates, and its stale claim is taken over.
#[tokio::test]
async fn a_store_of_the_earlier_format_opens_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let (done, stale) = {
        let (_store, backend) = open(dir.path()).await;
        let tree = &backend.inner.tree;
        // A finished key, written as the ordered sequence did.
        let done = event(EventId::new(), EventStatus::Received);
        let idem = b"done-key";
        tree.insert(
            expiry_key(now_ms() + 86_400_000, done.id.as_bytes()),
            idem.as_slice(),
        )
        .unwrap();
        // The earlier version's inbox entries were empty.
        tree.insert(key(INBOX, done.id.as_bytes()), &[]).unwrap();
        tree.insert(key(EVENT, done.id.as_bytes()), encode(&done))
            .unwrap();
        tree.insert(
            key(IDEM, idem),
            encode(&IdemRecord {
                fingerprint: "f".into(),
                state: IdemState::Done {
                    event_id: Some(done.id),
                    response: StoredResponse::empty(204),
                    until_ms: None,
                },
            }),
        )
        .unwrap();
        // A crash after the claim of another key.
        let stale = old_pending(&backend, "stale-key", "g");
        // No graceful stop.
        backend.inner.db.flush().unwrap();
        (done, stale)
    };
    let (store, _) = open(dir.path()).await;
    assert_eq!(
        store.consistency_check().await.unwrap(),
        Repaired::default()
    );
    assert_eq!(store.event(done.id).await.unwrap(), Some(done.clone()));
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![done.id]);
    match store.claim(&req("done-key", "f")).await.unwrap() {
        Claim::Done { event_id, .. } => assert_eq!(event_id, Some(done.id)),
        other => panic!("a duplicate, not {other:?}"),
    }
    let e = put_body(&store, "stale-key", "g", EventStatus::Received).await;
    assert_eq!(e.id, stale, "the stale claim is taken over");
    store.route_done(&done, None, vec![]).await.unwrap();
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![stale]);
    assert!(matches!(
        store.claim(&req("stale-key", "g")).await.unwrap(),
        Claim::Done { .. }
    ));
}

#[test]
fn the_status_is_read_without_decoding_the_event() {
    for status in EventStatus::ALL {
        let e = event(EventId::new(), status);
        assert_eq!(status_of(&encode(&e)), Some(status));
    }
    let mut e = event(EventId::new(), EventStatus::Routed);
    e.data = Some(serde_json::json!({"status": "received"}));
    assert_eq!(status_of(&encode(&e)), Some(EventStatus::Routed));
}

#[tokio::test]
async fn the_run_count_rides_on_the_inbox_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let e = put(&store, "k", EventStatus::Received).await;
    assert_eq!(store.route_starts(e.id).await.unwrap(), 0);
    store.set_route_starts(e.id, 1).await.unwrap();
    store.set_route_starts(e.id, 2).await.unwrap();
    assert_eq!(store.route_starts(e.id).await.unwrap(), 2);
    // Still in the inbox, with its key: an entry ahead of its event still finds its claim.
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![e.id]);
    store.inbox_remove(e.id).await.unwrap();
    assert_eq!(
        store.take_inbox(None, 10).await.unwrap(),
        vec![e.id],
        "it waits"
    );
    // Recording the route forgets the count; setting it does not bring the entry back.
    store.route_failed(&e, None, "x".into()).await.unwrap();
    store.set_route_starts(e.id, 1).await.unwrap();
    assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
    assert_eq!(store.route_starts(e.id).await.unwrap(), 0);
    // A replay starts again at zero.
    store.replay_event(e.id, None).await.unwrap();
    assert_eq!(store.route_starts(e.id).await.unwrap(), 0);
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), vec![e.id]);
}

/// Records what a commit asks of the route workers' door.
struct Door {
    calls: std::sync::Mutex<Vec<&'static str>>,
    room: bool,
    /// Whether the event was in the inbox when `reserve` was called.
    inbox_at_reserve: std::sync::Mutex<Option<bool>>,
    backend: Arc<SledBackend>,
    /// See [`crate::store::Handoff::sees_every_run`].
    sees_every_run: bool,
}

impl crate::store::Handoff for Door {
    fn reserve(&self, id: EventId) -> bool {
        let seen = self
            .backend
            .inner
            .tree
            .get(key(INBOX, id.as_bytes()))
            .unwrap()
            .is_some();
        *self.inbox_at_reserve.lock().unwrap() = Some(seen);
        self.calls.lock().unwrap().push("reserve");
        true
    }

    fn take(&self, _event: Event) -> bool {
        self.calls.lock().unwrap().push("take");
        if !self.room {
            self.cancel(EventId::new());
        }
        self.room
    }

    fn cancel(&self, _id: EventId) {
        self.calls.lock().unwrap().push("cancel");
    }

    fn sees_every_run(&self) -> bool {
        self.sees_every_run
    }
}

fn door(backend: &Arc<SledBackend>, room: bool) -> Arc<Door> {
    Arc::new(Door {
        calls: Default::default(),
        room,
        inbox_at_reserve: Default::default(),
        backend: backend.clone(),
        sees_every_run: false,
    })
}

/// The route workers of worker processes: they see every run.
fn process_door(backend: &Arc<SledBackend>) -> Arc<Door> {
    Arc::new(Door {
        sees_every_run: true,
        ..Arc::into_inner(door(backend, true)).unwrap()
    })
}

fn on_disk(backend: &SledBackend, id: EventId) -> bool {
    let k = key(INBOX, id.as_bytes());
    backend.inner.tree.get(k).unwrap().is_some()
}

/// An event handed to route workers that see every run has its inbox entry in memory: the
/// inbox lists it, in order with the entries on disk, until its route is recorded. A
/// graceful stop writes what is left; after a crash the start-up check puts it back.
#[tokio::test]
async fn a_handed_event_is_in_the_inbox_in_memory_until_it_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let (waiting, listed, stopped) = {
        let (store, backend) = open(dir.path()).await;
        store.set_handoff(Some(process_door(&backend)));
        let routed = put(&store, "a", EventStatus::Received).await;
        let waiting = put(&store, "b", EventStatus::Received).await;
        // In process, each run is counted in the entry on disk.
        store.set_handoff(Some(door(&backend, true)));
        let listed = put(&store, "c", EventStatus::Received).await;
        assert!(!on_disk(&backend, routed.id) && !on_disk(&backend, waiting.id));
        assert!(on_disk(&backend, listed.id));
        assert_eq!(
            store.take_inbox(None, 10).await.unwrap(),
            [routed.id, waiting.id, listed.id]
        );

        store.route_done(&routed, None, vec![]).await.unwrap();
        // Pages of one: the cursor walks both kinds of entry in order.
        assert_eq!(store.take_inbox(None, 1).await.unwrap(), [waiting.id]);
        assert_eq!(
            store.take_inbox(Some(waiting.id), 1).await.unwrap(),
            [listed.id]
        );
        assert!(
            store
                .take_inbox(Some(listed.id), 1)
                .await
                .unwrap()
                .is_empty()
        );
        // No graceful stop: the process "crashes" with `waiting` in memory only.
        backend.inner.db.flush().unwrap();
        drop((store, backend));

        let (store, backend) = open(dir.path()).await;
        let repaired = store.consistency_check().await.unwrap();
        assert_eq!(
            repaired,
            Repaired {
                inbox_added: 1,
                inbox_removed: 0
            }
        );
        assert!(on_disk(&backend, waiting.id));
        // A graceful stop writes the entry of an event that still waits.
        store.set_handoff(Some(process_door(&backend)));
        let stopped = put(&store, "d", EventStatus::Received).await;
        let failed = put(&store, "e", EventStatus::Received).await;
        store
            .route_failed(&failed, None, "broken".into())
            .await
            .unwrap();
        assert!(!on_disk(&backend, stopped.id));
        store.flush().await.unwrap();
        assert!(on_disk(&backend, stopped.id));
        assert!(!on_disk(&backend, failed.id));
        (waiting, listed, stopped)
    };
    let (store, _) = open(dir.path()).await;
    assert_eq!(
        store.consistency_check().await.unwrap(),
        Repaired::default()
    );
    assert_eq!(
        store.take_inbox(None, 10).await.unwrap(),
        [waiting.id, listed.id, stopped.id]
    );
}

/// After a crash the start-up check reads only the events received since the settled
/// time, which the store brings forward while it runs: an event before it is routed or
/// has its entry on disk. An entry on disk before it is still looked at.
#[tokio::test]
async fn the_start_up_check_reads_only_the_events_since_the_settled_time() {
    let dir = tempfile::tempdir().unwrap();
    let (waiting, stale) = {
        let (store, backend) = open(dir.path()).await;
        // A new store has nothing to look for; the settled time waits for the check.
        store.consistency_check().await.unwrap();
        store.set_handoff(Some(process_door(&backend)));
        let routed = put(&store, "a", EventStatus::Received).await;
        store.route_done(&routed, None, vec![]).await.unwrap();
        let waiting = put(&store, "b", EventStatus::Received).await;
        assert!(!on_disk(&backend, waiting.id));
        // The settler runs once a second; the entry in memory holds it back.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let settled = loop {
            if let Some(t) = backend.inner.settled().unwrap() {
                break t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no settled time written"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            settled <= id_ms(&waiting.id.0),
            "{settled} is past {}",
            waiting.id
        );
        let tree = &backend.inner.tree;
        // An event from before the settled time that waits with no entry: a state the
        // store never leaves, put here to show the check does not read that far back.
        let old = EventId(first_id_at(settled - 60_000));
        tree.insert(
            key(EVENT, old.as_bytes()),
            encode(&event(old, EventStatus::Received)),
        )
        .unwrap();
        // An entry on disk, from before the settled time, of an event routed since.
        let stale = EventId(first_id_at(settled - 30_000));
        tree.insert(
            key(EVENT, stale.as_bytes()),
            encode(&event(stale, EventStatus::Routed)),
        )
        .unwrap();
        tree.insert(key(INBOX, stale.as_bytes()), inbox_value(0, b"k"))
            .unwrap();
        // No graceful stop: the process "crashes" with `waiting` in memory only.
        backend.inner.db.flush().unwrap();
        drop((store, backend));
        (waiting, stale)
    };
    let (store, backend) = open(dir.path()).await;
    assert_eq!(
        store.consistency_check().await.unwrap(),
        Repaired {
            inbox_added: 1,
            inbox_removed: 1
        }
    );
    assert!(on_disk(&backend, waiting.id));
    assert!(!on_disk(&backend, stale));
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), [waiting.id]);
}

/// The settled time stays before every event that may still rely on an entry in memory:
/// the oldest entry kept in memory, and the id of every claim not yet committed.
#[tokio::test]
async fn the_settled_time_stays_before_what_relies_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    let inner = &backend.inner;
    let now = now_ms();
    assert!(inner.settled_before() <= now - SETTLE_MARGIN_MS);
    let old = EventId(first_id_at(now - 60_000));
    inner.unlisted().insert(old, b"k".to_vec());
    assert_eq!(inner.settled_before(), now - 60_000);
    inner.unlisted().remove(&old);
    let Claim::Owned(c) = store.claim(&req("k", "f")).await.unwrap() else {
        panic!("k is taken")
    };
    let id = c.event_id();
    assert_eq!(inner.claims.ids().first(), Some(&id));
    store
        .commit(
            c,
            event(id, EventStatus::Received),
            &StoredResponse::empty(204),
            None,
        )
        .await
        .unwrap();
    assert!(inner.claims.ids().is_empty(), "let go at the commit");
    let Claim::Owned(c) = store.claim(&req("l", "f")).await.unwrap() else {
        panic!("l is taken")
    };
    drop(c);
    assert!(inner.claims.ids().is_empty(), "let go when released");
}

/// A settled time ahead of the clock (the clock stepped back while the process was down)
/// is brought back at the start, before any event of the run is stored.
#[tokio::test]
async fn a_settled_time_ahead_of_the_clock_is_brought_back_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_, backend) = open(dir.path()).await;
        let ahead = now_ms() + 3_600_000;
        backend
            .inner
            .tree
            .insert(SETTLED, &ahead.to_be_bytes())
            .unwrap();
        backend.inner.db.flush().unwrap();
    }
    let (_, backend) = open(dir.path()).await;
    let settled = backend.inner.settled().unwrap().unwrap();
    assert!(settled <= now_ms() - SETTLE_MARGIN_MS, "{settled}");
}

/// A stop after a crash, before the start-up check has finished, is not marked clean: the
/// check is what finds the events whose inbox entries were in memory, so the next start
/// runs it again.
#[tokio::test]
async fn a_stop_before_the_start_up_check_has_finished_is_not_clean() {
    let dir = tempfile::tempdir().unwrap();
    let waiting = {
        let (store, backend) = open(dir.path()).await;
        store.set_handoff(Some(process_door(&backend)));
        let waiting = put(&store, "a", EventStatus::Received).await;
        // A crash, with the entry in memory only.
        backend.inner.db.flush().unwrap();
        waiting
    };
    {
        // Stopped gracefully before the check ran.
        let (store, backend) = open(dir.path()).await;
        assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
        store.flush().await.unwrap();
        assert!(backend.inner.tree.get(CLEAN).unwrap().is_none());
    }
    let (store, _) = open(dir.path()).await;
    assert_eq!(store.consistency_check().await.unwrap().inbox_added, 1);
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), [waiting.id]);
}

/// A graceful stop that comes while a handed commit is still being written lists its
/// event too: the commit's batch may still land after the list is written.
#[tokio::test]
async fn a_stop_lists_a_handed_commit_still_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    let id = EventId::new();
    backend.inner.unlisted().insert(id, b"pomelo:k".to_vec());
    store.consistency_check().await.unwrap();
    store.flush().await.unwrap();
    let v = backend.inner.tree.get(key(INBOX, id.as_bytes())).unwrap();
    assert_eq!(v.as_deref().map(parse_inbox), Some((0, &b"pomelo:k"[..])));
}

/// A commit reserves its event before the inbox shows it (so the inbox path never takes
/// it too), then hands it over; the inbox entry stays for a restart. Without room, the
/// reservation is given up and the event waits in the inbox.
#[tokio::test]
async fn commits_hand_their_event_to_the_route_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;

    let taken = door(&backend, true);
    store.set_handoff(Some(taken.clone()));
    let e = put(&store, "a", EventStatus::Received).await;
    assert_eq!(*taken.calls.lock().unwrap(), ["reserve", "take"]);
    assert_eq!(*taken.inbox_at_reserve.lock().unwrap(), Some(false));
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), [e.id]);

    // A quarantined event never waits for a route.
    put(&store, "q", EventStatus::Quarantined).await;
    assert_eq!(taken.calls.lock().unwrap().len(), 2);

    let full = door(&backend, false);
    store.set_handoff(Some(full.clone()));
    let f = put(&store, "b", EventStatus::Received).await;
    assert_eq!(*full.calls.lock().unwrap(), ["reserve", "take", "cancel"]);
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), [e.id, f.id]);

    // A commit that never finishes gives its reservation up.
    let abandoned = door(&backend, true);
    store.set_handoff(Some(abandoned.clone()));
    let Claim::Owned(c) = store.claim(&req("c", "f")).await.unwrap() else {
        panic!("c is taken")
    };
    let mut g = event(c.event_id(), EventStatus::Received);
    g.idempotency_key = "c".into();
    let response = StoredResponse::empty(204);
    let mut commit = Box::pin(store.commit(c, g.clone(), &response, None));
    assert!(futures_util::FutureExt::now_or_never(commit.as_mut()).is_none());
    drop(commit);
    assert_eq!(*abandoned.calls.lock().unwrap(), ["reserve", "cancel"]);
}

/// An earlier version wrote an expiry entry with every commit. Such an entry, come due
/// for an event that the pass's scan of the ids looks at too, is not counted twice.
#[tokio::test]
async fn an_earlier_versions_expiry_entry_is_looked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open_retaining_1s(dir.path()).await;
    let gone = put(&store, "gone", EventStatus::Received).await;
    store.route_done(&gone, None, vec![]).await.unwrap();
    let waiting = put(&store, "waiting", EventStatus::Received).await;
    let due = now_ms() + 1_000;
    for e in [&gone, &waiting] {
        backend
            .inner
            .tree
            .insert(
                expiry_key(due, e.id.as_bytes()),
                e.idempotency_key.as_bytes(),
            )
            .unwrap();
    }
    sweep_removes_one_keeps_one(&store, now_ms() + 2_000, gone.id, waiting.id).await;
    // Only the kept event's own new entry is left.
    let entries: Vec<_> = backend
        .inner
        .tree
        .scan_prefix([EXPIRY])
        .keys()
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(&entries[0][9..], waiting.id.as_bytes());
}

#[tokio::test]
async fn past_the_most_entries_kept_in_memory_a_handed_event_is_listed_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    store.set_handoff(Some(process_door(&backend)));
    // A routing backlog as long as the cap, in memory.
    let backlog: Vec<EventId> = (0..MOST_UNLISTED).map(|_| EventId::new()).collect();
    backend
        .inner
        .unlisted()
        .extend(backlog.iter().map(|id| (*id, b"backlog".to_vec())));
    let past = put(&store, "past", EventStatus::Received).await;
    assert!(on_disk(&backend, past.id));
    assert!(!backend.inner.is_unlisted(past.id));
    // One routed: room for one more in memory.
    backend.inner.unlisted().remove(&backlog[0]);
    let within = put(&store, "within", EventStatus::Received).await;
    assert!(!on_disk(&backend, within.id));
    assert!(backend.inner.is_unlisted(within.id));
}

/// A commit whose batch sled refuses leaves nothing behind: the request gets an error
/// (the provider retries), the event is neither stored nor in the inbox (not even the
/// entry kept in memory for the route workers), and the key is free again, so the retry
/// is stored, once, and routed.
#[tokio::test]
async fn a_refused_commit_leaves_no_event_no_inbox_entry_and_frees_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open(dir.path()).await;
    store.set_handoff(Some(process_door(&backend)));

    let Claim::Owned(c) = store.claim(&req("k", "f")).await.unwrap() else {
        panic!("k is taken")
    };
    let refused = event(c.event_id(), EventStatus::Received);
    backend.inner.durability.fail_next_batch.store(true, SeqCst);
    let err = store
        .commit(c, refused.clone(), &StoredResponse::empty(204), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(!backend.inner.is_unlisted(refused.id));
    assert!(store.take_inbox(None, 10).await.unwrap().is_empty());
    assert_eq!(store.event(refused.id).await.unwrap(), None);

    // The retry: the key is free, and this time the batch goes through.
    let stored = put(&store, "k", EventStatus::Received).await;
    assert_eq!(store.event_count().await.unwrap(), 1);
    assert_eq!(store.take_inbox(None, 10).await.unwrap(), [stored.id]);
    assert!(matches!(
        store.claim(&req("k", "f")).await.unwrap(),
        Claim::Done { event_id: Some(id), .. } if id == stored.id
    ));
}

/// Opens a sled database in `dir` as the store does. A database just dropped may still be
/// locked for a moment (sled's background threads let go of it after the drop), so a
/// reopen waits for the lock, up to 10 s.
fn open_sled(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if std::time::Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The names of the snapshot files sled keeps in `dir` (`snap.<lsn in hex>`).
fn snapshots(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
        .collect();
    names.sort();
    names
}

/// The snapshots our sled patch writes while the database runs (`Db::checkpoint`) are
/// right: taken over and over while keys are written, overwritten and removed (so that
/// sled frees segments and reuses them), the database reopens, from the newest snapshot
/// and the log after it, to exactly what was written last.
#[test]
fn snapshots_taken_while_the_log_is_written_reopen_to_the_last_writes() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_sled(dir.path());
    let db = open();
    let at_open = snapshots(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let taker = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut written = 0;
            while !stop.load(SeqCst) {
                written += usize::from(db.checkpoint().unwrap());
                // Room for sled to reuse the segments freed meanwhile.
                std::thread::sleep(Duration::from_millis(20));
            }
            written
        })
    };
    let mut expected = BTreeMap::new();
    let mut bytes = 0;
    for round in 0..30u32 {
        for k in 0..1000u32 {
            if (k + round) % 7 == 0 {
                db.remove(k.to_be_bytes()).unwrap();
                expected.remove(&k);
            } else {
                let v = vec![(round % 251) as u8; 1000 + (k as usize % 50)];
                bytes += v.len();
                db.insert(k.to_be_bytes(), v.clone()).unwrap();
                expected.insert(k, v);
            }
        }
        db.flush().unwrap();
    }
    stop.store(true, SeqCst);
    let written = taker.join().unwrap();
    assert!(written >= 3, "only {written} snapshots were written");
    // Segments were freed and reused meanwhile (none is while a snapshot reads it: with
    // every freed segment kept while one ran, and no pause between them, the file grew
    // to twice the bytes written).
    let file = std::fs::metadata(dir.path().join("db")).unwrap().len() as usize;
    assert!(file < bytes, "{file} bytes of file for {bytes} written");
    // Written after the last snapshot: the start replays it.
    db.insert(b"tail", b"t".to_vec()).unwrap();
    db.flush().unwrap();
    let before_reopen = snapshots(dir.path());
    assert_eq!(before_reopen.len(), 1, "{before_reopen:?}");
    assert!(before_reopen > at_open, "{at_open:?} → {before_reopen:?}");
    drop(db);

    let db = open();
    for (k, v) in &expected {
        assert_eq!(
            db.get(k.to_be_bytes()).unwrap().as_deref(),
            Some(&v[..]),
            "key {k}"
        );
    }
    assert_eq!(db.get(b"tail").unwrap().as_deref(), Some(&b"t"[..]));
    assert_eq!(db.len(), expected.len() + 1);
}

/// The store writes sled's snapshot in the background once `store.checkpoint_after` of log
/// was written since the last one, and reopens to every event it had.
#[tokio::test]
async fn the_store_writes_a_snapshot_once_enough_log_was_written() {
    let dir = tempfile::tempdir().unwrap();
    write_until_a_snapshot_then_reopen(dir.path(), 400, |_| 4096).await;
}

/// A page too large for a log message (sled's limit is a quarter of a 512 KiB segment) is
/// written as a file of its own, a blob, which sled (patched: see `vendor/sled/PATCHED.md`)
/// syncs before the log points at it. Events of 200 KB (the body limit is 1 MiB) go that
/// way; they survive snapshots written meanwhile and a reopen, byte for byte. (A blob puts
/// only a pointer in the log, so the small events between them are what fill the log up
/// to a snapshot.)
#[tokio::test]
async fn events_too_large_for_the_log_survive_snapshots_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    write_until_a_snapshot_then_reopen(
        dir.path(),
        400,
        |n| {
            if n % 10 == 0 { 200_000 } else { 4096 }
        },
    )
    .await;
    let blobs = std::fs::read_dir(dir.path().join("db").join("blobs"))
        .unwrap()
        .count();
    assert!(blobs > 0, "no blob was written");
}

/// Commits `count` events, the `n`th with a body of `len(n)` bytes, to a store that writes
/// a snapshot after each MiB of log, waits for a snapshot, then reopens the store and
/// reads every event back whole.
async fn write_until_a_snapshot_then_reopen(
    dir: &std::path::Path,
    count: usize,
    len: impl Fn(usize) -> usize,
) {
    let cfg = StoreConfig {
        checkpoint_after: crate::units::ByteSize::mib(1),
        ..cfg(dir)
    };
    let db_dir = dir.join("db");
    let (store, backend) = open_with(&cfg).await;
    let at_open = snapshots(&db_dir);
    let mut written = Vec::new();
    let template = event(EventId::new(), EventStatus::Received);
    for n in 0..count {
        let Claim::Owned(c) = store.claim(&req(&format!("k{n}"), "f")).await.unwrap() else {
            panic!("k{n} is taken")
        };
        // Every body differs, so a page read from the wrong place shows.
        let mut body = vec![b'a' + (n % 26) as u8; len(n)];
        body[..8].copy_from_slice(&(n as u64).to_be_bytes());
        let e = Event {
            id: c.event_id(),
            idempotency_key: format!("k{n}"),
            body,
            ..template.clone()
        };
        store
            .commit(c, e.clone(), &StoredResponse::empty(204), None)
            .await
            .unwrap();
        written.push(e);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while snapshots(&db_dir) == at_open {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot after 10 s: {at_open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(store);
    drop(backend);

    let (store, _) = open_with(&cfg).await;
    for e in written {
        let read = store.event(e.id).await.unwrap();
        assert!(
            read.as_ref() == Some(&e),
            "{} differs after the reopen",
            e.id
        );
    }
}

/// A snapshot a crash left half written (sled names it `.generating` until it is whole,
/// then renames it) is not taken for the newest: the database still opens, from the last
/// whole snapshot, and the next snapshot written removes the leftover. (Unpatched, sled
/// read it, found its checksum wrong and refused to open. With snapshots written while
/// the store runs, a `kill -9` can land in that window about once a second under load.)
#[test]
fn a_half_written_snapshot_left_by_a_crash_is_ignored_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_sled(dir.path());
    let db = open();
    for k in 0..100u32 {
        db.insert(k.to_be_bytes(), vec![7u8; 500]).unwrap();
    }
    db.flush().unwrap();
    assert!(db.checkpoint().unwrap());
    let whole = snapshots(dir.path());
    assert_eq!(whole.len(), 1, "{whole:?}");
    drop(db);
    // What a crash in the middle of writing a later snapshot leaves.
    let half = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&half, b"only the first bytes of a snapshot").unwrap();

    let db = open();
    assert_eq!(db.len(), 100);
    assert_eq!(
        db.get(5u32.to_be_bytes()).unwrap().as_deref(),
        Some(&[7u8; 500][..])
    );
    db.insert(b"more", b"m".to_vec()).unwrap();
    db.flush().unwrap();
    assert!(db.checkpoint().unwrap());
    assert!(!half.exists(), "the half-written snapshot is still there");
    assert_eq!(snapshots(dir.path()).len(), 1);
}

/// A second process on the same store is refused with a clear answer (sled locks the
/// directory), not a bare "store failed".
#[tokio::test]
async fn a_store_in_use_is_refused_with_a_clear_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _backend) = open(dir.path()).await;
    let Err(e) = SledBackend::open(&cfg(dir.path())) else {
        panic!("the store opened twice")
    };
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert!(
        format!("{e:?}").contains("is in use by another running switchboard"),
        "{e:?}"
    );
}
