//! Several `switchboard serve` processes on one PostgreSQL database (`store.backend =
//! "postgres"`): a key claimed once across instances, work taken over when an instance
//! dies, a rolling restart under load, schema migrations, and moving an embedded store.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{pg, servers::*, support::*};

/// The lease-owner id an instance logged at start-up.
fn instance_of(s: &Server) -> String {
    let logs = s.logs();
    let at = logs.find("instance=").expect("the instance id in the log") + "instance=".len();
    logs[at..at + 36].to_owned()
}

/// Two instances on a fresh database, each with its own directory.
fn two(store: &str, tail: &str) -> (Server, Server, Arc<Dir>, Arc<Dir>) {
    let (da, db) = (Dir::new(), Dir::new());
    let a = Server::start_in(da.clone(), &[("store", store), ("tail", tail)]);
    let b = Server::start_in(db.clone(), &[("store", store), ("tail", tail)]);
    (a, b, da, db)
}

/// 100 identical notifications at once, half to each instance: one event, and every
/// answer the first one's, byte for byte, within VerifyVASP's second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_notifications_split_across_instances_make_one_event() {
    let url = pg::cluster().database();
    let store = pg::store_lines(&url).replace("pool_size = 8", "pool_size = 24");
    let (a, b, _, _) = two(&store, "");
    let c = client();
    let body = serde_json::to_vec(&json!({
        "callbackType": "TX_REPORT",
        "data": {"verificationUuid": "b6e0f5a8-0000-4000-8000-000000000100", "txHash": "0xfeed"},
    }))
    .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = if i % 2 == 0 { &a } else { &b };
        let req = vasp_request(&c, s, &body);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = req.send().await.unwrap();
            let took = sent.elapsed();
            (answer(r).await, took)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let first = &answers[0].0;
    assert_eq!(first.0, 200, "{:?}", String::from_utf8_lossy(&first.2));
    for (ans, took) in &answers {
        assert_eq!(ans, first, "every duplicate gets the first answer");
        assert!(
            *took < Duration::from_secs(1),
            "answered within VerifyVASP's second: {took:?}"
        );
    }
    eprintln!(
        "100 identical VerifyVASP callbacks over two instances answered in {:?}",
        started.elapsed()
    );
    for s in [&a, &b] {
        let evs = events(&c, s, "provider=verifyvasp").await;
        assert_eq!(evs.len(), 1, "one event, seen from either instance");
    }

    // Pomelo: the same, 100 identical signed bodies.
    let body = pomelo_body("271828");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = if i % 2 == 0 { &a } else { &b };
        let req = pomelo_request(&c, s, &body);
        tasks.push(tokio::spawn(async move {
            answer(req.send().await.unwrap()).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|x| *x == answers[0] && x.0 == 204));
    assert_eq!(events(&c, &a, "provider=pomelo").await.len(), 1);
}

