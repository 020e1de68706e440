//! Pomelo's endpoint as a poem-openapi operation.

use std::{collections::BTreeMap, sync::Arc};

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi, SecurityScheme, auth::ApiKey, param::Header, payload::Json,
};
use switchboard_core::{
    ingest::{Content, OnConflict, Submission, fingerprint},
    store::StoredResponse,
};

use super::{
    NAME,
    model::{SECRET_PATHS, TokenizationOtp},
    verify::{SignedHeaders, Verifier},
};
use crate::http::{
    Answer, BodyError, Contract, Ctx, ErrorBody, JsonBody, error_json, parse_json, unavailable,
};

/// The tag of Pomelo's operations.
#[derive(poem_openapi::Tags)]
pub enum PomeloTag {
    /// Pomelo: card tokenization OTP webhook, authenticated by HMAC-SHA256.
    Pomelo,
}

/// The api-key Pomelo puts in `X-Api-Key`. It selects the api-secret the request is
/// signed with; the signature itself is in `X-Signature` (see the operation).
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-Api-Key", key_in = "header")]
pub struct PomeloApiKey(ApiKey);

/// The answers of the tokenization OTP webhook.
#[derive(ApiResponse)]
pub enum OtpAnswer {
    /// Stored durably. A repeat of the same body gets the same answer without being stored
    /// again. Routing (sending the OTP on) happens after this answer.
    #[oai(status = 204)]
    Accepted,
    /// Authenticated, but the body does not match the schema. It was kept in quarantine
    /// for an operator; repeats get the same answer.
    #[oai(status = 400)]
    Quarantined(Json<ErrorBody>),
    /// Refused: a missing header, an unknown `X-Api-Key`, a wrong signature, an `X-Endpoint`
    /// that is not this endpoint, an `X-Timestamp` outside the tolerance, or no api-secret
    /// configured. One answer for every case.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The body is larger than the configured limit.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// Not stored (storage trouble, or the same notification is still being stored by a
    /// concurrent request). Pomelo retries.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn unauthorized() -> StoredResponse {
    error_json(
        401,
        "unauthorized",
        "The request is not signed by a configured Pomelo api-key.",
    )
}

impl Contract for OtpAnswer {
    fn on_bad_request(_err: &poem::Error) -> StoredResponse {
        // Every parameter of this operation is an authentication header.
        unauthorized()
    }
}

/// Pomelo's operations.
pub struct PomeloApi {
    verifier: Arc<Verifier>,
    path: String,
    dedup_window: std::time::Duration,
}

impl PomeloApi {
    /// The API, answering at `path` (its configured path), recognising repeats for
    /// `dedup_window`.
    pub fn new(verifier: Verifier, path: String, dedup_window: std::time::Duration) -> Self {
        PomeloApi {
            verifier: Arc::new(verifier),
            path,
            dedup_window,
        }
    }
}

#[OpenApi(tag = "PomeloTag::Pomelo")]
impl PomeloApi {
    /// Tokenization OTP notification
    ///
    /// Pomelo calls this when it generates an OTP while a card is being tokenized (added to a
    /// wallet). The request is authenticated by HMAC-SHA256: `X-Signature` is
    /// `hmac-sha256 base64(HMAC(key, X-Timestamp + X-Endpoint + body))`, where `key` is the
    /// base64-decoded api-secret that `X-Api-Key` selects. Repeats of the same body are
    /// answered like the first and stored once.
    #[oai(
        path = "/pomelo/tokenization/otp",
        method = "post",
        operation_id = "pomeloTokenizationOtp"
    )]
    async fn tokenization_otp(
        &self,
        ctx: Data<&Ctx>,
        api_key: PomeloApiKey,
        /// `hmac-sha256 <base64 signature>`.
        #[oai(name = "X-Signature", example = "signature_example")]
        signature: Header<String>,
        /// When Pomelo signed the request, in Unix seconds. Must be within the configured
        /// tolerance (default 300 s) of our clock, in either direction.
        #[oai(name = "X-Timestamp", example = "timestamp_example")]
        timestamp: Header<String>,
        /// The endpoint Pomelo signed; must equal this endpoint's configured path (or
        /// `signed_endpoint`).
        #[oai(name = "X-Endpoint", example = "endpoint_example")]
        endpoint: Header<String>,
        body: JsonBody<TokenizationOtp>,
    ) -> Answer<OtpAnswer> {
        let metrics = ctx.ingest.metrics();
        let raw = match body.read(ctx.limits.body).await {
            Ok(raw) => raw,
            Err(BodyError::TooLarge) => {
                return Answer::stored(&error_json(
                    413,
                    "payload_too_large",
                    "The body exceeds the size limit.",
                ));
            }
            Err(BodyError::Unreadable) => {
                return Answer::stored(&error_json(
                    400,
                    "unreadable_body",
                    "The body could not be read.",
                ));
            }
        };
        let headers = SignedHeaders {
            api_key: &api_key.0.key,
            signature: &signature.0,
            timestamp: &timestamp.0,
            endpoint: &endpoint.0,
        };
        let key_label = match self
            .verifier
            .verify(&headers, &raw, chrono::Utc::now().timestamp())
        {
            Ok(label) => label.to_owned(),
            Err(refusal) => {
                metrics.auth_failure(NAME, refusal.reason());
                tracing::info!(
                    provider = NAME,
                    reason = refusal.reason(),
                    "request refused"
                );
                return Answer::stored(&unauthorized());
            }
        };
        let (content, response) = match parse_json::<TokenizationOtp>(&raw, &ctx.limits) {
            Ok(parsed) => (
                Content::Parsed {
                    data: parsed.data,
                    flags: parsed.flags,
                },
                StoredResponse::empty(204),
            ),
            Err(reason) => (
                Content::Quarantined { reason },
                error_json(
                    400,
                    "invalid_body",
                    "The body does not match the documented schema. It was kept for an operator.",
                ),
            ),
        };
        let submission = Submission {
            answer_within: None,
            dedup_window: Some(self.dedup_window),
            provider: NAME.into(),
            endpoint: self.path.clone(),
            event_type: super::EVENT_TYPE.into(),
            // Pomelo sends no idempotency key: endpoint + body hash.
            key: format!("{}#{}", endpoint.0, fingerprint(&raw)),
            body: raw,
            content,
            on_conflict: OnConflict::KeepAndFlag,
            meta: BTreeMap::from([("api_key".to_owned(), key_label)]),
            secret_paths: SECRET_PATHS.iter().map(|s| (*s).to_owned()).collect(),
            response,
        };
        match ctx.ingest.submit(submission).await {
            Ok(receipt) => Answer::stored(&receipt.response),
            Err(e) => Answer::stored(&unavailable(NAME, &e)),
        }
    }
}

fn signature_example() -> String {
    "hmac-sha256 N70BkBKch1gwQDPj0jF0ooB9QQVXBEp5VQE+SGe6Z0k=".into()
}

fn timestamp_example() -> String {
    "1637117179".into()
}

fn endpoint_example() -> String {
    super::config::DEFAULT_PATH.into()
}
