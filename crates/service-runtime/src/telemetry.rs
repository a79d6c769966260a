//! Structured logs: JSON lines when stderr is not a terminal (containers, CI), readable text on
//! one. Every event inside a request carries that request's `request_id` through its span.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once. `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Nothing is logged here: a configuration error must stay the only line a failed start prints.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().with_current_span(true).with_span_list(false).flatten_event(true).try_init()
    };
}
