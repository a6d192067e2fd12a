//! Logging set-up shared by the binaries: human-readable lines on stderr, filtered by
//! `RUST_LOG` (default: `info`), so stdout stays free for machine-readable reports.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs a stderr `fmt` subscriber. `default` is the filter used when `RUST_LOG` is unset.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
