//! The admin API: what an operator sees of stored events. Protected by its own bearer
//! token; secret values are masked unless `admin.reveal_secrets` is set.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi, SecurityScheme, Tags,
    auth::Bearer,
    param::{Path, Query},
    payload::Json,
};
use serde_json::Value;
use switchboard_core::{
    event::{Event, EventId, EventStatus},
    mask::{mask_by_name, mask_pointers, mask_raw_body},
    secret::Secret,
    store::{EventFilter, Store},
};
use switchboard_plugins::http::ErrorBody;

#[derive(Tags)]
enum AdminTag {
    /// Operator API: stored events and the quarantine. Bearer token `admin.token`.
    Admin,
}

/// `Authorization: Bearer <admin.token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct AdminToken(Bearer);

/// An event's status.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Status {
    /// Stored; waiting for its route.
    Received,
    /// The body did not match the provider's schema; kept for an operator.
    Quarantined,
}

impl From<Status> for EventStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Received => EventStatus::Received,
            Status::Quarantined => EventStatus::Quarantined,
        }
    }
}

impl From<EventStatus> for Status {
    fn from(s: EventStatus) -> Self {
        match s {
            EventStatus::Received => Status::Received,
            EventStatus::Quarantined => Status::Quarantined,
        }
    }
}

/// A stored event, as an operator sees it.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct EventView {
    /// Id (UUIDv7: ids sort by arrival).
    pub id: String,
    /// The provider that authenticated it.
    pub provider: String,
    /// The endpoint it arrived on.
    pub endpoint: String,
    /// Its type, which chooses its route.
    #[oai(rename = "type")]
    pub event_type: String,
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// Where it is in its life.
    pub status: Status,
    /// The provider-scoped key it was de-duplicated on.
    pub idempotency_key: String,
    /// Hex SHA-256 of the body.
    pub fingerprint: String,
    /// The normalised body. Secret values (OTPs) are replaced by `******` unless the
    /// server is configured to reveal them.
    pub data: Option<Value>,
    /// Request facts kept with the event (the api key used, ...).
    pub meta: std::collections::BTreeMap<String, String>,
    /// Remarks: unknown enum values, a conflicting body, ...
    pub flags: Vec<String>,
    /// The earlier event with the same key and another body, if any.
    pub conflict_of: Option<String>,
    /// Why the body was quarantined.
    pub quarantine_reason: Option<String>,
    /// The body as received, only in the detail view: parsed and masked like `data`, or
    /// verbatim (a string) when secrets may be revealed.
    pub body: Option<Value>,
}

/// A page of events, newest first.
#[derive(Object, Debug, Clone)]
pub struct EventPage {
    /// The events.
    pub items: Vec<EventView>,
    /// Pass as `before` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// Answers of the list operations.
#[derive(ApiResponse)]
#[oai(bad_request_handler = "list_bad_request")]
pub enum ListAnswer {
    /// A page of events.
    #[oai(status = 200)]
    Page(Json<EventPage>),
    /// A query parameter is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The admin token is missing or wrong, or none is configured.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The store could not be read.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// Answers of the detail operation.
#[derive(ApiResponse)]
#[oai(bad_request_handler = "detail_bad_request")]
pub enum DetailAnswer {
    /// The event.
    #[oai(status = 200)]
    Event(Json<Box<EventView>>),
    /// The id is not a UUID.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The admin token is missing or wrong, or none is configured.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// No event has this id.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The store could not be read.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn body(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.into(),
        message: message.into(),
    })
}

fn is_auth_error(err: &poem::Error) -> bool {
    err.is::<poem_openapi::error::AuthorizationError>()
}

fn list_bad_request(err: poem::Error) -> ListAnswer {
    if is_auth_error(&err) {
        ListAnswer::Unauthorized(body("unauthorized", "A valid admin token is required."))
    } else {
        ListAnswer::BadRequest(body("bad_request", err.to_string()))
    }
}

fn detail_bad_request(err: poem::Error) -> DetailAnswer {
    if is_auth_error(&err) {
        DetailAnswer::Unauthorized(body("unauthorized", "A valid admin token is required."))
    } else {
        DetailAnswer::BadRequest(body("bad_request", err.to_string()))
    }
}

/// The admin operations.
pub struct AdminApi {
    token: Option<Secret>,
    reveal: bool,
}

impl AdminApi {
    /// The API; without a token it refuses everything.
    pub fn new(token: Option<Secret>, reveal: bool) -> Self {
        AdminApi { token, reveal }
    }

