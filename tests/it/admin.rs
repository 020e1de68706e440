use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_admin_api_needs_its_own_token() {
    let s = Server::start(&[]);
    let c = client();
    for path in [
        "/admin/events",
        "/admin/quarantine",
        "/admin/events/01a209d9-581e-7648-bd73-9b840c0b6b5a",
    ] {
        let none = c.get(s.url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        assert_eq!(none.json::<Value>().await.unwrap()["error"], "unauthorized");
        for wrong in [VASP_TOKEN, "admin-token-for-test", ""] {
            let r = c.get(s.url(path)).bearer_auth(wrong).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with a wrong token");
        }
    }
}

#[tokio::test]
async fn events_filter_and_paginate_newest_first() {
    let s = Server::start(&[]);
    let c = client();
    for i in 0..5 {
        let r = pomelo_request(&c, &s, &pomelo_body(&format!("00000{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    for f in ["verifyvasp_tx_report.json", "verifyvasp_error_report.json"] {
        accepted_vasp(&c, &s, &fixture(f)).await;
    }
    assert_eq!(
        vasp_request(&c, &s, b"{").send().await.unwrap().status(),
        200
    );

    let all = events(&c, &s, "").await;
    assert_eq!(all.len(), 8);
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");

    assert_eq!(events(&c, &s, "provider=pomelo").await.len(), 5);
    assert_eq!(
        events(&c, &s, "provider=verifyvasp&type=tx_report")
            .await
            .len(),
        1
    );
    assert_eq!(events(&c, &s, "status=quarantined").await.len(), 1);
    // The default routes run: Pomelo's logs that no customers service is configured;
    // VerifyVASP's fails without a compliance service, and waits for a replay.
    until_routed(&c, &s).await;
    assert_eq!(
        events(&c, &s, "status=routed&provider=pomelo").await.len(),
        5
    );
    assert_eq!(
        events(&c, &s, "status=failed&provider=verifyvasp")
            .await
            .len(),
        2
    );

    // Pages of 3: 3 + 3 + 2, with no overlap.
    let mut seen = vec![];
    let mut before = String::new();
    loop {
        let page = admin(&c, &s, &format!("/admin/events?limit=3{before}")).await;
        for e in page["items"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => before = format!("&before={n}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    // Bad parameters are a 400, not a 5xx.
    for q in ["status=exploded", "limit=-1", "before=not-an-id"] {
        let r = c
            .get(s.url(&format!("/admin/events?{q}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
}

#[tokio::test]
async fn one_event_in_detail_and_unknown_ids() {
    let s = Server::start(&[]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_body("777777")).await;
    let e = &events(&c, &s, "").await[0];
    let id = e["id"].as_str().unwrap();
    assert!(e.get("body").is_none(), "lists carry no bodies");
    let d = admin(&c, &s, &format!("/admin/events/{id}")).await;
    assert_eq!(d["id"], id);
    assert_eq!(d["body"]["otp"], "******");
    assert_eq!(d["data"]["otp"], "******");
    assert!(!d.to_string().contains("777777"));
    let missing = c
        .get(s.url("/admin/events/01a209d9-581e-7648-bd73-9b840c0b6b5a"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = c
        .get(s.url("/admin/events/nope"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn otps_are_revealed_only_when_configured() {
    let s = Server::start(&[("admin", "reveal_secrets = true")]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_body("888888")).await;
    let e = &events(&c, &s, "").await[0];
    assert_eq!(e["data"]["otp"], json!("888888"));
}
