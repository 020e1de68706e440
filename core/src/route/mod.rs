//! The route runtime: each stored event is handed to the Rhai script of its type, which
//! decides what happens. Scripts queue actions; they never send anything themselves.
//!
//! - [`engine`]: the sandboxed engine (`Engine::new_raw` plus chosen packages, no `import`,
//!   no `eval`, limits on operations, call depth and sizes, a per-run deadline).
//! - [`api`]: the script API, a small set of namespaced modules (`http`, `email`, `sms`,
//!   `log`, `fmt`, `mask`).
//! - [`scripts`]: finding, compiling and hot-reloading the scripts; a script that fails to
//!   compile keeps its last good version running.
//! - [`sandbox`]: guards on Rhai functions that could cost without bound in one call
//!   (printing and comparing deeply nested values, `replace`).
//! - [`paths`]: the rules a path to a named service follows.
//! - [`router`]: takes events from the inbox, counts each run on disk before it starts,
//!   runs it (in a worker process or in place) and records what it decided, atomically.
//! - [`pool`]: the server's side of the worker processes: starting, feeding, answering
//!   their lookups, killing them past the hard deadline or at shutdown.
//! - [`worker`]: the worker process itself (`switchboard route-worker`), and [`proto`],
//!   the frames the two exchange over the worker's stdin and stdout.
//! - [`testing`]: `switchboard test`, which runs scripts against test files.
//!
//! What must not live here: HTTP. Lookups go through the [`Lookup`] trait, which the
//! plugins implement with the configured services.

pub mod api;
pub mod engine;
pub mod paths;
pub mod pool;
pub mod proto;
pub mod router;
pub mod sandbox;
pub mod scripts;
pub mod testing;
pub mod worker;

/// A compiled script.
pub use rhai::AST;

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{config::RoutesConfig, event::Event, outbox::ActionSpec};

/// HTTP methods of lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// `http::get`.
    Get,
    /// `http::post`.
    Post,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Why a lookup failed: a message fit for the operator, and whether trying again soon may
/// help (a timeout, a refused connection, a 5xx, a 429) or not (a 404, an answer that is
/// not JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupError {
    /// What happened.
    pub message: String,
    /// Whether the same call may succeed in a moment.
    pub transient: bool,
}

impl LookupError {
    /// A failure that trying again will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        LookupError {
            message: message.into(),
            transient: false,
        }
    }

    /// A failure that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        LookupError {
            message: message.into(),
            transient: true,
        }
    }
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The named services scripts may call (`http::get("customers", "/cards/1")`). Their base
/// URLs, credentials and timeouts come from configuration, so scripts hold no secrets.
pub trait Lookup: Send + Sync {
    /// Whether `service` is configured.
    fn configured(&self, service: &str) -> bool;

    /// The names of every configured service (a worker process knows no more of them).
    fn names(&self) -> Vec<String>;

    /// Calls `service`; the answer's JSON body, or why not.
    fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, LookupError>>;
}

/// Why a route run failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    /// The script's message, or the limit it hit (secret values masked).
    pub message: String,
    /// A lookup failed in a way that may pass (a timeout, a 5xx): the route is worth
    /// running again in a moment.
    pub retryable: bool,
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// No services at all.
pub struct NoLookups;

impl Lookup for NoLookups {
    fn configured(&self, _service: &str) -> bool {
        false
    }

    fn names(&self) -> Vec<String> {
        Vec::new()
    }

    fn call(
        &self,
        service: &str,
        _method: Method,
        _path: &str,
        _body: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, LookupError>> {
        let msg = format!("service `{service}` is not configured");
        Box::pin(async move { Err(LookupError::permanent(msg)) })
    }
}

/// Stack of a thread that runs scripts: Rhai clones, drops and hashes nested values
/// recursively, up to `routes.max_collection_size` levels deep.
pub const RUN_STACK: usize = 64 << 20;

/// Runs the script `ast` for `event` in this process, on this thread (which must not be
/// an async worker: lookups wait on `handle`); the actions it queued, or why it failed.
/// The same sandbox and limits as in a worker process, without its protection: used by
/// `switchboard test`, by `routes.isolation = "in_process"` and by unit tests.
pub fn run_script(
    engine: &rhai::Engine,
    ast: &rhai::AST,
    script: &str,
    event: &Event,
    lookups: Arc<dyn Lookup>,
    limits: &RunLimits,
    handle: tokio::runtime::Handle,
) -> Result<Vec<ActionSpec>, RunFailure> {
    let host = Direct {
        lookups,
        handle,
        script: script.to_owned(),
        event_id: event.id.to_string(),
    };
    api::execute(
        engine,
        ast,
        ScriptEvent::of(event).to_dynamic()?,
        event.secret_values(),
        limits,
        Box::new(host),
    )
}

/// Lookups and output in this process.
struct Direct {
    lookups: Arc<dyn Lookup>,
    handle: tokio::runtime::Handle,
    script: String,
    event_id: String,
}

impl api::Host for Direct {
    fn configured(&self, service: &str) -> bool {
        self.lookups.configured(service)
    }

