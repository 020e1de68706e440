//! Delivering to a named service.

use futures_util::future::BoxFuture;
use reqwest::{
    Method,
    header::{HeaderMap, HeaderValue},
};
use switchboard_core::{
    delivery::Channel,
    outbox::{Action, SendResult},
};

use crate::{channels::classify, services::Services};

/// The HTTP channel.
pub struct Http {
    /// The named services.
    pub services: Services,
    /// Most deliveries at once.
    pub concurrency: usize,
}

impl Channel for Http {
    fn send<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let p = &action.payload;
            let (Some(service), Some(path)) = (
                p.get("service").and_then(|v| v.as_str()),
                p.get("path").and_then(|v| v.as_str()),
            ) else {
                return SendResult::Permanent("no `service` or `path`".into());
            };
            if let Err(e) = self.services.check(service, path) {
                return SendResult::Permanent(e);
            }
            let mut extra = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&action.id.to_string()) {
                extra.insert("idempotency-key", v);
            }
            let body = p.get("body").cloned().unwrap_or(serde_json::Value::Null);
            match self
                .services
                .request(service, Method::POST, path, Some(&body), extra)
                .await
            {
                Ok(reply) => classify(reply.status, &reply.headers),
                Err(e) => SendResult::Retry {
                    error: e,
                    after: None,
                },
            }
        })
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}
