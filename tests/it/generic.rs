//! Generic providers from configuration: every preset and two hand-configured HMAC
//! providers, each signed by an independent implementation (`tests/tools/sign.py`: the
//! `standardwebhooks` package, the `stripe` library, Python's hmac from each provider's
//! documented recipe), plus bearer, Basic and `none`.

use std::{io::Write, process::Stdio};

use serde_json::{Value, json};

use crate::support::*;

/// One provider under test.
struct Case {
    name: &'static str,
    /// The `[providers.<name>]` table, without `secrets` (added: `[new, old]`).
    table: &'static str,
    /// The signer's scheme (`tests/tools/sign.py`).
    scheme: &'static str,
    new_secret: &'static str,
    old_secret: &'static str,
    /// Signs a timestamp (stale and future requests are refused).
    timestamped: bool,
    /// Headers the provider adds besides the signature (event type, delivery id).
    extra: fn(&str) -> Vec<(&'static str, String)>,
    /// The event type the first body is stored as.
    event_type: &'static str,
    /// The configured answer (status, body).
    answer: (u16, &'static str),
    /// The body is a form, not JSON.
    form: bool,
}

fn sign(
    scheme: &str,
    secret: &str,
    body: &str,
    ts: i64,
    id: &str,
    path: &str,
) -> Vec<(String, String)> {
    let mut child = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let req = json!({"scheme": scheme, "secret": secret, "body": body, "timestamp": ts,
                     "id": id, "method": "POST", "path": path});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sign.py failed for {scheme}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "svix",
            table: "kind = \"standard-webhooks\"\npath = \"/hooks/standard\"",
            scheme: "standard-webhooks",
            new_secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            old_secret: "whsec_b2xkLXNlY3JldC1vZi10aGUtc2VuZGVyLTAx",
            timestamped: true,
            extra: |_| vec![],
            event_type: "invoice_paid",
            answer: (204, ""),
            form: false,
        },
        Case {
            name: "stripe",
            table: "kind = \"stripe\"\npath = \"/hooks/stripe\"\nanswer = { status = 200, body = '{\"received\":true}' }",
            scheme: "stripe",
            new_secret: "whsec_test_new_secret_0123456789",
            old_secret: "whsec_test_old_secret_0123456789",
            timestamped: true,
            extra: |_| vec![],
            event_type: "invoice_paid",
            answer: (200, "{\"received\":true}"),
            form: false,
        },
        Case {
            name: "github",
            table: "kind = \"github\"\npath = \"/hooks/github\"",
            scheme: "github",
            new_secret: "github-new-secret-0123456789",
            old_secret: "github-old-secret-0123456789",
            timestamped: false,
            extra: |id| {
                vec![
                    ("X-GitHub-Event", "push".into()),
                    ("X-GitHub-Delivery", id.into()),
                ]
            },
            event_type: "push",
            answer: (204, ""),
            form: false,
        },
        Case {
            name: "shopify",
            table: "kind = \"shopify\"\npath = \"/hooks/shopify\"\nanswer = { status = 200 }",
            scheme: "shopify",
            new_secret: "shpss_new_secret_0123456789",
            old_secret: "shpss_old_secret_0123456789",
            timestamped: false,
            extra: |id| {
                vec![
                    ("X-Shopify-Topic", "orders/create".into()),
                    ("X-Shopify-Webhook-Id", id.into()),
                ]
            },
            event_type: "orders_create",
            answer: (200, ""),
            form: false,
        },
        Case {
            name: "slack",
            table: "kind = \"slack\"\npath = \"/hooks/slack\"\nanswer = { status = 200, body = \"ok\", content_type = \"text/plain\" }",
            scheme: "slack",
            new_secret: "8f742231b10e8888abcd99yyyzzz85a5",
            old_secret: "0ld742231b10e8888abcd99yyyzzz85a5",
            timestamped: true,
            extra: |_| vec![],
            event_type: "invoice_paid",
            answer: (200, "ok"),
            form: false,
        },
        Case {
            name: "acme",
            table: r#"kind = "generic"
path = "/hooks/acme"
event_type = { json = "/type" }
dedup_key = { json = "/id" }
dedup_window = "1h"
secret_paths = ["/data/otp"]
answer = { status = 202, body = '{"ok":1}' }
[providers.acme.auth]
scheme = "hmac"
algorithm = "sha512"
key_encoding = "hex"
signature_header = "X-Acme-Signature"
signature_prefix = "sig="
signature_encoding = "base64"
signed_content = "{method}\n{path}\n{timestamp}\n{body}"
timestamp_header = "X-Acme-Timestamp"
tolerance = "2m""#,
            scheme: "acme",
            new_secret: "00112233445566778899aabbccddeeff0011223344556677",
            old_secret: "ffeeddccbbaa99887766554433221100ffeeddccbbaa9988",
            timestamped: true,
            extra: |_| vec![],
            event_type: "invoice_paid",
            answer: (202, "{\"ok\":1}"),
            form: false,
        },
        Case {
            name: "legacy",
            table: r#"kind = "generic"
path = "/hooks/legacy"
event_type = { constant = "ping" }
auth = { scheme = "hmac", algorithm = "sha1", signature_header = "X-Legacy-Sig", signature_encoding = "hex" }"#,
            scheme: "legacy",
            new_secret: "legacy-new-secret-0123",
            old_secret: "legacy-old-secret-0123",
            timestamped: false,
            extra: |_| vec![],
            event_type: "ping",
            answer: (204, ""),
            form: false,
        },
        Case {
            name: "twilio",
            table: "kind = \"twilio\"\npath = \"/hooks/twilio\"\nauth = { public_url = \"https://hooks.example.com\" }\nanswer = { status = 200, body = '<Response/>', content_type = \"text/xml\" }",
            scheme: "twilio",
            new_secret: "twilio-auth-token-new-0123",
            old_secret: "twilio-auth-token-old-0123",
            timestamped: false,
            extra: |id| vec![("I-Twilio-Idempotency-Token", id.into())],
            event_type: "delivered",
            answer: (200, "<Response/>"),
            form: true,
        },
    ]
}

