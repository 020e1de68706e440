//! The console channel: writes each message to the log instead of sending it, with the
//! event's secret values (the OTP) masked. The default for email and SMS, so that a fresh
//! installation shows the whole flow. Also the `log` channel of `log::info`.

mod send;

pub use send::{Console, Log};
