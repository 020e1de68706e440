//! The script API: a small set of namespaced modules, registered in one place
//! ([`register`]). Documented, with an example per function, in `routes/README.md`.
//!
//! | module | functions |
//! |---|---|
//! | `http`  | `get(service, path)`, `post(service, path, body)` (lookups, bounded in time); `deliver(service, path, body)` (an action); `configured(service)`; `escape(segment)` |
//! | `email` | `send(#{to, subject, text, html?, valid_for?})` (an action) |
//! | `sms`   | `send(#{to, text, valid_for?})` (an action) |
//! | `log`   | `info(message)`, `warn(message)` (actions: written to the log, secrets masked) |
//! | `fmt`   | `amount(minor_units, currency)` → `"10.00 PLN"` |
//! | `mask`  | `phone(s)`, `email(s)`, `keep_last(s, n)` |
//!
//! Actions are queued on the run and written to the outbox with the event, atomically, if
//! the script finishes; a script that fails queues nothing. A script's own `throw` message
//! is shown to the operator; an error inside a binding is logged and shown as "internal
//! error".

use std::{
    cell::{Cell, RefCell},
    time::{Duration, Instant},
};

use rhai::{Dynamic, Engine, EvalAltResult, Map, Scope, exported_module, plugin::*};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LookupError, Method, RunFailure, RunLimits, paths::check_path, sandbox};
use crate::{mask::mask_text, outbox::ActionSpec, units::HumanDuration};

/// What a run needs from the place it runs in: the named services and the log. In a
/// worker process they are requests to the server over a pipe; in the server itself (and
/// in `switchboard test`), direct calls.
pub trait Host {
    /// Whether `service` is configured.
    fn configured(&self, service: &str) -> bool;

    /// Calls `service` and waits for its JSON answer, at most `timeout`.
    fn lookup(
        &mut self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, LookupError>;

    /// A line of the script's output (already masked and within the run's limit).
    fn output(&mut self, kind: Output, text: &str);
}

/// Kinds of output a run writes to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// `print(...)`: logged at `info`.
    Print,
    /// `debug(...)`: logged at `debug`.
    Debug,
    /// An error inside a binding: logged at `error`, hidden from the script's message.
    Internal,
}

struct RunCtx {
    actions: Vec<ActionSpec>,
    host: Option<Box<dyn Host>>,
    limits: RunLimits,
    started: Instant,
    lookup_spent: Duration,
    secrets: Vec<String>,
    /// A lookup failed in a way that may pass (timeout, 5xx, budget used up by slowness).
    transient_lookup_failure: bool,
    /// Bytes of print and debug output so far.
    output_bytes: usize,
    /// Why the run must end at its next operation (a limit a printing function hit).
    tripped: Option<String>,
}

thread_local! {
    static RUN: RefCell<Option<RunCtx>> = const { RefCell::new(None) };
    /// Set with [`RunCtx::tripped`], read at every operation.
    static TRIPPED: Cell<bool> = const { Cell::new(false) };
}

/// The token a run is terminated with when it tripped a limit.
pub(crate) const LIMIT: &str = "limit";

/// Whether the current run must stop now: it tripped a limit, or (checked every 256
/// operations) used up its deadline, lookup time not counted.
pub(crate) fn must_stop(ops: u64) -> Option<&'static str> {
    if TRIPPED.with(Cell::get) {
        return Some(LIMIT);
    }
    if ops % 256 != 0 {
        return None;
    }
    let late = RUN.with(|r| {
        r.borrow()
            .as_ref()
            .is_some_and(|c| c.started.elapsed() > c.limits.deadline + c.lookup_spent)
    });
    late.then_some(super::engine::DEADLINE)
}

/// Ends the current run at its next operation, with `why` as its failure.
pub(crate) fn trip(why: String) {
    RUN.with(|r| {
        if let Some(c) = r.borrow_mut().as_mut() {
            c.tripped.get_or_insert(why);
        }
    });
    TRIPPED.with(|t| t.set(true));
}

