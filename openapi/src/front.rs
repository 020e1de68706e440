//! The front of every request: configured provider paths, request metrics and the
//! request timeout.
//!
//! poem-openapi operations are declared at fixed paths (the providers' defaults). An
//! operator may serve a provider elsewhere (`providers.pomelo.path`); the front rewrites the
//! configured path to the declared one and hides the declared one, and the served spec is
//! rewritten the same way ([`crate::app::served_spec`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use poem::{Endpoint, IntoResponse, Request, Response, http::StatusCode};
use switchboard_core::{metrics::Metrics, peer::ConnectionInfo};

pub use crate::config::MAIN_LISTENER;
use crate::config::RESERVED_PATHS;
use switchboard_plugins::{http::error_json, http::to_response, providers::ProviderInfo};

/// How a path is labelled and routed.
#[derive(Default)]
pub struct RouteTable {
    /// Configured path → (provider, declared path).
    providers: HashMap<String, (String, String)>,
    /// Declared paths served elsewhere: not found here.
    hidden: Vec<String>,
    /// Provider → the listener it is served on (absent: the main listener).
    listeners: HashMap<String, String>,
}

impl RouteTable {
    /// The table for these providers, each served on the listener `listener_of` names.
    pub fn new(providers: &[ProviderInfo], listener_of: impl Fn(&str) -> String) -> Self {
        let mut t = RouteTable::default();
        for p in providers {
            t.listeners.insert(p.name.clone(), listener_of(&p.name));
            for e in &p.endpoints {
                t.providers
                    .insert(e.path.clone(), (p.name.clone(), e.canonical.clone()));
                if e.path != e.canonical {
                    t.hidden.push(e.canonical.clone());
                }
            }
        }
        t.hidden.retain(|h| !t.providers.contains_key(h));
        t
    }

    /// The declared path → configured path renames, for the spec.
    pub fn renames(&self) -> HashMap<&str, String> {
        self.providers
            .iter()
            .map(|(path, (_, canonical))| (canonical.as_str(), path.clone()))
            .collect()
    }

    /// (metric provider label, metric endpoint label, declared path to route to).
    fn classify(&self, path: &str) -> (&str, String, Option<&str>) {
        if let Some((provider, canonical)) = self.providers.get(path) {
            return (provider, path.to_owned(), Some(canonical));
        }
        if let Some(p) = RESERVED_PATHS
            .iter()
            .find(|p| **p == path && **p != "/admin")
        {
            return ("system", (*p).to_owned(), None);
        }
        if let Some(rest) = path.strip_prefix("/admin/") {
            let template = match rest.split_once('/') {
                Some(("events", _)) => "/admin/events/{id}".to_owned(),
                _ => format!("/admin/{}", rest.split('/').next().unwrap_or("")),
            };
            let known = ["/admin/events", "/admin/quarantine", "/admin/events/{id}"];
            let label = if known.contains(&template.as_str()) {
                template
            } else {
                "other".into()
            };
            return ("admin", label, None);
        }
        ("none", "other".into(), None)
    }

    fn is_hidden(&self, path: &str) -> bool {
        self.hidden.iter().any(|h| h == path)
    }

    /// Whether a request for `provider` (or `admin`, `system`) may be served on
    /// `listener`: a provider only on its own listener, switchboard's own endpoints only
    /// on the main one.
    fn serves(&self, provider: &str, listener: &str) -> bool {
        match self.listeners.get(provider) {
            Some(l) => l == listener,
            None => listener == MAIN_LISTENER,
        }
    }
}

/// The front endpoint around the whole service.
pub struct Front<E> {
    /// The service.
    pub inner: E,
    /// Routing and labels.
    pub table: Arc<RouteTable>,
    /// Where request counts go.
    pub metrics: Arc<Metrics>,
    /// Longest a request may take, body included.
    pub request_timeout: Duration,
}

impl<E: Endpoint> Endpoint for Front<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let (provider, label, route_to) = self.table.classify(req.uri().path());
        let listener = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|c| c.listener.clone());
        let listener = listener.as_deref().unwrap_or(MAIN_LISTENER);
        let elsewhere = !self.table.serves(provider, listener);
        let resp = if elsewhere || (route_to.is_none() && self.table.is_hidden(req.uri().path())) {
            StatusCode::NOT_FOUND.into_response()
        } else {
            if let Some(declared) = route_to {
                if declared != req.uri().path() {
                    let declared = declared.to_owned();
                    rewrite_path(&mut req, &declared);
                }
            }
            match tokio::time::timeout(self.request_timeout, self.inner.get_response(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::warn!(provider, endpoint = %label, "request timed out");
                    to_response(&error_json(
                        408,
                        "request_timeout",
                        "The request took too long.",
                    ))
                }
            }
        };
        self.metrics
            .request(provider, &label, resp.status().as_u16());
        Ok(resp)
    }
}

fn rewrite_path(req: &mut Request, path: &str) {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = poem::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugins::providers::EndpointInfo;

    fn provider(name: &str, canonical: &str, path: &str, mtls: bool) -> ProviderInfo {
        ProviderInfo {
            name: name.into(),
            credentials: 1,
            endpoints: vec![EndpointInfo {
                canonical: canonical.into(),
                path: path.into(),
                key: format!("providers.{name}.path"),
            }],
            client_certificates: mtls,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            &[
                provider("a", "/a/default", "/hooks/a", false),
                provider("b", "/b/default", "/b/default", true),
            ],
            |p| {
                if p == "b" {
                    "mtls".into()
                } else {
                    MAIN_LISTENER.into()
                }
            },
        )
    }

    #[test]
    fn configured_paths_route_to_declared_ones() {
        let t = table();
        assert_eq!(
            t.classify("/hooks/a"),
            ("a", "/hooks/a".to_owned(), Some("/a/default"))
        );
        assert_eq!(
            t.classify("/b/default"),
            ("b", "/b/default".to_owned(), Some("/b/default"))
        );
        assert!(t.is_hidden("/a/default"));
        assert!(!t.is_hidden("/b/default"));
        assert_eq!(
            t.classify("/admin/events/0190"),
            ("admin", "/admin/events/{id}".into(), None)
        );
        assert_eq!(t.classify("/admin/zzz/1"), ("admin", "other".into(), None));
        assert_eq!(t.classify("/random/scan"), ("none", "other".into(), None));
        assert_eq!(
            t.renames().get("/a/default").map(String::as_str),
            Some("/hooks/a")
        );
    }

    #[test]
    fn providers_are_served_only_on_their_listener() {
        let t = table();
        assert!(t.serves("a", MAIN_LISTENER) && !t.serves("a", "mtls"));
        assert!(t.serves("b", "mtls") && !t.serves("b", MAIN_LISTENER));
        assert!(t.serves("admin", MAIN_LISTENER) && !t.serves("admin", "mtls"));
        assert!(!t.serves("system", "mtls") && !t.serves("none", "mtls"));
    }
}
