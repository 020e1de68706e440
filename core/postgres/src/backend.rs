//! [`Backend`] for PostgreSQL. Each method is one transaction (or one statement); the
//! state changes come from `switchboard_core::outbox`.

use std::{collections::HashSet, hash::Hash, sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, Row, Transaction, postgres::PgRow, types::Json};
use switchboard_core::{
    Error, Result,
    event::{Event, EventId, EventStatus},
    outbox::{self, Action, ActionFilter, ActionId, ActionSpec, DeliveryStatus, Due, SendResult},
    store::{
        Backend, Claim, ClaimRequest, Counts, CountsBy, EventFilter, OwnedClaim, Page, Repaired,
        StoreStats, StoredResponse, Swept, first_id_at, millis, now_ms,
    },
};
use uuid::Uuid;

use std::sync::Arc;

use crate::{Claiming, INBOX_CHANNEL, OUTBOX_CHANNEL, PgBackend, db};

/// The advisory lock the sweeper holds (one instance sweeps at a time).
const SWEEP_LOCK: i64 = 0x5357_4545_5045_5231; // "SWEEPER1"

/// Expired events looked at per sweep.
const SWEEP_BATCH: i64 = 2_000;

/// A claim: the open transaction whose uncommitted row in `sb_keys` holds the key.
struct PgClaim {
    tx: Transaction<'static, Postgres>,
    key: String,
    fingerprint: String,
    _slot: Slot,
}

/// This instance's hold on a key it is claiming: dropped (the claim committed, rolled
/// back or abandoned), it wakes the duplicates waiting here.
struct Slot {
    claiming: Arc<Claiming>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.claiming.lock() {
            if let Some(n) = m.remove(&self.key) {
                n.notify_waiters();
            }
        }
    }
}

impl PgBackend {
    /// Waits until no other request of this instance claims `key` (up to `deadline`),
    /// then holds it.
    async fn local_slot(&self, key: &str, deadline: tokio::time::Instant) -> Result<Slot> {
        loop {
            let waiting = {
                let mut m = self
                    .claiming
                    .lock()
                    .map_err(|_| Error::Unavailable("a claim lock was poisoned".into()))?;
                match m.get(key) {
                    Some(n) => n.clone(),
                    None => {
                        m.insert(key.to_owned(), Arc::default());
                        return Ok(Slot {
                            claiming: self.claiming.clone(),
                            key: key.to_owned(),
                        });
                    }
                }
            };
            let notified = waiting.notified();
            tokio::pin!(notified);
            // Registered before the owner can wake: it wakes under the same lock, after
            // removing the key, and the key was still there when we read it. Either the
            // notification is already in, or it comes.
            notified.as_mut().enable();
            let still = self
                .claiming
                .lock()
                .map(|m| m.get(key).is_some_and(|n| Arc::ptr_eq(n, &waiting)))
                .unwrap_or(false);
            if still && tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::InFlight);
            }
        }
    }
}

fn at_ms(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    id: impl std::fmt::Display,
    doc: &str,
) -> Result<T> {
    serde_json::from_str(doc).map_err(|source| Error::Corrupt {
        key: format!("{what} {id}"),
        source,
    })
}

fn event_of(row: &PgRow) -> Result<Event> {
    let id: Uuid = row.try_get("id").map_err(db)?;
    let doc: String = row.try_get("doc").map_err(db)?;
    decode("event", id, &doc)
}

fn action_of(row: &PgRow) -> Result<Action> {
    let id: Uuid = row.try_get("id").map_err(db)?;
    let doc: String = row.try_get("doc").map_err(db)?;
    decode("action", id, &doc)
}

/// Whether an error is PostgreSQL's `lock_not_available`: the wait for a concurrent claim
/// of the same key ran out.
fn lock_timed_out(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

/// One page of a listing fetched with one row more than `limit`: the readable records
/// of the first `limit` rows, and the id to continue after when there are more.
fn page<T, I>(
    rows: &[PgRow],
    limit: usize,
    decode: fn(&PgRow) -> Result<T>,
    id: fn(&T) -> I,
) -> Result<(Vec<T>, Option<I>)> {
    let more = rows.len() > limit;
    let items = keep_readable(rows.iter().take(limit).map(decode).collect())?;
    let next = if more { items.last().map(id) } else { None };
    Ok((items, next))
}

/// `limit` as the SQL `LIMIT` of a page: one more, to know whether another page follows.
fn page_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
}