/// The value-depth limit of the current run.
fn max_depth() -> usize {
    RUN.with(|r| r.borrow().as_ref().map_or(64, |c| c.limits.max_value_depth))
}

/// `print` and `debug`: masked, counted against the run's output limit, handed to the
/// host.
pub(crate) fn output(kind: Output, text: &str) {
    let host = RUN.with(|r| {
        let mut r = r.borrow_mut();
        let c = r.as_mut()?;
        if c.tripped.is_some() {
            return None;
        }
        c.output_bytes = c.output_bytes.saturating_add(text.len());
        if c.output_bytes > c.limits.max_output {
            let max = c.limits.max_output;
            c.tripped = Some(format!(
                "print and debug output over {max} bytes in one run (routes.max_output)"
            ));
            TRIPPED.with(|t| t.set(true));
            return None;
        }
        let masked = mask_text(text, &c.secrets);
        c.host.take().map(|h| (h, masked))
    });
    if let Some((mut host, masked)) = host {
        host.output(kind, &masked);
        put_host(host);
    }
}

fn take_host() -> Option<Box<dyn Host>> {
    RUN.with(|r| r.borrow_mut().as_mut().and_then(|c| c.host.take()))
}

fn put_host(host: Box<dyn Host>) {
    RUN.with(|r| {
        if let Some(c) = r.borrow_mut().as_mut() {
            c.host = Some(host);
        }
    });
}

fn configured(service: &str) -> bool {
    RUN.with(|r| {
        r.borrow()
            .as_ref()
            .and_then(|c| c.host.as_ref())
            .is_some_and(|h| h.configured(service))
    })
}

fn fail(msg: impl Into<String>) -> Box<EvalAltResult> {
    msg.into().into()
}

/// An error inside a binding: logged in full, shown as "internal error".
fn internal(what: &str, e: impl std::fmt::Display) -> Box<EvalAltResult> {
    if let Some(mut host) = take_host() {
        host.output(
            Output::Internal,
            &format!("script binding {what} failed: {e}"),
        );
        put_host(host);
    }
    fail(format!("internal error in {what} (see the log)"))
}

fn queue(channel: &str, payload: Value) -> Result<(), Box<EvalAltResult>> {
    RUN.with(|r| {
        if let Some(c) = r.borrow_mut().as_mut() {
            if c.actions.len() >= c.limits.max_actions {
                return Err(fail(format!(
                    "more than {} actions in one run (routes.max_actions)",
                    c.limits.max_actions
                )));
            }
            c.actions.push(ActionSpec {
                channel: channel.into(),
                payload,
            });
        }
        Ok(())
    })
}

/// A script value as JSON for a lookup or an action, refused when nested deeper than the
/// run allows (a payload is read back later, and serde_json stops at 128 levels).
fn to_json(d: &Dynamic, what: &str) -> Result<Value, Box<EvalAltResult>> {
    let max = max_depth();
    if !sandbox::depth_within(d, max) {
        return Err(fail(sandbox::too_deep(what, max)));
    }
    rhai::serde::from_dynamic::<Value>(d).map_err(|e| internal(what, e))
}

/// The string fields of a message map, checked: `required` must be present and strings,
/// `optional` may be, nothing else may.
fn message(
    what: &str,
    msg: &Map,
    required: &[&str],
    optional: &[&str],
) -> Result<Value, Box<EvalAltResult>> {
    let mut out = serde_json::Map::new();
    for (k, v) in msg {
        let k = k.as_str();
        if !required.contains(&k) && !optional.contains(&k) {
            return Err(fail(format!(
                "{what}: unknown field `{k}` (fields: {})",
                [required, optional].concat().join(", ")
            )));
        }
        if !v.is_string() {
            return Err(fail(format!("{what}: `{k}` must be a string")));
        }
        out.insert(k.to_owned(), Value::String(v.to_string()));
    }
    for r in required {
        match out.get(*r) {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            _ => return Err(fail(format!("{what}: `{r}` is required"))),
        }
    }
    if let Some(Value::String(v)) = out.get("valid_for") {
        if let Err(e) = v.parse::<HumanDuration>() {
            return Err(fail(format!(
                "{what}: `valid_for` is not a duration like \"10m\": {e}"
            )));
        }
    }
    Ok(Value::Object(out))
}

