//! The admin API: stored events, the quarantine, the outbox and its deliveries, route
//! scripts, replays, recent counts, and trying a script against a stored event. Protected
//! by its own bearer token; secret values are masked unless `admin.reveal_secrets` is set.
//! Request bodies are limited to `server.body_limit` ([`AdminBodyLimit`]).
//!
//! - `views.rs`: the documented shapes of answers, with their examples.
//! - `try_run.rs`: "try a script", the one place it runs a script.
//! - `limit.rs`: the body limit of admin and console requests.

mod limit;
mod try_run;
mod views;

use chrono::{DateTime, Utc};
pub use limit::AdminBodyLimit;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use switchboard_core::{
    event::{EventId, EventStatus},
    outbox::{ActionFilter, ActionId, DeliveryStatus},
    route::scripts::Source,
    store::{EventFilter, Store, first_id_at},
};
use switchboard_plugins::http::ErrorBody;
pub use try_run::run_limits;
pub use views::*;

use crate::ctx::AdminCtx;

#[derive(Tags)]
enum AdminTag {
    /// Operator API: stored events, the quarantine, deliveries, route scripts and
    /// replays. Bearer token `admin.token`.
    Admin,
}

pub use crate::auth::AdminToken;

/// A page of events, newest first.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct EventPage {
    /// The events.
    pub items: Vec<EventView>,
    /// Pass as `before` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// A page of deliveries, newest first.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct DeliveryPage {
    /// The actions.
    pub items: Vec<ActionView>,
    /// Pass as `before` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// The route scripts.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct RoutesView {
    /// `dir:<path>` (watched for changes) or `embedded` (the defaults built in).
    pub source: String,
    /// The scripts running.
    pub scripts: Vec<String>,
    /// Scripts that do not compile now, each with whether its last good version runs.
    pub errors: Vec<CompileErrorView>,
}

/// Which events to replay.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct EventSelector {
    /// `failed` or `quarantined`. Routed events are replayed one by one
    /// (`POST /admin/events/{id}/replay`): that sends their messages again.
    pub status: Status,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this event type.
    #[oai(rename = "type")]
    pub event_type: Option<String>,
}

/// Which deliveries to replay.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct DeliverySelector {
    /// `dead`, `retrying` or `pending`. Sent deliveries are sent again one by one
    /// (`POST /admin/deliveries/{id}/replay`).
    pub status: Delivery,
    /// Only this channel.
    pub channel: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
}

/// A bulk replay: the events to route again and the deliveries to send again (at least
/// one of the two).
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Events whose route runs again.
    pub events: Option<EventSelector>,
    /// Deliveries attempted again now.
    pub deliveries: Option<DeliverySelector>,
    /// At most this many of each, 1 to 10000 (default 1000).
    pub limit: Option<u32>,
    /// Change nothing: only count what would be replayed (to confirm before replaying).
    #[oai(rename = "dryRun")]
    pub dry_run: Option<bool>,
}

/// What a bulk replay did (or, with `dryRun`, would do).
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", example)]
pub struct ReplaySummary {
    /// Events put back in the inbox.
    pub events: u32,
    /// Deliveries scheduled again.
    pub deliveries: u32,
    /// Quarantined events whose body still does not parse (left as they are).
    pub still_unparseable: u32,
    /// Nothing was changed: the counts say what a replay would do.
    pub dry_run: bool,
}

impl Example for EventPage {
    fn example() -> Self {
        EventPage {
            items: vec![EventView {
                body: None,
                actions: None,
                ..EventView::example()
            }],
            next: Some("01936f4e-8a11-7f00-8c2b-3d4e5f60718a".into()),
        }
    }
}

impl Example for DeliveryPage {
    fn example() -> Self {
        DeliveryPage {
            items: vec![ActionView::example()],
            next: None,
        }
    }
}

