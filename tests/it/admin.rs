use std::time::Duration;

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
        let r = admin_get(&c, &s, &format!("/admin/events?{q}")).await;
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
    let missing = admin_get(&c, &s, "/admin/events/01a209d9-581e-7648-bd73-9b840c0b6b5a").await;
    assert_eq!(missing.status(), 404);
    let bad = admin_get(&c, &s, "/admin/events/nope").await;
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

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Sends `head` and reads the answer's status line, without sending a byte of body.
async fn status_without_body(s: &Server, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    // The request timeout is two minutes: an answer within this wait was not a timeout.
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
        .await
        .expect("an answer before any body was sent")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn admin_bodies_are_limited_with_or_without_content_length() {
    let s = Server::start(&[("server", "request_timeout = \"120s\"")]);
    // A declared 64 MiB is refused at once, on the admin API and the console alike.
    for path in ["/admin/replay", "/admin/routes/try", "/console/session"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        );
        let answer = status_without_body(&s, &head).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }

    // 200 MiB chunked: refused once past the limit; memory does not grow with it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = client();
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let before = rss(s.pid());
    let conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let head = format!(
        "POST /admin/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let chunk = {
        let mut c = format!("{:x}\r\n", 1 << 20).into_bytes();
        c.extend(std::iter::repeat_n(b' ', 1 << 20));
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut sent = 0usize;
    for _ in 0..200 {
        if wr.write_all(&chunk).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = wr.write_all(b"0\r\n\r\n").await;
    drop(wr);
    let answer = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "after {sent} MiB: {answer}"
    );
    assert!(answer.contains("payload_too_large"), "{answer}");
    let grown = rss(s.pid()).saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "RSS grew by {} MiB for a refused body",
        grown >> 20
    );
    // Under the limit, the admin API still works.
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let r = c
        .post(s.url("/admin/replay"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"events": {"status": "failed"}, "dryRun": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn try_route(c: &reqwest::Client, s: &Server, body: Value) -> (u16, Value) {
    let r = c
        .post(s.url("/admin/routes/try"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_script_is_tried_against_a_stored_event_without_queuing_anything() {
    use crate::servers::{Recorder, Reply};
    let customers = Recorder::start().await;
    customers.plan(
        "/cards/",
        vec![Reply::json(json!({"phone": "+48500100200"}))],
    );
    let tail = format!("[services.customers]\nbase_url = \"{}\"\n", customers.url());
    let s = Server::start(&[("tail", &tail)]);
    let c = client();
    let body = serde_json::to_vec(&json!({
        "token": {"origin": "GOOGLE_PAY", "card_id": "card_42", "user_id": "u"},
        "otp": "345678", "to": "+48*****200", "contact_method": "SMS",
    }))
    .unwrap();
    accepted_pomelo(&c, &s, &body).await;
    let e = routed_event(&c, &s, "pomelo").await;
    let id = e["id"].as_str().unwrap().to_owned();
    let deliveries = admin(&c, &s, "/admin/deliveries").await["items"]
        .as_array()
        .unwrap()
        .len();
    let calls = customers.requests().len();

    // The current script; its lookup has no answer (not typed in, not live).
    let (st, r) = try_route(&c, &s, json!({"eventId": id})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["script"], "pomelo/tokenization_otp.rhai");
    assert_eq!(r["lookups"][0]["answeredBy"], "none");
    assert_eq!(r["lookups"][0]["path"], "/cards/card_42/holder");
    assert!(
        r["error"].as_str().unwrap().contains("no answer typed in"),
        "{r}"
    );

    // Answered from a typed value: the SMS it would queue, the OTP masked.
    let (_, r) = try_route(
        &c,
        &s,
        json!({"eventId": id, "answers": [
            {"service": "customers", "path": "/cards/card_42/holder", "answer": {"phone": "+48111222333"}}
        ]}),
    )
    .await;
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["actions"][0]["channel"], "sms");
    assert_eq!(r["actions"][0]["payload"]["to"], "+48111222333");
    let text = r["actions"][0]["payload"]["text"].as_str().unwrap();
    assert!(
        text.contains("******") && !text.contains("345678"),
        "{text}"
    );
    assert_eq!(r["lookups"][0]["answeredBy"], "typed");
    assert_eq!(customers.requests().len(), calls, "typed: no call");

    // Live: the configured service answers.
    let (_, r) = try_route(&c, &s, json!({"eventId": id, "live": true})).await;
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["actions"][0]["payload"]["to"], "+48500100200");
    assert_eq!(r["lookups"][0]["answeredBy"], "live");
    assert_eq!(r["lookups"][0]["ok"], true);
    assert_eq!(customers.requests().len(), calls + 1);

    // Pasted text: its output, its compile errors with line and column, and the limits of
    // a real run.
    let (_, r) = try_route(
        &c,
        &s,
        json!({"eventId": id, "script": "print(`otp ${event.data.otp} for ${event.data.token.card_id}`);\ndebug(1 + 1);"}),
    )
    .await;
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["script"], "(pasted)");
    assert_eq!(r["log"][0], "otp ****** for card_42");
    assert!(r["log"][1].as_str().unwrap().starts_with("debug: 2"), "{r}");
    let (_, r) = try_route(
        &c,
        &s,
        json!({"eventId": id, "script": "let a = 1;\nlet b = ;\n"}),
    )
    .await;
    assert_eq!(r["outcome"], "compile_error", "{r}");
    assert_eq!(r["line"], 2);
    assert!(r["column"].as_u64().is_some(), "{r}");
    let (_, r) = try_route(&c, &s, json!({"eventId": id, "script": "loop { }"})).await;
    assert_eq!(r["outcome"], "failed");
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("too many operations") || err.contains("deadline"),
        "{err}"
    );
    let (_, r) = try_route(&c, &s, json!({"eventId": id, "script": "eval(\"1\")"})).await;
    assert_ne!(r["outcome"], "ok", "eval stays disabled: {r}");

    // Nothing was queued by any of it.
    let after = admin(&c, &s, &format!("/admin/events/{id}")).await;
    // The same actions (their delivery may have moved on meanwhile), no new one.
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&after), ids(&e));
    assert_eq!(after["route"]["runs"], 1);
    assert_eq!(
        admin(&c, &s, "/admin/deliveries").await["items"]
            .as_array()
            .unwrap()
            .len(),
        deliveries
    );

    // Refusals.
    let (st, _) = try_route(
        &c,
        &s,
        json!({"eventId": "01a209d9-581e-7648-bd73-9b840c0b6b5a"}),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = try_route(&c, &s, json!({"eventId": "nope"})).await;
    assert_eq!(st, 400);
    let (st, _) = try_route(&c, &s, json!({"eventId": id, "surprise": 1})).await;
    assert_eq!(st, 400);
    let r = c
        .post(s.url("/admin/routes/try"))
        .json(&json!({"eventId": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The same from the command line, as CI would run it before deploying a script.
    let cli = |args: &[&str]| {
        let url = s.url("");
        let mut all = vec!["events", "try", id.as_str()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--url", &url, "--token", ADMIN_TOKEN]);
        std::process::Command::new(BIN)
            .args(&all)
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap()
    };
    let out = cli(&[
        "--answer",
        r#"customers:/cards/card_42/holder={"phone":"+48111222333"}"#,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("would queue sms") && stdout.contains("+48111222333"),
        "{stdout}"
    );
    assert!(!stdout.contains("345678"), "{stdout}");
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), "let a = 1;\nlet b = ;\n").unwrap();
    let out = cli(&["--script", broken.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The text of a script, for the editor; only scripts the server knows.
    let src = admin(
        &c,
        &s,
        "/admin/routes/source?file=pomelo/tokenization_otp.rhai",
    )
    .await;
    assert!(src["text"].as_str().unwrap().contains("http::get"), "{src}");
    let r = admin_get(&c, &s, "/admin/routes/source?file=../Cargo.toml").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn recent_counts_time_windows_and_replay_dry_runs() {
    let s = Server::start(&[]);
    let c = client();
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    for i in 0..3 {
        accepted_pomelo(&c, &s, &pomelo_body(&format!("10000{i}"))).await;
    }
    for f in ["verifyvasp_tx_report.json", "verifyvasp_error_report.json"] {
        accepted_vasp(&c, &s, &fixture(f)).await;
    }
    until_routed(&c, &s).await;
    let end = chrono::Utc::now() + chrono::Duration::seconds(1);

    let stats = admin(&c, &s, "/admin/stats").await;
    let count = |provider: &str, status: &str| {
        stats["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["provider"] == provider && x["status"] == status)
            .map(|x| {
                (
                    x["lastHour"].as_u64().unwrap(),
                    x["lastDay"].as_u64().unwrap(),
                )
            })
    };
    assert_eq!(count("pomelo", "routed"), Some((3, 3)), "{stats}");
    assert_eq!(count("verifyvasp", "failed"), Some((2, 2)), "{stats}");
    // Per channel, over every status (a delivery may be `sending` or `sent` by now).
    let logged: u64 = stats["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["channel"] == "log")
        .map(|d| d["lastHour"].as_u64().unwrap())
        .sum();
    assert!(logged >= 3, "{stats}");

    // Time windows on the listing, with paging inside them.
    let q = |k: &str, t: chrono::DateTime<chrono::Utc>| {
        format!(
            "{k}={}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    };
    assert_eq!(events(&c, &s, &q("since", start)).await.len(), 5);
    assert_eq!(events(&c, &s, &q("since", end)).await.len(), 0);
    assert_eq!(events(&c, &s, &q("until", start)).await.len(), 0);
    assert_eq!(events(&c, &s, &q("until", end)).await.len(), 5);
    let window = format!("{}&{}&provider=pomelo", q("since", start), q("until", end));
    assert_eq!(events(&c, &s, &window).await.len(), 3);
    let page = admin(&c, &s, &format!("/admin/events?{window}&limit=2")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let rest = admin(
        &c,
        &s,
        &format!(
            "/admin/events?{window}&limit=2&before={}",
            page["next"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    let r = admin_get(&c, &s, "/admin/events?since=yesterday").await;
    assert_eq!(r.status(), 400);

    // A dry run counts and changes nothing; the replay then does what it said.
    let replay = |dry: bool| {
        c.post(s.url("/admin/replay"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"events": {"status": "failed"}, "dryRun": dry}))
            .send()
    };
    let dry: Value = replay(true).await.unwrap().json().await.unwrap();
    assert_eq!(dry["events"], 2);
    assert_eq!(dry["dryRun"], true);
    assert_eq!(events(&c, &s, "status=failed").await.len(), 2);
    let done: Value = replay(false).await.unwrap().json().await.unwrap();
    assert_eq!(done["events"], 2);
    assert_eq!(done["dryRun"], false);
    until(&c, &s, "/admin/events?status=failed", "failed again", |p| {
        p["items"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|e| e["route"]["runs"] == 2))
    })
    .await;
}

#[tokio::test]
async fn every_admin_answer_has_a_realistic_example_in_the_spec() {
    let s = Server::start(&[]);
    let spec: Value = get_json(&client(), &s, "/openapi.json").await;
    let schemas = &spec["components"]["schemas"];
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        if !path.starts_with("/admin") {
            continue;
        }
        for (method, op) in ops.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                if !status.starts_with('2') {
                    continue;
                }
                let r = resp["content"]["application/json; charset=utf-8"]["schema"]["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} {status}: {resp}"));
                let name = r.trim_start_matches("#/components/schemas/");
                let example = &schemas[name]["example"];
                assert!(
                    example.is_object(),
                    "{method} {path}: {name} has no example"
                );
                let text = example.to_string();
                assert!(!text.contains("\"string\""), "{name}: {text}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked} answers checked");
    // Nested shapes carry theirs too (Swagger shows them in lists).
    for name in [
        "EventView",
        "ActionView",
        "AttemptView",
        "RouteView",
        "CompileErrorView",
    ] {
        assert!(schemas[name]["example"].is_object(), "{name}");
    }
    assert_eq!(schemas["EventView"]["example"]["data"]["otp"], "******");
}