    fn lookup(
        &mut self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, LookupError> {
        let call = self.lookups.call(service, method, path, body);
        self.handle
            .block_on(async { tokio::time::timeout(timeout, call).await })
            .unwrap_or_else(|_| {
                Err(LookupError::transient(format!(
                    "timed out after {timeout:?}"
                )))
            })
    }

    fn output(&mut self, kind: api::Output, text: &str) {
        log_output(&self.script, &self.event_id, kind, text);
    }
}

/// Writes a line of a script's output to the log, escaped so that it stays one line.
pub fn log_output(script: &str, event_id: &str, kind: api::Output, text: &str) {
    let text = log_safe(text);
    match kind {
        api::Output::Print => {
            tracing::info!(script = %script, event_id = %event_id, output = %text, "script print")
        }
        api::Output::Debug => {
            tracing::debug!(script = %script, event_id = %event_id, output = %text, "script debug")
        }
        api::Output::Internal => {
            tracing::error!(script = %script, event_id = %event_id, error = %text, "a script binding failed")
        }
    }
}

/// `text` made safe for one log line: line breaks, other control characters and Unicode
/// line separators written as escapes (`\n`, `\u{1b}`), so that what a script prints or
/// throws can neither forge a log line nor drive a terminal.
pub fn log_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// The limits of one run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RunLimits {
    /// Script time, lookups not counted.
    pub deadline: Duration,
    /// One lookup.
    pub lookup_timeout: Duration,
    /// All lookups of the run.
    pub lookup_budget: Duration,
    /// Actions one run may queue.
    pub max_actions: usize,
    /// Bytes of print and debug output.
    pub max_output: usize,
    /// Nesting of values printed, compared or queued.
    pub max_value_depth: usize,
}

impl RunLimits {
    /// The limits `cfg` sets.
    pub fn from_config(cfg: &RoutesConfig) -> RunLimits {
        RunLimits {
            deadline: cfg.deadline.get(),
            lookup_timeout: cfg.lookup_timeout.get(),
            lookup_budget: cfg.lookup_budget.get(),
            max_actions: cfg.max_actions,
            max_output: cfg.max_output.as_usize(),
            max_value_depth: cfg.max_value_depth,
        }
    }
}

/// The event as scripts see it: `event.type`, `event.provider`, `event.id`,
/// `event.received_at`, `event.data.*`, `event.meta.*`, `event.flags`. It borrows the
/// event: serialized straight into a worker's frame or into the script's value, with no
/// copy of `data` on the way.
#[derive(Debug, Serialize)]
pub struct ScriptEvent<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    provider: &'a str,
    id: String,
    received_at: String,
    data: &'a Value,
    meta: &'a std::collections::BTreeMap<String, String>,
    flags: &'a [String],
}

impl<'a> ScriptEvent<'a> {
    /// `e` as scripts see it.
    pub fn of(e: &'a Event) -> Self {
        static NULL: Value = Value::Null;
        ScriptEvent {
            event_type: &e.event_type,
            provider: &e.provider,
            id: e.id.to_string(),
            received_at: e.received_at.to_rfc3339(),
            data: e.data.as_ref().unwrap_or(&NULL),
            meta: &e.meta,
            flags: &e.flags,
        }
    }

    /// As the script's `event` value.
    pub fn to_dynamic(&self) -> Result<rhai::Dynamic, RunFailure> {
        rhai::serde::to_dynamic(self).map_err(|_| not_handed())
    }

    /// The script's `event` value from a `ScriptEvent`'s JSON (a worker's side of a frame),
    /// read straight into it.
    pub fn read(json: &str) -> Result<rhai::Dynamic, RunFailure> {
        serde_json::from_str(json).map_err(|e| {
            if e.to_string().starts_with("recursion limit exceeded") {
                RunFailure {
                    message: "the event is nested too deeply to be a script's value".into(),
                    retryable: false,
                }
            } else {
                not_handed()
            }
        })
    }
}

