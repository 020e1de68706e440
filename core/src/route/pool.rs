//! The server's side of the route workers ([`super::worker`]): it starts them (the
//! server's own binary, `route-worker`, with an empty environment, its stdin, stdout and
//! stderr piped), hands each run to an idle one, performs the lookups the run asks for with
//! the configured services, logs its output, and takes its actions back.
//!
//! A worker that dies during a run (a signal, an abort, an allocation over its memory cap,
//! a stack overflow) costs that run only: the run ends [`Ended::Crashed`] with what the
//! worker last wrote to stderr, and the next run gets a new worker. A run still busy when
//! its own time (lookups not counted) reaches [`hard_limit`] is ended by killing its worker,
//! even inside a native call that never checks the deadline. At shutdown, runs are ended
//! the same way, as [`Ended::Cancelled`], never as a script's failure.

use std::{
    collections::VecDeque,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};
use tokio_util::sync::CancellationToken;

use super::{
    Lookup, LookupError, RunFailure, RunLimits, ScriptEvent, log_output, log_safe,
    proto::{self, FromWorker, RunSpec, ScriptText, Setup, ToWorker},
    worker,
};
use crate::{config::RoutesConfig, event::Event, mask::mask_text, outbox::ActionSpec};

/// How a run in a worker ended.
#[derive(Debug)]
pub enum Ended {
    /// The script finished: its actions, or its failure.
    Finished(Result<Vec<ActionSpec>, RunFailure>),
    /// The worker died during the run or was killed for overstaying: why, for the
    /// operator. Not worth running again as it is.
    Crashed(String),
    /// Ended by shutdown: the event's run never finished and was not the script's fault.
    Cancelled,
    /// No worker could be started: the run did not happen.
    Unavailable(String),
    /// The worker ended at an earlier run of the same frame (it crashed, or was killed):
    /// this one never started, and is not to blame.
    NotRun,
}

/// Longest a run's own time may grow before its worker is killed: twice its deadline
/// plus a second (the deadline is checked by the script engine; this catches what never
/// returns to it).
pub fn hard_limit(deadline: Duration) -> Duration {
    deadline.saturating_mul(2) + Duration::from_secs(1)
}

/// Deepest lookup answer handed to a worker (frames are read with serde_json's limit of
/// 128 levels; the frame adds its own).
const MAX_ANSWER_DEPTH: usize = 100;

/// Lines of a worker's stderr kept for the message of its crash.
const STDERR_TAIL: usize = 4;

/// Lines of one worker's stderr written to the log at most.
const STDERR_LOGGED: usize = 100;

/// Where a run's print and debug lines go instead of the log.
pub type OutputSink<'a> = &'a (dyn Fn(super::api::Output, &str) + Send + Sync);

/// One run for a worker.
pub struct Job<'a> {
    /// The script's path.
    pub script: &'a str,
    /// Its text.
    pub source: &'a str,
    /// The event.
    pub event: &'a Event,
    /// The run's limits.
    pub limits: RunLimits,
    /// Where its print and debug lines go: the log when `None`; an operator trying a
    /// script collects them.
    pub output: Option<OutputSink<'a>>,
    /// Services it may call beyond the configured ones (a try's typed-in answers).
    pub services: Vec<String>,
}

struct Worker {
    /// When it last finished a run.
    used: Instant,
    child: Child,
    stdin: ChildStdin,
    /// Buffered: the answers to several runs are read with one call when they came
    /// together.
    stdout: BufReader<ChildStdout>,
    pid: u32,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_done: tokio::task::JoinHandle<()>,
}

/// The workers of one server.
pub struct Pool {
    program: PathBuf,
    args: Vec<String>,
    setup: Setup,
    idle: Mutex<Vec<Worker>>,
    started: AtomicU64,
}

