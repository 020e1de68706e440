//! Health, readiness and metrics.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    payload::{Json, PlainText},
};
use switchboard_core::{metrics::Metrics, store::Store};

#[derive(Tags)]
enum SystemTag {
    /// Liveness, readiness and metrics, for orchestrators and monitoring. No
    /// authentication; nothing secret is exposed.
    System,
}

/// The state of the process or one of its parts.
#[derive(Object, Debug, Clone)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
    /// One line per check, e.g. `store: ok`.
    pub checks: Vec<String>,
}

/// Liveness answer.
#[derive(ApiResponse)]
pub enum LiveAnswer {
    /// The process is running.
    #[oai(status = 200)]
    Live(Json<Health>),
}

/// Readiness answers.
#[derive(ApiResponse)]
pub enum ReadyAnswer {
    /// Ready to accept notifications.
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// Not ready: a check failed (see `checks`).
    #[oai(status = 503)]
    NotReady(Json<Health>),
}

/// Metrics answer.
#[derive(ApiResponse)]
pub enum MetricsAnswer {
    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Metrics(PlainText<String>),
}

/// The system operations.
pub struct SystemApi;

#[OpenApi(tag = "SystemTag::System")]
impl SystemApi {
    /// Liveness
    ///
    /// `200` while the process runs.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> LiveAnswer {
        LiveAnswer::Live(Json(Health {
            status: "ok".into(),
            checks: Vec::new(),
        }))
    }

    /// Readiness
    ///
    /// `200` when the store can be read and its last flush to disk succeeded. Route
    /// scripts that do not compile are listed, with whether a last good version of each
    /// still runs; they do not make the server unready (notifications are still accepted,
    /// and the events of a script with no good version wait as `failed` for a replay).
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, store: Data<&Store>, admin: Data<&crate::ctx::AdminCtx>) -> ReadyAnswer {
        let mut ok = true;
        let mut checks = Vec::new();
        match store.check().await {
            Ok(()) => checks.push("store: ok".to_owned()),
            Err(e) => {
                ok = false;
                tracing::error!(error = %e, "readiness: store check failed");
                checks.push("store: failing (see the log)".to_owned());
            }
        }
        let errors = admin.scripts.errors();
        if errors.is_empty() {
            checks.push(format!(
                "routes: ok ({} scripts)",
                admin.scripts.names().len()
            ));
        } else {
            for e in errors {
                let state = if admin.scripts.runs(&e.file) {
                    "the last good version runs"
                } else {
                    "no good version: its events are parked as failed"
                };
                checks.push(format!("routes: {e} ({state})"));
            }
        }
        let health = Health {
            status: if ok { "ready" } else { "not_ready" }.into(),
            checks,
        };
        if ok {
            ReadyAnswer::Ready(Json(health))
        } else {
            ReadyAnswer::NotReady(Json(health))
        }
    }

    /// Metrics
    ///
    /// Requests by provider, endpoint and status; ingest latency; duplicates; quarantined
    /// bodies; authentication failures; open connections.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, metrics: Data<&Arc<Metrics>>) -> MetricsAnswer {
        MetricsAnswer::Metrics(PlainText(metrics.render()))
    }
}
