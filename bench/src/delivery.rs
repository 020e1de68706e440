//! Route + delivery: notifications are ingested, routed by a script that queues one email
//! (or one HTTP delivery) each, and delivered to a local SMTP sink (or HTTP sink). The
//! sinks record when each message arrives; the time from the ingest request to the
//! arrival is the end-to-end latency.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use poem::{
    EndpointExt, Server as PoemServer,
    listener::{Acceptor, Listener, TcpListener as PoemListener},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// When each message id arrived.
pub type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A minimal SMTP server: it answers every command of a transaction and records the
/// Subject of each message (the bench puts the message's id there).
pub async fn smtp_sink() -> anyhow::Result<(SocketAddr, Arrivals)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = smtp_conn(stream, seen).await;
            });
        }
    });
    Ok((addr, arrivals))
}

async fn smtp_conn(stream: tokio::net::TcpStream, seen: Arrivals) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        if cmd.starts_with("EHLO") {
            w.write_all(b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                .await?;
        } else if cmd.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut subject = None;
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                if subject.is_none() {
                    if let Some(s) = line.strip_prefix("Subject: ") {
                        subject = Some(s.trim().to_owned());
                    }
                }
            }
            if let Some(s) = subject {
                seen.lock().unwrap().insert(s, Instant::now());
            }
            w.write_all(b"250 accepted\r\n").await?;
        } else if cmd.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if cmd.starts_with("HELO")
            || cmd.starts_with("MAIL")
            || cmd.starts_with("RCPT")
            || cmd.starts_with("RSET")
            || cmd.starts_with("NOOP")
        {
            w.write_all(b"250 ok\r\n").await?;
        } else {
            w.write_all(b"502 not implemented\r\n").await?;
        }
    }
}

/// An HTTP server answering 204 to everything and recording the `id` of each JSON body.
pub async fn http_sink() -> anyhow::Result<(SocketAddr, Arrivals)> {
    let acceptor = PoemListener::bind("127.0.0.1:0").into_acceptor().await?;
    let addr = *acceptor.local_addr()[0]
        .as_socket_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    let ep = poem::endpoint::make(move |mut req: poem::Request| {
        let seen = seen.clone();
        async move {
            let body = req.take_body().into_vec().await.unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if let Some(id) = v["id"].as_str() {
                    seen.lock().unwrap().insert(id.to_owned(), Instant::now());
                }
            }
            poem::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(PoemServer::new_with_acceptor(acceptor).run(ep.map_to_response()));
    Ok((addr, arrivals))
}

/// The script of the run: one email per EMAIL notification, one HTTP delivery per SMS one;
/// the message id travels in the card id.
pub const SCRIPT: &str = r#"
let id = event.data.token.card_id;
if event.data.contact_method == "EMAIL" {
    email::send(#{ to: "holder@example.com", subject: id, text: "Your code is " + event.data.otp });
} else {
    http::deliver("sink", "/hook", #{ id: id });
}
"#;

/// What a run measured.
pub struct Run {
    pub name: &'static str,
    pub messages: usize,
    /// First ingest request to last arrival.
    pub elapsed: Duration,
    /// Ingest request to arrival, µs.
    pub latency: Histogram<u64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn print(&self) {
        println!(
            "{:<44} {:>10.0} msg/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} delivered, ingest to arrival)",
            self.name,
            self.rate(),
            self.p(0.5),
            self.p(0.99),
            self.messages
        );
    }
}

/// Waits until every id of `sent` arrived, then measures.
pub async fn collect(
    name: &'static str,
    sent: &HashMap<String, Instant>,
    arrivals: &Arrivals,
    within: Duration,
) -> anyhow::Result<Run> {
    let deadline = Instant::now() + within;
    loop {
        let done = {
            let a = arrivals.lock().unwrap();
            sent.keys().filter(|k| a.contains_key(*k)).count()
        };
        if done == sent.len() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{name}: only {done} of {} messages arrived", sent.len());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a = arrivals.lock().unwrap();
    let mut latency = Histogram::<u64>::new(3)?;
    let first = sent.values().min().copied().unwrap_or_else(Instant::now);
    let mut last = first;
    for (id, t0) in sent {
        let t1 = a[id];
        last = last.max(t1);
        latency.record(t1.duration_since(*t0).as_micros() as u64)?;
    }
    Ok(Run {
        name,
        messages: sent.len(),
        elapsed: last.duration_since(first),
        latency,
    })
}
