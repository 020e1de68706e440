//! A graceful stop under load: SIGTERM in a loop while events wait for their route, runs
//! wait on a slow service, and emails are being sent to a real SMTP server. A stop must
//! fail no event (a run ended by shutdown leaves its event in the inbox), send no email
//! twice (a send in flight is finished and recorded), and write nothing to the log after
//! `store flushed; bye`. And a stop without any grace (`kill -9`) while runs are in
//! flight: their events are routed after the next start.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    routes::{routes_config, write},
    servers::{Recorder, Reply, SmtpSink},
    support::*,
};

/// A Pomelo OTP with this code.
fn otp(code: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "token": {"origin": "APPLE_PAY", "card_id": "card_1", "user_id": "user_1"},
        "otp": code, "to": "m***@example.com", "contact_method": "EMAIL",
    }))
    .unwrap()
}

/// SIGTERM, then the checks every stop must pass: exit 0 and a clean log.
fn stop(s: Server) -> String {
    let path = s.log_path.clone();
    let status = s.terminate();
    assert!(status.success(), "exit status {status}");
    let log = std::fs::read_to_string(path).unwrap();
    let (_, after) = log
        .split_once("store flushed; bye")
        .unwrap_or_else(|| panic!("no orderly stop:\n{log}"));
    assert!(
        after.trim().is_empty(),
        "logged after the last flush:{after}"
    );
    for bad in [
        "was cancelled",
        "being shutdown",
        "panicked",
        "route failed",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    log
}

/// A route script for Pomelo OTPs that looks the card up in `slow`; the configuration's
/// tail for it, with these lookup and service timeouts.
fn card_lookups(dir: &Dir, slow: &Recorder, lookup_timeout: &str, timeout: &str) -> String {
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "let c = http::get(\"cards\", `/cards/${event.data.otp}`); log::info(`for ${c.email}`);",
    );
    format!(
        "{}lookup_timeout = \"{lookup_timeout}\"\n\n[services.cards]\nbase_url = \"{}\"\ntimeout = \"{timeout}\"\n",
        routes_config(dir.path(), "1s"),
        slow.url()
    )
}

