//! Hostile route scripts (`tests/fixtures/hostile/*.rhai`, each with the message its event
//! must fail with on its first line) against the real server: for each, the server stays
//! up, a VerifyVASP callback sent while it runs is answered within the provider's second,
//! the event ends `failed` with that message, and the next event routes. Then the crashes
//! that no limit prevents: a route worker killed with SIGKILL in the middle of a run, and
//! the whole server killed in the middle of a poison run, twice.

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    routes::{routes_config, write},
    servers::{Recorder, Reply},
    support::*,
};

/// A VerifyVASP callback of `callback_type`, unique.
fn callback(callback_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"callbackType": callback_type, "data": {
        "verificationUuid": uuid::Uuid::new_v4().to_string(),
        "txHash": "0x1", "result": "ERROR", "reason": "BLACKLISTED",
        "verificationResult": "UNKNOWN", "ivms101": {}}}))
    .unwrap()
}

/// The newest event of `event_type` once its route has run (or failed).
async fn settled(c: &reqwest::Client, s: &Server, event_type: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let evs = events(c, s, &format!("type={event_type}")).await;
        if let Some(e) = evs.first().filter(|e| e["status"] != "received") {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the {event_type} event was never routed: {evs:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends an ordinary callback and checks that it is answered within VerifyVASP's second.
async fn answered_within_a_second(c: &reqwest::Client, s: &Server) {
    let started = Instant::now();
    accepted_vasp(c, s, &callback("TX_REPORT")).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a VerifyVASP callback took {took:?}"
    );
}

/// Sends an ordinary callback and waits until it is routed.
async fn next_event_routes(c: &reqwest::Client, s: &Server) {
    accepted_vasp(c, s, &callback("TX_REPORT")).await;
    until_routed(c, s).await;
    let e = settled(c, s, "tx_report").await;
    assert_eq!(e["status"], "routed", "{e}");
}

fn corpus() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// expect: "))
            .unwrap_or_else(|| panic!("{name}: the first line must be `// expect: ...`"))
            .to_owned();
        out.push((name, expect, text));
    }
    out.sort();
    assert!(out.len() >= 15, "the corpus is incomplete");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_script_fails_alone_while_the_server_keeps_answering() {
    let sink = Recorder::start().await;
    let dir = Dir::new();
    let cases = corpus();
    for (name, _, text) in &cases {
        write(dir.path(), &format!("verifyvasp/hostile_{name}.rhai"), text);
    }
    write(
        dir.path(),
        "verifyvasp/tx_report.rhai",
        "log::info(\"ok\");",
    );
    // Building a value nested 1,500 deep takes a while in a debug build (each step checks
    // the whole value's size): a deadline that lets every script reach its hostile part.
    let tail = format!(
        "{}deadline = \"10s\"\n\n[services.sink]\nbase_url = \"{}\"\n",
        routes_config(dir.path(), "1s"),
        sink.url()
    );
    let mut s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    for (name, expect, _) in &cases {
        accepted_vasp(
            &c,
            &s,
            &callback(&format!("HOSTILE_{}", name.to_uppercase())),
        )
        .await;
        answered_within_a_second(&c, &s).await;
        let e = settled(&c, &s, &format!("hostile_{name}")).await;
        assert_eq!(e["status"], "failed", "{name}: {e}");
        let error = e["route"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expect.as_str()),
            "{name}: expected {expect:?} in {error:?}"
        );
        next_event_routes(&c, &s).await;
    }
    assert!(s.try_wait().is_none(), "the server stopped");
    // Nothing hostile reached the service: deep payloads and bad paths were refused in
    // the script, before anything was queued or sent.
    assert!(sink.requests().is_empty(), "{:?}", sink.requests());
    let log = s.logs();
    // Output and errors are escaped: no line of the log was forged.
    assert!(
        !log.lines().any(|l| l.starts_with("2030-")),
        "a script forged a log line"
    );
    assert!(
        log.contains(r"harmless\n2030-01-01"),
        "print output is escaped"
    );
    // Made-up callback types do not become metric labels.
    let metrics = get_text(&c, &s, "/metrics").await;
    assert!(!metrics.contains("hostile_"), "{metrics}");
    assert!(metrics.contains(r#"event_type="other""#), "{metrics}");
    assert!(metrics.contains(r#"event_type="tx_report""#), "{metrics}");
}

/// The pid of the newest route worker the server started.
fn newest_worker(s: &Server) -> u32 {
    s.logs()
        .lines()
        .rev()
        .filter(|l| l.contains("route worker started"))
        .filter_map(|l| l.split("pid=").nth(1))
        .find_map(|p| p.split_whitespace().next()?.parse().ok())
        .expect("no route worker was started")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Waits until the log shows `text` `n` times.
async fn until_logged(s: &Server, text: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.logs().matches(text).count() < n {
        assert!(Instant::now() < deadline, "never logged {text:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A script that says it started, then runs until its (long) deadline.
const SPINS: &str = "print(\"run started\"); let x = 0; loop { x += 1; }";

/// Routes settings under which [`SPINS`] runs for a minute.
fn spinning(dir: &Path, isolation: &str) -> String {
    format!(
        "{}deadline = \"60s\"\nmax_operations = 1000000000000000\nisolation = \"{isolation}\"\n",
        routes_config(dir, "1s")
    )
}

/// A service that answers `{}` to everything, each time after `wait`.
async fn answering_after(wait: Duration) -> Recorder {
    let slow = Recorder::start().await;
    slow.plan("/", vec![Reply::json(json!({})).after(wait)]);
    slow
}

/// A server directory whose route for `file` (under `verifyvasp/`) is `script`, and whose
/// `tx_report` route (the one [`next_event_routes`] sends) logs and ends.
fn hostile_dir(file: &str, script: &str) -> Arc<Dir> {
    let dir = Dir::new();
    write(dir.path(), &format!("verifyvasp/{file}"), script);
    write(
        dir.path(),
        "verifyvasp/tx_report.rhai",
        "log::info(\"ok\");",
    );
    dir
}

/// A server whose `hostile_spin` route is `hostile` (it prints "run started" first), with
/// `routes` added to the [`spinning`] settings, and three innocent `error_report` events
/// whose runs wait on a service that answers after a minute, started with the hostile
/// event and all four runs in flight. Returns the service, the directory and the settings
/// to start the server again with.
async fn hostile_and_innocents_in_flight(
    hostile: &str,
    isolation: &str,
    routes: &str,
) -> (Recorder, Arc<Dir>, String, Server) {
    let slow = answering_after(Duration::from_secs(60)).await;
    let dir = hostile_dir("hostile_spin.rhai", hostile);
    write(
        dir.path(),
        "verifyvasp/error_report.rhai",
        "let x = http::get(\"slow\", \"/x\"); log::info(\"innocent\");",
    );
    let tail = format!(
        "{}{routes}lookup_timeout = \"90s\"\nlookup_budget = \"90s\"\n\n[services.slow]\nbase_url = \"{}\"\ntimeout = \"90s\"\n",
        spinning(dir.path(), isolation),
        slow.url()
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_vasp(&c, &s, &callback("HOSTILE_SPIN")).await;
    for _ in 0..3 {
        accepted_vasp(&c, &s, &callback("ERROR_REPORT")).await;
    }
    until_logged(&s, "output=run started", 1).await;
    slow.wait_for("/x", 3, Duration::from_secs(20)).await;
    (slow, dir, tail, s)
}

/// Once the three innocent events of [`hostile_and_innocents_in_flight`] are done: each
/// routed.
async fn innocents_routed(c: &reqwest::Client, s: &Server) {
    until_routed(c, s).await;
    let innocent = events(c, s, "type=error_report").await;
    assert_eq!(innocent.len(), 3);
    for e in &innocent {
        assert_eq!(e["status"], "routed", "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_the_middle_of_a_run_costs_that_run_only() {
    let dir = hostile_dir("hostile_spin.rhai", SPINS);
    let tail = spinning(dir.path(), "process");
    let mut s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_vasp(&c, &s, &callback("HOSTILE_SPIN")).await;
    until_logged(&s, "output=run started", 1).await;
    let worker = newest_worker(&s);
    assert_ne!(worker, s.pid());
    let killed = Command::new("kill")
        .args(["-KILL", &worker.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    answered_within_a_second(&c, &s).await;
    let e = settled(&c, &s, "hostile_spin").await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["route"]["error"].as_str().unwrap();
    assert!(
        error.contains("the script crashed: its worker process was killed (SIGKILL)"),
        "{error}"
    );
    // A new worker takes the next run.
    next_event_routes(&c, &s).await;
    assert_ne!(newest_worker(&s), worker, "the dead worker was replaced");
    assert!(s.try_wait().is_none(), "the server stopped");
}

/// In process, `kill -9` of the whole server while a run is in flight, twice: the third
/// start parks the event instead of running it again (in process, a crash of the script
/// and a kill of the server look the same). Three innocent events whose runs were in flight
/// (waiting on a slow service) at the first kill are run alone after it, so they are
/// never counted twice, and end routed.
async fn poison_run_survives_two_kills(isolation: &str) {
    let (slow, dir, tail, s) = hostile_and_innocents_in_flight(SPINS, isolation, "").await;
    let extra = [("tail", tail.as_str())];
    let c = client();
    let worker = (isolation == "process").then(|| newest_worker(&s));
    s.kill9();
    if let Some(pid) = worker {
        // The worker dies with its server (PR_SET_PDEATHSIG).
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(Instant::now() < deadline, "the worker outlived its server");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Still slow: run beside the poison one, the innocent runs would be in flight at the
    // next kill too.
    slow.plan(
        "/",
        vec![Reply::json(json!({})).after(Duration::from_secs(3))],
    );

    // Restarted, the event is run again, alone (its first run never finished): killed
    // again.
    let s = Server::start_in(dir.clone(), &extra);
    until_logged(&s, "output=run started", 1).await;
    assert!(s.logs().contains("running it alone"));
    s.kill9();
    slow.plan("/", vec![Reply::json(json!({}))]);

    // The third start does not run it: two runs did not finish. The innocent ones run.
    let s = Server::start_in(dir.clone(), &extra);
    let e = settled(&c, &s, "hostile_spin").await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["route"]["error"].as_str().unwrap();
    assert!(error.contains("did not finish 2 times"), "{error}");
    assert!(
        !s.logs().contains("output=run started"),
        "it ran a third time"
    );
    innocents_routed(&c, &s).await;
    next_event_routes(&c, &s).await;
}

/// A poison script in a worker: it runs a while, then asks for more memory than its
/// worker may have. The whole server is killed twice in the middle of its run; each
/// restart runs it again (a stop of the server is not the script's fault), and the run
/// that reaches the allocation kills its worker only: the event is parked `failed` with
/// the crash, the server stays up, the innocent events whose runs were cut route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_a_worker_survives_two_kills_of_the_server_and_fails_alone() {
    // About two seconds of work before the allocation that kills the worker.
    let (slow, dir, tail, s) = hostile_and_innocents_in_flight(
        "print(\"run started\"); let x = 0; while x < 1500000 { x += 1; } \
         let chunk = \"\"; chunk.pad(60000, \"m\"); let s = \"\"; s.pad(600000000, chunk); log::info(`${s.len()}`);",
        "process",
        "max_string_size = \"1GiB\"\nworker_memory = \"384MiB\"\n",
    )
    .await;
    let extra = [("tail", tail.as_str())];
    let c = client();
    s.kill9();
    let s = Server::start_in(dir.clone(), &extra);
    until_logged(&s, "output=run started", 1).await;
    s.kill9();
    slow.plan("/", vec![Reply::json(json!({}))]);
    // The third start runs it to its end: the allocation kills the worker, not the server.
    let mut s = Server::start_in(dir.clone(), &extra);
    let e = settled(&c, &s, "hostile_spin").await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["route"]["error"].as_str().unwrap();
    assert!(
        error.contains("the script crashed: its worker process aborted"),
        "{error}"
    );
    innocents_routed(&c, &s).await;
    answered_within_a_second(&c, &s).await;
    next_event_routes(&c, &s).await;
    assert!(s.try_wait().is_none(), "the server stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_after_two_kills_of_the_server_when_scripts_run_in_process() {
    poison_run_survives_two_kills("in_process").await;
}

/// A script that asks for 600 MB in one `pad`: more than a worker's address space
/// (`routes.worker_memory` 384 MiB) can hold, once `max_string_size` lets it.
const MEMORY_HOG: &str = "let chunk = \"\"; chunk.pad(60000, \"m\"); let s = \"\"; s.pad(600000000, chunk); log::info(`${s.len()}`);";

/// The `hostile_memory` event once routed: parked `failed` because its worker aborted.
/// Its error.
async fn parked_for_an_abort(c: &reqwest::Client, s: &Server) -> String {
    let e = settled(c, s, "hostile_memory").await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["route"]["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("the script crashed: its worker process aborted"),
        "{error}"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_the_worker_memory_cap_ends_its_worker_only() {
    // An operator raised the string limit far beyond the worker's memory: one `pad` asks
    // for 600 MB, which the worker's address space (routes.worker_memory) cannot hold.
    let dir = hostile_dir("hostile_memory.rhai", MEMORY_HOG);
    let tail = format!(
        "{}max_string_size = \"1GiB\"\nworker_memory = \"384MiB\"\ndeadline = \"10s\"\n",
        routes_config(dir.path(), "1s")
    );
    let mut s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_vasp(&c, &s, &callback("HOSTILE_MEMORY")).await;
    answered_within_a_second(&c, &s).await;
    let error = parked_for_an_abort(&c, &s).await;
    assert!(error.contains("memory allocation"), "{error}");
    next_event_routes(&c, &s).await;
    assert!(s.try_wait().is_none(), "the server stopped");
}

/// A server with one route worker, held by a slow run (an `error_report` event whose
/// lookup answers after two seconds; every `error_report` run after it waits as long) while
/// what is sent next queues up behind it. `tx_report` routes at once; `hostile_memory`
/// crashes its worker.
async fn one_worker_held_by_a_slow_run() -> (Recorder, Server) {
    let slow = answering_after(Duration::from_secs(2)).await;
    let dir = hostile_dir("hostile_memory.rhai", MEMORY_HOG);
    write(
        dir.path(),
        "verifyvasp/error_report.rhai",
        "let x = http::get(\"slow\", \"/x\");",
    );
    let tail = format!(
        "{}workers = 1\nmax_string_size = \"1GiB\"\nworker_memory = \"384MiB\"\ndeadline = \"10s\"\nlookup_timeout = \"10s\"\nlookup_budget = \"10s\"\n\n[services.slow]\nbase_url = \"{}\"\ntimeout = \"10s\"\n",
        routes_config(dir.path(), "1s"),
        slow.url()
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_vasp(&c, &s, &callback("ERROR_REPORT")).await;
    slow.wait_for("/x", 1, Duration::from_secs(20)).await;
    // Three runs that the idle route tasks take one each while the slot is busy; what
    // comes after queues up for one frame.
    for _ in 0..3 {
        accepted_vasp(&c, &s, &callback("TX_REPORT")).await;
    }
    (slow, s)
}

/// Under load a worker gets many runs in one frame. A poison event in the middle of such a
/// frame: the runs before it are routed, the runs after it (which never started) run again
/// in a new worker and are routed too, and it runs again alone, crashes again, and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_the_middle_of_a_frame_fails_alone() {
    let (_slow, s) = one_worker_held_by_a_slow_run().await;
    let c = client();
    for _ in 0..10 {
        accepted_vasp(&c, &s, &callback("TX_REPORT")).await;
    }
    accepted_vasp(&c, &s, &callback("HOSTILE_MEMORY")).await;
    for _ in 0..10 {
        accepted_vasp(&c, &s, &callback("TX_REPORT")).await;
    }
    until_routed(&c, &s).await;
    parked_for_an_abort(&c, &s).await;
    let innocent = events(&c, &s, "type=tx_report").await;
    assert_eq!(innocent.len(), 23);
    for e in &innocent {
        assert_eq!(e["status"], "routed", "{e}");
    }
    assert_eq!(
        events(&c, &s, "type=error_report").await[0]["status"],
        "routed"
    );
    // The poison was not alone in its frame: runs after it never started, and ran again;
    // it was run again alone before it was blamed.
    until_logged(&s, "running this one again", 1).await;
    until_logged(&s, "running it again alone", 1).await;
    assert_eq!(
        s.logs().matches("a route worker died during a run").count(),
        2
    );
}

/// Each run of a frame is recorded as soon as the worker answers it, not when the whole
/// frame is done: an OTP queued behind a slow run in the same frame is not held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_recorded_before_the_slow_run_after_it_in_its_frame_ends() {
    let (slow, s) = one_worker_held_by_a_slow_run().await;
    let c = client();
    accepted_vasp(&c, &s, &callback("TX_REPORT")).await;
    accepted_vasp(&c, &s, &callback("ERROR_REPORT")).await;
    // The second slow run has started: the fast one before it is done by now.
    slow.wait_for("/x", 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fast = events(&c, &s, "type=tx_report").await;
    assert_eq!(fast.len(), 4);
    for e in &fast {
        assert_eq!(e["status"], "routed", "{e}");
    }
    let slow_ones = events(&c, &s, "type=error_report").await;
    assert_eq!(
        slow_ones[0]["status"], "received",
        "the second slow run is still going: {slow_ones:?}"
    );
    until_routed(&c, &s).await;
}
