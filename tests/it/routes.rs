use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::*;

pub(crate) fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join("routes").join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub(crate) fn routes_config(dir: &Path, reload: &str) -> String {
    format!(
        "[routes]\ndir = \"{}\"\nreload_interval = \"{reload}\"\n",
        dir.join("routes").display()
    )
}

fn vasp(callback_type: &str, n: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({"callbackType": callback_type, "data": {
        "verificationUuid": format!("64ab871b-14a3-47df-9b80-3680000000{n:02}"),
        "txHash": "0x1", "result": "ERROR", "reason": "BLACKLISTED",
        "verificationResult": "UNKNOWN", "ivms101": {}}}))
    .unwrap()
}

/// The log message of the only action of the newest pomelo event, once routed.
async fn newest_message(c: &reqwest::Client, s: &Server) -> String {
    until_routed(c, s).await;
    let e = &events(c, s, "provider=pomelo").await[0];
    let d = admin(
        c,
        s,
        &format!("/admin/events/{}", e["id"].as_str().unwrap()),
    )
    .await;
    d["actions"][0]["payload"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Sends fresh Pomelo events until one is routed by a script that logs `want`.
async fn until_script_says(c: &reqwest::Client, s: &Server, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let r = pomelo_request(c, s, &pomelo_body(&format!("{n:06}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        if newest_message(c, s).await == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the edited script never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_scripts_fail_within_their_limits_while_other_events_are_delivered() {
    let dir = Dir::new();
    write(
        dir.path(),
        "verifyvasp/verification_result.rhai",
        "let x = 0; loop { x += 1; }",
    );
    write(
        dir.path(),
        "verifyvasp/tx_report.rhai",
        "fn down(n) { down(n + 1) } down(0);",
    );
    write(
        dir.path(),
        "verifyvasp/error_report.rhai",
        "let s = \"0123456789\"; loop { s += s; }",
    );
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(`card ${event.data.token.card_id}`);",
    );
    let tail = routes_config(dir.path(), "1s");
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    for (t, n) in [
        ("VERIFICATION_RESULT", 1),
        ("TX_REPORT", 2),
        ("ERROR_REPORT", 3),
    ] {
        accepted_vasp(&c, &s, &vasp(t, n)).await;
    }
    accepted_pomelo(&c, &s, &pomelo_body("123123")).await;
    until_routed(&c, &s).await;
    let error_of = |t: &str| {
        let t = t.to_owned();
        let (c, s) = (c.clone(), &s);
        async move {
            let e = &events(&c, s, &format!("type={t}")).await[0];
            assert_eq!(e["status"], "failed", "{e}");
            e["route"]["error"].as_str().unwrap().to_owned()
        }
    };
    let looping = error_of("verification_result").await;
    assert!(
        looping.contains("deadline of 250ms exceeded") || looping.contains("too many operations"),
        "{looping}"
    );
    assert!(error_of("tx_report").await.contains("call stack too deep"));
    assert!(error_of("error_report").await.contains("too large"));
    // The well-behaved event went through, whatever the others did.
    let ok = &events(&c, &s, "provider=pomelo").await[0];
    assert_eq!(ok["status"], "routed");
    let detail = admin(
        &c,
        &s,
        &format!("/admin/events/{}", ok["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        detail["actions"][0]["payload"]["message"],
        "card card_123456789"
    );
    until(
        &c,
        &s,
        &format!(
            "/admin/deliveries/{}",
            detail["actions"][0]["id"].as_str().unwrap()
        ),
        "sent",
        |a| a["status"] == "sent",
    )
    .await;

    // Fix a script, then replay what failed, from the command line.
    write(
        dir.path(),
        "verifyvasp/tx_report.rhai",
        "log::info(`tx ${event.data.data.txHash}`);",
    );
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        let url = s.url("");
        all.extend(["--url", url.as_str(), "--token", ADMIN_TOKEN]);
        let out = Command::new(BIN)
            .args(&all)
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["events", "list", "--status", "failed"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains("call stack too deep"), "{listed}");
    // Wait for the fixed script to be picked up (polled every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .logs()
        .lines()
        .any(|l| l.contains("route script loaded") && l.contains("verifyvasp/tx_report.rhai"))
    {
        assert!(
            Instant::now() < deadline,
            "the fixed script was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tx_id = events(&c, &s, "type=tx_report").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli(&["events", "replay", &tx_id]);
    assert!(out.contains("back in the inbox"), "{out}");
    let e = until(
        &c,
        &s,
        &format!("/admin/events/{tx_id}"),
        "replayed event routed",
        |e| e["status"] == "routed",
    )
    .await;
    assert_eq!(e["actions"][0]["payload"]["message"], "tx 0x1");
    assert_eq!(e["route"]["runs"], 2);
    let shown: Value = serde_json::from_str(&cli(&["events", "show", &tx_id])).unwrap();
    assert_eq!(shown["id"], tx_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_take_effect_without_a_restart_and_broken_ones_keep_the_last_good_script() {
    let dir = Dir::new();
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"v1\");",
    );
    let tail = routes_config(dir.path(), "100ms");
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    until_script_says(&c, &s, "v1").await;
    let pid = s.pid();
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"v2\");",
    );
    until_script_says(&c, &s, "v2").await;
    assert_eq!(s.pid(), pid, "no restart");

    // A broken edit: the error is reported with file, line and column...
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "// v3\nlog::info(\"v3\"\nlet = ;\n",
    );
    let routes = until(&c, &s, "/admin/routes", "the compile error", |r| {
        !r["errors"].as_array().unwrap().is_empty()
    })
    .await;
    let err = &routes["errors"][0];
    assert_eq!(err["file"], "pomelo/tokenization_otp.rhai");
    assert_eq!(err["line"], 3);
    assert!(err["column"].as_u64().is_some());
    let ready: Value = get_json(&c, &s, "/readyz").await;
    assert!(
        ready["checks"]
            .to_string()
            .contains("pomelo/tokenization_otp.rhai:3:"),
        "{ready}"
    );
    assert!(s.logs().contains("does not compile"));
    // ...and the last good version keeps running.
    accepted_pomelo(&c, &s, &pomelo_body("999001")).await;
    assert_eq!(newest_message(&c, &s).await, "v2");
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"v4\");",
    );
    until_script_says(&c, &s, "v4").await;
    let routes = admin(&c, &s, "/admin/routes").await;
    assert!(routes["errors"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_scripts_at_once() {
    let dir = Dir::new();
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"before\");",
    );
    let tail = routes_config(dir.path(), "1h");
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    until_script_says(&c, &s, "before").await;
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"after\");",
    );
    let status = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    until_script_says(&c, &s, "after").await;
}

fn switchboard_test(dir: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["test", dir.to_str().unwrap()])
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn switchboard_test_passes_on_every_shipped_route_and_fails_on_a_wrong_expectation() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes");
    let (ok, out) = switchboard_test(&shipped);
    assert!(ok, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    for script in [
        "pomelo/tokenization_otp.rhai",
        "verestro/otp.rhai",
        "verestro/verificationRejected.rhai",
        "verestro/cardLocked.rhai",
        "verestro/transactionalLockReasonRemoved.rhai",
        "verifyvasp/_default.rhai",
        "_default.rhai",
    ] {
        assert!(
            out.contains(&format!("({script})")),
            "{script} has a test: {out}"
        );
    }
    // The same routes with one expectation wrong.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped, dir.path());
    let test = dir.path().join("pomelo/tokenization_otp.test.toml");
    let text =
        std::fs::read_to_string(&test)
            .unwrap()
            .replacen("Never share it.", "Never share it!", 1);
    std::fs::write(&test, text).unwrap();
    let (ok, out) = switchboard_test(dir.path());
    assert!(!ok, "a wrong expectation fails: {out}");
    assert!(
        out.contains("FAIL pomelo/tokenization_otp.test.toml: an SMS to the card holder"),
        "{out}"
    );
    assert!(
        out.contains("Never share it!"),
        "the difference is shown: {out}"
    );
    // A script that no longer compiles fails too.
    std::fs::write(dir.path().join("verestro/otp.rhai"), "let = ;").unwrap();
    let (ok, out) = switchboard_test(dir.path());
    assert!(!ok);
    assert!(out.contains("FAIL verestro/otp.rhai:1:"), "{out}");
}

#[test]
fn the_embedded_routes_are_the_routes_folder() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = vec![];
    let mut stack = vec![shipped.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    for f in &files {
        let rel = f.strip_prefix(&shipped).unwrap();
        let written = std::fs::read(dir.path().join("routes").join(rel))
            .unwrap_or_else(|_| panic!("{} is not embedded", rel.display()));
        assert_eq!(
            written,
            std::fs::read(f).unwrap(),
            "{} differs from the embedded copy",
            rel.display()
        );
    }
    let written = crate::routes::count_files(&dir.path().join("routes"));
    assert_eq!(
        written,
        files.len(),
        "nothing embedded that the folder lacks"
    );
}

pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn init_writes_a_working_installation() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "switchboard.toml",
        "routes/README.md",
        "routes/pomelo/tokenization_otp.rhai",
        "secrets/admin-token",
        "data/ca/ca.crt",
        "data/ca/ca.key",
        "data/tls/server.crt",
        "data/tls/server.key",
        "data/keys/jwe.pem",
        "data/keys/jwe.pem.pub",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    #[cfg(unix)]
    for f in [
        "secrets/admin-token",
        "data/ca/ca.key",
        "data/tls/server.key",
        "data/keys/jwe.pem",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let out = run(&["check", "--config", "switchboard.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["test", "--config", "switchboard.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A second init keeps what is there.
    let before = std::fs::read(dir.path().join("secrets/admin-token")).unwrap();
    let out = run(&["init"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("secrets/admin-token")).unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_broken_from_the_start_fails_its_events_until_fixed_and_replayed() {
    let dir = Dir::new();
    // A catch-all that would happily take the event if the broken script were skipped.
    write(dir.path(), "_default.rhai", "log::info(\"catch-all\");");
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"fixed\"\nlet = ;\n",
    );
    let tail = routes_config(dir.path(), "100ms");
    let s = Server::start_in(dir.clone(), &[("tail", &tail)]);
    let c = client();
    assert_eq!(
        pomelo_request(&c, &s, &pomelo_body("424242"))
            .send()
            .await
            .unwrap()
            .status(),
        204,
        "the event is stored and answered whatever its route"
    );
    let failed = until_items(&c, &s, "/admin/events?status=failed", 1, "the event failed").await;
    let e = &failed["items"][0];
    let error = e["route"]["error"].as_str().unwrap();
    assert!(error.contains("pomelo/tokenization_otp.rhai"), "{e}");
    assert!(error.contains("compile"), "{e}");
    assert_eq!(e["route"]["script"], "pomelo/tokenization_otp.rhai", "{e}");
    assert!(
        e["actions"].as_array().is_none_or(|a| a.is_empty()),
        "the catch-all did not run: {e}"
    );
    // Still ready (notifications are accepted and kept), but it says what is wrong.
    let ready = c.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["checks"].to_string().contains("no good version"),
        "{ready}"
    );

    // Fixed, then replayed: the event is routed by its own script.
    write(
        dir.path(),
        "pomelo/tokenization_otp.rhai",
        "log::info(\"fixed\");",
    );
    until(&c, &s, "/admin/routes", "the fix loaded", |r| {
        r["errors"].as_array().is_some_and(|e| e.is_empty())
    })
    .await;
    let id = e["id"].as_str().unwrap();
    let r = admin_post(&c, &s, &format!("/admin/events/{id}/replay")).await;
    assert_eq!(r.status(), 202);
    let routed = until(&c, &s, &format!("/admin/events/{id}"), "routed", |e| {
        e["status"] == "routed"
    })
    .await;
    assert_eq!(
        routed["actions"][0]["payload"]["message"], "fixed",
        "{routed}"
    );
}
