use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn check(dir: &Dir, toml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let path = dir.path().join("check.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config", path.to_str().unwrap()])
        .env_remove("SWITCHBOARD_CONFIG")
        .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_file_and_names_what_is_wrong_in_a_bad_one() {
    let dir = Dir::new();
    let good = base_config(&dir.data(), &[]);
    let (ok, out, err) = check(&dir, &good, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("check.toml: OK"), "{out}");
    assert!(
        out.contains("pomelo") && out.contains("1 credential"),
        "{out}"
    );

    let cases: Vec<(String, &[&str])> = vec![
        (
            good.replace("listen = ", "lisen = "),
            &["check.toml", "lisen"],
        ),
        (
            good.replace("[store]", "[store]\nretention = \"forever\""),
            &["check.toml", "store.retention", "forever"],
        ),
        (
            good.replace("listen = \"127.0.0.1:0\"", "listen = "),
            &["check.toml", "line 3"],
        ),
        (
            good.replace("secrets = false", "secrets = \"maybe\""),
            &["check.toml", "dev.secrets"],
        ),
        (
            good.replace("[server]", "[server]\nmax_connections = 0"),
            &["check.toml", "server.max_connections"],
        ),
        (
            good.replace(&pomelo_secret_b64(), "this is not base64!"),
            &[
                "check.toml",
                "providers.pomelo.keys[0].api_secret",
                "base64",
            ],
        ),
        (
            good.replace(
                "env:SWITCHBOARD_TEST_VASP_TOKEN",
                "env:SWITCHBOARD_TEST_SURELY_UNSET",
            ),
            &[
                "check.toml",
                "providers.verifyvasp.token",
                "SWITCHBOARD_TEST_SURELY_UNSET",
            ],
        ),
        (
            good.replace(
                &format!("token = \"{ADMIN_TOKEN}\""),
                "token = \"file:/nonexistent/admin-token\"",
            ),
            &["check.toml", "admin.token", "/nonexistent/admin-token"],
        ),
        (
            good.replace(
                "[providers.verifyvasp]",
                "[providers.verifyvasp]\npath = \"/admin/x\"",
            ),
            &["providers.verifyvasp.path", "reserved"],
        ),
        (
            good.clone() + "\n[providers.acme]\npath = \"/x\"\n",
            &["check.toml", "acme"],
        ),
    ];
    for (toml, needles) in cases {
        let (ok, _, err) = check(&dir, &toml, &[]);
        assert!(!ok, "expected failure for {needles:?}");
        for n in needles {
            assert!(err.contains(n), "the message names {n}: {err}");
        }
        assert!(
            !err.contains(&pomelo_secret_b64()) && !err.contains(VASP_TOKEN),
            "no secret in errors: {err}"
        );
    }
    // A missing file.
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    // Environment overrides are checked the same way.
    let (ok, _, err) = check(
        &dir,
        &good,
        &[("SWITCHBOARD_STORE__DUPLICATE_WAIT", "soon")],
    );
    assert!(!ok);
    assert!(err.to_lowercase().contains("store.duplicate_wait"), "{err}");
    assert!(
        err.contains("SWITCHBOARD_"),
        "the environment is named as the source: {err}"
    );
}

#[tokio::test]
async fn secrets_come_from_files_and_settings_from_the_environment() {
    let dir = Dir::new();
    let secret_file = dir.path().join("pomelo.secret");
    std::fs::write(&secret_file, format!("{}\n", pomelo_secret_b64())).unwrap();
    let cfg = base_config(&dir.data(), &[]).replace(
        &format!("api_secret = \"{}\"", pomelo_secret_b64()),
        &format!("api_secret = \"file:{}\"", secret_file.display()),
    );
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, cfg).unwrap();
    let s = Server::spawn(
        dir,
        &["serve", "--config", path.to_str().unwrap()],
        &[("SWITCHBOARD_ADMIN__REVEAL_SECRETS", "true")],
    );
    let c = client();
    accepted_pomelo(&c, &s, &pomelo_body("135790")).await;
    let e = &events(&c, &s, "").await[0];
    assert_eq!(
        e["data"]["otp"], "135790",
        "reveal_secrets came from the environment"
    );
}

