//! What the admin API shows: events, actions and attempts, with secret values masked
//! unless the server is configured to reveal them.

use std::collections::BTreeMap;

use poem_openapi::{Enum, Object, types::Example};
use serde_json::{Value, json};
use switchboard_core::{
    event::{Event, EventStatus},
    mask::{mask_by_name, mask_pointers, mask_raw_body, mask_values},
    outbox::{Action, Attempt, AttemptOutcome, DeliveryStatus},
    route::scripts::CompileError,
};

/// An event's status.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Status {
    /// Stored; waiting for its route.
    Received,
    /// Its route ran; its actions are in the outbox.
    Routed,
    /// Its route failed; parked for replay.
    Failed,
    /// The body did not match the provider's schema; kept for an operator.
    Quarantined,
}

impl From<Status> for EventStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Received => EventStatus::Received,
            Status::Routed => EventStatus::Routed,
            Status::Failed => EventStatus::Failed,
            Status::Quarantined => EventStatus::Quarantined,
        }
    }
}

impl From<EventStatus> for Status {
    fn from(s: EventStatus) -> Self {
        match s {
            EventStatus::Received => Status::Received,
            EventStatus::Routed => Status::Routed,
            EventStatus::Failed => Status::Failed,
            EventStatus::Quarantined => Status::Quarantined,
        }
    }
}

/// A delivery's status.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Delivery {
    /// Queued, not tried yet (or replayed).
    Pending,
    /// Being sent.
    Sending,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Delivered.
    Sent,
    /// Failed for good; replayable.
    Dead,
    /// Not sent: its `valid_for` ran out first (an OTP nobody can use any more).
    Expired,
}

impl From<Delivery> for DeliveryStatus {
    fn from(s: Delivery) -> Self {
        match s {
            Delivery::Pending => DeliveryStatus::Pending,
            Delivery::Sending => DeliveryStatus::Sending,
            Delivery::Retrying => DeliveryStatus::Retrying,
            Delivery::Sent => DeliveryStatus::Sent,
            Delivery::Dead => DeliveryStatus::Dead,
            Delivery::Expired => DeliveryStatus::Expired,
        }
    }
}

impl From<DeliveryStatus> for Delivery {
    fn from(s: DeliveryStatus) -> Self {
        match s {
            DeliveryStatus::Pending => Delivery::Pending,
            DeliveryStatus::Sending => Delivery::Sending,
            DeliveryStatus::Retrying => Delivery::Retrying,
            DeliveryStatus::Sent => Delivery::Sent,
            DeliveryStatus::Dead => Delivery::Dead,
            DeliveryStatus::Expired => Delivery::Expired,
        }
    }
}

/// The route of an event: its last run, and the actions of every run.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
pub struct RouteView {
    /// The script that ran, if one matched.
    pub script: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// How many times the route has run.
    pub runs: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// Ids of the actions its runs queued, oldest first (a replay adds to them).
    pub actions: Vec<String>,
}

/// A stored event, as an operator sees it.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
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
    /// Request facts kept with the event (the api key used, the client certificate, ...).
    pub meta: BTreeMap<String, String>,
    /// Remarks: unknown enum values, a conflicting body, ...
    pub flags: Vec<String>,
    /// The earlier event with the same key and another body, if any.
    pub conflict_of: Option<String>,
    /// Why the body was quarantined.
    pub quarantine_reason: Option<String>,
    /// The last run of its route.
    pub route: Option<RouteView>,
    /// The body as received, only in the detail view: parsed and masked like `data`, or
    /// verbatim (a string) when secrets may be revealed.
    pub body: Option<Value>,
    /// Its actions with every attempt, only in the detail view.
    pub actions: Option<Vec<ActionView>>,
}

/// One delivery attempt.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
pub struct AttemptView {
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// `in_flight`, `sent`, `failed`, `rejected` (permanent), `interrupted` (the process
    /// stopped during it; it was resumed) or `expired` (not attempted: no longer valid).
    pub outcome: String,
    /// Why it failed.
    pub error: Option<String>,
    /// What the other side answered.
    pub detail: Option<String>,
}

/// An action in the outbox.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
pub struct ActionView {
    /// Id; also the `Idempotency-Key` of its HTTP deliveries and its email's Message-ID.
    pub id: String,
    /// The event whose route queued it.
    pub event_id: String,
    /// The event's provider.
    pub provider: String,
    /// The event's type.
    pub event_type: String,
    /// `email`, `sms`, `http` or `log`.
    pub channel: String,
    /// Where it is.
    pub status: Delivery,
    /// What is sent (secret values masked unless revealed).
    pub payload: Value,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When the next attempt is due (RFC 3339), if one is scheduled.
    pub due_at: Option<String>,
}

