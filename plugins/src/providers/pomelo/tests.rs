use serde_json::json;
use switchboard_core::{secret::SecretRef, units::HumanDuration};

use super::{config::*, model::*, verify::*};
use crate::http::{Limits, parse_json};

const SECRET_B64: &str = "dGVzdC1zZWNyZXQtZm9yLXBvbWVsbw=="; // "test-secret-for-pomelo"
const BODY: &[u8] = br#"{"otp":"1"}"#;
const TS: i64 = 1_637_117_179;
// Computed with Python's hmac over the base64-decoded secret, independently of this crate.
const KNOWN_SIGNATURE: &str = "hmac-sha256 Gm1mtMErHUxiJH16+crgELDlw+iyo5bDnupfZQ3Lcm0=";

fn cfg() -> PomeloConfig {
    PomeloConfig {
        keys: vec![
            PomeloKey {
                api_key: "old".into(),
                api_secret: SecretRef::Literal("b3RoZXItc2VjcmV0LTE2Ynl0ZXM=".into()),
            },
            PomeloKey {
                api_key: "k1".into(),
                api_secret: SecretRef::Literal(SECRET_B64.into()),
            },
        ],
        timestamp_tolerance: HumanDuration::secs(300),
        ..PomeloConfig::default()
    }
}

fn headers<'a>(sig: &'a str, ts: &'a str) -> SignedHeaders<'a> {
    SignedHeaders {
        api_key: "k1",
        signature: sig,
        timestamp: ts,
        endpoint: DEFAULT_PATH,
    }
}

#[test]
fn known_answer_uses_the_decoded_secret() {
    let v = Verifier::new(&cfg()).unwrap();
    let ts = TS.to_string();
    assert_eq!(
        v.verify(&headers(KNOWN_SIGNATURE, &ts), BODY, TS),
        Ok("keys[1]")
    );
    let key = decode_secret(SECRET_B64).unwrap();
    assert_eq!(sign(&key, &ts, DEFAULT_PATH, BODY), KNOWN_SIGNATURE);
    // Signing with the base64 text itself (the common mistake) does not verify.
    let wrong = sign(SECRET_B64.as_bytes(), &ts, DEFAULT_PATH, BODY);
    assert_eq!(
        v.verify(&headers(&wrong, &ts), BODY, TS),
        Err(Refusal::BadSignature)
    );
}

#[test]
fn every_failure_is_named() {
    let v = Verifier::new(&cfg()).unwrap();
    let ts = TS.to_string();
    let mut h = headers(KNOWN_SIGNATURE, &ts);
    h.api_key = "nope";
    assert_eq!(v.verify(&h, BODY, TS), Err(Refusal::UnknownKey));
    assert_eq!(
        v.verify(&headers(KNOWN_SIGNATURE, &ts), BODY, TS + 301),
        Err(Refusal::Stale)
    );
    assert_eq!(
        v.verify(&headers(KNOWN_SIGNATURE, &ts), BODY, TS - 301),
        Err(Refusal::Future)
    );
    assert!(
        v.verify(&headers(KNOWN_SIGNATURE, &ts), BODY, TS + 300)
            .is_ok()
    );
    assert_eq!(
        v.verify(&headers(KNOWN_SIGNATURE, "x"), BODY, TS),
        Err(Refusal::MalformedTimestamp)
    );
    let mut h = headers(KNOWN_SIGNATURE, &ts);
    h.endpoint = "/elsewhere";
    assert_eq!(v.verify(&h, BODY, TS), Err(Refusal::Endpoint));
    assert_eq!(
        v.verify(
            &headers("Gm1mtMErHUxiJH16+crgELDlw+iyo5bDnupfZQ3Lcm0=", &ts),
            BODY,
            TS
        ),
        Err(Refusal::MalformedSignature)
    );
    assert_eq!(
        v.verify(&headers(KNOWN_SIGNATURE, &ts), b"{\"otp\":\"2\"}", TS),
        Err(Refusal::BadSignature)
    );
    let none = Verifier::unconfigured(&PomeloConfig::default());
    assert_eq!(
        none.verify(&headers(KNOWN_SIGNATURE, &ts), BODY, TS),
        Err(Refusal::NotConfigured)
    );
}

#[test]
fn secrets_that_are_not_base64_are_a_config_error_naming_the_key() {
    let mut c = cfg();
    c.keys[1].api_secret = SecretRef::Literal("not base64!".into());
    let err = Verifier::new(&c).err().unwrap().to_string();
    assert!(err.contains("providers.pomelo.keys[1].api_secret"), "{err}");
    assert!(!err.contains("not base64!"), "{err}");
}

#[test]
fn the_seed_example_parses_and_unknown_methods_are_flagged() {
    let limits = Limits {
        body: 1 << 20,
        json_depth: 32,
    };
    let seed = json!({"token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_123456789"},
        "otp": "123456", "to": "m***@example.com", "contact_method": "EMAIL"});
    let p = parse_json::<TokenizationOtp>(seed.to_string().as_bytes(), &limits).unwrap();
    assert_eq!(
        p.value,
        <TokenizationOtp as poem_openapi::types::Example>::example()
    );
    assert!(p.flags.is_empty());
    let mut push = seed.clone();
    push["contact_method"] = json!("PUSH");
    let p = parse_json::<TokenizationOtp>(push.to_string().as_bytes(), &limits).unwrap();
    assert_eq!(
        p.flags,
        vec!["unknown_enum_value: ContactMethod=PUSH".to_string()]
    );
    let mut missing = seed;
    missing.as_object_mut().unwrap().remove("otp");
    let err = parse_json::<TokenizationOtp>(missing.to_string().as_bytes(), &limits)
        .err()
        .unwrap();
    assert!(
        err.contains("found null") && err.contains("TokenizationOtp"),
        "{err}"
    );
}

#[test]
fn secrets_shorter_than_16_bytes_are_refused() {
    let mut c = cfg();
    c.keys[1].api_secret = SecretRef::Literal("QQ==".into());
    let err = Verifier::new(&c).err().unwrap().to_string();
    assert!(
        err.contains("providers.pomelo.keys[1].api_secret") && err.contains("16"),
        "{err}"
    );
    assert!(!err.contains("QQ=="), "{err}");
}
