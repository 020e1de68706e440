use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn a_signed_otp_is_stored_once_and_answered_204() {
    let s = Server::start(&[]);
    let c = client();
    let body = fixture("pomelo_tokenization_otp.json");
    let r = pomelo_request(&c, &s, &body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());

    until_routed(&c, &s).await;
    let evs = events(&c, &s, "provider=pomelo").await;
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e["type"], "tokenization_otp");
    assert_eq!(e["status"], "routed", "the default route ran");
    assert_eq!(e["data"]["token"]["origin"], "APPLE_PAY");
    assert_eq!(
        e["data"]["otp"], "******",
        "the OTP is masked in admin answers"
    );
    assert_eq!(e["meta"]["api_key"], "keys[0]");

    // Pomelo retries with a fresh signature and timestamp: same body, same answer, one event.
    let again = pomelo_request(&c, &s, &body).send().await.unwrap();
    assert_eq!(again.status(), 204);
    assert_eq!(events(&c, &s, "provider=pomelo").await.len(), 1);
    assert_eq!(
        metric(&c, &s, "switchboard_duplicates_total{provider=\"pomelo\"}").await,
        1.0
    );
    // Both requests are counted by provider, endpoint and status; the stored one timed.
    assert_eq!(
        metric(
            &c,
            &s,
            "switchboard_requests_total{provider=\"pomelo\",endpoint=\"/pomelo/tokenization/otp\",status=\"204\"}"
        )
        .await,
        2.0
    );
    assert!(
        metric(
            &c,
            &s,
            "switchboard_ingest_duration_seconds_count{provider=\"pomelo\"}"
        )
        .await
            >= 1.0
    );
    // The stored event's commit was put on disk, and that was timed (a flush of the
    // embedded store, or the COMMIT on PostgreSQL).
    assert!(
        metric(&c, &s, "switchboard_store_flush_duration_seconds_count").await >= 1.0,
        "{}",
        get_text(&c, &s, "/metrics").await
    );
    assert!(metric(&c, &s, "switchboard_store_flush_duration_seconds_sum").await > 0.0);
}

