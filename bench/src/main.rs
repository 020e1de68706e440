//! `cargo run --release -p switchboard-bench` — the ingest benchmark.
//!
//! In one process run, on one machine, with the same listener code and the same load
//! generator:
//!
//! - (a) a bare poem handler answering 204: the ceiling of this machine and stack;
//! - (b) signed Pomelo notifications with unique bodies sent to **the whole server**, as
//!   `switchboard serve` runs it: the listener, the route workers (a route script that does
//!   nothing), delivery and the sweeper; each request goes through the HMAC check, parse,
//!   idempotency claim, the durable commit and the group-committed fsync before its 204;
//! - (v) the same with VerifyVASP callbacks (bearer token, a counter in
//!   `verificationUuid`);
//! - (c) a storm of duplicates to the whole server: the same few signed bodies over and
//!   over;
//! - (b0) (b) against the HTTP endpoint alone, with no route workers and no delivery: not
//!   a real server (nothing routes what it stores), shown for what routing costs;
//! - (s) the engine alone, without HTTP or routing: the same notifications submitted
//!   straight to the ingestor;
//! - (b½) (b) again, open-loop at half of (b)'s maximum rate, latency measured from each
//!   request's scheduled start (no coordinated omission);
//! - (pg1), (pg2) (b) with the store on PostgreSQL (a throw-away cluster with its default
//!   durability, fsync on), one instance, then two instances on the same database with
//!   the connections split between them; skipped, saying so, when PostgreSQL is not
//!   installed.
//!
//! Each prints requests/s and p50/p99 latency; the summary gives the ratios to (a). Then
//! route + delivery (e, f, e½).
//!
//! `switchboard-bench open-loop --url URL --provider pomelo|verifyvasp --rate R ...` drives
//! an external server (the release binary, from `bench/wrk.sh`) at a fixed rate with unique
//! signed bodies and prints the same line: wrk2, which does this, is not in Debian.
//!
//! Options: `--seconds N` (per phase, default 5), `--connections N` (default 64),
//! `--only a,b,v,c,b0,s,bh,pg,d` (those phases alone), `--messages N` (delivery runs).
//! `BENCH_LOG=warn` drops the per-event log lines that production writes at `info`.

mod delivery;
mod pg;
mod pgdata;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use poem::{EndpointExt, Route, endpoint::make_sync, http::StatusCode};
use sha2::Sha256;
use switchboard_core::{config::StoreBackend, secret::SecretRef, store::Store};
use switchboard_openapi::{
    app::{App, Bound},
    config::Config,
    server::{Listener, ServeOptions, SharedEndpoint, serve},
};
use switchboard_plugins::providers::{
    pomelo::config::{PomeloConfig, PomeloKey},
    verifyvasp::config::VerifyVaspConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const POMELO_PATH: &str = "/pomelo/tokenization/otp";
const VASP_PATH: &str = "/verifyvasp/callback";
const API_KEY: &str = "bench-key";
const VASP_TOKEN: &str = "bench-verifyvasp-token-0123456789";
/// The route script of every event in the ingest phases: it queues nothing.
const NOOP_ROUTE: &str = "// The benchmark: routed, nothing queued.\n()\n";

const PHASES: &[&str] = &["a", "b", "v", "c", "b0", "s", "bh", "pg", "d"];

struct Options {
    seconds: u64,
    connections: usize,
    /// Messages per delivery run.
    messages: usize,
    /// The phases to run.
    only: Vec<String>,
}

impl Options {
    fn runs(&self, phase: &str) -> bool {
        self.only.iter().any(|p| p == phase)
    }
}

const HELP: &str = "\
switchboard-bench [--seconds N] [--connections N] [--messages N] [--only LIST]
switchboard-bench open-loop --url URL --provider pomelo|verifyvasp --rate R [--seconds N]
    [--connections N] [--pomelo-key K --pomelo-secret BASE64] [--verifyvasp-token T]

Phases (--only takes a comma-separated list; default: all):
  a   a bare poem handler (the ceiling)
  b   signed Pomelo, unique bodies, the whole server (listener, route workers, delivery)
  v   VerifyVASP, unique bodies, the whole server
  c   a duplicate storm, the whole server
  b0  as b, the endpoint alone: no route workers, no delivery (not a real server)
  s   the engine alone: ingest + store, no HTTP, no routing
  bh  as b, open loop at half of b's rate (b runs first if not chosen)
  pg  as b, on PostgreSQL: one instance, then two on one database
  d   route + delivery to local SMTP and HTTP sinks

open-loop: drives an external server (bench/wrk.sh: the release binary) at a fixed rate
with unique, correctly signed bodies; latency from each request's scheduled time.";

fn options(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: 5,
        connections: 64,
        messages: 3000,
        only: PHASES.iter().map(|p| (*p).to_owned()).collect(),
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).context("missing value")?;
        match args[i].as_str() {
            "--seconds" => o.seconds = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--messages" => o.messages = value.parse()?,
            "--only" => {
                o.only = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    anyhow::bail!("unknown phase {bad} (see --help)");
                }
            }
            other => anyhow::bail!("unknown option {other} (see --help)"),
        }
        i += 2;
    }
    Ok(o)
}

