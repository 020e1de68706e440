//! The channel plugins: how queued actions leave switchboard. One folder per channel:
//! `mod.rs` (its docs) and `send.rs` (its [`Channel`]) in each, `config.rs` where the channel
//! has settings (`email`, `sms`, `http`; the console has none), `tests.rs` where it has logic
//! of its own to test (`email`, `sms`; the others are covered by the black-box tests), and
//! one [`build`] step for all of them.
//!
//! | channel | action | ways out |
//! |---|---|---|
//! | `email` | `email::send` | SMTP via lettre (STARTTLS, TLS or plain; auth; pooled connections), or the console |
//! | `sms`   | `sms::send`   | an HTTP SMS gateway (Twilio-compatible form API, or a JSON template), or the console |
//! | `http`  | `http::deliver` | a POST to a named service |
//! | `log`   | `log::info`, `log::warn` | the log |
//!
//! The console is the embedded default: a fresh `switchboard serve` shows the whole flow
//! (OTPs masked) with nothing configured.

pub mod console;
pub mod email;
pub mod http;
pub mod sms;

use std::{collections::HashMap, sync::Arc, time::Duration};

use reqwest::{StatusCode, header::HeaderMap};
use serde::{Deserialize, Serialize};
use switchboard_core::{delivery::Channel, outbox::SendResult};

use crate::{Result, services::Services};

/// `[channels]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// `[channels.email]`.
    pub email: email::EmailConfig,
    /// `[channels.sms]`.
    pub sms: sms::SmsConfig,
    /// `[channels.http]`.
    pub http: http::HttpConfig,
}

/// Builds every channel, by action channel name.
pub fn build(
    cfg: &ChannelsConfig,
    services: Services,
) -> Result<HashMap<String, Arc<dyn Channel>>> {
    let mut out: HashMap<String, Arc<dyn Channel>> = HashMap::new();
    out.insert("email".into(), email::build(&cfg.email)?);
    out.insert("sms".into(), sms::build(&cfg.sms)?);
    out.insert("http".into(), http::build(&cfg.http, services));
    out.insert("log".into(), Arc::new(console::Log));
    Ok(out)
}

/// What each channel is, for the start-up report.
pub fn describe(cfg: &ChannelsConfig) -> Vec<(&'static str, String)> {
    vec![
        ("email", email::describe(&cfg.email)),
        ("sms", sms::describe(&cfg.sms)),
        ("http", "named services".into()),
    ]
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An HTTP answer as a delivery result: only 2xx is success; 408, 425, 429 and 5xx are
/// retried (honouring `Retry-After`); any other status is permanent.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> SendResult {
    if status.is_success() {
        return SendResult::Sent(Some(format!("HTTP {}", status.as_u16())));
    }
    let error = format!("HTTP {}", status.as_u16());
    match status.as_u16() {
        408 | 425 | 429 | 500..=599 => SendResult::Retry {
            error,
            after: retry_after(headers),
        },
        _ => SendResult::Permanent(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn only_2xx_succeeds_and_retry_after_is_read() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, &h),
            SendResult::Sent(_)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h),
            SendResult::Permanent(_)
        ));
        assert!(matches!(
            classify(StatusCode::FOUND, &h),
            SendResult::Permanent(_)
        ));
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h),
            SendResult::Retry {
                error: "HTTP 429".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let SendResult::Retry { after: Some(d), .. } =
            classify(StatusCode::SERVICE_UNAVAILABLE, &h)
        else {
            panic!()
        };
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
    }
}
