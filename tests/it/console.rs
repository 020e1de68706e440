//! The console in a real browser: Debian's Chromium driven through chromedriver
//! (WebDriver, the `fantoccini` crate) against the real binary. One browser session walks
//! through an operator's work: sign in, find a failed event and replay it, read a dead
//! delivery's attempts, try a script, and see a hostile body shown as text. The session's
//! protections (cookie, CSRF token, CSP) are checked from outside the page too. The server
//! has Verestro on a mutual-TLS listener, as in production.
//!
//! `SWITCHBOARD_SCREENSHOT=docs/console.png cargo test --test it console::` refreshes the
//! README's screenshot.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};

use crate::{pki::*, servers::*, support::*};

const WAIT: Duration = Duration::from_secs(20);

/// chromedriver and a headless Chromium with a fresh profile.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Waits until the element `css` shows a text containing `want`.
    async fn until_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {want:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Runs `fetch` in the page and answers its status.
    async fn fetch_status(&self, method: &str, path: &str, headers: Value) -> u64 {
        let script = "const [m, p, h, done] = arguments; \
             fetch(p, {method: m, headers: h, credentials: 'same-origin', \
             body: m === 'GET' ? undefined : '{\"events\":{\"status\":\"failed\"}}'}) \
             .then(r => done(r.status), e => done(String(e)));";
        let v = self
            .client
            .execute_async(script, vec![json!(method), json!(path), headers])
            .await
            .unwrap();
        v.as_u64().unwrap_or_else(|| panic!("fetch failed: {v}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn pomelo_otp(otp: &str, to: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_1"},
        "otp": otp, "to": to, "contact_method": "SMS",
    }))
    .unwrap()
}

const XSS: &str = r#"<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">"#;

