//! Starting the real binary on a real socket, and talking to it like a provider would.
//!
//! Signatures here are computed with `hmac`/`sha2` directly, following the provider's
//! written contract, not with any code of switchboard's.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const POMELO_KEY: &str = "h3Ws4Cv09JcCdw7732ig+1Eq3I2b+IWOI1anUu1A4dE=";
/// The api-secret as Pomelo hands it over: base64 text of these bytes.
pub const POMELO_SECRET_BYTES: &[u8] = b"pomelo-secret-bytes-for-the-tests";
pub const VASP_TOKEN: &str = "vasp-token-for-tests-0123456789";
pub const POMELO_PATH: &str = "/pomelo/tokenization/otp";
pub const VASP_PATH: &str = "/verifyvasp/callback";

/// Runs `cmd`, which must succeed; its standard output (both outputs when it fails).
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The binary with `args`, run in `dir`: no `SWITCHBOARD_CONFIG` from outside, the
/// VerifyVASP token the test configurations name in its environment.
pub fn switchboard_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_CONFIG")
        .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN);
    cmd
}

/// Runs [`switchboard_command`], which must succeed; its standard output.
pub fn switchboard(dir: &Path, args: &[&str]) -> String {
    run(&mut switchboard_command(dir, args))
}

pub fn pomelo_secret_b64() -> String {
    STANDARD.encode(POMELO_SECRET_BYTES)
}

/// Extra settings: `(section, lines)`, appended under that section of the base config.
pub type Extra<'a> = &'a [(&'a str, &'a str)];

/// The configuration every test starts from, with `extra` lines added to its sections
/// (`server`, `store`, `admin`, `log`, `pomelo`, `verifyvasp`); `tail` is appended as it is
/// (further tables).
pub fn base_config(data: &Path, extra: Extra<'_>) -> String {
    let get = |sec: &str| {
        extra
            .iter()
            .filter(|(s, _)| *s == sec)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server}

[store]
path = "{data}"
{store}

[log]
{log}

[dev]
secrets = false

[admin]
token = "{ADMIN_TOKEN}"
{admin}

[providers.pomelo]
{pomelo}

[[providers.pomelo.keys]]
api_key = "{POMELO_KEY}"
api_secret = "{secret}"

[providers.verifyvasp]
token = "env:SWITCHBOARD_TEST_VASP_TOKEN"
{vasp}

{tail}
"#,
        data = data.display(),
        secret = pomelo_secret_b64(),
        server = get("server"),
        store = get("store"),
        log = get("log"),
        admin = get("admin"),
        pomelo = get("pomelo"),
        vasp = get("verifyvasp"),
        tail = get("tail"),
    )
}

/// A temporary directory shared by successive runs of the server, and, when the tests run
/// on PostgreSQL, the database those runs share.
pub struct Dir {
    pub tmp: tempfile::TempDir,
    database: std::sync::OnceLock<String>,
}

impl Dir {
    pub fn new() -> Arc<Dir> {
        Arc::new(Dir {
            tmp: tempfile::tempdir().expect("tempdir"),
            database: std::sync::OnceLock::new(),
        })
    }

    /// The URL of this directory's own PostgreSQL database (created on first use).
    pub fn database(&self) -> &str {
        self.database
            .get_or_init(|| crate::pg::cluster().database())
    }

    /// The `[store]` lines that put its servers on PostgreSQL, when the tests run there.
    pub fn store_lines(&self) -> Option<String> {
        crate::pg::everywhere().then(|| crate::pg::store_lines(self.database()))
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
}

/// A running `switchboard serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Further listeners: name → address.
    pub listeners: std::collections::HashMap<String, SocketAddr>,
    /// Keeps the directory alive as long as the server runs.
    _dir: Arc<Dir>,
    pub log_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
}

