//! "Try a script": a route script run against a stored event as the router runs it (the
//! same engine build, sandbox, operation limits, deadline, lookup timeout and budget),
//! except that the actions it decides are returned instead of queued, and what it prints
//! is captured instead of logged. Nothing is written to the store and nothing is sent.
//!
//! [`execute`] is the one place a try runs a script: where real runs go (a worker process
//! of the router's pool, or in process with `routes.isolation = "in_process"`), with the
//! limits of a real run, so that a hostile script tried from the console is contained as a
//! real run is.
//!
//! Lookups are answered from values the operator typed in, or live by the configured
//! services, and every lookup is recorded ([`Recorder`]).

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use futures_util::future::BoxFuture;
use serde_json::Value;
use switchboard_core::{
    config::{Isolation, RoutesConfig},
    event::Event,
    mask::{mask_by_name, mask_text, mask_values},
    outbox::ActionSpec,
    route::{
        AST, Lookup, LookupError, Method, RunFailure, RunLimits,
        api::Output,
        engine,
        pool::{Ended, Job},
        router::Router,
        run_script,
        scripts::{Resolved, Scripts},
    },
};
use tokio_util::sync::CancellationToken;

use super::views::{LookupAnswer, LookupCall, TryAction, TryOutcome, TryResult};

/// Most lines of output a try keeps, and most bytes in all.
const LOG_LINES: usize = 200;
const LOG_BYTES: usize = 64 * 1024;

