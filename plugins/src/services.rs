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
    route::{Lookup, LookupError, Method},
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
    /// `base` parsed: a call's URL must stay under it.
    base_url: reqwest::Url,
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
                    base_url: parsed.clone(),
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

    /// Whether `path` may be called on service `name`: it is configured and the path stays
    /// under its base URL.
    pub fn check(&self, name: &str, path: &str) -> std::result::Result<(), String> {
        match self.map.get(name) {
            Some(s) => s.url(path).map(|_| ()),
            None => Err(format!("service `{name}` is not configured")),
        }
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
        let url = match s.url(path) {
            Ok(u) => u,
            Err(msg) => return Box::pin(async move { Err(msg) }),
        };
        let mut req = s
            .client
            .request(method, url)
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

impl Service {
    /// The URL of `path` under the base URL. The path must follow
    /// [`switchboard_core::route::paths::check_path`] (a leading `/`; no `.`/`..`
    /// segments, also encoded, with `;parameters` or decoded twice; no encoded `/`, `\\`
    /// or NUL inside a segment; no `#`, spaces or control characters; a query is allowed),
    /// so that data from an event (`/cards/${id}`) cannot reach another endpoint, let alone
    /// another host, with the service's credentials, even on a server that normalises
    /// more than RFC 3986 (Tomcat, IIS). Scripts put event data in a path with
    /// `http::escape`.
    fn url(&self, path: &str) -> std::result::Result<reqwest::Url, String> {
        let refuse = |why: &str| Err(format!("refused path: {why}"));
        switchboard_core::route::paths::check_path(path)?;
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|_| "refused path: not a valid URL path".to_owned())?;
        let base_path = self.base_url.path().trim_end_matches('/');
        let same_origin = url.scheme() == self.base_url.scheme()
            && url.host_str() == self.base_url.host_str()
            && url.port_or_known_default() == self.base_url.port_or_known_default()
            && url.username() == self.base_url.username();
        if !same_origin || !url.path().starts_with(base_path) {
            return refuse("it leaves the service's base URL");
        }
        Ok(url)
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

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> BoxFuture<'static, Result<Value, LookupError>> {
        let m = match method {
            Method::Get => HttpMethod::GET,
            Method::Post => HttpMethod::POST,
        };
        let refused = self.check(service, path).err().map(LookupError::permanent);
        let fut = self.request(service, m, path, body.as_ref(), HeaderMap::new());
        Box::pin(async move {
            if let Some(e) = refused {
                return Err(e);
            }
            // Whatever failed on the way (timeout, connection) may pass.
            let reply = fut.await.map_err(LookupError::transient)?;
            let status = reply.status.as_u16();
            if !reply.status.is_success() {
                let msg = format!("HTTP {status}");
                return Err(if matches!(status, 408 | 425 | 429 | 500..=599) {
                    LookupError::transient(msg)
                } else {
                    LookupError::permanent(msg)
                });
            }
            if reply.body.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&reply.body)
                .map_err(|_| LookupError::permanent("the answer is not JSON"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Services {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "customers".to_owned(),
            ServiceConfig {
                base_url: "https://customers.internal:8443/api/".into(),
                headers: BTreeMap::new(),
                timeout: default_timeout(),
                ca_file: None,
            },
        );
        Services::new(&cfg).unwrap()
    }

    #[test]
    fn paths_stay_under_the_base_url() {
        let s = services();
        assert!(s.check("customers", "/cards/card_1/holder").is_ok());
        assert!(s.check("customers", "/cards?number=1&x=2").is_ok());
        assert_eq!(
            s.map["customers"].url("/cards/a%2Db").unwrap().as_str(),
            "https://customers.internal:8443/api/cards/a%2Db"
        );
        for bad in [
            "cards/1",
            "@evil.example/x",
            "/../admin",
            "/cards/../../admin",
            "/cards/%2e%2E/admin",
            "/cards/./x",
            "/cards//x",
            "/cards/1#frag",
            "/cards/1\\..\\x",
            "/cards/ 1",
            "/cards/\n1",
            "/cards/..;/admin",
            "/cards/a%2fb",
            "/cards/a%5cb",
            "/cards/a%00",
            "/cards/%252e%252e/admin",
        ] {
            assert!(
                s.check("customers", bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(s.check("nobody", "/x").is_err());
    }

    #[test]
    fn the_script_escape_makes_event_data_one_segment_or_is_refused() {
        let id = switchboard_core::route::api::escape_segment("..admin?x=1#");
        assert_eq!(id, "%2E%2Eadmin%3Fx%3D1%23");
        assert!(
            services()
                .check("customers", &format!("/cards/{id}/holder"))
                .is_ok()
        );
        // A `/` in event data stays encoded, and an encoded `/` is refused: some servers
        // decode it before they route.
        let id = switchboard_core::route::api::escape_segment("../../admin");
        assert!(
            services()
                .check("customers", &format!("/cards/{id}/holder"))
                .is_err()
        );
    }
}
