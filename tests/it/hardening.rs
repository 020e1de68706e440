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
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let a = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(status_of(&a), 408, "{a}");
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
