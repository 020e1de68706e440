//! The bodies Verestro sends, typed and documented (seeds: the three revisions of the
//! "Your APIs for us - Notifications" page; `PROVIDERS.md` §1 wins where they differ).

use chrono::{DateTime, FixedOffset};
use poem_openapi::{Enum, Object, types::Example};

use crate::types::{Int, Open};

/// A 3-D Secure one-time password for a card-not-present transaction, to be delivered to
/// the card holder (SMS, push, ...). Event `otp`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase", example)]
pub struct OtpNotification {
    /// Verestro's customer identifier.
    pub storage_customer_id: Int,
    /// Verestro's card identifier.
    pub storage_card_id: Int,
    /// The user's balance (UUID v4).
    pub balance_id: uuid::Uuid,
    /// Transaction value, gross, in minor units of `currency` (`1000` PLN is 10.00 PLN).
    pub amount: Int,
    /// ISO 4217 alphabetic currency code.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
    /// The merchant's name, as shown to the card holder.
    pub merchant_name: String,
    /// The one-time password. Secret: masked in the admin API and never logged.
    pub otp: String,
}

impl Example for OtpNotification {
    fn example() -> Self {
        OtpNotification {
            storage_customer_id: Int(1337),
            storage_card_id: Int(1337),
            balance_id: uuid::uuid!("b334b384-328c-11ed-a261-0242ac120002"),
            amount: Int(1000),
            currency: "PLN".into(),
            merchant_name: "merchant test".into(),
            otp: "1111".into(),
        }
    }
}

/// A change of a user's KYC verification status. Events `verificationInProgress`,
/// `verificationAccepted`, `verificationRejected`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase", example)]
pub struct VerificationNotification {
    /// Verification identifier (UUID v4).
    pub verification_id: uuid::Uuid,
    /// User identifier.
    pub user_id: Int,
    /// The user's email address.
    pub email: String,
    /// The user's first name.
    pub first_name: String,
    /// The user's last name.
    pub last_name: String,
    /// The new status; it matches the endpoint (a mismatch is accepted and flagged).
    pub status: Open<VerificationStatus>,
    /// Why a verification was rejected; `null` for `IN_PROGRESS` and `ACCEPTED`.
    pub reason: Option<Open<RejectionReason>>,
}

impl Example for VerificationNotification {
    fn example() -> Self {
        VerificationNotification {
            verification_id: uuid::uuid!("6faaa45a-41f6-4922-95fe-16e316ba7e91"),
            user_id: Int(1337),
            email: "leonbakiewicz@gmail.com".into(),
            first_name: "Leon".into(),
            last_name: "Bakiewicz".into(),
            status: Open::Known(VerificationStatus::Rejected),
            reason: Some(Open::Known(RejectionReason::InvalidCustomerData)),
        }
    }
}

/// KYC verification statuses.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerificationStatus {
    /// Verification started.
    InProgress,
    /// Verification passed.
    Accepted,
    /// Verification failed; see `reason`.
    Rejected,
}

/// Why a KYC verification was rejected.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectionReason {
    /// The customer's data is invalid.
    InvalidCustomerData,
    /// The document photo is blurred.
    BlurredDocumentPhoto,
    /// The document photo is invalid.
    InvalidDocumentPhoto,
    /// The selfie is blurred.
    BlurredSelfie,
    /// The selfie is invalid.
    InvalidSelfie,
}

/// A card was locked. Event `cardLocked`. (No idempotency key: repeats are recognised by
/// their body.)
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase", example)]
pub struct CardLocked {
    /// Card identifier.
    pub dc_card_id: Int,
    /// When the card was locked (RFC 3339).
    pub date: DateTime<FixedOffset>,
    /// Why.
    pub reason: Open<CardLockReason>,
}

impl Example for CardLocked {
    fn example() -> Self {
        CardLocked {
            dc_card_id: Int(11),
            date: example_date(),
            reason: Open::Known(CardLockReason::PinTriesExceeded),
        }
    }
}

/// A card was unlocked. Event `cardUnlocked`. (No idempotency key: repeats are recognised
/// by their body.)
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase", example)]
pub struct CardUnlocked {
    /// Card identifier.
    pub dc_card_id: Int,
    /// When the card was unlocked (RFC 3339).
    pub date: DateTime<FixedOffset>,
}

impl Example for CardUnlocked {
    fn example() -> Self {
        CardUnlocked {
            dc_card_id: Int(11),
            date: example_date(),
        }
    }
}

/// Why a card was locked.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CardLockReason {
    /// Reported lost.
    CardLost,
    /// Reported stolen.
    CardStolen,
    /// Pending a query.
    PendingQuery,
    /// Consolidated into another card.
    CardConsolidation,
    /// Inactive.
    CardInactive,
    /// Too many wrong PINs.
    PinTriesExceeded,
    /// Fraud suspected.
    SuspectedFraud,
    /// Replaced by another card.
    CardReplaced,
}

/// A transactional lock reason was added to or removed from a corporation or a user.
/// Events `transactionalLockReasonAdded`, `transactionalLockReasonRemoved`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase", example)]
pub struct LockReasonChange {
    /// What is locked.
    pub resource_type: Open<ResourceType>,
    /// Its id: a numeric string or a UUID.
    pub resource_id: String,
    /// The lock reason.
    pub lock_reason: Open<LockReason>,
    /// When it was added or removed (RFC 3339).
    pub timestamp: DateTime<FixedOffset>,
}

