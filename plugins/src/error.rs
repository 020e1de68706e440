//! The error type of the plugins.

/// A plugin could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; `key` is its dotted path.
    #[error("{key}: {message}")]
    Config {
        /// Dotted path of the setting at fault.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A sample request (`switchboard simulate`) could not be made.
    #[error("{0}")]
    Simulate(String),
}

impl Error {
    /// A configuration error for the setting at `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