/// What a try ran and how it ended, before it is shown.
enum Ran {
    /// The text (pasted, or the event's script with no good version) does not compile.
    CompileError {
        script: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// No script exists for the event.
    NoScript,
    /// It ran.
    Finished {
        script: String,
        result: Result<Vec<ActionSpec>, RunFailure>,
    },
}

/// The limits of a real run, as the router takes them from `routes`.
pub fn run_limits(routes: &RoutesConfig) -> RunLimits {
    RunLimits::from_config(routes)
}

/// Output captured from `print` and `debug`, bounded.
#[derive(Default)]
struct Captured {
    lines: Vec<String>,
    bytes: usize,
    cut: bool,
}

impl Captured {
    fn push(&mut self, line: String) {
        if self.lines.len() >= LOG_LINES || self.bytes + line.len() > LOG_BYTES {
            self.cut = true;
            return;
        }
        self.bytes += line.len();
        self.lines.push(line);
    }
}

/// The script a try runs: its name, its text and its compiled form; or how it ended
/// before running.
fn pick(
    scripts: &Arc<Scripts>,
    event: &Event,
    text: Option<String>,
) -> Result<(String, Arc<str>, Arc<AST>), Ran> {
    match text {
        Some(t) => match scripts.engine().compile(&t) {
            Ok(ast) => Ok(("(pasted)".to_owned(), Arc::from(t), Arc::new(ast))),
            Err(e) => {
                let pos = e.position();
                Err(Ran::CompileError {
                    script: "(pasted)".into(),
                    message: e.err_type().to_string(),
                    line: pos.line(),
                    column: pos.position(),
                })
            }
        },
        None => match scripts.resolve(&event.provider, &event.event_type) {
            Resolved::Script(name, ast, source) => Ok((name, source, ast)),
            Resolved::Broken(e) => Err(Ran::CompileError {
                script: e.file,
                message: e.message,
                line: e.line,
                column: e.column,
            }),
            Resolved::Missing => Err(Ran::NoScript),
        },
    }
}

/// Runs the event's current script (`text` absent) or `text` against `event` where real
/// runs go, with their limits. Queues nothing. Returns how it ended and what it printed.
async fn execute(
    routes: &RoutesConfig,
    scripts: &Arc<Scripts>,
    router: &Router,
    event: Event,
    text: Option<String>,
    lookups: Arc<dyn Lookup>,
) -> (Ran, Vec<String>) {
    let output = Arc::new(Mutex::new(Captured::default()));
    let (name, source, ast) = match pick(scripts, &event, text) {
        Ok(s) => s,
        Err(ran) => return (ran, Vec::new()),
    };
    let result = match router.isolation() {
        Isolation::Process => {
            let out = output.clone();
            let sink = move |kind: Output, line: &str| {
                if let Ok(mut o) = out.lock() {
                    o.push(match kind {
                        Output::Print => line.to_owned(),
                        Output::Debug => format!("debug: {line}"),
                        Output::Internal => format!("error: {line}"),
                    });
                }
            };
            let job = Job {
                script: &name,
                source: &source,
                event: &event,
                limits: router.limits(),
                output: Some(&sink),
                services: lookups.names(),
            };
            match router
                .pool()
                .run(job, &lookups, &CancellationToken::new())
                .await
            {
                Ended::Finished(r) => r,
                Ended::Crashed(message) | Ended::Unavailable(message) => Err(RunFailure {
                    message,
                    retryable: false,
                }),
                Ended::Cancelled => Err(RunFailure {
                    message: "the run was ended by a shutdown".into(),
                    retryable: false,
                }),
                // Only a run after another in the same frame; a try is alone in its own.
                Ended::NotRun => Err(RunFailure {
                    message: "the run did not start".into(),
                    retryable: false,
                }),
            }
        }
        Isolation::InProcess => in_process(routes, &name, ast, &event, lookups, &output).await,
    };
    let mut captured = std::mem::take(&mut *output.lock().unwrap_or_else(|p| p.into_inner()));
    if captured.cut {
        captured.lines.push(format!(
            "(output cut at {LOG_LINES} lines or {LOG_BYTES} bytes)"
        ));
    }
    (
        Ran::Finished {
            script: name,
            result,
        },
        captured.lines,
    )
}

/// A try with `routes.isolation = "in_process"`: the engine of a real run, with its output
/// captured instead of logged, on a blocking thread.
async fn in_process(
    routes: &RoutesConfig,
    name: &str,
    ast: Arc<AST>,
    event: &Event,
    lookups: Arc<dyn Lookup>,
    output: &Arc<Mutex<Captured>>,
) -> Result<Vec<ActionSpec>, RunFailure> {
    let (routes, name, event) = (routes.clone(), name.to_owned(), event.clone());
    let (o1, o2) = (output.clone(), output.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut engine = engine::build(&routes);
        engine.on_print(move |s| {
            if let Ok(mut o) = o1.lock() {
                o.push(s.to_owned());
            }
        });
        engine.on_debug(move |s, _src, pos| {
            if let Ok(mut o) = o2.lock() {
                o.push(format!("debug ({pos}): {s}"));
            }
        });
        run_script(
            &engine,
            &ast,
            &name,
            &event,
            lookups,
            &run_limits(&routes),
            handle,
        )
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "a tried route run panicked");
        Err(RunFailure {
            message: "internal error: the run stopped (see the log)".into(),
            retryable: false,
        })
    })
}

/// Lookups of a try: typed-in answers first, then (if allowed) the configured services;
/// each call recorded.
pub struct Recorder {
    answers: Vec<LookupAnswer>,
    services: Arc<dyn Lookup>,
    live: bool,
    calls: Arc<Mutex<Vec<LookupCall>>>,
}

impl Recorder {
    /// Answers from `answers`, then from `services` when `live`.
    pub fn new(answers: Vec<LookupAnswer>, services: Arc<dyn Lookup>, live: bool) -> Self {
        Recorder {
            answers,
            services,
            live,
            calls: Arc::default(),
        }
    }

    fn record(calls: &Mutex<Vec<LookupCall>>, call: LookupCall) -> usize {
        let mut c = calls.lock().unwrap_or_else(|p| p.into_inner());
        c.push(call);
        c.len() - 1
    }
}

impl Lookup for Recorder {
    /// As in a real run: a service is configured if the configuration has it (whether or
    /// not it is called live), or if an answer for it was typed in.
    fn configured(&self, service: &str) -> bool {
        self.answers.iter().any(|a| a.service == service) || self.services.configured(service)
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.services.names();
        for a in &self.answers {
            if !names.contains(&a.service) {
                names.push(a.service.clone());
            }
        }
        names
    }

    fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, LookupError>> {
        let typed = self.answers.iter().find(|a| {
            a.service == service
                && a.path == path
                && a.method
                    .as_deref()
                    .unwrap_or("GET")
                    .eq_ignore_ascii_case(method.as_str())
        });
        let call = |by: &str, result: &Result<Value, LookupError>| LookupCall {
            service: service.to_owned(),
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            answered_by: by.to_owned(),
            ok: result.is_ok(),
            answer: result.as_ref().ok().cloned(),
            error: result.as_ref().err().map(|e| e.message.clone()),
        };
        if let Some(a) = typed {
            let result = match &a.fail {
                Some(f) => Err(LookupError::permanent(f.clone())),
                None => Ok(a.answer.clone().unwrap_or(Value::Null)),
            };
            Self::record(&self.calls, call("typed", &result));
            return Box::pin(async move { result });
        }
        if !self.live {
            let result = Err(LookupError::permanent(format!(
                "no answer typed in for {} {service}{path} (type one in, or try with live lookups)",
                method.as_str()
            )));
            Self::record(&self.calls, call("none", &result));
            return Box::pin(async move { result });
        }
        // Recorded as timed out until it ends: the run's timeout drops the future.
        let pending: Result<Value, LookupError> = Err(LookupError::transient(
            "no answer in time (the lookup timeout or budget ran out)",
        ));
        let at = Self::record(&self.calls, call("live", &pending));
        let calls = self.calls.clone();
        let fut = self.services.call(service, method, path, body);
        Box::pin(async move {
            let result = fut.await;
            if let Some(c) = calls.lock().unwrap_or_else(|p| p.into_inner()).get_mut(at) {
                c.ok = result.is_ok();
                c.answer = result.as_ref().ok().cloned();
                c.error = result.as_ref().err().map(|e| e.message.clone());
            }
            result
        })
    }
}

/// Masks what a try shows: the event's secret values wherever they appear, and values
/// under secret-looking names.
fn shown(v: &Value, secrets: &[String], reveal: bool) -> Value {
    if reveal {
        return v.clone();
    }
    let mut m = mask_values(v, secrets);
    mask_by_name(&mut m);
    m
}

/// Tries a script against `event` and says what happened (see the module docs).
pub async fn try_script(
    routes: &RoutesConfig,
    scripts: &Arc<Scripts>,
    router: &Router,
    event: Event,
    text: Option<String>,
    lookups: Recorder,
    reveal: bool,
) -> TryResult {
    let secrets = event.secret_values();
    let calls = lookups.calls.clone();
    let started = Instant::now();
    let (ran, log) = execute(routes, scripts, router, event, text, Arc::new(lookups)).await;
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let text = |s: &str| {
        if reveal {
            s.to_owned()
        } else {
            mask_text(s, &secrets)
        }
    };
    let lookups = calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .map(|mut c| {
            c.answer = c.answer.map(|a| shown(&a, &secrets, reveal));
            c.error = c.error.map(|e| text(&e));
            c
        })
        .collect();
    let mut result = TryResult {
        outcome: TryOutcome::Ok,
        script: None,
        actions: Vec::new(),
        log: log.iter().map(|l| text(l)).collect(),
        lookups,
        error: None,
        line: None,
        column: None,
        took_ms,
    };
    match ran {
        Ran::CompileError {
            script,
            message,
            line,
            column,
        } => {
            result.outcome = TryOutcome::CompileError;
            result.script = Some(script);
            result.error = Some(message);
            result.line = line.map(|l| l as u64);
            result.column = column.map(|c| c as u64);
        }
        Ran::NoScript => result.outcome = TryOutcome::NoScript,
        Ran::Finished { script, result: r } => {
            result.script = Some(script);
            match r {
                Ok(actions) => {
                    result.actions = actions
                        .into_iter()
                        .map(|a| TryAction {
                            payload: shown(&a.payload, &secrets, reveal),
                            channel: a.channel,
                        })
                        .collect();
                }
                Err(f) => {
                    result.outcome = TryOutcome::Failed;
                    result.error = Some(text(&f.message));
                }
            }
        }
    }
    result
}
