//! Structured logs to stderr (stdout is kept for what the user asked a command to print).

use std::io::IsTerminal;

use switchboard_openapi::config::{LogConfig, LogFormat};
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (`serve 2>&1 | tee log` whose reader died) must not turn every
        // log line into a panic in the task that logs it (the router, the deliverer):
        // the lines are lost, the work goes on.
        .log_internal_errors(false);
    match cfg.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