#[tokio::test]
async fn a_fresh_install_shows_the_whole_flow_with_the_readme_commands() {
    // `switchboard serve` with no configuration at all, in an empty directory. The port is
    // the only thing changed (8080 may be taken on a test machine).
    let dir = Dir::new();
    let env = [("SWITCHBOARD_SERVER__LISTEN", "127.0.0.1:0")];
    let s = Server::spawn(dir.clone(), &["serve"], &env);
    let banner = s.stdout().join("\n");
    assert!(
        banner.contains("Development secrets were generated"),
        "{banner}"
    );
    assert!(dir.data().join("dev-secrets.toml").is_file());
    assert!(dir.data().join("db").is_dir(), "data lives in ./data");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.data().join("dev-secrets.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Requests must still be signed.
    let c = client();
    let unsigned = c
        .post(s.url(POMELO_PATH))
        .body(pomelo_body("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    // `switchboard simulate` signs with the development secrets.
    for args in [
        vec!["simulate", "pomelo"],
        vec!["simulate", "verifyvasp", "tx-report"],
    ] {
        let mut full = args.clone();
        let target = format!("http://{}", s.addr);
        full.extend(["--target", &target]);
        let out = Command::new(BIN)
            .args(&full)
            .current_dir(dir.path())
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("-> 204") || stdout.contains("-> 200"),
            "{stdout}"
        );
    }
    // The admin token is in the same file.
    let text = std::fs::read_to_string(dir.data().join("dev-secrets.toml")).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("admin_token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let page: Value = c
        .get(s.url("/admin/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(s.terminate().success());
    // Printed once: a second start does not print them again.
    let s = Server::spawn(dir, &["serve"], &env);
    assert!(
        !s.stdout()
            .join("\n")
            .contains("Development secrets were generated")
    );
    assert!(!s.stdout().join("\n").contains(&token));
}

#[tokio::test]
async fn development_secrets_are_never_generated_for_a_public_listener() {
    let dir = Dir::new();
    let s = Server::spawn(
        dir.clone(),
        &["serve"],
        &[("SWITCHBOARD_SERVER__LISTEN", "0.0.0.0:0")],
    );
    assert!(!dir.data().join("dev-secrets.toml").exists());
    let addr = format!("http://127.0.0.1:{}", s.addr.port());
    let c = client();
    let r = c
        .post(format!("{addr}{VASP_PATH}"))
        .bearer_auth("anything")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(s.logs().contains("only generated for a loopback listener"));
}

#[test]
fn the_readme_documents_every_configuration_key() {
    fn keys(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(&p, v, out);
                }
            }
            None => out.push(prefix.to_owned()),
        }
    }
    let defaults = serde_json::to_value(switchboard_openapi::config::Config::default()).unwrap();
    let mut all = vec![];
    keys("", &defaults, &mut all);
    assert!(all.len() > 20, "{all:?}");
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    for k in all {
        assert!(
            readme.contains(&format!("| `{k}` |")),
            "README.md's configuration reference lacks `{k}`"
        );
    }
}

/// Issue 8 §2: a Pomelo api-secret that decodes to fewer than 16 bytes is refused, by
/// `check` and at start-up, naming the file and the key (never the secret).
#[test]
fn weak_pomelo_secrets_are_refused_by_check_and_at_start_up() {
    let dir = Dir::new();
    let weak = base_config(&dir.data(), &[]).replace(&pomelo_secret_b64(), "QQ==");
    let (ok, out, err) = check(&dir, &weak, &[]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("check.toml")
            && err.contains("providers.pomelo.keys[0].api_secret")
            && err.contains("16"),
        "{err}"
    );
    assert!(!err.contains("QQ=="), "{err}");
    let path = dir.path().join("weak.toml");
    std::fs::write(&path, &weak).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_remove("SWITCHBOARD_CONFIG")
        .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("weak.toml")
            && err.contains("providers.pomelo.keys[0].api_secret")
            && err.contains("16"),
        "{err}"
    );
}

/// Issue 12 §2: a placeholder pin fails `check` (pins are SHA-256 fingerprints), and
/// `check` prints the pins it will enforce.
#[test]
fn pins_must_be_fingerprints_and_check_prints_them() {
    let dir = Dir::new();
    let base = base_config(&dir.data(), &[]);
    let placeholder = format!(
        "{base}\n[providers.verestro]\npin_sha256 = [\"<the fingerprint sign-csr printed>\"]\n"
    );
    let (ok, _, err) = check(&dir, &placeholder, &[]);
    assert!(!ok);
    assert!(
        err.contains("providers.verestro.pin_sha256[0]") && err.contains("SHA-256"),
        "{err}"
    );
    let fp = "AB:".repeat(31) + "AB";
    let pinned = format!(
        "{base}\n[providers.verestro]\npin_sha256 = [\"{fp}\"]\npin_subject = [\"CN=verestro\"]\n"
    );
    let (ok, out, err) = check(&dir, &pinned, &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("pin sha256 {}", "ab".repeat(32))),
        "{out}"
    );
    assert!(out.contains("pin subject CN=verestro"), "{out}");
}

