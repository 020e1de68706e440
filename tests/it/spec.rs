//! The served spec must equal the committed `openapi/openapi.json`. To refresh the
//! committed file after an intended change: `UPDATE_SPEC=1 cargo test --test it spec`
//! (or `cargo run -- openapi > openapi/openapi.json`).

use std::path::Path;

use serde_json::Value;

use crate::support::*;

fn committed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json")
}

#[tokio::test]
async fn the_served_spec_is_the_committed_spec() {
    // The default configuration (paths as shipped), as `switchboard openapi` prints it.
    let printed = std::process::Command::new(BIN)
        .args(["openapi"])
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    if std::env::var_os("UPDATE_SPEC").is_some() {
        std::fs::write(committed_path(), &printed).unwrap();
    }
    let committed =
        std::fs::read_to_string(committed_path()).expect("openapi/openapi.json is committed");
    assert!(
        printed == committed,
        "openapi/openapi.json is out of date: run `UPDATE_SPEC=1 cargo test --test it spec` and commit it"
    );
    let s = Server::start(&[]);
    let served = client().get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.text().await.unwrap(),
        committed,
        "GET /openapi.json serves the committed spec"
    );
    let yaml = get_text(&client(), &s, "/openapi.yaml").await;
    let from_yaml: Value = serde_yaml::from_str(&yaml).unwrap();
    let from_json: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(from_yaml, from_json, "the YAML is the same spec");
}

#[test]
fn every_operation_body_field_and_answer_is_documented() {
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/pomelo/tokenization/otp",
        "/verifyvasp/callback",
        "/admin/events",
        "/admin/events/{id}",
        "/admin/quarantine",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} is in the spec");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{what} has a summary"
            );
            assert!(
                op["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{what} has a description"
            );
            for (status, resp) in op["responses"].as_object().unwrap() {
                assert!(
                    resp["description"].as_str().is_some_and(|s| !s.is_empty()),
                    "{what} answer {status} is described"
                );
            }
            for param in op["parameters"].as_array().into_iter().flatten() {
                assert!(
                    param["description"].as_str().is_some_and(|s| !s.is_empty()),
                    "{what} parameter {} is described",
                    param["name"]
                );
            }
        }
    }
    // Every property of every schema is described.
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        for (prop, def) in schema["properties"].as_object().into_iter().flatten() {
            let described = def["description"].as_str().is_some()
                || def.get("$ref").is_some()
                || def["allOf"].as_array().is_some();
            assert!(described, "{name}.{prop} is described");
        }
    }
    // Security schemes.
    let schemes = spec["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["PomeloApiKey"]["type"], "apiKey");
    assert_eq!(schemes["PomeloApiKey"]["name"], "X-Api-Key");
    assert_eq!(schemes["VerifyVaspToken"]["scheme"], "bearer");
    assert_eq!(schemes["AdminToken"]["scheme"], "bearer");
    // The seeds' examples.
    let otp = &spec["components"]["schemas"]["TokenizationOtp"];
    assert_eq!(otp["example"]["token"]["origin"], "APPLE_PAY");
    let vr = &spec["components"]["schemas"]["VerificationResultCallback"]["example"];
    assert_eq!(
        vr["data"]["verificationUuid"],
        "64ab871b-14a3-47df-9b80-368e29fe8180"
    );
    // Enums list every documented value.
    let reasons = spec["components"]["schemas"]["ReasonCode"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(reasons.len(), 10);
    assert!(reasons.contains(&Value::from("BENEFICIARY-ACCOUNT-NOT-MATCHED")));
    // Pomelo's signature headers are documented as required.
    let pomelo_params = spec["paths"]["/pomelo/tokenization/otp"]["post"]["parameters"]
        .as_array()
        .unwrap();
    for h in ["X-Signature", "X-Timestamp", "X-Endpoint"] {
        let p = pomelo_params
            .iter()
            .find(|p| p["name"] == h)
            .unwrap_or_else(|| panic!("{h}"));
        assert_eq!(p["in"], "header");
        assert_eq!(p["required"], true);
    }
}

#[tokio::test]
async fn the_docs_page_needs_no_internet() {
    let s = Server::start(&[]);
    let html = get_text(&client(), &s, "/docs").await;
    assert!(html.contains("SwaggerUIBundle"), "the UI is there");
    assert!(
        html.contains("validatorUrl: null"),
        "no call to the online validator"
    );
    for needle in [
        "<script src=\"http",
        "<link rel=\"stylesheet\" href=\"http",
        "src=\"//",
        "href=\"//",
    ] {
        assert!(
            !html.contains(needle),
            "docs load nothing from the network ({needle})"
        );
    }
    assert!(
        html.contains("/pomelo/tokenization/otp"),
        "the docs show the served spec"
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    use std::io::Read;
    // `switchboard openapi | head -c 64`: the pipe closes after a few bytes.
    let mut child = std::process::Command::new(BIN)
        .args(["openapi", "--format", "yaml"])
        .env_remove("SWITCHBOARD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // stdout is dropped (closed) here, before the spec is written out.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
