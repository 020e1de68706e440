//! Verestro's endpoints as poem-openapi operations: eight notifications and the public key.

use std::{collections::BTreeMap, marker::PhantomData, sync::Arc};

use poem::{Request, RequestBody, web::Data};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, OpenApi,
    param::Header,
    payload::Json,
    registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry},
    types::{ParseFromJSON, ToJSON, Type},
};
use serde_json::{Value, json};
use switchboard_core::{
    ingest::{Content, OnConflict, Submission, fingerprint},
    peer::{ConnectionInfo, Pins},
    store::StoredResponse,
};

use super::{
    NAME,
    config::VerestroConfig,
    jwe::{self, JweError, Keys},
    model::*,
    verify,
};
use crate::http::{Answer, BodyError, Contract, Ctx, JsonBody, parse_json_lenient};

/// The tag of Verestro's operations.
#[derive(poem_openapi::Tags)]
pub enum VerestroTag {
    /// Verestro: card-issuing notifications (3DS OTP, KYC, card locks, transactional lock
    /// reasons). Authenticated by mutual TLS: the client certificate must chain to the
    /// CA of the listener Verestro is served on (`switchboard ca sign-csr` signs
    /// Verestro's CSR) and may be pinned. Bodies may be JWE-encrypted to `GET /public-key`.
    Verestro,
}

/// `{"detail": CODE}` with `status`.
pub fn detail(status: u16, code: ErrorCode) -> StoredResponse {
    StoredResponse::json(status, &json!({"detail": code.as_str()}))
}

fn unavailable(err: &switchboard_core::Error) -> StoredResponse {
    tracing::error!(provider = NAME, error = %err, "notification not accepted: engine error");
    let mut r = detail(503, ErrorCode::TemporarilyUnavailable);
    r.headers.push(("retry-after".into(), "1".into()));
    r
}

/// A request body that is either the notification itself or, encrypted,
/// `{"payload": "<JWE>"}`. Handed to the handler unread.
pub struct VerestroBody<T> {
    body: JsonBody<T>,
    _t: PhantomData<fn() -> T>,
}

impl<'a, T: Type> ApiExtractor<'a> for VerestroBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
        EncryptedRequest::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some(
                "The notification as JSON or, with `Encrypted-Request: true`, encrypted as \
                 `{\"payload\": \"<JWE>\"}`.",
            ),
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: MetaSchemaRef::Inline(Box::new(MetaSchema {
                    one_of: vec![T::schema_ref(), EncryptedRequest::schema_ref()],
                    ..MetaSchema::ANY
                })),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(VerestroBody {
            body: JsonBody::from_request(request, body, opts).await?,
            _t: PhantomData,
        })
    }
}

/// The answers of a notification endpoint.
#[derive(ApiResponse)]
pub enum NotificationAnswer {
    /// Stored durably. A repeat with the same `X-Idempotency-Key` (or, without one, the
    /// same endpoint and body) gets this same answer and is not stored again.
    #[oai(status = 204)]
    Accepted,
    /// `CLIENT_CERTIFICATE_REQUIRED`: the request did not come over the mutual-TLS
    /// listener with a verified client certificate.
    #[oai(status = 401)]
    NoCertificate(Json<ErrorDetail>),
    /// `CLIENT_CERTIFICATE_NOT_ALLOWED`: the certificate is not one of the pinned ones.
    #[oai(status = 403)]
    NotAllowed(Json<ErrorDetail>),
    /// The request cannot be used, and Verestro does not retry it: `ENCRYPTION_REQUIRED`,
    /// `INVALID_PAYLOAD` (a body that does not match the schema is kept in quarantine),
    /// `CANT_DECRYPT_PAYLOAD`, `INVALID_PUBLIC_KEY`, `IDEMPOTENCY_KEY_REUSED`,
    /// `PAYLOAD_TOO_LARGE`. Error answers are never encrypted.
    #[oai(status = 422)]
    Unusable(Json<ErrorDetail>),
    /// `TEMPORARILY_UNAVAILABLE`: not stored because of a failure on our side. Retry.
    #[oai(status = 503)]
    Unavailable(Json<ErrorDetail>),
}

