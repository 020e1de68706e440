use serde_json::json;
use switchboard_core::store::StoredResponse;

use super::{api::seal, jwe, model::*};
use crate::http::{Limits, parse_json_lenient};

const LIMITS: Limits = Limits {
    body: 1 << 20,
    json_depth: 32,
};

#[test]
fn the_seeds_examples_parse_with_integers_as_strings() {
    let otp = br#"{"storageCustomerId": "1337", "storageCardId": "1337",
        "balanceId": "b334b384-328c-11ed-a261-0242ac120002", "amount": "1000",
        "currency": "PLN", "merchantName": "merchant test", "otp": "1111"}"#;
    let p = parse_json_lenient::<OtpNotification>(otp, &LIMITS).unwrap();
    assert_eq!(
        p.value,
        <OtpNotification as poem_openapi::types::Example>::example()
    );
    assert_eq!(p.data["amount"], json!(1000), "routes see numbers");
    assert!(p.flags.is_empty());
    // Numbers are fine too.
    let otp2 = String::from_utf8_lossy(otp).replace("\"1000\"", "1000");
    assert!(parse_json_lenient::<OtpNotification>(otp2.as_bytes(), &LIMITS).is_ok());
}

#[test]
fn the_seeds_trailing_commas_and_single_quotes_are_accepted_and_flagged() {
    let seed = br#"{
        "verificationId": "6faaa45a-41f6-4922-95fe-16e316ba7e91",
        "userId": "1337",
        "email": "leonbakiewicz@gmail.com",
        "firstName": "Leon",
        "lastName": "Bakiewicz",
        "status": "REJECTED",
        "reason": 'INVALID_CUSTOMER_DATA',
    }"#;
    let p = parse_json_lenient::<VerificationNotification>(seed, &LIMITS).unwrap();
    assert_eq!(
        p.value,
        <VerificationNotification as poem_openapi::types::Example>::example()
    );
    assert!(p.flags.iter().any(|f| f.starts_with("lenient_json")));
    assert!(p.value.remarks("verificationRejected").is_empty());
    assert_eq!(
        p.value.remarks("verificationAccepted").len(),
        2,
        "{:?}",
        p.value.remarks("verificationAccepted")
    );
}

#[test]
fn new_lock_reasons_are_accepted_and_flagged_and_bad_dates_are_not() {
    let body = br#"{"resourceType": "user", "resourceId": "42", "lockReason": "COURT_ORDER",
        "timestamp": "2025-06-17T13:42:54+00:00"}"#;
    let p = parse_json_lenient::<LockReasonChange>(body, &LIMITS).unwrap();
    assert_eq!(
        p.flags,
        vec!["unknown_enum_value: LockReason=COURT_ORDER".to_string()]
    );
    let bad = br#"{"dcCardId": "11", "date": "yesterday", "reason": "CARD_LOST"}"#;
    assert!(parse_json_lenient::<CardLocked>(bad, &LIMITS).is_err());
    let bad_currency = br#"{"storageCustomerId": 1, "storageCardId": 1, "balanceId": "b334b384-328c-11ed-a261-0242ac120002",
        "amount": 1, "currency": "pln", "merchantName": "m", "otp": "1"}"#;
    assert!(parse_json_lenient::<OtpNotification>(bad_currency, &LIMITS).is_err());
}

#[test]
fn answers_with_data_are_sealed_to_the_public_key_and_errors_never_are() {
    let (private, public) = jwe::generate(2048).unwrap();
    let with_data = StoredResponse::json(200, &json!({"secret": "x"}));
    let sealed = seal(with_data.clone(), Some(&public)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&sealed.body).unwrap();
    let token = v["payload"].as_str().unwrap();
    let keys = jwe::Keys::new(&super::VerestroConfig {
        jwe_keys: vec![super::config::JweKey {
            private_key: switchboard_core::secret::SecretRef::Literal(private),
            kid: None,
        }],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(keys.decrypt(token).unwrap().plaintext, with_data.body);
    assert_eq!(
        seal(with_data, Some("not a key")),
        Err(ErrorCode::InvalidPublicKey)
    );
    let empty = StoredResponse::empty(204);
    assert_eq!(seal(empty.clone(), None).unwrap(), empty);
    let error = StoredResponse::json(422, &json!({"detail": "INVALID_PAYLOAD"}));
    assert_eq!(seal(error.clone(), Some(&public)).unwrap(), error);
}