/// The failure of an event that cannot be made the script's value.
fn not_handed() -> RunFailure {
    RunFailure {
        message: "internal error: the event could not be handed to the script".into(),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::RoutesConfig,
        event::{EventId, EventStatus},
    };

    fn event() -> Event {
        Event {
            id: EventId::new(),
            provider: "pomelo".into(),
            endpoint: "/p".into(),
            event_type: "tokenization_otp".into(),
            received_at: chrono::Utc::now(),
            status: EventStatus::Received,
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            body: vec![],
            data: Some(serde_json::json!({"otp": "123456", "amount": 1000, "currency": "PLN"})),
            meta: Default::default(),
            flags: vec![],
            conflict_of: None,
            quarantine_reason: None,
            secret_paths: vec!["/otp".into()],
            route: None,
        }
    }

    fn run(src: &str) -> Result<Vec<ActionSpec>, String> {
        let cfg = RoutesConfig {
            max_operations: 200_000,
            ..RoutesConfig::default()
        };
        let engine = engine::build(&cfg);
        let ast = engine.compile(src).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = RunLimits {
            deadline: Duration::from_millis(250),
            lookup_timeout: Duration::from_secs(1),
            lookup_budget: Duration::from_secs(1),
            ..RunLimits::from_config(&cfg)
        };
        run_script(
            &engine,
            &ast,
            "test.rhai",
            &event(),
            Arc::new(NoLookups),
            &limits,
            rt.handle().clone(),
        )
        .map_err(|f| f.message)
    }

    /// A worker reads the event's JSON straight into the script's value; in process it is
    /// made from the event directly. Both give what the event's JSON as a value gives
    /// (the earlier way), numbers of every kind included.
    #[test]
    fn the_event_reaches_scripts_alike_through_a_worker_and_in_process() {
        let mut e = event();
        e.data = Some(serde_json::json!({
            "otp": "123456", "int": 1000, "negative": -7, "zero": 0,
            "beyond_i64": 18_446_744_073_709_551_615u64, "float": 12.5, "exp": 1e300,
            "nothing": null, "yes": true, "text": "zażółć \"gęślą\" \u{1F600}",
            "list": [1, "two", [3.0, {"four": null}]], "empty": {}, "none": [],
        }));
        e.meta.insert("api_key".into(), "k-1".into());
        e.flags.push("unknown_enum_value: x=y".into());
        let as_value = serde_json::json!({
            "type": e.event_type,
            "provider": e.provider,
            "id": e.id.to_string(),
            "received_at": e.received_at.to_rfc3339(),
            "data": e.data.clone().unwrap(),
            "meta": e.meta,
            "flags": e.flags,
        });
        let expected = format!("{:?}", rhai::serde::to_dynamic(as_value).unwrap());
        let raw = serde_json::value::to_raw_value(&ScriptEvent::of(&e)).unwrap();
        let in_worker = ScriptEvent::read(raw.get()).unwrap();
        let in_process = ScriptEvent::of(&e).to_dynamic().unwrap();
        assert_eq!(format!("{in_worker:?}"), expected);
        assert_eq!(format!("{in_process:?}"), expected);
        assert!(expected.contains("1.8446744073709552e19"), "{expected}");
        // A quarantined event has no data: `event.data` is `()`.
        e.data = None;
        let raw = serde_json::value::to_raw_value(&ScriptEvent::of(&e)).unwrap();
        let d = ScriptEvent::read(raw.get()).unwrap();
        assert!(d.cast::<rhai::Map>()["data"].is_unit());
        // Nested past serde_json's limit: said so, not an internal error.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let failure = ScriptEvent::read(&format!(r#"{{"data":{deep}}}"#)).unwrap_err();
        assert_eq!(
            failure.message,
            "the event is nested too deeply to be a script's value"
        );
    }

    #[test]
    fn scripts_queue_actions_and_read_the_event() {
        let actions = run(r#"
            let text = `Your code ${event.data.otp}, ${fmt::amount(event.data.amount, event.data.currency)}`;
            sms::send(#{ to: "+48500100200", text: text });
            email::send(#{ to: "a@example.com", subject: "Code", text: text });
            log::info(`routed ${event.type}`);
        "#)
        .unwrap();
        assert_eq!(actions.len(), 3);
        assert_eq!(actions[0].channel, "sms");
        assert_eq!(actions[0].payload["text"], "Your code 123456, 10.00 PLN");
        assert_eq!(actions[2].payload["message"], "routed tokenization_otp");
    }

    #[test]
    fn the_sandbox_stops_runaway_scripts_with_a_clear_message() {
        let e = run("loop { }").unwrap_err();
        assert!(
            e.contains("too many operations") || e.contains("deadline"),
            "{e}"
        );
        let e = run("fn f(n) { f(n + 1) } f(0)").unwrap_err();
        assert!(e.contains("call stack too deep"), "{e}");
        let e = run(r#"let s = "x"; loop { s += s; }"#).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(run(r#"eval("1")"#).is_err(), "eval is disabled");
        assert!(run(r#"import "x" as y;"#).is_err(), "import is disabled");
        let e = run(r#"throw "no contact for this card""#).unwrap_err();
        assert!(e.starts_with("no contact for this card"), "{e}");
        let e = run(r#"email::send(#{ to: "a@b.c" })"#).unwrap_err();
        assert!(e.contains("`subject` is required"), "{e}");
        let e = run(r#"http::get("customers", "/x")"#).unwrap_err();
        assert!(e.contains("service `customers` is not configured"), "{e}");
        // A failure never leaks the OTP into the message.
        let e = run(r#"throw `bad ${event.data.otp}`"#).unwrap_err();
        assert!(!e.contains("123456"), "{e}");
    }

    #[test]
    fn guarded_functions_behave_like_rhais_own_within_the_limits() {
        let actions = run(r#"
            let parts = "a,b,,c".split(",");
            let chars = "héllo".to_chars();
            let words = " one  two ".split();
            let each = "ab".split("");
            let s = "hello";
            s.replace("l", "L");
            let same = [1, [2, #{a: "x"}]] == [1, [2, #{a: "x"}]];
            let differ = [1, 2] != [1, 3];
            let found = [[1], [2]].contains([2]);
            log::info(`${parts} ${parts.len()} ${chars.len()} ${words} ${each.len()} ${s} ${same} ${differ} ${found}`);
            log::info(`${#{k: [1, "two"]}}`);
            log::info(#{k: [1, 2]}.to_json());
        "#)
        .unwrap();
        assert_eq!(
            actions[0].payload["message"],
            r#"["a", "b", "", "c"] 4 5 ["one", "two"] 4 heLLo true true true"#
        );
        assert_eq!(actions[1].payload["message"], r#"#{"k": [1, "two"]}"#);
        assert_eq!(actions[2].payload["message"], r#"{"k":[1,2]}"#);
    }

    #[test]
    fn the_deadline_excludes_time_spent_in_lookups_but_bounds_the_script() {
        /// A service that answers after 300 ms, or fails transiently.
        struct Slow;
        impl Lookup for Slow {
            fn configured(&self, _service: &str) -> bool {
                true
            }
            fn names(&self) -> Vec<String> {
                vec!["customers".into(), "down".into()]
            }
            fn call(
                &self,
                service: &str,
                _method: Method,
                _path: &str,
                _body: Option<Value>,
            ) -> BoxFuture<'static, Result<Value, LookupError>> {
                let down = service == "down";
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if down {
                        Err(LookupError::transient("HTTP 503"))
                    } else {
                        Ok(serde_json::json!({"phone": "+48500100200"}))
                    }
                })
            }
        }
        let cfg = RoutesConfig {
            // High enough that only the deadline can stop the loop below.
            max_operations: u64::MAX,
            ..RoutesConfig::default()
        };
        let engine = engine::build(&cfg);
        // Lookups wait on timers: a runtime with a worker of its own drives them.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let limits = RunLimits {
            deadline: Duration::from_millis(100),
            lookup_timeout: Duration::from_secs(1),
            lookup_budget: Duration::from_secs(1),
            ..RunLimits::from_config(&cfg)
        };
        let run = |src: &str| {
            let ast = engine.compile(src).unwrap();
            run_script(
                &engine,
                &ast,
                "t",
                &event(),
                Arc::new(Slow),
                &limits,
                rt.handle().clone(),
            )
        };
        // 300 ms in a lookup, beyond the 100 ms deadline: not counted.
        let actions = run(
            r#"let c = http::get("customers", "/c/1"); sms::send(#{to: c.phone, text: "hi"});"#,
        )
        .unwrap();
        assert_eq!(actions.len(), 1);
        // The script's own time is.
        let started = std::time::Instant::now();
        let e = run("let x = 0; loop { x += 1; }").unwrap_err();
        assert!(e.message.starts_with("deadline of 100ms exceeded"), "{e}");
        assert!(!e.retryable);
        assert!(started.elapsed() < Duration::from_secs(2));
        // A lookup that failed in a way that may pass makes the run worth retrying, even
        // when the script's own message is what surfaces.
        let e = run(r#"let c = http::get("down", "/c/1");"#).unwrap_err();
        assert!(e.message.contains("HTTP 503"), "{e}");
        assert!(e.retryable);
        let e = run(r#"throw "no such customer";"#).unwrap_err();
        assert!(!e.retryable);
    }
}