/// A script that does not compile (its last good version keeps running).
#[derive(Object, Debug, Clone)]
#[oai(skip_serializing_if_is_none, example)]
pub struct CompileErrorView {
    /// The script, relative to the routes directory.
    pub file: String,
    /// 1-based line.
    pub line: Option<u64>,
    /// 1-based column.
    pub column: Option<u64>,
    /// What is wrong.
    pub message: String,
    /// Whether a last good version runs meanwhile. If not, the events it would handle are
    /// parked as `failed` (replay them once it compiles).
    pub running: bool,
}

impl CompileErrorView {
    /// The error, and whether a good version of its script runs.
    pub fn new(e: CompileError, running: bool) -> Self {
        CompileErrorView {
            file: e.file,
            line: e.line.map(|l| l as u64),
            column: e.column.map(|c| c as u64),
            message: e.message,
            running,
        }
    }
}

fn outcome(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::InFlight => "in_flight",
        AttemptOutcome::Sent => "sent",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Rejected => "rejected",
        AttemptOutcome::Interrupted => "interrupted",
        AttemptOutcome::Expired => "expired",
    }
}

fn attempt(a: Attempt) -> AttemptView {
    AttemptView {
        started_at: a.started_at.to_rfc3339(),
        finished_at: a.finished_at.map(|t| t.to_rfc3339()),
        outcome: outcome(a.outcome).into(),
        error: a.error,
        detail: a.detail,
    }
}

/// An action as shown.
pub fn action(a: Action, reveal: bool) -> ActionView {
    let payload = if reveal {
        a.payload.clone()
    } else {
        let mut p = mask_values(&a.payload, &a.secrets);
        mask_by_name(&mut p);
        p
    };
    ActionView {
        id: a.id.to_string(),
        event_id: a.event_id.to_string(),
        provider: a.provider,
        event_type: a.event_type,
        channel: a.channel,
        status: a.status.into(),
        payload,
        attempts: a.attempts.into_iter().map(attempt).collect(),
        created_at: a.created_at.to_rfc3339(),
        due_at: a.due_ms.and_then(|ms| {
            chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
                .map(|t| t.to_rfc3339())
        }),
    }
}

/// An event as shown; with its body and actions in the detail view.
pub fn event(e: Event, detail: Option<Vec<Action>>, reveal: bool) -> EventView {
    let mut data = e.data;
    let body = detail.as_ref().map(|_| {
        if reveal {
            Value::String(String::from_utf8_lossy(&e.body).into_owned())
        } else {
            let mut b = mask_raw_body(&e.body);
            mask_pointers(&mut b, &e.secret_paths);
            b
        }
    });
    if !reveal {
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
        route: e.route.map(|r| RouteView {
            script: r.script,
            at: r.at.to_rfc3339(),
            runs: r.runs,
            error: r.error,
            actions: r.actions.iter().map(ToString::to_string).collect(),
        }),
        body,
        actions: detail.map(|acts| acts.into_iter().map(|a| action(a, reveal)).collect()),
    }
}

// Examples: what Swagger UI shows for each schema. Realistic values from the providers'
// own samples (a Pomelo tokenization OTP), secrets masked as the API masks them.

const EXAMPLE_EVENT: &str = "01936f4e-8b2a-7c41-9d3e-5a1b2c3d4e5f";
const EXAMPLE_ACTION: &str = "01936f4e-8b40-7a02-b1c4-0e9f8a7b6c5d";

impl Example for RouteView {
    fn example() -> Self {
        RouteView {
            script: Some("pomelo/tokenization_otp.rhai".into()),
            at: "2026-11-23T09:14:07.412+00:00".into(),
            runs: 1,
            error: None,
            actions: vec![EXAMPLE_ACTION.into()],
        }
    }
}

impl Example for AttemptView {
    fn example() -> Self {
        AttemptView {
            started_at: "2026-11-23T09:14:07.430+00:00".into(),
            finished_at: Some("2026-11-23T09:14:07.981+00:00".into()),
            outcome: "failed".into(),
            error: Some("SMTP 451 4.3.0 mailbox temporarily unavailable".into()),
            detail: None,
        }
    }
}

