//! `switchboard openapi --services`: the OpenAPI document of the calls the default route
//! scripts make to internal services (the committed `openapi/services.json`, built into
//! the binary), with the base URLs of a configuration's `[services.*]` filled in.
//!
//! The document is written by hand beside the scripts; `tests/it/services.rs` keeps the
//! two equal. What does not live here: the calls themselves (the scripts, `routes/`) and
//! the services' client (`switchboard_plugins::services`).

use serde_json::{Value, json};
use switchboard_openapi::config::Config;

/// `openapi/services.json`.
pub const SERVICES_JSON: &str = include_str!("../openapi/services.json");

/// The document, each path's `servers` set to its service's configured base URL.
pub fn spec(config: &Config) -> anyhow::Result<Value> {
    let mut doc: Value = serde_json::from_str(SERVICES_JSON)?;
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let service = item
                .as_object()
                .and_then(|ops| {
                    ops.values()
                        .find_map(|op| op.get("x-switchboard-service")?.as_str())
                })
                .map(str::to_owned);
            let Some(service) = service else { continue };
            if let Some(cfg) = config.services.get(&service) {
                item["servers"] = json!([{
                    "url": cfg.base_url,
                    "description": format!("services.{service}.base_url"),
                }]);
            }
        }
    }
    Ok(doc)
}