impl Contract for NotificationAnswer {
    fn on_bad_request(_err: &poem::Error) -> StoredResponse {
        detail(422, ErrorCode::InvalidPayload)
    }
}

/// The answers of `GET /public-key`.
#[derive(ApiResponse)]
pub enum PublicKeyAnswer {
    /// The current public key for request encryption.
    #[oai(status = 200)]
    Key(Json<PublicKey>),
    /// `CLIENT_CERTIFICATE_REQUIRED`.
    #[oai(status = 401)]
    NoCertificate(Json<ErrorDetail>),
    /// `CLIENT_CERTIFICATE_NOT_ALLOWED`.
    #[oai(status = 403)]
    NotAllowed(Json<ErrorDetail>),
    /// `NO_PUBLIC_KEY`: no JWE key is configured.
    #[oai(status = 404)]
    NoKey(Json<ErrorDetail>),
}

impl Contract for PublicKeyAnswer {
    fn on_bad_request(_err: &poem::Error) -> StoredResponse {
        detail(401, ErrorCode::ClientCertificateRequired)
    }
}

struct Inner {
    cfg: VerestroConfig,
    keys: Keys,
    pins: Pins,
}

/// Verestro's operations.
pub struct VerestroApi {
    inner: Arc<Inner>,
}

/// Optional headers of every notification.
struct Headers {
    idempotency_key: Option<String>,
    encrypted: Option<String>,
    public_key: Option<String>,
}

impl VerestroApi {
    /// What a replay of a stored body needs: today's keys and encryption policy.
    pub fn replay(&self) -> super::Replay {
        super::Replay {
            keys: self.inner.keys.clone(),
            require_encryption: self.inner.cfg.require_encryption.clone(),
        }
    }

    /// The API with these keys and pins.
    pub fn new(cfg: VerestroConfig, keys: Keys, pins: Pins) -> Self {
        VerestroApi {
            inner: Arc::new(Inner { cfg, keys, pins }),
        }
    }

    fn refuse(&self, ctx: &Ctx, req: &Request) -> Option<StoredResponse> {
        match verify::check(req.extensions().get::<ConnectionInfo>(), &self.inner.pins) {
            Ok(_) => None,
            Err(refusal) => {
                ctx.ingest.metrics().auth_failure(NAME, refusal.reason());
                let conn = req.extensions().get::<ConnectionInfo>();
                let peer = conn
                    .and_then(|c| c.peer.as_deref())
                    .map(ToString::to_string);
                tracing::warn!(
                    provider = NAME,
                    reason = refusal.reason(),
                    peer = peer.as_deref().unwrap_or("none"),
                    "request refused"
                );
                Some(match refusal {
                    verify::Refusal::NoCertificate => {
                        detail(401, ErrorCode::ClientCertificateRequired)
                    }
                    verify::Refusal::NotPinned => {
                        detail(403, ErrorCode::ClientCertificateNotAllowed)
                    }
                })
            }
        }
    }

    /// The plaintext of a request, decrypting it when it is encrypted.
    fn plaintext(
        &self,
        endpoint: &str,
        encrypted: Option<&str>,
        raw: &[u8],
        meta: &mut BTreeMap<String, String>,
    ) -> Result<Vec<u8>, ErrorCode> {
        let flagged = encrypted.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let envelope = envelope(raw);
        if !flagged && envelope.is_none() {
            if self.inner.cfg.requires_encryption(endpoint) {
                return Err(ErrorCode::EncryptionRequired);
            }
            return Ok(raw.to_vec());
        }
        if !flagged {
            meta.insert("encrypted_without_header".into(), "true".into());
        }
        let token = envelope.ok_or(ErrorCode::InvalidPayload)?;
        match self.inner.keys.decrypt(&token) {
            Ok(d) => {
                meta.insert("jwe_alg".into(), d.alg);
                meta.insert("jwe_kid".into(), d.kid);
                Ok(d.plaintext)
            }
            Err(JweError::Invalid) => Err(ErrorCode::InvalidPayload),
            Err(JweError::CantDecrypt) => Err(ErrorCode::CantDecryptPayload),
        }
    }

