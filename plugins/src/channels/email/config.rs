//! `[channels.email]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use switchboard_core::{secret::SecretRef, units::HumanDuration};

/// How email leaves.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EmailKind {
    /// Written to the log (masked), not sent.
    #[default]
    Console,
    /// Sent to an SMTP server.
    Smtp,
}

/// Transport security of the SMTP connection.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS"), port 465 by default.
    Tls,
    /// No encryption, port 25 by default. Only for a local relay.
    None,
}

/// `[channels.email]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// `console` or `smtp`.
    pub kind: EmailKind,
    /// SMTP server host name.
    pub host: String,
    /// SMTP port. Default: 587 (starttls), 465 (tls), 25 (none).
    pub port: Option<u16>,
    /// `starttls`, `tls` or `none`.
    pub tls: SmtpTls,
    /// User name for SMTP AUTH, if the server wants one.
    pub username: Option<String>,
    /// Password for SMTP AUTH (`env:` or `file:` recommended).
    pub password: Option<SecretRef>,
    /// The From address (`"Bank <otp@bank.example>"`).
    pub from: String,
    /// PEM file of a CA to trust for the server's certificate. Default: the public web PKI.
    pub ca_file: Option<PathBuf>,
    /// Most pooled connections to the server (they are reused between messages).
    pub pool_size: u32,
    /// Most messages being sent at once.
    pub concurrency: usize,
    /// Longest one SMTP command may take.
    pub timeout: HumanDuration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            kind: EmailKind::Console,
            host: String::new(),
            port: None,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            from: String::new(),
            ca_file: None,
            pool_size: 8,
            concurrency: 16,
            timeout: HumanDuration::secs(10),
        }
    }
}

impl EmailConfig {
    /// The port, explicit or the default of the TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}
