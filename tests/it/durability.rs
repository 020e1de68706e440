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
