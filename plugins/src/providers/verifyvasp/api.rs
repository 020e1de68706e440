//! VerifyVASP's callback as a poem-openapi operation.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use poem::web::Data;
use poem_openapi::{ApiResponse, OpenApi, SecurityScheme, auth::Bearer, payload::Json};
use serde_json::{Value, json};
use switchboard_core::{
    ingest::{Content, OnConflict, Submission, fingerprint},
    store::StoredResponse,
};

use super::{
    NAME,
    model::{Callback, CallbackResult},
    verify::Verifier,
};
use crate::http::{
    Answer, BodyError, Contract, Ctx, ErrorBody, JsonBody, Limits, error_json, json_depth_exceeds,
    parse_json, unavailable,
};

/// The tag of VerifyVASP's operation.
#[derive(poem_openapi::Tags)]
pub enum VerifyVaspTag {
    /// VerifyVASP: travel-rule verification callbacks, authenticated by a bearer token.
    #[oai(rename = "VerifyVASP")]
    VerifyVasp,
}

/// The enclave expects an answer within a second: a concurrent duplicate waits for the
/// first request at most this long (then it is told to retry), whatever
/// `store.duplicate_wait` says.
const ANSWER_WITHIN: Duration = Duration::from_millis(900);

/// `Authorization: Bearer <VEGA_VERIFICATION_AUTHORIZATION_TOKEN>`, compared in constant
/// time with the configured token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct VerifyVaspToken(Bearer);

/// The answers of the callback.
#[derive(ApiResponse)]
pub enum CallbackAnswer {
    /// Received: stored durably, recognised as a repeat, or (a body that does not match the
    /// schema) kept in quarantine for an operator. The enclave is always told
    /// `{"result": true}` once it has authenticated, as its contract requires.
    #[oai(status = 200)]
    Received(Json<CallbackResult>),
    /// The bearer token is missing or wrong, or no token is configured.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The body is larger than the configured limit.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// Not stored (storage trouble, or the same callback is still being stored by a
    /// concurrent request). The enclave should call again.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn unauthorized() -> StoredResponse {
    error_json(401, "unauthorized", "A valid bearer token is required.")
}

fn received() -> StoredResponse {
    StoredResponse::json(200, &json!({"result": true}))
}

impl Contract for CallbackAnswer {
    fn on_bad_request(_err: &poem::Error) -> StoredResponse {
        // The only parameter of this operation is the credential.
        unauthorized()
    }
}

/// VerifyVASP's operations.
pub struct VerifyVaspApi {
    verifier: Arc<Verifier>,
    path: String,
}

impl VerifyVaspApi {
    /// The API, answering at `path` (its configured path).
    pub fn new(verifier: Verifier, path: String) -> Self {
        VerifyVaspApi {
            verifier: Arc::new(verifier),
            path,
        }
    }
}

#[OpenApi(tag = "VerifyVaspTag::VerifyVasp")]
impl VerifyVaspApi {
    /// Verification callback
    ///
    /// The VerifyVASP enclave calls this with a verification result, a transaction report
    /// or an error report. It may call several times at once with the same body: the
    /// callback is stored once (key: `callbackType` + `data.verificationUuid`) and every call
    /// gets `200 {"result": true}` within milliseconds. A different body for the same
    /// verification is kept as its own event, flagged as conflicting.
    #[oai(
        path = "/verifyvasp/callback",
        method = "post",
        operation_id = "verifyVaspCallback"
    )]
    async fn callback(
        &self,
        ctx: Data<&Ctx>,
        token: VerifyVaspToken,
        body: JsonBody<Callback>,
    ) -> Answer<CallbackAnswer> {
        if let Err(refusal) = self.verifier.verify(&token.0.token) {
            ctx.ingest.metrics().auth_failure(NAME, refusal.reason());
            tracing::info!(
                provider = NAME,
                reason = refusal.reason(),
                "request refused"
            );
            return Answer::stored(&unauthorized());
        }
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
        let fp = fingerprint(&raw);
        let (event_type, key, content) = classify(&raw, &ctx.limits, &fp);
        let submission = Submission {
            provider: NAME.into(),
            endpoint: self.path.clone(),
            event_type,
            key,
            body: raw,
            content,
            on_conflict: OnConflict::KeepAndFlag,
            meta: BTreeMap::new(),
            secret_paths: Vec::new(),
            response: received(),
            // The enclave wants its answer within a second.
            answer_within: Some(ANSWER_WITHIN),
            dedup_window: None,
        };
        match ctx.ingest.submit(submission).await {
            Ok(receipt) => Answer::stored(&receipt.response),
            Err(e) => Answer::stored(&unavailable(NAME, &e)),
        }
    }
}

/// The event type, de-duplication key and content of a body.
pub(crate) fn classify(raw: &[u8], limits: &Limits, fp: &str) -> (String, String, Content) {
    match parse_json::<Callback>(raw, limits) {
        Ok(parsed) => {
            let ty = parsed.value.callback_type();
            (
                super::event_type(ty),
                format!("{ty}:{}", parsed.value.verification_uuid()),
                Content::Parsed {
                    data: parsed.data,
                    flags: parsed.flags,
                },
            )
        }
        Err(reason) => match unknown_type(raw, limits) {
            Some((ty, uuid, data)) => {
                tracing::warn!(
                    provider = NAME,
                    "accepted a callbackType the documentation does not list"
                );
                let shown: String = ty.chars().take(64).collect();
                (
                    super::event_type(&ty),
                    format!("{ty}:{}", uuid.unwrap_or_else(|| fp.to_owned())),
                    Content::Parsed {
                        data,
                        flags: vec![format!("unknown_enum_value: callbackType={shown}")],
                    },
                )
            }
            None => (
                super::QUARANTINE_EVENT_TYPE.into(),
                format!("quarantine#{fp}"),
                Content::Quarantined { reason },
            ),
        },
    }
}

/// A well-formed callback of a type the documentation does not list: `callbackType` a
/// string that is none of the known ones, `data` an object. Accepted as it is.
fn unknown_type(raw: &[u8], limits: &Limits) -> Option<(String, Option<String>, Value)> {
    if json_depth_exceeds(raw, limits.json_depth) {
        return None;
    }
    let v: Value = serde_json::from_slice(raw).ok()?;
    let ty = v.get("callbackType")?.as_str()?;
    if super::KNOWN_TYPES.contains(&ty) || ty.is_empty() {
        return None;
    }
    let data = v.get("data")?.as_object()?;
    let uuid = data
        .get("verificationUuid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((ty.to_owned(), uuid, v.clone()))
}