impl Pool {
    /// Workers of this very binary (`<current exe> route-worker`), for `cfg` and the
    /// services named. On Linux through `/proc/self/exe`, which stays the running binary
    /// even when a deploy has replaced the file on disk.
    pub fn new(cfg: &RoutesConfig, services: Vec<String>) -> Pool {
        let own = PathBuf::from("/proc/self/exe");
        let program = if own.exists() {
            own
        } else {
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("switchboard"))
        };
        Pool::with_program(program, vec![worker::SUBCOMMAND.into()], cfg, services)
    }

    /// Workers started as `program args`.
    pub fn with_program(
        program: PathBuf,
        args: Vec<String>,
        cfg: &RoutesConfig,
        services: Vec<String>,
    ) -> Pool {
        Pool {
            program,
            args,
            setup: Setup {
                routes: cfg.clone(),
                services,
            },
            idle: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
        }
    }

    /// How many workers have been started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    async fn spawn(&self) -> std::io::Result<Worker> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            // mimalloc (the binary's allocator) reserves 1 GiB of address space at its
            // first allocation, which would leave the memory cap (RLIMIT_AS) nothing to
            // limit: it reserves as it grows instead.
            .env("MIMALLOC_ARENA_RESERVE", "16MiB")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let (Some(mut stdin), Some(stdout), Some(err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the worker's pipes are missing"));
        };
        let mut stdout = BufReader::new(stdout);
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr.clone();
        let stderr_done = tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            let mut logged = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                let line: String = line.chars().take(1_000).collect();
                if logged < STDERR_LOGGED {
                    logged += 1;
                    tracing::warn!(pid, line = %log_safe(&line), "a route worker wrote to stderr");
                }
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        self.started.fetch_add(1, Ordering::Relaxed);
        let hello = async {
            proto::write_frame_async(&mut stdin, &ToWorker::Setup(self.setup.clone())).await?;
            match proto::read_frame_async::<FromWorker>(&mut stdout).await? {
                Some(FromWorker::Ready) => Ok(()),
                _ => Err(std::io::Error::other("it did not say it was ready")),
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), hello).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                let _ = tokio::time::timeout(Duration::from_millis(500), stderr_done).await;
                let tail = stderr.lock().map(|t| t.clone()).unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "{e} ({}{})",
                    describe_exit(status),
                    last_words(&tail, &[])
                )));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(std::io::Error::other("it did not start within 30s"));
            }
        }
        tracing::info!(pid, "route worker started");
        Ok(Worker {
            used: Instant::now(),
            child,
            stdin,
            stdout,
            pid,
            stderr,
            stderr_done,
        })
    }

    /// An idle worker that is still alive, or a new one.
    async fn take(&self) -> std::io::Result<Worker> {
        loop {
            let w = self.idle.lock().ok().and_then(|mut i| i.pop());
            match w {
                Some(mut w) => {
                    if matches!(w.child.try_wait(), Ok(None)) {
                        return Ok(w);
                    }
                    tracing::warn!(
                        pid = w.pid,
                        "an idle route worker had ended; starting another"
                    );
                }
                None => return self.spawn().await,
            }
        }
    }

    /// Runs `job` in a worker. `lookups` performs what the script looks up; `abort` ends
    /// the run at once (shutdown).
    pub async fn run(
        &self,
        job: Job<'_>,
        lookups: &Arc<dyn Lookup>,
        abort: &CancellationToken,
    ) -> Ended {
        let mut ended = Ended::NotRun;
        self.run_all(std::slice::from_ref(&job), lookups, abort, |_, e| ended = e)
            .await;
        ended
    }

    /// Runs `jobs` in one worker, in order, handed over in one frame. `done` gets each
    /// one's index and outcome as soon as it has one, so that it can be recorded while the
    /// worker goes on with the next. When the worker dies or is killed during a run, that
    /// run ends [`Ended::Crashed`] and the ones after it [`Ended::NotRun`] (at shutdown,
    /// all of them [`Ended::Cancelled`]).
    pub async fn run_all(
        &self,
        jobs: &[Job<'_>],
        lookups: &Arc<dyn Lookup>,
        abort: &CancellationToken,
        mut done: impl FnMut(usize, Ended),
    ) {
        let n = jobs.len();
        let frame = match frame_of(jobs).and_then(|f| proto::encode(&f)) {
            Ok(f) => f,
            // Nothing any worker could take (the router keeps frames far below the limit,
            // so this is one event too large to hand over): not worth trying again.
            Err(e) => {
                let why = format!("the run cannot be handed to a worker: {e}");
                return every(&mut done, 0, n, || Ended::Crashed(why.clone()));
            }
        };
        // A worker may have gone since its last run: then the runs go to another.
        let mut attempts = 0;
        let mut w = loop {
            attempts += 1;
            let mut w = tokio::select! {
                w = self.take() => match w {
                    Ok(w) => w,
                    Err(e) => {
                        let why = format!("cannot start a route worker: {e}");
                        return every(&mut done, 0, n, || Ended::Unavailable(why.clone()));
                    }
                },
                () = abort.cancelled() => return every(&mut done, 0, n, || Ended::Cancelled),
            };
            match proto::write_encoded_async(&mut w.stdin, &frame).await {
                Ok(()) => break w,
                Err(e) if attempts < 3 => {
                    tracing::warn!(pid = w.pid, error = %e, "a route worker could not take a run; using another");
                    kill(&mut w).await;
                }
                Err(e) => {
                    let why = format!("no route worker takes runs: {e}");
                    return every(&mut done, 0, n, || Ended::Unavailable(why.clone()));
                }
            }
        };
        drop(frame);
        for (i, job) in jobs.iter().enumerate() {
            match self.answer(&mut w, job, lookups, abort).await {
                Ok(result) => done(i, Ended::Finished(result)),
                // The worker is gone: the runs after this one never started.
                Err(end) => {
                    let cancelled = matches!(end, Ended::Cancelled);
                    done(i, end);
                    return if cancelled {
                        every(&mut done, i + 1, n, || Ended::Cancelled)
                    } else {
                        every(&mut done, i + 1, n, || Ended::NotRun)
                    };
                }
            }
        }
        w.used = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(w);
        }
    }

    /// Serves one run of the frame until its answer: its lookups and its output. `Err`
    /// when the worker is gone (it died, or was killed: for overstaying, for breaking the
    /// protocol, or at shutdown), with how the run ended.
    async fn answer(
        &self,
        w: &mut Worker,
        job: &Job<'_>,
        lookups: &Arc<dyn Lookup>,
        abort: &CancellationToken,
    ) -> Result<Result<Vec<ActionSpec>, RunFailure>, Ended> {
        let hard = hard_limit(job.limits.deadline);
        let mut own_time = Duration::ZERO;
        let mut output = 0usize;
        loop {
            let waiting = Instant::now();
            let frame = tokio::select! {
                f = proto::read_frame_async::<FromWorker>(&mut w.stdout) => f,
                () = tokio::time::sleep(hard.saturating_sub(own_time)) => {
                    kill(w).await;
                    return Err(Ended::Crashed(format!(
                        "deadline of {:?} exceeded: the script was still running after {hard:?} of its own time, so its worker was killed",
                        job.limits.deadline
                    )));
                }
                () = abort.cancelled() => {
                    kill(w).await;
                    return Err(Ended::Cancelled);
                }
            };
            own_time += waiting.elapsed();
            match frame {
                Ok(Some(FromWorker::Done(result))) => return Ok(result),
                Ok(Some(FromWorker::Output { kind, text })) => {
                    output = output.saturating_add(text.len());
                    // The worker keeps to the limit; a worker that does not is not trusted
                    // further.
                    if output > job.limits.max_output.saturating_add(64 << 10) {
                        kill(w).await;
                        return Err(Ended::Crashed(
                            "the worker wrote more output than routes.max_output allows; it was killed".into(),
                        ));
                    }
                    match job.output {
                        Some(out) => out(kind, &text),
                        None => log_output(job.script, &job.event.id.to_string(), kind, &text),
                    }
                }
                Ok(Some(FromWorker::Lookup {
                    service,
                    method,
                    path,
                    body,
                    timeout,
                })) => {
                    let timeout = timeout.min(job.limits.lookup_timeout);
                    let call = lookups.call(&service, method, &path, body);
                    let answer = tokio::select! {
                        r = tokio::time::timeout(timeout, call) => match r {
                            Ok(Ok(v)) if proto::json_depth(&v) > MAX_ANSWER_DEPTH => Err(LookupError::permanent(
                                format!("the answer is nested deeper than {MAX_ANSWER_DEPTH} levels"),
                            )),
                            Ok(r) => r,
                            Err(_) => Err(LookupError::transient(format!("timed out after {timeout:?}"))),
                        },
                        () = abort.cancelled() => {
                            kill(w).await;
                            return Err(Ended::Cancelled);
                        }
                    };
                    if let Err(e) =
                        proto::write_frame_async(&mut w.stdin, &ToWorker::Answer(answer)).await
                    {
                        return Err(self.crashed(w, job, Some(e)).await);
                    }
                }
                Ok(Some(FromWorker::Ready)) => {
                    kill(w).await;
                    return Err(Ended::Crashed(
                        "the worker broke the protocol; it was killed".into(),
                    ));
                }
                Ok(None) => return Err(self.crashed(w, job, None).await),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    kill(w).await;
                    return Err(Ended::Crashed(format!(
                        "the worker's answer could not be read ({e}); it was killed"
                    )));
                }
                Err(e) => return Err(self.crashed(w, job, Some(e)).await),
            }
        }
    }

    /// The worker's pipe closed during a run: it died. Why, as far as can be told.
    async fn crashed(&self, w: &mut Worker, job: &Job<'_>, e: Option<std::io::Error>) -> Ended {
        let status = match tokio::time::timeout(Duration::from_secs(2), w.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                kill(w).await;
                None
            }
        };
        // What it wrote last, once its stderr is read to the end.
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut w.stderr_done).await;
        let tail = w.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        let how = describe_exit(status);
        tracing::error!(pid = w.pid, how = %how, error = ?e.map(|e| e.to_string()), "a route worker died during a run; the next run gets a new one");
        Ended::Crashed(format!(
            "the script crashed: its worker process {how}{}; the worker was replaced",
            last_words(&tail, &job.event.secret_values())
        ))
    }

    /// Ends the workers idle for longer than `after`, but the one used last: memory goes
    /// back after a burst, and a quiet server keeps one worker warm.
    pub fn retire_idle(&self, after: Duration) {
        let old: Vec<Worker> = match self.idle.lock() {
            Ok(mut idle) => {
                idle.sort_by_key(|w| w.used);
                let keep = idle.pop();
                let (old, young): (Vec<Worker>, Vec<Worker>) =
                    idle.drain(..).partition(|w| w.used.elapsed() > after);
                *idle = young;
                idle.extend(keep);
                old
            }
            Err(_) => return,
        };
        if old.is_empty() {
            return;
        }
        tracing::debug!(workers = old.len(), "retiring idle route workers");
        tokio::spawn(async move {
            for w in old {
                end(w).await;
            }
        });
    }

    /// Ends every idle worker (they exit when their stdin closes).
    pub async fn close(&self) {
        let idle = self
            .idle
            .lock()
            .map(|mut i| std::mem::take(&mut *i))
            .unwrap_or_default();
        for w in idle {
            end(w).await;
        }
    }
}

