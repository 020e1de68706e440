//! Sending through SMTP with lettre: one pooled transport, reused for every message.

use futures_util::future::BoxFuture;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart, header::ContentType},
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};
use switchboard_core::{
    delivery::Channel,
    outbox::{Action, SendResult},
};

use super::config::{EmailConfig, SmtpTls};
use crate::{Error, Result};

/// The SMTP channel.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    concurrency: usize,
}

impl Smtp {
    /// Builds the pooled transport. Errors name the setting at fault.
    pub fn new(cfg: &EmailConfig) -> Result<Self> {
        let key = "channels.email";
        if cfg.host.is_empty() {
            return Err(Error::config(
                format!("{key}.host"),
                "is required for kind = \"smtp\"",
            ));
        }
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| Error::config(format!("{key}.from"), format!("is not an address: {e}")))?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
            .port(cfg.port());
        let tls = || -> Result<TlsParameters> {
            let mut p = TlsParameters::builder(cfg.host.clone());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    Error::config(format!("{key}.ca_file"), format!("{}: {e}", ca.display()))
                })?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| Error::config(format!("{key}.ca_file"), e.to_string()))?;
                p = p.add_root_certificate(cert);
            }
            p.build_rustls()
                .map_err(|e| Error::config(format!("{key}.tls"), e.to_string()))
        };
        b = match cfg.tls {
            SmtpTls::None => b.tls(Tls::None),
            SmtpTls::Starttls => b.tls(Tls::Required(tls()?)),
            SmtpTls::Tls => b.tls(Tls::Wrapper(tls()?)),
        };
        if let Some(user) = &cfg.username {
            let password = cfg
                .password
                .as_ref()
                .ok_or_else(|| {
                    Error::config(format!("{key}.password"), "is required with a username")
                })?
                .resolve()
                .map_err(|m| Error::config(format!("{key}.password"), m))?;
            b = b.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let transport = b
            .pool_config(PoolConfig::new().max_size(cfg.pool_size.max(1)))
            .timeout(Some(cfg.timeout.get()))
            .build();
        Ok(Smtp {
            transport,
            from,
            concurrency: cfg.concurrency.max(1),
        })
    }
}

/// The message of an `email::send` action. The Message-ID is the action's id, so that a
/// resend after a crash can be recognised downstream.
pub fn message(from: &Mailbox, action: &Action) -> std::result::Result<Message, String> {
    let field = |k: &str| {
        action
            .payload
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let to: Mailbox = field("to")
        .ok_or("no `to`")?
        .parse()
        .map_err(|_| "`to` is not an email address".to_owned())?;
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(field("subject").unwrap_or_default())
        .message_id(Some(format!("<{}@switchboard>", action.id)));
    let text = field("text").unwrap_or_default();
    let built = match field("html") {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html)),
        None => builder.header(ContentType::TEXT_PLAIN).body(text),
    };
    built.map_err(|e| format!("cannot build the message: {e}"))
}

impl Channel for Smtp {
    fn send<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let msg = match message(&self.from, action) {
                Ok(m) => m,
                Err(e) => return SendResult::Permanent(e),
            };
            match self.transport.send(msg).await {
                Ok(resp) => SendResult::Sent(Some(format!(
                    "SMTP {} {}",
                    resp.code(),
                    resp.message().next().unwrap_or("")
                ))),
                Err(e) if e.is_permanent() => SendResult::Permanent(format!("SMTP: {e}")),
                Err(e) => SendResult::Retry {
                    error: format!("SMTP: {e}"),
                    after: None,
                },
            }
        })
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}
