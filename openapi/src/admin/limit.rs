//! The body limit of the admin API and the console (`/admin/*`, `/console/*`).
//!
//! Provider endpoints read their bodies under `server.body_limit` themselves. The admin
//! operations take typed JSON through poem-openapi, which would buffer a body of any
//! size; this wrapper reads the body first, under the same limit: a declared
//! `Content-Length` over it is refused with 413 before a byte of the body is read, and a
//! body without one (chunked) is refused with 413 as soon as it passes the limit, so
//! memory never holds more than the limit.

use poem::{Endpoint, IntoResponse, Request, Response, error::ReadBodyError, http::header};
use switchboard_plugins::http::{error_json, to_response};

/// Path prefixes whose bodies this limit covers.
const PREFIXES: &[&str] = &["/admin/", "/console"];

/// `inner`, with the bodies of admin and console requests limited to `limit` bytes.
pub struct AdminBodyLimit<E> {
    /// Everything else.
    pub inner: E,
    /// Most bytes an admin or console request body may have (`server.body_limit`).
    pub limit: usize,
}

fn too_large(limit: usize) -> Response {
    to_response(&error_json(
        413,
        "payload_too_large",
        &format!("The body is larger than the admin API's limit of {limit} bytes."),
    ))
}

impl<E: Endpoint> Endpoint for AdminBodyLimit<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path();
        if !PREFIXES.iter().any(|p| path.starts_with(p)) {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit as u64) {
            return Ok(too_large(self.limit));
        }
        match req.take_body().into_bytes_limit(self.limit).await {
            Ok(bytes) => req.set_body(bytes),
            Err(ReadBodyError::PayloadTooLarge) => return Ok(too_large(self.limit)),
            Err(e) => {
                return Ok(to_response(&error_json(
                    400,
                    "bad_request",
                    &format!("The body could not be read: {e}"),
                )));
            }
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}
