//! `cargo run --release -p switchboard-bench` — the ingest benchmark.
//!
//! In one process run, on one machine, with the same listener code and the same load
//! generator:
//!
//! - (a) a bare poem handler answering 204: the ceiling of this machine and stack;
//! - (b) signed Pomelo notifications with unique bodies through the full durable path
//!   (HMAC check, parse, idempotency claim, sled write, group-committed fsync, answer);
//! - (c) a storm of duplicates: the same few signed bodies over and over;
//! - (s) the engine alone, without HTTP: the same notifications submitted straight to
//!   the ingestor, to show how much of (b) is the durable store;
//! - (b½) (b) again, open-loop at half of (b)'s maximum rate, latency measured from each
//!   request's scheduled start (no coordinated omission).
//!
//! Each prints requests/s and p50/p99 latency; the summary gives b/a and b½'s p99.
//! Options: `--seconds N` (per phase, default 5), `--connections N` (default 64),
//! `--only b` (phase (b) alone, for profiling), `--only r` (what counting a route run on
//! disk costs, alone). `BENCH_LOG=warn` drops the per-event log
//! line that production writes at `info`.

mod delivery;

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
use switchboard_core::secret::SecretRef;
use switchboard_openapi::{
    app::App,
    config::Config,
    server::{Listener, ServeOptions, SharedEndpoint, serve},
};
use switchboard_plugins::providers::pomelo::config::{PomeloConfig, PomeloKey};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const PATH: &str = "/pomelo/tokenization/otp";
const API_KEY: &str = "bench-key";

struct Options {
    seconds: u64,
    connections: usize,
    /// Messages per delivery run.
    messages: usize,
    /// `b`: only the durable ingest phase (for profiling); `d`: only route + delivery;
    /// anything else: everything.
    only: String,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: 5,
        connections: 64,
        messages: 3000,
        only: "abc".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "switchboard-bench [--seconds N] [--connections N] [--messages N] [--only b|d|r]\n\n\
             Without --only: every ingest phase (a, b, c, s, b½), then route + delivery (e, f, e½).\n\
             --only b: the durable ingest path alone (for profiling); --only d: route + delivery; --only r: the route-run count alone."
        );
        std::process::exit(0);
    }
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).context("missing value")?;
        match args[i].as_str() {
            "--seconds" => o.seconds = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--messages" => o.messages = value.parse()?,
            "--only" => o.only = value.clone(),
            other => anyhow::bail!("unknown option {other}"),
        }
        i += 2;
    }
    Ok(o)
}