/// Issue 12 §2: relative paths in a configuration file are resolved against the file's
/// directory, so `check` (and `serve`) read the same files from any working directory.
#[test]
fn relative_paths_are_resolved_against_the_config_files_directory() {
    let dir = Dir::new();
    let conf = dir.path().join("etc");
    std::fs::create_dir_all(conf.join("secrets")).unwrap();
    std::fs::write(
        conf.join("secrets/admin-token"),
        "a-long-admin-token-0123456789",
    )
    .unwrap();
    std::fs::write(conf.join("secrets/pomelo"), pomelo_secret_b64()).unwrap();
    let text = base_config(&dir.data(), &[])
        .replace(
            &format!("token = \"{ADMIN_TOKEN}\""),
            "token = \"file:secrets/admin-token\"",
        )
        .replace(
            &format!("api_secret = \"{}\"", pomelo_secret_b64()),
            "api_secret = \"file:secrets/pomelo\"",
        );
    let path = conf.join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .current_dir(elsewhere.path())
        .env_remove("SWITCHBOARD_CONFIG")
        .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same file, run from its own directory, reads the same files.
    let out = Command::new(BIN)
        .args(["check", "--config", "switchboard.toml"])
        .current_dir(&conf)
        .env_remove("SWITCHBOARD_CONFIG")
        .env("SWITCHBOARD_TEST_VASP_TOKEN", VASP_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `switchboard init` writes a commented generic-provider example; uncommented as it is,
/// it passes `check` and the provider is listed (issue 11).
#[test]
fn init_writes_a_generic_provider_example_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init"])
        .current_dir(dir.path())
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.path().join("switchboard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("# [providers.stripe]"), "{text}");
    // Uncomment the Stripe example, with a literal secret instead of the variable.
    let mut on = false;
    let mut out_text = String::new();
    for line in text.lines() {
        if line == "# [providers.stripe]" {
            on = true;
        }
        if on && line == "#" {
            on = false;
        }
        match line.strip_prefix("# ").filter(|_| on) {
            Some(l) => out_text.push_str(&l.replace(
                "env:STRIPE_WEBHOOK_SECRET",
                "whsec_a-secret-of-enough-bytes",
            )),
            None => out_text.push_str(line),
        }
        out_text.push('\n');
    }
    std::fs::write(&path, out_text).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .current_dir(elsewhere.path())
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stripe") && stdout.contains("/hooks/stripe"),
        "{stdout}"
    );
}
