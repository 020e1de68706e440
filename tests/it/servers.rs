//! The other side of deliveries, started by the tests: a real SMTP server (Python's
//! aiosmtpd) and a real HTTP server that records what it is sent and answers as told.

use std::{
    collections::{HashMap, VecDeque},
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, Response, Server as PoemServer,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
};
use serde_json::{Value, json};

/// One message the SMTP server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub data: String,
    /// The client authenticated with SMTP AUTH.
    pub authenticated: bool,
    /// The session was encrypted (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The client's address and port: the same port means the same connection.
    pub peer: String,
}

/// aiosmtpd in a child process.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl SmtpSink {
    /// Starts the server; `args` as `tests/tools/smtp_sink.py` takes them.
    pub fn start(dir: &Path, args: &[&str]) -> SmtpSink {
        let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/smtp_sink.py");
        let out = dir.join("mail");
        let mut child = Command::new("python3")
            .arg(&tool)
            .args(["--dir", out.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed for the SMTP tests");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("smtp_sink.py did not start (is aiosmtpd installed? `pip install aiosmtpd`): {line:?}"));
        SmtpSink {
            child,
            port,
            dir: out,
        }
    }

    /// Every message accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| Mail {
                to: v["to"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                data: v["data"].as_str().unwrap_or("").to_owned(),
                authenticated: v["authenticated"] == true,
                tls: v["tls"] == true,
                peer: v["peer"].to_string(),
            })
            .collect()
    }

    /// Waits until `n` messages arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.mails();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} emails arrived",
                m.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request the HTTP server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn form(&self) -> HashMap<String, String> {
        url_decode_form(&String::from_utf8_lossy(&self.body))
    }
}

fn url_decode_form(s: &str) -> HashMap<String, String> {
    let decode = |v: &str| {
        let v = v.replace('+', " ");
        let mut out = Vec::new();
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                    out.push(x);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// How the HTTP server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Never answer (the connection hangs until the client gives up or dies).
    pub hang: bool,
    /// Answer only after this long (a slow service).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: String::new(),
            hang: false,
            delay: Duration::ZERO,
        }
    }

    pub fn json(v: Value) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: v.to_string(),
            hang: false,
            delay: Duration::ZERO,
        }
    }

    /// The same answer, after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(200)
        }
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// Answers by path prefix, taken in order (the last one stays).
    plans: Vec<(String, VecDeque<Reply>)>,
}

/// A recording HTTP server.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Recorder {
    /// Starts on a free port.
    pub async fn start() -> Recorder {
        Recorder::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (to come up where a client already tried and failed).
    pub async fn start_on(addr: SocketAddr) -> Recorder {
        let state = Arc::new(Mutex::new(State::default()));
        let acceptor = TcpListener::bind(addr).into_acceptor().await.unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        let st = state.clone();
        let ep = poem::endpoint::make(move |mut req: poem::Request| {
            let st = st.clone();
            async move {
                let body = req.take_body().into_vec().await.unwrap_or_default();
                let rec = Recorded {
                    method: req.method().to_string(),
                    path: req.uri().path().to_owned(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body,
                };
                let reply = {
                    let mut s = st.lock().unwrap();
                    let path = rec.path.clone();
                    s.requests.push(rec);
                    s.plans
                        .iter_mut()
                        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                        .map(|(_, q)| {
                            if q.len() > 1 {
                                q.pop_front().unwrap()
                            } else {
                                q.front().cloned().unwrap()
                            }
                        })
                        .unwrap_or_else(|| Reply::status(200))
                };
                if reply.hang {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(reply.delay).await;
                let mut r = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
                for (k, v) in &reply.headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                r.body(reply.body)
            }
        });
        tokio::spawn(PoemServer::new_with_acceptor(acceptor).run(ep.map_to_response()));
        Recorder { addr, state }
    }

    /// Answers requests under `prefix` with `replies` in order (the last one repeats).
    pub fn plan(&self, prefix: &str, replies: Vec<Reply>) {
        let mut s = self.state.lock().unwrap();
        s.plans.retain(|(p, _)| p != prefix);
        s.plans.push((prefix.into(), replies.into()));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests to `path` so far.
    pub fn to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `n` requests to `path` arrived.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.to(path);
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests to {path} arrived",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A port nothing listens on yet (to start a server there later).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The `[channels.email]` table that sends to the SMTP server on `port`, without TLS.
pub fn smtp(port: u16) -> String {
    format!(
        "[channels.email]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"Bank <otp@bank.example>\"\n"
    )
}

/// A `[services.<name>]` table for a recorder, with `extra` lines.
pub fn service(name: &str, r: &Recorder, extra: &str) -> String {
    format!("[services.{name}]\nbase_url = \"{}\"\n{extra}\n", r.url())
}

/// The customers service the default routes look card holders up in: every `/cards/`
/// path answers a phone and an email, after `delay` when given.
pub async fn customers(delay: Option<Duration>) -> Recorder {
    let r = Recorder::start().await;
    let mut reply = Reply::json(json!({"phone": "+48500100200", "email": "jan@example.com"}));
    if let Some(d) = delay {
        reply = reply.after(d);
    }
    r.plan("/cards/", vec![reply]);
    r
}