/// One prepared request.
#[derive(Clone)]
struct Prepared {
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

fn sign(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(ts.as_bytes());
    mac.update(PATH.as_bytes());
    mac.update(body);
    format!(
        "hmac-sha256 {}",
        STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn pomelo(secret: &[u8], n: u64) -> Prepared {
    pomelo_with(
        secret,
        &format!("card_{n}"),
        &format!("{:06}", n % 1_000_000),
        "SMS",
    )
}

/// A signed Pomelo OTP notification for card `card`, sent by `method`.
fn pomelo_with(secret: &[u8], card: &str, otp: &str, method: &str) -> Prepared {
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
        headers: vec![
            ("content-type", "application/json".into()),
            ("x-api-key", API_KEY.into()),
            ("x-signature", sign(secret, &ts, &body)),
            ("x-timestamp", ts),
            ("x-endpoint", PATH.into()),
        ],
        body: Bytes::from(body),
    }
}

/// Where requests come from: a fixed list cycled through, or fresh unique ones.
#[derive(Clone)]
enum Source {
    Fixed(Arc<Vec<Prepared>>),
    Unique(Arc<Vec<u8>>, Arc<AtomicU64>),
}

impl Source {
    fn next(&self, i: u64) -> Prepared {
        match self {
            Source::Fixed(list) => list[(i % list.len() as u64) as usize].clone(),
            Source::Unique(secret, counter) => {
                pomelo(secret, counter.fetch_add(1, Ordering::Relaxed))
            }
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
            "{:<44} {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {} not 2xx)",
            self.name,
            self.rps(),
            self.p(0.50),
            self.p(0.99),
            self.requests,
            self.non_2xx
        );
    }
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    p: Prepared,
) -> anyhow::Result<bool> {
    let mut req = hyper::Request::post(format!("http://{addr}{PATH}"));
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
/// previous answer arrives.
async fn closed_loop(
    name: &'static str,
    addr: SocketAddr,
    source: Source,
    o: &Options,
) -> anyhow::Result<Result> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..o.connections {
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
    let interval = Duration::from_secs_f64(1.0 / rate);
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

/// (r) What counting a route run on disk costs alone: events already in the inbox, and
/// `connections` tasks that each count a run (`set_route_starts`, durable on return), as
/// the router does before every run.
async fn run_count_phase(o: &Options) -> anyhow::Result<Result> {
    use switchboard_core::{
        config::StoreConfig,
        ingest::{Content, Ingestor, OnConflict, Submission},
        metrics::Metrics,
        store::{Store, StoredResponse},
    };
    let dir = tempfile::tempdir()?;
    let cfg = StoreConfig {
        path: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let store = Store::open_sled(&cfg)?;
    let ingest = Ingestor::new(store.clone(), Metrics::shared(), &cfg);
    let n = 50_000u64;
    for i in 0..n {
        let body = format!("{{\"n\":{i}}}").into_bytes();
        ingest
            .submit(Submission {
                answer_within: None,
                provider: "pomelo".into(),
                endpoint: PATH.into(),
                event_type: "tokenization_otp".into(),
                key: format!("run-count-{i}"),
                content: Content::Parsed {
                    data: serde_json::json!({"n": i}),
                    flags: Vec::new(),
                },
                body,
                on_conflict: OnConflict::KeepAndFlag,
                meta: Default::default(),
                secret_paths: Vec::new(),
                response: StoredResponse::empty(204),
                dedup_window: None,
            })
            .await?;
    }
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.take_inbox(cursor, 1000).await?;
        cursor = page.last().copied();
        let done = page.len() < 1000;
        ids.extend(page);
        if done {
            break;
        }
    }
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let started = Instant::now();
    let mut tasks: Vec<Worker> = Vec::new();
    for _ in 0..o.connections {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut count = 0u64;
            loop {
                let Some(id) = ids.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                store.set_route_starts(id, 1).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                count += 1;
            }
            anyhow::Ok((hist, count, 0))
        }));
    }
    let mut r = collect(
        "(r) route runs counted on disk, alone",
        Duration::ZERO,
        tasks,
    )
    .await?;
    r.elapsed = started.elapsed();
    Ok(r)
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

async fn start(ep: SharedEndpoint) -> anyhow::Result<(SocketAddr, CancellationToken)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let opts = ServeOptions {
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(1),
        drain_limit: 4 << 20,
        drain_timeout: Duration::from_secs(30),
    };
    let metrics = switchboard_core::metrics::Metrics::shared();
    let listener = Listener {
        socket: listener,
        name: Arc::from("main"),
        tls: None,
    };
    tokio::spawn(serve(listener, ep, opts, metrics, shutdown.clone()));
    Ok((addr, shutdown))
}

/// (s): the engine alone, no HTTP: `connections` tasks submitting unique Pomelo-sized
/// notifications straight to the ingestor (claim, store, group flush), on a fresh store.
async fn engine_only(o: &Options) -> anyhow::Result<Result> {
    use switchboard_core::{
        config::StoreConfig,
        ingest::{Content, Ingestor, OnConflict, Submission},
        metrics::Metrics,
        store::{Store, StoredResponse},
    };
    let dir = tempfile::tempdir()?;
    let cfg = StoreConfig {
        path: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let ingest = Ingestor::new(Store::open_sled(&cfg)?, Metrics::shared(), &cfg);
    let secret = secret_bytes();
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let (ingest, secret, counter) = (ingest.clone(), secret.clone(), counter.clone());
        let (stop, measuring) = (stop.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let (mut n, mut bad) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let p = pomelo(&secret, counter.fetch_add(1, Ordering::Relaxed));
                let data: serde_json::Value = serde_json::from_slice(&p.body)?;
                let t = Instant::now();
                let sub = Submission {
                    answer_within: None,
                    dedup_window: None,
                    provider: "pomelo".into(),
                    endpoint: PATH.into(),
                    event_type: "tokenization_otp".into(),
                    key: format!("{PATH}#{}", switchboard_core::ingest::fingerprint(&p.body)),
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
        "(s) the engine alone: ingest + sled + flush",
        elapsed,
        tasks,
    )
    .await
}

fn secret_bytes() -> Vec<u8> {
    b"bench-secret-bytes-0123456789abcdef".to_vec()
}

/// The real server, built from a configuration like an operator's, on a fresh data dir.
async fn real_server(
    dir: &std::path::Path,
    secret: &[u8],
) -> anyhow::Result<(SocketAddr, CancellationToken, App)> {
    let mut cfg = Config::default();
    cfg.store.path = dir.join("data");
    cfg.dev.secrets = false;
    cfg.providers
        .typed_mut::<PomeloConfig>()
        .keys
        .push(PomeloKey {
            api_key: API_KEY.into(),
            api_secret: SecretRef::Literal(STANDARD.encode(secret)),
        });
    let app = App::build(cfg).await?;
    let (addr, stop) = start(app.endpoint()).await?;
    Ok((addr, stop, app))
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
    let o = options()?;
    // Logs are formatted as in production (info level), then discarded.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter(std::env::var("BENCH_LOG").unwrap_or("info".into()))
        .init();
    println!(
        "switchboard ingest benchmark: {} connections, {} s per phase, {} CPUs\n",
        o.connections,
        o.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    if o.only == "d" {
        return delivery_phases(&o).await;
    }
    if o.only == "r" {
        run_count_phase(&o).await?.print();
        return Ok(());
    }
    if o.only == "b" {
        // For profiling the durable path alone.
        let dir = tempfile::tempdir()?;
        let (addr, _stop, _app) = real_server(dir.path(), &secret_bytes()).await?;
        let unique = Source::Unique(Arc::new(secret_bytes()), Arc::new(AtomicU64::new(0)));
        closed_loop(
            "(b) signed Pomelo, unique bodies, durable",
            addr,
            unique,
            &o,
        )
        .await?
        .print();
        return Ok(());
    }

    // (a) The ceiling: a bare poem handler behind the same listener.
    let bare: SharedEndpoint = Arc::from(
        Route::new()
            .at(PATH, make_sync(|_| StatusCode::NO_CONTENT))
            .map_to_response()
            .boxed(),
    );
    let (addr_a, stop_a) = start(bare).await?;
    let secret = secret_bytes();
    let unique = || Source::Unique(Arc::new(secret.clone()), Arc::new(AtomicU64::new(0)));
    let a = closed_loop("(a) bare poem handler, 204", addr_a, unique(), &o).await?;
    a.print();
    stop_a.cancel();

    // (b), (c), (b½): the real server.
    let dir = tempfile::tempdir()?;
    let (addr_b, stop_b, app) = real_server(dir.path(), &secret).await?;
    let store = app.store.clone();
    let flushes_before = store.stats().flushes.unwrap_or(0);
    let b = closed_loop(
        "(b) signed Pomelo, unique bodies, durable",
        addr_b,
        unique(),
        &o,
    )
    .await?;
    b.print();
    let flushes = store.stats().flushes.unwrap_or(0) - flushes_before;

    let storm: Vec<Prepared> = (0..8).map(|n| pomelo(&secret, 1_000_000_000 + n)).collect();
    let c = closed_loop(
        "(c) duplicate storm (8 bodies, all repeats)",
        addr_b,
        Source::Fixed(Arc::new(storm)),
        &o,
    )
    .await?;
    c.print();

    let s = engine_only(&o).await?;
    s.print();

    let half = b.rps() / 2.0;
    let b_half = open_loop(
        "(b½) as (b), open loop at half of (b)'s rate",
        addr_b,
        unique(),
        half,
        &o,
    )
    .await?;
    b_half.print();
    stop_b.cancel();

    let events = store.event_count().await?;
    println!();
    println!(
        "b/a throughput ratio:        {:.0}% (target >= 50%)",
        100.0 * b.rps() / a.rps()
    );
    println!(
        "b at {:.0} req/s (half max):  p50 {:.2} ms, p99 {:.2} ms (target p99 <= 10 ms)",
        half,
        b_half.p(0.5),
        b_half.p(0.99)
    );
    println!(
        "c/a throughput ratio:        {:.0}%",
        100.0 * c.rps() / a.rps()
    );
    println!(
        "s/a throughput ratio:        {:.0}% (the durable engine alone, no HTTP)",
        100.0 * s.rps() / a.rps()
    );
    println!(
        "group commit during (b):     {} fsyncs for ~{} events ({:.0} events per fsync)",
        flushes,
        b.requests,
        b.requests as f64 / flushes.max(1) as f64
    );
    println!("events stored in total:      {events}");
    println!();
    delivery_phases(&o).await
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
            let p = pomelo_with(secret, &id, "123456", method);
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
    // Defaults, then `SWITCHBOARD_*` variables (`SWITCHBOARD_ROUTES__ISOLATION=in_process`
    // compares the route workers with runs in the server's own threads).
    let mut cfg = Config::load(None)?;
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
        "route + delivery: {} messages per run, scripts {:?}, email concurrency {} over {} pooled SMTP connections, http concurrency {}",
        o.messages,
        cfg.routes.isolation,
        cfg.channels.email.concurrency,
        cfg.channels.email.pool_size,
        cfg.channels.http.concurrency
    );
    let app = App::build(cfg).await?;
    // The whole server this time: listener, route workers and delivery workers.
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let stop = CancellationToken::new();
    let bound = switchboard_openapi::app::Bound {
        listener: Listener {
            socket,
            name: Arc::from("main"),
            tls: None,
        },
        url: format!("http://{addr}"),
    };
    let run_app = tokio::spawn(app.run(vec![bound], stop.clone()));
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
    stop.cancel();
    let _ = run_app.await;
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
