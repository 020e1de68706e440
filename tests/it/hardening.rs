use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::*;

/// Writes `head` and `body` on a fresh connection with `Connection: close` and reads the
/// whole answer.
async fn raw(s: &Server, head: &str, body: &[u8]) -> String {
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_or_without_content_length() {
    let s = Server::start(&[("server", "body_limit = \"4KiB\"")]);
    let c = client();
    let big = vec![b' '; 5000];
    // Declared length.
    let r = vasp_request(&c, &s, &big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = pomelo_request(&c, &s, &big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // Chunked, no Content-Length: the limit holds as the bytes arrive.
    let mut chunked = Vec::new();
    for _ in 0..10 {
        chunked.extend_from_slice(b"3e8\r\n");
        chunked.extend_from_slice(&[b' '; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST {VASP_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VASP_TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let a = raw(&s, &head, &chunked).await;
    assert_eq!(status_of(&a), 413, "{a}");
    // Just under the limit is fine (and, not being JSON, quarantined).
    let r = vasp_request(&c, &s, &vec![b' '; 4000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(events(&c, &s, "").await.len() == 1);
}

#[tokio::test]
async fn deep_garbage_and_binary_bodies_get_4xx_or_quarantine_never_5xx() {
    let s = Server::start(&[("server", "json_max_depth = 16")]);
    let c = client();
    let deep = format!(
        "{{\"callbackType\":\"TX_REPORT\",\"data\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let bodies: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x80],
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"string\"".to_vec(),
        br#"{"callbackType": null}"#.to_vec(),
        br#"{"callbackType": "TX_REPORT", "data": []}"#.to_vec(),
        b"{\"a\": 1e999999}".to_vec(),
    ];
    for (i, b) in bodies.iter().enumerate() {
        let r = vasp_request(&c, &s, b).send().await.unwrap();
        assert_eq!(r.status(), 200, "verifyvasp body {i}");
        let r = pomelo_request(&c, &s, b).send().await.unwrap();
        assert_eq!(r.status(), 400, "pomelo body {i}");
    }
    let q = admin(&c, &s, "/admin/quarantine?limit=100").await;
    let items = q["items"].as_array().unwrap();
    assert_eq!(items.len(), 2 * bodies.len());
    assert!(items.iter().any(|e| {
        e["quarantineReason"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 16")
    }));
    // Unauthenticated junk never reaches the store.
    let r = c
        .post(s.url(POMELO_PATH))
        .body(vec![0u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(s.url(VASP_PATH)).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Wrong methods and unknown paths.
    assert_eq!(c.get(s.url(VASP_PATH)).send().await.unwrap().status(), 405);
    assert_eq!(
        c.post(s.url("/nowhere")).send().await.unwrap().status(),
        404
    );
    // Malformed HTTP.
    let a = raw(&s, "GARBAGE\r\n\r\n", b"").await;
    assert!(a.is_empty() || status_of(&a) == 400, "{a}");
    assert!(!s.logs().contains("panicked"));
    let text = get_text(&c, &s, "/metrics").await;
    assert!(!text.contains("status=\"5"), "no 5xx answered:\n{text}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let s = Server::start(&[("server", "header_read_timeout = \"1s\"")]);
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"POST /verifyvasp/callback HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
        .await
        .expect("the server closes the connection");
    // Closed (0 bytes, or a reset), possibly after a 408.
    match n {
        Ok(0) | Err(_) => {}
        Ok(k) => assert!(
            String::from_utf8_lossy(&buf[..k]).contains("408"),
            "{:?}",
            &buf[..k]
        ),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// Reads until the server closes the connection; how long that took.
async fn until_closed(conn: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed_http2_included() {
    let s = Server::start(&[(
        "server",
        "header_read_timeout = \"3s\"\nidle_timeout = \"1s\"",
    )]);
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
    // hyper has no header timeout for HTTP/2; such connections could hold every slot.
    let mut h2 = TcpStream::connect(s.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let took = until_closed(&mut h2).await;
    assert!(
        took >= Duration::from_millis(2800) && took < Duration::from_secs(12),
        "a new connection gets header_read_timeout to start a request: {took:?}"
    );
    // Sending bytes is not starting a request: PINGs every 300 ms do not keep it open.
    let pinger = TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = pinger.into_split();
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let pings = tokio::spawn(async move {
        let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";
        while wr.write_all(ping).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let took = started.elapsed();
    pings.abort();
    assert!(
        took >= Duration::from_millis(2800) && took < Duration::from_secs(12),
        "PINGs are not requests: {took:?}"
    );
    // A client that floods PINGs and never reads: once the buffers fill, the server's
    // HTTP/2 stops reading too, and the connection is still cut.
    let mut flood = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    let mut frames =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    for _ in 0..512 {
        frames.extend_from_slice(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00floodfld");
    }
    let cut = tokio::time::timeout(Duration::from_secs(20), async {
        while flood.write_all(&frames).await.is_ok() {}
    })
    .await;
    // (h2 may also give up on it sooner, for the flood itself.)
    assert!(cut.is_ok(), "the flooding connection is closed");
    assert!(started.elapsed() < Duration::from_secs(12));
    // HTTP/1.1 keep-alive: one request answered, then the connection idles.
    let mut h1 = TcpStream::connect(s.addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = until_closed(&mut h1).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2800),
        "closed after idle_timeout, not header_read_timeout: {took:?}"
    );
    // A connection that keeps working is not cut.
    let c = client();
    for _ in 0..4 {
        assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

#[tokio::test]
async fn a_body_that_trickles_past_the_request_timeout_gets_408() {
    let s = Server::start(&[("server", "request_timeout = \"1s\"")]);
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST {VASP_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VASP_TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"callbackType\""
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    // Answered at once: the rest of a body this slow is not waited for (draining what a
    // refusal left would take up to `header_read_timeout`, 10 s).
    let n = tokio::time::timeout(Duration::from_secs(6), conn.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let a = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(status_of(&a), 408, "{a}");
    assert!(a.to_ascii_lowercase().contains("connection: close"), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let s = Server::start(&[("server", "max_connections = 2")]);
    let held_a = TcpStream::connect(s.addr).await.unwrap();
    let _held_b = TcpStream::connect(s.addr).await.unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let blocked = c.get(s.url("/healthz")).send().await;
    assert!(
        blocked.is_err(),
        "a third connection is not served while two are open"
    );
    drop(held_a);
    let c = client();
    let r = c.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    a_stop_lets_the_request_in_flight_finish("-TERM").await;
}

#[tokio::test]
async fn ctrl_c_lets_the_request_in_flight_finish() {
    a_stop_lets_the_request_in_flight_finish("-INT").await;
}

/// Stops the server with `signal` (`-TERM`, `-INT`: Ctrl-C) while a request is in flight.
async fn a_stop_lets_the_request_in_flight_finish(signal: &str) {
    let mut s = Server::start(&[]);
    let body = pomelo_body("424242");
    let ts = now().to_string();
    let sig = pomelo_signature(&pomelo_secret_b64(), &ts, POMELO_PATH, &body);
    let head = format!(
        "POST {POMELO_PATH} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {POMELO_KEY}\r\nX-Signature: {sig}\r\nX-Timestamp: {ts}\r\nX-Endpoint: {POMELO_PATH}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    // Wait until the server has accepted our connection (the open-connections gauge counts
    // it and the connection that asks).
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c, &s, "switchboard_open_connections").await < 2.0 {
        assert!(Instant::now() < deadline, "connection never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = s.pid();
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The server stops accepting but waits for us.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(s.addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the listener was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.try_wait().is_none(),
        "still running while a request is in flight"
    );
    conn.write_all(&body[10..]).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&out)), 204);
    let status = s.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(s.logs().contains("store flushed"));
}

/// An HTTP/1.1 client of the simplest kind: it writes its whole request, then reads the
/// answer. Returns the answer's status and body, or what stopped it (a write cut by the
/// server, a reset instead of an answer).
async fn send_then_read<S>(io: &mut S, head: &str, body: &[u8]) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("writing the head: {e}"))?;
    io.write_all(body)
        .await
        .map_err(|e| format!("writing the body: {e}"))?;
    io.flush().await.map_err(|e| format!("flushing: {e}"))?;
    read_answer(io).await
}

/// Reads one answer: status line, headers, and a Content-Length or chunked body.
async fn read_answer<S>(io: &mut S) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(answer) = complete_answer(&out) {
            return Ok(answer);
        }
        match tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf))
            .await
            .map_err(|_| "no answer in 30 s".to_owned())?
        {
            Ok(0) => {
                return Err(format!("end of stream after {} bytes of answer", out.len()));
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
}

/// The status and body of `out` once it holds a whole answer.
fn complete_answer(out: &[u8]) -> Option<(u16, String)> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let mut rest = &out[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?.trim(), 16).ok()?;
            rest = &rest[line + 2..];
            if size == 0 {
                return rest.starts_with(b"\r\n").then(|| {
                    (
                        status_of(&head),
                        String::from_utf8_lossy(&body).into_owned(),
                    )
                });
            }
            if rest.len() < size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (rest.len() >= len).then(|| {
        (
            status_of(&head),
            String::from_utf8_lossy(&rest[..len]).into_owned(),
        )
    })
}

fn vasp_head(len: usize, close: bool) -> String {
    format!(
        "POST {VASP_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VASP_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

#[tokio::test]
async fn a_client_that_sends_an_oversized_body_before_reading_sees_the_413() {
    let s = Server::start(&[]);
    // The 1 MiB default limit: 1.5 MiB with a Content-Length (refused before reading),
    // and 3.5 MiB, both on one keep-alive connection that carries on afterwards.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    for size in [1536 * 1024, 3584 * 1024] {
        let body = vec![b' '; size];
        let (status, answer) = send_then_read(&mut conn, &vasp_head(size, false), &body)
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(status, 413, "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    let fine = fixture("verifyvasp_tx_report.json");
    let (status, _) = send_then_read(&mut conn, &vasp_head(fine.len(), false), &fine)
        .await
        .unwrap();
    assert_eq!(status, 200, "the connection still serves requests");
    // A client that asks first (`Expect: 100-continue`) is answered at once and never
    // invited to send the body: the answer is a 413, not a `100 Continue`.
    let head = vasp_head(1536 * 1024, true).replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let (status, _) = send_then_read(&mut conn, &head, b"").await.unwrap();
    assert_eq!(status, 413);
    // Chunked, without a Content-Length: refused once the limit is passed, then read to
    // its end all the same.
    let mut chunked = Vec::new();
    for _ in 0..24 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 64 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST {POMELO_PATH} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {POMELO_KEY}\r\nX-Signature: x\r\nX-Timestamp: {}\r\nX-Endpoint: {POMELO_PATH}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        now()
    );
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let (status, answer) = send_then_read(&mut conn, &head, &chunked).await.unwrap();
    assert_eq!(status, 413, "{answer}");
}

#[tokio::test]
async fn a_body_far_past_the_limit_is_not_read_to_its_end() {
    // What is read after the answer is bounded (4 × the limit): a client sending 64 MiB
    // against a 64 KiB limit is cut off long before it is done.
    let s = Server::start(&[("server", "body_limit = \"64KiB\"")]);
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let size = 64 * 1024 * 1024;
    let sent = tokio::time::timeout(Duration::from_secs(30), async {
        conn.write_all(vasp_head(size, false).as_bytes()).await?;
        conn.write_all(&vec![b' '; size]).await
    })
    .await
    .expect("the server stops reading and closes");
    assert!(sent.is_err(), "the server read 64 MiB it had refused");
    // The server is fine.
    let r = client().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn verestro_over_mutual_tls_sees_payload_too_large_after_sending_it_all() {
    use std::sync::Arc;

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

    let dir = Dir::new();
    let pki = crate::pki::Pki::new(dir.path());
    let s = crate::pki::verestro_server(dir.clone(), &pki, "", "");
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(CertificateDer::from_pem_file(pki.dir.join("ca/ca.crt")).unwrap())
            .unwrap();
        r
    };
    let chain = vec![CertificateDer::from_pem_file(pki.dir.join("provider.crt")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(pki.dir.join("provider.key")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for size in [1536 * 1024, 3584 * 1024] {
        let tcp = TcpStream::connect(s.listeners["verestro"]).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let head = format!(
            "POST /notifications/otp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Idempotency-Key: {}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
            uuid::Uuid::new_v4()
        );
        let (status, answer) = send_then_read(&mut tls, &head, &vec![b' '; size])
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(status, 422, "{answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
    }
}
