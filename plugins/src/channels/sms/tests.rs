use super::{config::*, send::*};

#[test]
fn templates_escape_what_they_fill_in() {
    let body = render(
        r#"{"to": {{to}}, "msg": {{text}}}"#,
        "+48500",
        "say \"hi\"\n",
        "Bank",
        "id1",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["msg"], "say \"hi\"\n");
    // A value holding a placeholder stays text: each is filled in once, in one pass.
    let body = render(
        r#"{"to": {{to}}, "msg": {{text}}, "from": {{from}}, "ref": {{id}}, "x": "{{y}}"}"#,
        "+48500",
        "pay at Shop {{from}} {{id}}",
        "Bank",
        "id1",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["msg"], "pay at Shop {{from}} {{id}}");
    assert_eq!(v["from"], "Bank");
    assert_eq!(v["ref"], "id1");
    assert_eq!(v["x"], "{{y}}");
}

#[test]
fn gateway_settings_are_checked() {
    let twilio = SmsConfig {
        kind: SmsKind::Twilio,
        url: "http://127.0.0.1:1".into(),
        ..SmsConfig::default()
    };
    assert!(
        Gateway::new(&twilio)
            .err()
            .unwrap()
            .to_string()
            .contains("channels.sms.account_sid")
    );
    let json = SmsConfig {
        kind: SmsKind::Json,
        url: "http://127.0.0.1:1".into(),
        template: "{{to".into(),
        ..SmsConfig::default()
    };
    assert!(
        Gateway::new(&json)
            .err()
            .unwrap()
            .to_string()
            .contains("channels.sms.template")
    );
    let bad_url = SmsConfig {
        kind: SmsKind::Json,
        url: "not a url".into(),
        ..SmsConfig::default()
    };
    assert!(
        Gateway::new(&bad_url)
            .err()
            .unwrap()
            .to_string()
            .contains("channels.sms.url")
    );
}
