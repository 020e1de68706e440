//! `[channels.sms]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchboard_core::{secret::SecretRef, units::HumanDuration};

/// How text messages leave.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmsKind {
    /// Written to the log (masked), not sent.
    #[default]
    Console,
    /// A Twilio-compatible API: `POST {url}/Accounts/{account_sid}/Messages.json`, a form
    /// with `To`, `From`, `Body`, HTTP basic auth with the account SID and auth token.
    Twilio,
    /// Any gateway that takes JSON: `POST {url}` with `template` filled in.
    Json,
}

/// `[channels.sms]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// `console`, `twilio` or `json`.
    pub kind: SmsKind,
    /// Twilio: the API base (`https://api.twilio.com/2010-04-01`). JSON: the endpoint.
    pub url: String,
    /// Twilio: the account SID.
    pub account_sid: String,
    /// Twilio: the auth token (`env:` or `file:` recommended).
    pub auth_token: Option<SecretRef>,
    /// The sender (a number or an alphanumeric sender id).
    pub from: String,
    /// JSON: headers of every request; values are secrets (`Authorization = "env:SMS_KEY"`).
    pub headers: BTreeMap<String, SecretRef>,
    /// JSON: the body, with `{{to}}`, `{{text}}`, `{{from}}` and `{{id}}` (the action id)
    /// replaced by JSON strings.
    pub template: String,
    /// Most messages being sent at once.
    pub concurrency: usize,
    /// Longest one request may take.
    pub timeout: HumanDuration,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            kind: SmsKind::Console,
            url: String::new(),
            account_sid: String::new(),
            auth_token: None,
            from: String::new(),
            headers: BTreeMap::new(),
            template: r#"{"to": {{to}}, "text": {{text}}, "from": {{from}}, "reference": {{id}}}"#
                .into(),
            concurrency: 16,
            timeout: HumanDuration::secs(10),
        }
    }
}
