//! A reliability run of the real binary: `kill -9`s and SIGTERMs while signed notifications
//! arrive at full speed (some sent several times at once), with a routing backlog, a slow
//! lookup service and email delivery to a real SMTP server (aiosmtpd, through
//! `tests/tools/smtp_sink.py`). After the last stop, one more start drains everything, and
//! the run reports what became of every acknowledged notification.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p switchboard-bench --bin switchboard-chaos -- \
//!     --kills 100 --terms 50 [--binary target/release/switchboard] [--senders 32] \
//!     [--checkpoint-after 1MiB] [--cache-capacity 1MiB]
//! ```
//!
//! `--checkpoint-after` sets `store.checkpoint_after` (default: the server's), so that the
//! kills also land while the store writes its snapshots; `--cache-capacity` sets
//! `store.cache_capacity`, so that they land while pages are evicted and read back.
//!
//! Exits non-zero when an acknowledged notification is not routed, an event is `failed`,
//! one is still waiting, or an OTP's email never arrived.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const ADMIN: &str = "chaos-admin-token";
const API_KEY: &str = "chaos-key";
const SECRET: &[u8] = b"chaos-secret-of-thirty-two-bytes";
const PATH: &str = "/pomelo/tokenization/otp";

struct Args {
    binary: PathBuf,
    kills: usize,
    terms: usize,
    senders: usize,
    checkpoint_after: Option<String>,
    cache_capacity: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        binary: PathBuf::from("target/release/switchboard"),
        kills: 100,
        terms: 50,
        senders: 32,
        checkpoint_after: None,
        cache_capacity: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))
        };
        match k.as_str() {
            "--binary" => a.binary = PathBuf::from(v()?),
            "--kills" => a.kills = v()?.parse()?,
            "--terms" => a.terms = v()?.parse()?,
            "--senders" => a.senders = v()?.parse()?,
            "--checkpoint-after" => a.checkpoint_after = Some(v()?),
            "--cache-capacity" => a.cache_capacity = Some(v()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn body(otp: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "token": {"origin": "APPLE_PAY", "card_id": "card_42", "user_id": "user_42"},
        "otp": otp, "to": "j***@example.com", "contact_method": "EMAIL",
    }))
    .unwrap_or_default()
}

