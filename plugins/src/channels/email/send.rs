//! Sending through SMTP: lettre speaks the protocol, we own the sockets and the pool.
//!
//! lettre 0.11's own transport never sets `TCP_NODELAY`, so each command that follows a
//! small write waits for the server's delayed ACK (~40 ms on Linux): a message took about
//! 200 ms on a reused connection and the channel topped out near 350 messages a second.
//! Here every connection is a tokio `TcpStream` with `TCP_NODELAY`, handed to lettre's
//! `AsyncSmtpConnection`; STARTTLS is lettre's upgrade of that same socket, implicit TLS is
//! tokio-rustls over it. Idle connections are kept (at most `pool_size`, for at most
//! [`IDLE_FOR`]) and reused; a reused connection that turns out to be dead is replaced once,
//! inside the same attempt.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use lettre::{
    Message,
    address::Envelope,
    message::{Mailbox, MultiPart, header::ContentType},
    transport::smtp::{
        Error as SmtpError,
        authentication::{Credentials, Mechanism},
        client::{
            AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
        },
        extension::ClientId,
        response::Response,
    },
};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use switchboard_core::{
    delivery::Channel,
    outbox::{Action, SendResult},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::config::{EmailConfig, SmtpTls};
use crate::{Error, Result};

/// How long an idle connection is kept for reuse. Servers commonly drop idle clients after
/// a minute or more; a connection older than this is closed rather than tried.
pub const IDLE_FOR: Duration = Duration::from_secs(50);

/// The SMTP channel.
pub struct Smtp {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    from: Mailbox,
    concurrency: usize,
    pool_size: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// How the connection is protected.
enum Security {
    None,
    /// STARTTLS, required: a server that does not offer it is refused.
    Starttls(TlsParameters),
    /// TLS from the first byte.
    Implicit(tokio_rustls::TlsConnector, ServerName<'static>),
}

impl Smtp {
    /// Checks the settings and prepares the TLS parameters. No connection is made yet.
    /// Errors name the setting at fault.
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
        let ca_pem = match &cfg.ca_file {
            Some(ca) => Some(std::fs::read(ca).map_err(|e| {
                Error::config(format!("{key}.ca_file"), format!("{}: {e}", ca.display()))
            })?),
            None => None,
        };
        let tls_error = |e: String| Error::config(format!("{key}.tls"), e);
        let security = match cfg.tls {
            SmtpTls::None => Security::None,
            SmtpTls::Starttls => {
                let mut p = TlsParameters::builder(cfg.host.clone());
                if let Some(pem) = &ca_pem {
                    let cert = Certificate::from_pem(pem)
                        .map_err(|e| Error::config(format!("{key}.ca_file"), e.to_string()))?;
                    p = p
                        .certificate_store(CertificateStore::None)
                        .add_root_certificate(cert);
                }
                Security::Starttls(p.build_rustls().map_err(|e| tls_error(e.to_string()))?)
            }
            SmtpTls::Tls => {
                let mut roots = rustls::RootCertStore::empty();
                match &ca_pem {
                    Some(pem) => {
                        for cert in CertificateDer::pem_slice_iter(pem) {
                            let cert = cert.map_err(|e| {
                                Error::config(format!("{key}.ca_file"), e.to_string())
                            })?;
                            roots.add(cert).map_err(|e| {
                                Error::config(format!("{key}.ca_file"), e.to_string())
                            })?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| tls_error(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = ServerName::try_from(cfg.host.clone())
                    .map_err(|e| Error::config(format!("{key}.host"), e.to_string()))?;
                Security::Implicit(tokio_rustls::TlsConnector::from(Arc::new(config)), name)
            }
        };
        let credentials = match &cfg.username {
            Some(user) => {
                let password = cfg
                    .password
                    .as_ref()
                    .ok_or_else(|| {
                        Error::config(format!("{key}.password"), "is required with a username")
                    })?
                    .resolve()
                    .map_err(|m| Error::config(format!("{key}.password"), m))?;
                Some(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            None => None,
        };
        Ok(Smtp {
            host: cfg.host.clone(),
            port: cfg.port(),
            security,
            credentials,
            hello: ClientId::default(),
            timeout: cfg.timeout.get(),
            from,
            concurrency: cfg.concurrency.max(1),
            pool_size: cfg.pool_size.max(1) as usize,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A new connection, greeted, secured and authenticated.
    async fn connect(&self) -> std::result::Result<AsyncSmtpConnection, Failure> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io("cannot connect", e))?;
        tcp.set_nodelay(true)
            .map_err(|e| io("cannot set TCP_NODELAY", e))?;
        let stream: Box<dyn AsyncTokioStream> = match &self.security {
            Security::Implicit(connector, name) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| io("TLS handshake", e))?;
                Box::new(TlsStream(tls))
            }
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await?;
        if let Security::Starttls(params) = &self.security {
            conn.starttls(params.clone(), &self.hello).await?;
        }
        if let Some(creds) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .await?;
        }
        Ok(conn)
    }

    /// The freshest idle connection young enough to reuse; older ones are closed.
    fn checkout(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(conn);
            }
            tokio::spawn(close(conn));
        }
        None
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.pool_size && !conn.has_broken() {
            idle.push((conn, Instant::now()));
        } else {
            drop(idle);
            tokio::spawn(close(conn));
        }
    }

    /// One transaction on `conn`, within the timeout. The connection comes back only if it
    /// is still fit for another message.
    async fn transact(
        &self,
        mut conn: AsyncSmtpConnection,
        envelope: &Envelope,
        body: &[u8],
    ) -> std::result::Result<Response, Failure> {
        let sent = tokio::time::timeout(self.timeout, conn.send(envelope, body)).await;
        match sent {
            Ok(Ok(resp)) => {
                self.checkin(conn);
                Ok(resp)
            }
            Ok(Err(e)) => {
                // An SMTP answer (4xx/5xx) leaves the connection usable after RSET, which
                // lettre does not send; a fresh connection is simpler than recovering it.
                tokio::spawn(close(conn));
                Err(e.into())
            }
            Err(_) => Err(Failure::Timeout(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Sends one message: on an idle connection if there is one, else (or if that one has
    /// died meanwhile) on a new one.
    async fn deliver(
        &self,
        envelope: &Envelope,
        body: &[u8],
    ) -> std::result::Result<Response, Failure> {
        if let Some(conn) = self.checkout() {
            match self.transact(conn, envelope, body).await {
                Ok(resp) => return Ok(resp),
                Err(e) if !e.reconnect() => return Err(e),
                // The connection died while idle (the server timed it out, a proxy dropped
                // it): try once more on a new one.
                Err(e) => {
                    tracing::debug!(error = %e, "pooled SMTP connection failed; reconnecting")
                }
            }
        }
        let conn = tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| Failure::Timeout(format!("cannot connect within {:?}", self.timeout)))??;
        self.transact(conn, envelope, body).await
    }
}

/// Says goodbye politely, without holding up the caller.
async fn close(mut conn: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
}

/// Why a message did not go: the server's answer or lettre's error, or a failure below
/// lettre (socket, TLS handshake, timeout).
#[derive(Debug)]
enum Failure {
    Smtp(SmtpError),
    Io(String),
    /// The server did not answer in time: it may still accept the message.
    Timeout(String),
}

impl Failure {
    /// Whether sending again on a new connection, at once, is safe: only when the old
    /// connection broke without an answer. Not after an SMTP reply (that is the outcome),
    /// nor after a timeout (a slow server may still take the first copy).
    fn reconnect(&self) -> bool {
        match self {
            Failure::Smtp(e) => !(e.is_permanent() || e.is_transient()),
            Failure::Io(_) => true,
            Failure::Timeout(_) => false,
        }
    }

    fn permanent(&self) -> bool {
        matches!(self, Failure::Smtp(e) if e.is_permanent())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Smtp(e) => e.fmt(f),
            Failure::Io(e) | Failure::Timeout(e) => f.write_str(e),
        }
    }
}

impl From<SmtpError> for Failure {
    fn from(e: SmtpError) -> Self {
        Failure::Smtp(e)
    }
}

fn io(what: &str, e: impl fmt::Display) -> Failure {
    Failure::Io(format!("{what}: {e}"))
}

/// tokio-rustls' stream with the `peer_addr` lettre's stream trait asks for.
struct TlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsStream")
            .field(&self.0.get_ref().0)
            .finish()
    }
}

impl AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
            match self.deliver(msg.envelope(), &msg.formatted()).await {
                Ok(resp) => SendResult::Sent(Some(format!(
                    "SMTP {} {}",
                    resp.code(),
                    resp.message().next().unwrap_or("")
                ))),
                Err(e) if e.permanent() => SendResult::Permanent(format!("SMTP: {e}")),
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