/// One prepared request.
#[derive(Clone)]
struct Prepared {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

fn sign(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(ts.as_bytes());
    mac.update(POMELO_PATH.as_bytes());
    mac.update(body);
    format!(
        "hmac-sha256 {}",
        STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A signed Pomelo OTP notification for card `card`, sent by `method`.
fn pomelo_with(secret: &[u8], api_key: &str, card: &str, otp: &str, method: &str) -> Prepared {
    let body = serde_json::to_vec(&serde_json::json!({
        "token": {"origin": "APPLE_PAY", "card_id": card, "user_id": "user_123456789"},
        "otp": otp,
        "to": "m***@example.com",
        "contact_method": method,
    }))
    .expect("json");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .to_string();
    Prepared {
        path: POMELO_PATH,
        headers: vec![
            ("content-type", "application/json".into()),
            ("x-api-key", api_key.into()),
            ("x-signature", sign(secret, &ts, &body)),
            ("x-timestamp", ts),
            ("x-endpoint", POMELO_PATH.into()),
        ],
        body: Bytes::from(body),
    }
}

/// A VerifyVASP transaction report whose `verificationUuid` (its key) carries `tag` and
/// `n`.
fn vasp(token: &str, tag: u32, n: u64) -> Prepared {
    let body = format!(
        r#"{{"callbackType":"TX_REPORT","data":{{"verificationUuid":"{tag:08x}-0000-4000-8000-{n:012}","txHash":"0x9fd7afd46e4402c7197b4d8deb0199fcf7c1f57ef70c339f403a1c0c31c28a1b"}}}}"#
    );
    Prepared {
        path: VASP_PATH,
        headers: vec![
            ("content-type", "application/json".into()),
            ("authorization", format!("Bearer {token}")),
        ],
        body: Bytes::from(body),
    }
}

/// Where requests come from: a fixed list cycled through, or fresh unique ones.
#[derive(Clone)]
enum Source {
    Fixed(Arc<Vec<Prepared>>),
    /// Signed Pomelo notifications, each for another card (`<tag>_<n>`).
    Pomelo {
        secret: Arc<Vec<u8>>,
        api_key: Arc<str>,
        tag: Arc<str>,
        counter: Arc<AtomicU64>,
    },
    /// VerifyVASP callbacks, each for another verification.
    Vasp {
        token: Arc<str>,
        tag: u32,
        counter: Arc<AtomicU64>,
    },
}

impl Source {
    fn pomelo(secret: &[u8], api_key: &str, tag: &str) -> Source {
        Source::Pomelo {
            secret: Arc::new(secret.to_vec()),
            api_key: Arc::from(api_key),
            tag: Arc::from(tag),
            counter: Arc::default(),
        }
    }

    fn vasp(token: &str, tag: u32) -> Source {
        Source::Vasp {
            token: Arc::from(token),
            tag,
            counter: Arc::default(),
        }
    }

    fn next(&self, i: u64) -> Prepared {
        match self {
            Source::Fixed(list) => list[(i % list.len() as u64) as usize].clone(),
            Source::Pomelo {
                secret,
                api_key,
                tag,
                counter,
            } => {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                pomelo_with(
                    secret,
                    api_key,
                    &format!("{tag}_{n}"),
                    &format!("{:06}", n % 1_000_000),
                    "SMS",
                )
            }
            Source::Vasp {
                token,
                tag,
                counter,
            } => vasp(token, *tag, counter.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

struct Result {
    name: &'static str,
    requests: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    non_2xx: u64,
}

impl Result {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn print(&self) {
        println!(
            "{:<52} {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {} not 2xx)",
            self.name,
            self.rps(),
            self.p(0.50),
            self.p(0.99),
            self.requests,
            self.non_2xx
        );
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Sender, addr: SocketAddr, p: Prepared) -> anyhow::Result<bool> {
    let mut req = hyper::Request::post(format!("http://{addr}{}", p.path));
    for (k, v) in &p.headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(p.body))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    Ok(ok)
}

/// Closed loop: `connections` clients, each sending its next request as soon as the
/// previous answer arrives; the connections are spread over `addrs` in turn.
async fn closed_loop(
    name: &'static str,
    addrs: &[SocketAddr],
    source: Source,
    o: &Options,
) -> anyhow::Result<Result> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..o.connections {
        let addr = addrs[w % addrs.len()];
        let (stop, measuring, source) = (stop.clone(), measuring.clone(), source.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let mut hist = Histogram::<u64>::new(3)?;
            let (mut n, mut bad, mut i) = (0u64, 0u64, w as u64);
            while !stop.load(Ordering::Relaxed) {
                let p = source.next(i);
                i += 1;
                let t = Instant::now();
                let ok = send(&mut sender, addr, p).await?;
                if measuring.load(Ordering::Relaxed) {
                    hist.record(t.elapsed().as_micros() as u64)?;
                    n += 1;
                    bad += u64::from(!ok);
                }
            }
            anyhow::Ok((hist, n, bad))
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    collect(name, elapsed, tasks).await
}

/// Open loop at `rate` requests/s: requests are scheduled at fixed intervals and handed to
/// free connections; latency counts from the scheduled time.
async fn open_loop(
    name: &'static str,
    addr: SocketAddr,
    source: Source,
    rate: f64,
    o: &Options,
) -> anyhow::Result<Result> {
    let (tx, rx) = async_channel();
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let (rx, source) = (rx.clone(), source.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let mut hist = Histogram::<u64>::new(3)?;
            let (mut n, mut bad) = (0u64, 0u64);
            while let Some((i, scheduled, measured)) = rx.recv().await {
                let ok = send(&mut sender, addr, source.next(i)).await?;
                if measured {
                    hist.record(scheduled.elapsed().as_micros() as u64)?;
                    n += 1;
                    bad += u64::from(!ok);
                }
            }
            anyhow::Ok((hist, n, bad))
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs(o.seconds);
    let t0 = Instant::now();
    let mut i = 0u64;
    loop {
        let scheduled = t0 + interval.mul_f64(i as f64);
        if scheduled - t0 >= total {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        tx.send((i, scheduled, scheduled - t0 >= warmup)).await;
        i += 1;
    }
    drop(tx);
    collect(name, Duration::from_secs(o.seconds), tasks).await
}

type Worker = tokio::task::JoinHandle<anyhow::Result<(Histogram<u64>, u64, u64)>>;

async fn collect(
    name: &'static str,
    elapsed: Duration,
    tasks: Vec<Worker>,
) -> anyhow::Result<Result> {
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut requests, mut non_2xx) = (0, 0);
    for t in tasks {
        let (h, n, bad) = t.await??;
        hist.add(h)?;
        requests += n;
        non_2xx += bad;
    }
    Ok(Result {
        name,
        requests,
        elapsed,
        hist,
        non_2xx,
    })
}

/// A multi-consumer queue of scheduled requests.
fn async_channel() -> (Tx, Rx) {
    let (tx, rx) = tokio::sync::mpsc::channel(1 << 16);
    (Tx(tx), Rx(Arc::new(tokio::sync::Mutex::new(rx))))
}

type Ticket = (u64, Instant, bool);
struct Tx(tokio::sync::mpsc::Sender<Ticket>);
#[derive(Clone)]
struct Rx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Ticket>>>);

impl Tx {
    async fn send(&self, t: Ticket) {
        let _ = self.0.send(t).await;
    }
}

impl Rx {
    async fn recv(&self) -> Option<Ticket> {
        self.0.lock().await.recv().await
    }
}

fn serve_options() -> ServeOptions {
    ServeOptions {
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(1),
        drain_limit: 4 << 20,
        drain_timeout: Duration::from_secs(30),
    }
}

/// Serves `ep` alone (no route workers, no delivery) behind the real listener.
async fn start_endpoint(ep: SharedEndpoint) -> anyhow::Result<(SocketAddr, CancellationToken)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let metrics = switchboard_core::metrics::Metrics::shared();
    let listener = Listener {
        socket: listener,
        name: Arc::from("main"),
        tls: None,
    };
    tokio::spawn(serve(
        listener,
        ep,
        serve_options(),
        metrics,
        shutdown.clone(),
    ));
    Ok((addr, shutdown))
}

/// (s): the engine alone, no HTTP: `connections` tasks submitting unique Pomelo-sized
/// notifications straight to the ingestor (claim, store, group flush), on a fresh store.
async fn engine_only(o: &Options) -> anyhow::Result<Result> {
    use switchboard_core::{
        config::StoreConfig,
        ingest::{Content, Ingestor, OnConflict, Submission},
        metrics::Metrics,
        store::StoredResponse,
    };
    let dir = tempfile::tempdir()?;
    let cfg = StoreConfig {
        path: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let ingest = Ingestor::new(Store::open_sled(&cfg)?, Metrics::shared(), &cfg);
    let source = Source::pomelo(&secret_bytes(), API_KEY, "s");
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let (ingest, source) = (ingest.clone(), source.clone());
        let (stop, measuring) = (stop.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let (mut n, mut bad) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let p = source.next(0);
                let data: serde_json::Value = serde_json::from_slice(&p.body)?;
                let t = Instant::now();
                let sub = Submission {
                    answer_within: None,
                    dedup_window: None,
                    provider: "pomelo".into(),
                    endpoint: POMELO_PATH.into(),
                    event_type: "tokenization_otp".into(),
                    key: format!(
                        "{POMELO_PATH}#{}",
                        switchboard_core::ingest::fingerprint(&p.body)
                    ),
                    body: p.body.to_vec(),
                    content: Content::Parsed {
                        data,
                        flags: Vec::new(),
                    },
                    on_conflict: OnConflict::KeepAndFlag,
                    meta: Default::default(),
                    secret_paths: vec!["/otp".into()],
                    response: StoredResponse::empty(204),
                };
                let ok = ingest.submit(sub).await.is_ok();
                if measuring.load(Ordering::Relaxed) {
                    hist.record(t.elapsed().as_micros() as u64)?;
                    n += 1;
                    bad += u64::from(!ok);
                }
            }
            anyhow::Ok((hist, n, bad))
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    collect(
        "(s) the engine alone: ingest + store + flush",
        elapsed,
        tasks,
    )
    .await
}

fn secret_bytes() -> Vec<u8> {
    b"bench-secret-bytes-0123456789abcdef".to_vec()
}

/// A configuration like an operator's, on a fresh data dir under `dir`, with a route
/// script that does nothing for every event.
fn config(dir: &std::path::Path, secret: &[u8]) -> anyhow::Result<Config> {
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes)?;
    std::fs::write(routes.join("_default.rhai"), NOOP_ROUTE)?;
    let mut cfg = Config::default();
    cfg.store.path = dir.join("data");
    cfg.routes.dir = routes;
    cfg.dev.secrets = false;
    cfg.providers
        .typed_mut::<PomeloConfig>()
        .keys
        .push(PomeloKey {
            api_key: API_KEY.into(),
            api_secret: SecretRef::Literal(STANDARD.encode(secret)),
        });
    cfg.providers.typed_mut::<VerifyVaspConfig>().token =
        Some(SecretRef::Literal(VASP_TOKEN.into()));
    Ok(cfg)
}

/// The whole server, as `switchboard serve` runs it: listener, route workers, delivery,
/// sweeper.
struct Whole {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<switchboard_openapi::Result<()>>,
    store: Store,
}

impl Whole {
    async fn start(cfg: Config) -> anyhow::Result<Whole> {
        let app = App::build(cfg).await?;
        let store = app.store.clone();
        let socket = TcpListener::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let stop = CancellationToken::new();
        let bound = Bound {
            listener: Listener {
                socket,
                name: Arc::from("main"),
                tls: None,
            },
            url: format!("http://{addr}"),
        };
        let task = tokio::spawn(app.run(vec![bound], stop.clone()));
        Ok(Whole {
            addr,
            stop,
            task,
            store,
        })
    }

    /// Waits until the route workers have caught up (nothing left in the inbox), up to
    /// `within`; returns how long that took.
    async fn drained(&self, within: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        while !self.store.take_inbox(None, 1).await?.is_empty() {
            anyhow::ensure!(t.elapsed() < within, "routing did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(t.elapsed())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

/// The same allocator as the `switchboard` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // The server's route workers are this binary too (`route-worker`).
    if std::env::args().nth(1).as_deref() == Some(switchboard_core::route::worker::SUBCOMMAND) {
        std::process::exit(i32::from(switchboard_core::route::worker::main()));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    // Logs are formatted as in production (info level), then discarded.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter(std::env::var("BENCH_LOG").unwrap_or("info".into()))
        .init();
    if args.first().map(String::as_str) == Some("open-loop") {
        return external_open_loop(&args[1..]).await;
    }
    let o = options(&args)?;
    println!(
        "switchboard ingest benchmark: {} connections, {} s per phase, {} CPUs\n",
        o.connections,
        o.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let secret = secret_bytes();
    let mut summary: Vec<String> = Vec::new();

    let a = if o.runs("a") {
        // The ceiling: a bare poem handler behind the same listener.
        let bare: SharedEndpoint = Arc::from(
            Route::new()
                .at(POMELO_PATH, make_sync(|_| StatusCode::NO_CONTENT))
                .map_to_response()
                .boxed(),
        );
        let (addr_a, stop_a) = start_endpoint(bare).await?;
        let a = closed_loop(
            "(a) bare poem handler, 204",
            &[addr_a],
            Source::pomelo(&secret, API_KEY, "a"),
            &o,
        )
        .await?;
        a.print();
        stop_a.cancel();
        Some(a.rps())
    } else {
        None
    };
    let ratio = |name: &str, r: &Result, summary: &mut Vec<String>| {
        if let Some(a) = a {
            summary.push(format!("{name:<36} {:>3.0}% of (a)", 100.0 * r.rps() / a));
        }
    };

    if ["b", "v", "c", "bh"].iter().any(|p| o.runs(p)) {
        let dir = tempfile::tempdir()?;
        let server = Whole::start(config(dir.path(), &secret)?).await?;
        let addr = [server.addr];
        let flushes_before = server.store.stats().flushes.unwrap_or(0);
        let batches_before = server.store.stats().batches.unwrap_or_default();
        let mut b_rps = None;
        if o.runs("b") || o.runs("bh") {
            let b = closed_loop(
                "(b) Pomelo, signed, unique, the whole server",
                &addr,
                Source::pomelo(&secret, API_KEY, "b"),
                &o,
            )
            .await?;
            b.print();
            let flushes = server.store.stats().flushes.unwrap_or(0) - flushes_before;
            let routed_in = server.drained(Duration::from_secs(120)).await?;
            let (batches, jobs) = server.store.stats().batches.unwrap_or_default();
            let (batches, jobs) = (batches - batches_before.0, jobs - batches_before.1);
            ratio("b/a (durable Pomelo ingest)", &b, &mut summary);
            summary.push(format!(
                "group commit during (b):             {flushes} fsyncs for ~{} events ({:.0} per fsync); routing caught up {:.1} s after",
                b.requests,
                b.requests as f64 / flushes.max(1) as f64,
                routed_in.as_secs_f64()
            ));
            if batches > 0 {
                summary.push(format!(
                    "combined batches during (b):         {batches} batches for {jobs} commits and route runs ({:.1} per batch)",
                    jobs as f64 / batches as f64
                ));
            }
            b_rps = Some(b.rps());
        }
        if o.runs("v") {
            let v = closed_loop(
                "(v) VerifyVASP, unique, the whole server",
                &addr,
                Source::vasp(VASP_TOKEN, 1),
                &o,
            )
            .await?;
            v.print();
            server.drained(Duration::from_secs(120)).await?;
            ratio("v/a (durable VerifyVASP ingest)", &v, &mut summary);
        }
        if o.runs("c") {
            let storm: Vec<Prepared> = (0..8)
                .map(|n| pomelo_with(&secret, API_KEY, &format!("storm_{n}"), "123456", "SMS"))
                .collect();
            let c = closed_loop(
                "(c) duplicate storm (8 bodies, all repeats)",
                &addr,
                Source::Fixed(Arc::new(storm)),
                &o,
            )
            .await?;
            c.print();
            ratio("c/a (duplicates)", &c, &mut summary);
        }
        if let (true, Some(b)) = (o.runs("bh"), b_rps) {
            let half = b / 2.0;
            let bh = open_loop(
                "(b½) as (b), open loop at half of (b)'s rate",
                addr[0],
                Source::pomelo(&secret, API_KEY, "bh"),
                half,
                &o,
            )
            .await?;
            bh.print();
            summary.push(format!(
                "(b) at {half:.0} req/s (half its max):       p50 {:.2} ms, p99 {:.2} ms (target p99 <= 10 ms)",
                bh.p(0.5),
                bh.p(0.99)
            ));
        }
        summary.push(format!(
            "events stored by the whole server:   {}",
            server.store.event_count().await?
        ));
        server.stop().await?;
    }

    if o.runs("b0") {
        let dir = tempfile::tempdir()?;
        let app = App::build(config(dir.path(), &secret)?).await?;
        let (addr, stop) = start_endpoint(app.endpoint()).await?;
        let b0 = closed_loop(
            "(b0) as (b), endpoint alone: no routing, no delivery",
            &[addr],
            Source::pomelo(&secret, API_KEY, "b0"),
            &o,
        )
        .await?;
        b0.print();
        ratio("b0/a (endpoint alone)", &b0, &mut summary);
        stop.cancel();
    }

    if o.runs("s") {
        let s = engine_only(&o).await?;
        s.print();
        ratio("s/a (engine alone, no HTTP)", &s, &mut summary);
    }

    if o.runs("pg") {
        postgres_phases(&o, &secret, &mut summary).await?;
    }

    if !summary.is_empty() {
        println!();
        for line in &summary {
            println!("{line}");
        }
        println!();
    }
    if o.runs("d") {
        delivery_phases(&o).await?;
    }
    Ok(())
}

/// (pg1), (pg2): (b) on PostgreSQL, one instance, then two on the same database.
async fn postgres_phases(
    o: &Options,
    secret: &[u8],
    summary: &mut Vec<String>,
) -> anyhow::Result<()> {
    let Some(bin) = pg::bindir() else {
        println!(
            "(pg1), (pg2) skipped: PostgreSQL is not installed (Debian: apt-get install postgresql)"
        );
        return Ok(());
    };
    let cluster = pg::Cluster::start(bin)?;
    let pg_config = |dir: &std::path::Path, url: &str| -> anyhow::Result<Config> {
        let mut cfg = config(dir, secret)?;
        cfg.store.backend = StoreBackend::Postgres;
        cfg.store.url = Some(SecretRef::Literal(url.to_owned()));
        Ok(cfg)
    };

    let url = cluster.database("bench1")?;
    let dir = tempfile::tempdir()?;
    let one = Whole::start(pg_config(dir.path(), &url)?).await?;
    let p1 = closed_loop(
        "(pg1) as (b), PostgreSQL, one instance",
        &[one.addr],
        Source::pomelo(secret, API_KEY, "pg1"),
        o,
    )
    .await?;
    p1.print();
    let caught_up = one.drained(Duration::from_secs(300)).await?;
    one.stop().await?;
    ratio_line(summary, "pg1 (PostgreSQL, one instance)", &p1, caught_up);

    let url = cluster.database("bench2")?;
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = Whole::start(pg_config(d1.path(), &url)?).await?;
    let second = Whole::start(pg_config(d2.path(), &url)?).await?;
    let p2 = closed_loop(
        "(pg2) as (b), PostgreSQL, two instances",
        &[first.addr, second.addr],
        Source::pomelo(secret, API_KEY, "pg2"),
        o,
    )
    .await?;
    p2.print();
    let caught_up = first.drained(Duration::from_secs(300)).await?;
    first.stop().await?;
    second.stop().await?;
    ratio_line(summary, "pg2 (PostgreSQL, two instances)", &p2, caught_up);
    Ok(())
}

fn ratio_line(summary: &mut Vec<String>, name: &str, r: &Result, caught_up: Duration) {
    summary.push(format!(
        "{name:<36} {:.0} req/s, p99 {:.2} ms; routing caught up {:.1} s after",
        r.rps(),
        r.p(0.99),
        caught_up.as_secs_f64()
    ));
}

/// `open-loop`: an external server at a fixed rate.
async fn external_open_loop(args: &[String]) -> anyhow::Result<()> {
    let mut url = None;
    let mut provider = "pomelo".to_owned();
    let mut rate = None;
    let mut o = Options {
        seconds: 5,
        connections: 64,
        messages: 0,
        only: Vec::new(),
    };
    let mut api_key = API_KEY.to_owned();
    let mut secret = None;
    let mut token = VASP_TOKEN.to_owned();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).context("missing value")?.clone();
        match args[i].as_str() {
            "--url" => url = Some(value),
            "--provider" => provider = value,
            "--rate" => rate = Some(value.parse::<f64>()?),
            "--seconds" => o.seconds = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--pomelo-key" => api_key = value,
            "--pomelo-secret" => secret = Some(STANDARD.decode(value.trim())?),
            "--verifyvasp-token" => token = value,
            other => anyhow::bail!("unknown option {other} (see --help)"),
        }
        i += 2;
    }
    let url = url.context("--url is required")?;
    let rate = rate.context("--rate is required")?;
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let addr = tokio::net::lookup_host(&hostport)
        .await?
        .next()
        .context("--url names no address")?;
    // Bodies unlike any other client's (wrk's count from zero): a tag from the clock.
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u32
        | 1;
    let (name, source) = match provider.as_str() {
        "pomelo" => (
            "Pomelo, signed, unique, open loop",
            Source::pomelo(
                &secret.context("--pomelo-secret is required for pomelo")?,
                &api_key,
                &format!("open{tag:x}"),
            ),
        ),
        "verifyvasp" => ("VerifyVASP, unique, open loop", Source::vasp(&token, tag)),
        other => anyhow::bail!("unknown provider {other}"),
    };
    let r = open_loop(name, addr, source, rate, &o).await?;
    println!(
        "{:<36} at {rate:.0} req/s offered: {:.0} answered/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms ({} not 2xx)",
        r.name,
        r.rps(),
        r.p(0.5),
        r.p(0.99),
        r.p(0.999),
        r.non_2xx
    );
    Ok(())
}

/// Ingests `items` (id, method) with `connections` clients, at `rate` per second if given
/// (open loop) or as fast as they are answered; returns when each ingest request started.
async fn ingest(
    addr: SocketAddr,
    secret: &[u8],
    items: Vec<(String, &'static str)>,
    connections: usize,
    rate: Option<f64>,
) -> anyhow::Result<HashMap<String, Instant>> {
    let prepared: Vec<(String, Prepared)> = items
        .into_iter()
        .map(|(id, method)| {
            let p = pomelo_with(secret, API_KEY, &id, "123456", method);
            (id, p)
        })
        .collect();
    let queue = Arc::new(tokio::sync::Mutex::new(prepared.into_iter()));
    let started = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (queue, started, next) = (queue.clone(), started.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            loop {
                let Some((id, p)) = queue.lock().await.next() else {
                    break;
                };
                if let Some(r) = rate {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / r)).into())
                        .await;
                }
                started.lock().unwrap().insert(id, Instant::now());
                anyhow::ensure!(
                    send(&mut sender, addr, p).await?,
                    "a notification was refused"
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let map = std::mem::take(&mut *started.lock().unwrap());
    Ok(map)
}
/// (e), (f), (e½): route + delivery to local SMTP and HTTP sinks.
async fn delivery_phases(o: &Options) -> anyhow::Result<()> {
    let (smtp, mails) = delivery::smtp_sink().await?;
    let (http, calls) = delivery::http_sink().await?;
    let dir = tempfile::tempdir()?;
    let routes = dir.path().join("routes/pomelo");
    std::fs::create_dir_all(&routes)?;
    std::fs::write(routes.join("tokenization_otp.rhai"), delivery::SCRIPT)?;
    let secret = secret_bytes();
    let mut cfg = Config::default();
    cfg.store.path = dir.path().join("data");
    cfg.dev.secrets = false;
    cfg.routes.dir = dir.path().join("routes");
    cfg.providers
        .typed_mut::<PomeloConfig>()
        .keys
        .push(PomeloKey {
            api_key: API_KEY.into(),
            api_secret: SecretRef::Literal(STANDARD.encode(&secret)),
        });
    let email = &mut cfg.channels.email;
    email.kind = switchboard_plugins::channels::email::config::EmailKind::Smtp;
    email.host = "127.0.0.1".into();
    email.port = Some(smtp.port());
    email.tls = switchboard_plugins::channels::email::config::SmtpTls::None;
    email.from = "Bank <otp@bank.example>".into();
    cfg.services.insert(
        "sink".into(),
        switchboard_plugins::services::ServiceConfig {
            base_url: format!("http://{http}"),
            headers: Default::default(),
            timeout: switchboard_core::units::HumanDuration::secs(5),
            ca_file: None,
        },
    );
    println!(
        "route + delivery: {} messages per run, email concurrency {} over {} pooled SMTP connections, http concurrency {}",
        o.messages,
        cfg.channels.email.concurrency,
        cfg.channels.email.pool_size,
        cfg.channels.http.concurrency
    );
    // The whole server this time: listener, route workers and delivery workers.
    let server = Whole::start(cfg).await?;
    let addr = server.addr;
    let within = Duration::from_secs(120);
    let ids = |prefix: &str, method: &'static str| {
        (0..o.messages)
            .map(|i| (format!("{prefix}-{i}"), method))
            .collect::<Vec<_>>()
    };

    let sent = ingest(addr, &secret, ids("e", "EMAIL"), 32, None).await?;
    let e = delivery::collect(
        "(e) emails to a local SMTP sink, burst",
        &sent,
        &mails,
        within,
    )
    .await?;
    e.print();
    let sent = ingest(addr, &secret, ids("h", "SMS"), 32, None).await?;
    let h = delivery::collect(
        "(f) HTTP deliveries to a local server, burst",
        &sent,
        &calls,
        within,
    )
    .await?;
    h.print();
    let offered = 1000usize;
    let n = offered * o.seconds as usize;
    let sent = ingest(
        addr,
        &secret,
        (0..n).map(|i| (format!("r-{i}"), "EMAIL")).collect(),
        32,
        Some(offered as f64),
    )
    .await?;
    let r = delivery::collect("(e½) emails at 1000/s offered", &sent, &mails, within).await?;
    r.print();
    let _ = server.stop().await;
    println!();
    println!(
        "emails/s (burst):            {:.0} (target >= 1000)",
        e.rate()
    );
    println!(
        "emails at 1000/s offered:    p50 {:.2} ms, p99 {:.2} ms from ingest to the SMTP sink",
        r.p(0.5),
        r.p(0.99)
    );
    Ok(())
}