fn body(id: &str) -> String {
    json!({"id": id, "event_id": id, "type": "invoice.paid", "data": {"otp": "123456", "amount": 1000}})
        .to_string()
}

fn form_body(id: &str) -> String {
    format!(
        "MessageSid={id}&MessageStatus=delivered&Price=1000&Body=Hello+world%21&To=%2B15005550006"
    )
}

fn config_tail(case: &Case, routes: &std::path::Path) -> String {
    let (first, rest) = case.table.split_once('\n').unwrap_or((case.table, ""));
    format!(
        "[routes]\ndir = \"{}\"\n\n[providers.{}]\n{first}\nsecrets = [\"{}\", \"{}\"]\n{rest}\n",
        routes.display(),
        case.name,
        case.new_secret,
        case.old_secret,
    )
}

async fn post(
    c: &reqwest::Client,
    s: &Server,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> reqwest::Response {
    let ct = if body.starts_with('{') {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut r = c
        .post(s.url(path))
        .header("content-type", ct)
        .body(body.to_owned());
    for (k, v) in headers {
        r = r.header(k.as_str(), v.as_str());
    }
    r.send().await.unwrap()
}

async fn exercise(case: Case) {
    let dir = Dir::new();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(routes.join(case.name)).unwrap();
    std::fs::write(
        routes
            .join(case.name)
            .join(format!("{}.rhai", case.event_type)),
        "log::info(`routed ${event.type}`);\n",
    )
    .unwrap();
    let tail = config_tail(&case, &routes);
    let s = Server::start_in(dir, &[("tail", &tail)]);
    let c = client();
    let path = format!(
        "/hooks/{}",
        if case.name == "svix" {
            "standard"
        } else {
            case.name
        }
    );
    let name = case.name;
    let body = |id: &str| if case.form { form_body(id) } else { body(id) };
    let signed = |secret: &str, body: &str, ts: i64, id: &str| {
        let mut h = sign(case.scheme, secret, body, ts, id, &path);
        h.extend((case.extra)(id).into_iter().map(|(k, v)| (k.to_owned(), v)));
        h
    };

    // Valid: the configured answer.
    let b1 = body("evt_1");
    let h1 = signed(case.new_secret, &b1, now(), "msg_1");
    let (status, _, answer_body) = answer(post(&c, &s, &path, &h1, &b1).await).await;
    assert_eq!(
        status,
        case.answer.0,
        "{name}: {}",
        String::from_utf8_lossy(&answer_body)
    );
    assert_eq!(answer_body, case.answer.1.as_bytes(), "{name}");

    // Tampered body, wrong secret: 401.
    let tampered = b1.replace("1000", "9000");
    let r = post(&c, &s, &path, &h1, &tampered).await;
    assert_eq!(r.status(), 401, "{name}: tampered");
    let wrong_secret = match case.scheme {
        "standard-webhooks" => "whsec_d3Jvbmctc2VjcmV0LW9mLXRoZS1zZW5kZXI=",
        "acme" => "99999999999999999999999999999999",
        _ => "wrong-secret-of-the-same-size-0123",
    };
    let wrong = signed(wrong_secret, &b1, now(), "msg_1");
    assert_eq!(
        post(&c, &s, &path, &wrong, &b1).await.status(),
        401,
        "{name}: wrong secret"
    );
    // Unsigned.
    assert_eq!(
        post(&c, &s, &path, &[], &b1).await.status(),
        401,
        "{name}: unsigned"
    );

    // Stale and future timestamps.
    if case.timestamped {
        let b = body("evt_time");
        for ts in [now() - 3600, now() + 3600] {
            let h = signed(case.new_secret, &b, ts, "msg_time");
            assert_eq!(
                post(&c, &s, &path, &h, &b).await.status(),
                401,
                "{name}: ts {ts}"
            );
        }
    }

    // A rotated secret: the old one still verifies.
    let b2 = body("evt_2");
    let h2 = signed(case.old_secret, &b2, now(), "msg_2");
    assert_eq!(
        post(&c, &s, &path, &h2, &b2).await.status(),
        case.answer.0,
        "{name}: old secret"
    );

    // Concurrent duplicates: identical answers, one event.
    let b3 = body("evt_3");
    let h3 = signed(case.new_secret, &b3, now(), "msg_3");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (c, url, h, b) = (c.clone(), s.url(&path), h3.clone(), b3.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = c
                .post(url)
                .header("content-type", "application/json")
                .body(b);
            for (k, v) in &h {
                r = r.header(k.as_str(), v.as_str());
            }
            answer(r.send().await.unwrap()).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "{name}: {answers:?}"
    );
    assert_eq!(answers[0].0, case.answer.0, "{name}");

    // Three events (1, 2 and 3), each routed by the provider's own script.
    until_routed(&c, &s).await;
    let evs = events(&c, &s, &format!("provider={name}")).await;
    assert_eq!(evs.len(), 3, "{name}: {evs:?}");
    for e in &evs {
        assert_eq!(e["type"], case.event_type, "{name}: {e}");
        assert_eq!(e["status"], "routed", "{name}: {e}");
        let detail = admin(
            &c,
            &s,
            &format!("/admin/events/{}", e["id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(
            detail["route"]["script"],
            format!("{name}/{}.rhai", case.event_type),
            "{name}: {detail}"
        );
    }
    assert!(s.logs().contains("routed "), "{name}: the script ran");
    let metrics = get_text(&c, &s, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "switchboard_auth_failures_total{{provider=\"{name}\""
        )),
        "{name}: refusals are counted"
    );

    // The operation is in the served spec, at its path, tagged with the provider.
    let spec: Value = get_json(&c, &s, "/openapi.json").await;
    let op = &spec["paths"][&path]["post"];
    assert_eq!(op["tags"][0], name, "{name}: {op}");
    assert!(
        spec["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == name)
    );
}

#[tokio::test]
async fn standard_webhooks_preset() {
    exercise(cases().remove(0)).await;
}

#[tokio::test]
async fn stripe_preset() {
    exercise(cases().remove(1)).await;
}

#[tokio::test]
async fn github_preset() {
    exercise(cases().remove(2)).await;
}

#[tokio::test]
async fn shopify_preset() {
    exercise(cases().remove(3)).await;
}

#[tokio::test]
async fn slack_preset() {
    exercise(cases().remove(4)).await;
}

#[tokio::test]
async fn twilio_preset() {
    exercise(cases().remove(7)).await;
}

#[tokio::test]
async fn a_hand_configured_sha512_provider_over_method_path_and_time() {
    exercise(cases().remove(5)).await;
}

#[tokio::test]
async fn a_hand_configured_legacy_sha1_provider() {
    exercise(cases().remove(6)).await;
}

#[tokio::test]
async fn bearer_basic_and_key_header_providers() {
    let tail = r#"
[providers.tok]
kind = "generic"
path = "/hooks/tok"
secrets = ["bearer-token-new-0123", "bearer-token-old-0123"]
auth = { scheme = "bearer" }

[providers.basic]
kind = "generic"
path = "/hooks/basic"
secrets = ["basic-password-0123"]
auth = { scheme = "basic", username = "acme" }

[providers.keyed]
kind = "generic"
path = "/hooks/keyed"
secrets = ["api-key-value-0123"]
auth = { scheme = "header", header = "X-Api-Key" }
"#;
    let s = Server::start(&[("tail", tail)]);
    let c = client();
    let b = body("evt_b");
    let send =
        |path: &str, h: (&str, String)| c.post(s.url(path)).header(h.0, h.1).body(b.clone()).send();
    assert_eq!(
        send(
            "/hooks/tok",
            ("authorization", "Bearer bearer-token-old-0123".into())
        )
        .await
        .unwrap()
        .status(),
        204
    );
    assert_eq!(
        send(
            "/hooks/tok",
            ("authorization", "Bearer bearer-token-new-012".into())
        )
        .await
        .unwrap()
        .status(),
        401
    );
    use base64::Engine;
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    assert_eq!(
        send(
            "/hooks/basic",
            ("authorization", basic("acme", "basic-password-0123"))
        )
        .await
        .unwrap()
        .status(),
        204
    );
    assert_eq!(
        send(
            "/hooks/basic",
            ("authorization", basic("other", "basic-password-0123"))
        )
        .await
        .unwrap()
        .status(),
        401
    );
    assert_eq!(
        send("/hooks/keyed", ("x-api-key", "api-key-value-0123".into()))
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        send("/hooks/keyed", ("x-api-key", "api-key-value-0124".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    // A body that is not JSON is kept in quarantine, answered like any other.
    let r = c
        .post(s.url("/hooks/tok"))
        .bearer_auth("bearer-token-new-0123")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let q = until_items(&c, &s, "/admin/quarantine", 1, "the quarantined body").await;
    assert_eq!(q["items"][0]["provider"], "tok");
    // Admin replay: the kept body is parsed again by its provider (still not JSON), and a
    // routed event routes again.
    let id = q["items"][0]["id"].as_str().unwrap().to_owned();
    let r = admin_post(&c, &s, &format!("/admin/events/{id}/replay")).await;
    assert_eq!(r.status(), 422, "still unparseable");
    assert!(r.text().await.unwrap().contains("not JSON"));
    until_routed(&c, &s).await;
    let routed = events(&c, &s, "provider=tok&status=routed").await;
    let id = routed[0]["id"].as_str().unwrap().to_owned();
    let r = admin_post(&c, &s, &format!("/admin/events/{id}/replay")).await;
    assert_eq!(r.status(), 202);
}

#[test]
fn none_is_refused_off_loopback_and_bad_settings_name_file_and_key() {
    let dir = Dir::new();
    let path = dir.path().join("switchboard.toml");
    let write = |text: &str| std::fs::write(&path, text).unwrap();
    let check = || {
        let out = std::process::Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    write(
        "[server]\nlisten = \"0.0.0.0:0\"\n[providers.open]\nkind = \"generic\"\npath = \"/hooks/open\"\nauth = { scheme = \"none\" }\n",
    );
    let (ok, out) = check();
    assert!(
        !ok && out.contains("providers.open.auth.scheme") && out.contains("loopback"),
        "{out}"
    );
    write(
        "[server]\nlisten = \"127.0.0.1:0\"\n[providers.open]\nkind = \"generic\"\npath = \"/hooks/open\"\nauth = { scheme = \"none\" }\n",
    );
    let (ok, out) = check();
    assert!(ok, "{out}");
    write("[providers.gh]\nkind = \"github\"\npath = \"/hooks/gh\"\nsecrets = [\"tooshort\"]\n");
    let (ok, out) = check();
    assert!(
        !ok && out.contains("providers.gh.secrets[0]") && out.contains("switchboard.toml"),
        "{out}"
    );
    write(
        "[providers.gh]\nkind = \"github\"\npath = \"/hooks/gh\"\nauth = { signed_content = \"{nope}\" }\n",
    );
    let (ok, out) = check();
    assert!(
        !ok && out.contains("providers.gh")
            && out.contains("{nope}")
            && out.contains("switchboard.toml"),
        "{out}"
    );
    write(
        "[providers.gh]\nkind = \"github\"\npath = \"/hooks/gh\"\nsecrets = [\"a-long-enough-secret-0\"]\nauth = { algorithm = \"sha1\" }\n",
    );
    let (ok, out) = check();
    assert!(ok && out.contains("legacy"), "{out}");
}

/// `switchboard simulate <name>` signs a generic provider's sample as it is configured:
/// with its configured secret, and with a development secret it generated itself.
#[tokio::test]
async fn simulate_signs_generic_providers_as_configured() {
    let dir = Dir::new();
    let tail = r#"
[providers.stripe]
kind = "stripe"
path = "/hooks/stripe"
secrets = ["whsec_simulated-secret-0123456789"]

[providers.billing]
kind = "standard-webhooks"
path = "/hooks/billing"
"#;
    let s = Server::start_env(
        dir.clone(),
        &[("tail", tail), ("dev", "")],
        &[("SWITCHBOARD_DEV__SECRETS", "true")],
    );
    let target = format!("http://{}", s.addr);
    let config = dir.path().join("switchboard.toml");
    for provider in ["stripe", "billing"] {
        let out = std::process::Command::new(BIN)
            .args(["simulate", provider, "--target", &target, "--repeat", "3"])
            .args(["--config", config.to_str().unwrap()])
            .env_remove("SWITCHBOARD_CONFIG")
            .env("SWITCHBOARD_DEV__SECRETS", "true")
            .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{provider}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("-> 204"), "{provider}: {stdout}");
        let c = client();
        let evs = events(&c, &s, &format!("provider={provider}")).await;
        assert_eq!(evs.len(), 1, "{provider}: three copies, one event");
    }
    let secrets = std::fs::read_to_string(dir.data().join("dev-secrets.toml")).unwrap();
    assert!(secrets.contains("billing_secret = \"whsec_"), "{secrets}");
}

/// A generic provider authenticated by mutual TLS with a pin, on its own listener; a
/// certificate of the same CA that is not pinned is refused, and the provider is not
/// served on `[server]`. `none` passes `check` on a mutual-TLS listener.
#[tokio::test]
async fn mutual_tls_generic_providers_are_pinned_and_served_on_their_listener() {
    let dir = Dir::new();
    let pki = crate::pki::Pki::new(dir.path());
    switchboard(
        &pki.dir,
        &[
            "ca",
            "issue-client",
            "--dir",
            "ca",
            "--name",
            "other",
            "--out-cert",
            "other.crt",
            "--out-key",
            "other.key",
        ],
    );
    let fp = pki.fingerprint("provider.crt");
    let tail = format!(
        r#"
[listeners.partners]
listen = "127.0.0.1:0"
providers = ["partner", "open"]
tls = {{ cert = "{cert}", key = "{key}", client_ca = "{ca}" }}

[providers.partner]
kind = "generic"
path = "/hooks/partner"
auth = {{ scheme = "mtls", pin_sha256 = ["{fp}"] }}

[providers.open]
kind = "generic"
path = "/hooks/open"
auth = {{ scheme = "none" }}
"#,
        cert = pki.path("server.crt"),
        key = pki.path("server.key"),
        ca = pki.path("ca/ca.crt"),
    );
    let s = Server::start_in(dir, &[("tail", &tail)]);
    let url = |p: &str| format!("https://{}{p}", s.listeners["partners"]);
    let b = body("evt_m");
    let pinned = pki.provider();
    let r = pinned
        .post(url("/hooks/partner"))
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let other = pki.client(Some(("other.crt", "other.key")));
    let r = other
        .post(url("/hooks/partner"))
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "same CA, not pinned");
    let r = other
        .post(url("/hooks/open"))
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "`none` behind mutual TLS");
    let r = client()
        .post(s.url("/hooks/partner"))
        .body(b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "served only on its listener");
    let evs = events(&client(), &s, "provider=partner").await;
    assert_eq!(evs.len(), 1);
    assert!(
        evs[0]["meta"]["client_sha256"]
            .as_str()
            .is_some_and(|f| f == fp)
    );
}
