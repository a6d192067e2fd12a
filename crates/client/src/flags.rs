//! The flags both clients take, defined once: where the broker is and how to reach it,
//! how long to ride out a lost connection, how many readings, at which QoS, how often to
//! print progress and where the JSON report goes. Each binary flattens [`ClientArgs`]
//! into its own command line and adds what only it has.

use std::path::PathBuf;

use clap::Args;

use crate::connect::BrokerArgs;
use crate::reconnect::ReconnectArgs;

/// The shared part of both clients' command lines.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub reconnect: ReconnectArgs,

    /// Readings: how many the publisher sends (sequence numbers 1..=N, per device), or
    /// how many distinct ones the subscriber expects over all streams (it stops once they
    /// arrived).
    #[arg(long, short = 'n', default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// MQTT quality of service: 0 at most once, 1 at least once, 2 exactly once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Print the progress line (`Messages published: N`, `Messages received: N`) every K
    /// messages (0: never).
    #[arg(long, value_name = "K", default_value_t = 1000)]
    pub progress_every: u64,

    /// Write the final report as JSON to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,
}

impl ClientArgs {
    /// Checks what clap could not check flag by flag.
    pub fn validate(&self) -> Result<(), String> {
        self.broker.validate()
    }

    /// The QoS of `--qos`.
    pub fn qos(&self) -> rumqttc::QoS {
        crate::connect::qos(self.qos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }

    #[test]
    fn the_shared_flags_have_one_set_of_defaults_and_limits() {
        let cli = Cli::parse_from(["x"]);
        let c = &cli.client;
        assert_eq!((c.count, c.qos, c.progress_every), (1_000_000, 1, 1000));
        assert!(c.report_json.is_none());
        for bad in [&["--qos", "3"][..], &["--count", "0"], &["-n", "many"]] {
            assert!(
                Cli::try_parse_from(std::iter::once("x").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
        let cli = Cli::parse_from(["x", "-n", "5", "--qos", "0", "--report-json", "-"]);
        assert_eq!(cli.client.qos(), rumqttc::QoS::AtMostOnce);
        assert_eq!(cli.client.count, 5);
    }
}