    async fn notify<T: ParseFromJSON + ToJSON + Remarks>(
        &self,
        endpoint: &'static str,
        ctx: &Ctx,
        req: &Request,
        headers: Headers,
        body: VerestroBody<T>,
    ) -> Answer<NotificationAnswer> {
        if let Some(refused) = self.refuse(ctx, req) {
            return Answer::stored(&refused);
        }
        let raw = match body.body.read(ctx.limits.body).await {
            Ok(raw) => raw,
            Err(BodyError::TooLarge) => {
                return Answer::stored(&detail(422, ErrorCode::PayloadTooLarge));
            }
            Err(BodyError::Unreadable) => {
                return Answer::stored(&detail(422, ErrorCode::InvalidPayload));
            }
        };
        let mut meta = BTreeMap::new();
        if let Some(peer) = req
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|c| c.peer.as_ref())
        {
            meta.insert("client_subject".into(), peer.subject.clone());
            meta.insert("client_sha256".into(), peer.sha256.clone());
        }
        if let Some(pk) = &headers.public_key {
            // Kept with the event for answers that carry data (ours do not).
            meta.insert("public_key".into(), pk.clone());
            if jwe::parse_public_key(pk).is_none() {
                meta.insert("public_key_unusable".into(), "true".into());
            }
        }
        // A body that cannot be decrypted (or is plaintext where encryption is required)
        // came over the authenticated connection all the same, and Verestro never sends it
        // again after our 422: it is kept in quarantine, as it arrived, to be replayed once
        // the key (or the policy) is fixed.
        let (body, content, response) =
            match self.plaintext(endpoint, headers.encrypted.as_deref(), &raw, &mut meta) {
                Ok(plaintext) => match parse_json_lenient::<T>(&plaintext, &ctx.limits) {
                    Ok(parsed) => {
                        let mut flags = parsed.flags;
                        flags.extend(parsed.value.remarks(endpoint));
                        (
                            plaintext,
                            Content::Parsed {
                                data: parsed.data,
                                flags,
                            },
                            StoredResponse::empty(204),
                        )
                    }
                    Err(reason) => (
                        plaintext,
                        Content::Quarantined { reason },
                        detail(422, ErrorCode::InvalidPayload),
                    ),
                },
                Err(code) => {
                    tracing::info!(
                        provider = NAME,
                        endpoint,
                        detail = code.as_str(),
                        "request refused; its body is kept in quarantine"
                    );
                    meta.insert("refused".into(), code.as_str().into());
                    (
                        raw,
                        Content::Quarantined {
                            reason: refusal_reason(code),
                        },
                        detail(422, code),
                    )
                }
            };
        let response = match seal(response, headers.public_key.as_deref()) {
            Ok(r) => r,
            Err(code) => return Answer::stored(&detail(422, code)),
        };
        let path = format!("{}/notifications/{endpoint}", self.inner.cfg.path_prefix);
        let (key, on_conflict) = match headers.idempotency_key.as_deref().map(str::trim) {
            Some(k) if !k.is_empty() => {
                // An overlong key still identifies its request: by its hash.
                let k = if k.len() <= 200 {
                    k.to_owned()
                } else {
                    format!("sha256:{}", fingerprint(k.as_bytes()))
                };
                meta.insert("idempotency_key".into(), k.clone());
                (
                    // Scoped by endpoint: Verestro may reuse a key across endpoints for
                    // distinct notifications, and never retries the 422 a clash would get.
                    format!("key:{endpoint}:{k}"),
                    OnConflict::Reject(detail(422, ErrorCode::IdempotencyKeyReused)),
                )
            }
            // No key (card lock/unlock document none): endpoint + body hash, and for a
            // refused body the refusal too (the same bytes sent with and without
            // `Encrypted-Request` are different requests).
            _ => (
                match meta.get("refused") {
                    Some(code) => format!("{path}#{code}#{}", fingerprint(&body)),
                    None => format!("{path}#{}", fingerprint(&body)),
                },
                OnConflict::KeepAndFlag,
            ),
        };
        let submission = Submission {
            answer_within: None,
            dedup_window: None,
            provider: NAME.into(),
            endpoint: path,
            event_type: endpoint.into(),
            key,
            body,
            content,
            on_conflict,
            meta,
            secret_paths: SECRET_PATHS.iter().map(|s| (*s).to_owned()).collect(),
            response,
        };
        match ctx.ingest.submit(submission).await {
            Ok(receipt) => Answer::stored(&receipt.response),
            Err(e) => Answer::stored(&unavailable(&e)),
        }
    }
}

