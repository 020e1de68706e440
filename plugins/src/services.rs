//! Named services: internal HTTP services that route scripts look data up from
//! (`http::get("customers", "/cards/1")`) and deliver to (`http::deliver(...)`). Their base
//! URLs, credentials and timeouts live here, so scripts hold no secrets and no raw URLs.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use reqwest::{
    Method as HttpMethod, StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_core::{
    route::{Lookup, Method},
    secret::SecretRef,
    units::HumanDuration,
};

use crate::{Error, Result};

/// `[services.<name>]`: one internal HTTP service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Base URL; a script's path is appended (`https://customers.internal/api`).
    pub base_url: String,
    /// Headers sent with every call. Values are secrets: `env:NAME`, `file:PATH` or text
    /// (`Authorization = "env:CUSTOMERS_TOKEN"`).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Longest one call may take (a lookup is also bounded by `routes.lookup_timeout`).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// PEM file of a CA to trust for this service (a private PKI). Default: the public
    /// web PKI.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}

/// The answer of a service call.
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: bytes::Bytes,
}

struct Service {
    base: String,
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
}

/// Every configured service.
#[derive(Clone, Default)]
pub struct Services {
    map: Arc<BTreeMap<String, Service>>,
}

/// An HTTP client as every channel and service uses it: rustls, no redirects (a 3xx is
/// an answer, not a detour), a timeout.
pub fn client(timeout: Duration, ca_file: Option<&PathBuf>, key: &str) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            Error::config(format!("{key}.ca_file"), format!("{}: {e}", ca.display()))
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Error::config(
                format!("{key}.ca_file"),
                format!("not a PEM certificate: {e}"),
            )
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| Error::config(key, e.to_string()))
}

/// Resolves header secrets into a header map. Errors name the setting.
pub fn headers(map: &BTreeMap<String, SecretRef>, key: &str) -> Result<HeaderMap> {
    let mut out = HeaderMap::new();
    for (name, value) in map {
        let at = format!("{key}.headers.{name}");
        let v = value.resolve().map_err(|m| Error::config(&at, m))?;
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| Error::config(&at, "is not a header name"))?;
        let mut value = HeaderValue::try_from(v.expose())
            .map_err(|_| Error::config(&at, "is not a header value"))?;
        value.set_sensitive(true);
        out.insert(name, value);
    }
    Ok(out)
}

impl Services {
    /// Builds the services, resolving their secrets.
    pub fn new(cfg: &BTreeMap<String, ServiceConfig>) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, s) in cfg {
            let key = format!("services.{name}");
            let parsed = reqwest::Url::parse(&s.base_url)
                .map_err(|e| Error::config(format!("{key}.base_url"), e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::config(
                    format!("{key}.base_url"),
                    "must be http or https",
                ));
            }
            map.insert(
                name.clone(),
                Service {
                    base: s.base_url.trim_end_matches('/').to_owned(),
                    headers: headers(&s.headers, &key)?,
                    timeout: s.timeout.get(),
                    client: client(s.timeout.get(), s.ca_file.as_ref(), &key)?,
                },
            );
        }
        Ok(Services { map: Arc::new(map) })
    }

    /// Whether `name` is configured.
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Calls a service. `extra` headers go on top of the configured ones.
    pub fn request(
        &self,
        name: &str,
        method: HttpMethod,
        path: &str,
        body: Option<&Value>,
        extra: HeaderMap,
    ) -> BoxFuture<'static, Result<Reply, String>> {
        let Some(s) = self.map.get(name) else {
            let msg = format!("service `{name}` is not configured");
            return Box::pin(async move { Err(msg) });
        };
        let mut req = s
            .client
            .request(method, format!("{}{path}", s.base))
            .headers(s.headers.clone())
            .headers(extra)
            .timeout(s.timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        Box::pin(async move {
            let resp = req.send().await.map_err(describe)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(describe)?;
            Ok(Reply {
                status,
                headers,
                body,
            })
        })
    }
}

/// A transport error, described without URLs (they may carry identifiers).
pub fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "broken answer"
    } else {
        "request failed"
    };
    let source = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    format!("{kind}{source}")
}

impl Lookup for Services {
    fn configured(&self, service: &str) -> bool {
        self.has(service)
    }

    fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, String>> {
        let m = match method {
            Method::Get => HttpMethod::GET,
            Method::Post => HttpMethod::POST,
        };
        let fut = self.request(service, m, path, body.as_ref(), HeaderMap::new());
        Box::pin(async move {
            let reply = fut.await?;
            if !reply.status.is_success() {
                return Err(format!("HTTP {}", reply.status.as_u16()));
            }
            if reply.body.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&reply.body).map_err(|_| "the answer is not JSON".to_owned())
        })
    }
}