impl Example for ActionView {
    fn example() -> Self {
        ActionView {
            id: EXAMPLE_ACTION.into(),
            event_id: EXAMPLE_EVENT.into(),
            provider: "pomelo".into(),
            event_type: "tokenization_otp".into(),
            channel: "email".into(),
            status: Delivery::Retrying,
            payload: json!({
                "to": "jan.kowalski@example.com",
                "subject": "Your verification code",
                "text": "Your code to add your card to Apple Pay is ******. Never share it.",
                "valid_for": "10m"
            }),
            attempts: vec![AttemptView::example()],
            created_at: "2026-11-23T09:14:07.412+00:00".into(),
            due_at: Some("2026-11-23T09:14:12.981+00:00".into()),
        }
    }
}

impl Example for EventView {
    fn example() -> Self {
        let data = json!({
            "token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_123456789"},
            "otp": "******",
            "to": "m***@example.com",
            "contact_method": "EMAIL"
        });
        EventView {
            id: EXAMPLE_EVENT.into(),
            provider: "pomelo".into(),
            endpoint: "/pomelo/tokenization/otp".into(),
            event_type: "tokenization_otp".into(),
            received_at: "2026-11-23T09:14:07.398+00:00".into(),
            status: Status::Routed,
            idempotency_key: "pomelo:h3Ws4Cv0:7f3c1a9e".into(),
            fingerprint: "9b1c4e0f6a2d8b7c5e3f1a0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b".into(),
            data: Some(data.clone()),
            meta: BTreeMap::from([("api_key".into(), "h3Ws4Cv0…".into())]),
            flags: vec![],
            conflict_of: None,
            quarantine_reason: None,
            route: Some(RouteView::example()),
            body: Some(data),
            actions: Some(vec![ActionView::example()]),
        }
    }
}

impl Example for CompileErrorView {
    fn example() -> Self {
        CompileErrorView {
            file: "pomelo/tokenization_otp.rhai".into(),
            line: Some(27),
            column: Some(14),
            message: "Expecting ')' to close the parameters list of function 'send'".into(),
            running: true,
        }
    }
}

/// Events of one provider in one status, received over the last hour and day.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", example)]
pub struct EventCountView {
    /// The provider.
    pub provider: String,
    /// The status the events are in now.
    pub status: Status,
    /// Received in the last hour.
    pub last_hour: u64,
    /// Received in the last 24 hours.
    pub last_day: u64,
}

impl Example for EventCountView {
    fn example() -> Self {
        EventCountView {
            provider: "pomelo".into(),
            status: Status::Failed,
            last_hour: 2,
            last_day: 7,
        }
    }
}

/// Deliveries of one channel in one status, queued over the last hour and day.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", example)]
pub struct DeliveryCountView {
    /// The channel.
    pub channel: String,
    /// The status the deliveries are in now.
    pub status: Delivery,
    /// Queued in the last hour.
    pub last_hour: u64,
    /// Queued in the last 24 hours.
    pub last_day: u64,
}

impl Example for DeliveryCountView {
    fn example() -> Self {
        DeliveryCountView {
            channel: "email".into(),
            status: Delivery::Dead,
            last_hour: 1,
            last_day: 3,
        }
    }
}

/// What happened recently: events per provider and status, deliveries per channel and
/// status, over the last hour and the last day.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", example)]
pub struct StatsView {
    /// When the counts were taken (RFC 3339).
    pub at: String,
    /// Events received in the windows, by provider and current status.
    pub events: Vec<EventCountView>,
    /// Deliveries queued in the windows, by channel and current status.
    pub deliveries: Vec<DeliveryCountView>,
}

impl Example for StatsView {
    fn example() -> Self {
        StatsView {
            at: "2026-11-23T09:30:00+00:00".into(),
            events: vec![
                EventCountView {
                    provider: "pomelo".into(),
                    status: Status::Routed,
                    last_hour: 412,
                    last_day: 9_870,
                },
                EventCountView::example(),
            ],
            deliveries: vec![
                DeliveryCountView {
                    channel: "email".into(),
                    status: Delivery::Sent,
                    last_hour: 380,
                    last_day: 9_121,
                },
                DeliveryCountView::example(),
            ],
        }
    }
}

/// A script's text, as the routes directory (or the binary) holds it.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct ScriptSourceView {
    /// The script, relative to the routes directory.
    pub file: String,
    /// Its text.
    pub text: String,
}

impl Example for ScriptSourceView {
    fn example() -> Self {
        ScriptSourceView {
            file: "verifyvasp/_default.rhai".into(),
            text: "http::deliver(\"compliance\", `/travel-rule/${event.type}`, event.data);\n"
                .into(),
        }
    }
}

