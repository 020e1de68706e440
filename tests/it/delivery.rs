use std::time::Duration;

use serde_json::{Value, json};

use crate::{servers::*, support::*};

const FAST_RETRIES: &str =
    "[delivery]\nschedule = [\"200ms\", \"300ms\", \"300ms\"]\njitter = 0.0\n";

/// The single action of the single event of `provider`, once its route ran.
async fn the_action(c: &reqwest::Client, s: &Server, provider: &str) -> Value {
    let e = routed_event(c, s, provider).await;
    assert_eq!(e["status"], "routed", "{e}");
    let actions = e["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{e}");
    actions[0].clone()
}

async fn until_status(c: &reqwest::Client, s: &Server, action: &str, status: &str) -> Value {
    until(
        c,
        s,
        &format!("/admin/deliveries/{action}"),
        &format!("delivery {status}"),
        |a| a["status"] == status,
    )
    .await
}

#[tokio::test]
async fn an_otp_email_reaches_a_real_smtp_server() {
    let dir = Dir::new();
    let sink = SmtpSink::start(dir.path(), &[]);
    let customers = customers(None).await;
    let tail = format!(
        "{}{}",
        smtp(sink.port),
        service("customers", &customers, "")
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("739201", "EMAIL")).await;
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    let m = &mails[0];
    assert_eq!(m.to, vec!["jan@example.com".to_string()]);
    assert!(
        m.data.contains("Subject: Your verification code"),
        "{}",
        m.data
    );
    assert!(
        m.data.contains("From: Bank <otp@bank.example>"),
        "{}",
        m.data
    );
    assert!(
        m.data
            .contains("Your code to add your card to Apple Pay is 739201."),
        "{}",
        m.data
    );
    // The card holder was looked up by card.
    assert_eq!(customers.to("/cards/card_123456789/holder").len(), 1);
    let a = the_action(&c, &s, "pomelo").await;
    assert!(
        m.data.contains(&format!(
            "Message-ID: <{}@switchboard>",
            a["id"].as_str().unwrap()
        )),
        "{}",
        m.data
    );
    let a = until_status(&c, &s, a["id"].as_str().unwrap(), "sent").await;
    assert!(
        a["attempts"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("SMTP 250"),
        "{a}"
    );
    // Admin answers mask the OTP inside the message.
    assert!(!a.to_string().contains("739201"), "{a}");
    assert!(a["payload"]["text"].as_str().unwrap().contains("******"));
    assert!(
        !s.logs().contains("739201"),
        "the OTP never reaches the log"
    );
}

/// An OTP email over an encrypted, authenticated SMTP session: `mode` is `starttls` or
/// `tls` (implicit TLS, as on port 465).
async fn smtp_encrypted_with_auth(mode: &str) {
    let dir = Dir::new();
    let pki = crate::pki::Pki::new(dir.path());
    let mut args = vec![
        "--tls-cert".to_string(),
        pki.path("server.crt"),
        "--tls-key".into(),
        pki.path("server.key"),
        "--auth".into(),
        "otp-sender:s3cret-pass".into(),
    ];
    if mode == "tls" {
        args.push("--implicit-tls".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sink = SmtpSink::start(dir.path(), &args);
    let customers = customers(None).await;
    std::fs::write(dir.path().join("smtp-password"), "s3cret-pass\n").unwrap();
    let tail = format!(
        "[channels.email]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{mode}\"\nusername = \"otp-sender\"\npassword = \"file:{}\"\nfrom = \"otp@bank.example\"\nca_file = \"{}\"\n{}",
        sink.port,
        dir.path().join("smtp-password").display(),
        pki.path("ca/ca.crt"),
        service("customers", &customers, "")
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("428104", "EMAIL")).await;
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert!(mails[0].data.contains("428104"));
    assert!(mails[0].tls, "the session was encrypted: {:?}", mails[0]);
    assert!(mails[0].authenticated, "the session was authenticated");
    assert!(!s.logs().contains("s3cret-pass"));
}

#[tokio::test]
async fn smtp_with_starttls_and_auth() {
    smtp_encrypted_with_auth("starttls").await;
}

#[tokio::test]
async fn smtp_with_implicit_tls_and_auth() {
    smtp_encrypted_with_auth("tls").await;
}

/// A second email reuses the first one's connection; once the server has dropped that idle
/// connection, the next email still goes out in its first attempt, on a new connection.
#[tokio::test]
async fn pooled_smtp_connections_are_reused_and_replaced_when_the_server_drops_them() {
    let dir = Dir::new();
    let sink = SmtpSink::start(dir.path(), &["--idle-timeout", "1"]);
    let customers = customers(None).await;
    let tail = format!(
        "{}{}",
        smtp(sink.port),
        service("customers", &customers, "")
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    let send = |otp: &'static str| {
        let req = pomelo_request(&c, &s, &pomelo_otp(otp, "EMAIL"));
        async move { assert_eq!(req.send().await.unwrap().status(), 204) }
    };
    send("100001").await;
    let first = sink.wait_for(1, Duration::from_secs(20)).await;
    send("100002").await;
    let two = sink.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(
        two[1].peer, first[0].peer,
        "the second email reused the connection"
    );
    // The server drops a client that is silent for a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send("100003").await;
    let three = sink.wait_for(3, Duration::from_secs(20)).await;
    assert_ne!(
        three[2].peer, first[0].peer,
        "a new connection carried the third"
    );
    let page = until_items(&c, &s, "/admin/deliveries?status=sent", 3, "3 sent").await;
    for a in page["items"].as_array().unwrap() {
        assert_eq!(
            a["attempts"].as_array().unwrap().len(),
            1,
            "one attempt each: {a}"
        );
    }
}

#[tokio::test]
async fn sms_gateways_and_http_deliveries_carry_their_auth_and_a_stable_idempotency_key() {
    let dir = Dir::new();
    let gateway = Recorder::start().await;
    gateway.plan("/2010-04-01/", vec![Reply::status(201)]);
    let customers = customers(None).await;
    let compliance = Recorder::start().await;
    let tail = format!(
        "[channels.sms]\nkind = \"twilio\"\nurl = \"{}/2010-04-01\"\naccount_sid = \"AC123\"\nauth_token = \"env:SWITCHBOARD_TEST_TWILIO\"\nfrom = \"+15005550006\"\n{}{}",
        gateway.url(),
        service("customers", &customers, ""),
        service(
            "compliance",
            &compliance,
            "headers = { Authorization = \"Bearer compliance-token\" }"
        ),
    );
    let s = Server::start_env(
        dir,
        &[("tail", &tail)],
        &[("SWITCHBOARD_TEST_TWILIO", "tw-auth-token")],
    );
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("552611", "SMS")).await;
    let sms = &gateway
        .wait_for(
            "/2010-04-01/Accounts/AC123/Messages.json",
            1,
            Duration::from_secs(20),
        )
        .await[0];
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("AC123:tw-auth-token");
    assert_eq!(sms.headers["authorization"], format!("Basic {basic}"));
    let form = sms.form();
    assert_eq!(form["To"], "+48500100200");
    assert_eq!(form["From"], "+15005550006");
    assert!(form["Body"].contains("552611"));
    let a = the_action(&c, &s, "pomelo").await;
    assert_eq!(sms.headers["idempotency-key"], a["id"].as_str().unwrap());

    accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
    let call = &compliance
        .wait_for("/travel-rule/tx_report", 1, Duration::from_secs(20))
        .await[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.headers["authorization"], "Bearer compliance-token");
    let body = call.json();
    assert_eq!(
        body["callback"]["data"]["txHash"],
        "0x9fd7afd46e4402c7197b4d8deb0199fcf7c1f57ef70c339f403a1cqwerc31c28"
    );
    let a = the_action(&c, &s, "verifyvasp").await;
    assert_eq!(call.headers["idempotency-key"], a["id"].as_str().unwrap());
}

#[tokio::test]
async fn a_json_sms_gateway_gets_its_template_and_headers() {
    let dir = Dir::new();
    let gateway = Recorder::start().await;
    let customers = customers(None).await;
    let tail = format!(
        "[channels.sms]\nkind = \"json\"\nurl = \"{}/v1/messages\"\nfrom = \"BANK\"\nheaders = {{ X-Api-Key = \"env:SWITCHBOARD_TEST_SMS_KEY\" }}\ntemplate = '{{\"recipient\": {{{{to}}}}, \"message\": {{{{text}}}}, \"sender\": {{{{from}}}}}}'\n{}",
        gateway.url(),
        service("customers", &customers, ""),
    );
    let s = Server::start_env(
        dir,
        &[("tail", &tail)],
        &[("SWITCHBOARD_TEST_SMS_KEY", "sms-key-1")],
    );
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("900112", "SMS")).await;
    let call = &gateway
        .wait_for("/v1/messages", 1, Duration::from_secs(20))
        .await[0];
    assert_eq!(call.headers["x-api-key"], "sms-key-1");
    let body = call.json();
    assert_eq!(body["recipient"], "+48500100200");
    assert_eq!(body["sender"], "BANK");
    assert!(body["message"].as_str().unwrap().contains("900112"));
}

#[tokio::test]
async fn servers_that_refuse_then_recover_get_their_deliveries_on_retry() {
    let dir = Dir::new();
    let smtp_port = free_port();
    let compliance_port = free_port();
    let customers = customers(None).await;
    // Fast first retries, then enough slower ones that the schedule outlasts starting the
    // two servers below on a busy machine (0.8 s of retries did not, under a full suite).
    let tail = format!(
        "{}{}[services.compliance]\nbase_url = \"http://127.0.0.1:{compliance_port}\"\n\
         [delivery]\nschedule = [\"200ms\", \"300ms\", \"300ms\", \"1s\", \"2s\", \"4s\", \"8s\"]\njitter = 0.0\n",
        smtp(smtp_port),
        service("customers", &customers, ""),
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("310000", "EMAIL")).await;
    accepted_vasp(&c, &s, &fixture("verifyvasp_error_report.json")).await;
    until_routed(&c, &s).await;
    // Nothing listens yet: the first attempts fail.
    let failed = until(&c, &s, "/admin/deliveries", "two failed attempts", |p| {
        p["items"].as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter().all(|d| {
                    d["attempts"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|x| x["outcome"] == "failed"))
                })
        })
    })
    .await;
    assert!(
        failed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "retrying" || d["status"] == "sending")
    );
    // Both come up; the retries get through.
    let sink = SmtpSink::start(dir.path(), &["--port", &smtp_port.to_string()]);
    let compliance =
        Recorder::start_on(format!("127.0.0.1:{compliance_port}").parse().unwrap()).await;
    compliance.plan(
        "/travel-rule/",
        vec![
            Reply::status(503).header("retry-after", "1"),
            Reply::status(200),
        ],
    );
    sink.wait_for(1, Duration::from_secs(20)).await;
    let calls = compliance
        .wait_for("/travel-rule/error_report", 2, Duration::from_secs(20))
        .await;
    assert_eq!(
        calls[0].headers["idempotency-key"], calls[1].headers["idempotency-key"],
        "the same key on every attempt"
    );
    let page = until_items(&c, &s, "/admin/deliveries?status=sent", 2, "both sent").await;
    for d in page["items"].as_array().unwrap() {
        let outcomes: Vec<&str> = d["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes.last(), Some(&"sent"));
        assert!(
            outcomes.iter().filter(|o| **o == "failed").count() >= 1,
            "{outcomes:?}"
        );
    }
    let http = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "http")
        .unwrap();
    assert!(
        http["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["error"] == "HTTP 503"),
        "{http}"
    );
}