impl Example for LockReasonChange {
    fn example() -> Self {
        LockReasonChange {
            resource_type: Open::Known(ResourceType::Corporation),
            resource_id: "a3f33118-946d-4b9c-b27f-e009d28355fa".into(),
            lock_reason: Open::Known(LockReason::FraudSuspected),
            timestamp: example_date(),
        }
    }
}

/// Kinds of locked resource.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ResourceType {
    /// A corporation.
    Corporation,
    /// A user.
    User,
}

/// Transactional lock reasons (the list grew from 2 to 12 values between revisions of the
/// documentation; new values are accepted and flagged).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockReason {
    /// Identity document expired.
    DocumentExpired,
    /// Fraud suspected.
    FraudSuspected,
    /// Found in screening.
    ScreeningDetected,
    /// Temporarily locked.
    TemporaryLocked,
    /// Locked by Pekao.
    PekaoLock,
    /// Locked by Zen.
    ZenLock,
    /// Locked on a prosecutor's order.
    ProsecutorLock,
    /// Locked by Fenige.
    FenigeLock,
    /// Locked on a police order.
    PoliceLock,
    /// Too many cards.
    ManyCardsLock,
    /// Negative verification (spelled as Verestro sends it).
    NagativeVerification,
    /// Prado verification.
    PradoVerification,
}

fn example_date() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2025-06-17T13:42:54+00:00").unwrap_or_default()
}

/// An encrypted request: the body as JWE compact serialization (sent with
/// `Encrypted-Request: true`).
#[derive(Object, Debug, Clone, PartialEq)]
pub struct EncryptedRequest {
    /// JWE compact serialization of the JSON body: `alg` RSA-OAEP-256 or RSA-OAEP, `enc`
    /// A256GCM, to the key `GET /public-key` serves. `zip` and `crit` are refused.
    pub payload: String,
}

/// Our public key for request encryption.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase", example)]
pub struct PublicKey {
    /// Base64 of the PEM-encoded RSA public key.
    pub public_key: String,
}

impl Example for PublicKey {
    fn example() -> Self {
        PublicKey {
            public_key: "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K...".into(),
        }
    }
}

/// The error codes of Verestro's contract (`422 {"detail": CODE}`), and ours for requests
/// that are not from Verestro.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// This endpoint requires an encrypted request and got plaintext.
    EncryptionRequired,
    /// No or garbled `payload`, a token longer than allowed, or a body that does not match
    /// the schema (kept in quarantine for an operator).
    InvalidPayload,
    /// The token could not be decrypted: a refused algorithm (only RSA-OAEP-256 / RSA-OAEP
    /// with A256GCM are accepted), `zip` or `crit`, a wrong key, or a tampered token.
    CantDecryptPayload,
    /// The `Public-Key` header is unusable and the answer had to be encrypted with it.
    InvalidPublicKey,
    /// The `X-Idempotency-Key` was used before with a different body; nothing was run.
    IdempotencyKeyReused,
    /// The body exceeds the size limit.
    PayloadTooLarge,
    /// The request did not come with a verified client certificate.
    ClientCertificateRequired,
    /// The client certificate is valid but not one of the pinned ones.
    ClientCertificateNotAllowed,
    /// No public key is configured.
    NoPublicKey,
    /// Not stored because of a failure on our side; retry.
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::EncryptionRequired => "ENCRYPTION_REQUIRED",
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::CantDecryptPayload => "CANT_DECRYPT_PAYLOAD",
            ErrorCode::InvalidPublicKey => "INVALID_PUBLIC_KEY",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::ClientCertificateRequired => "CLIENT_CERTIFICATE_REQUIRED",
            ErrorCode::ClientCertificateNotAllowed => "CLIENT_CERTIFICATE_NOT_ALLOWED",
            ErrorCode::NoPublicKey => "NO_PUBLIC_KEY",
            ErrorCode::TemporarilyUnavailable => "TEMPORARILY_UNAVAILABLE",
        }
    }
}

/// Verestro's error body.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct ErrorDetail {
    /// What went wrong.
    pub detail: ErrorCode,
}

/// JSON pointers of secret values in the bodies.
pub const SECRET_PATHS: &[&str] = &["/otp"];

/// Remarks about a body's consistency with its endpoint.
pub trait Remarks {
    /// One flag per inconsistency (accepted, but worth an operator's look).
    fn remarks(&self, _endpoint: &str) -> Vec<String> {
        Vec::new()
    }
}

impl Remarks for OtpNotification {}
impl Remarks for CardLocked {}
impl Remarks for CardUnlocked {}
impl Remarks for LockReasonChange {}

impl Remarks for VerificationNotification {
    fn remarks(&self, endpoint: &str) -> Vec<String> {
        let expected = match endpoint {
            "verificationInProgress" => VerificationStatus::InProgress,
            "verificationAccepted" => VerificationStatus::Accepted,
            _ => VerificationStatus::Rejected,
        };
        let mut out = Vec::new();
        if self.status != Open::Known(expected) {
            out.push(format!(
                "status_mismatch: the {endpoint} endpoint got another status"
            ));
        }
        let rejected = expected == VerificationStatus::Rejected;
        if rejected && self.reason.is_none() {
            out.push("reason_missing: a rejection without a reason".into());
        }
        if !rejected && self.reason.is_some() {
            out.push("reason_unexpected: a reason for a status that has none".into());
        }
        out
    }
}
