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

/// A commit is one atomic batch (combined with the batches of concurrent requests): a
/// crash right after one is applied, before it is flushed, leaves each notification whole
/// or absent. Every notification is then sent again: each is stored exactly once, none is
/// lost, and every one is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_right_after_a_commit_batch_leaves_whole_events_only() {
    if crate::pg::everywhere() {
        // The fault hook is the embedded store's.
        return;
    }
    let dir = Dir::new();
    let c = client();
    let bodies: Vec<Vec<u8>> = (0..30)
        .map(|i| pomelo_body(&format!("{:06}", 200_000 + i)))
        .collect();
    let mut s = Server::start_env(dir.clone(), &[], &[("SWITCHBOARD_CRASH_AT", "commit:6")]);
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
    let s = Server::start_in(dir, &[]);
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
