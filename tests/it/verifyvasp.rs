use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_callbacks_store_one_event_and_get_fifty_identical_answers() {
    let s = Server::start(&[]);
    let c = client();
    let body = fixture("verifyvasp_verification_result.json");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = vec![];
    for _ in 0..50 {
        let req = vasp_request(&c, &s, &body);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            answer(req.send().await.unwrap()).await
        }));
    }
    let mut answers = vec![];
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let first = answers[0].clone();
    assert_eq!(first.0, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&first.2).unwrap(),
        json!({"result": true})
    );
    assert!(
        answers.iter().all(|a| *a == first),
        "every answer is byte-identical"
    );
    let evs = events(&c, &s, "provider=verifyvasp").await;
    assert_eq!(evs.len(), 1, "exactly one stored event");
    assert_eq!(evs[0]["type"], "verification_result");
    assert_eq!(
        evs[0]["idempotencyKey"],
        "verifyvasp:VERIFICATION_RESULT:64ab871b-14a3-47df-9b80-368e29fe8180"
    );
    assert_eq!(
        metric(
            &c,
            &s,
            "switchboard_duplicates_total{provider=\"verifyvasp\"}"
        )
        .await,
        49.0
    );
}

#[tokio::test]
async fn all_three_callback_types_are_typed_and_ivms101_is_kept_whole() {
    let s = Server::start(&[]);
    let c = client();
    for (file, ty) in [
        ("verifyvasp_verification_result.json", "verification_result"),
        ("verifyvasp_tx_report.json", "tx_report"),
        ("verifyvasp_error_report.json", "error_report"),
    ] {
        let body = fixture(file);
        let r = vasp_request(&c, &s, &body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{file}");
        let evs = events(&c, &s, &format!("type={ty}")).await;
        assert_eq!(evs.len(), 1, "{ty}");
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            evs[0]["data"], sent,
            "{ty}: the route sees every field as sent"
        );
        assert!(evs[0]["flags"].as_array().unwrap().is_empty());
    }
    let vr = &events(&c, &s, "type=verification_result").await[0];
    assert_eq!(
        vr["data"]["data"]["ivms101"]["beneficiaryVASP"]["legalPerson"]["nationalIdentification"]["registrationAuthority"],
        "RA000677"
    );
}

#[tokio::test]
async fn a_different_body_for_the_same_verification_is_kept_and_flagged() {
    let s = Server::start(&[]);
    let c = client();
    let first = fixture("verifyvasp_tx_report.json");
    let mut other: Value = serde_json::from_slice(&first).unwrap();
    other["data"]["txHash"] = json!("0xdifferent");
    let other = serde_json::to_vec(&other).unwrap();
    for body in [&first, &other, &other, &first] {
        let r = vasp_request(&c, &s, body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"result": true}));
    }
    let evs = events(&c, &s, "type=tx_report").await;
    assert_eq!(
        evs.len(),
        2,
        "the first and the conflicting body, each once"
    );
    let (newer, older) = (&evs[0], &evs[1]);
    assert_eq!(newer["data"]["data"]["txHash"], "0xdifferent");
    assert_eq!(newer["conflictOf"], older["id"]);
    assert!(
        newer["flags"][0]
            .as_str()
            .unwrap()
            .starts_with("conflicting_body")
    );
    assert!(older.get("conflictOf").is_none());
}

#[tokio::test]
async fn malformed_and_unknown_callbacks_are_answered_true_and_kept() {
    let s = Server::start(&[]);
    let c = client();
    // Not the schema: quarantined, still 200 {"result": true}.
    for bad in [
        br#"{"callbackType": "TX_REPORT", "data": {"txHash": 5}}"#.to_vec(),
        b"this is not json".to_vec(),
        Vec::new(),
    ] {
        let r = vasp_request(&c, &s, &bad).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"result": true}));
    }
    let q = admin(&c, &s, "/admin/quarantine?provider=verifyvasp").await;
    assert_eq!(q["items"].as_array().unwrap().len(), 3);
    // A callback type the documentation does not list: accepted, typed by name, flagged.
    let new_type = json!({"callbackType": "REFUND_REPORT", "data": {"verificationUuid": "5b1a3c8e-0000-4000-8000-000000000001", "amount": "1"}});
    let r = vasp_request(&c, &s, &serde_json::to_vec(&new_type).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until_routed(&c, &s).await;
    let evs = events(&c, &s, "type=refund_report").await;
    assert_eq!(evs.len(), 1);
    // Routed like every callback (verifyvasp/_default.rhai), which needs a compliance
    // service: without one the event waits for a replay.
    assert_eq!(evs[0]["status"], "failed");
    assert!(
        evs[0]["route"]["error"]
            .as_str()
            .unwrap()
            .contains("service `compliance` is not configured")
    );
    assert_eq!(
        evs[0]["flags"],
        json!(["unknown_enum_value: callbackType=REFUND_REPORT"])
    );
    // An unknown reason code inside a known type: accepted and flagged.
    let mut er: Value = serde_json::from_slice(&fixture("verifyvasp_error_report.json")).unwrap();
    er["data"]["reason"] = json!("SANCTIONED-JURISDICTION");
    let r = vasp_request(&c, &s, &serde_json::to_vec(&er).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let evs = events(&c, &s, "type=error_report").await;
    assert_eq!(
        evs[0]["flags"],
        json!(["unknown_enum_value: ReasonCode=SANCTIONED-JURISDICTION"])
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused() {
    let s = Server::start(&[]);
    let c = client();
    let body = fixture("verifyvasp_tx_report.json");
    let none = c
        .post(s.url(VASP_PATH))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let none = answer(none).await;
    for auth in [
        format!("Bearer {VASP_TOKEN}x"),
        "Bearer ".to_string(),
        format!("Basic {VASP_TOKEN}"),
        VASP_TOKEN.to_string(),
    ] {
        let r = c
            .post(s.url(VASP_PATH))
            .header("authorization", auth.clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
        assert_eq!(answer(r).await, none);
    }
    assert!(events(&c, &s, "provider=verifyvasp").await.is_empty());
}

#[tokio::test]
async fn without_a_configured_token_everything_is_refused() {
    // No token and no development secrets: fail closed.
    let dir = Dir::new();
    let cfg =
        base_config(&dir.data(), &[]).replace("token = \"env:SWITCHBOARD_TEST_VASP_TOKEN\"", "");
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, cfg).unwrap();
    let s = Server::spawn(dir, &["serve", "--config", path.to_str().unwrap()], &[]);
    let c = client();
    let r = vasp_request(&c, &s, &fixture("verifyvasp_tx_report.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        s.logs()
            .contains("every request to this provider is refused with 401")
    );
    assert_eq!(
        metric(
            &c,
            &s,
            "switchboard_auth_failures_total{provider=\"verifyvasp\",reason=\"not_configured\"}"
        )
        .await,
        1.0
    );
}