fn sign(ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(ts.as_bytes());
    mac.update(PATH.as_bytes());
    mac.update(body);
    format!(
        "hmac-sha256 {}",
        STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A running `switchboard serve`.
struct Instance {
    child: Child,
    url: String,
}

fn start(bin: &Path, cfg: &Path, log: &Path) -> anyhow::Result<Instance> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("switchboard listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow::anyhow!("switchboard did not start (see the log)"))?;
    Ok(Instance { child, url })
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// The lookup service the route asks for the card holder: slow, so that stops find runs
/// waiting on it.
async fn customers() -> anyhow::Result<String> {
    use poem::{
        EndpointExt, Server,
        listener::{Acceptor, Listener, TcpListener},
    };
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let ep = poem::endpoint::make(|_req: poem::Request| async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        poem::Response::builder()
            .content_type("application/json")
            .body(r#"{"email": "jan@example.com", "phone": "+48500100200"}"#)
    });
    tokio::spawn(Server::new_with_acceptor(acceptor).run(ep.map_to_response()));
    Ok(format!("http://{addr}"))
}

/// Sends unique notifications from `senders` loops until `stop`; one in ten is sent three
/// times at once. Records every OTP answered 204.
async fn load(
    url: String,
    senders: usize,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    acked: Arc<Mutex<HashSet<String>>>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (c, url, stop, next, acked, sent, errors) = (
            c.clone(),
            url.clone(),
            stop.clone(),
            next.clone(),
            acked.clone(),
            sent.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let otp = format!("{n:08}");
                let b = body(&otp);
                let copies = if n % 10 == 0 { 3 } else { 1 };
                let mut set = Vec::new();
                for _ in 0..copies {
                    let ts = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                        .to_string();
                    let req = c
                        .post(format!("{url}{PATH}"))
                        .header("content-type", "application/json")
                        .header("x-api-key", API_KEY)
                        .header("x-signature", sign(&ts, &b))
                        .header("x-timestamp", ts)
                        .header("x-endpoint", PATH)
                        .body(b.clone());
                    set.push(tokio::spawn(async move { req.send().await }));
                }
                for t in set {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if let Ok(Ok(r)) = t.await {
                        if r.status() == 204 {
                            acked.lock().expect("acked").insert(otp.clone());
                        } else if r.status().is_server_error() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn admin(c: &reqwest::Client, url: &str, path: &str) -> anyhow::Result<Value> {
    Ok(c.get(format!("{url}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Events still waiting for their route, and deliveries not yet ended (sent, dead or
/// expired), from the admin API's counts of the last day.
async fn unfinished(c: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let stats = admin(c, url, "/admin/stats").await?;
    let count = |items: &Value, key: &str, open: &[&str]| -> usize {
        items
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| open.contains(&i[key].as_str().unwrap_or("")))
            .map(|i| i["lastDay"].as_u64().unwrap_or(0) as usize)
            .sum()
    };
    Ok(count(&stats["events"], "status", &["received"])
        + count(
            &stats["deliveries"],
            "status",
            &["pending", "sending", "retrying"],
        ))
}

/// Every pomelo event: OTP → (status, route error, runs).
async fn all_events(c: &reqwest::Client, url: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let page = admin(
            c,
            url,
            &format!("/admin/events?provider=pomelo&limit=500{before}"),
        )
        .await?;
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(n) => before = format!("&before={n}"),
            None => return Ok(out),
        }
    }
}

fn mails(dir: &Path) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Ok(text) = std::fs::read_to_string(&p) {
                // "Your code to add your card to Apple Pay is 00001234. Never share it."
                if let Some(otp) = text
                    .split("Apple Pay is ")
                    .nth(1)
                    .and_then(|t| t.get(..8))
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                {
                    *per.entry(otp.to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    per
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    anyhow::ensure!(
        a.binary.is_file(),
        "{} is missing: cargo build --release",
        a.binary.display()
    );
    let tmp = tempfile::tempdir()?;
    let mail_dir = tmp.path().join("mail");
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/smtp_sink.py");
    let mut sink = Command::new("python3")
        .arg(&tool)
        .args(["--dir", mail_dir.to_str().unwrap_or("mail")])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("python3 with aiosmtpd is needed: {e}"))?;
    let mut line = String::new();
    BufReader::new(sink.stdout.take().expect("piped")).read_line(&mut line)?;
    let smtp_port: u16 = line
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("smtp_sink.py did not start (pip install aiosmtpd)"))?;
    let lookups = customers().await?;
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
[store]
path = "{data}"
{checkpoint}
{cache}
[dev]
secrets = false
[admin]
token = "{ADMIN}"
reveal_secrets = true
[[providers.pomelo.keys]]
api_key = "{API_KEY}"
api_secret = "{secret}"
[routes]
workers = 32
[services.customers]
base_url = "{lookups}"
[channels.email]
kind = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Bank <otp@bank.example>"
[delivery]
schedule = ["1s", "2s", "5s", "10s", "30s"]
"#,
            data = tmp.path().join("data").display(),
            checkpoint = a
                .checkpoint_after
                .as_ref()
                .map(|c| format!("checkpoint_after = \"{c}\""))
                .unwrap_or_default(),
            cache = a
                .cache_capacity
                .as_ref()
                .map(|c| format!("cache_capacity = \"{c}\""))
                .unwrap_or_default(),
            secret = STANDARD.encode(SECRET),
        ),
    )?;
    let log = tmp.path().join("switchboard.log");
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(1));
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (mut kills, mut terms) = (0, 0);
    let mut term_took = Vec::new();
    while kills < a.kills || terms < a.terms {
        let inst = start(&a.binary, &cfg, &log)?;
        let stop = Arc::new(AtomicBool::new(false));
        let loader = tokio::spawn(load(
            inst.url.clone(),
            a.senders,
            stop.clone(),
            next.clone(),
            acked.clone(),
            sent.clone(),
            errors.clone(),
        ));
        // Up and loaded for a random while: 0.3 to 1.5 s.
        let up = 300 + (next.load(Ordering::Relaxed) * 7919 % 1200);
        tokio::time::sleep(Duration::from_millis(up)).await;
        let mut child = inst.child;
        // SIGTERMs spread through the run: one in three stops while they last.
        let term = terms < a.terms && (kills >= a.kills || (kills + terms) % 3 == 2);
        if term {
            let at = Instant::now();
            signal(&child, "-TERM");
            let status = child.wait()?;
            term_took.push(at.elapsed());
            anyhow::ensure!(status.success(), "a SIGTERM ended with {status}");
            terms += 1;
        } else {
            signal(&child, "-KILL");
            let _ = child.wait();
            kills += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = loader.await;
        if (kills + terms) % 10 == 0 {
            eprintln!(
                "{kills} kill -9, {terms} SIGTERM; {} acknowledged of {} sent",
                acked.lock().map(|a| a.len()).unwrap_or(0),
                sent.load(Ordering::Relaxed)
            );
        }
    }
    let load_time = started.elapsed();
    // One more start drains the backlog.
    let inst = start(&a.binary, &cfg, &log)?;
    let c = reqwest::Client::new();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    // The backlog is routed and delivered at the pace of the slow lookup service and the
    // SMTP server: wait while it shrinks (counted, not listed: listing half a million
    // events every second would slow the drain it waits for).
    let drain_started = Instant::now();
    let mut last = (usize::MAX, Instant::now());
    loop {
        let left = unfinished(&c, &inst.url).await?;
        if left == 0 {
            break;
        }
        if left < last.0 {
            last = (left, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            eprintln!("the drain stopped moving with {left} events or deliveries unfinished");
            break;
        }
        if drain_started.elapsed().as_secs() % 30 < 2 {
            eprintln!("draining: {left} events or deliveries unfinished");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let drain_time = drain_started.elapsed();
    let evs = all_events(&c, &inst.url).await?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_otp: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in &evs {
        *by_status
            .entry(e["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        if let Some(otp) = e["body"]["otp"].as_str().or(e["data"]["otp"].as_str()) {
            by_otp.entry(otp.to_owned()).or_default().push(e);
        }
    }
    let not_routed: Vec<&String> = acked
        .iter()
        .filter(|o| {
            !by_otp
                .get(*o)
                .is_some_and(|es| es.iter().any(|e| e["status"] == "routed"))
        })
        .collect();
    let stored_twice = by_otp.values().filter(|es| es.len() > 1).count();
    let failed: Vec<String> = evs
        .iter()
        .filter(|e| e["status"] == "failed")
        .map(|e| e["route"]["error"].as_str().unwrap_or("").to_owned())
        .collect();
    let delivered = mails(&mail_dir);
    let undelivered = acked.iter().filter(|o| !delivered.contains_key(*o)).count();
    let twice = delivered.values().filter(|n| **n > 1).count();
    term_took.sort();
    println!(
        "chaos run: {kills} kill -9, {terms} SIGTERM in {load_time:?}, then the backlog drained in {drain_time:?}"
    );
    println!(
        "  sent {} requests, {} notifications acknowledged ({:.0} acknowledged/s while up)",
        sent.load(Ordering::Relaxed),
        acked.len(),
        acked.len() as f64 / load_time.as_secs_f64()
    );
    println!("  events by status: {by_status:?}");
    println!("  acknowledged but not routed: {}", not_routed.len());
    println!("  stored twice: {stored_twice}");
    println!(
        "  failed: {} {:?}",
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "  emails: {} OTPs delivered, {undelivered} acknowledged never delivered, {twice} delivered twice",
        delivered.len()
    );
    if let (Some(min), Some(max)) = (term_took.first(), term_took.last()) {
        println!("  SIGTERM to exit: {min:?} .. {max:?}");
    }
    println!(
        "  5xx answers: {} (a duplicate that gave up waiting for a stopped first request)",
        errors.load(Ordering::Relaxed)
    );
    let mut child = inst.child;
    signal(&child, "-TERM");
    let _ = child.wait();
    let _ = sink.kill();
    let _ = sink.wait();
    anyhow::ensure!(
        not_routed.is_empty() && failed.is_empty() && undelivered == 0 && stored_twice == 0,
        "the run lost, failed or duplicated something (above)"
    );
    Ok(())
}