/// Why an authenticated body was refused, for the quarantine.
pub(super) fn refusal_reason(code: ErrorCode) -> String {
    let why = match code {
        ErrorCode::CantDecryptPayload => {
            "no active key decrypts the token, or its algorithm or headers are refused"
        }
        ErrorCode::EncryptionRequired => {
            "plaintext on an endpoint where `require_encryption` asks for JWE"
        }
        _ => "the encrypted envelope or its token is malformed",
    };
    format!("{}: {why}", code.as_str())
}

/// The JWE token of an `{"payload": "<JWE>"}` body.
pub fn envelope(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.get("payload")?.as_str().map(str::to_owned)
}

/// Encrypts an answer that carries data to the requester's `Public-Key`
/// (`{"payload": "<JWE>"}`). Answers without a body and error answers are sent as they are.
pub fn seal(
    response: StoredResponse,
    public_key: Option<&str>,
) -> Result<StoredResponse, ErrorCode> {
    if response.body.is_empty() || response.status >= 400 {
        return Ok(response);
    }
    let pem = public_key
        .and_then(jwe::parse_public_key)
        .ok_or(ErrorCode::InvalidPublicKey)?;
    let token = jwe::encrypt(&pem, &response.body).ok_or(ErrorCode::InvalidPublicKey)?;
    let mut sealed = StoredResponse::json(response.status, &json!({"payload": token}));
    sealed
        .headers
        .push(("encrypted-response".into(), "true".into()));
    Ok(sealed)
}

macro_rules! operations {
    // The two ways the idempotency key is documented, spelled out once each: rows name
    // them `keyed` or `unkeyed`, and are rewritten with the text before the operations
    // are emitted (poem-openapi reads doc attributes as literals).
    (@rows [$($done:tt)*]) => { operations!(@emit $($done)*); };
    (@rows [$($done:tt)*] $h:ident: $e:tt at $p:tt as $o:tt, $b:ty; $s:tt; $d:tt; key keyed; $($rest:tt)*) => {
        operations!(@rows [$($done)* $h: $e at $p as $o, $b; $s; $d; key "A unique id of the request (UUID). Repeats on this endpoint get an identical answer;\nthe same key with another body gets `422 IDEMPOTENCY_KEY_REUSED`. The key is scoped by\nendpoint: the same key on another endpoint is another notification."; ] $($rest)*);
    };
    (@rows [$($done:tt)*] $h:ident: $e:tt at $p:tt as $o:tt, $b:ty; $s:tt; $d:tt; key unkeyed; $($rest:tt)*) => {
        operations!(@rows [$($done)* $h: $e at $p as $o, $b; $s; $d; key "A unique id of the request, if sent; otherwise repeats are recognised by body."; ] $($rest)*);
    };
    (@emit $(
        $handler:ident: $endpoint:tt at $path:tt as $op:tt, $body:ty;
        $summary:tt; $description:tt; key $key_doc:tt;
    )*) => {
        /// The notification endpoints: (event type, declared path).
        pub const ENDPOINTS: &[(&str, &str)] = &[$(($endpoint, $path)),*];

        /// The descriptions of the optional headers are repeated per operation because
        /// poem-openapi documents parameters where they are declared.
        #[OpenApi(tag = "VerestroTag::Verestro")]
        impl VerestroApi {
            $(
                #[doc = $summary]
                #[doc = ""]
                #[doc = $description]
                #[oai(path = $path, method = "post", operation_id = $op)]
                async fn $handler(
                    &self,
                    ctx: Data<&Ctx>,
                    req: &Request,
                    #[doc = $key_doc]
                    #[oai(name = "X-Idempotency-Key")]
                    idempotency_key: Header<Option<String>>,
                    /// `true` when the body is `{"payload": "<JWE>"}`.
                    #[oai(name = "Encrypted-Request")]
                    encrypted: Header<Option<String>>,
                    /// Verestro's public key, for answers that carry data (kept with the event).
                    #[oai(name = "Public-Key")]
                    public_key: Header<Option<String>>,
                    body: VerestroBody<$body>,
                ) -> Answer<NotificationAnswer> {
                    let headers = Headers {
                        idempotency_key: idempotency_key.0,
                        encrypted: encrypted.0,
                        public_key: public_key.0,
                    };
                    self.notify($endpoint, &ctx, req, headers, body).await
                }
            )*

            /// Our public key
            ///
            /// The RSA public key Verestro encrypts requests to: `{"publicKey": base64(PEM)}`. The
            /// newest configured key; older ones still decrypt while they stay configured.
            #[oai(
                path = "/public-key",
                method = "get",
                operation_id = "verestroPublicKey"
            )]
            async fn public_key(&self, ctx: Data<&Ctx>, req: &Request) -> Answer<PublicKeyAnswer> {
                if let Some(refused) = self.refuse(&ctx, req) {
                    return Answer::stored(&refused);
                }
                match self.inner.keys.public_key_b64() {
                    Some(k) => Answer::stored(&StoredResponse::json(200, &json!({"publicKey": k}))),
                    None => Answer::stored(&detail(404, ErrorCode::NoPublicKey)),
                }
            }
        }
    };
    ($($rows:tt)*) => { operations!(@rows [] $($rows)*); };
}

