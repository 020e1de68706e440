use serde_json::json;
use switchboard_core::outbox::{Action, ActionId, DeliveryStatus};

use super::{config::*, send::*};

fn action(payload: serde_json::Value) -> Action {
    Action {
        id: ActionId::new(),
        event_id: switchboard_core::event::EventId::new(),
        provider: "p".into(),
        event_type: "t".into(),
        channel: "email".into(),
        payload,
        status: DeliveryStatus::Pending,
        attempts: vec![],
        created_at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        due_ms: None,
        secrets: vec![],
        schedule_from: 0,
    }
}

#[test]
fn messages_carry_the_action_id_and_both_parts() {
    let from = "Bank <otp@bank.example>".parse().unwrap();
    let a = action(
        json!({"to": "jan@example.com", "subject": "Code", "text": "1234", "html": "<b>1234</b>"}),
    );
    let m = String::from_utf8(message(&from, &a).unwrap().formatted()).unwrap();
    assert!(
        m.contains(&format!("Message-ID: <{}@switchboard>", a.id)),
        "{m}"
    );
    assert!(m.contains("multipart/alternative"));
    assert!(m.contains("To: jan@example.com"));
    assert!(
        message(
            &from,
            &action(json!({"to": "not an address", "subject": "s", "text": "t"}))
        )
        .is_err()
    );
}

#[test]
fn smtp_settings_are_checked() {
    let cfg = EmailConfig {
        kind: EmailKind::Smtp,
        ..EmailConfig::default()
    };
    assert!(
        Smtp::new(&cfg)
            .err()
            .unwrap()
            .to_string()
            .contains("channels.email.host")
    );
    let cfg = EmailConfig {
        kind: EmailKind::Smtp,
        host: "localhost".into(),
        from: "nobody".into(),
        ..EmailConfig::default()
    };
    assert!(
        Smtp::new(&cfg)
            .err()
            .unwrap()
            .to_string()
            .contains("channels.email.from")
    );
    assert_eq!(
        EmailConfig {
            tls: SmtpTls::Tls,
            ..EmailConfig::default()
        }
        .port(),
        465
    );
}
