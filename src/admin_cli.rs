//! `switchboard events ...` and `switchboard deliveries ...`: the admin API from the
//! command line. They talk to the running server (its store is locked while it runs).
//! `switchboard events try` runs a route script against a stored event on the server
//! (`POST /admin/routes/try`), queuing nothing: for an operator, or for CI before a script
//! is deployed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use switchboard_openapi::{
    config::{Config, MAIN_LISTENER},
    devsecrets::DevSecrets,
};

/// Where the server is and how to authenticate.
#[derive(Args)]
pub struct Conn {
    /// Base URL of the server. Default: the configured `[server]` address.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Admin token. Default: `admin.token` of the configuration, or the development one.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The configuration to take the address and token from.
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
}

/// `switchboard events ...`
#[derive(Subcommand)]
pub enum EventsCommand {
    /// List events, newest first.
    List {
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this status: received, routed, failed, quarantined.
        #[arg(long)]
        status: Option<String>,
        /// Only events received at or after this time (RFC 3339: 2026-11-23T09:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only events received at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one event with its actions and attempts.
    Show {
        /// Event id.
        id: String,
    },
    /// Route events again: one by id, or all matching a filter.
    Replay {
        /// Event id (or use --status).
        id: Option<String>,
        /// Every event in this status: failed or quarantined (replay a routed one by its id).
        #[arg(long)]
        status: Option<String>,
        /// With --status: only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// With --status: only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// With --status: only count what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a route script against a stored event, queuing and sending nothing: the
    /// actions it would queue, what it prints, its lookups, its errors. Exits non-zero
    /// unless the script finishes.
    Try {
        /// Event id.
        id: String,
        /// A script file to run instead of the event's current script.
        #[arg(long)]
        script: Option<PathBuf>,
        /// Answer lookups that have no typed-in answer by calling the configured services.
        #[arg(long)]
        live: bool,
        /// A lookup's answer: `SERVICE:PATH=JSON` (GET) or `POST:SERVICE:PATH=JSON`, e.g.
        /// `customers:/cards/card_1/holder={"phone":"+48500100200"}`. Repeatable.
        #[arg(long = "answer")]
        answers: Vec<String>,
    },
}

/// `switchboard deliveries ...`
#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        /// Only this status: pending, sending, retrying, sent, dead, expired.
        #[arg(long)]
        status: Option<String>,
        /// Only this channel: email, sms, http, log.
        #[arg(long)]
        channel: Option<String>,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one delivery with its attempts.
    Show {
        /// Action id.
        id: String,
    },
    /// Send deliveries again: one by id, or all matching a filter.
    Replay {
        /// Action id (or use --status).
        id: Option<String>,
        /// Every delivery in this status: dead, retrying or pending (replay a sent one by its id).
        #[arg(long)]
        status: Option<String>,
        /// With --status: only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// With --status: only this provider.
        #[arg(long)]
        provider: Option<String>,
    },
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(conn: &Conn) -> anyhow::Result<Client> {
        let config = Config::load(conn.config.as_deref())?;
        let base = match &conn.url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let mut addr = config.server.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip([127, 0, 0, 1].into());
                }
                let scheme = if config.server.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let _ = MAIN_LISTENER;
                format!("{scheme}://{addr}")
            }
        };
        let token = match (&conn.token, &config.admin.token) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t
                .resolve()
                .map_err(|m| anyhow::anyhow!("admin.token: {m}"))?
                .expose()
                .to_owned(),
            (None, None) => {
                match DevSecrets::read(config.data_dir())?.and_then(|d| d.admin_token()) {
                    Some(t) => t,
                    None => bail!(
                        "no admin token: pass --token, set SWITCHBOARD_ADMIN_TOKEN, or configure admin.token"
                    ),
                }
            }
        };
        Ok(Client {
            base,
            token,
            http: reqwest::Client::new(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{} {}",
                status.as_u16(),
                v["message"].as_str().unwrap_or("")
            );
        }
        Ok(v)
    }
}

fn query(pairs: &[(&str, &Option<String>)], limit: u32) -> String {
    let mut q = vec![format!("limit={limit}")];
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(v)));
        }
    }
    q.join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_json(v: &Value) {
    out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Runs `switchboard events ...`.
pub async fn events(cmd: EventsCommand, conn: Conn) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        EventsCommand::List {
            provider,
            event_type,
            status,
            since,
            until,
            limit,
        } => {
            let q = query(
                &[
                    ("provider", &provider),
                    ("type", &event_type),
                    ("status", &status),
                    ("since", &since),
                    ("until", &until),
                ],
                limit,
            );
            let page = c
                .call(reqwest::Method::GET, &format!("/admin/events?{q}"), None)
                .await?;
            for e in page["items"].as_array().into_iter().flatten() {
                let error = e["route"]["error"].as_str().unwrap_or("");
                out!(
                    "{}  {:<12} {:<11} {:<30} {}  {error}",
                    s(e, "id"),
                    s(e, "status"),
                    s(e, "provider"),
                    s(e, "type"),
                    s(e, "receivedAt")
                );
            }
        }
        EventsCommand::Show { id } => print_json(
            &c.call(reqwest::Method::GET, &format!("/admin/events/{id}"), None)
                .await?,
        ),
        EventsCommand::Replay { id: Some(id), .. } => {
            let e = c
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/events/{id}/replay"),
                    None,
                )
                .await?;
            out!(
                "event {} is back in the inbox ({})",
                s(&e, "id"),
                s(&e, "type")
            );
        }
        EventsCommand::Replay {
            id: None,
            status: Some(status),
            provider,
            event_type,
            dry_run,
        } => {
            let body = json!({
                "events": {"status": status, "provider": provider, "type": event_type},
                "dryRun": dry_run,
            });
            let r = c
                .call(reqwest::Method::POST, "/admin/replay", Some(body))
                .await?;
            out!(
                "{} event(s) {}, {} quarantined event(s) still unparseable",
                r["events"],
                if dry_run {
                    "would be replayed (dry run: nothing changed)"
                } else {
                    "replayed"
                },
                r["stillUnparseable"]
            );
        }
        EventsCommand::Replay { .. } => bail!("give an event id or --status"),
        EventsCommand::Try {
            id,
            script,
            live,
            answers,
        } => return try_script(&c, id, script, live, answers).await,
    }
    Ok(())
}

