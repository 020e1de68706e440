use serde_json::json;

use crate::support::*;

/// Runs a busy session (accepted, refused, quarantined, duplicated, conflicting requests)
/// and then looks for every secret and OTP in everything switchboard wrote.
#[tokio::test]
async fn no_secret_or_otp_reaches_logs_metrics_or_error_bodies() {
    for format in ["text", "json"] {
        let fmt = format!("format = \"{format}\"");
        // OTPs travel on: the holder is looked up and the code goes out through the
        // console channel, which writes the message to the log (masked).
        let customers = crate::servers::Recorder::start().await;
        customers.plan(
            "/cards/",
            vec![crate::servers::Reply::json(
                json!({"phone": "+48500100200", "email": "jan@example.com"}),
            )],
        );
        let tail = format!("[services.customers]\nbase_url = \"{}\"\n", customers.url());
        let s = Server::start(&[("log", &fmt), ("tail", &tail)]);
        let c = client();
        let otps = ["913577", "624801", "550072"];
        let mut bodies = vec![];
        // Accepted, then repeated.
        for _ in 0..2 {
            let r = pomelo_request(&c, &s, &pomelo_body(otps[0]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
        // Quarantined, with the OTP where a number should be.
        let bad =
            serde_json::to_vec(&json!({"token": {"origin": 7}, "otp": otps[1], "to": 5})).unwrap();
        let r = pomelo_request(&c, &s, &bad).send().await.unwrap();
        assert_eq!(r.status(), 400);
        bodies.push(r.text().await.unwrap());
        let bad = serde_json::to_vec(&json!({"token": {"origin": "X", "card_id": "c", "user_id": "u"}, "otp": {"v": otps[2]}, "to": "t"})).unwrap();
        let r = pomelo_request(&c, &s, &bad).send().await.unwrap();
        bodies.push(r.text().await.unwrap());
        // Refused, with secrets in the wrong places.
        let r = c
            .post(s.url(POMELO_PATH))
            .header("x-api-key", pomelo_secret_b64())
            .header(
                "x-signature",
                format!("hmac-sha256 {}", pomelo_secret_b64()),
            )
            .header("x-timestamp", now().to_string())
            .header("x-endpoint", POMELO_PATH)
            .body(pomelo_body(otps[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        bodies.push(r.text().await.unwrap());
        let r = c
            .post(s.url(VASP_PATH))
            .bearer_auth(format!("{VASP_TOKEN}-wrong"))
            .body("{}")
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
        let r = c
            .get(s.url("/admin/events"))
            .bearer_auth(format!("{ADMIN_TOKEN}x"))
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
        accepted_vasp(&c, &s, &fixture("verifyvasp_tx_report.json")).await;
        // Admin answers (masked).
        let page = admin(&c, &s, "/admin/events?limit=100").await;
        bodies.push(page.to_string());
        for e in page["items"].as_array().unwrap() {
            bodies.push(
                admin(
                    &c,
                    &s,
                    &format!("/admin/events/{}", e["id"].as_str().unwrap()),
                )
                .await
                .to_string(),
            );
        }
        let metrics = get_text(&c, &s, "/metrics").await;
        let logs = s.logs();
        assert!(
            logs.contains("event stored"),
            "the log is being written ({format})"
        );
        let secret_bytes = String::from_utf8_lossy(POMELO_SECRET_BYTES).into_owned();
        let needles = [
            otps[0],
            otps[1],
            otps[2],
            &pomelo_secret_b64(),
            &secret_bytes,
            VASP_TOKEN,
            ADMIN_TOKEN,
        ];
        for n in needles {
            assert!(!logs.contains(n), "{format} log contains a secret: {n}");
            assert!(!metrics.contains(n), "metrics contain a secret: {n}");
            for b in &bodies {
                assert!(!b.contains(n), "an answer contains a secret: {n} in {b}");
            }
        }
    }
}