impl Example for RoutesView {
    fn example() -> Self {
        RoutesView {
            source: "dir:/etc/switchboard/routes".into(),
            scripts: vec![
                "_default.rhai".into(),
                "pomelo/tokenization_otp.rhai".into(),
                "verifyvasp/_default.rhai".into(),
            ],
            errors: vec![CompileErrorView::example()],
        }
    }
}

impl Example for ReplaySummary {
    fn example() -> Self {
        ReplaySummary {
            events: 12,
            deliveries: 3,
            still_unparseable: 1,
            dry_run: false,
        }
    }
}

macro_rules! answers {
    ($name:ident, $handler:ident = $handler_name:literal, ok = $ok_status:literal $ok:ident($ok_ty:ty) : $ok_doc:literal $(, $status:literal $variant:ident : $doc:literal)*) => {
        #[derive(ApiResponse)]
        #[oai(bad_request_handler = $handler_name)]
        pub enum $name {
            #[doc = $ok_doc]
            #[oai(status = $ok_status)]
            $ok(Json<$ok_ty>),
            /// A parameter or the body is invalid.
            #[oai(status = 400)]
            BadRequest(Json<ErrorBody>),
            /// The admin token is missing or wrong, or none is configured.
            #[oai(status = 401)]
            Unauthorized(Json<ErrorBody>),
            $(
                #[doc = $doc]
                #[oai(status = $status)]
                $variant(Json<ErrorBody>),
            )*
            /// The store could not be read or written.
            #[oai(status = 503)]
            Unavailable(Json<ErrorBody>),
        }

        fn $handler(err: poem::Error) -> $name {
            if err.is::<poem_openapi::error::AuthorizationError>() {
                $name::Unauthorized(body("unauthorized", "A valid admin token is required."))
            } else {
                $name::BadRequest(body("bad_request", err.to_string()))
            }
        }
    };
}

answers!(ListAnswer, list_bad_request = "list_bad_request", ok = 200 Page(EventPage) : "A page of events.");
answers!(DetailAnswer, detail_bad_request = "detail_bad_request", ok = 200 Event(Box<EventView>) : "The event, with its body and its actions.",
    404 NotFound : "No event has this id.");
answers!(DeliveriesAnswer, deliveries_bad_request = "deliveries_bad_request", ok = 200 Page(DeliveryPage) : "A page of deliveries.");
answers!(DeliveryAnswer, delivery_bad_request = "delivery_bad_request", ok = 200 Action(Box<ActionView>) : "The action with every attempt.",
    404 NotFound : "No action has this id.");
answers!(ReplayEventAnswer, replay_event_bad_request = "replay_event_bad_request", ok = 202 Replayed(Box<EventView>) : "Back in the inbox: its route runs again shortly.",
    404 NotFound : "No event has this id.",
    409 Conflict : "The event is already waiting for its route.",
    422 Unparseable : "A quarantined event whose body still does not parse (the message says why).");
answers!(ReplayDeliveryAnswer, replay_delivery_bad_request = "replay_delivery_bad_request", ok = 202 Replayed(Box<ActionView>) : "Scheduled again now.",
    404 NotFound : "No action has this id.",
    409 Conflict : "The action is being sent right now, or it expired (its `valid_for` ran out: it is never sent late).");
answers!(BulkReplayAnswer, bulk_bad_request = "bulk_bad_request", ok = 202 Replayed(ReplaySummary) : "What was replayed.");
answers!(RoutesAnswer, routes_bad_request = "routes_bad_request", ok = 200 Routes(RoutesView) : "The route scripts and their compile errors.");
answers!(SourceAnswer, source_bad_request = "source_bad_request", ok = 200 Source(ScriptSourceView) : "The script's text.",
    404 NotFound : "No script has this name.");
answers!(StatsAnswer, stats_bad_request = "stats_bad_request", ok = 200 Stats(StatsView) : "Counts over the last hour and day.");
answers!(TryAnswer, try_bad_request = "try_bad_request", ok = 200 Tried(Box<TryResult>) : "What the script did (it may have failed: see `outcome`). Nothing was queued.",
    404 NotFound : "No event has this id.");

