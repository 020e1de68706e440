use poem_openapi::types::ParseFromJSON;
use serde_json::json;

use super::{model::*, *};
use crate::http::{Limits, parse_json};

const LIMITS: Limits = Limits {
    body: 1 << 20,
    json_depth: 32,
};

#[test]
fn every_seed_example_parses_into_its_type() {
    let [vr, tx, er] = seed_examples();
    let p = parse_json::<Callback>(vr.to_string().as_bytes(), &LIMITS).unwrap();
    assert_eq!(p.value.callback_type(), "VERIFICATION_RESULT");
    assert!(p.flags.is_empty());
    let Callback::VerificationResult(c) = &p.value else {
        panic!()
    };
    let vasp = c.data.ivms101.originating_vasp.as_ref().unwrap();
    assert_eq!(
        vasp.legal_person.as_ref().unwrap().name.name_identifier[0].legal_person_name,
        "Lambda256"
    );
    // The normalised data keeps the discriminator and every field.
    assert_eq!(p.data["callbackType"], "VERIFICATION_RESULT");
    assert_eq!(p.data, vr);

    let p = parse_json::<Callback>(tx.to_string().as_bytes(), &LIMITS).unwrap();
    assert_eq!(p.value.callback_type(), "TX_REPORT");
    let p = parse_json::<Callback>(er.to_string().as_bytes(), &LIMITS).unwrap();
    let Callback::ErrorReport(c) = &p.value else {
        panic!()
    };
    assert_eq!(
        c.data.reason,
        crate::types::Open::Known(ReasonCode::Blacklisted)
    );
}

#[test]
fn unknown_reason_codes_are_accepted_and_flagged() {
    let body = json!({"callbackType": "ERROR_REPORT", "data": {
        "verificationUuid": "64ab871b-14a3-47df-9b80-368e29fe8182",
        "result": "DENIED", "reason": "SOMETHING-NEW"}});
    let p = parse_json::<Callback>(body.to_string().as_bytes(), &LIMITS).unwrap();
    assert_eq!(
        p.flags,
        vec!["unknown_enum_value: ReasonCode=SOMETHING-NEW".to_string()]
    );
    assert_eq!(p.data["data"]["reason"], "SOMETHING-NEW");
}

#[test]
fn malformed_callbacks_are_refused_by_the_schema() {
    for bad in [
        json!({"callbackType": "TX_REPORT", "data": {"txHash": "0x1"}}),
        json!({"callbackType": "TX_REPORT", "data": {"verificationUuid": "not-a-uuid", "txHash": "0x1"}}),
        json!({"data": {}}),
        json!([1, 2]),
    ] {
        assert!(
            parse_json::<Callback>(bad.to_string().as_bytes(), &LIMITS).is_err(),
            "{bad}"
        );
    }
    assert!(Callback::parse_from_json(Some(json!({"callbackType": "X", "data": {}}))).is_err());
}

#[test]
fn event_types_are_safe_file_names() {
    assert_eq!(event_type("VERIFICATION_RESULT"), "verification_result");
    assert_eq!(event_type("../../etc"), "______etc");
    assert_eq!(event_type(""), QUARANTINE_EVENT_TYPE);
}

#[test]
fn tokens_compare_exactly() {
    let cfg = VerifyVaspConfig {
        token: Some(switchboard_core::secret::SecretRef::Literal(
            "s3cret".into(),
        )),
        ..Default::default()
    };
    let v = verify::Verifier::new(&cfg).unwrap();
    assert!(v.verify("s3cret").is_ok());
    assert_eq!(v.verify("s3cre"), Err(verify::Refusal::BadToken));
    assert_eq!(v.verify("s3cret "), Err(verify::Refusal::BadToken));
    assert_eq!(
        verify::Verifier::unconfigured().verify("s3cret"),
        Err(verify::Refusal::NotConfigured)
    );
}
