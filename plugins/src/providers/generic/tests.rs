use serde_json::json;

use super::{config::*, verify::*, *};

fn generic(table: serde_json::Value) -> Generic {
    let p = parse("acme", table).unwrap();
    p.as_any().downcast_ref::<Generic>().unwrap().clone()
}

#[test]
fn templates_name_their_unknown_placeholders() {
    assert_eq!(
        template("v0:{timestamp}:{body}").unwrap(),
        vec![
            Part::Text("v0:".into()),
            Part::Timestamp,
            Part::Text(":".into()),
            Part::Body
        ]
    );
    assert!(template("{bogus}").unwrap_err().contains("{bogus}"));
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let e = parse("acme", json!({"kind": "generic", "path": "/hooks/a"})).unwrap_err();
    assert!(e.starts_with("auth.scheme"), "{e}");
    let e = parse(
        "acme",
        json!({"kind": "generic", "path": "/hooks/a", "auth": {"scheme": "hmac", "signature_header": "X-S", "signed_content": "{timestamp}.{body}"}}),
    )
    .unwrap_err();
    assert!(e.starts_with("auth.timestamp_header"), "{e}");
    let e = parse("acme", json!({"kind": "stripe", "path": "/x", "bogus": 1})).unwrap_err();
    assert!(e.contains("bogus"), "{e}");
    let e = parse("acme", json!({"path": "/x"})).unwrap_err();
    assert!(e.contains("kind"), "{e}");
    let e = parse(
        "acme",
        json!({"kind": "stripe", "path": "/x", "answer": {"status": 500}}),
    )
    .unwrap_err();
    assert!(e.starts_with("answer.status"), "{e}");
}

#[test]
fn short_hmac_secrets_are_refused() {
    let g = generic(json!({"kind": "github", "path": "/gh", "secrets": ["tiny5"]}));
    let e = g.auth().unwrap_err().to_string();
    assert!(
        e.contains("providers.acme.secrets[0]") && e.contains("16"),
        "{e}"
    );
    assert!(!e.contains("tiny5"), "{e}");
}

#[test]
fn stripe_headers_with_several_signatures_verify_with_any_secret() {
    let g = generic(json!({"kind": "stripe", "path": "/s",
        "secrets": ["whsec_new-secret-0123456789", "whsec_old-secret-0123456789"]}));
    let Auth::Hmac(h) = g.auth().unwrap() else {
        panic!()
    };
    let body = br#"{"id":"evt_1"}"#;
    let sig_old = h.sign(&h.keys[1], &[b"100.".as_slice(), body].concat(), "100");
    let header_value = format!("t=100,v1={},v0=zz", &sig_old["t=100,v1=".len()..]);
    let headers = |n: &str| (n == "stripe-signature").then(|| header_value.clone());
    let r = |now| Request {
        header: &headers,
        method: "POST",
        path: "/s",
        query: None,
        body,
        conn: None,
        now,
    };
    assert_eq!(Auth::Hmac(h.clone()).verify(&r(100)), Ok(1));
    assert_eq!(Auth::Hmac(h.clone()).verify(&r(401)), Err(Refusal::Stale));
    assert_eq!(Auth::Hmac(h.clone()).verify(&r(-201)), Err(Refusal::Future));
    let tampered =
        |n: &str| (n == "stripe-signature").then(|| header_value.replace("t=100", "t=101"));
    let r = Request {
        header: &tampered,
        method: "POST",
        path: "/s",
        query: None,
        body,
        conn: None,
        now: 100,
    };
    assert_eq!(Auth::Hmac(h).verify(&r), Err(Refusal::BadSignature));
}

#[test]
fn presets_fill_what_the_table_leaves_out() {
    let g = generic(json!({"kind": "github", "path": "/gh", "auth": {"algorithm": "sha1"}}));
    let r = g.resolved();
    assert_eq!(r.auth.algorithm, Some(Algorithm::Sha1));
    assert_eq!(
        r.auth.signature_header.as_deref(),
        Some("X-Hub-Signature-256")
    );
    assert!(g.check_notes().iter().any(|n| n.contains("legacy")));
}

#[test]
fn standard_webhooks_headers_may_carry_several_signatures() {
    let g = generic(json!({"kind": "standard-webhooks", "path": "/w",
        "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}));
    let Auth::Hmac(h) = g.auth().unwrap() else {
        panic!()
    };
    let body = br#"{"type":"a"}"#;
    let content = [b"msg_1.100.".as_slice(), body].concat();
    let good = h.sign(&h.keys[0], &content, "100");
    // A signature of another key first, an unknown version, then ours.
    let value = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,xyz {good}");
    let headers = |n: &str| match n {
        "webhook-signature" => Some(value.clone()),
        "webhook-id" => Some("msg_1".into()),
        "webhook-timestamp" => Some("100".into()),
        _ => None,
    };
    let r = Request {
        header: &headers,
        method: "POST",
        path: "/w",
        query: None,
        body,
        conn: None,
        now: 100,
    };
    assert_eq!(Auth::Hmac(h.clone()).verify(&r), Ok(0));
    let only_bad = |n: &str| match n {
        "webhook-signature" => Some("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
        other => headers(other),
    };
    let r = Request {
        header: &only_bad,
        ..r
    };
    assert_eq!(Auth::Hmac(h).verify(&r), Err(Refusal::BadSignature));
}
