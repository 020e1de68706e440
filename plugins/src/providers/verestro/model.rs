//! The bodies Verestro sends, typed and documented (seeds: the three revisions of the
//! "Your APIs for us - Notifications" page; `PROVIDERS.md` §1 wins where they differ).

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset};
use poem_openapi::{
    Enum, Object,
    registry::{MetaSchema, MetaSchemaRef},
    types::{Example, ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

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
    pub amount: Amount,
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
            amount: Amount::Minor(1000),
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
    pub date: Date,
    /// Why.
    pub reason: Open<CardLockReason>,
}

impl Example for CardLocked {
    fn example() -> Self {
        CardLocked {
            dc_card_id: Int(11),
            date: Date::exact(example_date()),
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
    pub date: Date,
}

impl Example for CardUnlocked {
    fn example() -> Self {
        CardUnlocked {
            dc_card_id: Int(11),
            date: Date::exact(example_date()),
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
    pub timestamp: Date,
}

impl Example for LockReasonChange {
    fn example() -> Self {
        LockReasonChange {
            resource_type: Open::Known(ResourceType::Corporation),
            resource_id: "a3f33118-946d-4b9c-b27f-e009d28355fa".into(),
            lock_reason: Open::Known(LockReason::FraudSuspected),
            timestamp: Date::exact(example_date()),
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

impl Remarks for OtpNotification {
    fn remarks(&self, _endpoint: &str) -> Vec<String> {
        match self.amount {
            Amount::Decimal(_) => vec![
                "decimal_amount: `amount` is documented in minor units (an integer) and came with a fraction; passed on as it was".into(),
            ],
            Amount::Minor(_) => Vec::new(),
        }
    }
}

impl Remarks for CardLocked {
    fn remarks(&self, _endpoint: &str) -> Vec<String> {
        self.date.remarks("date")
    }
}

impl Remarks for CardUnlocked {
    fn remarks(&self, _endpoint: &str) -> Vec<String> {
        self.date.remarks("date")
    }
}

impl Remarks for LockReasonChange {
    fn remarks(&self, _endpoint: &str) -> Vec<String> {
        self.timestamp.remarks("timestamp")
    }
}

/// An amount in minor units. Documented as an integer; a string of digits is accepted,
/// and so is a decimal (`10.5`, `"10.50"`), which is passed on as it came and flagged.
#[derive(Debug, Clone, PartialEq)]
pub enum Amount {
    /// An integer, as documented.
    Minor(i64),
    /// A number with a fraction: the provider's own mistake, kept as it was sent.
    Decimal(serde_json::Number),
}

impl Type for Amount {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "integer_int64".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let mut schema = MetaSchema::new_with_format("integer", "int64");
        schema.description = Some(
            "An integer. A JSON string holding an integer (\"1337\") is accepted too; a decimal is accepted and flagged.",
        );
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Amount {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        if let Ok(Int(i)) = Int::parse_from_json(value.clone()) {
            return Ok(Amount::Minor(i));
        }
        let n = match value {
            Some(Value::Number(n)) => Some(n),
            Some(Value::String(s)) => s.trim().parse::<serde_json::Number>().ok(),
            Some(Value::Null) | None => return Err(ParseError::expected_input()),
            Some(_) => None,
        };
        n.filter(|n| n.as_f64().is_some_and(f64::is_finite))
            .map(Amount::Decimal)
            .ok_or_else(|| ParseError::custom("neither a number nor a string of digits"))
    }
}

impl ToJSON for Amount {
    fn to_json(&self) -> Option<Value> {
        match self {
            Amount::Minor(i) => Some(Value::from(*i)),
            Amount::Decimal(n) => Some(Value::Number(n.clone())),
        }
    }
}

/// A date and time, documented as RFC 3339. `2025-06-17 13:42:54` (a space for the `T`,
/// and no offset, read as UTC) is accepted too, normalised to RFC 3339, and flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct Date {
    /// The time.
    pub at: DateTime<FixedOffset>,
    /// Whether it came in another shape than RFC 3339.
    pub lenient: bool,
}

impl Date {
    /// An RFC 3339 time.
    pub fn exact(at: DateTime<FixedOffset>) -> Self {
        Date { at, lenient: false }
    }

    fn remarks(&self, field: &str) -> Vec<String> {
        if self.lenient {
            vec![format!(
                "date_format: `{field}` is not RFC 3339 (a space for `T`, or no offset, read as UTC); normalised"
            )]
        } else {
            Vec::new()
        }
    }
}

impl Type for Date {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        <DateTime<FixedOffset> as Type>::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        <DateTime<FixedOffset> as Type>::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Date {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        let s = match value {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(ParseError::expected_input()),
            Some(_) => return Err(ParseError::custom("expected a string")),
        };
        let s = s.trim();
        if let Ok(at) = DateTime::parse_from_rfc3339(s) {
            return Ok(Date::exact(at));
        }
        let t = s.replacen(' ', "T", 1);
        if let Ok(at) = DateTime::parse_from_rfc3339(&t) {
            return Ok(Date { at, lenient: true });
        }
        for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
            if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(&t, f) {
                return Ok(Date {
                    at: naive.and_utc().fixed_offset(),
                    lenient: true,
                });
            }
        }
        Err(ParseError::custom("not an RFC 3339 date and time"))
    }
}

impl ToJSON for Date {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.at.to_rfc3339()))
    }
}

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
