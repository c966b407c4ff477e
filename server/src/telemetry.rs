//! Structured logging via `tracing`: JSON lines by default (what log pipelines
//! ingest), human-readable text with `PULSE_LOG_FORMAT=text`. `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("PULSE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if text {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