/// A record that cannot be decoded is left out of a listing (and logged).
fn keep_readable<T>(items: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(t) => out.push(t),
            Err(Error::Corrupt { key, source }) => {
                tracing::error!(key = %key, error = %source, "an unreadable record is left out");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Adds `id` to, or takes it out of, what this instance renews the lease of.
fn hold<T: Eq + Hash>(set: &Mutex<HashSet<T>>, id: T, held: bool) {
    if let Ok(mut h) = set.lock() {
        if held {
            h.insert(id);
        } else {
            h.remove(&id);
        }
    }
}

impl PgBackend {
    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    fn hold_event(&self, id: EventId, held: bool) {
        hold(&self.held.events, id, held);
    }

    fn hold_action(&self, id: ActionId, held: bool) {
        hold(&self.held.actions, id, held);
    }

    async fn notify(&self, tx: &mut Transaction<'_, Postgres>, channel: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Reads an action under its row lock.
    async fn action_for_update(
        tx: &mut Transaction<'_, Postgres>,
        id: ActionId,
    ) -> Result<Option<Action>> {
        let row =
            sqlx::query("SELECT id, doc::text AS doc FROM sb_actions WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?;
        row.as_ref().map(action_of).transpose()
    }

    /// Writes an action as it is now; the lease stays this instance's while it is being
    /// sent, and is given up otherwise.
    async fn put_action(&self, tx: &mut Transaction<'_, Postgres>, a: &Action) -> Result<()> {
        let sending = a.status == DeliveryStatus::Sending;
        sqlx::query(
            "UPDATE sb_actions SET status = $2, due_ms = $3, doc = $4, \
             lease_owner = CASE WHEN $5 THEN $6 ELSE NULL END, \
             lease_until = CASE WHEN $5 THEN now() + make_interval(secs => $7) ELSE NULL END \
             WHERE id = $1",
        )
        .bind(a.id.0)
        .bind(a.status.as_str())
        .bind(a.due_ms.map(ms_i64))
        .bind(Json(a))
        .bind(sending)
        .bind(self.instance)
        .bind(self.lease_secs())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Rows of `table` created since each window (their ids are UUIDv7), counted per
    /// `by` and status, all windows in one statement (one snapshot: the windows agree).
    async fn count(
        &self,
        table: &str,
        by: &str,
        windows: &[u64],
    ) -> Result<Vec<(String, String, Counts)>> {
        let Some(&earliest) = windows.iter().min() else {
            return Ok(Vec::new());
        };
        let columns: Vec<String> = (0..windows.len())
            .map(|i| format!("count(*) FILTER (WHERE id >= ${}) AS n{i}", i + 2))
            .collect();
        let sql = format!(
            "SELECT {by} AS by, status, {} FROM {table} WHERE id >= $1 GROUP BY 1, 2",
            columns.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(first_id_at(earliest));
        for w in windows {
            q = q.bind(first_id_at(*w));
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut c = Counts::default();
            for i in 0..windows.len() {
                let n: i64 = r.try_get(format!("n{i}").as_str()).map_err(db)?;
                c.counts.push(u64::try_from(n).unwrap_or(0));
            }
            out.push((
                r.try_get::<String, _>("by").map_err(db)?,
                r.try_get::<String, _>("status").map_err(db)?,
                c,
            ));
        }
        Ok(out)
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db)
    }

    /// Gives up this instance's lease on a row (`sql` updates it: `$1` its id, `$2` this
    /// instance) and, if it held one, wakes the workers listening on `channel`.
    async fn give_up_lease(&self, sql: &'static str, id: Uuid, channel: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let r = sqlx::query(sql)
            .bind(id)
            .bind(self.instance)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if r.rows_affected() > 0 {
            self.notify(&mut tx, channel).await?;
        }
        tx.commit().await.map_err(db)
    }

    /// Applies `change` to an action under its row lock and, when it says it changed it,
    /// stores it (and wakes the delivery workers when `wake`). `None` when there is no
    /// such action; otherwise the action and whether it changed.
    async fn change_action(
        &self,
        id: ActionId,
        change: impl FnOnce(&mut Action) -> bool + Send,
        wake: bool,
    ) -> Result<Option<(Action, bool)>> {
        let mut tx = self.begin().await?;
        let Some(mut a) = Self::action_for_update(&mut tx, id).await? else {
            return Ok(None);
        };
        if !change(&mut a) {
            tx.rollback().await.map_err(db)?;
            return Ok(Some((a, false)));
        }
        self.put_action(&mut tx, &a).await?;
        if wake {
            self.notify(&mut tx, OUTBOX_CHANNEL).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Some((a, true)))
    }

    /// Updates an event that waits for its route and this instance leases (or nobody
    /// does): `false` when another instance has taken it over meanwhile.
    async fn settle_event(&self, tx: &mut Transaction<'_, Postgres>, e: &Event) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE sb_events SET status = $2, event_type = $3, doc = $4, \
             lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND status = 'received' \
             AND (lease_owner IS NULL OR lease_owner = $5)",
        )
        .bind(e.id.0)
        .bind(e.status.as_str())
        .bind(&e.event_type)
        .bind(Json(e))
        .bind(self.instance)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(r.rows_affected() == 1)
    }
}

#[async_trait::async_trait]
impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        let deadline = tokio::time::Instant::now() + req.wait;
        let slot = self.local_slot(req.key, deadline).await?;
        let mut tx = match tokio::time::timeout_at(deadline, self.begin()).await {
            Ok(tx) => tx?,
            Err(_) => return Err(Error::InFlight),
        };
        // What is left of the wait, for a claim of another instance; lock_timeout 0 would
        // mean "wait forever".
        let wait = millis(deadline.saturating_duration_since(tokio::time::Instant::now())).max(1);
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{wait}ms"))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let event_id = EventId::new();
        // A row past its de-duplication window is taken over; a live one is left alone
        // (and read below). Either way the insert waits for a concurrent claim of the key.
        let owned = sqlx::query(
            "INSERT INTO sb_keys (key, fingerprint, event_id, response) \
             VALUES ($1, $2, $3, 'null'::jsonb) \
             ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
               event_id = EXCLUDED.event_id, response = EXCLUDED.response, \
               dedup_until = NULL, created_at = now() \
             WHERE sb_keys.dedup_until IS NOT NULL AND sb_keys.dedup_until <= now() \
             RETURNING key",
        )
        .bind(req.key)
        .bind(req.fingerprint)
        .bind(event_id.0)
        .fetch_optional(&mut *tx)
        .await;
        match owned {
            Ok(Some(_)) => Ok(Claim::Owned(OwnedClaim::new(
                event_id,
                PgClaim {
                    tx,
                    key: req.key.to_owned(),
                    fingerprint: req.fingerprint.to_owned(),
                    _slot: slot,
                },
            ))),
            Ok(None) => {
                let row = sqlx::query(
                    "SELECT fingerprint, event_id, response::text AS response FROM sb_keys WHERE key = $1",
                )
                .bind(req.key)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
                tx.rollback().await.map_err(db)?;
                let response: String = row.try_get("response").map_err(db)?;
                Ok(Claim::Done {
                    fingerprint: row.try_get("fingerprint").map_err(db)?,
                    event_id: row
                        .try_get::<Option<Uuid>, _>("event_id")
                        .map_err(db)?
                        .map(EventId),
                    response: decode("key", req.key, &response)?,
                })
            }
            Err(e) if lock_timed_out(&e) => Err(Error::InFlight),
            Err(e) => Err(db(e)),
        }
    }

    async fn commit(
        &self,
        claim: OwnedClaim,
        event: &Event,
        response: &StoredResponse,
        dedup_window: Option<Duration>,
        // Several instances share the inbox: every event is written to it.
        _handed: bool,
    ) -> Result<()> {
        let PgClaim {
            mut tx,
            key,
            fingerprint,
            _slot,
        } = *claim.into_hold::<PgClaim>(event)?;
        let now = now_ms();
        sqlx::query(
            "WITH e AS (INSERT INTO sb_events \
               (id, provider, event_type, status, idempotency_key, expires_at, doc) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id) \
             UPDATE sb_keys SET fingerprint = $8, event_id = (SELECT id FROM e), \
               response = $9, dedup_until = $10 WHERE key = $5",
        )
        .bind(event.id.0)
        .bind(&event.provider)
        .bind(&event.event_type)
        .bind(event.status.as_str())
        .bind(&key)
        .bind(at_ms(now.saturating_add(millis(self.retention))))
        .bind(Json(event))
        .bind(&fingerprint)
        .bind(Json(response))
        .bind(dedup_window.map(|w| at_ms(now.saturating_add(millis(w)))))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if event.status == EventStatus::Received {
            self.notify(&mut tx, INBOX_CHANNEL).await?;
        }
        let began = std::time::Instant::now();
        tx.commit().await.map_err(db)?;
        if let Some(h) = self.flush_time.get() {
            h.observe(began.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>> {
        let row = sqlx::query("SELECT id, doc::text AS doc FROM sb_events WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(event_of).transpose()
    }

    async fn events(
        &self,
        filter: &EventFilter,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<Page> {
        let rows = sqlx::query(
            "SELECT id, doc::text AS doc FROM sb_events \
             WHERE ($1::text IS NULL OR provider = $1) \
               AND ($2::text IS NULL OR event_type = $2) \
               AND ($3::text IS NULL OR status = $3) \
               AND ($4::uuid IS NULL OR id < $4) \
               AND ($6::uuid IS NULL OR id >= $6) \
             ORDER BY id DESC LIMIT $5",
        )
        .bind(filter.provider.as_deref())
        .bind(filter.event_type.as_deref())
        .bind(filter.status.map(EventStatus::as_str))
        .bind(before.map(|b| b.0))
        .bind(page_limit(limit))
        .bind(filter.since().map(|s| s.0))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let (items, next) = page(&rows, limit, event_of, |e| e.id)?;
        Ok(Page { items, next })
    }

    async fn event_count(&self) -> Result<usize> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sb_events")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn event_counts(&self, windows: &[u64]) -> Result<CountsBy<(String, EventStatus)>> {
        let rows = self.count("sb_events", "provider", windows).await?;
        let mut out = CountsBy::new();
        for (provider, status, c) in rows {
            let Ok(status) = status.parse::<EventStatus>() else {
                continue;
            };
            out.insert((provider, status), c);
        }
        Ok(out)
    }

    async fn action_counts(&self, windows: &[u64]) -> Result<CountsBy<(String, DeliveryStatus)>> {
        let rows = self.count("sb_actions", "channel", windows).await?;
        let mut out = CountsBy::new();
        for (channel, status, c) in rows {
            let Some(status) = DeliveryStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == status)
            else {
                continue;
            };
            out.insert((channel, status), c);
        }
        Ok(out)
    }

    async fn take_inbox(&self, _after: Option<EventId>, limit: usize) -> Result<Vec<EventId>> {
        // Events this instance holds already come back too (its workers keep their own set
        // of what they run): the lease of each is renewed by taking it.
        let mut ids: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE sb_events SET lease_owner = $1, lease_until = now() + make_interval(secs => $2) \
             WHERE id IN (SELECT id FROM sb_events WHERE status = 'received' \
               AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1) \
               ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(self.instance)
        .bind(self.lease_secs())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        ids.sort();
        let ids: Vec<EventId> = ids.into_iter().map(EventId).collect();
        for id in &ids {
            self.hold_event(*id, true);
        }
        Ok(ids)
    }

    async fn defer(&self, id: EventId, wait: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE sb_events SET lease_until = now() + make_interval(secs => $3) \
             WHERE id = $1 AND lease_owner = $2 AND status = 'received'",
        )
        .bind(id.0)
        .bind(self.instance)
        .bind((wait + self.lease).as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn route_starts(&self, id: EventId) -> Result<u32> {
        let n: Option<i32> = sqlx::query_scalar(
            "SELECT route_starts FROM sb_events WHERE id = $1 AND status = 'received'",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0))
    }

    async fn set_route_starts(&self, id: EventId, started: u32) -> Result<()> {
        sqlx::query("UPDATE sb_events SET route_starts = $2 WHERE id = $1 AND status = 'received'")
            .bind(id.0)
            .bind(i32::try_from(started).unwrap_or(i32::MAX))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn release(&self, id: EventId) -> Result<()> {
        self.hold_event(id, false);
        self.give_up_lease(
            "UPDATE sb_events SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2 AND status = 'received'",
            id.0,
            INBOX_CHANNEL,
        )
        .await
    }

    async fn inbox_remove(&self, id: EventId) -> Result<()> {
        // The inbox is the events' status itself: nothing to remove, only the hold.
        self.hold_event(id, false);
        Ok(())
    }

    async fn route_done(
        &self,
        event: &Event,
        script: Option<String>,
        specs: Vec<ActionSpec>,
    ) -> Result<Option<Vec<Action>>> {
        let actions = outbox::new_actions(event, specs, now_ms());
        let routed = outbox::routed(event, script, &actions);
        let mut tx = self.begin().await?;
        if !self.settle_event(&mut tx, &routed).await? {
            tx.rollback().await.map_err(db)?;
            self.hold_event(event.id, false);
            return Ok(None);
        }
        if !actions.is_empty() {
            let ids: Vec<Uuid> = actions.iter().map(|a| a.id.0).collect();
            let channels: Vec<&str> = actions.iter().map(|a| a.channel.as_str()).collect();
            let due: Vec<Option<i64>> = actions.iter().map(|a| a.due_ms.map(ms_i64)).collect();
            let docs: Vec<Value> = actions
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Unavailable(format!("an action does not serialise: {e}")))?;
            sqlx::query(
                "INSERT INTO sb_actions (id, event_id, channel, provider, status, due_ms, doc) \
                 SELECT a.id, $2, a.channel, $3, 'pending', a.due_ms, a.doc \
                 FROM unnest($1::uuid[], $4::text[], $5::bigint[], $6::jsonb[]) \
                   AS a(id, channel, due_ms, doc)",
            )
            .bind(&ids)
            .bind(event.id.0)
            .bind(&event.provider)
            .bind(&channels)
            .bind(&due)
            .bind(&docs)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            self.notify(&mut tx, OUTBOX_CHANNEL).await?;
        }
        tx.commit().await.map_err(db)?;
        self.hold_event(event.id, false);
        Ok(Some(actions))
    }

    async fn route_failed(
        &self,
        event: &Event,
        script: Option<String>,
        error: String,
    ) -> Result<()> {
        let failed = outbox::failed(event, script, error);
        let mut tx = self.begin().await?;
        if !self.settle_event(&mut tx, &failed).await? {
            tracing::warn!(event_id = %event.id, "the event was routed elsewhere meanwhile (its lease ran out); its failure here is not recorded");
        }
        tx.commit().await.map_err(db)?;
        self.hold_event(event.id, false);
        Ok(())
    }

    async fn replay_event(
        &self,
        id: EventId,
        reparsed: Option<(String, Value, Vec<String>)>,
    ) -> Result<Option<Event>> {
        let mut tx = self.begin().await?;
        let row =
            sqlx::query("SELECT id, doc::text AS doc FROM sb_events WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let e = outbox::replayed(event_of(&row)?, reparsed)?;
        sqlx::query(
            "UPDATE sb_events SET status = $2, event_type = $3, doc = $4, \
             lease_owner = NULL, lease_until = NULL, route_starts = 0 WHERE id = $1",
        )
        .bind(id.0)
        .bind(e.status.as_str())
        .bind(&e.event_type)
        .bind(Json(&e))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.notify(&mut tx, INBOX_CHANNEL).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(e))
    }

    async fn take_due(&self, channel: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>> {
        let rows = sqlx::query(
            "UPDATE sb_actions SET lease_owner = $1, lease_until = now() + make_interval(secs => $2) \
             WHERE id IN (SELECT id FROM sb_actions WHERE channel = $3 AND due_ms <= $4 \
               AND status IN ('pending', 'retrying') \
               AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1) \
               ORDER BY due_ms LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING id, due_ms",
        )
        .bind(self.instance)
        .bind(self.lease_secs())
        .bind(channel)
        .bind(ms_i64(now_ms))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut due = Vec::with_capacity(rows.len());
        for r in rows {
            let id: Uuid = r.try_get("id").map_err(db)?;
            let at: Option<i64> = r.try_get("due_ms").map_err(db)?;
            let d = Due {
                id: ActionId(id),
                at_ms: at.and_then(|a| u64::try_from(a).ok()).unwrap_or(0),
            };
            self.hold_action(d.id, true);
            due.push(d);
        }
        due.sort_by_key(|d| (d.at_ms, d.id));
        Ok(due)
    }

    async fn next_due(&self, channel: &str) -> Result<Option<u64>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(due_ms) FROM sb_actions WHERE channel = $1 AND due_ms IS NOT NULL \
             AND status IN ('pending', 'retrying')",
        )
        .bind(channel)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(at.and_then(|a| u64::try_from(a).ok()))
    }

    async fn start_attempt(&self, channel: &str, due: Due) -> Result<Option<Action>> {
        let mut tx = self.begin().await?;
        let Some(mut a) = Self::action_for_update(&mut tx, due.id).await? else {
            self.hold_action(due.id, false);
            return Ok(None);
        };
        // Rescheduled, replayed or sent meanwhile (by any instance): nothing is due
        // behind this entry.
        if a.channel != channel || a.due_ms != Some(due.at_ms) || !a.start() {
            tx.rollback().await.map_err(db)?;
            self.hold_action(due.id, false);
            return Ok(None);
        }
        self.put_action(&mut tx, &a).await?;
        // The `sending` mark is durable before anything is sent.
        tx.commit().await.map_err(db)?;
        Ok(Some(a))
    }

    async fn finish_attempt(
        &self,
        mut action: Action,
        result: &SendResult,
        retry_at_ms: Option<u64>,
    ) -> Result<Action> {
        let id = action.id;
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT id, doc::text AS doc, lease_owner FROM sb_actions WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let current = row.as_ref().map(action_of).transpose()?;
        let ours = row
            .as_ref()
            .map(|r| r.try_get::<Option<Uuid>, _>("lease_owner"))
            .transpose()
            .map_err(db)?
            .flatten()
            == Some(self.instance);
        match current {
            Some(c) if c.status == DeliveryStatus::Sending && ours => {
                action.finish(result, retry_at_ms);
                self.put_action(&mut tx, &action).await?;
                if action.due_ms.is_some() {
                    self.notify(&mut tx, OUTBOX_CHANNEL).await?;
                }
                tx.commit().await.map_err(db)?;
            }
            other => {
                // Another instance resumed it after this one's lease ran out: its record
                // of the action stands.
                tx.rollback().await.map_err(db)?;
                tracing::warn!(action_id = %id, "the action was taken over by another instance during its attempt; this attempt's outcome is not recorded");
                if let Some(c) = other {
                    action = c;
                }
            }
        }
        self.hold_action(id, false);
        Ok(action)
    }

    async fn release_due(&self, id: ActionId) -> Result<()> {
        self.hold_action(id, false);
        self.give_up_lease(
            "UPDATE sb_actions SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2 AND status <> 'sending'",
            id.0,
            OUTBOX_CHANNEL,
        )
        .await
    }

    async fn expire_action(&self, id: ActionId) -> Result<Option<Action>> {
        let Some((a, true)) = self.change_action(id, Action::expire, false).await? else {
            return Ok(None);
        };
        self.hold_action(id, false);
        Ok(Some(a))
    }

    async fn resume_interrupted(&self) -> Result<usize> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT id, doc::text AS doc FROM sb_actions WHERE status = 'sending' \
             AND (lease_until IS NULL OR lease_until < now()) \
             LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let now = now_ms();
        let mut resumed = 0;
        for row in &rows {
            let mut a = match action_of(row) {
                Ok(a) => a,
                Err(Error::Corrupt { key, source }) => {
                    tracing::error!(key = %key, error = %source, "an unreadable action cannot be resumed");
                    continue;
                }
                Err(e) => return Err(e),
            };
            a.interrupt(now);
            self.put_action(&mut tx, &a).await?;
            resumed += 1;
        }
        if resumed > 0 {
            self.notify(&mut tx, OUTBOX_CHANNEL).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(resumed)
    }

    async fn replay_action(&self, id: ActionId) -> Result<Option<Action>> {
        let changed = self.change_action(id, |a| a.replay(now_ms()), true).await?;
        Ok(changed.map(|(a, _)| a))
    }

    async fn action(&self, id: ActionId) -> Result<Option<Action>> {
        let row = sqlx::query("SELECT id, doc::text AS doc FROM sb_actions WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(action_of).transpose()
    }

    async fn actions_of(&self, event: &Event) -> Result<Vec<Action>> {
        let ids: Vec<Uuid> = event
            .route
            .iter()
            .flat_map(|r| r.actions.iter().map(|a| a.0))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT id, doc::text AS doc FROM sb_actions WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut found: Vec<Action> = rows.iter().map(action_of).collect::<Result<_>>()?;
        // In the order the route runs queued them.
        found.sort_by_key(|a| ids.iter().position(|i| *i == a.id.0));
        Ok(found)
    }

    async fn actions(
        &self,
        filter: &ActionFilter,
        before: Option<ActionId>,
        limit: usize,
    ) -> Result<(Vec<Action>, Option<ActionId>)> {
        let rows = sqlx::query(
            "SELECT id, doc::text AS doc FROM sb_actions \
             WHERE ($1::text IS NULL OR status = $1) \
               AND ($2::text IS NULL OR channel = $2) \
               AND ($3::text IS NULL OR provider = $3) \
               AND ($4::uuid IS NULL OR id < $4) \
             ORDER BY id DESC LIMIT $5",
        )
        .bind(filter.status.map(DeliveryStatus::as_str))
        .bind(filter.channel.as_deref())
        .bind(filter.provider.as_deref())
        .bind(before.map(|b| b.0))
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        page(&rows, limit, action_of, |a| a.id)
    }

    async fn sweep(&self, now_ms: u64, retention: Duration) -> Result<Swept> {
        let mut tx = self.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(SWEEP_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if !mine {
            // Another instance is sweeping.
            tx.rollback().await.map_err(db)?;
            return Ok(Swept::default());
        }
        let row = sqlx::query(
            "WITH expired AS ( \
               SELECT id, idempotency_key, status FROM sb_events \
               WHERE expires_at <= $1 ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
             removable AS ( \
               SELECT x.id, x.idempotency_key FROM expired x WHERE x.status = 'routed' \
               AND NOT EXISTS (SELECT 1 FROM sb_actions a WHERE a.event_id = x.id \
                 AND a.status NOT IN ('sent', 'expired'))), \
             gone_actions AS ( \
               DELETE FROM sb_actions a USING removable r WHERE a.event_id = r.id RETURNING 1), \
             gone_keys AS ( \
               DELETE FROM sb_keys k USING removable r \
               WHERE k.key = r.idempotency_key AND k.event_id = r.id RETURNING 1), \
             gone_events AS ( \
               DELETE FROM sb_events e USING removable r WHERE e.id = r.id RETURNING 1), \
             kept AS ( \
               UPDATE sb_events e SET expires_at = $2 FROM expired x \
               WHERE e.id = x.id AND x.id NOT IN (SELECT id FROM removable) RETURNING 1) \
             SELECT (SELECT count(*) FROM gone_keys) AS keys, \
                    (SELECT count(*) FROM gone_events) AS events, \
                    (SELECT count(*) FROM kept) AS kept, \
                    (SELECT count(*) FROM gone_actions) AS actions",
        )
        .bind(at_ms(now_ms))
        .bind(at_ms(now_ms.saturating_add(millis(retention))))
        .bind(SWEEP_BATCH)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let count = |name: &str| -> Result<usize> {
            let n: i64 = row.try_get(name).map_err(db)?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok(Swept {
            keys: count("keys")?,
            events: count("events")?,
            kept: count("kept")?,
        })
    }

    async fn consistency_check(&self) -> Result<Repaired> {
        // The inbox is the events' own status: it cannot disagree with them.
        Ok(Repaired::default())
    }

    async fn check(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        // Everything committed is durable. What this instance still holds is handed back
        // at once, so that another instance need not wait for the leases to run out.
        let mut tx = self.begin().await?;
        let events = sqlx::query(
            "UPDATE sb_events SET lease_owner = NULL, lease_until = NULL \
             WHERE lease_owner = $1 AND status = 'received'",
        )
        .bind(self.instance)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let actions = sqlx::query(
            "UPDATE sb_actions SET lease_owner = NULL, lease_until = NULL \
             WHERE lease_owner = $1 AND status <> 'sending'",
        )
        .bind(self.instance)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if events.rows_affected() > 0 {
            self.notify(&mut tx, INBOX_CHANNEL).await?;
        }
        if actions.rows_affected() > 0 {
            self.notify(&mut tx, OUTBOX_CHANNEL).await?;
        }
        tx.commit().await.map_err(db)
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    fn time_flushes(&self, into: switchboard_core::metrics::Histogram) {
        let _ = self.flush_time.set(into);
    }
}
