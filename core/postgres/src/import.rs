//! Copying an embedded (sled) store into PostgreSQL: `switchboard store copy`.
//!
//! Everything an instance needs to carry on where the embedded store stopped: events
//! (quarantined ones included) with their expiry, finished de-duplication keys with their
//! answers, and every action with its attempts and schedule. Claims still pending in the
//! embedded store were never answered, so they are not copied: the provider's retry finds
//! the key free. Actions left `sending` arrive without a lease, so the first instance
//! resumes them. Copying twice is harmless: rows already there are kept as they are.

use sqlx::types::Json;
use switchboard_core::{Result, store::sled::Export};

use crate::{PgBackend, db};

/// What a copy wrote (rows already present are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Events.
    pub events: u64,
    /// De-duplication keys.
    pub keys: u64,
    /// Actions.
    pub actions: u64,
}

fn at(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

impl PgBackend {
    /// Writes `export` into the database, in one transaction.
    pub async fn import(&self, export: &Export) -> Result<Imported> {
        let mut done = Imported::default();
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (e, expires_ms) in &export.events {
            let r = sqlx::query(
                "INSERT INTO sb_events (id, provider, event_type, status, idempotency_key, expires_at, doc) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(e.id.0)
            .bind(&e.provider)
            .bind(&e.event_type)
            .bind(e.status.as_str())
            .bind(&e.idempotency_key)
            .bind(at(*expires_ms))
            .bind(Json(e))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            done.events += r.rows_affected();
        }
        for k in &export.keys {
            let r = sqlx::query(
                "INSERT INTO sb_keys (key, fingerprint, event_id, response, dedup_until) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
            )
            .bind(&k.key)
            .bind(&k.fingerprint)
            .bind(k.event_id.map(|i| i.0))
            .bind(Json(&k.response))
            .bind(k.until_ms.map(at))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            done.keys += r.rows_affected();
        }
        for a in &export.actions {
            let r = sqlx::query(
                "INSERT INTO sb_actions (id, event_id, channel, provider, status, due_ms, doc) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(a.id.0)
            .bind(a.event_id.0)
            .bind(&a.channel)
            .bind(&a.provider)
            .bind(a.status.as_str())
            .bind(a.due_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)))
            .bind(Json(a))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            done.actions += r.rows_affected();
        }
        tx.commit().await.map_err(db)?;
        Ok(done)
    }
}
