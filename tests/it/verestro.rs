use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{pki::*, support::*};

fn otp_body(otp: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"storageCustomerId": "1337", "storageCardId": "1337",
        "balanceId": "b334b384-328c-11ed-a261-0242ac120002", "amount": "1000", "currency": "PLN",
        "merchantName": "merchant test", "otp": otp}),
    )
    .unwrap()
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn detail(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["detail"].as_str().unwrap_or("").to_owned())
}

fn envelope(token: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"payload": token})).unwrap()
}

/// Posts `token` to the OTP endpoint as Verestro does: encrypted, with a fresh key.
async fn send_encrypted_otp(pki: &Pki, s: &Server, token: &str) -> reqwest::Response {
    pki.provider()
        .post(s.verestro_url("/notifications/otp"))
        .header("encrypted-request", "true")
        .header("x-idempotency-key", key())
        .body(envelope(token))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn only_the_providers_certificate_gets_through_the_handshake() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir, &pki, "", "");
    let url = s.verestro_url("/notifications/otp");
    let no_cert = pki.client(None).post(&url).body(otp_body("1")).send().await;
    assert!(
        no_cert.is_err(),
        "without a certificate the handshake fails"
    );
    let foreign = pki
        .client(Some(("intruder.crt", "intruder.key")))
        .post(&url)
        .body(otp_body("1"))
        .send()
        .await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA fails the handshake"
    );
    // The certificate made from the provider's own CSR by `ca sign-csr` passes.
    let r = pki
        .provider()
        .post(&url)
        .header("x-idempotency-key", key())
        .body(otp_body("482913"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let c = client();
    let evs = events(&c, &s, "provider=verestro").await;
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e["type"], "otp");
    assert_eq!(
        e["data"]["amount"], 1000,
        "integers sent as strings are numbers for routes"
    );
    assert_eq!(e["data"]["otp"], "******");
    assert!(
        e["meta"]["client_subject"]
            .as_str()
            .unwrap()
            .contains("CN=verestro-notifications")
    );
    assert_eq!(
        e["meta"]["client_sha256"].as_str().unwrap(),
        pki.fingerprint("provider.crt")
    );
    assert!(metric(&c, &s, "switchboard_tls_handshake_failures_total").await >= 2.0);
    // Verestro is served only on its listener; switchboard's own endpoints not there.
    let plain = c
        .post(s.url("/notifications/otp"))
        .body(otp_body("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 404);
    let admin_there = pki
        .provider()
        .get(s.verestro_url("/admin/events"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin_there.status(), 404);
}

#[tokio::test]
async fn a_certificate_that_fails_the_pin_gets_403_and_is_logged() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let wrong = format!("pin_sha256 = [\"{}\"]", "ab".repeat(32));
    let s = verestro_server(dir.clone(), &pki, &wrong, "");
    let r = pki
        .provider()
        .post(s.verestro_url("/notifications/cardUnlocked"))
        .body(r#"{"dcCardId": "11", "date": "2025-06-17T13:42:54+00:00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        detail(r).await,
        (403, "CLIENT_CERTIFICATE_NOT_ALLOWED".into())
    );
    assert!(s.logs().contains("certificate_not_pinned"));
    assert!(
        s.logs().contains("CN=verestro-notifications"),
        "the refused certificate is named in the log"
    );
    assert!(events(&client(), &s, "").await.is_empty());
    drop(s);
    // Pinned by fingerprint (as openssl computes it, with colons), or by subject.
    for pin in [
        format!("pin_sha256 = [\"{}\"]", pki.fingerprint("provider.crt")),
        "pin_subject = [\"C=PL, O=Verestro, CN=verestro-notifications\"]".to_owned(),
    ] {
        let s = verestro_server(dir.clone(), &pki, &pin, "");
        let r = pki
            .provider()
            .post(s.verestro_url("/notifications/cardUnlocked"))
            .body(r#"{"dcCardId": "11", "date": "2025-06-17T13:42:54+00:00"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{pin}");
    }
}

/// Polls until a fresh connection with `identity` gets `want` (true: an answer; false: a
/// failed handshake).
async fn until_handshake(pki: &Pki, s: &Server, identity: (&str, &str), want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = pki
            .client(Some(identity))
            .get(s.verestro_url("/public-key"))
            .send()
            .await
            .is_ok();
        if ok == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificates never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_reload_on_file_change_and_on_sighup_without_a_restart() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let client_ca = pki.path("client-ca.crt");
    std::fs::copy(pki.path("ca/ca.crt"), &client_ca).unwrap();
    let tail = pki.config_with_ca(&client_ca, "");
    let s = Server::start_in(
        dir.clone(),
        &[
            ("tail", &tail),
            ("server", "tls_reload_interval = \"200ms\""),
        ],
    );
    until_handshake(&pki, &s, ("provider.crt", "provider.key"), true).await;
    until_handshake(&pki, &s, ("intruder.crt", "intruder.key"), false).await;
    let pid = s.pid();
    // The operator now trusts the other CA: a file change, picked up within the interval.
    std::fs::copy(pki.path("foreign-ca.crt"), &client_ca).unwrap();
    until_handshake(&pki, &s, ("intruder.crt", "intruder.key"), true).await;
    until_handshake(&pki, &s, ("provider.crt", "provider.key"), false).await;
    assert_eq!(s.pid(), pid, "same process");
    assert!(s.logs().contains("TLS certificates reloaded"));
    drop(s);

    // SIGHUP reloads at once, with polling practically off.
    let s = Server::start_in(
        dir,
        &[("tail", &tail), ("server", "tls_reload_interval = \"1h\"")],
    );
    until_handshake(&pki, &s, ("intruder.crt", "intruder.key"), true).await;
    std::fs::copy(pki.path("ca/ca.crt"), &client_ca).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    until_handshake(&pki, &s, ("provider.crt", "provider.key"), true).await;
    until_handshake(&pki, &s, ("intruder.crt", "intruder.key"), false).await;
    // A broken file keeps the last good certificates.
    std::fs::write(&client_ca, "not a certificate").unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("TLS reload failed") {
        assert!(Instant::now() < deadline, "the failed reload is logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_handshake(&pki, &s, ("provider.crt", "provider.key"), true).await;
}

#[tokio::test]
async fn encrypted_requests_decrypt_with_the_accepted_algorithms_only() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(
        dir,
        &pki,
        "require_encryption = [\"otp\"]\nmax_token_length = \"16KiB\"",
        "",
    );
    let c = pki.provider();
    let public = pki.path("jwe.pem.pub");
    let send = |token: String| {
        c.post(s.verestro_url("/notifications/otp"))
            .header("encrypted-request", "true")
            .header("x-idempotency-key", key())
            .body(envelope(&token))
            .send()
    };
    for (i, args) in [vec![], vec!["--alg", "RSA-OAEP"], vec!["--kid", "key-0"]]
        .into_iter()
        .enumerate()
    {
        let token = pki.jwe(&public, &otp_body(&format!("10000{i}")), &args);
        let r = send(token).await.unwrap();
        assert_eq!(r.status(), 204, "{args:?}");
    }
    let good = pki.jwe(&public, &otp_body("1"), &[]);
    let mut tampered: Vec<&str> = good.split('.').collect();
    let tag = tampered[4];
    let flipped = format!(
        "{}{}",
        if tag.starts_with('A') { "B" } else { "A" },
        &tag[1..]
    );
    tampered[4] = &flipped;
    openssl(&pki.dir, &["genrsa", "-out", "other.key", "2048"]);
    openssl(
        &pki.dir,
        &["rsa", "-in", "other.key", "-pubout", "-out", "other.pub"],
    );
    let refused = [
        (
            "RSA1_5",
            pki.jwe(&public, &otp_body("1"), &["--alg", "RSA1_5"]),
            "CANT_DECRYPT_PAYLOAD",
        ),
        (
            "A128CBC-HS256",
            pki.jwe(&public, &otp_body("1"), &["--enc", "A128CBC-HS256"]),
            "CANT_DECRYPT_PAYLOAD",
        ),
        (
            "zip DEF",
            pki.jwe(&public, &otp_body("1"), &["--zip", "DEF"]),
            "CANT_DECRYPT_PAYLOAD",
        ),
        (
            "crit",
            pki.jwe(&public, &otp_body("1"), &["--crit"]),
            "CANT_DECRYPT_PAYLOAD",
        ),
        ("tampered tag", tampered.join("."), "CANT_DECRYPT_PAYLOAD"),
        (
            "wrong key",
            pki.jwe(&pki.path("other.pub"), &otp_body("1"), &[]),
            "CANT_DECRYPT_PAYLOAD",
        ),
        (
            "oversized",
            pki.jwe(&public, &vec![b' '; 20_000], &[]),
            "INVALID_PAYLOAD",
        ),
        ("not a token", "not.a.token".to_owned(), "INVALID_PAYLOAD"),
    ];
    for (case, token, code) in refused {
        let r = send(token).await.unwrap();
        assert_eq!(
            r.headers().get("encrypted-response"),
            None,
            "{case}: errors are never encrypted"
        );
        assert_eq!(detail(r).await, (422, code.to_owned()), "{case}");
    }
    // Garbled envelopes.
    for body in [br#"{"payload": 5}"#.to_vec(), b"{}".to_vec(), otp_body("1")] {
        let r = c
            .post(s.verestro_url("/notifications/otp"))
            .header("encrypted-request", "true")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(detail(r).await, (422, "INVALID_PAYLOAD".into()));
    }
    // Plaintext where encryption is required; and where it is not.
    let r = c
        .post(s.verestro_url("/notifications/otp"))
        .body(otp_body("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(detail(r).await, (422, "ENCRYPTION_REQUIRED".into()));
    let r = c
        .post(s.verestro_url("/notifications/cardUnlocked"))
        .body(r#"{"dcCardId": 11, "date": "2025-06-17T13:42:54+00:00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let evs = events(&client(), &s, "provider=verestro").await;
    // Every refused body came over the authenticated connection: it is kept, as it
    // arrived, in quarantine (8 refused tokens, 3 garbled envelopes, 1 plaintext).
    let (refused, accepted): (Vec<&Value>, Vec<&Value>) =
        evs.iter().partition(|e| e["status"] == "quarantined");
    assert_eq!(accepted.len(), 4, "{accepted:?}");
    assert_eq!(refused.len(), 12, "{refused:?}");
    let mut codes: Vec<&str> = refused
        .iter()
        .map(|e| e["meta"]["refused"].as_str().unwrap_or("-"))
        .collect();
    codes.sort();
    codes.dedup();
    assert_eq!(
        codes,
        [
            "CANT_DECRYPT_PAYLOAD",
            "ENCRYPTION_REQUIRED",
            "INVALID_PAYLOAD"
        ]
    );
    let otps: Vec<&Value> = accepted
        .iter()
        .copied()
        .filter(|e| e["type"] == "otp")
        .collect();
    assert_eq!(otps.len(), 3);
    assert!(
        otps.iter()
            .all(|e| e["data"]["currency"] == "PLN" && e["data"]["otp"] == "******")
    );
    let algs: Vec<&str> = otps
        .iter()
        .map(|e| e["meta"]["jwe_alg"].as_str().unwrap())
        .collect();
    assert!(algs.contains(&"RSA-OAEP") && algs.contains(&"RSA-OAEP-256"));
}

#[tokio::test]
async fn the_public_key_is_served_and_old_keys_still_decrypt() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    switchboard(
        &pki.dir,
        &["keys", "generate", "--bits", "2048", "--out", "jwe-new.pem"],
    );
    let extra = format!(
        "\n[[providers.verestro.jwe_keys]]\nprivate_key = \"file:{}\"\nkid = \"old\"",
        pki.path("jwe.pem")
    );
    // The newest key first; jwe.pem (from the base config) becomes the old one.
    let mut tail = pki
        .config("")
        .replace(&pki.path("jwe.pem"), &pki.path("jwe-new.pem"));
    tail.push_str(&extra);
    let s = Server::start_in(dir, &[("tail", &tail)]);
    let c = pki.provider();
    let r: Value = c
        .get(s.verestro_url("/public-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    use base64::Engine;
    let served = base64::engine::general_purpose::STANDARD
        .decode(r["publicKey"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        served,
        std::fs::read(pki.dir.join("jwe-new.pem.pub")).unwrap(),
        "the newest key is served"
    );
    for (public, args) in [
        ("jwe-new.pem.pub", vec![]),
        ("jwe.pem.pub", vec![]),
        ("jwe.pem.pub", vec!["--kid", "old"]),
    ] {
        let token = pki.jwe(&pki.path(public), &otp_body("777"), &args);
        let r = c
            .post(s.verestro_url("/notifications/otp"))
            .header("encrypted-request", "true")
            .header("x-idempotency-key", key())
            .body(envelope(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{public} {args:?}");
    }
    let no_cert = pki
        .client(None)
        .get(s.verestro_url("/public-key"))
        .send()
        .await;
    assert!(no_cert.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_replay_and_refuse_reuse_and_keyless_repeats_store_once() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir, &pki, "", "");
    let c = pki.provider();
    let public = pki.path("jwe.pem.pub");
    let k = key();
    // 20 concurrent repeats, each encrypted anew (different ciphertexts, same notification).
    let mut tasks = vec![];
    for _ in 0..20 {
        let req = c
            .post(s.verestro_url("/notifications/otp"))
            .header("encrypted-request", "true")
            .header("x-idempotency-key", &k)
            .body(envelope(&pki.jwe(&public, &otp_body("654321"), &[])));
        tasks.push(tokio::spawn(async move {
            answer(req.send().await.unwrap()).await
        }));
    }
    let mut answers = vec![];
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(answers[0].0, 204);
    assert!(answers.iter().all(|a| *a == answers[0]));
    // The same key with another body: refused, nothing runs.
    let r = c
        .post(s.verestro_url("/notifications/otp"))
        .header("x-idempotency-key", &k)
        .body(otp_body("999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(detail(r).await, (422, "IDEMPOTENCY_KEY_REUSED".into()));
    // Card lock and unlock come without a key: repeats are recognised by their body.
    let lock = r#"{"dcCardId": "11", "date": "2025-06-17T13:42:54+00:00", "reason": "CARD_LOST"}"#;
    let unlock = r#"{"dcCardId": "11", "date": "2025-06-17T13:42:54+00:00"}"#;
    let mut tasks = vec![];
    for i in 0..20 {
        let (path, body) = if i % 2 == 0 {
            ("/notifications/cardLocked", lock)
        } else {
            ("/notifications/cardUnlocked", unlock)
        };
        let req = c.post(s.verestro_url(path)).body(body);
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 204);
    }
    let other_lock = lock.replace("CARD_LOST", "CARD_STOLEN");
    assert_eq!(
        c.post(s.verestro_url("/notifications/cardLocked"))
            .body(other_lock)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let evs = events(&client(), &s, "provider=verestro").await;
    let count = |t: &str| evs.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (count("otp"), count("cardLocked"), count("cardUnlocked")),
        (1, 2, 1)
    );
    let otp = evs.iter().find(|e| e["type"] == "otp").unwrap();
    assert_eq!(otp["meta"]["idempotency_key"], k.as_str());
    assert_eq!(
        metric(
            &client(),
            &s,
            "switchboard_idempotency_conflicts_total{provider=\"verestro\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn bodies_are_typed_leniently_and_unusable_ones_are_quarantined() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir, &pki, "", "");
    let c = pki.provider();
    // The seed's own example, trailing comma and single quotes included.
    let seed = "{\n  \"verificationId\": \"6faaa45a-41f6-4922-95fe-16e316ba7e91\",\n  \"userId\": \"1337\",\n  \"email\": \"leonbakiewicz@gmail.com\",\n  \"firstName\": \"Leon\",\n  \"lastName\": \"Bakiewicz\",\n  \"status\": \"REJECTED\",\n  \"reason\": 'INVALID_CUSTOMER_DATA',\n}";
    let r = c
        .post(s.verestro_url("/notifications/verificationRejected"))
        .header("x-idempotency-key", key())
        .header("public-key", "dGhpcyBpcyBub3QgYSBrZXk=")
        .body(seed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let new_reason = r#"{"resourceType": "user", "resourceId": "42", "lockReason": "COURT_ORDER", "timestamp": "2025-06-17T13:42:54+00:00"}"#;
    let r = c
        .post(s.verestro_url("/notifications/transactionalLockReasonAdded"))
        .header("x-idempotency-key", key())
        .body(new_reason)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let broken = r#"{"date": "2025-06-17T13:42:54+00:00", "reason": "CARD_LOST"}"#;
    for _ in 0..2 {
        let r = c
            .post(s.verestro_url("/notifications/cardLocked"))
            .body(broken)
            .send()
            .await
            .unwrap();
        assert_eq!(detail(r).await, (422, "INVALID_PAYLOAD".into()));
    }
    let c2 = client();
    let kyc = &events(&c2, &s, "type=verificationRejected").await[0];
    assert_eq!(kyc["data"]["userId"], 1337);
    assert_eq!(kyc["data"]["reason"], "INVALID_CUSTOMER_DATA");
    assert!(
        kyc["flags"][0]
            .as_str()
            .unwrap()
            .starts_with("lenient_json")
    );
    assert_eq!(
        kyc["meta"]["public_key"], "dGhpcyBpcyBub3QgYSBrZXk=",
        "Public-Key is kept with the event"
    );
    assert_eq!(kyc["meta"]["public_key_unusable"], "true");
    let lock = &events(&c2, &s, "type=transactionalLockReasonAdded").await[0];
    assert_eq!(
        lock["flags"],
        json!(["unknown_enum_value: LockReason=COURT_ORDER"])
    );
    let q = admin(&c2, &s, "/admin/quarantine?provider=verestro").await;
    assert_eq!(
        q["items"].as_array().unwrap().len(),
        1,
        "quarantined once, answered alike twice"
    );
}

#[tokio::test]
async fn the_onboarding_commands_end_with_a_simulated_otp_stored() {
    // ca init → (the provider's CSR) → ca sign-csr → tls server-cert → keys generate are
    // what Pki::new runs; then serve and simulate, as the README's walk-through does.
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir.clone(), &pki, "require_encryption = [\"*\"]", "");
    let target = format!("https://{}", s.listeners["verestro"]);
    for event in [
        "otp",
        "verification-accepted",
        "card-locked",
        "lock-reason-removed",
    ] {
        let out = switchboard(
            dir.path(),
            &[
                "simulate",
                "verestro",
                event,
                "--encrypt",
                "--target",
                &target,
                "--cert",
                &pki.path("provider.crt"),
                "--key",
                &pki.path("provider.key"),
                "--ca",
                &pki.path("ca/ca.crt"),
            ],
        );
        assert!(out.contains("-> 204"), "{event}: {out}");
    }
    let evs = events(&client(), &s, "provider=verestro").await;
    assert_eq!(evs.len(), 4);
    assert!(evs.iter().all(|e| e["meta"]["jwe_alg"] == "RSA-OAEP-256"));
}

#[tokio::test]
async fn a_body_no_key_decrypts_is_kept_and_replayed_once_the_key_is_configured() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    // Verestro encrypts to a key the operator has not configured yet.
    switchboard(
        &pki.dir,
        &[
            "keys",
            "generate",
            "--bits",
            "2048",
            "--out",
            "jwe-next.pem",
        ],
    );
    let s = verestro_server(dir.clone(), &pki, "", "");
    let token = pki.jwe(&pki.path("jwe-next.pem.pub"), &otp_body("606060"), &[]);
    let r = send_encrypted_otp(&pki, &s, &token).await;
    assert_eq!(detail(r).await, (422, "CANT_DECRYPT_PAYLOAD".into()));
    let c = client();
    let q = admin(&c, &s, "/admin/quarantine").await;
    let items = q["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{q}");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(items[0]["meta"]["refused"], "CANT_DECRYPT_PAYLOAD");
    assert!(
        items[0]["quarantineReason"]
            .as_str()
            .unwrap_or("")
            .starts_with("CANT_DECRYPT_PAYLOAD"),
        "{q}"
    );
    assert!(!s.logs().contains("606060"));
    assert_eq!(s.terminate().code(), Some(0));

    // The key is added; the kept body is replayed and decrypts.
    let mut tail = pki.config("");
    tail.push_str(&format!(
        "\n[[providers.verestro.jwe_keys]]\nprivate_key = \"file:{}\"\n",
        pki.path("jwe-next.pem")
    ));
    let s = Server::start_in(dir, &[("tail", &tail)]);
    let r = admin_post(&c, &s, &format!("/admin/events/{id}/replay")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let e = until(&c, &s, &format!("/admin/events/{id}"), "routed", |e| {
        e["status"] != "quarantined" && e["status"] != "received"
    })
    .await;
    assert_eq!(e["type"], "otp", "{e}");
    assert_eq!(e["data"]["merchantName"], "merchant test", "{e}");
    assert_eq!(e["data"]["otp"], "******", "{e}");
    // No customers service: the route logs the message it could not send.
    assert_eq!(e["status"], "routed", "{e}");
    assert!(
        e["actions"][0]["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("is your code to pay 10.00 PLN"),
        "{e}"
    );
    assert!(!e.to_string().contains("606060"), "{e}");
    assert!(
        !s.logs().contains("606060"),
        "the OTP never reaches the log"
    );
}

#[tokio::test]
async fn plaintext_refused_by_the_encryption_policy_is_replayed_only_once_the_policy_allows_it() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir.clone(), &pki, "require_encryption = [\"otp\"]", "");
    let r = pki
        .provider()
        .post(s.verestro_url("/notifications/otp"))
        .header("x-idempotency-key", key())
        .body(otp_body("515151"))
        .send()
        .await
        .unwrap();
    assert_eq!(detail(r).await, (422, "ENCRYPTION_REQUIRED".into()));
    let c = client();
    let q = admin(&c, &s, "/admin/quarantine").await;
    let id = q["items"][0]["id"].as_str().unwrap().to_owned();
    // The policy still holds: a replay does not route the plaintext.
    let replay = |s: &Server| {
        c.post(s.url(&format!("/admin/events/{id}/replay")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let r = replay(&s).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("ENCRYPTION_REQUIRED"));
    assert_eq!(
        admin(&c, &s, &format!("/admin/events/{id}")).await["status"],
        "quarantined"
    );
    // A body that arrived encrypted but does not fit the schema is kept decrypted: its
    // replay is judged on the schema, not refused as plaintext.
    let token = pki.jwe(&pki.path("jwe.pem.pub"), br#"{"otp": 5}"#, &[]);
    let r = send_encrypted_otp(&pki, &s, &token).await;
    assert_eq!(detail(r).await, (422, "INVALID_PAYLOAD".into()));
    let q = admin(&c, &s, "/admin/quarantine").await;
    let other = q["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] != id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin_post(&c, &s, &format!("/admin/events/{other}/replay")).await;
    assert_eq!(r.status(), 422);
    let why = r.text().await.unwrap();
    assert!(!why.contains("ENCRYPTION_REQUIRED"), "{why}");
    assert_eq!(s.terminate().code(), Some(0));
    // The operator takes `otp` off the list: now the replay routes it.
    let s = verestro_server(dir, &pki, "", "");
    assert_eq!(replay(&s).await.unwrap().status(), 202);
    let e = until(&c, &s, &format!("/admin/events/{id}"), "routed", |e| {
        e["status"] == "routed"
    })
    .await;
    assert_eq!(e["data"]["merchantName"], "merchant test", "{e}");
}

#[tokio::test]
async fn a_client_that_stalls_the_tls_handshake_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    // The listener's handshake_timeout is 2 s (Pki::config).
    let s = verestro_server(dir, &pki, "", "");
    let addr = s.listeners["verestro"];
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Half a TLS record header, then nothing.
    stalled.write_all(&[0x16, 0x03]).await.unwrap();
    let started = Instant::now();
    // Meanwhile the listener keeps serving: a proper client gets through.
    let r = pki
        .provider()
        .get(s.verestro_url("/public-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), stalled.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

/// Issue 8 §3: an idempotency key is scoped by endpoint. The same key on two endpoints is
/// two notifications (Verestro never retries the 422 a clash would get); on one endpoint
/// with another body it is still a reuse.
#[tokio::test]
async fn idempotency_keys_are_scoped_by_endpoint() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir, &pki, "", "");
    let c = pki.provider();
    let k = key();
    let kyc = |status: &str| {
        serde_json::to_vec(
            &json!({"verificationId": "6faaa45a-41f6-4922-95fe-16e316ba7e91",
            "userId": "1337", "email": "leon@example.com", "firstName": "Leon",
            "lastName": "Bakiewicz", "status": status, "reason": null}),
        )
        .unwrap()
    };
    for (endpoint, status) in [
        ("verificationInProgress", "IN_PROGRESS"),
        ("verificationAccepted", "ACCEPTED"),
    ] {
        let r = c
            .post(s.verestro_url(&format!("/notifications/{endpoint}")))
            .header("x-idempotency-key", &k)
            .body(kyc(status))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{endpoint}");
    }
    let evs = events(&client(), &s, "provider=verestro").await;
    assert_eq!(evs.len(), 2, "two endpoints, two events: {evs:?}");
    // Same endpoint, other body: a real reuse.
    let mut other = kyc("ACCEPTED");
    other.splice(0..1, b"{\"extra\": 1, ".iter().copied());
    let r = c
        .post(s.verestro_url("/notifications/verificationAccepted"))
        .header("x-idempotency-key", &k)
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(detail(r).await, (422, "IDEMPOTENCY_KEY_REUSED".into()));
    // Same endpoint, same body: the first answer again.
    let r = c
        .post(s.verestro_url("/notifications/verificationAccepted"))
        .header("x-idempotency-key", &k)
        .body(kyc("ACCEPTED"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(events(&client(), &s, "provider=verestro").await.len(), 2);
}

/// Issue 8 §3: plausible shapes Verestro may send are accepted and flagged: a date with a
/// space for the `T` (and no offset), and a decimal amount.
#[tokio::test]
async fn plausible_shapes_are_accepted_and_flagged() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let s = verestro_server(dir, &pki, "", "");
    let c = pki.provider();
    let r = c
        .post(s.verestro_url("/notifications/cardLocked"))
        .body(r#"{"dcCardId": "11", "date": "2025-06-17 13:42:54", "reason": "CARD_LOST"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut otp: Value = serde_json::from_slice(&otp_body("111222")).unwrap();
    otp["amount"] = json!(10.5);
    let r = c
        .post(s.verestro_url("/notifications/otp"))
        .header("x-idempotency-key", key())
        .body(otp.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let c2 = client();
    let lock = &events(&c2, &s, "type=cardLocked").await[0];
    assert_eq!(
        lock["data"]["date"], "2025-06-17T13:42:54+00:00",
        "normalised"
    );
    assert!(
        lock["flags"][0]
            .as_str()
            .unwrap()
            .starts_with("date_format"),
        "{lock}"
    );
    let otp = &events(&c2, &s, "type=otp").await[0];
    assert_eq!(otp["data"]["amount"], 10.5, "passed on as it came");
    assert!(
        otp["flags"][0]
            .as_str()
            .unwrap()
            .starts_with("decimal_amount"),
        "{otp}"
    );
    assert!(
        admin(&c2, &s, "/admin/quarantine").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Issue 12 §2: `simulate` says what is wrong: no client certificate for a mutual-TLS
/// listener, or one that is not pinned (refused at `GET /public-key`, before the POST).
#[tokio::test]
async fn simulate_explains_a_missing_or_unpinned_client_certificate() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let other = "ab".repeat(32);
    let s = verestro_server(
        dir.clone(),
        &pki,
        &format!("pin_sha256 = [\"{other}\"]"),
        "",
    );
    let target = format!("https://{}", s.listeners["verestro"]);
    let ca = pki.path("ca/ca.crt");
    let simulate = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success());
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = simulate(&[
        "simulate", "verestro", "otp", "--target", &target, "--ca", &ca,
    ]);
    assert!(out.contains("requires a client certificate"), "{out}");
    let (cert, key) = (pki.path("provider.crt"), pki.path("provider.key"));
    let out = simulate(&[
        "simulate",
        "verestro",
        "otp",
        "--encrypt",
        "--target",
        &target,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert!(
        out.contains("/public-key") && out.contains("403") && out.contains("not pinned"),
        "{out}"
    );
}
