//! The operator's console: a small single-page app at `/console`, served from assets
//! embedded in the binary (`assets/`, nothing from the internet, no build step), over the
//! admin API.
//!
//! - `GET /console`, `GET /console/assets/*`: the page, its script and its styles, with a
//!   strict Content-Security-Policy (scripts and styles only from these files, nothing
//!   inline, no framing).
//! - `POST /console/session` with `{"token": <admin token>}` signs in: an HttpOnly,
//!   SameSite=Strict cookie holds the session; the answer carries the session's CSRF
//!   token. `GET /console/session` gives the token again to a signed-in page;
//!   `DELETE /console/session` signs out.
//! - `/console/api/<path>` is `/admin/<path>` for a signed-in browser: the console adds the
//!   admin token itself (the page never holds it). Anything but GET also needs the
//!   session's CSRF token in `X-CSRF-Token`, and a request from another site is refused.
//!
//! The page builds every element with `textContent`, never with HTML strings, so event
//! bodies (which come from outside) show as text.
//!
//! What must not live here: admin logic. The console only proxies; every view is one of
//! the admin API's operations, so the CLI, CI and the console see the same data.

mod session;

use poem::{
    Body, Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};
use serde_json::{Value, json};
use switchboard_core::secret::Secret;

use self::session::{LIFETIME, Sessions};

/// The session cookie.
const COOKIE: &str = "switchboard_console";
/// The header that carries the CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";

/// No script, style, image or connection but our own; no inline code; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The embedded assets: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("assets/icon.svg"),
    ),
];
const INDEX: &str = include_str!("assets/index.html");

/// The console in front of `inner` (the rest of the service, admin API included).
pub struct Console<E> {
    inner: E,
    token: Option<Secret>,
    /// The `[server]` listener is TLS: cookies get `Secure`.
    secure: bool,
    sessions: Sessions,
}

impl<E> Console<E> {
    /// Serves the console at `/console` and everything else from `inner`. Without an admin
    /// token nobody can sign in.
    pub fn new(inner: E, token: Option<Secret>, secure: bool) -> Self {
        Console {
            inner,
            token,
            secure,
            sessions: Sessions::default(),
        }
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        format!(
            "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The headers every console answer carries.
fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn json_answer(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(v.to_string())
}

fn refuse(status: StatusCode, error: &str, message: &str) -> Response {
    json_answer(status, &json!({"error": error, "message": message}))
}

/// The session id the request's cookie carries.
fn session_id(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Whether the request comes from another origin: the browser says so
/// (`Sec-Fetch-Site`, sent by every current browser), or, from one that does not send it,
/// its `Origin` names another host. SameSite=Strict already keeps the cookie off
/// cross-site requests; this refuses them even if a browser sent it.
fn cross_site(req: &Request) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            origin_host != host
        }
        (Some(_), None) => true,
        _ => false,
    }
}

fn asset(name: &str) -> Option<Response> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ty, b)| {
            Response::builder()
                .content_type(*ty)
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_bytes(bytes::Bytes::from_static(b)))
        })
}

impl<E: Endpoint> Console<E> {
    async fn sign_in(&self, req: Request) -> Response {
        let bytes = req.into_body().into_vec().await.unwrap_or_default();
        let presented = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned));
        let ok = match (&self.token, presented) {
            (Some(t), Some(p)) => t.matches(p.as_bytes()),
            _ => false,
        };
        if !ok {
            tracing::warn!("console sign-in refused: wrong or missing admin token");
            let message = if self.token.is_some() {
                "The admin token is not right."
            } else {
                "No admin token is configured (`admin.token`): nobody can sign in."
            };
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized", message);
        }
        let (id, csrf) = self.sessions.create();
        tracing::info!("console session started");
        let mut resp = json_answer(StatusCode::OK, &json!({"csrf": csrf}));
        if let Ok(v) = HeaderValue::from_str(&self.cookie(&id, LIFETIME.as_secs())) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }

    async fn proxy(&self, mut req: Request, rest: &str) -> poem::Result<Response> {
        let Some(token) = &self.token else {
            return Ok(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Sign in first.",
            ));
        };
        // Only admin operations: no dot segments that could climb out of `/admin/`.
        if rest.split('/').any(|seg| seg == ".." || seg == ".") {
            return Ok(refuse(StatusCode::BAD_REQUEST, "bad_request", "Bad path."));
        }
        let uri = match req.uri().query() {
            Some(q) => format!("/admin/{rest}?{q}"),
            None => format!("/admin/{rest}"),
        };
        let Ok(uri) = uri.parse::<poem::http::Uri>() else {
            return Ok(refuse(StatusCode::BAD_REQUEST, "bad_request", "Bad path."));
        };
        let mut builder = Request::builder()
            .method(req.method().clone())
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            builder = builder.header(header::CONTENT_TYPE, ct.clone());
        }
        let inner = builder.body(req.take_body());
        Ok(self.inner.get_response(inner).await)
    }
}