#[tokio::test]
async fn an_operator_works_through_the_console_in_a_real_browser() {
    // The customers service does not know the card yet: the OTP's route fails. The
    // compliance service is down: VerifyVASP's delivery dies after its retries.
    // Verestro sits on its mutual-TLS listener, as in production.
    let customers = Recorder::start().await;
    customers.plan("/cards/", vec![Reply::status(404)]);
    customers.plan(
        "/customers/",
        vec![Reply::json(json!({"phone": "+48500100200"}))],
    );
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let tail = format!(
        "[services.customers]\nbase_url = \"{}\"\n\
         [services.compliance]\nbase_url = \"http://127.0.0.1:{}\"\n\
         [routes]\nlookup_retries = []\n\
         [delivery]\nschedule = [\"100ms\"]\njitter = 0.0\n{}",
        customers.url(),
        free_port(),
        pki.config("")
    );
    let (s, b) = tokio::join!(
        async { Server::start_in(dir, &[("tail", &tail)]) },
        Browser::start()
    );
    let c = client();
    let jwe = pki.jwe(
        &pki.path("jwe.pem.pub"),
        &serde_json::to_vec(
            &json!({"storageCustomerId": "1337", "storageCardId": "1337",
            "balanceId": "b334b384-328c-11ed-a261-0242ac120002", "amount": "1000",
            "currency": "PLN", "merchantName": "merchant test", "otp": "654321"}),
        )
        .unwrap(),
        &[],
    );
    let r = pki
        .provider()
        .post(s.verestro_url("/notifications/otp"))
        .header("encrypted-request", "true")
        .header("x-idempotency-key", uuid::Uuid::new_v4().to_string())
        .body(serde_json::to_vec(&json!({"payload": jwe})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let verestro_event = routed_event(&c, &s, "verestro").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    accepted_pomelo(&c, &s, &pomelo_otp("111111", "m***@example.com")).await;
    accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
    accepted_pomelo(&c, &s, &pomelo_otp("222222", XSS)).await;
    let failed = until(&c, &s, "/admin/events?status=failed", "2 failed", |p| {
        p["items"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let otp_event = failed["items"][1]["id"].as_str().unwrap().to_owned();
    let xss_event = failed["items"][0]["id"].as_str().unwrap().to_owned();
    until(
        &c,
        &s,
        "/admin/deliveries?status=dead",
        "a dead delivery",
        |p| p["items"].as_array().is_some_and(|a| a.len() == 1),
    )
    .await;

    // Sign in: a wrong token is refused, the right one opens the overview.
    b.client.goto(&s.url("/console")).await.unwrap();
    b.find("#token")
        .await
        .send_keys("not-the-token")
        .await
        .unwrap();
    b.click("#signin-button").await;
    b.until_text("#signin-error", "not right").await;
    b.find("#token").await.send_keys(ADMIN_TOKEN).await.unwrap();
    b.click("#signin-button").await;
    b.until_text("#view-title", "Overview").await;
    let overview = b.until_text("#view", "Failed events, last 24 h").await;
    assert!(overview.contains("pomelo"), "{overview}");
    b.until_text(".cards", "Dead deliveries\n1").await;
    if let Ok(path) = std::env::var("SWITCHBOARD_SCREENSHOT") {
        let png = b.client.screenshot().await.unwrap();
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
            png,
        )
        .unwrap();
    }

    // Events: filter the failed ones, open the OTP's, fix its cause, replay it.
    b.click("nav a[href='#/events']").await;
    b.until_text("#view-title", "Events").await;
    b.find("#f-status")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.click("#event-filters button[type=submit]").await;
    b.until_text("#view table", &xss_event).await;
    b.until_text("#view table", &otp_event).await;
    b.client
        .find(Locator::LinkText(&otp_event))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.until_text("#route-error", "404").await;
    customers.plan(
        "/cards/",
        vec![Reply::json(json!({"phone": "+48500100200"}))],
    );
    b.click("#replay-event").await;
    b.until_text("#confirm-title", "Replay 1 event?").await;
    b.click("#confirm-ok").await;
    b.until_text("#status", "Replayed event").await;
    until(
        &c,
        &s,
        &format!("/admin/events/{otp_event}"),
        "routed again",
        |e| e["status"] == "routed" && e["route"]["runs"] == 2,
    )
    .await;

    // A hostile body shows as text: no element made from it, no script run.
    b.client
        .goto(&s.url(&format!("/console#/event/{xss_event}")))
        .await
        .unwrap();
    let body = b.until_text("#event-body", "onerror").await;
    assert!(body.contains("<script>window.__xss=1</script>"), "{body}");
    assert!(!body.contains("222222"), "the OTP is masked: {body}");
    let probe = b
        .js("return [typeof window.__xss, document.querySelectorAll('#view img, #view script').length]")
        .await;
    assert_eq!(probe, json!(["undefined", 0]));

    // A Verestro event shows what its mutual-TLS and JWE layers recorded.
    b.client
        .goto(&s.url(&format!("/console#/event/{verestro_event}")))
        .await
        .unwrap();
    let meta = b.until_text("#view", "Client certificate subject").await;
    assert!(meta.contains("CN=verestro-notifications"), "{meta}");
    assert!(
        meta.contains("JWE algorithm") && meta.contains("RSA-OAEP"),
        "{meta}"
    );
    assert!(!meta.contains("654321"), "the OTP is masked: {meta}");
    // The console is served on `[server]` only, never on the provider's listener.
    let there = pki
        .provider()
        .get(s.verestro_url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(there.status(), 404);

    // Deliveries: the dead one, with every failed attempt and its error.
    b.click("nav a[href='#/deliveries']").await;
    b.until_text("#view-title", "Deliveries").await;
    b.find("#f-status")
        .await
        .select_by_value("dead")
        .await
        .unwrap();
    b.find("#f-channel")
        .await
        .select_by_value("http")
        .await
        .unwrap();
    b.click("#delivery-filters button[type=submit]").await;
    b.until_text("#view table", "http").await;
    b.click("#view table tbody a").await;
    let attempts = b.until_text("#attempts", "failed").await;
    let rows = b
        .client
        .find_all(Locator::Css("#attempts tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "first try and one retry: {attempts}");
    assert!(
        attempts.to_lowercase().contains("connect") || attempts.contains("refused"),
        "{attempts}"
    );

    // Try a script against the first event, with a lookup answered from a typed value:
    // the actions show, the OTP masked, and nothing is queued.
    let before = admin(&c, &s, &format!("/admin/events/{otp_event}")).await;
    b.client
        .goto(&s.url(&format!("/console#/try?event={otp_event}")))
        .await
        .unwrap();
    b.find("#script-text")
        .await
        .send_keys(
            "print(`trying ${event.type}`);\n\
             let h = http::get(\"customers\", `/cards/${http::escape(event.data.token.card_id)}/holder`);\n\
             sms::send(#{ to: h.phone, text: `code ${event.data.otp}` });\n",
        )
        .await
        .unwrap();
    b.click("#add-answer").await;
    b.find("#answers input[name=service]")
        .await
        .send_keys("customers")
        .await
        .unwrap();
    b.find("#answers input[name=path]")
        .await
        .send_keys("/cards/card_123456789/holder")
        .await
        .unwrap();
    b.find("#answers textarea[name=answer]")
        .await
        .send_keys(r#"{"phone": "+48500999888"}"#)
        .await
        .unwrap();
    b.click("#run-try").await;
    b.until_text("#try-outcome", "finished").await;
    let action = b.until_text(".try-action", "+48500999888").await;
    assert!(
        action.contains("sms") && action.contains("code ******"),
        "{action}"
    );
    assert!(!action.contains("111111"), "{action}");
    b.until_text("#try-log", "trying tokenization_otp").await;
    let after = admin(&c, &s, &format!("/admin/events/{otp_event}")).await;
    assert_eq!(before["actions"], after["actions"], "a try queues nothing");

    // The session: an HttpOnly, SameSite=Strict cookie that the page's script cannot read.
    let cookie = b
        .client
        .get_named_cookie("switchboard_console")
        .await
        .unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(b.js("return document.cookie").await, json!(""));
    // From the page itself, a state-changing request without the CSRF token is refused;
    // a read with the session is not.
    let headers = json!({"Content-Type": "application/json"});
    assert_eq!(
        b.fetch_status("POST", "/console/api/replay", headers.clone())
            .await,
        403
    );
    assert_eq!(
        b.fetch_status("GET", "/console/api/events", json!({}))
            .await,
        200
    );
    // From outside: the session's cookie without the token, and no session at all.
    let session = format!("switchboard_console={}", cookie.value());
    let r = c
        .post(s.url("/console/api/replay"))
        .header("cookie", &session)
        .json(&json!({"events": {"status": "failed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(s.url("/console/api/replay"))
        .header("cookie", &session)
        .header("x-csrf-token", "forged")
        .json(&json!({"events": {"status": "failed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.get(s.url("/console/api/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Sign out: the page asks for the token again, and the old cookie is worth nothing.
    b.click("#logout").await;
    b.find("#signin-form").await;
    assert_eq!(
        b.fetch_status("GET", "/console/api/events", json!({}))
            .await,
        401
    );
    let r = c
        .get(s.url("/console/api/events"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn the_console_is_self_contained_and_locked_down() {
    let s = Server::start(&[]);
    let c = client();
    let page = c.get(s.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for want in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(want), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = page.text().await.unwrap();
    // Nothing inline, nothing from elsewhere.
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in ["app.js", "app.css", "icon.svg"] {
        let r = c
            .get(s.url(&format!("/console/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("innerHTML"),
            "{asset} builds no HTML from strings"
        );
        assert!(
            !text.contains("https://"),
            "{asset} loads nothing from elsewhere"
        );
    }
    // Sign-in: the token, and only from the console's own origin.
    let r = c
        .post(s.url("/console/session"))
        .json(&json!({"token": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(s.url("/console/session"))
        .header("origin", "https://evil.example")
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(s.url("/console/session"))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for want in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(want), "{set_cookie}");
    }
    let session = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = r.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    // With both, a state-changing request goes through to the admin API; a cross-site
    // one does not, even with both.
    let r = c
        .post(s.url("/console/api/replay"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .json(&json!({"events": {"status": "failed"}, "dryRun": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(s.url("/console/api/replay"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"events": {"status": "failed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The console is on `[server]` only, like the admin API.
    assert_eq!(
        c.get(s.url("/console/nothing-here"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
