//! `switchboard test`: route scripts checked against test files that sit beside them
//! (`routes/pomelo/tokenization_otp.test.toml`). Each case gives an event, the answers of
//! the lookups the script must make, and the actions it must queue (or the error it must
//! fail with). Lookups are answered from the file; a lookup the file does not list fails
//! the run, a listed one the script does not make fails the case, and a listed `body`
//! must be the one the script posts.
//!
//! ```toml
//! [[case]]
//! name = "an SMS to the card holder"
//! event = { provider = "pomelo", type = "tokenization_otp", data = { otp = "123456" } }
//! lookup = [{ service = "customers", path = "/cards/card_1/holder", answer = { phone = "+48500100200" } }]
//! expect = [{ channel = "sms", payload = { to = "+48500100200", text = "..." } }]
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Lookup, LookupError, Method, RunLimits,
    scripts::{Resolved, Scripts},
};
use crate::{
    event::{Event, EventId, EventStatus},
    outbox::ActionSpec,
};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The cases.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// The event.
    pub event: TestEvent,
    /// Answers of the lookups the script may make.
    #[serde(default)]
    pub lookup: Vec<LookupStub>,
    /// Services configured besides those with lookups (for `http::deliver`).
    #[serde(default)]
    pub services: Vec<String>,
    /// The actions the script must queue, in order.
    #[serde(default)]
    pub expect: Vec<ActionSpec>,
    /// Instead: the script must fail with an error containing this.
    #[serde(default)]
    pub expect_error: Option<String>,
}

/// The event of a case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    /// Provider.
    pub provider: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The parsed body.
    pub data: Value,
    /// Request facts.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// JSON pointers of secret values (masked in the output).
    #[serde(default)]
    pub secret_paths: Vec<String>,
}

/// The answer to one lookup.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupStub {
    /// Service name.
    pub service: String,
    /// `GET` (default) or `POST`.
    #[serde(default = "get")]
    pub method: String,
    /// Path.
    pub path: String,
    /// For `POST`: the body the script must send (not checked when absent).
    #[serde(default)]
    pub body: Option<Value>,
    /// The JSON answer.
    #[serde(default)]
    pub answer: Value,
    /// Or: the lookup fails with this message.
    #[serde(default)]
    pub fail: Option<String>,
}

fn get() -> String {
    "GET".into()
}

/// Lookups answered from a test case.
struct Stubs {
    stubs: Vec<LookupStub>,
    services: Vec<String>,
    /// Indexes of the stubs used.
    used: Mutex<Vec<usize>>,
}

impl Lookup for Stubs {
    fn configured(&self, service: &str) -> bool {
        self.stubs.iter().any(|s| s.service == service)
            || self.services.iter().any(|s| s == service)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.stubs.iter().map(|s| s.service.clone()).collect();
        names.extend(self.services.iter().cloned());
        names
    }

    fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, LookupError>> {
        let found = self.stubs.iter().enumerate().find(|(_, s)| {
            s.service == service && s.path == path && s.method.eq_ignore_ascii_case(method.as_str())
        });
        let desc = format!("{} {service}{path}", method.as_str());
        let outcome = match found {
            Some((i, stub)) => {
                if let Ok(mut u) = self.used.lock() {
                    u.push(i);
                }
                match (&stub.body, &body) {
                    (Some(want), got) if got.as_ref() != Some(want) => {
                        Err(LookupError::permanent(format!(
                            "lookup {desc} posted {}, the test file expects {}",
                            got.as_ref().map_or("no body".into(), |g| g.to_string()),
                            want
                        )))
                    }
                    _ => match &stub.fail {
                        Some(f) => Err(LookupError::permanent(f.clone())),
                        None => Ok(stub.answer.clone()),
                    },
                }
            }
            None => Err(LookupError::permanent(format!(
                "unexpected lookup {desc} (the test file lists no answer for it)"
            ))),
        };
        Box::pin(async move { outcome })
    }
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The test file.
    pub file: PathBuf,
    /// The case's name.
    pub name: String,
    /// The script that ran.
    pub script: Option<String>,
    /// `None` when it passed; otherwise what differed.
    pub failure: Option<String>,
}

/// Every `*.test.toml` under `dir`.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".test.toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Runs every case of every test file under `dir` against `scripts`. Must not be called
/// from inside an async task (lookups wait on `handle`).
pub fn run_all(
    dir: &Path,
    scripts: &Scripts,
    limits: &RunLimits,
    handle: tokio::runtime::Handle,
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for file in test_files(dir) {
        let parsed: Result<TestFile, String> = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()));
        let tf = match parsed {
            Ok(tf) => tf,
            Err(e) => {
                results.push(CaseResult {
                    file: file.clone(),
                    name: "(the file)".into(),
                    script: None,
                    failure: Some(format!("not a test file: {e}")),
                });
                continue;
            }
        };
        for case in tf.cases {
            results.push(run_case(dir, &file, case, scripts, limits, handle.clone()));
        }
    }
    results
}

