use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn events_survive_a_restart_and_old_keys_stay_duplicates() {
    let dir = Dir::new();
    let c = client();
    let pomelo = pomelo_body("555555");
    let vasp = fixture("verifyvasp_error_report.json");
    {
        let s = Server::start_in(dir.clone(), &[]);
        accepted_pomelo(&c, &s, &pomelo).await;
        assert_eq!(
            vasp_request(&c, &s, &vasp).send().await.unwrap().status(),
            200
        );
        assert!(s.terminate().success(), "a clean exit on SIGTERM");
    }
    let s = Server::start_in(dir, &[]);
    let before = events(&c, &s, "").await;
    assert_eq!(before.len(), 2);
    // Both keys are still recognised after the restart.
    accepted_pomelo(&c, &s, &pomelo).await;
    let r = vasp_request(&c, &s, &vasp).send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"result": true})
    );
    assert_eq!(events(&c, &s, "").await.len(), 2, "no event stored twice");
    assert_eq!(
        metric(&c, &s, "switchboard_duplicates_total{provider=\"pomelo\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &c,
            &s,
            "switchboard_duplicates_total{provider=\"verifyvasp\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_right_after_2xx_loses_nothing() {
    let dir = Dir::new();
    let c = client();
    let s = Server::start_in(dir.clone(), &[]);
    // 40 different notifications at once; the process is killed the moment the last
    // answer arrives, with no chance to flush anything on the way out.
    let mut tasks = vec![];
    for i in 0..40 {
        let req = pomelo_request(&c, &s, &pomelo_body(&format!("{:06}", 100_000 + i)));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 204);
    }
    s.kill9();
    let s = Server::start_in(dir.clone(), &[]);
    let evs = events(&c, &s, "provider=pomelo").await;
    assert_eq!(evs.len(), 40, "every notification answered 204 is on disk");
    // And one more time with a single request killed straight after its answer.
    let body = fixture("verifyvasp_tx_report.json");
    assert_eq!(
        vasp_request(&c, &s, &body).send().await.unwrap().status(),
        200
    );
    s.kill9();
    let s = Server::start_in(dir, &[]);
    assert_eq!(events(&c, &s, "provider=verifyvasp").await.len(), 1);
    // A retry after the crash is a duplicate, not a second event.
    assert_eq!(
        vasp_request(&c, &s, &body).send().await.unwrap().status(),
        200
    );
    assert_eq!(events(&c, &s, "provider=verifyvasp").await.len(), 1);
}

/// Issue 9's defect: a crash in the middle of the commit sequence must never leave a
/// stored event out of the inbox. `SWITCHBOARD_CRASH_AT=<write>:<n>` (debug builds) aborts
/// the process right after the `n`th write of that kind; each write of the sequence is
/// tried. The provider then resends what was not acknowledged (and one that was): every
/// notification ends routed exactly once, none is stuck waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_write_of_the_commit_sequence_strands_no_event() {
    let c = client();
    let sled = [("store", "backend = \"sled\"\n")];
    for (round, step) in ["expiry", "inbox", "event", "done"].into_iter().enumerate() {
        let dir = Dir::new();
        let bodies: Vec<Vec<u8>> = (0..5)
            .map(|i| pomelo_body(&format!("4{round}{i:04}")))
            .collect();
        let crash = format!("{step}:3");
        let s = Server::start_env(dir.clone(), &sled, &[("SWITCHBOARD_CRASH_AT", &crash)]);
        let mut acked = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            match pomelo_request(&c, &s, b).send().await {
                Ok(r) if r.status() == 204 => acked.push(i),
                _ => break,
            }
        }
        assert_eq!(acked, vec![0, 1], "{step}: the third commit crashed");
        let mut s = s;
        assert!(!s.wait_exit().success(), "{step}: the process aborted");
        let s = Server::start_in(dir, &sled);
        // The provider resends everything it was not told 204 for, and one it was.
        for b in bodies.iter().skip(2).chain(bodies.first()) {
            accepted_pomelo(&c, &s, b).await;
        }
        until_routed(&c, &s).await;
        let evs = events(&c, &s, "provider=pomelo").await;
        assert_eq!(evs.len(), 5, "{step}: each notification stored once");
        assert!(
            evs.iter().all(|e| e["status"] == "routed"),
            "{step}: every event routed: {evs:?}"
        );
        for e in &evs {
            let full = admin(
                &c,
                &s,
                &format!("/admin/events/{}", e["id"].as_str().unwrap()),
            )
            .await;
            assert_eq!(full["route"]["runs"], 1, "{step}: routed once: {full}");
        }
    }
}

