//! The contract of the internal services (`openapi/services.json`, `SERVICES.md`) against
//! what the shipped route scripts do: every `http::get`, `http::post` and `http::deliver`
//! in `routes/**/*.rhai` is an operation of the document and nothing else is; the bodies
//! the scripts build and the fields they read are its schemas; the lookups and deliveries
//! of the routes' own tests (`*.test.toml`, which `switchboard test` holds to the scripts)
//! conform to it; it is a valid OpenAPI document; `switchboard openapi --services` prints
//! it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn doc() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("openapi/services.json")).unwrap())
        .unwrap()
}

/// One operation of the document.
#[derive(Debug)]
struct Op {
    service: String,
    method: String,
    /// The path with every `{param}` as `{}`.
    shape: String,
    routes: BTreeSet<String>,
    op: Value,
}

fn ops(doc: &Value) -> Vec<Op> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "servers" || method == "parameters" {
                continue;
            }
            out.push(Op {
                service: op["x-switchboard-service"].as_str().unwrap().to_owned(),
                method: method.to_ascii_uppercase(),
                shape: shape(path, '{', '}'),
                routes: op["x-switchboard-routes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect(),
                op: op.clone(),
            });
        }
    }
    out
}

/// `path` with every `{name}` (or `${expr}` in a script) replaced by `{}`.
fn shape(path: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if depth == 0 && open == '$' && c == '$' && chars.peek() == Some(&'{') {
            chars.next();
            depth = 1;
            out.push_str("{}");
        } else if depth == 0 && open == '{' && c == '{' {
            depth = 1;
            out.push_str("{}");
        } else if depth > 0 {
            if c == '{' {
                depth += 1;
            } else if c == close {
                depth -= 1;
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a concrete path fits a shape (`{}` is one segment).
fn fits(shape: &str, path: &str) -> bool {
    let (a, b): (Vec<_>, Vec<_>) = (shape.split('/').collect(), path.split('/').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(s, p)| *s == "{}" || s == p)
}

/// A call a script makes.
#[derive(Debug)]
struct Call {
    script: String,
    func: String,
    service: String,
    shape: String,
    /// The keys of a `#{...}` body written in the call.
    body_keys: Option<BTreeSet<String>>,
    /// The variable a lookup's answer is bound to (`let holder = http::get(...)`).
    bound_to: Option<String>,
}

/// Reads a Rhai string literal (`"..."` or a backtick template) at the start of `s`.
fn literal(s: &str) -> (String, &str) {
    let s = s.trim_start();
    let q = s.chars().next().unwrap();
    assert!(q == '"' || q == '`', "expected a string literal at {s:.40}");
    let mut depth = 0;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '{' if q == '`' => depth += 1,
            '}' if q == '`' => depth -= 1,
            c if c == q && depth == 0 => return (s[1..i].to_owned(), &s[i + 1..]),
            _ => {}
        }
    }
    panic!("unterminated literal at {s:.40}")
}

/// The keys of the map literal `#{ key: value, ... }` at the start of `s`.
fn map_keys(s: &str) -> BTreeSet<String> {
    let s = s.trim_start().strip_prefix("#{").unwrap();
    let mut keys = BTreeSet::new();
    let mut depth = 0;
    let mut in_str: Option<char> = None;
    let mut token = String::new();
    for c in s.chars() {
        if let Some(q) = in_str {
            if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '`' => in_str = Some(c),
            '{' | '(' | '[' => depth += 1,
            '}' if depth == 0 => break,
            '}' | ')' | ']' => depth -= 1,
            ':' if depth == 0 => {
                keys.insert(token.trim().to_owned());
                token.clear();
            }
            ',' if depth == 0 => token.clear(),
            c if depth == 0 => token.push(c),
            _ => {}
        }
    }
    keys
}

fn scripts(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            scripts(&p, base, out);
        } else if p.extension().is_some_and(|e| e == "rhai") {
            let name = p.strip_prefix(base).unwrap().display().to_string();
            out.push((name, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// Every service call of every shipped script.
fn calls() -> (Vec<Call>, BTreeMap<String, String>) {
    let routes = root().join("routes");
    let mut files = Vec::new();
    scripts(&routes, &routes, &mut files);
    let mut out = Vec::new();
    let mut texts = BTreeMap::new();
    for (name, text) in files {
        // Comments may mention the API; only code counts.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        for func in ["get", "post", "deliver"] {
            let needle = format!("http::{func}(");
            for (at, _) in code.match_indices(&needle) {
                let before = code[..at].trim_end();
                let bound_to = before
                    .strip_suffix('=')
                    .and_then(|b| b.trim_end().rsplit(|c: char| c.is_whitespace()).next())
                    .filter(|v| before.contains(&format!("let {v}")))
                    .map(str::to_owned);
                let (service, rest) = literal(&code[at + needle.len()..]);
                let rest = rest.trim_start().strip_prefix(',').unwrap();
                let (path, rest) = literal(rest);
                let rest = rest.trim_start();
                let body_keys = rest
                    .strip_prefix(',')
                    .map(str::trim_start)
                    .filter(|r| r.starts_with("#{"))
                    .map(map_keys);
                out.push(Call {
                    script: name.clone(),
                    func: func.to_owned(),
                    service,
                    shape: shape(&path, '$', '}'),
                    body_keys,
                    bound_to,
                });
            }
        }
        texts.insert(name, code);
    }
    (out, texts)
}

fn method_of(func: &str) -> &'static str {
    if func == "get" { "GET" } else { "POST" }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.strip_prefix('#').unwrap()).unwrap()),
        None => schema,
    }
}

