//! Client connection options and the first connection, shared by the publisher and the
//! subscriber so that both reach a broker, and fail to, in the same way.

use std::time::Duration;

use rumqttc::{
    ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
};
use thiserror::Error;

/// Largest MQTT packet either client sends or accepts: room for padded 16 KB readings
/// and then some.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Where the broker is and how long to wait for it: the flags both clients share.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker host name or IP address.
    #[arg(long, env = "MQTT_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Broker TCP port.
    #[arg(long, env = "MQTT_PORT", default_value_t = 1883)]
    pub port: u16,

    /// MQTT client id [default: a unique id per process, so two clients never take
    /// over each other's connection].
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub client_id: Option<String>,

    /// Seconds to wait for the broker to accept the connection before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

impl BrokerArgs {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The client id to use: the one given, or `prefix-` and 8 random hex digits.
    pub fn client_id_or(&self, prefix: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{prefix}-{:08x}", rand::random::<u32>()))
    }

    /// MQTT options for a clean session with `client_id`.
    pub fn mqtt_options(&self, client_id: String) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        options
    }

    /// Applies the connect timeout to an event loop built from [`Self::mqtt_options`].
    pub fn configure(&self, eventloop: &mut EventLoop) {
        let mut network = eventloop.network_options();
        network.set_connection_timeout(self.connect_timeout);
        eventloop.set_network_options(network);
    }
}

/// Why the first connection to the broker failed, in words a user can act on.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(
        "cannot reach the MQTT broker at {addr}: {source}. Is it running? Start one with \
         `mqtt-broker`, or point --host/--port (MQTT_HOST/MQTT_PORT) at yours"
    )]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("no CONNACK from the MQTT broker at {addr} within {secs} s (--connect-timeout)")]
    Timeout { addr: String, secs: u64 },
    #[error("the MQTT broker at {addr} refused the connection: {reason}")]
    Refused { addr: String, reason: &'static str },
    #[error("could not connect to the MQTT broker at {addr}: {source}")]
    Other {
        addr: String,
        source: ConnectionError,
    },
}

/// Human words for a CONNACK return code.
pub fn refusal_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "success",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "client id rejected",
        ConnectReturnCode::ServiceUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

/// Polls `eventloop` until the broker's CONNACK, failing fast (within the configured
/// connect timeout) when the broker is unreachable, silent or refuses.
pub async fn first_connack(
    eventloop: &mut EventLoop,
    broker: &BrokerArgs,
) -> Result<ConnAck, ConnectError> {
    let addr = broker.address();
    let deadline = Duration::from_secs(broker.connect_timeout);
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => return Ok(ack),
                Ok(_) => continue,
                Err(e) => return Err(classify(e, &addr, broker.connect_timeout)),
            }
        }
    };
    match tokio::time::timeout(deadline, wait).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            addr,
            secs: broker.connect_timeout,
        }),
    }
}

fn classify(e: ConnectionError, addr: &str, secs: u64) -> ConnectError {
    let addr = addr.to_owned();
    match e {
        ConnectionError::Io(source) => ConnectError::Unreachable { addr, source },
        ConnectionError::NetworkTimeout => ConnectError::Timeout { addr, secs },
        ConnectionError::ConnectionRefused(code) => ConnectError::Refused {
            addr,
            reason: refusal_reason(code),
        },
        source => ConnectError::Other { addr, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    #[test]
    fn default_client_ids_are_unique_and_given_ones_are_kept() {
        let cli = Cli::parse_from(["x"]);
        let a = cli.broker.client_id_or("pub");
        assert!(a.starts_with("pub-") && a.len() == 12);
        assert_ne!(a, cli.broker.client_id_or("pub"));
        let cli = Cli::parse_from(["x", "--client-id", "me"]);
        assert_eq!(cli.broker.client_id_or("pub"), "me");
        assert!(Cli::try_parse_from(["x", "--client-id", ""]).is_err());
        assert!(Cli::try_parse_from(["x", "--connect-timeout", "0"]).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_broker_fails_fast_with_advice() {
        // Bind then drop: the port is (almost certainly) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cli = Cli::parse_from(["x", "--port", &port.to_string()]);
        let (_client, mut eventloop) =
            rumqttc::AsyncClient::new(cli.broker.mqtt_options("t".into()), 10);
        cli.broker.configure(&mut eventloop);
        let err = first_connack(&mut eventloop, &cli.broker)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("Is it running?"));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cli = Cli::parse_from(["x", "--port", &port.to_string(), "--connect-timeout", "1"]);
        let (_client, mut eventloop) =
            rumqttc::AsyncClient::new(cli.broker.mqtt_options("t".into()), 10);
        cli.broker.configure(&mut eventloop);
        let started = std::time::Instant::now();
        let err = first_connack(&mut eventloop, &cli.broker)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
