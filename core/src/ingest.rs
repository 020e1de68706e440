//! Exactly-once acceptance of an authenticated notification.
//!
//! The path of one [`Submission`]: claim its key atomically → store the event and the
//! answer in one write → wait for the group flush → answer. A concurrent duplicate finds
//! the claim pending and waits (bounded) for the owner; a later duplicate finds it done and
//! gets the stored answer byte for byte, after making sure that answer is on disk. A body
//! that differs from the one that claimed the key follows the provider's [`OnConflict`].
//!
//! Each submission runs in its own task, so a client that hangs up mid-request cannot
//! leave a claim half-finished.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    Error, Result,
    config::StoreConfig,
    event::{Event, EventId, EventStatus},
    metrics::{EventLabels, Metrics},
    store::{Claim, ClaimRequest, OwnedClaim, Store, StoredResponse},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the body turned out to be.
#[derive(Clone, Debug)]
pub enum Content {
    /// It matched the provider's schema.
    Parsed {
        /// The normalised body, as routes will see it.
        data: Value,
        /// Remarks such as unknown enum values.
        flags: Vec<String>,
    },
    /// It authenticated but did not match the schema: keep it for an operator.
    Quarantined {
        /// Why, in words an operator understands (no body contents).
        reason: String,
    },
}

/// What to do when a key arrives again with a different body.
#[derive(Clone, Debug)]
pub enum OnConflict {
    /// Run nothing and answer this (Verestro: `422 IDEMPOTENCY_KEY_REUSED`).
    Reject(StoredResponse),
    /// Store the new body as its own event, flagged and linked to the first (VerifyVASP).
    KeepAndFlag,
}

/// One authenticated notification, described by its provider plugin.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Provider name.
    pub provider: String,
    /// The configured endpoint path it arrived on.
    pub endpoint: String,
    /// Event type, which picks the route.
    pub event_type: String,
    /// The provider's de-duplication key (scoped to the provider by the engine).
    pub key: String,
    /// The authenticated body.
    pub body: Vec<u8>,
    /// Parsed or quarantined.
    pub content: Content,
    /// The provider's rule for a different body under the same key.
    pub on_conflict: OnConflict,
    /// Request facts to keep with the event.
    pub meta: BTreeMap<String, String>,
    /// JSON pointers of secret values in the parsed body.
    pub secret_paths: Vec<String>,
    /// The answer for a newly stored event (also replayed to its duplicates).
    pub response: StoredResponse,
    /// The provider's own deadline for an answer, if it has one (VerifyVASP: 1 s): a
    /// concurrent duplicate then waits for the first request at most this long, when
    /// that is shorter than `store.duplicate_wait`.
    pub answer_within: Option<Duration>,
    /// How long a repeat of this notification is answered as a duplicate; `None`: as long
    /// as the event is kept (`store.retention`). For providers whose bodies carry no id
    /// (Pomelo), so that a genuine identical notification after the provider's retry
    /// horizon is a new event.
    pub dedup_window: Option<Duration>,
}

/// What happened to a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new event was stored.
    Stored {
        /// Its id.
        id: EventId,
        /// The earlier event whose key it shares with a different body, if any.
        conflict_of: Option<EventId>,
    },
    /// An identical earlier request was found; its answer is replayed.
    Duplicate(Option<EventId>),
    /// The key was reused with another body and the provider's rule is to reject it.
    Rejected,
}

/// The answer to give and what happened.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// Exactly what to answer.
    pub response: StoredResponse,
    /// What happened.
    pub outcome: Outcome,
}

/// Hex SHA-256, the fingerprint of a body.
pub fn fingerprint(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Accepts submissions exactly once. Cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    metrics: Arc<Metrics>,
    duplicate_wait: Duration,
}

impl Ingestor {
    /// An ingestor over `store`.
    pub fn new(store: Store, metrics: Arc<Metrics>, cfg: &StoreConfig) -> Self {
        Ingestor {
            inner: Arc::new(Inner {
                store,
                metrics,
                duplicate_wait: cfg.duplicate_wait.get(),
            }),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The metrics it records to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Accepts `sub` exactly once and returns the answer to give. An error means nothing
    /// durable can be promised: answer so that the provider retries.
    pub async fn submit(&self, sub: Submission) -> Result<Receipt> {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.run(sub).await })
            .await
            .map_err(|e| Error::Unavailable(format!("ingest task failed: {e}")))?
    }
}