/// An instance killed in the middle of routing and delivery: the other takes its work
/// over once the leases run out. No event is lost or routed twice; each email arrives at
/// least once (a message the killed instance had handed to the SMTP server may arrive
/// twice, under the same Message-ID: the count is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instances_work_is_finished_by_the_other() {
    let url = pg::cluster().database();
    let store = pg::store_lines(&url);
    let sink_dir = Dir::new();
    // A slow relay and a slow lookup: work is in flight when the instance dies.
    let sink = SmtpSink::start(sink_dir.path(), &["--delay", "1"]);
    let lookups = customers(Some(Duration::from_millis(400))).await;
    let tail = format!("{}{}", smtp(sink.port), service("customers", &lookups, ""));
    let (a, b, _, _) = two(&store, &tail);
    let c = client();
    let otps: Vec<String> = (0..20).map(|i| format!("7{i:05}")).collect();
    for otp in &otps {
        accepted_pomelo(&c, &a, &pomelo_otp(otp, "EMAIL")).await;
    }
    // Some lookups under way, some messages with the relay: kill one instance while it
    // holds leases on work.
    lookups
        .wait_for("/cards/card_123456789/holder", 4, Duration::from_secs(20))
        .await;
    let instance = instance_of(&a);
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let held = |sql: &str| -> usize {
        pg::cluster()
            .psql(db, &sql.replace("$1", &instance))
            .parse()
            .unwrap()
    };
    let (events_held, actions_held) = loop {
        let e =
            held("SELECT count(*) FROM sb_events WHERE lease_owner = '$1' AND status = 'received'");
        let a = held("SELECT count(*) FROM sb_actions WHERE lease_owner = '$1'");
        if e + a > 0 {
            break (e, a);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.kill9();
    eprintln!(
        "killed an instance holding {events_held} events being routed and {actions_held} actions"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mails = loop {
        let mails = sink.mails();
        let arrived: HashSet<&String> = otps
            .iter()
            .filter(|o| mails.iter().any(|m| m.data.contains(o.as_str())))
            .collect();
        if arrived.len() == otps.len() {
            break mails;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} OTPs arrived (of {} mails)",
            arrived.len(),
            otps.len(),
            mails.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let page = until(
        &c,
        &b,
        "/admin/events?provider=pomelo&limit=100",
        "all routed",
        |p| {
            p["items"]
                .as_array()
                .is_some_and(|a| a.len() == otps.len() && a.iter().all(|e| e["status"] == "routed"))
        },
    )
    .await;
    for e in page["items"].as_array().unwrap() {
        let full = admin(
            &c,
            &b,
            &format!("/admin/events/{}", e["id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(full["route"]["runs"], 1, "routed once: {full}");
        assert_eq!(full["actions"].as_array().unwrap().len(), 1, "{full}");
    }
    let per_otp: Vec<usize> = otps
        .iter()
        .map(|o| mails.iter().filter(|m| m.data.contains(o.as_str())).count())
        .collect();
    let duplicates: usize = per_otp.iter().map(|n| n - 1).sum();
    assert!(per_otp.iter().all(|n| *n >= 1));
    eprintln!(
        "kill -9 of one of two instances mid-delivery: {} OTPs, {} emails, {duplicates} sent twice",
        otps.len(),
        mails.len()
    );
    // Each repeat carries the first attempt's Message-ID: the receiver can tell.
    for o in &otps {
        let ids: HashSet<String> = mails
            .iter()
            .filter(|m| m.data.contains(o.as_str()))
            .filter_map(|m| {
                m.data
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(ids.len(), 1, "one Message-ID per OTP: {ids:?}");
    }
}

/// Both instances restarted one after the other (SIGTERM, start again) while
/// notifications keep coming: every acknowledged one is stored and its email delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let url = pg::cluster().database();
    let store = pg::store_lines(&url);
    let sink_dir = Dir::new();
    let sink = SmtpSink::start(sink_dir.path(), &[]);
    let lookups = customers(None).await;
    let tail = format!("{}{}", smtp(sink.port), service("customers", &lookups, ""));
    let (a, b, da, db) = two(&store, &tail);
    let addrs: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(vec![a.addr, b.addr]));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let (addrs, stop, acked) = (addrs.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let otp = format!("9{n:05}");
                let body = pomelo_otp(&otp, "EMAIL");
                // Like a provider behind a load balancer: the next instance on a refusal.
                for attempt in 0..4 {
                    let addr = addrs.lock().unwrap()[(n as usize + attempt) % 2];
                    let ts = now().to_string();
                    let sig = pomelo_signature(&pomelo_secret_b64(), &ts, POMELO_PATH, &body);
                    let r = c
                        .post(format!("http://{addr}{POMELO_PATH}"))
                        .header("content-type", "application/json")
                        .header("x-api-key", POMELO_KEY)
                        .header("x-signature", sig)
                        .header("x-timestamp", ts)
                        .header("x-endpoint", POMELO_PATH)
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 204 => {
                            acked.lock().unwrap().push(otp.clone());
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A first, then B: each stopped gracefully and started again on its directory.
    let status = a.terminate();
    assert!(status.success());
    let a = Server::start_in(da, &[("store", &store), ("tail", &tail)]);
    addrs.lock().unwrap()[0] = a.addr;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = b.terminate();
    assert!(status.success());
    let b = Server::start_in(db, &[("store", &store), ("tail", &tail)]);
    addrs.lock().unwrap()[1] = b.addr;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "a steady load: {} acknowledged",
        acked.len()
    );
    let c = client();
    let stored: HashMap<String, Value> = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let evs = events(&c, &a, "provider=pomelo").await;
            let waiting = evs.iter().any(|e| e["status"] == "received");
            if !waiting || Instant::now() > deadline {
                break evs
                    .into_iter()
                    .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        stored.values().all(|e| e["status"] == "routed"),
        "every event routed"
    );
    assert_eq!(
        stored.len(),
        acked.len(),
        "every acknowledged notification stored once"
    );
    let mails = sink.wait_for(acked.len(), Duration::from_secs(60)).await;
    for otp in &acked {
        assert!(
            mails.iter().any(|m| m.data.contains(otp.as_str())),
            "the email for {otp} arrived"
        );
    }
    eprintln!(
        "rolling restart of two instances: {} acknowledged, {} stored, {} emails",
        acked.len(),
        stored.len(),
        mails.len()
    );
    drop(b);
}

/// Two instances starting together on an empty database: one applies the schema under
/// the advisory lock, the other waits for it; both serve. `migrate` and `check` report
/// the schema version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_migrate_once_and_check_reports_the_schema() {
    let url = pg::cluster().database();
    let store = pg::store_lines(&url);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || Server::start(&[("store", &store)]))
        })
        .collect();
    let servers: Vec<Server> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let c = client();
    accepted_pomelo(&c, &servers[0], &pomelo_body("314159")).await;
    assert_eq!(events(&c, &servers[1], "provider=pomelo").await.len(), 1);
    let applied = pg::cluster().psql(
        url.rsplit('/').next().unwrap().split('?').next().unwrap(),
        "SELECT count(*) FROM _sqlx_migrations",
    );
    assert_eq!(applied, "1", "each migration applied once");

    let dir = Dir::new();
    let cfg = dir.path().join("pg.toml");
    std::fs::write(&cfg, base_config(&dir.data(), &[("store", &store)])).unwrap();
    let text = switchboard(dir.path(), &["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        text.contains("postgres: schema version 1 (current)"),
        "{text}"
    );

    // A fresh database: check says what is missing, migrate applies it.
    let fresh = pg::cluster().database();
    std::fs::write(
        &cfg,
        base_config(&dir.data(), &[("store", &pg::store_lines(&fresh))]),
    )
    .unwrap();
    let run = |cmd: &str| {
        switchboard_command(dir.path(), &[cmd, "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run("check");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("empty; schema version 1 will be created")
    );
    let migrated = switchboard(dir.path(), &["migrate", "--config", cfg.to_str().unwrap()]);
    assert!(migrated.contains("schema version 1 (current)"));
    // An unreachable database is a clear error, not a hang.
    std::fs::write(
        &cfg,
        base_config(
            &dir.data(),
            &[(
                "store",
                "backend = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/none?sslmode=disable\"\n",
            )],
        ),
    )
    .unwrap();
    let out = run("check");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to the database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An embedded store moved into PostgreSQL with `switchboard store copy`: events,
/// quarantine, de-duplication keys and a dead delivery with its attempts carry on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_store_is_copied_into_postgres_and_carries_on() {
    let dir = Dir::new();
    let smtp_port = free_port();
    let lookups = customers(None).await;
    let tail = format!(
        "{}{}[delivery]\nschedule = [\"100ms\"]\njitter = 0.0\n",
        smtp(smtp_port),
        service("customers", &lookups, "")
    );
    // The embedded store, whatever the suite's backend.
    let sled = "backend = \"sled\"\n";
    let s = Server::start_in(dir.clone(), &[("store", sled), ("tail", &tail)]);
    let c = client();
    let otp_body = pomelo_otp("161803", "EMAIL");
    accepted_pomelo(&c, &s, &otp_body).await;
    accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
    // Authenticated but malformed: quarantined.
    let r = vasp_request(&c, &s, br#"{"callbackType": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Nothing listens on the SMTP port: the email ends dead after its one retry.
    let dead = until_items(
        &c,
        &s,
        "/admin/deliveries?status=dead",
        1,
        "a dead delivery",
    )
    .await;
    let dead_id = dead["items"][0]["id"].as_str().unwrap().to_owned();
    let before: Vec<Value> = events(&c, &s, "").await;
    assert_eq!(before.len(), 3);
    assert!(s.terminate().success());

    let url = pg::cluster().database();
    let store = pg::store_lines(&url);
    let cfg = dir.path().join("pg.toml");
    std::fs::write(
        &cfg,
        base_config(
            &dir.path().join("pg-data"),
            &[("store", &store), ("tail", &tail)],
        ),
    )
    .unwrap();
    let data = dir.data();
    let copy = [
        "store",
        "copy",
        "--from",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    let text = switchboard(dir.path(), &copy);
    assert!(text.contains("3 of 3 events"), "{text}");
    assert!(text.contains("1 of 1 deliveries"), "{text}");
    // A second copy finds everything there.
    let again = switchboard_command(dir.path(), &copy).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 of 3 events"));

    let sink_dir = Dir::new();
    let s = Server::spawn(
        dir.clone(),
        &["serve", "--config", cfg.to_str().unwrap()],
        &[],
    );
    let after = events(&c, &s, "").await;
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| format!("{} {}", e["id"], e["status"]))
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "the same events, same statuses");
    assert_eq!(
        events(&c, &s, "status=quarantined").await.len(),
        1,
        "the quarantine came along"
    );
    // Keys came along: the same notification is a duplicate, not a new event.
    accepted_pomelo(&c, &s, &otp_body).await;
    assert_eq!(events(&c, &s, "provider=pomelo").await.len(), 1);
    // The dead delivery, with its attempts, is replayed once the relay is up.
    let d = admin(&c, &s, &format!("/admin/deliveries/{dead_id}")).await;
    assert_eq!(d["status"], "dead");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2, "{d}");
    let sink = SmtpSink::start(sink_dir.path(), &["--port", &smtp_port.to_string()]);
    let r = admin_post(&c, &s, &format!("/admin/deliveries/{dead_id}/replay")).await;
    assert!(r.status().is_success(), "{}", r.status());
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert!(mails[0].data.contains("161803"));
}