fn lookup(
    service: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let timeout = RUN
        .with(|r| {
            let r = r.borrow();
            let Some(c) = r.as_ref() else {
                return Err(None);
            };
            let left = c.limits.lookup_budget.saturating_sub(c.lookup_spent);
            if left.is_zero() {
                return Err(Some(c.limits.lookup_budget));
            }
            Ok(c.limits.lookup_timeout.min(left))
        })
        .map_err(|budget| match budget {
            None => fail("lookups are only available while a route runs"),
            Some(budget) => {
                transient_failure();
                fail(format!(
                    "lookup budget of {budget:?} for this run is used up"
                ))
            }
        })?;
    if !configured(service) {
        return Err(fail(format!("service `{service}` is not configured")));
    }
    let what = format!("lookup {} {service}{path}", method.as_str());
    check_path(path).map_err(|e| fail(format!("{what} failed: {e}")))?;
    let Some(mut host) = take_host() else {
        return Err(fail("lookups are only available while a route runs"));
    };
    let started = Instant::now();
    let result = host.lookup(service, method, path, body, timeout);
    put_host(host);
    RUN.with(|r| {
        if let Some(c) = r.borrow_mut().as_mut() {
            c.lookup_spent += started.elapsed();
        }
    });
    match result {
        Ok(v) => rhai::serde::to_dynamic(v).map_err(|e| internal("a lookup's answer", e)),
        Err(e) => {
            if e.transient {
                transient_failure();
            }
            Err(fail(format!("{what} failed: {e}")))
        }
    }
}

/// Notes that a lookup of this run failed in a way that may pass.
fn transient_failure() {
    RUN.with(|r| {
        if let Some(c) = r.borrow_mut().as_mut() {
            c.transient_lookup_failure = true;
        }
    });
}

/// `segment` percent-encoded for use as one segment of a URL path: everything but
/// unreserved characters (RFC 3986) is encoded, `/` and `.` segments included.
pub fn escape_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `http::...`: lookups and HTTP deliveries to named services.
#[export_module]
pub mod http_api {
    /// Calls `service` (GET) and returns its JSON answer: `let c = http::get("customers", "/cards/1")`.
    #[rhai_fn(return_raw)]
    pub fn get(service: &str, path: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        super::lookup(service, super::Method::Get, path, None)
    }

    /// Calls `service` (POST, JSON body) and returns its JSON answer.
    #[rhai_fn(return_raw)]
    pub fn post(service: &str, path: &str, body: Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
        let body = super::to_json(&body, "http::post")?;
        super::lookup(service, super::Method::Post, path, Some(body))
    }

    /// Queues a POST of `body` to `service` + `path`, retried until it gets a 2xx. The
    /// service must be configured and the path valid now, not only when it is sent.
    #[rhai_fn(return_raw)]
    pub fn deliver(service: &str, path: &str, body: Dynamic) -> Result<(), Box<EvalAltResult>> {
        if !super::configured(service) {
            return Err(super::fail(format!(
                "http::deliver: service `{service}` is not configured"
            )));
        }
        super::check_path(path).map_err(|e| super::fail(format!("http::deliver: {e}")))?;
        let body = super::to_json(&body, "http::deliver")?;
        super::queue(
            "http",
            serde_json::json!({"service": service, "path": path, "body": body}),
        )
    }

    /// One path segment made safe from whatever the event holds:
    /// `` http::get("customers", `/cards/${http::escape(d.token.card_id)}/holder`) ``.
    /// Numbers and other values are escaped as the text they print as.
    pub fn escape(segment: Dynamic) -> String {
        super::escape_segment(&segment.to_string())
    }

    /// Whether `service` is configured.
    pub fn configured(service: &str) -> bool {
        super::configured(service)
    }
}