/// Every Pomelo event, once none waits for its route any more.
async fn all_routed(c: &reqwest::Client, s: &Server, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let evs = events(c, s, "provider=pomelo").await;
        if evs.len() == n && evs.iter().all(|e| e["status"] != "received") {
            return evs;
        }
        assert!(
            Instant::now() < deadline,
            "not routed: {:?}",
            evs.iter().map(|e| &e["status"]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_routing_backlog_and_slow_lookups_fails_nothing() {
    // Lookups take 300 ms; those of codes starting with 9 take 3 s, longer than the grace
    // period, so every stop catches a run it must end.
    let slow = Recorder::start().await;
    let card = json!({"email": "holder@example.com"});
    slow.plan(
        "/cards/9",
        vec![Reply::json(card.clone()).after(Duration::from_secs(3))],
    );
    slow.plan(
        "/cards/",
        vec![Reply::json(card).after(Duration::from_millis(300))],
    );
    let dir = Dir::new();
    let tail = card_lookups(&dir, &slow, "5s", "10s");
    let extra = [
        ("server", "shutdown_grace = \"1s\""),
        ("tail", tail.as_str()),
    ];
    let c = client();
    let mut sent = 0;
    let mut ended_by_shutdown = 0;
    for round in 0..3 {
        let s = Server::start_in(dir.clone(), &extra);
        // A slow one first, then a backlog.
        for i in 0..16 {
            let code = if i == 0 {
                format!("9{round}{i:04}")
            } else {
                format!("1{round}{i:04}")
            };
            accepted_pomelo(&c, &s, &otp(&code)).await;
            sent += 1;
        }
        // Stop while the slow lookup of this round is in flight.
        let slow_path = format!("/cards/9{round}0000");
        slow.wait_for(&slow_path, 1, Duration::from_secs(20)).await;
        let log = stop(s);
        ended_by_shutdown += log.matches("route run ended by shutdown").count();
    }
    assert!(ended_by_shutdown >= 3, "no run was ended by a stop");
    // After the last restart every event is routed, each by one finished run.
    let s = Server::start_in(dir.clone(), &extra);
    let evs = all_routed(&c, &s, sent).await;
    for e in &evs {
        assert_eq!(e["status"], "routed", "{e}");
        assert_eq!(e["route"]["runs"], 1, "{e}");
    }
    stop(s);
}

/// An event handed to the route workers from memory at its commit has no inbox entry on
/// disk while its run is in flight. A `kill -9` then leaves it waiting with nothing on
/// disk saying so but its status: the start-up check finds it, and it is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_runs_in_flight_leaves_their_events_to_the_next_start() {
    let slow = Recorder::start().await;
    let card = json!({"email": "holder@example.com"});
    slow.plan(
        "/cards/",
        vec![Reply::json(card.clone()).after(Duration::from_secs(60))],
    );
    let dir = Dir::new();
    let tail = card_lookups(&dir, &slow, "90s", "90s");
    let extra = [("tail", tail.as_str())];
    let c = client();
    let s = Server::start_in(dir.clone(), &extra);
    for i in 0..12 {
        accepted_pomelo(&c, &s, &otp(&format!("7{i:05}"))).await;
    }
    // Every run waits on its lookup (as many as there are run slots), the rest are queued.
    slow.wait_for("/cards/700000", 1, Duration::from_secs(20))
        .await;
    let waiting = events(&c, &s, "provider=pomelo").await;
    assert!(waiting.iter().all(|e| e["status"] == "received"));
    s.kill9();
    slow.plan("/cards/", vec![Reply::json(card)]);
    let s = Server::start_in(dir.clone(), &extra);
    let evs = all_routed(&c, &s, 12).await;
    for e in &evs {
        assert_eq!(e["status"], "routed", "{e}");
    }
    stop(s);
}

/// More events than the route tasks can hold (their queue of 1,024, and up to 32 each for
/// the eight tasks of two run slots) arrive while every run waits on a slow lookup: the
/// ones past that wait in memory for the dispatcher. Each is routed,
/// by one run (its card is looked up once), and a stop afterwards is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_route_queue_is_routed_once_each() {
    const N: usize = 1_500;
    let slow = Recorder::start().await;
    let card = json!({"email": "holder@example.com"});
    // The first eight lookups take 3 s each (under a run's 5 s lookup budget, past which
    // the route would retry and look the card up twice): the two run slots route four
    // events each in the first 12 s.
    let mut replies = vec![Reply::json(card.clone()).after(Duration::from_secs(3)); 8];
    replies.push(Reply::json(card));
    slow.plan("/cards/", replies);
    let dir = Dir::new();
    let tail =
        card_lookups(&dir, &slow, "30s", "30s").replace("[routes]\n", "[routes]\nworkers = 2\n");
    let extra = [("tail", tail.as_str())];
    let c = client();
    let s = Server::start_in(dir.clone(), &extra);
    let started = Instant::now();
    let codes: Vec<String> = (0..N).map(|i| format!("5{i:05}")).collect();
    for chunk in codes.chunks(50) {
        futures_util::future::join_all(chunk.iter().map(|code| {
            let (c, s) = (&c, &s);
            async move { accepted_pomelo(c, s, &otp(code)).await }
        }))
        .await;
    }
    assert!(
        crate::pg::everywhere() || started.elapsed() < Duration::from_secs(12),
        "the backlog took {:?} to send: the runs were no longer held up",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !events(&c, &s, "provider=pomelo&status=received")
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "not routed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut looked_up: HashMap<String, usize> = HashMap::new();
    for r in slow.requests() {
        *looked_up.entry(r.path).or_default() += 1;
    }
    assert_eq!(looked_up.len(), N, "every card looked up");
    assert!(
        looked_up.values().all(|&n| n == 1),
        "a card looked up twice: {:?}\n{}",
        looked_up
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>(),
        s.logs()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The newest 500 (a page); the lookups above cover all of them.
    for e in events(&c, &s, "provider=pomelo").await {
        assert_eq!(e["status"], "routed", "{e}");
        assert_eq!(e["route"]["runs"], 1, "{e}");
    }
    // On PostgreSQL events reach the route tasks through the inbox only (several
    // instances lease it), so there is no queue to fill.
    assert!(
        crate::pg::everywhere()
            || s.logs()
                .contains("the event waits in memory for the dispatcher"),
        "the route tasks' queue never filled"
    );
    stop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_emails_in_flight_sends_none_twice() {
    let dir = Dir::new();
    // The SMTP server takes each message, then answers 250 only 300 ms later: a stop
    // finds sends in flight.
    let sink = SmtpSink::start(dir.path(), &["--delay", "0.3"]);
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "email::send(#{ to: \"holder@example.com\", subject: \"Your code\", text: `Code ${event.data.otp}` });",
    );
    let tail = format!(
        "{}\n[channels.email]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"otp@bank.example\"\n",
        routes_config(dir.path(), "1s"),
        sink.port
    );
    let extra = [
        ("server", "shutdown_grace = \"5s\""),
        ("tail", tail.as_str()),
    ];
    let c = client();
    let mut sent = 0;
    for round in 0..3 {
        let s = Server::start_in(dir.clone(), &extra);
        let before = sink.mails().len();
        for i in 0..15 {
            accepted_pomelo(&c, &s, &otp(&format!("{round}{i:05}"))).await;
            sent += 1;
        }
        // Stop as soon as one of this round's messages is in the SMTP server's hands.
        sink.wait_for(before + 1, Duration::from_secs(20)).await;
        let log = stop(s);
        assert!(
            !log.contains("handed back"),
            "a send did not finish within the grace period:\n{log}"
        );
    }
    let s = Server::start_in(dir.clone(), &extra);
    let evs = all_routed(&c, &s, sent).await;
    assert!(evs.iter().all(|e| e["status"] == "routed"), "{evs:?}");
    let mails = sink.wait_for(sent, Duration::from_secs(30)).await;
    stop(s);
    let mut ids: HashMap<String, usize> = HashMap::new();
    for m in sink.mails() {
        let id = m
            .data
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .expect("a Message-ID")
            .to_owned();
        *ids.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(ids.len(), sent, "{} mails for {sent} events", mails.len());
}
