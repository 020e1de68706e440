//! The error type of the HTTP face.

/// Why the server could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the file and the key.
    #[error("{0}")]
    Config(String),
    /// The engine failed (opening the store, ...).
    #[error(transparent)]
    Core(#[from] switchboard_core::Error),
    /// A plugin could not be built.
    #[error(transparent)]
    Plugin(#[from] switchboard_plugins::Error),
    /// Binding the listener or another I/O failure.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
