//! Process exit codes, one table for all three binaries, so that scripts can tell
//! "the broker was unreachable" from "readings went missing" without reading logs.

use std::process::ExitCode;

/// Everything worked and, for the subscriber, every expected reading arrived intact.
pub const OK: u8 = 0;
/// A runtime failure: broker unreachable, connection refused, I/O error, bad config.
pub const RUNTIME_ERROR: u8 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: u8 = 2;
/// The run finished but expected readings (or acknowledgements) are missing.
pub const MISSING: u8 = 3;
/// Corrupt readings arrived; wins over [`MISSING`].
pub const CORRUPT: u8 = 4;
/// Stopped by SIGINT or SIGTERM after printing what was done.
pub const INTERRUPTED: u8 = 130;

/// The table above as text, for the `--help` footers of the binaries.
pub const HELP: &str =
    "Exit codes: 0 ok, 1 runtime error (e.g. broker unreachable), 2 usage error, \
3 readings missing or unacknowledged, 4 corrupt readings (wins over 3), 130 interrupted.";

/// Converts one of the codes above into a process exit code.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
