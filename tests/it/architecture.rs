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
    for p in provider_folders() {
        let src = read(&format!("plugins/src/providers/{p}/verify.rs"));
        assert!(!src.contains("poem"), "{p}/verify.rs uses poem");
    }
}

/// The built-in provider folders: every directory under `plugins/src/providers/` but
/// `generic` (the factory of configured providers).
fn provider_folders() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/src/providers");
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "generic")
        .collect();
    names.sort();
    names
}

/// Every `.rs` file under `dir` (relative to the workspace), recursively.
fn sources(dir: &str) -> Vec<String> {
    fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap().filter_map(|e| e.ok()) {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join(dir), &mut out);
    out.iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Every provider folder has the common shape (STYLE.md §6), and exports the one
/// registration the registry lists.
#[test]
fn every_provider_folder_has_the_common_shape() {
    let folders = provider_folders();
    assert!(folders.len() >= 3, "{folders:?}");
    for p in &folders {
        for file in [
            "mod.rs",
            "config.rs",
            "verify.rs",
            "model.rs",
            "api.rs",
            "tests.rs",
        ] {
            let path = format!("plugins/src/providers/{p}/{file}");
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(&path).is_file(),
                "{path} is missing: every provider folder has the same files"
            );
        }
        let module = read(&format!("plugins/src/providers/{p}/mod.rs"));
        assert!(
            module.starts_with("//!"),
            "{p}/mod.rs opens with `//!` docs"
        );
        assert!(
            module.contains("pub const PLUGIN: Plugin"),
            "{p}/mod.rs exports its registration, `pub const PLUGIN: Plugin`"
        );
        assert!(
            module.contains("impl Provider for "),
            "{p}/mod.rs implements the Provider trait"
        );
    }
}

/// The registry is the only list of providers: `registry!` names every folder once, and no
/// other source file outside the provider folders names more than one built-in provider's
/// module (no `match` over providers, no hand-kept list, no per-provider wiring).
#[test]
fn the_registry_is_the_only_list_of_providers() {
    let folders = provider_folders();
    let registry = read("plugins/src/providers/mod.rs");
    let line = registry
        .lines()
        .find(|l| l.starts_with("registry!("))
        .expect("the registry line");
    let mut listed: Vec<String> = line
        .trim_start_matches("registry!(")
        .trim_end_matches(");")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    listed.sort();
    assert_eq!(
        listed, folders,
        "the registry lists exactly the provider folders"
    );
    assert_eq!(
        registry.matches("pub mod ").count(),
        2,
        "providers/mod.rs declares no provider module by hand (only `generic` and the macro's)"
    );
    let mut files = Vec::new();
    for dir in ["core/src", "plugins/src", "openapi/src", "src"] {
        files.extend(sources(dir));
    }
    for file in files {
        if file == "plugins/src/providers/mod.rs"
            || folders
                .iter()
                .any(|f| file.starts_with(&format!("plugins/src/providers/{f}/")))
        {
            continue;
        }
        let text = read(&file);
        let named: Vec<&String> = folders
            .iter()
            .filter(|f| text.contains(&format!("{f}::")))
            .collect();
        assert!(
            named.len() <= 1,
            "{file} names the modules of several providers ({named:?}): read them from the registry instead"
        );
    }
}