/// `email::send`.
#[export_module]
pub mod email_api {
    /// Queues an email: `email::send(#{to: "a@example.com", subject: "...", text: "...", html: "..."})`.
    #[rhai_fn(return_raw)]
    pub fn send(msg: rhai::Map) -> Result<(), Box<EvalAltResult>> {
        let payload = super::message(
            "email::send",
            &msg,
            &["to", "subject", "text"],
            &["html", "valid_for"],
        )?;
        super::queue("email", payload)
    }
}

/// `sms::send`.
#[export_module]
pub mod sms_api {
    /// Queues a text message: `sms::send(#{to: "+48500100200", text: "..."})`.
    #[rhai_fn(return_raw)]
    pub fn send(msg: rhai::Map) -> Result<(), Box<EvalAltResult>> {
        let payload = super::message("sms::send", &msg, &["to", "text"], &["valid_for"])?;
        super::queue("sms", payload)
    }
}

/// `log::info`, `log::warn`.
#[export_module]
pub mod log_api {
    /// Queues a line for the log (secret values masked).
    #[rhai_fn(return_raw)]
    pub fn info(message: &str) -> Result<(), Box<EvalAltResult>> {
        super::queue(
            "log",
            serde_json::json!({"level": "info", "message": message}),
        )
    }

    /// Queues a warning for the log (secret values masked).
    #[rhai_fn(return_raw)]
    pub fn warn(message: &str) -> Result<(), Box<EvalAltResult>> {
        super::queue(
            "log",
            serde_json::json!({"level": "warn", "message": message}),
        )
    }
}

/// Digits after the decimal point of an ISO 4217 currency.
pub fn minor_digits(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `minor` units of `currency` as text: `amount(1000, "PLN")` → `"10.00 PLN"`.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let cur = currency.to_ascii_uppercase();
    if digits == 0 {
        return format!("{minor} {cur}");
    }
    let scale = 10i64.pow(digits);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale_u = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$} {cur}",
        abs / scale_u,
        abs % scale_u,
        width = digits as usize
    )
}

/// `fmt::amount`.
#[export_module]
pub mod fmt_api {
    /// Formats minor units with their currency: `fmt::amount(1000, "PLN")` → `"10.00 PLN"`.
    pub fn amount(minor: rhai::INT, currency: &str) -> String {
        super::format_amount(minor, currency)
    }
}

/// `mask::...`.
#[export_module]
pub mod mask_api {
    /// `+48500100200` → `+********200`.
    pub fn phone(s: &str) -> String {
        crate::mask::phone(s)
    }

    /// `jan.kowalski@example.com` → `j***@example.com`.
    pub fn email(s: &str) -> String {
        crate::mask::email(s)
    }

    /// All but the last `n` characters replaced by `*`.
    pub fn keep_last(s: &str, n: rhai::INT) -> String {
        crate::mask::keep_last(s, usize::try_from(n).unwrap_or(0))
    }
}

/// Registers every module of the script API.
pub fn register(engine: &mut Engine) {
    engine.register_static_module("http", exported_module!(http_api).into());
    engine.register_static_module("email", exported_module!(email_api).into());
    engine.register_static_module("sms", exported_module!(sms_api).into());
    engine.register_static_module("log", exported_module!(log_api).into());
    engine.register_static_module("fmt", exported_module!(fmt_api).into());
    engine.register_static_module("mask", exported_module!(mask_api).into());
}

/// Longest failure message kept (a script may `throw` a long string).
const MAX_MESSAGE: usize = 2_000;