impl<E: Endpoint> Endpoint for Console<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        let Some(rest) = path
            .strip_prefix("/console")
            .filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        };
        let method = req.method().clone();
        let read = method == Method::GET || method == Method::HEAD;
        let resp = match rest {
            "" | "/" if read => Response::builder()
                .content_type("text/html; charset=utf-8")
                .body(INDEX),
            _ if rest.starts_with("/assets/") && read => match asset(&rest["/assets/".len()..]) {
                Some(r) => r,
                None => StatusCode::NOT_FOUND.into_response(),
            },
            "/session" => {
                let sid = session_id(&req);
                let csrf = sid.as_deref().and_then(|s| self.sessions.csrf(s));
                if method == Method::POST {
                    if cross_site(&req) {
                        refuse(
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            "Sign in from the console itself.",
                        )
                    } else {
                        self.sign_in(req).await
                    }
                } else if method == Method::GET {
                    match csrf {
                        Some(csrf) => json_answer(StatusCode::OK, &json!({"csrf": csrf})),
                        None => refuse(StatusCode::UNAUTHORIZED, "unauthorized", "Sign in."),
                    }
                } else if method == Method::DELETE {
                    match (sid, csrf_header(&req)) {
                        (Some(sid), Some(presented))
                            if !cross_site(&req) && self.sessions.check_csrf(&sid, &presented) =>
                        {
                            self.sessions.remove(&sid);
                            tracing::info!("console session ended");
                            let mut r = StatusCode::NO_CONTENT.into_response();
                            if let Ok(v) = HeaderValue::from_str(&self.cookie("", 0)) {
                                r.headers_mut().insert(header::SET_COOKIE, v);
                            }
                            r
                        }
                        _ => refuse(
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            "A signed-in session and its CSRF token are required.",
                        ),
                    }
                } else {
                    StatusCode::METHOD_NOT_ALLOWED.into_response()
                }
            }
            _ if rest.starts_with("/api/") => {
                let api = rest["/api/".len()..].to_owned();
                match session_id(&req) {
                    Some(sid) if self.sessions.csrf(&sid).is_some() => {
                        let allowed = read
                            || (!cross_site(&req)
                                && csrf_header(&req)
                                    .is_some_and(|t| self.sessions.check_csrf(&sid, &t)));
                        if allowed {
                            self.proxy(req, &api).await?
                        } else {
                            tracing::warn!(path = %rest, "console request without its CSRF token refused");
                            refuse(
                                StatusCode::FORBIDDEN,
                                "forbidden",
                                "This request needs the session's CSRF token (X-CSRF-Token).",
                            )
                        }
                    }
                    _ => refuse(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "Sign in to the console first.",
                    ),
                }
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        };
        Ok(harden(resp))
    }
}

fn csrf_header(req: &Request) -> Option<String> {
    req.headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri("/console/api/replay".parse().unwrap());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.finish()
    }

    #[test]
    fn requests_from_other_sites_are_recognised() {
        assert!(!cross_site(&req(&[("host", "127.0.0.1:8080")])));
        assert!(!cross_site(&req(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(cross_site(&req(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ])));
        assert!(cross_site(&req(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let r = req(&[("cookie", "a=1; switchboard_console=abc; b=2")]);
        assert_eq!(session_id(&r).as_deref(), Some("abc"));
        assert_eq!(session_id(&req(&[("cookie", "a=1")])), None);
    }
}