    fn authorized(&self, presented: &AdminToken) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| t.matches(presented.0.token.as_bytes()))
    }

    fn view(&self, e: Event, with_body: bool) -> EventView {
        let mut data = e.data;
        let mut shown_body = None;
        if with_body {
            shown_body = Some(if self.reveal {
                Value::String(String::from_utf8_lossy(&e.body).into_owned())
            } else {
                let mut b = mask_raw_body(&e.body);
                mask_pointers(&mut b, &e.secret_paths);
                b
            });
        }
        if !self.reveal {
            if let Some(d) = data.as_mut() {
                mask_pointers(d, &e.secret_paths);
                mask_by_name(d);
            }
        }
        EventView {
            id: e.id.to_string(),
            provider: e.provider,
            endpoint: e.endpoint,
            event_type: e.event_type,
            received_at: e.received_at.to_rfc3339(),
            status: e.status.into(),
            idempotency_key: e.idempotency_key,
            fingerprint: e.fingerprint,
            data,
            meta: e.meta,
            flags: e.flags,
            conflict_of: e.conflict_of.map(|i| i.to_string()),
            quarantine_reason: e.quarantine_reason,
            body: shown_body,
        }
    }

    fn page(
        &self,
        store: &Store,
        filter: EventFilter,
        limit: Option<u32>,
        before: Option<String>,
    ) -> ListAnswer {
        let before = match before.map(|b| b.parse::<EventId>()).transpose() {
            Ok(b) => b,
            Err(_) => {
                return ListAnswer::BadRequest(body("bad_request", "`before` is not an event id"));
            }
        };
        let limit = limit.unwrap_or(50).clamp(1, 500) as usize;
        match store.events(&filter, before, limit) {
            Ok(page) => ListAnswer::Page(Json(EventPage {
                items: page
                    .items
                    .into_iter()
                    .map(|e| self.view(e, false))
                    .collect(),
                next: page.next.map(|i| i.to_string()),
            })),
            Err(e) => {
                tracing::error!(error = %e, "admin: listing events failed");
                ListAnswer::Unavailable(body(
                    "temporarily_unavailable",
                    "The store could not be read.",
                ))
            }
        }
    }
}

#[OpenApi(tag = "AdminTag::Admin")]
impl AdminApi {
    /// List events
    ///
    /// Stored events, newest first, filtered by provider, type and status.
    #[oai(
        path = "/admin/events",
        method = "get",
        operation_id = "adminListEvents"
    )]
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    async fn list_events(
        &self,
        store: Data<&Store>,
        token: AdminToken,
        /// Only events of this provider (`pomelo`, `verifyvasp`, ...).
        provider: Query<Option<String>>,
        /// Only events of this type (`tokenization_otp`, `tx_report`, ...).
        #[oai(name = "type")]
        event_type: Query<Option<String>>,
        /// Only events in this status.
        status: Query<Option<Status>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<u32>>,
        /// Only events older than this event id (the `next` of the previous page).
        before: Query<Option<String>>,
    ) -> ListAnswer {
        if !self.authorized(&token) {
            return list_bad_request(poem_openapi::error::AuthorizationError.into());
        }
        let filter = EventFilter {
            provider: provider.0,
            event_type: event_type.0,
            status: status.0.map(Into::into),
        };
        self.page(&store, filter, limit.0, before.0)
    }

    /// List the quarantine
    ///
    /// Events whose authenticated body did not match the provider's schema, newest first.
    #[oai(
        path = "/admin/quarantine",
        method = "get",
        operation_id = "adminListQuarantine"
    )]
    async fn list_quarantine(
        &self,
        store: Data<&Store>,
        token: AdminToken,
        /// Only events of this provider.
        provider: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<u32>>,
        /// Only events older than this event id (the `next` of the previous page).
        before: Query<Option<String>>,
    ) -> ListAnswer {
        if !self.authorized(&token) {
            return list_bad_request(poem_openapi::error::AuthorizationError.into());
        }
        let filter = EventFilter {
            provider: provider.0,
            status: Some(EventStatus::Quarantined),
            ..EventFilter::default()
        };
        self.page(&store, filter, limit.0, before.0)
    }

    /// Get an event
    ///
    /// One event with its body (masked unless secrets may be revealed).
    #[oai(
        path = "/admin/events/:id",
        method = "get",
        operation_id = "adminGetEvent"
    )]
    async fn get_event(
        &self,
        store: Data<&Store>,
        token: AdminToken,
        /// The event id.
        id: Path<String>,
    ) -> DetailAnswer {
        if !self.authorized(&token) {
            return detail_bad_request(poem_openapi::error::AuthorizationError.into());
        }
        let Ok(id) = id.0.parse::<EventId>() else {
            return DetailAnswer::BadRequest(body("bad_request", "The id is not an event id."));
        };
        match store.event(id) {
            Ok(Some(e)) => DetailAnswer::Event(Json(Box::new(self.view(e, true)))),
            Ok(None) => DetailAnswer::NotFound(body("not_found", "No event has this id.")),
            Err(e) => {
                tracing::error!(error = %e, "admin: reading an event failed");
                DetailAnswer::Unavailable(body(
                    "temporarily_unavailable",
                    "The store could not be read.",
                ))
            }
        }
    }
}
