//! The subscriber's command line.

use std::path::PathBuf;

use clap::Parser;
use mqtt_protocol::connect::BrokerArgs;
use mqtt_protocol::reconnect::ReconnectArgs;
use mqtt_protocol::{exit, topic};

/// Data consumer and verifier: subscribes to sensor readings, counts them, and proves
/// that every expected reading arrived intact (no gaps, no corruption).
///
/// Prints `Messages received: N` every --progress-every messages and a verdict at the
/// end on stderr; --report-json writes the same figures as JSON. Start it before the
/// publisher: it waits for the first reading as long as it takes.
///
/// Naming the client (--client-id) or keeping state (--state) makes the session
/// persistent, so the broker keeps what arrives while the subscriber is away; a lost
/// connection is retried for --reconnect-for seconds.
#[derive(Debug, Clone, Parser)]
#[command(name = "mqtt-subscriber", version, after_help = exit::HELP)]
pub struct SubscriberArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub reconnect: ReconnectArgs,

    /// Topic filter to subscribe to (`+` and `#` wildcards allowed).
    #[arg(long, value_name = "FILTER", default_value = "sensors/#", value_parser = topic::parse_topic_filter)]
    pub topic: String,

    /// Number of distinct readings expected over all streams; stop once they arrived.
    #[arg(long, short = 'n', default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// MQTT quality of service for the subscription: 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Print `Messages received: N` every K messages (0: never).
    #[arg(long, value_name = "K", default_value_t = 1000)]
    pub progress_every: u64,

    /// Stop when nothing arrived for this many seconds, counted from the first
    /// message (before it, wait as long as it takes).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_seconds)]
    pub idle_timeout: f64,

    /// Write the final report as JSON to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,

    /// Keep a journal of what arrived in PATH and acknowledge readings only once they
    /// are on record; a subscriber killed and started again with the same PATH resumes
    /// with an exact verdict. Implies a persistent session (the client id is kept in
    /// the file).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// With --state: also fsync the journal before acknowledging (survives power loss,
    /// not just a crash; slower).
    #[arg(long, requires = "state")]
    pub fsync: bool,

    /// Simulate processing: spend at least this many microseconds on each message.
    #[arg(long, value_name = "MICROS", default_value_t = 0)]
    pub process_delay_us: u64,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}
