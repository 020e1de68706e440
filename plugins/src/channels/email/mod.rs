//! The email channel: SMTP through lettre (STARTTLS, TLS or plain, with AUTH; one pool of
//! reused connections), or the console.

pub mod config;
pub mod send;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use config::EmailConfig;
use config::EmailKind;
use switchboard_core::delivery::Channel;

/// Builds the channel from its configuration.
pub fn build(cfg: &EmailConfig) -> crate::Result<Arc<dyn Channel>> {
    Ok(match cfg.kind {
        EmailKind::Console => Arc::new(super::console::Console { channel: "email" }),
        EmailKind::Smtp => Arc::new(send::Smtp::new(cfg)?),
    })
}

/// One line for the start-up report.
pub fn describe(cfg: &EmailConfig) -> String {
    match cfg.kind {
        EmailKind::Console => "console (written to the log)".into(),
        EmailKind::Smtp => {
            format!("smtp {}:{} ({:?})", cfg.host, cfg.port(), cfg.tls).to_lowercase()
        }
    }
}
