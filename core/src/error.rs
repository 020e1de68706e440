//! The error type of the engine.

/// Everything that can go wrong inside the engine.
///
/// None of these carry secret values: messages name keys, paths and ids, never contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded database failed (I/O, corruption).
    #[error("store failed")]
    Store(#[from] sled::Error),
    /// The database of a shared backend failed (connection, query, schema). The message
    /// is the database's, which names tables and keys, never values.
    #[error("database failed: {0}")]
    Database(String),
    /// A stored record could not be decoded; the store holds something this version does
    /// not understand.
    #[error("store record {key} is unreadable: {source}")]
    Corrupt {
        /// Printable form of the record's key.
        key: String,
        /// The decoding failure.
        source: serde_json::Error,
    },
    /// The flush to disk failed, so a write is not known to be durable.
    #[error("flush to disk failed: {0}")]
    Durability(String),
    /// A concurrent request with the same idempotency key did not finish within the
    /// configured wait.
    #[error("a request with the same idempotency key is still in flight")]
    InFlight,
    /// The engine is shutting down or a background task died.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A configuration value is invalid. `key` is the dotted path of the setting.
    #[error("{key}: {message}")]
    Config {
        /// Dotted path of the setting at fault, e.g. `providers.pomelo.keys[0].api_secret`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A configuration error for the setting at `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}