operations! {
    otp: "otp" at "/notifications/otp" as "verestroOtp", OtpNotification;
        "3DS OTP";
        "A one-time password for a card-not-present transaction, to deliver to the card\nholder. Mutual TLS; optionally encrypted (JWE); idempotent by `X-Idempotency-Key`.";
        key keyed;
    verification_in_progress: "verificationInProgress" at "/notifications/verificationInProgress"
        as "verestroVerificationInProgress", VerificationNotification;
        "KYC verification in progress";
        "A user's KYC verification moved to `IN_PROGRESS`. Mutual TLS; optionally encrypted\n(JWE); idempotent by `X-Idempotency-Key`.";
        key keyed;
    verification_accepted: "verificationAccepted" at "/notifications/verificationAccepted"
        as "verestroVerificationAccepted", VerificationNotification;
        "KYC verification accepted";
        "A user's KYC verification moved to `ACCEPTED`. Mutual TLS; optionally encrypted\n(JWE); idempotent by `X-Idempotency-Key`.";
        key keyed;
    verification_rejected: "verificationRejected" at "/notifications/verificationRejected"
        as "verestroVerificationRejected", VerificationNotification;
        "KYC verification rejected";
        "A user's KYC verification moved to `REJECTED`, with a reason. Mutual TLS; optionally\nencrypted (JWE); idempotent by `X-Idempotency-Key`.";
        key keyed;
    card_locked: "cardLocked" at "/notifications/cardLocked" as "verestroCardLocked", CardLocked;
        "Card locked";
        "A card was locked, with a reason. Mutual TLS; optionally encrypted (JWE). Verestro\nsends no idempotency key here: repeats are recognised by endpoint and body.";
        key unkeyed;
    card_unlocked: "cardUnlocked" at "/notifications/cardUnlocked" as "verestroCardUnlocked", CardUnlocked;
        "Card unlocked";
        "A card was unlocked. Mutual TLS; optionally encrypted (JWE). Verestro sends no\nidempotency key here: repeats are recognised by endpoint and body.";
        key unkeyed;
    lock_reason_added: "transactionalLockReasonAdded" at "/notifications/transactionalLockReasonAdded"
        as "verestroLockReasonAdded", LockReasonChange;
        "Transactional lock reason added";
        "A transactional lock reason was added to a corporation or a user. Mutual TLS;\noptionally encrypted (JWE); idempotent by `X-Idempotency-Key`.";
        key keyed;
    lock_reason_removed: "transactionalLockReasonRemoved" at "/notifications/transactionalLockReasonRemoved"
        as "verestroLockReasonRemoved", LockReasonChange;
        "Transactional lock reason removed";
        "A transactional lock reason was removed from a corporation or a user. Mutual TLS;\noptionally encrypted (JWE); idempotent by `X-Idempotency-Key`.";
        key keyed;
}