/// Runs `ast` on this thread for the event as scripts see it (`event`, see
/// [`super::ScriptEvent`]), with its secret values masked wherever the script's output
/// and failure mention them. The thread needs a large stack: values may be nested as
/// deep as `routes.max_collection_size`, and Rhai clones and drops them recursively.
pub fn execute(
    engine: &Engine,
    ast: &rhai::AST,
    event: rhai::Dynamic,
    secrets: Vec<String>,
    limits: &RunLimits,
    host: Box<dyn Host>,
) -> Result<Vec<ActionSpec>, RunFailure> {
    TRIPPED.with(|t| t.set(false));
    RUN.with(|r| {
        *r.borrow_mut() = Some(RunCtx {
            actions: Vec::new(),
            host: Some(host),
            limits: *limits,
            started: Instant::now(),
            lookup_spent: Duration::ZERO,
            secrets,
            transient_lookup_failure: false,
            output_bytes: 0,
            tripped: None,
        });
    });
    let mut scope = Scope::new();
    scope.push_constant("event", event);
    let result = engine.run_ast_with_scope(&mut scope, ast);
    drop(scope);
    TRIPPED.with(|t| t.set(false));
    let ctx = RUN.with(|r| r.borrow_mut().take());
    let Some(ctx) = ctx else {
        return Err(RunFailure {
            message: "internal error: the run lost its context".into(),
            retryable: false,
        });
    };
    match (result, ctx.tripped) {
        (_, Some(why)) => Err(RunFailure {
            message: mask_text(&why, &ctx.secrets),
            retryable: false,
        }),
        (Ok(()), None) => Ok(ctx.actions),
        (Err(e), None) => {
            let mut message = mask_text(&describe(&e, limits), &ctx.secrets);
            if message.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push_str("… (cut)");
            }
            Err(RunFailure {
                message,
                retryable: ctx.transient_lookup_failure,
            })
        }
    }
}

/// An operator's description of why a run failed.
fn describe(e: &EvalAltResult, limits: &RunLimits) -> String {
    match e {
        EvalAltResult::ErrorTerminated(_, pos) => {
            format!("deadline of {:?} exceeded ({pos})", limits.deadline)
        }
        EvalAltResult::ErrorTooManyOperations(pos) => format!("too many operations ({pos})"),
        EvalAltResult::ErrorStackOverflow(pos) => format!("call stack too deep ({pos})"),
        EvalAltResult::ErrorDataTooLarge(what, pos) => format!("{what} too large ({pos})"),
        EvalAltResult::ErrorRuntime(v, pos) => {
            let msg = match v.clone().into_string() {
                Ok(s) => s,
                // A thrown array or map: printed within the limits (its own `Display`
                // recurses without bound).
                Err(_) => sandbox::bounded_text(v, MAX_MESSAGE, limits.max_value_depth)
                    .unwrap_or_else(|_| format!("a thrown {} over the limits", v.type_name())),
            };
            if pos.is_none() {
                msg
            } else {
                format!("{msg} ({pos})")
            }
        }
        EvalAltResult::ErrorInFunctionCall(name, _, inner, _) => {
            format!("in `{name}`: {}", describe(inner, limits))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_currency_exponent() {
        assert_eq!(format_amount(1000, "PLN"), "10.00 PLN");
        assert_eq!(format_amount(5, "eur"), "0.05 EUR");
        assert_eq!(format_amount(-1234, "USD"), "-12.34 USD");
        assert_eq!(format_amount(1000, "JPY"), "1000 JPY");
        assert_eq!(format_amount(1234, "KWD"), "1.234 KWD");
    }

    #[test]
    fn masks_keep_what_helps_recognise() {
        assert_eq!(crate::mask::keep_last("+48500100200", 3), "*********200");
        assert_eq!(mask_api::phone("+48500100200"), "+********200");
        assert_eq!(mask_api::email("jan@example.com"), "j***@example.com");
    }

    #[test]
    fn escaped_segments_cannot_change_the_path() {
        assert_eq!(http_api::escape("card_1-a~".into()), "card_1-a~");
        assert_eq!(http_api::escape("../admin".into()), "%2E%2E%2Fadmin");
        assert_eq!(http_api::escape("a b?c#d".into()), "a%20b%3Fc%23d");
        assert_eq!(http_api::escape("é".into()), "%C3%A9");
        assert_eq!(http_api::escape(Dynamic::from_int(1337)), "1337");
    }
}
