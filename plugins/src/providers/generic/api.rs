//! A generic provider's endpoint (a plain poem endpoint: its path is configured, so it
//! cannot be a poem-openapi operation) and its operation in the spec.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use poem::{Endpoint, Request, Response, http::Method};
use serde_json::{Map, Value, json};
use switchboard_core::{
    ingest::{Content, OnConflict, Submission, fingerprint},
    peer::ConnectionInfo,
    store::StoredResponse,
};

use super::{
    Generic, Resolved,
    config::{BodyFormat, Scheme, SignatureFormat, Source},
    event_type,
    verify::{self, Auth},
};
use crate::http::{Ctx, Limits, error_json, json_depth_exceeds, to_response, unavailable};

/// The event type of a body kept in quarantine whose type would come from the body.
const UNPARSED: &str = "unparsed";

/// What the endpoint runs with.
pub struct Inner {
    name: String,
    path: String,
    auth: Auth,
    resolved: Resolved,
    format: BodyFormat,
    answer: StoredResponse,
    secret_paths: Vec<String>,
    body_limit: Option<usize>,
    dedup_window: Option<Duration>,
    limits: Limits,
}

impl Inner {
    /// The endpoint's state for `g` with its resolved authentication.
    pub fn new(g: &Generic, auth: Auth, limits: Limits) -> Self {
        let a = &g.cfg.answer;
        let mut answer = StoredResponse::empty(a.status);
        if !a.body.is_empty() {
            answer.body = a.body.clone().into_bytes();
            answer.headers.push((
                "content-type".into(),
                a.content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            ));
        }
        Inner {
            name: g.name.clone(),
            path: g.cfg.path.clone(),
            auth,
            resolved: g.resolved(),
            format: g.format(),
            answer,
            secret_paths: g.cfg.secret_paths.clone(),
            body_limit: g.cfg.body_limit.map(|b| b.as_usize()),
            dedup_window: g.cfg.dedup_window.map(|w| w.get()),
            limits,
        }
    }