#[tokio::test]
async fn the_hmac_key_is_the_base64_decoded_secret() {
    let s = Server::start(&[]);
    let c = client();
    let body = pomelo_body("111111");
    let ts = now().to_string();
    // Keyed with the base64 *text* instead of its decoded bytes: a common mistake, refused.
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(pomelo_secret_b64().as_bytes())
            .unwrap();
    hmac::Mac::update(&mut mac, ts.as_bytes());
    hmac::Mac::update(&mut mac, POMELO_PATH.as_bytes());
    hmac::Mac::update(&mut mac, &body);
    use base64::Engine;
    let wrong = format!(
        "hmac-sha256 {}",
        base64::engine::general_purpose::STANDARD.encode(hmac::Mac::finalize(mac).into_bytes())
    );
    let r = c
        .post(s.url(POMELO_PATH))
        .header("x-api-key", POMELO_KEY)
        .header("x-signature", wrong)
        .header("x-timestamp", &ts)
        .header("x-endpoint", POMELO_PATH)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let right = pomelo_signature(&pomelo_secret_b64(), &ts, POMELO_PATH, &body);
    let r = c
        .post(s.url(POMELO_PATH))
        .header("x-api-key", POMELO_KEY)
        .header("x-signature", right)
        .header("x-timestamp", &ts)
        .header("x-endpoint", POMELO_PATH)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn every_authentication_failure_is_the_same_401() {
    let s = Server::start(&[]);
    let c = client();
    let body = pomelo_body("222222");
    let secret = pomelo_secret_b64();
    let t = now();
    let sign =
        |ts: i64, endpoint: &str| pomelo_signature(&secret, &ts.to_string(), endpoint, &body);
    // (case, x-api-key, x-signature, x-timestamp, x-endpoint)
    let cases: Vec<(&str, String, String, String, String)> = vec![
        (
            "unknown key",
            "not-a-key".into(),
            sign(t, POMELO_PATH),
            t.to_string(),
            POMELO_PATH.into(),
        ),
        (
            "wrong signature",
            POMELO_KEY.into(),
            sign(t + 1, POMELO_PATH),
            t.to_string(),
            POMELO_PATH.into(),
        ),
        (
            "wrong endpoint",
            POMELO_KEY.into(),
            sign(t, "/elsewhere"),
            t.to_string(),
            "/elsewhere".into(),
        ),
        (
            "stale timestamp",
            POMELO_KEY.into(),
            sign(t - 301, POMELO_PATH),
            (t - 301).to_string(),
            POMELO_PATH.into(),
        ),
        (
            "future timestamp",
            POMELO_KEY.into(),
            sign(t + 301, POMELO_PATH),
            (t + 301).to_string(),
            POMELO_PATH.into(),
        ),
        (
            "signature without scheme",
            POMELO_KEY.into(),
            sign(t, POMELO_PATH).replace("hmac-sha256 ", ""),
            t.to_string(),
            POMELO_PATH.into(),
        ),
        (
            "garbage timestamp",
            POMELO_KEY.into(),
            sign(t, POMELO_PATH),
            "yesterday".into(),
            POMELO_PATH.into(),
        ),
    ];
    let mut answers = vec![];
    for (case, key, sig, ts, endpoint) in &cases {
        let r = c
            .post(s.url(POMELO_PATH))
            .header("x-api-key", key)
            .header("x-signature", sig)
            .header("x-timestamp", ts)
            .header("x-endpoint", endpoint)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{case}");
        answers.push((*case, answer(r).await));
    }
    // Missing headers, one at a time.
    for missing in ["x-api-key", "x-signature", "x-timestamp", "x-endpoint"] {
        let mut r = c.post(s.url(POMELO_PATH)).body(body.clone());
        for (h, v) in [
            ("x-api-key", POMELO_KEY.to_string()),
            ("x-signature", sign(t, POMELO_PATH)),
            ("x-timestamp", t.to_string()),
            ("x-endpoint", POMELO_PATH.to_string()),
        ] {
            if h != missing {
                r = r.header(h, v);
            }
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "missing {missing}");
        answers.push(("missing header", answer(r).await));
    }
    let first = &answers[0].1;
    for (case, a) in &answers {
        assert_eq!(a, first, "{case} must be answered like every other failure");
    }
    let err: Value = serde_json::from_slice(&first.2).unwrap();
    assert_eq!(err["error"], "unauthorized");
    assert!(
        events(&c, &s, "provider=pomelo").await.is_empty(),
        "nothing unauthenticated is stored"
    );
    for reason in [
        "unknown_key",
        "bad_signature",
        "endpoint",
        "stale",
        "future",
        "malformed_signature",
        "malformed_timestamp",
    ] {
        let n = metric(
            &c,
            &s,
            &format!("switchboard_auth_failures_total{{provider=\"pomelo\",reason=\"{reason}\"}}"),
        )
        .await;
        assert!(n >= 1.0, "auth failure reason {reason} counted");
    }
    // Inside the window, on both sides, the same request is accepted.
    for ts in [t - 290, t + 290] {
        let r = c
            .post(s.url(POMELO_PATH))
            .header("x-api-key", POMELO_KEY)
            .header("x-signature", sign(ts, POMELO_PATH))
            .header("x-timestamp", ts.to_string())
            .header("x-endpoint", POMELO_PATH)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "timestamp {ts} is within the tolerance");
    }
}

