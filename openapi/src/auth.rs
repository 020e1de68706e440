//! The admin API's one authentication check: a poem-openapi security scheme.
//!
//! An admin operation takes an [`AdminToken`] parameter and is then only run for a
//! request that carries `Authorization: Bearer <admin.token>`; every other request gets
//! poem-openapi's authorization error, which the operation's `bad_request_handler` answers
//! `401`. The token itself is request data ([`AdminAuth`]), compared in constant time; with
//! none configured everything is refused. New admin operations (the console's) reuse the
//! scheme by taking the same parameter.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use switchboard_core::secret::Secret;

/// The configured admin token, as request data.
#[derive(Clone, Default)]
pub struct AdminAuth(pub Option<Secret>);

/// `Authorization: Bearer <admin.token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_admin_token")]
pub struct AdminToken(pub Authorized);

/// Proof that a request carried the admin token.
pub struct Authorized(());

async fn check_admin_token(req: &Request, bearer: Bearer) -> Option<Authorized> {
    let auth = req.data::<AdminAuth>()?;
    auth.0
        .as_ref()
        .is_some_and(|t| t.matches(bearer.token.as_bytes()))
        .then_some(Authorized(()))
}