static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Server {
    /// Starts a server with the base configuration plus `extra`.
    pub fn start(extra: Extra<'_>) -> Server {
        Server::start_in(Dir::new(), extra)
    }

    /// Starts a server on an existing directory (a restart).
    pub fn start_in(dir: Arc<Dir>, extra: Extra<'_>) -> Server {
        Server::start_env(dir, extra, &[])
    }

    /// Starts a server on an existing directory with extra environment variables.
    pub fn start_env(dir: Arc<Dir>, extra: Extra<'_>, env: &[(&str, &str)]) -> Server {
        let cfg = dir.path().join("switchboard.toml");
        // A test that names its own backend keeps it.
        let own = extra
            .iter()
            .any(|(sec, l)| *sec == "store" && l.contains("backend"));
        let store = dir.store_lines().filter(|_| !own);
        let mut all = extra.to_vec();
        if let Some(lines) = &store {
            all.push(("store", lines));
        }
        std::fs::write(&cfg, base_config(&dir.data(), &all)).expect("write config");
        Server::spawn(dir, &["serve", "--config", cfg.to_str().unwrap()], env)
    }

    /// Starts `switchboard` with these arguments and environment in `dir`.
    pub fn spawn(dir: Arc<Dir>, args: &[&str], env: &[(&str, &str)]) -> Server {
        let n = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = dir.path().join(format!("log-{n}.txt"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir.path())
            .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN)
            .env("RUST_LOG", "debug,hyper=info,h2=info,sled=info")
            .env_remove("SWITCHBOARD_CONFIG")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let out = child.stdout.take().expect("stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut listeners = std::collections::HashMap::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    // Further listeners are printed before the main one.
                    if let Some(rest) = line.strip_prefix("switchboard listener ") {
                        if let Some((name, url)) = rest.split_once(" on https://") {
                            listeners.insert(
                                name.to_owned(),
                                url.trim().parse::<SocketAddr>().expect("listener address"),
                            );
                        }
                    }
                    if let Some(addr) = line.strip_prefix("switchboard listening on ") {
                        let addr = addr
                            .trim()
                            .trim_start_matches("http://")
                            .trim_start_matches("https://");
                        let _ = tx.send((addr.to_owned(), listeners.clone()));
                    }
                    stdout.lock().unwrap().push(line);
                }
            });
        }
        let (addr, listeners) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((a, l)) => (a.parse().expect("address"), l),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "switchboard did not start; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        Server {
            child: Some(child),
            addr,
            listeners,
            _dir: dir,
            log_path,
            stdout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's log so far. Its lines are written by a thread of their own, a wake-up
    /// after they are logged: this waits until the log has stopped growing for a moment
    /// (at most a second), so that a line logged before the last answer is in it, and an
    /// assertion that a line is absent sees every line written so far.
    pub fn logs(&self) -> String {
        let size = || std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = size();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        sigterm(&c);
        wait_with_deadline(&mut c, Duration::from_secs(30))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        wait_with_deadline(&mut c, Duration::from_secs(30))
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

pub fn sigterm(c: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

pub fn wait_with_deadline(c: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(s) = c.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > until {
            let _ = c.kill();
            panic!("process did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `base64(HMAC-SHA256(base64decode(secret), ts + endpoint + body))`, per Pomelo's contract.
pub fn pomelo_signature(secret_b64: &str, ts: &str, endpoint: &str, body: &[u8]) -> String {
    let key = STANDARD.decode(secret_b64).expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(ts.as_bytes());
    mac.update(endpoint.as_bytes());
    mac.update(body);
    format!(
        "hmac-sha256 {}",
        STANDARD.encode(mac.finalize().into_bytes())
    )
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A Pomelo request signed now with the test key.
pub fn pomelo_request(c: &reqwest::Client, s: &Server, body: &[u8]) -> reqwest::RequestBuilder {
    let ts = now().to_string();
    let sig = pomelo_signature(&pomelo_secret_b64(), &ts, POMELO_PATH, body);
    c.post(s.url(POMELO_PATH))
        .header("content-type", "application/json")
        .header("x-api-key", POMELO_KEY)
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("x-endpoint", POMELO_PATH)
        .body(body.to_vec())
}

pub fn pomelo_body(otp: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_123456789"},
        "otp": otp,
        "to": "m***@example.com",
        "contact_method": "SMS",
    }))
    .unwrap()
}

/// A Pomelo notification whose OTP goes out by `method` (`SMS`, `EMAIL`, ...).
pub fn pomelo_otp(otp: &str, method: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "token": {"origin": "APPLE_PAY", "card_id": "card_123456789", "user_id": "user_1"},
        "otp": otp, "to": "m***@example.com", "contact_method": method,
    }))
    .unwrap()
}