fn run_case(
    dir: &Path,
    file: &Path,
    case: Case,
    scripts: &Scripts,
    limits: &RunLimits,
    handle: tokio::runtime::Handle,
) -> CaseResult {
    let event = Event {
        id: EventId::new(),
        provider: case.event.provider.clone(),
        endpoint: String::new(),
        event_type: case.event.event_type.clone(),
        received_at: chrono::Utc::now(),
        status: EventStatus::Received,
        idempotency_key: String::new(),
        fingerprint: String::new(),
        body: Vec::new(),
        data: Some(case.event.data.clone()),
        meta: case.event.meta.clone(),
        flags: Vec::new(),
        conflict_of: None,
        quarantine_reason: None,
        secret_paths: case.event.secret_paths.clone(),
        route: None,
    };
    let resolved = scripts.resolve(&event.provider, &event.event_type);
    let script = resolved.name().map(str::to_owned);
    let (name, ast) = match resolved {
        Resolved::Script(name, ast, _) => (name, ast),
        Resolved::Broken(e) => {
            return CaseResult {
                file: file.to_path_buf(),
                name: case.name,
                script,
                failure: Some(format!("the script does not compile: {e}")),
            };
        }
        Resolved::Missing => {
            return CaseResult {
                file: file.to_path_buf(),
                name: case.name,
                script,
                failure: Some(format!(
                    "no script for {p}/{t}: none of {p}/{t}.rhai, {p}/_default.rhai and \
                     _default.rhai is in {dir} (give `switchboard test` the routes folder \
                     itself, not a provider's folder)",
                    p = event.provider,
                    t = event.event_type,
                    dir = dir.display()
                )),
            };
        }
    };
    let lookups = Arc::new(Stubs {
        stubs: case.lookup.clone(),
        services: case.services.clone(),
        used: Mutex::new(Vec::new()),
    });
    let outcome = super::run_script(
        scripts.engine(),
        &ast,
        &name,
        &event,
        lookups.clone(),
        limits,
        handle,
    )
    .map_err(|f| f.message);
    let used = lookups.used.lock().map(|u| u.clone()).unwrap_or_default();
    let unused: Vec<String> = case
        .lookup
        .iter()
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .map(|(_, s)| format!("{} {}{}", s.method.to_uppercase(), s.service, s.path))
        .collect();
    let expected: Vec<ActionSpec> = case
        .expect
        .iter()
        .map(|a| ActionSpec {
            channel: a.channel.clone(),
            payload: placeholders(&a.payload, &event),
        })
        .collect();
    let failure = match (outcome, &case.expect_error) {
        (outcome, _) if !unused.is_empty() => Some(format!(
            "the script did not make the lookups the test file lists: {}{}",
            unused.join(", "),
            // Usually because it called something else first: say what.
            match outcome {
                Err(e) => format!("\n  the script failed: {e}"),
                Ok(_) => String::new(),
            }
        )),
        (Ok(actions), None) if actions == expected => None,
        (Ok(actions), None) => Some(format!(
            "actions differ\n  expected: {}\n  got:      {}",
            pretty(&expected).replace('\n', "\n  "),
            pretty(&actions).replace('\n', "\n  ")
        )),
        (Ok(actions), Some(want)) => Some(format!(
            "expected an error containing {want:?}, but the script queued: {}",
            pretty(&actions)
        )),
        (Err(e), Some(want)) if e.contains(want.as_str()) => None,
        (Err(e), _) => Some(format!("the script failed: {e}")),
    };
    CaseResult {
        file: file.to_path_buf(),
        name: case.name,
        script,
        failure,
    }
}

/// `${event.id}` and `${event.received_at}` in expected strings, replaced by the values of
/// the event the case ran with (they differ on every run).
fn placeholders(v: &Value, event: &Event) -> Value {
    match v {
        Value::String(s) => Value::String(
            s.replace("${event.id}", &event.id.to_string())
                .replace("${event.received_at}", &event.received_at.to_rfc3339()),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| placeholders(x, event)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), placeholders(x, event)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Limits for test runs (the configured ones, with generous lookups: they are local).
pub fn limits(cfg: &crate::config::RoutesConfig) -> RunLimits {
    RunLimits {
        lookup_timeout: Duration::from_secs(5),
        lookup_budget: Duration::from_secs(10),
        ..RunLimits::from_config(cfg)
    }
}