/// A crash loop at random points of the commit sequence, under concurrent requests with
/// duplicates; after each crash the provider resends what was not acknowledged. At the
/// end, every acknowledged notification is routed, and nothing waits in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_at_random_writes_routes_every_acknowledged_event() {
    use rand::Rng;
    let c = client();
    let sled = [("store", "backend = \"sled\"\n")];
    let dir = Dir::new();
    let steps = ["expiry", "inbox", "event", "done"];
    let bodies: Vec<Vec<u8>> = (0..40).map(|i| pomelo_body(&format!("5{i:05}"))).collect();
    let mut acked = std::collections::BTreeSet::new();
    let mut rng = rand::rng();
    for _ in 0..6 {
        let crash = format!(
            "{}:{}",
            steps[rng.random_range(0..steps.len())],
            rng.random_range(1..12)
        );
        let mut s = Server::start_env(dir.clone(), &sled, &[("SWITCHBOARD_CRASH_AT", &crash)]);
        // Eight senders, some sending the same notification at once.
        let mut tasks = Vec::new();
        for w in 0..8usize {
            let reqs: Vec<(usize, reqwest::RequestBuilder)> = (0..bodies.len())
                .filter(|i| (i + w / 2) % 4 == 0)
                .filter(|i| !acked.contains(i))
                .map(|i| (i, pomelo_request(&c, &s, &bodies[i])))
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                for (i, r) in reqs {
                    match r.send().await {
                        Ok(r) if r.status() == 204 => ok.push(i),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                ok
            }));
        }
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        if s.try_wait().is_none() {
            drop(s);
        }
    }
    let s = Server::start_in(dir, &sled);
    // Whatever was never acknowledged is sent again, as the provider would.
    for (i, b) in bodies.iter().enumerate() {
        if !acked.contains(&i) {
            accepted_pomelo(&c, &s, b).await;
        }
    }
    until_routed(&c, &s).await;
    let evs = events(&c, &s, "provider=pomelo").await;
    assert_eq!(evs.len(), bodies.len(), "each notification stored once");
    assert!(evs.iter().all(|e| e["status"] == "routed"), "{evs:?}");
    eprintln!(
        "crash loop: {} of {} acknowledged before the crashes, all {} routed",
        acked.len(),
        bodies.len(),
        evs.len()
    );
}

/// The store holds OTPs and card data in clear: its directory is its owner's alone (0700)
/// and so are its files (0600), for a new store and for one made before (0755/0644).
#[tokio::test]
async fn the_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let sled = [("store", "backend = \"sled\"\n")];
    let dir = Dir::new();
    let check = |what: &str| {
        let db = dir.data().join("db");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&db), 0o700, "{what}: {}", db.display());
        let mut files = 0;
        let mut stack = vec![db];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{what}: {}", p.display());
                    stack.push(p);
                } else {
                    assert_eq!(mode(&p), 0o600, "{what}: {}", p.display());
                    files += 1;
                }
            }
        }
        assert!(files > 0, "{what}: sled wrote files");
    };
    let c = client();
    let s = Server::start_in(dir.clone(), &sled);
    accepted_pomelo(&c, &s, &pomelo_body("777111")).await;
    check("a new store");
    assert!(s.terminate().success());
    // As a store made by an earlier version left it.
    let db = dir.data().join("db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(&db).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let s = Server::start_in(dir.clone(), &sled);
    accepted_pomelo(&c, &s, &pomelo_body("777112")).await;
    check("an older store");
}

/// A commit is one atomic batch (combined with the batches of concurrent requests): a
/// crash right after one is applied, before it is flushed, leaves each notification whole
/// or absent. Every notification is then sent again: each is stored exactly once, none is
/// lost, and every one is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_right_after_a_commit_batch_leaves_whole_events_only() {
    // The fault hook is the embedded store's.
    let sled = [("store", "backend = \"sled\"\n")];
    let dir = Dir::new();
    let c = client();
    let bodies: Vec<Vec<u8>> = (0..30)
        .map(|i| pomelo_body(&format!("{:06}", 200_000 + i)))
        .collect();
    let mut s = Server::start_env(dir.clone(), &sled, &[("SWITCHBOARD_CRASH_AT", "commit:6")]);
    let mut acknowledged = vec![];
    for chunk in bodies.chunks(5) {
        let mut tasks = vec![];
        for body in chunk {
            let req = pomelo_request(&c, &s, body);
            tasks.push(tokio::spawn(async move {
                req.send().await.map(|r| r.status().as_u16()).ok()
            }));
        }
        for (t, body) in tasks.into_iter().zip(chunk) {
            if t.await.unwrap() == Some(204) {
                acknowledged.push(body.clone());
            }
        }
        if s.try_wait().is_some() {
            break;
        }
    }
    assert!(
        !s.wait_exit().success(),
        "the fault hook aborted the process"
    );
    let s = Server::start_in(dir, &sled);
    let stored = events(&c, &s, "provider=pomelo").await;
    assert!(
        stored.len() >= acknowledged.len(),
        "every notification answered 204 is on disk ({} stored, {} acknowledged)",
        stored.len(),
        acknowledged.len()
    );
    for body in &bodies {
        assert_eq!(
            pomelo_request(&c, &s, body).send().await.unwrap().status(),
            204
        );
    }
    assert_eq!(
        events(&c, &s, "provider=pomelo").await.len(),
        bodies.len(),
        "each notification stored exactly once"
    );
    until_routed(&c, &s).await;
}
