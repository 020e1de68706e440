//! `switchboard simulate`: sends correctly authenticated sample notifications, so that a
//! new user sees the whole flow without an account at any provider.

use std::path::PathBuf;

use anyhow::{Context, bail};
use switchboard_openapi::{config::Config, devsecrets};
use switchboard_plugins::providers::{BUILTIN, Fetch, SampleOptions};

/// Arguments of `switchboard simulate`.
#[derive(clap::Args)]
#[command(after_help = simulate_help())]
pub struct Args {
    /// The provider, by its `[providers.<name>]` name (`pomelo`, `verifyvasp`, `verestro`,
    /// or a generic provider).
    provider: String,
    /// Which notification (per provider; see below). Default: its first.
    event: Option<String>,
    /// Base URL of the running switchboard. Default: the provider's configured listener.
    #[arg(long)]
    target: Option<String>,
    /// Configuration to take paths and secrets from (secrets not configured are read from
    /// the data directory's development secrets).
    #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Send this many identical copies at once, as providers do when they retry eagerly.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Send this JSON file as the body instead of the sample.
    #[arg(long)]
    body: Option<PathBuf>,
    /// The key id or api-key to sign with (Pomelo's `X-Api-Key`; default: configured or
    /// development key).
    #[arg(long, alias = "api-key")]
    key_id: Option<String>,
    /// The secret or token to sign with (default: configured or development secret).
    #[arg(
        long,
        alias = "api-secret",
        alias = "token",
        env = "SWITCHBOARD_SIMULATE_SECRET"
    )]
    secret: Option<String>,
    /// The OTP to send (default: random).
    #[arg(long)]
    otp: Option<String>,
    /// The client certificate (PEM) to present, for a listener that requires one.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Encrypt the body to the target's public key (Verestro: RSA-OAEP-256 + A256GCM).
    #[arg(long)]
    encrypt: bool,
    /// The idempotency key to send (Verestro: default a fresh UUID, none for card lock and
    /// unlock).
    #[arg(long)]
    idempotency_key: Option<String>,
}

fn simulate_help() -> String {
    let mut s = String::from("Providers:\n");
    for p in BUILTIN {
        s.push_str(&format!("  {:<12} {}\n", p.name, p.summary));
    }
    s.push_str(
        "  <name>       a generic provider from the configuration, signed as it is configured.\n",
    );
    s
}

struct Target<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
}

impl Fetch for Target<'_> {
    fn get_json<'a>(
        &'a self,
        path: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let url = format!("{}{path}", self.base);
            let r = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| explain(&e, &url))?;
            let status = r.status().as_u16();
            if !r.status().is_success() {
                let text = r.text().await.unwrap_or_default();
                return Err(format!(
                    "{status} {text}{}",
                    hint(status, &text).unwrap_or_default()
                ));
            }
            r.json().await.map_err(|e| e.to_string())
        })
    }
}

/// Runs `switchboard simulate`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    devsecrets::read_into(&mut config)?;
    let Some(provider) = config.providers.get(&args.provider) else {
        bail!(
            "no provider `{}` (configured: {})",
            args.provider,
            config.providers.names().join(", ")
        );
    };
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| default_target(&config, config.listener_of(&args.provider)));
    let target = target.trim_end_matches('/').to_owned();
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("--ca is not a PEM certificate")?,
        );
    }
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let mut pem =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            pem.extend(
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
            );
            client = client.identity(
                reqwest::Identity::from_pem(&pem)
                    .context("--cert/--key are not a PEM certificate and key")?,
            );
        }
        (None, None) => {}
        _ => bail!("--cert and --key go together"),
    }
    let client = client.build()?;
    // A mutual-TLS listener ends the handshake of a client without a certificate, which
    // the client sees only as a connection that closed or was never ready.
    let listener = config.listener_of(&args.provider).to_owned();
    let mutual = match config.listeners.get(&listener) {
        Some(l) => l.tls.client_ca.is_some(),
        None => config
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some()),
    };
    let needs_cert = (mutual || provider.client_certificates()) && args.cert.is_none();
    NEEDS_CERT.store(needs_cert, std::sync::atomic::Ordering::Relaxed);
    let opts = SampleOptions {
        event: args.event.clone(),
        body: args
            .body
            .as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
            .transpose()?,
        otp: args.otp.clone(),
        key_id: args.key_id.clone(),
        secret: args.secret.clone(),
        encrypt: args.encrypt,
        idempotency_key: args.idempotency_key.clone(),
    };
    let fetch = Target {
        client: &client,
        base: &target,
    };
    let sample = provider.sample(&opts, &fetch).await?;
    let request = Request {
        url: format!("{target}{}", sample.path),
        headers: sample.headers,
        body: sample.body,
    };
    send(&client, &request, args.repeat.max(1)).await
}

struct Request {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// What an operator should know about a refusal: a certificate the listener accepted but
/// the provider's pins do not (Verestro answers every request so, `GET /public-key`
/// included, before the notification itself is sent).
fn hint(status: u16, body: &str) -> Option<&'static str> {
    if status == 403 && body.contains("CLIENT_CERTIFICATE_NOT_ALLOWED") {
        Some(
            " (the client certificate chains to the listener's CA but is not pinned: add its SHA-256 fingerprint, as `switchboard ca sign-csr` printed it, to the provider's pin_sha256; `switchboard check` prints the pins enforced)",
        )
    } else if status == 401 && body.contains("CLIENT_CERTIFICATE_REQUIRED") {
        Some(
            " (the provider is served only on a mutual-TLS listener: send to that listener, with --cert and --key)",
        )
    } else {
        None
    }
}

/// A failed request, explained: a TLS listener that wants a client certificate closes the
/// connection during the handshake, which reqwest reports only as a closed connection.
static NEEDS_CERT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn explain(e: &reqwest::Error, url: &str) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    let needs_cert = NEEDS_CERT.load(std::sync::atomic::Ordering::Relaxed);
    if url.starts_with("https://")
        && !e.is_status()
        && (needs_cert
            || text.contains("CertificateRequired")
            || text.contains("certificate required"))
    {
        text.push_str(
            " (the listener requires a client certificate: pass --cert and --key, e.g. from `switchboard ca issue-client`)",
        );
    }
    text
}

/// `http(s)://<address>` of a configured listener (loopback for a wildcard address).
fn default_target(config: &Config, listener: &str) -> String {
    let (mut addr, tls) = match config.listeners.get(listener) {
        Some(l) => (l.listen, true),
        None => (config.server.listen, config.server.tls.is_some()),
    };
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

async fn send(client: &reqwest::Client, req: &Request, copies: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(copies);
    for _ in 0..copies {
        let mut r = client.post(&req.url).body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        tasks.push(tokio::spawn(async move {
            let resp = r.send().await?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, text))
        }));
    }
    let mut failed = false;
    for t in tasks {
        match t.await? {
            Ok((status, text)) => {
                let hint = hint(status.as_u16(), &text).unwrap_or_default();
                out!("POST {} -> {} {}{hint}", req.url, status.as_u16(), text);
                failed |= !status.is_success();
            }
            Err(e) => {
                out!("POST {} -> failed: {}", req.url, explain(&e, &req.url));
                failed = true;
            }
        }
    }
    if failed {
        bail!("the notification was not accepted");
    }
    Ok(())
}