fn body(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.into(),
        message: message.into(),
    })
}

fn unavailable(what: &str, e: &switchboard_core::Error) -> Json<ErrorBody> {
    tracing::error!(error = %e, "admin: {what} failed");
    body(
        "temporarily_unavailable",
        "The store could not be read or written.",
    )
}

/// The admin operations. Each takes an [`AdminToken`]: the scheme checks the token
/// before the operation runs.
pub struct AdminApi {
    reveal: bool,
}

/// The answer to a page size out of range.
const PAGE_SIZE: &str = "`limit` must be 1 to 500.";

/// A page size: 50 by default, 1 to 500 when given.
fn page_size(limit: Option<u32>) -> Option<usize> {
    match limit {
        None => Some(50),
        Some(l @ 1..=500) => Some(l as usize),
        Some(_) => None,
    }
}

/// Most items of each kind a bulk replay touches.
const BULK_MAX: usize = 10_000;
const BULK_MAX_U32: u32 = BULK_MAX as u32;

impl AdminApi {
    /// The API; `reveal` shows secret values unmasked.
    pub fn new(reveal: bool) -> Self {
        AdminApi { reveal }
    }

    async fn page(
        &self,
        store: &Store,
        filter: EventFilter,
        limit: Option<u32>,
        before: Option<String>,
        window: Window,
    ) -> ListAnswer {
        let before = match before.map(|b| b.parse::<EventId>()).transpose() {
            Ok(b) => b,
            Err(_) => {
                return ListAnswer::BadRequest(body("bad_request", "`before` is not an event id"));
            }
        };
        let Some(limit) = page_size(limit) else {
            return ListAnswer::BadRequest(body("bad_request", PAGE_SIZE));
        };
        // `until` is inclusive: every id of its millisecond sorts before the first id of
        // the next one.
        let until = window
            .until
            .map(|u| EventId(first_id_at(ms(u).saturating_add(1))));
        let before = match (before, until) {
            (Some(b), Some(u)) => Some(b.min(u)),
            (b, u) => b.or(u),
        };
        let filter = EventFilter {
            since_ms: window.since.map(ms),
            ..filter
        };
        match store.events(&filter, before, limit).await {
            Ok(page) => ListAnswer::Page(Json(EventPage {
                items: page
                    .items
                    .into_iter()
                    .map(|e| event(e, None, self.reveal))
                    .collect(),
                next: page.next.map(|i| i.to_string()),
            })),
            Err(e) => ListAnswer::Unavailable(unavailable("listing events", &e)),
        }
    }

    /// Replays one event; with `dry`, only says what a replay would do.
    async fn replay_one(
        &self,
        store: &Store,
        ctx: &AdminCtx,
        id: EventId,
        dry: bool,
    ) -> Result<ReplayOutcome, switchboard_core::Error> {
        let Some(e) = store.event(id).await? else {
            return Ok(ReplayOutcome::NotFound);
        };
        let reparsed = match e.status {
            EventStatus::Received => return Ok(ReplayOutcome::Waiting),
            EventStatus::Quarantined => {
                match ctx
                    .providers
                    .reparse(&e.provider, &e.event_type, &e.body, &e.meta)
                {
                    Ok(r) => Some((r.event_type, r.data, r.flags)),
                    Err(reason) => return Ok(ReplayOutcome::Unparseable(reason)),
                }
            }
            EventStatus::Routed | EventStatus::Failed => None,
        };
        if dry {
            return Ok(ReplayOutcome::Replayed(Box::new(e)));
        }
        Ok(match store.replay_event(id, reparsed).await? {
            Some(e) => {
                tracing::info!(event_id = %id, provider = %e.provider, event_type = %e.event_type, "event replayed by an operator");
                ReplayOutcome::Replayed(Box::new(e))
            }
            None => ReplayOutcome::NotFound,
        })
    }
}