/// The same outcome, `ended`, for the runs `from..n`.
fn every(done: &mut impl FnMut(usize, Ended), from: usize, n: usize, ended: impl Fn() -> Ended) {
    for i in from..n {
        done(i, ended());
    }
}

/// The frame that hands `jobs` to a worker: each script's text once.
fn frame_of(jobs: &[Job<'_>]) -> std::io::Result<ToWorker> {
    let mut scripts: Vec<ScriptText> = Vec::new();
    let runs = jobs
        .iter()
        .map(|job| {
            let script = match scripts
                .iter()
                .position(|s| s.name == job.script && s.source == job.source)
            {
                Some(i) => i,
                None => {
                    scripts.push(ScriptText {
                        name: job.script.to_owned(),
                        source: job.source.to_owned(),
                    });
                    scripts.len() - 1
                }
            };
            Ok(RunSpec {
                script,
                event: serde_json::value::to_raw_value(&ScriptEvent::of(job.event))
                    .map_err(std::io::Error::other)?,
                secrets: job.event.secret_values(),
                limits: job.limits,
                services: job.services.clone(),
            })
        })
        .collect::<std::io::Result<_>>()?;
    Ok(ToWorker::Runs { scripts, runs })
}

/// Closes a worker's stdin, which ends it; kills it if it does not go within a second.
async fn end(w: Worker) {
    let Worker {
        stdin, mut child, ..
    } = w;
    drop(stdin);
    if tokio::time::timeout(Duration::from_secs(1), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

async fn kill(w: &mut Worker) {
    let _ = w.child.start_kill();
    let _ = w.child.wait().await;
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "stopped answering".into();
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return match sig {
                9 => "was killed (SIGKILL)".into(),
                6 => "aborted (SIGABRT: a stack overflow, or memory over routes.worker_memory)"
                    .into(),
                11 => "crashed (SIGSEGV)".into(),
                n => format!("was ended by signal {n}"),
            };
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended".into(),
    }
}

fn last_words(tail: &VecDeque<String>, secrets: &[String]) -> String {
    let text: Vec<String> = tail
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| log_safe(&mask_text(l, secrets)).chars().take(300).collect())
        .collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(" after writing \"{}\"", text.join(" / "))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::{
        event::{EventId, EventStatus},
        route::NoLookups,
    };

    /// A "worker" that says it is ready, then never answers: stuck in a native call.
    fn stuck_pool() -> Pool {
        Pool::with_program(
            "/bin/sh".into(),
            vec![
                "-c".into(),
                r#"printf '\000\000\000\007"Ready"'; exec sleep 60"#.into(),
            ],
            &RoutesConfig::default(),
            vec![],
        )
    }

    fn event() -> Event {
        Event {
            id: EventId::new(),
            provider: "p".into(),
            endpoint: "/p".into(),
            event_type: "t".into(),
            received_at: chrono::Utc::now(),
            status: EventStatus::Received,
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            body: vec![],
            data: Some(serde_json::json!({})),
            meta: Default::default(),
            flags: vec![],
            conflict_of: None,
            quarantine_reason: None,
            secret_paths: vec![],
            route: None,
        }
    }

    fn job(event: &Event) -> Job<'_> {
        Job {
            script: "t.rhai",
            source: "loop {}",
            event,
            limits: RunLimits {
                deadline: Duration::from_millis(10),
                ..RunLimits::from_config(&RoutesConfig::default())
            },
            output: None,
            services: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_stuck_worker_is_killed_at_the_hard_deadline() {
        let pool = stuck_pool();
        let lookups: Arc<dyn Lookup> = Arc::new(NoLookups);
        let event = event();
        let started = Instant::now();
        let ended = pool
            .run(job(&event), &lookups, &CancellationToken::new())
            .await;
        let took = started.elapsed();
        match ended {
            Ended::Crashed(m) => assert!(m.starts_with("deadline of 10ms exceeded"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(took >= hard_limit(Duration::from_millis(10)), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(
            pool.idle.lock().unwrap().is_empty(),
            "a killed worker is not reused"
        );
    }

    #[tokio::test]
    async fn a_worker_that_dies_in_a_frame_fails_that_run_and_leaves_the_later_ones_unrun() {
        // Takes the frame, answers two runs, then dies during the third.
        let pool = Pool::with_program(
            "/bin/sh".into(),
            vec![
                "-c".into(),
                r#"printf '\000\000\000\007"Ready"'; head -c 4 >/dev/null; d='{"Done":{"Ok":[]}}'; printf '\000\000\000\022%s\000\000\000\022%s' "$d" "$d"; echo dying >&2; exit 3"#.into(),
            ],
            &RoutesConfig::default(),
            vec![],
        );
        let lookups: Arc<dyn Lookup> = Arc::new(NoLookups);
        let events: Vec<Event> = (0..4).map(|_| event()).collect();
        let jobs: Vec<Job<'_>> = events.iter().map(job).collect();
        let mut ended = Vec::new();
        pool.run_all(&jobs, &lookups, &CancellationToken::new(), |i, e| {
            assert_eq!(i, ended.len(), "in order");
            ended.push(e);
        })
        .await;
        assert_eq!(ended.len(), 4);
        assert!(
            matches!(&ended[0], Ended::Finished(Ok(a)) if a.is_empty()),
            "{ended:?}"
        );
        assert!(
            matches!(&ended[1], Ended::Finished(Ok(a)) if a.is_empty()),
            "{ended:?}"
        );
        assert!(
            matches!(&ended[2], Ended::Crashed(m) if m.contains("exited with code 3") && m.contains("dying")),
            "{ended:?}"
        );
        assert!(matches!(&ended[3], Ended::NotRun), "{ended:?}");
        assert!(
            pool.idle.lock().unwrap().is_empty(),
            "a dead worker is not reused"
        );
    }

    #[tokio::test]
    async fn idle_workers_retire_but_one() {
        let pool = stuck_pool();
        for _ in 0..3 {
            let w = pool.spawn().await.unwrap();
            pool.idle.lock().unwrap().push(w);
        }
        pool.retire_idle(Duration::from_secs(60));
        assert_eq!(pool.idle.lock().unwrap().len(), 3, "not idle long enough");
        pool.retire_idle(Duration::ZERO);
        assert_eq!(
            pool.idle.lock().unwrap().len(),
            1,
            "the last one used stays"
        );
        pool.close().await;
        assert!(pool.idle.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn shutdown_ends_a_run_as_cancelled_not_as_a_failure() {
        let pool = stuck_pool();
        let lookups: Arc<dyn Lookup> = Arc::new(NoLookups);
        let event = event();
        let abort = CancellationToken::new();
        let stop = abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.cancel();
        });
        let mut slow = job(&event);
        slow.limits.deadline = Duration::from_secs(30);
        let ended = pool.run(slow, &lookups, &abort).await;
        assert!(matches!(ended, Ended::Cancelled), "{ended:?}");
    }

    #[tokio::test]
    async fn a_worker_that_cannot_start_makes_the_run_unavailable() {
        let pool = Pool::with_program(
            "/nonexistent/switchboard".into(),
            vec![],
            &RoutesConfig::default(),
            vec![],
        );
        let lookups: Arc<dyn Lookup> = Arc::new(NoLookups);
        let event = event();
        let ended = pool
            .run(job(&event), &lookups, &CancellationToken::new())
            .await;
        assert!(matches!(ended, Ended::Unavailable(_)), "{ended:?}");
    }
}