    /// The body as routes see it, or why it is kept in quarantine.
    fn parse(&self, body: &[u8]) -> Result<Value, String> {
        match self.format {
            BodyFormat::Json => {
                if json_depth_exceeds(body, self.limits.json_depth) {
                    return Err(format!(
                        "JSON nested deeper than {} levels",
                        self.limits.json_depth
                    ));
                }
                let v: Value =
                    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
                if v.is_object() {
                    Ok(v)
                } else {
                    Err("the body is not a JSON object".into())
                }
            }
            BodyFormat::Form => {
                let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8")?;
                let mut m = Map::new();
                for pair in text.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let dec = |s: &str| {
                        verify::percent_decode(&s.replace('+', " ")).ok_or_else(|| {
                            "a form field is not valid percent-encoded UTF-8".to_owned()
                        })
                    };
                    m.insert(dec(k)?, Value::String(dec(v)?));
                }
                Ok(Value::Object(m))
            }
        }
    }

    /// Parses a kept body again (replay of a quarantined event). Headers are not kept, so
    /// an event type that came from one is the one stored on arrival.
    pub fn reparse(
        &self,
        stored_type: &str,
        body: &[u8],
    ) -> Result<super::super::Reparsed, String> {
        let data = self.parse(body)?;
        let from_header = self
            .resolved
            .event_type
            .as_ref()
            .is_some_and(|s| s.header.is_some());
        let event_type = if from_header && stored_type != UNPARSED {
            stored_type.to_owned()
        } else {
            self.event_type(Some(&data), &|_| None)
        };
        Ok(super::super::Reparsed {
            event_type,
            data,
            flags: Vec::new(),
        })
    }

    fn value(
        &self,
        s: &Source,
        data: Option<&Value>,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        if let Some(h) = &s.header {
            return header(&h.to_ascii_lowercase()).filter(|v| !v.is_empty());
        }
        if let Some(p) = &s.json {
            return match data?.pointer(p)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            };
        }
        s.constant.clone()
    }

    /// The event type: from its source, `event` when the source has nothing, `unparsed`
    /// when it needs a body that could not be read.
    fn event_type(&self, data: Option<&Value>, header: &dyn Fn(&str) -> Option<String>) -> String {
        match &self.resolved.event_type {
            Some(s) if s.json.is_some() && data.is_none() => UNPARSED.into(),
            Some(s) => self
                .value(s, data, header)
                .map_or_else(|| "event".into(), |v| event_type(&v)),
            None => "event".into(),
        }
    }

    async fn handle(&self, mut req: Request) -> Response {
        if req.method() != Method::POST {
            return to_response(&error_json(
                405,
                "method_not_allowed",
                "Only POST is served here.",
            ));
        }
        let Some(ctx) = req.data::<Ctx>().cloned() else {
            return to_response(&error_json(503, "temporarily_unavailable", "Not ready."));
        };
        let limit = self
            .body_limit
            .map_or(ctx.limits.body, |l| l.min(ctx.limits.body));
        let declared = req
            .header(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return to_response(&error_json(
                413,
                "payload_too_large",
                "The body exceeds the size limit.",
            ));
        }
        let body = match req.take_body().into_bytes_limit(limit).await {
            Ok(b) => b.to_vec(),
            Err(poem::error::ReadBodyError::PayloadTooLarge) => {
                return to_response(&error_json(
                    413,
                    "payload_too_large",
                    "The body exceeds the size limit.",
                ));
            }
            Err(_) => {
                return to_response(&error_json(
                    400,
                    "unreadable_body",
                    "The body could not be read.",
                ));
            }
        };
        let headers = req.headers().clone();
        let header = move |name: &str| -> Option<String> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let verdict = self.auth.verify(&verify::Request {
            header: &header,
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            body: &body,
            conn: req.extensions().get::<ConnectionInfo>(),
            now: chrono::Utc::now().timestamp(),
        });
        let secret = match verdict {
            Ok(i) => i,
            Err(refusal) => {
                ctx.ingest
                    .metrics()
                    .auth_failure(&self.name, refusal.reason());
                tracing::info!(provider = %self.name, reason = refusal.reason(), "request refused");
                return to_response(&error_json(
                    401,
                    "unauthorized",
                    "The request is not authenticated as this provider.",
                ));
            }
        };
        let mut meta = BTreeMap::new();
        if matches!(
            self.auth,
            Auth::Hmac(_) | Auth::Bearer(_) | Auth::Header(..) | Auth::Basic(..)
        ) {
            meta.insert("secret".to_owned(), format!("secrets[{secret}]"));
        }
        if let Some(peer) = req
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|c| c.peer.as_ref())
        {
            meta.insert("client_subject".into(), peer.subject.clone());
            meta.insert("client_sha256".into(), peer.sha256.clone());
        }
        let (content, data) = match self.parse(&body) {
            Ok(data) => (None, Some(data)),
            Err(reason) => (Some(reason), None),
        };
        let event_type = self.event_type(data.as_ref(), &header);
        let id = self
            .resolved
            .dedup_key
            .as_ref()
            .and_then(|s| self.value(s, data.as_ref(), &header));
        let key = match id {
            // An overlong id still identifies its request: by its hash.
            Some(k) if k.len() <= 200 => format!("id:{k}"),
            Some(k) => format!("id:sha256:{}", fingerprint(k.as_bytes())),
            None => format!("{}#{}", self.path, fingerprint(&body)),
        };
        let content = match (content, data) {
            (None, Some(data)) => Content::Parsed {
                data,
                flags: Vec::new(),
            },
            (reason, _) => Content::Quarantined {
                reason: reason.unwrap_or_default(),
            },
        };
        let submission = Submission {
            provider: self.name.clone(),
            endpoint: self.path.clone(),
            event_type,
            key,
            body,
            content,
            on_conflict: OnConflict::KeepAndFlag,
            meta,
            secret_paths: self.secret_paths.clone(),
            response: self.answer.clone(),
            answer_within: None,
            dedup_window: self.dedup_window,
        };
        match ctx.ingest.submit(submission).await {
            Ok(receipt) => to_response(&receipt.response),
            Err(e) => to_response(&unavailable(&self.name, &e)),
        }
    }
}

/// The endpoint of one generic provider.
pub struct GenericEndpoint(pub Arc<Inner>);

impl Endpoint for GenericEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(self.0.handle(req).await)
    }
}

fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in name.chars() {
        if c == '_' || c == '-' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The provider's operation, for the served spec: at its configured path, tagged with
/// its name, its authentication headers documented.
pub fn spec(g: &Generic) -> Value {
    let r = g.resolved();
    let a = &r.auth;
    let header = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": true, "description": description,
               "schema": {"type": "string"}, "style": "simple"})
    };
    let mut params = Vec::new();
    let mut security = None;
    let mut schemes = Map::new();
    let scheme_name = format!("{}Auth", camel(&format!("{}_", g.name)));
    match a.scheme {
        Some(Scheme::Hmac) => {
            let how = match a.signature_format {
                Some(SignatureFormat::Stripe) => {
                    "`t=<timestamp>,v1=<signature>` (several `v1` during a rotation)".to_owned()
                }
                Some(SignatureFormat::StandardWebhooks) => {
                    "`v1,<signature>`, several separated by spaces during a rotation".to_owned()
                }
                _ => format!(
                    "`{}<signature>`",
                    a.signature_prefix.clone().unwrap_or_default()
                ),
            };
            params.push(header(
                a.signature_header.as_deref().unwrap_or_default(),
                &format!(
                    "{how}: HMAC-{} over `{}`, {}-encoded.",
                    format!(
                        "{:?}",
                        a.algorithm.unwrap_or(super::config::Algorithm::Sha256)
                    )
                    .to_uppercase(),
                    a.signed_content.as_deref().unwrap_or("{body}"),
                    format!(
                        "{:?}",
                        a.signature_encoding.unwrap_or(super::config::Encoding::Hex)
                    )
                    .to_lowercase(),
                ),
            ));
            if let Some(t) = &a.timestamp_header {
                params.push(header(t, "Unix seconds when the request was signed; must be within the tolerance of our clock, in either direction."));
            }
            if let Some(i) = &a.id_header {
                params.push(header(
                    i,
                    "The message id (signed, and the de-duplication key).",
                ));
            }
        }
        Some(Scheme::Bearer) => {
            schemes.insert(
                scheme_name.clone(),
                json!({"type": "http", "scheme": "bearer", "description": "A configured token."}),
            );
            security = Some(json!([{ scheme_name.clone(): [] }]));
        }
        Some(Scheme::Header) => {
            schemes.insert(scheme_name.clone(), json!({"type": "apiKey", "in": "header", "name": a.header, "description": "A configured key."}));
            security = Some(json!([{ scheme_name.clone(): [] }]));
        }
        Some(Scheme::Basic) => {
            schemes.insert(scheme_name.clone(), json!({"type": "http", "scheme": "basic", "description": "The configured user name and a configured password."}));
            security = Some(json!([{ scheme_name.clone(): [] }]));
        }
        Some(Scheme::Mtls) | Some(Scheme::None) | None => {}
    }
    let answer = &g.cfg.answer;
    let mut ok = json!({"description": "Stored durably (or, a body that cannot be read as configured, kept in quarantine for an operator). A repeat gets this same answer, byte for byte, and is not stored again."});
    if !answer.body.is_empty() {
        let ct = answer
            .content_type
            .clone()
            .unwrap_or_else(|| "application/json".into());
        ok["content"] = json!({ ct: {"schema": {"type": "string"}, "example": answer.body} });
    }
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    let mut responses = Map::new();
    responses.insert(answer.status.to_string(), ok);
    responses.insert("401".into(), err("Not authenticated: a missing or wrong signature, token or certificate, or a timestamp outside the tolerance. One answer for every case."));
    responses.insert(
        "413".into(),
        err("The body is larger than the configured limit."),
    );
    responses.insert("503".into(), err("Not stored (storage trouble, or the same notification is still being stored by a concurrent request). Retry."));
    let content_type = match g.format() {
        BodyFormat::Json => "application/json",
        BodyFormat::Form => "application/x-www-form-urlencoded",
    };
    let mut op = json!({
        "tags": [g.name],
        "summary": format!("{} notification", g.name),
        "description": format!("{} Configured as `[providers.{}]` (kind `{}`).", r.doc, g.name, g.cfg.kind.as_str()),
        "parameters": params,
        "requestBody": {"content": {content_type: {"schema": {"type": "object"}}}, "required": true},
        "responses": responses,
        "operationId": format!("{}Notification", camel(&g.name)),
    });
    if let Some(s) = security {
        op["security"] = s;
    }
    let mut out = json!({
        "paths": { g.cfg.path.clone(): {"post": op} },
        "tags": [{"name": g.name, "description": r.doc}],
        // `ErrorBody` is in the spec already: the built-in providers answer with it too.
        "components": {},
    });
    if !schemes.is_empty() {
        out["components"]["securitySchemes"] = Value::Object(schemes);
    }
    out
}