/// A time window of a listing: received at or after `since`, at or before `until`.
#[derive(Default)]
struct Window {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// Milliseconds since the epoch (0 before it).
fn ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

enum ReplayOutcome {
    Replayed(Box<switchboard_core::event::Event>),
    NotFound,
    Waiting,
    Unparseable(String),
}

fn bad_id(what: &str) -> Json<ErrorBody> {
    body("bad_request", format!("The id is not {what} id."))
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
        _token: AdminToken,
        /// Only events of this provider (`pomelo`, `verifyvasp`, `verestro`).
        provider: Query<Option<String>>,
        /// Only events of this type (`tokenization_otp`, `tx_report`, `otp`, ...).
        #[oai(name = "type")]
        event_type: Query<Option<String>>,
        /// Only events in this status.
        status: Query<Option<Status>>,
        /// Only events received at or after this time (RFC 3339).
        since: Query<Option<DateTime<Utc>>>,
        /// Only events received at or before this time (RFC 3339).
        until: Query<Option<DateTime<Utc>>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<u32>>,
        /// Only events older than this event id (the `next` of the previous page).
        before: Query<Option<String>>,
    ) -> ListAnswer {
        let filter = EventFilter {
            provider: provider.0,
            event_type: event_type.0,
            status: status.0.map(Into::into),
            ..EventFilter::default()
        };
        let window = Window {
            since: since.0,
            until: until.0,
        };
        self.page(&store, filter, limit.0, before.0, window).await
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
        _token: AdminToken,
        /// Only events of this provider.
        provider: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<u32>>,
        /// Only events older than this event id (the `next` of the previous page).
        before: Query<Option<String>>,
    ) -> ListAnswer {
        let filter = EventFilter {
            provider: provider.0,
            status: Some(EventStatus::Quarantined),
            ..EventFilter::default()
        };
        self.page(&store, filter, limit.0, before.0, Window::default())
            .await
    }

