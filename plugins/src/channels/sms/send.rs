//! Sending through an HTTP SMS gateway.

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue};
use switchboard_core::{
    delivery::Channel,
    outbox::{Action, SendResult},
    secret::Secret,
};

use super::config::{SmsConfig, SmsKind};
use crate::{
    Error, Result,
    channels::classify,
    services::{client, describe, headers},
};

/// The SMS gateway channel.
pub struct Gateway {
    kind: SmsKind,
    url: String,
    account_sid: String,
    auth_token: Option<Secret>,
    from: String,
    headers: HeaderMap,
    template: String,
    client: reqwest::Client,
    concurrency: usize,
}

/// A JSON string literal of `s` (for the template).
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The JSON template with its placeholders filled in, in one pass: a value that itself
/// contains `{{from}}` (a merchant's name, say) stays text.
pub fn render(template: &str, to: &str, text: &str, from: &str, id: &str) -> String {
    let mut out = String::with_capacity(template.len() + text.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let value = [
            ("{{to}}", to),
            ("{{text}}", text),
            ("{{from}}", from),
            ("{{id}}", id),
        ]
        .into_iter()
        .find(|(name, _)| after.starts_with(name));
        match value {
            Some((name, v)) => {
                out.push_str(&json_str(v));
                rest = &after[name.len()..];
            }
            None => {
                out.push_str("{{");
                rest = &after[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Gateway {
    /// Builds the gateway client. Errors name the setting at fault.
    pub fn new(cfg: &SmsConfig) -> Result<Self> {
        let key = "channels.sms";
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| Error::config(format!("{key}.url"), e.to_string()))?;
        let auth_token = match cfg.kind {
            SmsKind::Twilio => {
                if cfg.account_sid.is_empty() {
                    return Err(Error::config(
                        format!("{key}.account_sid"),
                        "is required for kind = \"twilio\"",
                    ));
                }
                let t = cfg.auth_token.as_ref().ok_or_else(|| {
                    Error::config(
                        format!("{key}.auth_token"),
                        "is required for kind = \"twilio\"",
                    )
                })?;
                Some(
                    t.resolve()
                        .map_err(|m| Error::config(format!("{key}.auth_token"), m))?,
                )
            }
            _ => {
                let probe = render(&cfg.template, "+1", "x", "f", "i");
                serde_json::from_str::<serde_json::Value>(&probe).map_err(|e| {
                    Error::config(
                        format!("{key}.template"),
                        format!("does not give JSON: {e}"),
                    )
                })?;
                None
            }
        };
        Ok(Gateway {
            kind: cfg.kind,
            url: url.as_str().trim_end_matches('/').to_owned(),
            account_sid: cfg.account_sid.clone(),
            auth_token,
            from: cfg.from.clone(),
            headers: headers(&cfg.headers, key)?,
            template: cfg.template.clone(),
            client: client(cfg.timeout.get(), None, key)?,
            concurrency: cfg.concurrency.max(1),
        })
    }
}

impl Channel for Gateway {
    fn send<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let field = |k: &str| {
                action
                    .payload
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let (to, text) = (field("to"), field("text"));
            if to.is_empty() {
                return SendResult::Permanent("no `to`".into());
            }
            let id = action.id.to_string();
            let mut extra = HeaderMap::new();
            // For gateways that de-duplicate on it. Twilio's Messages API does not: a
            // message resumed after a crash may be sent twice (at least once).
            if let Ok(v) = HeaderValue::from_str(&id) {
                extra.insert("idempotency-key", v);
            }
            let req = match self.kind {
                SmsKind::Twilio => self
                    .client
                    .post(format!(
                        "{}/Accounts/{}/Messages.json",
                        self.url, self.account_sid
                    ))
                    .basic_auth(
                        &self.account_sid,
                        self.auth_token.as_ref().map(|t| t.expose()),
                    )
                    .headers(extra)
                    .form(&[
                        ("To", to.as_str()),
                        ("From", self.from.as_str()),
                        ("Body", text.as_str()),
                    ]),
                _ => self
                    .client
                    .post(&self.url)
                    .headers(self.headers.clone())
                    .headers(extra)
                    .header("content-type", "application/json")
                    .body(render(&self.template, &to, &text, &self.from, &id)),
            };
            match req.send().await {
                Ok(resp) => classify(resp.status(), resp.headers()),
                Err(e) => SendResult::Retry {
                    error: format!("SMS gateway: {}", describe(e)),
                    after: None,
                },
            }
        })
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}
