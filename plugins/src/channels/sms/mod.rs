//! The SMS channel: an HTTP gateway, either Twilio-compatible (a form, basic auth) or any
//! JSON API (a template), or the console. Every request carries the action's id as
//! `Idempotency-Key` (and `I-Twilio-Idempotency-Token`).

pub mod config;
pub mod send;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use config::SmsConfig;
use config::SmsKind;
use switchboard_core::delivery::Channel;

/// Builds the channel from its configuration.
pub fn build(cfg: &SmsConfig) -> crate::Result<Arc<dyn Channel>> {
    Ok(match cfg.kind {
        SmsKind::Console => Arc::new(super::console::Console { channel: "sms" }),
        SmsKind::Twilio | SmsKind::Json => Arc::new(send::Gateway::new(cfg)?),
    })
}

/// One line for the start-up report.
pub fn describe(cfg: &SmsConfig) -> String {
    match cfg.kind {
        SmsKind::Console => "console (written to the log)".into(),
        SmsKind::Twilio => "twilio-compatible gateway".into(),
        SmsKind::Json => "JSON gateway".into(),
    }
}
