//! The crate boundaries ARCHITECTURE.md states, checked.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn dependencies(manifest: &str) -> Vec<String> {
    let mut deps = vec![];
    let mut in_deps = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = t.split_once(['=', '.']) {
                deps.push(name.trim().to_owned());
            }
        }
    }
    deps
}

#[test]
fn core_knows_nothing_of_http() {
    let deps = dependencies(&read("core/Cargo.toml"));
    assert!(deps.contains(&"sled".to_owned()), "{deps:?}");
    for forbidden in [
        "poem",
        "poem-openapi",
        "hyper",
        "hyper-util",
        "reqwest",
        "switchboard-plugins",
        "switchboard-openapi",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "core depends on {forbidden}"
        );
    }
}

#[test]
fn plugins_do_not_depend_on_the_http_face() {
    let deps = dependencies(&read("plugins/Cargo.toml"));
    assert!(deps.contains(&"switchboard-core".to_owned()));
    assert!(!deps.contains(&"switchboard-openapi".to_owned()));
}

#[test]
fn provider_verification_is_plain_functions() {
    for p in ["pomelo", "verifyvasp", "verestro"] {
        let src = read(&format!("plugins/src/providers/{p}/verify.rs"));
        assert!(!src.contains("poem"), "{p}/verify.rs uses poem");
    }
}
