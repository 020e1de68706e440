//! `switchboard simulate`: sends correctly authenticated sample notifications, so that a
//! new user sees the whole flow without an account at any provider.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use switchboard_openapi::{
    config::{Config, MAIN_LISTENER},
    devsecrets::DevSecrets,
};
use switchboard_plugins::providers::{pomelo, verestro, verifyvasp};

/// Arguments of `switchboard simulate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    provider: Provider,
    /// Base URL of the running switchboard. Default: the configured listen address.
    #[arg(long, global = true)]
    target: Option<String>,
    /// Configuration to take paths and secrets from (secrets not configured are read from
    /// the data directory's development secrets).
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Send this many identical copies at once, as providers do when they retry eagerly.
    #[arg(long, global = true, default_value_t = 1)]
    repeat: usize,
    /// Send this JSON file as the body instead of the sample.
    #[arg(long, global = true)]
    body: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Provider {
    /// A Pomelo tokenization OTP, signed with HMAC-SHA256.
    Pomelo {
        /// The api-key to sign with (default: configured or development key).
        #[arg(long)]
        api_key: Option<String>,
        /// The api-secret, base64 as Pomelo hands it over (default: configured or
        /// development secret).
        #[arg(long, env = "POMELO_API_SECRET")]
        api_secret: Option<String>,
        /// The OTP to send (default: random).
        #[arg(long)]
        otp: Option<String>,
    },
    /// A Verestro notification over mutual TLS, optionally encrypted (JWE) to the key
    /// the target serves at `/public-key`.
    Verestro {
        /// Which notification.
        #[arg(value_enum)]
        event: VerestroEvent,
        /// The client certificate (PEM) to present.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The CA certificate (PEM) that signed the server's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Encrypt the body (RSA-OAEP-256 + A256GCM) to the target's public key.
        #[arg(long)]
        encrypt: bool,
        /// The `X-Idempotency-Key` to send (default: a fresh UUID; none for card lock and
        /// unlock, which Verestro sends without one).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// A VerifyVASP callback with its bearer token.
    Verifyvasp {
        /// Which callback.
        #[arg(value_enum, default_value_t = VaspEvent::VerificationResult)]
        event: VaspEvent,
        /// The bearer token (default: configured or development token).
        #[arg(long, env = "VERIFYVASP_TOKEN")]
        token: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum VerestroEvent {
    Otp,
    VerificationInProgress,
    VerificationAccepted,
    VerificationRejected,
    CardLocked,
    CardUnlocked,
    LockReasonAdded,
    LockReasonRemoved,
}

impl VerestroEvent {
    /// The endpoint name and a sample body (the seeds' examples, with fresh values).
    fn sample(self) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        let otp = format!("{:06}", rand::random::<u32>() % 1_000_000);
        let kyc = |status: &str, reason: serde_json::Value| {
            json!({"verificationId": uuid::Uuid::new_v4(), "userId": "1337", "email": "leonbakiewicz@gmail.com",
                   "firstName": "Leon", "lastName": "Bakiewicz", "status": status, "reason": reason})
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let lock = json!({"resourceType": "corporation", "resourceId": uuid::Uuid::new_v4(),
                          "lockReason": "FRAUD_SUSPECTED", "timestamp": now});
        match self {
            VerestroEvent::Otp => (
                "otp",
                json!({"storageCustomerId": "1337", "storageCardId": "1337",
                "balanceId": uuid::Uuid::new_v4(), "amount": "1000", "currency": "PLN",
                "merchantName": "merchant test", "otp": otp}),
            ),
            VerestroEvent::VerificationInProgress => {
                ("verificationInProgress", kyc("IN_PROGRESS", json!(null)))
            }
            VerestroEvent::VerificationAccepted => {
                ("verificationAccepted", kyc("ACCEPTED", json!(null)))
            }
            VerestroEvent::VerificationRejected => (
                "verificationRejected",
                kyc("REJECTED", json!("INVALID_CUSTOMER_DATA")),
            ),
            VerestroEvent::CardLocked => (
                "cardLocked",
                json!({"dcCardId": "11", "date": now, "reason": "PIN_TRIES_EXCEEDED"}),
            ),
            VerestroEvent::CardUnlocked => ("cardUnlocked", json!({"dcCardId": "11", "date": now})),
            VerestroEvent::LockReasonAdded => ("transactionalLockReasonAdded", lock),
            VerestroEvent::LockReasonRemoved => ("transactionalLockReasonRemoved", lock),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum VaspEvent {
    VerificationResult,
    TxReport,
    ErrorReport,
}

struct Request {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Runs `switchboard simulate`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let dev = DevSecrets::read(config.data_dir())?;
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| default_target(&config, MAIN_LISTENER));
    let target = target.trim_end_matches('/').to_owned();
    let custom_body = args
        .body
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let mut client = reqwest::Client::builder();
    let request = match &args.provider {
        Provider::Pomelo {
            api_key,
            api_secret,
            otp,
        } => {
            let cfg = &config.providers.pomelo;
            let (key, secret) = match (api_key, api_secret) {
                (Some(k), Some(s)) => (k.clone(), s.clone()),
                _ => match cfg.keys.first() {
                    Some(k) => (
                        k.api_key.clone(),
                        k.api_secret
                            .resolve()
                            .map_err(|m| {
                                anyhow::anyhow!("providers.pomelo.keys[0].api_secret: {m}")
                            })?
                            .expose()
                            .to_owned(),
                    ),
                    None => match &dev {
                        Some(d) => (d.pomelo_api_key.clone(), d.pomelo_api_secret.clone()),
                        None => bail!(
                            "no Pomelo api-key: pass --api-key and --api-secret, configure providers.pomelo.keys, or start `switchboard serve` once to generate development secrets"
                        ),
                    },
                },
            };
            let hmac_key = pomelo::verify::decode_secret(&secret)
                .context("the api-secret is not base64 text")?;
            let otp = otp
                .clone()
                .unwrap_or_else(|| format!("{:06}", rand::random::<u32>() % 1_000_000));
            let body = custom_body.clone().unwrap_or_else(|| {
                serde_json::to_vec(&serde_json::json!({
                    "token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_123456789"},
                    "otp": otp,
                    "to": "m***@example.com",
                    "contact_method": "EMAIL",
                }))
                .unwrap_or_default()
            });
            let endpoint = cfg.signed_endpoint().to_owned();
            let ts = chrono::Utc::now().timestamp().to_string();
            let signature = pomelo::verify::sign(&hmac_key, &ts, &endpoint, &body);
            Request {
                url: format!("{target}{}", cfg.path),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-api-key".into(), key),
                    ("x-signature".into(), signature),
                    ("x-timestamp".into(), ts),
                    ("x-endpoint".into(), endpoint),
                ],
                body,
            }
        }
        Provider::Verestro {
            event,
            cert,
            key,
            ca,
            encrypt,
            idempotency_key,
        } => {
            let cfg = &config.providers.verestro;
            let target = match &args.target {
                Some(t) => t.trim_end_matches('/').to_owned(),
                None => default_target(&config, config.listener_of(verestro::NAME)),
            };
            if let Some(ca) = ca {
                let pem =
                    std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                client = client.add_root_certificate(
                    reqwest::Certificate::from_pem(&pem)
                        .context("--ca is not a PEM certificate")?,
                );
            }
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    let mut pem = std::fs::read(cert)
                        .with_context(|| format!("cannot read {}", cert.display()))?;
                    pem.extend(
                        std::fs::read(key)
                            .with_context(|| format!("cannot read {}", key.display()))?,
                    );
                    client = client.identity(
                        reqwest::Identity::from_pem(&pem)
                            .context("--cert/--key are not a PEM certificate and key")?,
                    );
                }
                (None, None) => {}
                _ => bail!("--cert and --key go together"),
            }
            let built = client.build()?;
            let (endpoint, sample) = event.sample();
            let plain = custom_body
                .clone()
                .unwrap_or_else(|| serde_json::to_vec(&sample).unwrap_or_default());
            let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            let key = idempotency_key.clone().or_else(|| {
                (!matches!(
                    event,
                    VerestroEvent::CardLocked | VerestroEvent::CardUnlocked
                ))
                .then(|| uuid::Uuid::new_v4().to_string())
            });
            if let Some(k) = key {
                headers.push(("x-idempotency-key".into(), k));
            }
            let body = if *encrypt {
                let url = format!("{target}{}{}", cfg.path_prefix, verestro::PUBLIC_KEY_PATH);
                let answer: serde_json::Value = built
                    .get(&url)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?
                    .error_for_status()
                    .with_context(|| format!("GET {url}"))?
                    .json()
                    .await?;
                let pem = answer["publicKey"]
                    .as_str()
                    .and_then(verestro::jwe::parse_public_key)
                    .context("the target served no usable public key")?;
                let token = verestro::jwe::encrypt(&pem, &plain).context("encryption failed")?;
                headers.push(("encrypted-request".into(), "true".into()));
                serde_json::to_vec(&serde_json::json!({"payload": token}))?
            } else {
                plain
            };
            let request = Request {
                url: format!("{target}{}/notifications/{endpoint}", cfg.path_prefix),
                headers,
                body,
            };
            return send(&built, &request, args.repeat.max(1)).await;
        }
        Provider::Verifyvasp { event, token } => {
            let cfg = &config.providers.verifyvasp;
            let token = match token {
                Some(t) => t.clone(),
                None => match &cfg.token {
                    Some(t) => t
                        .resolve()
                        .map_err(|m| anyhow::anyhow!("providers.verifyvasp.token: {m}"))?
                        .expose()
                        .to_owned(),
                    None => match &dev {
                        Some(d) => d.verifyvasp_token.clone(),
                        None => bail!(
                            "no VerifyVASP token: pass --token, configure providers.verifyvasp.token, or start `switchboard serve` once to generate development secrets"
                        ),
                    },
                },
            };
            let [vr, tx, er] = verifyvasp::model::seed_examples();
            let mut sample = match event {
                VaspEvent::VerificationResult => vr,
                VaspEvent::TxReport => tx,
                VaspEvent::ErrorReport => er,
            };
            sample["data"]["verificationUuid"] =
                serde_json::Value::String(uuid::Uuid::new_v4().to_string());
            let body = custom_body
                .clone()
                .unwrap_or_else(|| serde_json::to_vec(&sample).unwrap_or_default());
            Request {
                url: format!("{target}{}", cfg.path),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("authorization".into(), format!("Bearer {token}")),
                ],
                body,
            }
        }
    };
    send(&client.build()?, &request, args.repeat.max(1)).await
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
                out!("POST {} -> {} {}", req.url, status.as_u16(), text);
                failed |= !status.is_success();
            }
            Err(e) => {
                out!("POST {} -> failed: {e}", req.url);
                failed = true;
            }
        }
    }
    if failed {
        bail!("the notification was not accepted");
    }
    Ok(())
}