impl Inner {
    async fn run(&self, sub: Submission) -> Result<Receipt> {
        let started = Instant::now();
        let fp = fingerprint(&sub.body);
        let mut key = format!("{}:{}", sub.provider, sub.key);
        let mut conflict_of = None;
        let wait = sub
            .answer_within
            .map_or(self.duplicate_wait, |w| w.min(self.duplicate_wait));
        let deadline = Instant::now() + wait;
        let provider = Metrics::provider(&sub.provider);
        loop {
            let claim = self
                .store
                .claim(&ClaimRequest {
                    key: &key,
                    fingerprint: &fp,
                    wait: deadline.saturating_duration_since(Instant::now()),
                })
                .await;
            match claim {
                Ok(Claim::Owned(claim)) => {
                    let (receipt, provider) =
                        self.store_new(sub, key, fp, claim, conflict_of).await?;
                    self.metrics.ingest_took(&provider, started.elapsed());
                    return Ok(receipt);
                }
                Ok(Claim::Done {
                    fingerprint,
                    event_id,
                    response,
                }) if fingerprint == fp => {
                    self.metrics.duplicates.get_or_create(&provider).inc();
                    tracing::debug!(provider = %sub.provider, event_id = ?event_id.map(|i| i.to_string()), "duplicate answered from the first request");
                    return Ok(Receipt {
                        response,
                        outcome: Outcome::Duplicate(event_id),
                    });
                }
                Ok(Claim::Done { event_id, .. }) => {
                    self.metrics.conflicts.get_or_create(&provider).inc();
                    match &sub.on_conflict {
                        OnConflict::Reject(response) => {
                            tracing::warn!(provider = %sub.provider, "idempotency key reused with a different body; rejected");
                            return Ok(Receipt {
                                response: response.clone(),
                                outcome: Outcome::Rejected,
                            });
                        }
                        OnConflict::KeepAndFlag => {
                            tracing::warn!(provider = %sub.provider, first = ?event_id.map(|i| i.to_string()), "same key, different body: keeping it as a flagged event");
                            conflict_of = conflict_of.or(event_id);
                            key = format!("{key}#{fp}");
                        }
                    }
                }
                Err(Error::InFlight) => {
                    tracing::warn!(provider = %sub.provider, "duplicate gave up waiting for the first request");
                    return Err(Error::InFlight);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stores `sub` as a new event under `claim`; returns the receipt and the provider's
    /// name. The submission's parts move into the event (no copy of the body or data).
    async fn store_new(
        &self,
        sub: Submission,
        key: String,
        fp: String,
        claim: OwnedClaim,
        conflict_of: Option<EventId>,
    ) -> Result<(Receipt, String)> {
        let (status, data, mut flags, quarantine_reason) = match sub.content {
            Content::Parsed { data, flags } => (EventStatus::Received, Some(data), flags, None),
            Content::Quarantined { reason } => {
                (EventStatus::Quarantined, None, Vec::new(), Some(reason))
            }
        };
        if conflict_of.is_some() {
            flags.push(
                "conflicting_body: an earlier event has the same key and another body".into(),
            );
        }
        let event = Event {
            id: claim.event_id(),
            provider: sub.provider,
            endpoint: sub.endpoint,
            event_type: sub.event_type,
            received_at: chrono::Utc::now(),
            status,
            idempotency_key: key,
            fingerprint: fp,
            body: sub.body,
            data,
            meta: sub.meta,
            flags,
            conflict_of,
            quarantine_reason,
            secret_paths: sub.secret_paths,
            route: None,
        };
        // The event moves into the store (and from there to the route workers): what is
        // counted and logged after the commit is taken first.
        let (id, labels) = (
            event.id,
            EventLabels {
                provider: event.provider.clone(),
                event_type: event.event_type.clone(),
            },
        );
        let quarantine_reason = event.quarantine_reason.clone();
        self.store
            .commit(claim, event, &sub.response, sub.dedup_window)
            .await?;
        self.metrics.events.get_or_create(&labels).inc();
        let EventLabels {
            provider,
            event_type,
        } = labels;
        if status == EventStatus::Quarantined {
            self.metrics
                .quarantined
                .get_or_create(&Metrics::provider(&provider))
                .inc();
            tracing::warn!(provider = %provider, event_id = %id, reason = quarantine_reason.as_deref().unwrap_or(""), "body quarantined");
        } else {
            tracing::info!(provider = %provider, event_type = %event_type, event_id = %id, "event stored");
        }
        Ok((
            Receipt {
                response: sub.response,
                outcome: Outcome::Stored { id, conflict_of },
            },
            provider,
        ))
    }
}

/// Runs the expiry sweeper until the task is dropped.
pub async fn run_sweeper(store: Store, cfg: StoreConfig) {
    let mut tick = tokio::time::interval(cfg.sweep_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store
            .sweep(crate::store::now_ms(), cfg.retention.get())
            .await
        {
            Ok(s) if s.keys + s.events + s.kept > 0 => {
                tracing::info!(
                    keys = s.keys,
                    events = s.events,
                    kept = s.kept,
                    "expired records swept"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn setup(dir: &std::path::Path) -> Ingestor {
        let cfg = StoreConfig {
            path: dir.to_path_buf(),
            ..StoreConfig::default()
        };
        Ingestor::new(Store::open_sled(&cfg).unwrap(), Metrics::shared(), &cfg)
    }

    fn sub(key: &str, body: &str, on_conflict: OnConflict) -> Submission {
        Submission {
            provider: "test".into(),
            endpoint: "/t".into(),
            event_type: "t".into(),
            key: key.into(),
            body: body.as_bytes().to_vec(),
            content: Content::Parsed {
                data: json!({}),
                flags: vec![],
            },
            on_conflict,
            meta: BTreeMap::new(),
            secret_paths: vec![],
            response: StoredResponse::json(200, &json!({"result": true})),
            answer_within: None,
            dedup_window: None,
        }
    }

    fn claim_of<'a>(key: &'a str, fp: &'a str) -> ClaimRequest<'a> {
        ClaimRequest {
            key,
            fingerprint: fp,
            wait: Duration::ZERO,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_duplicates_store_once_and_answer_alike() {
        let dir = tempfile::tempdir().unwrap();
        let ing = setup(dir.path());
        let mut tasks = vec![];
        for _ in 0..50 {
            let ing = ing.clone();
            tasks.push(tokio::spawn(async move {
                ing.submit(sub("k", "{}", OnConflict::KeepAndFlag))
                    .await
                    .unwrap()
            }));
        }
        let mut stored = 0;
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(
                r.response,
                StoredResponse::json(200, &json!({"result": true}))
            );
            if matches!(r.outcome, Outcome::Stored { .. }) {
                stored += 1;
            }
        }
        assert_eq!(stored, 1);
        assert_eq!(ing.store().event_count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_duplicate_waits_for_the_first_request_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().to_path_buf(),
            duplicate_wait: crate::units::HumanDuration::millis(200),
            ..StoreConfig::default()
        };
        let store = Store::open_sled(&cfg).unwrap();
        let ing = Ingestor::new(store.clone(), Metrics::shared(), &cfg);
        // A first request that claimed the key and is still working on it.
        let fp = fingerprint(b"{}");
        let Claim::Owned(first) = store.claim(&claim_of("test:k", &fp)).await.unwrap() else {
            panic!("a fresh key is owned")
        };
        let started = std::time::Instant::now();
        let err = ing
            .submit(sub("k", "{}", OnConflict::KeepAndFlag))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InFlight), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        // A provider with its own, shorter deadline gets its answer (a retry-later) sooner:
        // the wait ends at its deadline, not at `duplicate_wait`.
        let patient = Ingestor::new(
            store.clone(),
            Metrics::shared(),
            &StoreConfig {
                duplicate_wait: crate::units::HumanDuration::secs(30),
                ..cfg.clone()
            },
        );
        let mut hurried = sub("k", "{}", OnConflict::KeepAndFlag);
        hurried.answer_within = Some(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let err = patient.submit(hurried).await.unwrap_err();
        assert!(matches!(err, Error::InFlight), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(15),
            "{took:?}"
        );
        // Once the first gives up, the duplicate's retry takes over and is stored.
        drop(first);
        let r = ing
            .submit(sub("k", "{}", OnConflict::KeepAndFlag))
            .await
            .unwrap();
        assert!(matches!(r.outcome, Outcome::Stored { .. }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_duplicate_is_answered_as_soon_as_the_first_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let ing = setup(dir.path());
        let store = ing.store().clone();
        let fp = fingerprint(b"{}");
        let Claim::Owned(first) = store.claim(&claim_of("test:k", &fp)).await.unwrap() else {
            panic!()
        };
        let event_id = first.event_id();
        let waiting = tokio::spawn({
            let ing = ing.clone();
            async move { ing.submit(sub("k", "{}", OnConflict::KeepAndFlag)).await }
        });
        // The duplicate is parked on the pending claim until the first request commits;
        // then it gets the first answer.
        assert!(ing.store().event(event_id).await.unwrap().is_none());
        let e = crate::event::Event {
            id: event_id,
            provider: "test".into(),
            endpoint: "/t".into(),
            event_type: "t".into(),
            received_at: chrono::Utc::now(),
            status: EventStatus::Received,
            idempotency_key: "test:k".into(),
            fingerprint: fp.clone(),
            body: b"{}".to_vec(),
            data: None,
            meta: BTreeMap::new(),
            flags: vec![],
            conflict_of: None,
            quarantine_reason: None,
            secret_paths: vec![],
            route: None,
        };
        let answer = StoredResponse::json(200, &json!({"first": true}));
        store.commit(first, e, &answer, None).await.unwrap();
        let r = waiting.await.unwrap().unwrap();
        assert_eq!(r.response, answer);
        assert_eq!(r.outcome, Outcome::Duplicate(Some(event_id)));
    }

    #[tokio::test]
    async fn conflicts_follow_the_provider_rule() {
        let dir = tempfile::tempdir().unwrap();
        let ing = setup(dir.path());
        let reject = OnConflict::Reject(StoredResponse::json(
            422,
            &json!({"detail": "IDEMPOTENCY_KEY_REUSED"}),
        ));
        ing.submit(sub("a", "1", reject.clone())).await.unwrap();
        let r = ing.submit(sub("a", "2", reject)).await.unwrap();
        assert_eq!(r.outcome, Outcome::Rejected);
        assert_eq!(r.response.status, 422);
        assert_eq!(ing.store().event_count().await.unwrap(), 1);

        let first = ing
            .submit(sub("b", "1", OnConflict::KeepAndFlag))
            .await
            .unwrap();
        let Outcome::Stored { id: first_id, .. } = first.outcome else {
            panic!()
        };
        let second = ing
            .submit(sub("b", "2", OnConflict::KeepAndFlag))
            .await
            .unwrap();
        let Outcome::Stored { id, conflict_of } = second.outcome else {
            panic!("{:?}", second.outcome)
        };
        assert_eq!(conflict_of, Some(first_id));
        let e = ing.store().event(id).await.unwrap().unwrap();
        assert_eq!(e.conflict_of, Some(first_id));
        assert!(e.flags.iter().any(|f| f.starts_with("conflicting_body")));
        // The conflicting body is itself de-duplicated.
        let again = ing
            .submit(sub("b", "2", OnConflict::KeepAndFlag))
            .await
            .unwrap();
        assert_eq!(again.outcome, Outcome::Duplicate(Some(id)));
        assert_eq!(ing.store().event_count().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_repeat_past_the_dedup_window_is_a_new_event() {
        let dir = tempfile::tempdir().unwrap();
        let ing = setup(dir.path());
        let mut s = sub("w", "{}", OnConflict::KeepAndFlag);
        s.dedup_window = Some(Duration::from_millis(100));
        let first = ing.submit(s.clone()).await.unwrap();
        assert!(matches!(first.outcome, Outcome::Stored { .. }));
        let again = ing.submit(s.clone()).await.unwrap();
        assert!(
            matches!(again.outcome, Outcome::Duplicate(_)),
            "within the window"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let later = ing.submit(s).await.unwrap();
        assert!(
            matches!(later.outcome, Outcome::Stored { .. }),
            "past the window: {:?}",
            later.outcome
        );
        assert_eq!(ing.store().event_count().await.unwrap(), 2);
    }
}
