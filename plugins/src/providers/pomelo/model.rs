//! The body Pomelo sends, typed and documented (seed: the tokenization webhook page).

use poem_openapi::{Enum, Object, types::Example};

use crate::types::Open;

/// An OTP was generated and sent during card tokenization (for example when a card is
/// added to Apple Pay). switchboard stores it and hands it to the route
/// `routes/pomelo/tokenization_otp.rhai`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct TokenizationOtp {
    /// The token being created.
    pub token: TokenInfo,
    /// The one-time password. Secret: masked in the admin API and never logged.
    pub otp: String,
    /// Where Pomelo sent the OTP, masked (`m***@example.com` or a masked phone number).
    pub to: String,
    /// The channel Pomelo used. Values not listed here are accepted and flagged.
    pub contact_method: Option<Open<ContactMethod>>,
}

/// The token a card is being tokenized into.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// Where the tokenization comes from, e.g. `APPLE_PAY`.
    pub origin: String,
    /// Pomelo's card id, e.g. `card_123456789`.
    pub card_id: String,
    /// Pomelo's user id, e.g. `user_123456789`.
    pub user_id: String,
}

/// The channel an OTP was sent through.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum ContactMethod {
    /// By email.
    EMAIL,
    /// By text message.
    SMS,
}

impl Example for TokenizationOtp {
    fn example() -> Self {
        TokenizationOtp {
            token: TokenInfo {
                origin: "APPLE_PAY".into(),
                card_id: "card_123456789".into(),
                user_id: "user_123456789".into(),
            },
            otp: "123456".into(),
            to: "m***@example.com".into(),
            contact_method: Some(Open::Known(ContactMethod::EMAIL)),
        }
    }
}

/// The JSON pointers of secret values in [`TokenizationOtp`].
pub const SECRET_PATHS: &[&str] = &["/otp"];