pub fn vasp_request(c: &reqwest::Client, s: &Server, body: &[u8]) -> reqwest::RequestBuilder {
    c.post(s.url(VASP_PATH))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {VASP_TOKEN}"))
        .body(body.to_vec())
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `GET` an admin path with the admin token; the answer, whatever its status.
pub async fn admin_get(c: &reqwest::Client, s: &Server, path: &str) -> reqwest::Response {
    c.get(s.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
}

/// `GET` an admin path with the admin token; returns the JSON answer.
pub async fn admin(c: &reqwest::Client, s: &Server, path: &str) -> serde_json::Value {
    let r = admin_get(c, s, path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("admin json")
}

/// Events of a provider, newest first.
pub async fn events(c: &reqwest::Client, s: &Server, query: &str) -> Vec<serde_json::Value> {
    admin(c, s, &format!("/admin/events?limit=500&{query}")).await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `GET path` (no token); its body as text, whatever the status.
pub async fn get_text(c: &reqwest::Client, s: &Server, path: &str) -> String {
    c.get(s.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `GET path` (no token); its body as JSON, whatever the status.
pub async fn get_json(c: &reqwest::Client, s: &Server, path: &str) -> serde_json::Value {
    c.get(s.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A metric's value from `/metrics` (0 when absent).
pub async fn metric(c: &reqwest::Client, s: &Server, series: &str) -> f64 {
    let text = get_text(c, s, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The parts of an answer that must be identical between duplicates (the Date header
/// aside).
pub async fn answer(r: reqwest::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = r.status().as_u16();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| *k != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    headers.sort();
    let body = r.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

/// Polls until no event waits for its route.
pub async fn until_routed(c: &reqwest::Client, s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events(c, s, "status=received").await.is_empty() {
        assert!(Instant::now() < deadline, "events were never routed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `GET path` (admin) until `check` holds for its JSON.
pub async fn until(
    c: &reqwest::Client,
    s: &Server,
    path: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = admin(c, s, path).await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last answer: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The only event of a provider, once its route ran, in detail (with its actions).
pub async fn routed_event(c: &reqwest::Client, s: &Server, provider: &str) -> serde_json::Value {
    until_routed(c, s).await;
    let evs = events(c, s, &format!("provider={provider}")).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    admin(
        c,
        s,
        &format!("/admin/events/{}", evs[0]["id"].as_str().unwrap()),
    )
    .await
}

/// Sends a signed Pomelo notification and checks it was accepted (204).
pub async fn accepted_pomelo(c: &reqwest::Client, s: &Server, body: &[u8]) {
    let r = pomelo_request(c, s, body).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
}

/// Sends a VerifyVASP callback and checks it was accepted (200).
pub async fn accepted_vasp(c: &reqwest::Client, s: &Server, body: &[u8]) {
    let r = vasp_request(c, s, body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// Polls an admin listing until it holds exactly `n` items; the page.
pub async fn until_items(
    c: &reqwest::Client,
    s: &Server,
    path: &str,
    n: usize,
    what: &str,
) -> serde_json::Value {
    until(c, s, path, what, |p| {
        p["items"].as_array().is_some_and(|a| a.len() == n)
    })
    .await
}

/// `POST` to an admin path with the admin token.
pub async fn admin_post(c: &reqwest::Client, s: &Server, path: &str) -> reqwest::Response {
    c.post(s.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}
