//! The command line of `mqtt-broker`: where the configuration lives and the one setting worth
//! overriding per run, the listen address. Flags win over their environment variables, which
//! win over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The pipeline's MQTT broker (MQTT 3.1.1, rumqttd inside).
///
/// Prints one line on stdout once it accepts connections, `mqtt-broker listening on
/// ADDR:PORT`, then serves until SIGINT (Ctrl-C) or SIGTERM. Logs go to stderr.
#[derive(Debug, Parser)]
#[command(name = "mqtt-broker", version, after_help = after_help())]
pub struct Cli {
    /// Configuration file (TOML) [default: config/broker.toml in the current directory if it
    /// exists, else built-in defaults equal to that file].
    #[arg(long, value_name = "PATH", env = "MQTT_BROKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Listen on this IP:PORT instead of the configured address; port 0 picks a free port
    /// (the line on stdout says which).
    #[arg(long, value_name = "ADDR:PORT", env = "MQTT_BROKER_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Check the configuration, print the address the broker would listen on, and exit.
    #[arg(long)]
    pub check_config: bool,
}

fn after_help() -> String {
    format!(
        "Examples:\n  mqtt-broker                          # config/broker.toml, 127.0.0.1:1883\n  \
         mqtt-broker --listen 127.0.0.1:0     # any free port\n  \
         mqtt-broker --config my.toml --check-config\n\n\
         Logs: RUST_LOG filters them (default: info). Connections that are dropped or aborted \
         are not errors; RUST_LOG=info,rumqttd=debug shows one DEBUG line for each such event.\n\n\
         {}\nmqtt-broker exits 0 when stopped by SIGINT or SIGTERM: that is the normal way to stop \
         a broker. A port already in use or a bad configuration exits 1.",
        mqtt_protocol::exit::HELP
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