    /// Get an event
    ///
    /// One event with its body (masked unless secrets may be revealed), its last route run
    /// and its actions with every delivery attempt.
    #[oai(
        path = "/admin/events/:id",
        method = "get",
        operation_id = "adminGetEvent"
    )]
    async fn get_event(
        &self,
        store: Data<&Store>,
        _token: AdminToken,
        /// The event id.
        id: Path<String>,
    ) -> DetailAnswer {
        let Ok(id) = id.0.parse::<EventId>() else {
            return DetailAnswer::BadRequest(bad_id("an event"));
        };
        let found = match store.event(id).await {
            Ok(Some(e)) => store.actions_of(&e).await.map(|a| Some((e, a))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match found {
            Ok(Some((e, actions))) => {
                DetailAnswer::Event(Json(Box::new(event(e, Some(actions), self.reveal))))
            }
            Ok(None) => DetailAnswer::NotFound(body("not_found", "No event has this id.")),
            Err(e) => DetailAnswer::Unavailable(unavailable("reading an event", &e)),
        }
    }

    /// Replay an event
    ///
    /// Puts the event back in the inbox, so that its route runs again (after a script
    /// fix, for instance). A quarantined event is parsed again first. A routed event gets
    /// new actions: its earlier ones are not undone.
    #[oai(
        path = "/admin/events/:id/replay",
        method = "post",
        operation_id = "adminReplayEvent"
    )]
    async fn replay_event(
        &self,
        store: Data<&Store>,
        ctx: Data<&AdminCtx>,
        _token: AdminToken,
        /// The event id.
        id: Path<String>,
    ) -> ReplayEventAnswer {
        let Ok(id) = id.0.parse::<EventId>() else {
            return ReplayEventAnswer::BadRequest(bad_id("an event"));
        };
        match self.replay_one(&store, &ctx, id, false).await {
            Ok(ReplayOutcome::Replayed(e)) => {
                ReplayEventAnswer::Replayed(Json(Box::new(event(*e, None, self.reveal))))
            }
            Ok(ReplayOutcome::NotFound) => {
                ReplayEventAnswer::NotFound(body("not_found", "No event has this id."))
            }
            Ok(ReplayOutcome::Waiting) => ReplayEventAnswer::Conflict(body(
                "conflict",
                "The event is already waiting for its route.",
            )),
            Ok(ReplayOutcome::Unparseable(reason)) => {
                ReplayEventAnswer::Unparseable(body("still_unparseable", reason))
            }
            Err(e) => ReplayEventAnswer::Unavailable(unavailable("replaying an event", &e)),
        }
    }

    /// List deliveries
    ///
    /// Actions in the outbox, newest first, filtered by status, channel and provider.
    #[oai(
        path = "/admin/deliveries",
        method = "get",
        operation_id = "adminListDeliveries"
    )]
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    async fn list_deliveries(
        &self,
        store: Data<&Store>,
        _token: AdminToken,
        /// Only deliveries in this status.
        status: Query<Option<Delivery>>,
        /// Only this channel (`email`, `sms`, `http`, `log`).
        channel: Query<Option<String>>,
        /// Only this provider.
        provider: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<u32>>,
        /// Only actions older than this action id (the `next` of the previous page).
        before: Query<Option<String>>,
    ) -> DeliveriesAnswer {
        let before = match before.0.map(|b| b.parse::<ActionId>()).transpose() {
            Ok(b) => b,
            Err(_) => {
                return DeliveriesAnswer::BadRequest(body(
                    "bad_request",
                    "`before` is not an action id",
                ));
            }
        };
        let filter = ActionFilter {
            status: status.0.map(Into::into),
            channel: channel.0,
            provider: provider.0,
        };
        let Some(limit) = page_size(limit.0) else {
            return DeliveriesAnswer::BadRequest(body("bad_request", PAGE_SIZE));
        };
        match store.actions(&filter, before, limit).await {
            Ok((items, next)) => DeliveriesAnswer::Page(Json(DeliveryPage {
                items: items.into_iter().map(|a| action(a, self.reveal)).collect(),
                next: next.map(|i| i.to_string()),
            })),
            Err(e) => DeliveriesAnswer::Unavailable(unavailable("listing deliveries", &e)),
        }
    }

    /// Get a delivery
    ///
    /// One action with every attempt.
    #[oai(
        path = "/admin/deliveries/:id",
        method = "get",
        operation_id = "adminGetDelivery"
    )]
    async fn get_delivery(
        &self,
        store: Data<&Store>,
        _token: AdminToken,
        /// The action id.
        id: Path<String>,
    ) -> DeliveryAnswer {
        let Ok(id) = id.0.parse::<ActionId>() else {
            return DeliveryAnswer::BadRequest(bad_id("an action"));
        };
        match store.action(id).await {
            Ok(Some(a)) => DeliveryAnswer::Action(Json(Box::new(action(a, self.reveal)))),
            Ok(None) => DeliveryAnswer::NotFound(body("not_found", "No action has this id.")),
            Err(e) => DeliveryAnswer::Unavailable(unavailable("reading a delivery", &e)),
        }
    }

    /// Replay a delivery
    ///
    /// Sends the action again now, with a new retry schedule: a dead one after its cause
    /// is fixed, or a sent one on purpose. Not one being sent, nor an expired one (its
    /// `valid_for` ran out: it is never sent late). HTTP deliveries keep their
    /// `Idempotency-Key`.
    #[oai(
        path = "/admin/deliveries/:id/replay",
        method = "post",
        operation_id = "adminReplayDelivery"
    )]
    async fn replay_delivery(
        &self,
        store: Data<&Store>,
        _token: AdminToken,
        /// The action id.
        id: Path<String>,
    ) -> ReplayDeliveryAnswer {
        let Ok(id) = id.0.parse::<ActionId>() else {
            return ReplayDeliveryAnswer::BadRequest(bad_id("an action"));
        };
        match store.replay_action(id).await {
            Ok(Some(a)) if a.status == DeliveryStatus::Sending => ReplayDeliveryAnswer::Conflict(
                body("conflict", "The action is being sent right now."),
            ),
            Ok(Some(a)) if a.status == DeliveryStatus::Expired => {
                ReplayDeliveryAnswer::Conflict(body(
                    "conflict",
                    "The message expired (its `valid_for` ran out): it is never sent late.",
                ))
            }
            Ok(Some(a)) => {
                tracing::info!(action_id = %id, channel = %a.channel, "delivery replayed by an operator");
                ReplayDeliveryAnswer::Replayed(Json(Box::new(action(a, self.reveal))))
            }
            Ok(None) => ReplayDeliveryAnswer::NotFound(body("not_found", "No action has this id.")),
            Err(e) => ReplayDeliveryAnswer::Unavailable(unavailable("replaying a delivery", &e)),
        }
    }

    /// Replay in bulk
    ///
    /// Routes again every event that matches `events` (e.g. all `failed` events of a
    /// provider, once the script is fixed) and sends again every delivery that matches
    /// `deliveries` (e.g. all `dead` emails, once the SMTP server is back). With `dryRun`,
    /// changes nothing and answers how many would be replayed.
    #[oai(path = "/admin/replay", method = "post", operation_id = "adminReplay")]
    async fn replay(
        &self,
        store: Data<&Store>,
        ctx: Data<&AdminCtx>,
        _token: AdminToken,
        request: Json<ReplayRequest>,
    ) -> BulkReplayAnswer {
        if request.events.is_none() && request.deliveries.is_none() {
            return BulkReplayAnswer::BadRequest(body(
                "bad_request",
                "Say what to replay: `events`, `deliveries` or both.",
            ));
        }
        let limit = match request.limit {
            None => 1000,
            Some(l @ 1..=BULK_MAX_U32) => l as usize,
            Some(_) => {
                return BulkReplayAnswer::BadRequest(body(
                    "bad_request",
                    "`limit` must be 1 to 10000.",
                ));
            }
        };
        let dry = request.dry_run.unwrap_or(false);
        let mut summary = ReplaySummary {
            events: 0,
            deliveries: 0,
            still_unparseable: 0,
            dry_run: dry,
        };
        // Checked before anything is replayed, so that a refusal changes nothing.
        if request
            .events
            .as_ref()
            .is_some_and(|sel| !matches!(sel.status, Status::Failed | Status::Quarantined))
        {
            return BulkReplayAnswer::BadRequest(body(
                "bad_request",
                "Only `failed` and `quarantined` events are replayed in bulk: received ones are \
                 already waiting for their route, and routing a routed event again sends its \
                 messages again (replay those one by one).",
            ));
        }
        if request.deliveries.as_ref().is_some_and(|sel| {
            !matches!(
                sel.status,
                Delivery::Dead | Delivery::Retrying | Delivery::Pending
            )
        }) {
            return BulkReplayAnswer::BadRequest(body(
                "bad_request",
                "Only `dead`, `retrying` and `pending` deliveries are replayed in bulk: a sent \
                 one would be sent twice (replay those one by one), an expired one is never \
                 sent late.",
            ));
        }
        if let Some(sel) = &request.events {
            let filter = EventFilter {
                provider: sel.provider.clone(),
                event_type: sel.event_type.clone(),
                status: Some(sel.status.into()),
                ..EventFilter::default()
            };
            // Collect first: replaying changes the status the filter selects on.
            let mut ids = Vec::new();
            let mut before = None;
            while ids.len() < limit {
                match store.events(&filter, before, 500).await {
                    Ok(page) => {
                        ids.extend(page.items.iter().map(|e| e.id));
                        match page.next {
                            Some(n) => before = Some(n),
                            None => break,
                        }
                    }
                    Err(e) => {
                        return BulkReplayAnswer::Unavailable(unavailable("listing events", &e));
                    }
                }
            }
            ids.truncate(limit);
            for id in ids {
                match self.replay_one(&store, &ctx, id, dry).await {
                    Ok(ReplayOutcome::Replayed(_)) => summary.events += 1,
                    Ok(ReplayOutcome::Unparseable(_)) => summary.still_unparseable += 1,
                    Ok(_) => {}
                    Err(e) => {
                        return BulkReplayAnswer::Unavailable(unavailable("replaying events", &e));
                    }
                }
            }
        }
        if let Some(sel) = &request.deliveries {
            let filter = ActionFilter {
                status: Some(sel.status.into()),
                channel: sel.channel.clone(),
                provider: sel.provider.clone(),
            };
            let mut ids = Vec::new();
            let mut before = None;
            while ids.len() < limit {
                match store.actions(&filter, before, 500).await {
                    Ok((items, next)) => {
                        ids.extend(items.iter().map(|a| a.id));
                        match next {
                            Some(n) => before = Some(n),
                            None => break,
                        }
                    }
                    Err(e) => {
                        return BulkReplayAnswer::Unavailable(unavailable(
                            "listing deliveries",
                            &e,
                        ));
                    }
                }
            }
            ids.truncate(limit);
            if dry {
                // Listed in a status bulk replay takes; none of them is being sent.
                summary.deliveries = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                ids.clear();
            }
            for id in ids {
                match store.replay_action(id).await {
                    Ok(Some(a)) if a.status != DeliveryStatus::Sending => summary.deliveries += 1,
                    Ok(_) => {}
                    Err(e) => {
                        return BulkReplayAnswer::Unavailable(unavailable(
                            "replaying deliveries",
                            &e,
                        ));
                    }
                }
            }
        }
        if !dry {
            tracing::info!(
                events = summary.events,
                deliveries = summary.deliveries,
                "bulk replay by an operator"
            );
        }
        BulkReplayAnswer::Replayed(Json(summary))
    }

    /// Route scripts
    ///
    /// The scripts running and those that do not compile (with file, line and column; their
    /// last good version keeps running).
    #[oai(path = "/admin/routes", method = "get", operation_id = "adminRoutes")]
    async fn routes(&self, ctx: Data<&AdminCtx>, _token: AdminToken) -> RoutesAnswer {
        let source = match ctx.scripts.source() {
            switchboard_core::route::scripts::Source::Dir(d) => format!("dir:{}", d.display()),
            switchboard_core::route::scripts::Source::Embedded(_) => "embedded".into(),
        };
        RoutesAnswer::Routes(Json(RoutesView {
            source,
            scripts: ctx.scripts.names(),
            errors: ctx
                .scripts
                .errors()
                .into_iter()
                .map(|e| {
                    let running = ctx.scripts.runs(&e.file);
                    CompileErrorView::new(e, running)
                })
                .collect(),
        }))
    }

    /// Recent counts
    ///
    /// Events received over the last hour and the last 24 hours, per provider and current
    /// status; deliveries queued over the same windows, per channel and current status.
    #[oai(path = "/admin/stats", method = "get", operation_id = "adminStats")]
    async fn stats(&self, store: Data<&Store>, _token: AdminToken) -> StatsAnswer {
        let now = Utc::now();
        let windows = [
            ms(now - chrono::Duration::hours(1)),
            ms(now - chrono::Duration::hours(24)),
        ];
        let counted = match store.event_counts(&windows).await {
            Ok(e) => store.action_counts(&windows).await.map(|a| (e, a)),
            Err(e) => Err(e),
        };
        let (events, actions) = match counted {
            Ok(c) => c,
            Err(e) => return StatsAnswer::Unavailable(unavailable("counting", &e)),
        };
        let at =
            |c: &switchboard_core::store::Counts, i: usize| c.counts.get(i).copied().unwrap_or(0);
        let mut events: Vec<EventCountView> = events
            .into_iter()
            .map(|((provider, status), c)| EventCountView {
                provider,
                status: status.into(),
                last_hour: at(&c, 0),
                last_day: at(&c, 1),
            })
            .collect();
        events.sort_by(|a, b| {
            (a.provider.as_str(), a.status as u8).cmp(&(b.provider.as_str(), b.status as u8))
        });
        let mut deliveries: Vec<DeliveryCountView> = actions
            .into_iter()
            .map(|((channel, status), c)| DeliveryCountView {
                channel,
                status: status.into(),
                last_hour: at(&c, 0),
                last_day: at(&c, 1),
            })
            .collect();
        deliveries.sort_by(|a, b| {
            (a.channel.as_str(), a.status as u8).cmp(&(b.channel.as_str(), b.status as u8))
        });
        StatsAnswer::Stats(Json(StatsView {
            at: now.to_rfc3339(),
            events,
            deliveries,
        }))
    }

    /// A script's text
    ///
    /// The text of a route script, as the routes directory holds it now (or as built in),
    /// to edit and try.
    #[oai(
        path = "/admin/routes/source",
        method = "get",
        operation_id = "adminRouteSource"
    )]
    async fn route_source(
        &self,
        ctx: Data<&AdminCtx>,
        _token: AdminToken,
        /// The script, relative to the routes directory (`pomelo/tokenization_otp.rhai`).
        file: Query<String>,
    ) -> SourceAnswer {
        let file = file.0;
        // Only a script the server knows, never a path of the caller's choosing.
        let known = ctx.scripts.names().contains(&file)
            || ctx.scripts.errors().iter().any(|e| e.file == file);
        let text = match ctx.scripts.source() {
            _ if !known => None,
            Source::Dir(d) => std::fs::read_to_string(d.join(&file)).ok(),
            Source::Embedded(list) => list
                .iter()
                .find(|(n, _)| *n == file)
                .map(|(_, t)| (*t).to_owned()),
        };
        match text {
            Some(text) => SourceAnswer::Source(Json(ScriptSourceView { file, text })),
            None => SourceAnswer::NotFound(body("not_found", "No script has this name.")),
        }
    }

    /// Try a script
    ///
    /// Runs a route script against a stored event, in the sandbox and with the limits of
    /// a real run, and answers the actions it would queue, what it printed, the lookups it
    /// made and any error, without queuing or sending anything. The script is the event's
    /// current one, or `script` (text to try before saving it). Lookups are answered from
    /// `answers`, then, with `live`, by the configured services.
    #[oai(
        path = "/admin/routes/try",
        method = "post",
        operation_id = "adminTryRoute"
    )]
    async fn try_route(
        &self,
        store: Data<&Store>,
        ctx: Data<&AdminCtx>,
        _token: AdminToken,
        request: Json<TryRequest>,
    ) -> TryAnswer {
        let request = request.0;
        let Ok(id) = request.event_id.parse::<EventId>() else {
            return TryAnswer::BadRequest(bad_id("an event"));
        };
        let event = match store.event(id).await {
            Ok(Some(e)) => e,
            Ok(None) => return TryAnswer::NotFound(body("not_found", "No event has this id.")),
            Err(e) => return TryAnswer::Unavailable(unavailable("reading an event", &e)),
        };
        if event.data.is_none() {
            return TryAnswer::BadRequest(body(
                "bad_request",
                "A quarantined event has no parsed body for a script to read.",
            ));
        }
        let lookups = try_run::Recorder::new(
            request.answers.unwrap_or_default(),
            ctx.lookups.clone(),
            request.live.unwrap_or(false),
        );
        let result = try_run::try_script(
            &ctx.routes,
            &ctx.scripts,
            &ctx.router,
            event,
            request.script,
            lookups,
            self.reveal,
        )
        .await;
        tracing::info!(event_id = %id, script = result.script.as_deref().unwrap_or("none"), outcome = ?result.outcome, "route script tried by an operator");
        TryAnswer::Tried(Json(Box::new(result)))
    }
}