/// `SERVICE:PATH=JSON` or `METHOD:SERVICE:PATH=JSON` as the admin API's lookup answer.
fn parse_answer(spec: &str) -> anyhow::Result<Value> {
    let (target, answer) = spec
        .split_once('=')
        .with_context(|| format!("--answer {spec:?}: expected SERVICE:PATH=JSON"))?;
    let (method, target) = match target.split_once(':') {
        Some((m, rest)) if m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("POST") => {
            (m.to_ascii_uppercase(), rest)
        }
        _ => ("GET".to_owned(), target),
    };
    let (service, path) = target
        .split_once(':')
        .with_context(|| format!("--answer {spec:?}: expected SERVICE:PATH=JSON"))?;
    let answer: Value = serde_json::from_str(answer)
        .with_context(|| format!("--answer {spec:?}: the answer is not JSON"))?;
    Ok(json!({"service": service, "method": method, "path": path, "answer": answer}))
}

async fn try_script(
    c: &Client,
    id: String,
    script: Option<PathBuf>,
    live: bool,
    answers: Vec<String>,
) -> anyhow::Result<()> {
    let text = script
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let answers = answers
        .iter()
        .map(|a| parse_answer(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = json!({"eventId": id, "script": text, "live": live, "answers": answers});
    let r = c
        .call(reqwest::Method::POST, "/admin/routes/try", Some(body))
        .await?;
    out!(
        "script {} on event {id}: {} ({} ms; nothing was queued)",
        s(&r, "script"),
        s(&r, "outcome"),
        r["tookMs"]
    );
    for l in r["lookups"].as_array().into_iter().flatten() {
        let result = if l["ok"] == true {
            l["answer"].to_string()
        } else {
            s(l, "error").to_owned()
        };
        out!(
            "  lookup {} {}{} ({}): {result}",
            s(l, "method"),
            s(l, "service"),
            s(l, "path"),
            s(l, "answeredBy")
        );
    }
    for line in r["log"].as_array().into_iter().flatten() {
        out!("  print: {}", line.as_str().unwrap_or(""));
    }
    for a in r["actions"].as_array().into_iter().flatten() {
        out!("  would queue {}: {}", s(a, "channel"), a["payload"]);
    }
    if r["outcome"] != "ok" {
        let at = match (r["line"].as_u64(), r["column"].as_u64()) {
            (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
            (Some(l), None) => format!(" (line {l})"),
            _ => String::new(),
        };
        bail!("{}{at}", r["error"].as_str().unwrap_or(s(&r, "outcome")));
    }
    Ok(())
}

/// Runs `switchboard deliveries ...`.
pub async fn deliveries(cmd: DeliveriesCommand, conn: Conn) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        DeliveriesCommand::List {
            status,
            channel,
            provider,
            limit,
        } => {
            let q = query(
                &[
                    ("status", &status),
                    ("channel", &channel),
                    ("provider", &provider),
                ],
                limit,
            );
            let page = c
                .call(
                    reqwest::Method::GET,
                    &format!("/admin/deliveries?{q}"),
                    None,
                )
                .await?;
            for a in page["items"].as_array().into_iter().flatten() {
                let attempts = a["attempts"].as_array().map_or(0, Vec::len);
                let last = a["attempts"]
                    .as_array()
                    .and_then(|v| v.last())
                    .and_then(|l| l["error"].as_str())
                    .unwrap_or("");
                out!(
                    "{}  {:<9} {:<6} event {}  attempts {attempts}  {last}",
                    s(a, "id"),
                    s(a, "status"),
                    s(a, "channel"),
                    s(a, "eventId")
                );
            }
        }
        DeliveriesCommand::Show { id } => print_json(
            &c.call(
                reqwest::Method::GET,
                &format!("/admin/deliveries/{id}"),
                None,
            )
            .await?,
        ),
        DeliveriesCommand::Replay { id: Some(id), .. } => {
            let a = c
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/deliveries/{id}/replay"),
                    None,
                )
                .await?;
            out!(
                "delivery {} ({}) scheduled again",
                s(&a, "id"),
                s(&a, "channel")
            );
        }
        DeliveriesCommand::Replay {
            id: None,
            status: Some(status),
            channel,
            provider,
        } => {
            let body =
                json!({"deliveries": {"status": status, "channel": channel, "provider": provider}});
            let r = c
                .call(reqwest::Method::POST, "/admin/replay", Some(body))
                .await?;
            out!("{} delivery(ies) scheduled again", r["deliveries"]);
        }
        DeliveriesCommand::Replay { .. } => bail!("give an action id or --status"),
    }
    Ok(())
}