/// Whether `v` conforms to `schema` (the parts of OpenAPI's schema language the document
/// uses: `$ref`, `oneOf`, `type`, `enum`, `required`, `properties`).
fn conforms(v: &Value, schema: &Value, doc: &Value) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let n = alts.iter().filter(|s| conforms(v, s, doc).is_ok()).count();
        return if n == 1 {
            Ok(())
        } else {
            Err(format!("{v} matches {n} of oneOf"))
        };
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            _ => false,
        };
        if !ok {
            return Err(format!("{v} is not of type {t}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{v} is not one of {e:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(r.as_str().unwrap()) {
                return Err(format!("{v} lacks {r}"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, val) in obj {
                if let Some(s) = props.get(k) {
                    conforms(val, s, doc).map_err(|e| format!("{k}: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// The schemas a body may have (the `oneOf` alternatives, or the one schema), resolved.
fn variants<'a>(doc: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let schema = resolve(doc, schema);
    match schema.get("oneOf").and_then(Value::as_array) {
        Some(alts) => alts.iter().map(|s| resolve(doc, s)).collect(),
        None => vec![schema],
    }
}

fn keys(schema: &Value, what: &str) -> BTreeSet<String> {
    match &schema[what] {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a.iter().map(|k| k.as_str().unwrap().to_owned()).collect(),
        _ => BTreeSet::new(),
    }
}

fn request_schema(op: &Value) -> &Value {
    &op["requestBody"]["content"]["application/json"]["schema"]
}

fn response_schema(op: &Value) -> &Value {
    &op["responses"]["200"]["content"]["application/json"]["schema"]
}

#[test]
fn the_services_document_lists_every_call_the_shipped_routes_make() {
    let doc = doc();
    let ops = ops(&doc);
    let (calls, texts) = calls();
    assert!(
        calls.len() >= 7,
        "the scan found the scripts' calls: {calls:?}"
    );

    // The same calls, both ways.
    let made: BTreeSet<_> = calls
        .iter()
        .map(|c| {
            (
                c.service.clone(),
                method_of(&c.func).to_owned(),
                c.shape.clone(),
            )
        })
        .collect();
    let documented: BTreeSet<_> = ops
        .iter()
        .map(|o| (o.service.clone(), o.method.clone(), o.shape.clone()))
        .collect();
    assert_eq!(
        made, documented,
        "openapi/services.json must list exactly the calls routes/**/*.rhai make"
    );

    for op in &ops {
        let mine: Vec<&Call> = calls
            .iter()
            .filter(|c| {
                c.service == op.service && method_of(&c.func) == op.method && c.shape == op.shape
            })
            .collect();
        let scripts: BTreeSet<String> = mine.iter().map(|c| c.script.clone()).collect();
        assert_eq!(op.routes, scripts, "x-switchboard-routes of {}", op.shape);
        for c in mine {
            if c.func == "get" {
                // The fields the script reads of the answer are the response's.
                let var = c
                    .bound_to
                    .as_deref()
                    .unwrap_or_else(|| panic!("{}: a lookup not bound with `let`", c.script));
                let text = &texts[&c.script];
                let read: BTreeSet<String> = text
                    .match_indices(&format!("{var}."))
                    .filter(|(at, _)| {
                        !text[..*at]
                            .chars()
                            .next_back()
                            .is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '.')
                    })
                    .map(|(at, m)| {
                        text[at + m.len()..]
                            .chars()
                            .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
                            .collect()
                    })
                    .collect();
                let schema = resolve(&doc, response_schema(&op.op));
                assert_eq!(
                    read,
                    keys(schema, "properties"),
                    "{}: the fields read of {}",
                    c.script,
                    op.shape
                );
            } else {
                // The body the script builds is one of the request's schemas, whole.
                let built = c
                    .body_keys
                    .clone()
                    .unwrap_or_else(|| panic!("{}: body not written as #{{...}}", c.script));
                assert!(
                    variants(&doc, request_schema(&op.op)).iter().any(|s| {
                        keys(s, "properties") == built && keys(s, "required") == built
                    }),
                    "{}: body {built:?} is not a schema of {} {}",
                    c.script,
                    op.method,
                    op.shape
                );
            }
        }
        // Every example is an instance of its schema.
        if op.method == "GET" {
            let content = &op.op["responses"]["200"]["content"]["application/json"];
            conforms(&content["example"], &content["schema"], &doc).unwrap();
        } else {
            let content = &op.op["requestBody"]["content"]["application/json"];
            for (name, ex) in content["examples"].as_object().unwrap() {
                conforms(&ex["value"], &content["schema"], &doc)
                    .unwrap_or_else(|e| panic!("example {name} of {}: {e}", op.shape));
            }
        }
    }
}

#[test]
fn the_routes_own_tests_call_the_services_as_documented() {
    let doc = doc();
    let ops = ops(&doc);
    let mut exercised = BTreeSet::new();
    let mut files = Vec::new();
    let routes = root().join("routes");
    fn tests(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                tests(&p, out);
            } else if p.to_string_lossy().ends_with(".test.toml") {
                out.push(p);
            }
        }
    }
    tests(&routes, &mut files);
    let event_id = "0193a1f2-7c4e-7b7a-9d55-3f0c2b8e4a11";
    for file in files {
        let cases: Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for case in cases["case"].as_array().unwrap() {
            let name = format!("{}: {}", file.display(), case["name"]);
            let find = |service: &str, method: &str, path: &str| {
                ops.iter()
                    .find(|o| o.service == service && o.method == method && fits(&o.shape, path))
                    .unwrap_or_else(|| {
                        panic!("{name}: {method} {service}{path} is not in services.json")
                    })
            };
            for l in case["lookup"].as_array().into_iter().flatten() {
                let op = find(
                    l["service"].as_str().unwrap(),
                    "GET",
                    l["path"].as_str().unwrap(),
                );
                exercised.insert(op.shape.clone());
                if let Some(answer) = l.get("answer") {
                    conforms(answer, response_schema(&op.op), &doc)
                        .unwrap_or_else(|e| panic!("{name}: the answer: {e}"));
                }
            }
            for x in case["expect"].as_array().into_iter().flatten() {
                if x["channel"] != "http" {
                    continue;
                }
                let p = &x["payload"];
                let op = find(
                    p["service"].as_str().unwrap(),
                    "POST",
                    p["path"].as_str().unwrap(),
                );
                exercised.insert(op.shape.clone());
                let body = serde_json::to_string(&p["body"])
                    .unwrap()
                    .replace("${event.id}", event_id)
                    .replace("${event.received_at}", "2025-06-17T13:45:02.004+00:00");
                let body: Value = serde_json::from_str(&body).unwrap();
                conforms(&body, request_schema(&op.op), &doc)
                    .unwrap_or_else(|e| panic!("{name}: the body: {e}"));
            }
        }
    }
    let all: BTreeSet<String> = ops.iter().map(|o| o.shape.clone()).collect();
    assert_eq!(exercised, all, "every documented call has a route test");
}

#[test]
fn the_services_document_is_valid_openapi_and_explained_in_services_md() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom openapi_spec_validator import validate\nfrom openapi_spec_validator.readers import read_from_filename\nvalidate(read_from_filename(sys.argv[1])[0])",
        ])
        .arg(root().join("openapi/services.json"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "openapi-spec-validator (`pip install openapi-spec-validator`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(root().join("SERVICES.md")).unwrap();
    let doc = doc();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "servers" {
                continue;
            }
            let heading = format!("### `{} {path}`", method.to_ascii_uppercase());
            assert!(md.contains(&heading), "SERVICES.md lacks {heading}");
            for r in op["x-switchboard-routes"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                let short = r.split('/').next_back().unwrap().trim_end_matches(".rhai");
                assert!(md.contains(short), "SERVICES.md does not name {r}");
            }
        }
    }
}

#[test]
fn openapi_services_prints_the_document_with_the_configured_base_urls() {
    let dir = Dir::new();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let printed: Value = serde_json::from_str(&run(&["openapi", "--services"])).unwrap();
    assert_eq!(printed, doc());
    let yaml: Value =
        serde_yaml::from_str(&run(&["openapi", "--services", "--format", "yaml"])).unwrap();
    assert_eq!(yaml, doc());
    std::fs::write(
        dir.path().join("switchboard.toml"),
        "[services.cards]\nbase_url = \"https://cards.bank.example/v2\"\n",
    )
    .unwrap();
    let mine: Value = serde_json::from_str(&run(&[
        "openapi",
        "--services",
        "--config",
        "switchboard.toml",
    ]))
    .unwrap();
    assert_eq!(
        mine["paths"]["/card-events"]["servers"],
        json!([{"url": "https://cards.bank.example/v2", "description": "services.cards.base_url"}])
    );
    assert_eq!(
        mine["paths"]["/customers/{customer_id}/contact"]["servers"],
        doc()["paths"]["/customers/{customer_id}/contact"]["servers"],
        "an unconfigured service keeps the example URL"
    );
}