#[tokio::test]
async fn a_permanent_failure_ends_dead_and_an_admin_replay_delivers_it() {
    let dir = Dir::new();
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let sink = SmtpSink::start(dir.path(), &["--hold-file", hold.to_str().unwrap()]);
    let customers = customers(None).await;
    let compliance = Recorder::start().await;
    compliance.plan("/travel-rule/", vec![Reply::status(400)]);
    let tail = format!(
        "{}{}{}{FAST_RETRIES}",
        smtp(sink.port),
        service("customers", &customers, ""),
        service("compliance", &compliance, ""),
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("871230", "EMAIL")).await;
    accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
    // The email is refused on every attempt of the schedule (1 + 3), then dead.
    let email = the_action(&c, &s, "pomelo").await;
    let email_id = email["id"].as_str().unwrap().to_owned();
    let dead = until_status(&c, &s, &email_id, "dead").await;
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 4, "{dead}");
    // A 400 is permanent: dead after one attempt.
    let http = the_action(&c, &s, "verifyvasp").await;
    let dead = until_status(&c, &s, http["id"].as_str().unwrap(), "dead").await;
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(dead["attempts"][0]["outcome"], "rejected");
    assert!(s.logs().contains("delivery dead"));

    // A replay before the cause is fixed gets a whole new schedule, not one last try.
    let r = admin_post(&c, &s, &format!("/admin/deliveries/{email_id}/replay")).await;
    assert_eq!(r.status(), 202);
    let dead = until(
        &c,
        &s,
        &format!("/admin/deliveries/{email_id}"),
        "dead again after a full schedule",
        |a| a["status"] == "dead" && a["attempts"].as_array().is_some_and(|t| t.len() == 8),
    )
    .await;
    assert!(
        dead["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["outcome"] == "failed"),
        "{dead}"
    );

    // The causes are fixed; the operator replays: one through the API, the rest in bulk
    // through the CLI.
    std::fs::remove_file(&hold).unwrap();
    compliance.plan("/travel-rule/", vec![Reply::status(204)]);
    let r = admin_post(&c, &s, &format!("/admin/deliveries/{email_id}/replay")).await;
    assert_eq!(r.status(), 202);
    sink.wait_for(1, Duration::from_secs(20)).await;
    until_status(&c, &s, &email_id, "sent").await;
    let out = std::process::Command::new(BIN)
        .args([
            "deliveries",
            "replay",
            "--status",
            "dead",
            "--url",
            &s.url(""),
            "--token",
            ADMIN_TOKEN,
        ])
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 delivery(ies) scheduled again"));
    compliance
        .wait_for("/travel-rule/tx_report", 2, Duration::from_secs(20))
        .await;
    until_items(&c, &s, "/admin/deliveries?status=sent", 2, "both sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_delivery_completes_every_action_after_restart() {
    let dir = Dir::new();
    let compliance = Recorder::start().await;
    compliance.plan("/travel-rule/", vec![Reply::hang()]);
    let tail = format!(
        "{}{FAST_RETRIES}",
        service("compliance", &compliance, "timeout = \"60s\"")
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    let mut bodies = vec![];
    for i in 0..5 {
        let mut v: Value = serde_json::from_slice(&fixture("verifyvasp_tx_report.json")).unwrap();
        v["data"]["verificationUuid"] = json!(format!("64ab871b-14a3-47df-9b80-36800000000{i}"));
        bodies.push(serde_json::to_vec(&v).unwrap());
    }
    for b in &bodies {
        assert_eq!(vasp_request(&c, &s, b).send().await.unwrap().status(), 200);
    }
    // Every delivery is in flight (the service does not answer)...
    let first = compliance
        .wait_for("/travel-rule/tx_report", 5, Duration::from_secs(20))
        .await;
    until_items(&c, &s, "/admin/deliveries?status=sending", 5, "5 sending").await;
    // ...when the process dies.
    s.kill9();
    compliance.plan("/travel-rule/", vec![Reply::status(200)]);
    let s = Server::start_in(dir, &[("tail", &tail)]);
    let all = compliance
        .wait_for("/travel-rule/tx_report", 10, Duration::from_secs(30))
        .await;
    let page = until_items(&c, &s, "/admin/deliveries?status=sent", 5, "5 sent").await;
    for d in page["items"].as_array().unwrap() {
        let outcomes: Vec<&str> = d["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, vec!["interrupted", "sent"], "{d}");
    }
    // The resumed attempts carry the keys of the interrupted ones.
    let mut before: Vec<&String> = first
        .iter()
        .map(|r| &r.headers["idempotency-key"])
        .collect();
    let mut after: Vec<&String> = all[5..]
        .iter()
        .map(|r| &r.headers["idempotency-key"])
        .collect();
    before.sort();
    after.sort();
    assert_eq!(before, after);
    assert!(
        s.logs()
            .contains("resuming deliveries interrupted by a stop")
    );
}

#[tokio::test]
async fn an_otp_past_its_valid_for_is_never_sent_late() {
    let dir = Dir::new();
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let sink = SmtpSink::start(dir.path(), &["--hold-file", hold.to_str().unwrap()]);
    crate::routes::write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        r#"email::send(#{ to: "jan@example.com", subject: "Code", text: `Code ${event.data.otp}`, valid_for: "1500ms" });"#,
    );
    // A schedule that would go on retrying well past the message's validity.
    let tail = format!(
        "{}{}[delivery]\nschedule = [{}]\njitter = 0.0\n",
        smtp(sink.port),
        crate::routes::routes_config(dir.path(), "1s"),
        ["\"300ms\""; 12].join(", ")
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("555111", "EMAIL")).await;
    let a = the_action(&c, &s, "pomelo").await;
    let id = a["id"].as_str().unwrap().to_owned();
    let expired = until_status(&c, &s, &id, "expired").await;
    let attempts = expired["attempts"].as_array().unwrap();
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|t| t["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.len() >= 3, "tried while valid: {outcomes:?}");
    assert!(
        outcomes[..outcomes.len() - 1]
            .iter()
            .all(|o| *o == "failed"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.last(), Some(&"expired"));
    assert!(
        attempts.last().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("valid for 1500ms"),
        "{expired}"
    );
    assert!(outcomes.len() < 12, "expired before the schedule ran out");
    // The SMTP server recovers: the stale code is still not sent.
    std::fs::remove_file(&hold).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sink.mails().is_empty(), "an expired OTP is never sent");
    // Nor does a replay send it.
    let r = admin_post(&c, &s, &format!("/admin/deliveries/{id}/replay")).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("never sent late"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.mails().is_empty());
    assert_eq!(
        admin(&c, &s, &format!("/admin/deliveries/{id}")).await["status"],
        "expired"
    );
}

#[tokio::test]
async fn a_lookup_that_fails_for_a_moment_is_retried_and_one_that_is_refused_is_not() {
    let dir = Dir::new();
    let sink = SmtpSink::start(dir.path(), &[]);
    let customers = Recorder::start().await;
    customers.plan("/cards/card_gone/", vec![Reply::status(404)]);
    customers.plan(
        "/cards/",
        vec![
            Reply::status(503),
            Reply::status(503),
            Reply::json(json!({"phone": "+48500100200", "email": "jan@example.com"})),
        ],
    );
    let tail = format!(
        "{}{}[routes]\nlookup_retries = [\"200ms\", \"300ms\", \"300ms\"]\n",
        smtp(sink.port),
        service("customers", &customers, ""),
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_otp("246810", "EMAIL")).await;
    // Two 503s, then the answer: the email goes out once.
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert!(mails[0].data.contains("246810"));
    assert_eq!(customers.to("/cards/card_123456789/holder").len(), 3);
    let e = routed_event(&c, &s, "pomelo").await;
    assert_eq!(e["status"], "routed", "{e}");
    assert_eq!(e["actions"].as_array().unwrap().len(), 1, "{e}");

    // A 404 will not change by waiting: the event fails at once, to be replayed.
    let body = serde_json::to_vec(&json!({
        "token": {"origin": "APPLE_PAY", "card_id": "card_gone", "user_id": "user_1"},
        "otp": "135790", "to": "m***@example.com", "contact_method": "EMAIL",
    }))
    .unwrap();
    assert_eq!(
        pomelo_request(&c, &s, &body).send().await.unwrap().status(),
        204
    );
    let failed = until_items(&c, &s, "/admin/events?status=failed", 1, "the event failed").await;
    let error = failed["items"][0]["route"]["error"].as_str().unwrap_or("");
    assert!(error.contains("HTTP 404"), "{failed}");
    assert_eq!(failed["items"][0]["route"]["runs"], 1, "{failed}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        customers.to("/cards/card_gone/holder").len(),
        1,
        "no retry of a refused lookup"
    );
    assert_eq!(sink.mails().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_out_lookup_retries_do_not_hold_up_newer_ones() {
    let customers = Recorder::start().await;
    customers.plan("/cards/", vec![Reply::status(503)]);
    let compliance = Recorder::start().await;
    let tail = format!(
        "{}{}[routes]\nlookup_retries = [\"60s\"]\n",
        service("customers", &customers, ""),
        service("compliance", &compliance, ""),
    );
    let s = Server::start(&[("tail", &tail)]);
    let c = client();
    // More events than the router reads from the inbox at once (256), each waiting a
    // minute for its lookup to be tried again.
    let waiting = 300;
    for n in 0..waiting {
        let r = pomelo_request(&c, &s, &pomelo_otp(&format!("{n:06}"), "SMS"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while customers.to("/cards/card_123456789/holder").len() < waiting {
        assert!(
            std::time::Instant::now() < deadline,
            "every event had its first run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A newer event that needs no lookup is routed and delivered at once.
    accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
    compliance
        .wait_for("/travel-rule/tx_report", 1, Duration::from_secs(10))
        .await;
    let received = events(&c, &s, "provider=pomelo&status=received").await;
    assert!(!received.is_empty(), "the Pomelo events still wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_route_routes_each_event_once_after_restart() {
    let dir = Dir::new();
    let sink = SmtpSink::start(dir.path(), &[]);
    let customers = Recorder::start().await;
    // The lookup never answers: every route run is in the middle of its script.
    customers.plan("/cards/", vec![Reply::hang()]);
    let tail = format!(
        "{}{}[routes]\nlookup_timeout = \"60s\"\nlookup_budget = \"60s\"\n",
        smtp(sink.port),
        service("customers", &customers, "timeout = \"60s\""),
    );
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    let otps: Vec<String> = (0..3).map(|i| format!("81818{i}")).collect();
    for otp in &otps {
        accepted_pomelo(&c, &s, &pomelo_otp(otp, "EMAIL")).await;
    }
    customers
        .wait_for("/cards/card_123456789/holder", 3, Duration::from_secs(20))
        .await;
    // Killed while the three scripts wait on their lookups.
    s.kill9();
    customers.plan(
        "/cards/",
        vec![Reply::json(
            json!({"phone": "+48500100200", "email": "jan@example.com"}),
        )],
    );
    let s = Server::start_in(dir, &[("tail", &tail)]);
    let mails = sink.wait_for(3, Duration::from_secs(30)).await;
    for otp in &otps {
        assert_eq!(
            mails
                .iter()
                .filter(|m| m.data.contains(otp.as_str()))
                .count(),
            1,
            "{otp}"
        );
    }
    let page = until(&c, &s, "/admin/events?provider=pomelo", "3 routed", |p| {
        p["items"]
            .as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|e| e["status"] == "routed"))
    })
    .await;
    for e in page["items"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        let full = admin(&c, &s, &format!("/admin/events/{id}")).await;
        assert_eq!(full["actions"].as_array().unwrap().len(), 1, "{full}");
    }
    let sent = until_items(&c, &s, "/admin/deliveries?status=sent", 3, "3 sent").await;
    assert_eq!(sent["items"].as_array().unwrap().len(), 3);
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails().len(), 3);
    assert_eq!(
        admin(&c, &s, "/admin/deliveries").await["items"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "one action per event, none left over from the killed runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_keeps_to_its_concurrency_and_a_stuck_one_holds_up_no_other() {
    let gateway = Recorder::start().await;
    // The SMS gateway takes every message and never answers.
    gateway.plan("/v1/messages", vec![Reply::hang()]);
    let customers = customers(None).await;
    let compliance = Recorder::start().await;
    let tail = format!(
        "[channels.sms]\nkind = \"json\"\nurl = \"{}/v1/messages\"\nconcurrency = 2\ntimeout = \"60s\"\n{}{}",
        gateway.url(),
        service("customers", &customers, ""),
        service("compliance", &compliance, ""),
    );
    let s = Server::start(&[("tail", &tail)]);
    let c = client();
    for n in 0..5 {
        accepted_pomelo(&c, &s, &pomelo_otp(&format!("70000{n}"), "SMS")).await;
    }
    gateway
        .wait_for("/v1/messages", 2, Duration::from_secs(20))
        .await;
    // The HTTP channel is not held up by the stuck SMS gateway.
    accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
    compliance
        .wait_for("/travel-rule/tx_report", 1, Duration::from_secs(20))
        .await;
    until_items(&c, &s, "/admin/deliveries?channel=sms", 5, "5 SMS queued").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gateway.to("/v1/messages").len(),
        2,
        "no more than `concurrency` messages at once"
    );
    let sending = admin(&c, &s, "/admin/deliveries?channel=sms&status=sending").await;
    assert_eq!(sending["items"].as_array().unwrap().len(), 2, "{sending}");
}
