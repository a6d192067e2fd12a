//! The command line of `mqtt-broker`: where the configuration lives and the settings worth
//! overriding per run (listen addresses, TLS files, password file), plus two tools: `passwd`
//! for the password file and `gen-certs` for a local CA and server certificate. Flags win
//! over their environment variables, which win over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The pipeline's MQTT broker (MQTT 3.1.1, rumqttd inside).
///
/// Prints one line on stdout once it accepts connections, `mqtt-broker listening on
/// ADDR:PORT` (and `mqtt-broker listening for TLS on ADDR:PORT` for the TLS listener), then
/// serves until SIGINT (Ctrl-C) or SIGTERM. Logs go to stderr.
#[derive(Debug, Parser)]
#[command(name = "mqtt-broker", version, after_help = after_help(), args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Configuration file (TOML) [default: config/broker.toml in the current directory if it
    /// exists, else built-in defaults equal to that file].
    #[arg(long, value_name = "PATH", env = "MQTT_BROKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Listen on this IP:PORT instead of the configured address (and run the plain listener
    /// even if the file turns it off); port 0 picks a free port (the line on stdout says which).
    #[arg(long, value_name = "ADDR:PORT", env = "MQTT_BROKER_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Run the TLS listener on this IP:PORT (port 0: any free port) [default with --tls-cert:
    /// the configured [tls] address, else 127.0.0.1:8883].
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_listen: Option<SocketAddr>,

    /// PEM certificate (chain) of the TLS listener; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the TLS listener; needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require every client to authenticate against this password file (written by
    /// `mqtt-broker passwd`).
    #[arg(long, value_name = "FILE", env = "MQTT_BROKER_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// Allow each client only what this ACL file (Mosquitto's `acl_file` syntax) grants it:
    /// which topics it may publish to, subscribe to and receive.
    #[arg(long, value_name = "FILE", env = "MQTT_BROKER_ACL_FILE")]
    pub acl_file: Option<PathBuf>,

    /// Also accept MQTT over WebSockets at ws://ADDR:PORT/mqtt (any path; subprotocol "mqtt").
    #[arg(long, value_name = "ADDR:PORT", env = "MQTT_BROKER_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT", env = "MQTT_BROKER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Keep a write-ahead log in DIR (created if missing): acknowledged readings, persistent
    /// sessions and retained messages survive a crash of the broker ([storage] dir).
    #[arg(long, value_name = "DIR", env = "MQTT_BROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Start even if the storage directory holds damaged records: skip them (they are
    /// counted in the restore line) and rewrite the files without them.
    #[arg(long)]
    pub repair: bool,

    /// Check the configuration (and the TLS, password and ACL files it names), print the
    /// addresses the broker would listen on, and exit.
    #[arg(long)]
    pub check_config: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add USER to the password FILE (created if missing) or change their password. The
    /// password is read from stdin (one line), or prompted for when stdin is a terminal; the
    /// file stores only a salted argon2id hash.
    Passwd {
        /// Password file.
        file: PathBuf,
        /// User name (no ':').
        user: String,
    },
    /// Make a local CA (ca.pem, ca.key) and a server certificate for 127.0.0.1, ::1 and
    /// localhost signed by it (server.pem, server.key) in DIR.
    GenCerts {
        /// Directory to write the four PEM files into (created if missing).
        dir: PathBuf,
    },
}

fn after_help() -> String {
    String::from(
        "Examples:\n  mqtt-broker                          # config/broker.toml, 127.0.0.1:1883\n  \
         mqtt-broker --listen 127.0.0.1:0     # any free port\n  \
         mqtt-broker --config my.toml --check-config\n  \
         mqtt-broker --data-dir data          # survive a crash: write-ahead log in data/\n  \
         mqtt-broker passwd config/passwd alice    # then: --password-file config/passwd\n  \
         mqtt-broker gen-certs certs          # then: --tls-cert certs/server.pem (and --tls-key)\n  \
         mqtt-broker --ws-listen 127.0.0.1:8080    # also MQTT over WebSockets at ws://127.0.0.1:8080/mqtt\n\n\
         Logs: RUST_LOG filters them (default: info). Connections that are dropped or aborted \
         are not errors; RUST_LOG=info,rumqttd=debug,mqtt_broker=debug shows one DEBUG line for \
         each such event. Refused and disconnected clients are one WARN line each (at most 20 \
         per 10 s).\n\n\
         Stopping: SIGINT or SIGTERM stops accepting connections, gives connected clients up to \
         [connections] shutdown_grace_ms (5 s) to finish, then exits; a second signal ends the \
         wait.\n\n\
         Exit codes: 0 stopped by SIGINT or SIGTERM (the normal way to stop a broker), 1 runtime \
         error (a port already in use, a bad configuration, rumqttd stopped), 2 usage error."
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

    #[test]
    fn tls_files_come_in_pairs_and_tools_are_subcommands() {
        assert!(Cli::try_parse_from(["b", "--tls-cert", "c.pem"]).is_err());
        let cli = Cli::try_parse_from(["b", "--tls-cert", "c", "--tls-key", "k"]).unwrap();
        assert!(cli.tls_key.is_some());
        let cli = Cli::try_parse_from(["b", "passwd", "f", "alice"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Passwd { .. })));
    }
}