fn body_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test]
async fn secrets_rotate_with_several_key_pairs_and_paths_are_configurable() {
    let second_secret = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b"the-second-secret")
    };
    let extra_pomelo = format!(
        "path = \"/hooks/pomelo-otp\"\n\n[[providers.pomelo.keys]]\napi_key = \"second\"\napi_secret = \"{second_secret}\""
    );
    let s = Server::start(&[("pomelo", &extra_pomelo)]);
    let c = client();
    let body = pomelo_body("333333");
    let ts = now().to_string();
    let send = |key: &'static str, secret: String, path: &'static str, body: Vec<u8>| {
        let sig = pomelo_signature(&secret, &ts, path, &body);
        c.post(s.url(path))
            .header("x-api-key", key)
            .header("x-signature", sig)
            .header("x-timestamp", ts.clone())
            .header("x-endpoint", path)
            .body(body)
            .send()
    };
    let r = send(
        "second",
        second_secret.clone(),
        "/hooks/pomelo-otp",
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let r = send(
        POMELO_KEY,
        pomelo_secret_b64(),
        "/hooks/pomelo-otp",
        pomelo_body("444444"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    // The default path is not served when another is configured.
    let r = send("second", second_secret, POMELO_PATH, body)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let evs = events(&c, &s, "provider=pomelo").await;
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e["endpoint"] == "/hooks/pomelo-otp"));
    let spec: Value = get_json(&c, &s, "/openapi.json").await;
    assert!(spec["paths"].get("/hooks/pomelo-otp").is_some());
    assert!(spec["paths"].get(POMELO_PATH).is_none());
}

#[tokio::test]
async fn an_authenticated_malformed_body_is_quarantined_not_dropped() {
    let s = Server::start(&[]);
    let c = client();
    let bad = serde_json::to_vec(&json!({"token": "not an object", "otp": "987654"})).unwrap();
    let r = pomelo_request(&c, &s, &bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let a = answer(r).await;
    let body: Value = serde_json::from_slice(&a.2).unwrap();
    assert_eq!(body["error"], "invalid_body");
    assert!(!String::from_utf8_lossy(&a.2).contains("987654"));
    // Retried: the same answer, still one quarantined event.
    let again = answer(pomelo_request(&c, &s, &bad).send().await.unwrap()).await;
    assert_eq!(again, a);
    let q = admin(&c, &s, "/admin/quarantine").await;
    let items = q["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["provider"], "pomelo");
    assert!(
        items[0]["quarantineReason"]
            .as_str()
            .unwrap()
            .contains("TokenInfo")
    );
    let id = items[0]["id"].as_str().unwrap();
    let detail = admin(&c, &s, &format!("/admin/events/{id}")).await;
    assert_eq!(
        detail["body"]["otp"], "******",
        "the quarantined body is shown masked"
    );
    assert_eq!(
        metric(&c, &s, "switchboard_quarantined_total{provider=\"pomelo\"}").await,
        1.0
    );
}

#[tokio::test]
async fn an_unknown_contact_method_is_accepted_and_flagged() {
    let s = Server::start(&[]);
    let c = client();
    let mut v: Value = serde_json::from_slice(&fixture("pomelo_tokenization_otp.json")).unwrap();
    v["contact_method"] = json!("PUSH");
    let r = pomelo_request(&c, &s, &body_bytes(&v))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let evs = events(&c, &s, "provider=pomelo").await;
    assert_eq!(evs[0]["data"]["contact_method"], "PUSH");
    assert_eq!(
        evs[0]["flags"],
        json!(["unknown_enum_value: ContactMethod=PUSH"])
    );
}

/// Issue 8 §3: Pomelo's repeats are recognised for its de-duplication window, not the
/// whole retention: past it, an identical body is a new notification.
#[tokio::test]
async fn an_identical_body_after_the_dedup_window_is_a_new_notification() {
    let s = Server::start(&[("pomelo", "dedup_window = \"1s\"")]);
    let c = client();
    let body = pomelo_body("424242");
    accepted_pomelo(&c, &s, &body).await;
    accepted_pomelo(&c, &s, &body).await;
    assert_eq!(events(&c, &s, "provider=pomelo").await.len(), 1, "a repeat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        accepted_pomelo(&c, &s, &body).await;
        if events(&c, &s, "provider=pomelo").await.len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never a new event");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
