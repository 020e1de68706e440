//! `switchboard simulate`: sends correctly authenticated sample notifications, so that a
//! new user sees the whole flow without an account at any provider.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use switchboard_openapi::{config::Config, devsecrets::DevSecrets};
use switchboard_plugins::providers::{pomelo, verifyvasp};

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
    let target = args.target.clone().unwrap_or_else(|| {
        let mut addr = config.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        format!("http://{addr}")
    });
    let target = target.trim_end_matches('/').to_owned();
    let custom_body = args
        .body
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
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
    send(&request, args.repeat.max(1)).await
}

async fn send(req: &Request, copies: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
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
                println!("POST {} -> {} {}", req.url, status.as_u16(), text);
                failed |= !status.is_success();
            }
            Err(e) => {
                println!("POST {} -> failed: {e}", req.url);
                failed = true;
            }
        }
    }
    if failed {
        bail!("the notification was not accepted");
    }
    Ok(())
}