/// The answer to one lookup of a try, typed in by the operator.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example)]
pub struct LookupAnswer {
    /// The service (`customers`).
    pub service: String,
    /// `GET` (default) or `POST`.
    pub method: Option<String>,
    /// The path the script asks for (`/cards/card_123456789/holder`).
    pub path: String,
    /// The JSON the service answers.
    pub answer: Option<Value>,
    /// Or: the lookup fails with this message.
    pub fail: Option<String>,
}

impl Example for LookupAnswer {
    fn example() -> Self {
        LookupAnswer {
            service: "customers".into(),
            method: Some("GET".into()),
            path: "/cards/card_123456789/holder".into(),
            answer: Some(json!({"email": "jan.kowalski@example.com", "phone": "+48500100200"})),
            fail: None,
        }
    }
}

/// A try: run a route script against a stored event, queuing nothing.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example)]
pub struct TryRequest {
    /// The stored event to run against.
    pub event_id: String,
    /// Script text to run instead of the event's current script (pasted into an editor).
    pub script: Option<String>,
    /// Answer lookups without a typed-in answer by calling the configured services for
    /// real (default: no, such lookups fail).
    pub live: Option<bool>,
    /// Typed-in answers to lookups; they take precedence over live ones.
    pub answers: Option<Vec<LookupAnswer>>,
}

impl Example for TryRequest {
    fn example() -> Self {
        TryRequest {
            event_id: EXAMPLE_EVENT.into(),
            script: None,
            live: Some(false),
            answers: Some(vec![LookupAnswer::example()]),
        }
    }
}

/// How a try ended.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum TryOutcome {
    /// The script finished: these are the actions it would queue.
    Ok,
    /// The script failed (a `throw`, a limit, a lookup): a real run would park the event.
    Failed,
    /// The pasted text does not compile (see `line` and `column`).
    CompileError,
    /// No script exists for the event's provider and type: a real run does nothing.
    NoScript,
}

/// An action a try would queue.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct TryAction {
    /// `email`, `sms`, `http` or `log`.
    pub channel: String,
    /// What would be sent (secret values masked unless revealed).
    pub payload: Value,
}

impl Example for TryAction {
    fn example() -> Self {
        TryAction {
            channel: "email".into(),
            payload: json!({
                "to": "jan.kowalski@example.com",
                "subject": "Your verification code",
                "text": "Your code to add your card to Apple Pay is ******. Never share it.",
                "valid_for": "10m"
            }),
        }
    }
}

/// A lookup the script made during a try.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
pub struct LookupCall {
    /// The service.
    pub service: String,
    /// `GET` or `POST`.
    pub method: String,
    /// The path.
    pub path: String,
    /// `typed` (an answer given in the request), `live` (the service was called) or
    /// `none` (no answer: the lookup failed).
    pub answered_by: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// The answer (secret values masked unless revealed).
    pub answer: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
}

impl Example for LookupCall {
    fn example() -> Self {
        LookupCall {
            service: "customers".into(),
            method: "GET".into(),
            path: "/cards/card_123456789/holder".into(),
            answered_by: "typed".into(),
            ok: true,
            answer: Some(json!({"email": "jan.kowalski@example.com"})),
            error: None,
        }
    }
}

/// What a try did: the actions the script would queue, what it printed, the lookups it
/// made, or why it failed. Nothing was queued or sent.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
pub struct TryResult {
    /// How it ended.
    pub outcome: TryOutcome,
    /// The script that ran: its file, or `(pasted)`.
    pub script: Option<String>,
    /// The actions it would queue, in order.
    pub actions: Vec<TryAction>,
    /// What it printed (`print`, `debug`), secret values masked unless revealed.
    pub log: Vec<String>,
    /// The lookups it made, in order.
    pub lookups: Vec<LookupCall>,
    /// Why it failed or does not compile.
    pub error: Option<String>,
    /// For a compile error: 1-based line.
    pub line: Option<u64>,
    /// For a compile error: 1-based column.
    pub column: Option<u64>,
    /// How long it ran, lookups included, in milliseconds.
    pub took_ms: u64,
}

impl Example for TryResult {
    fn example() -> Self {
        TryResult {
            outcome: TryOutcome::Ok,
            script: Some("pomelo/tokenization_otp.rhai".into()),
            actions: vec![TryAction::example()],
            log: vec!["holder found for card_123456789".into()],
            lookups: vec![LookupCall::example()],
            error: None,
            line: None,
            column: None,
            took_ms: 3,
        }
    }
}
