//! Client connection options and the first connection, shared by the publisher and the
//! subscriber so that both reach a broker, and fail to, in the same way: address, TLS
//! (`--tls`, `--ca-file`), credentials (`--username`, the password only from `MQTT_PASSWORD`,
//! never a flag that `ps` would show) and the error that says what to check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming,
    MqttOptions, StateError, TlsConfiguration, Transport,
};
use rustls::pki_types::CertificateDer;
use thiserror::Error;

pub use crate::failover::Endpoint;
use crate::failover::{broker_addr, current, move_to};

/// The environment variable the password comes from.
pub const PASSWORD_ENV: &str = "MQTT_PASSWORD";

/// Largest MQTT packet either client sends or accepts: room for padded 16 KB readings
/// and then some.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Where the broker is and how long to wait for it: the flags both clients share.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker host name or IP address [default: 127.0.0.1].
    #[arg(long, env = "MQTT_HOST")]
    pub host: Option<String>,

    /// Broker TCP port [default: 1883].
    #[arg(long, env = "MQTT_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// A broker as HOST:PORT; repeat for failover. Overrides --host/--port. The client
    /// connects to the first that answers and, when its connection is lost and that broker
    /// stays away, moves on to the next, keeping its counts and its unacknowledged
    /// readings. Without --broker, --host or --port, the comma-separated MQTT_BROKERS
    /// environment variable gives the list.
    #[arg(long = "broker", value_name = "HOST:PORT", value_delimiter = ',')]
    pub brokers: Vec<Endpoint>,

    /// The MQTT_BROKERS list, read with the flags (see [`Self::validate`]).
    #[arg(skip = brokers_from_env())]
    env_brokers: Result<Vec<Endpoint>, String>,

    /// MQTT client id [default: a unique id per process, so two clients never take
    /// over each other's connection].
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub client_id: Option<String>,

    /// Seconds to wait for the broker to accept the connection before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,

    /// Connect with TLS (the broker's TLS port, often 8883), trusting --ca-file or, without
    /// it, the system's certificate authorities.
    #[arg(long, env = "MQTT_TLS")]
    pub tls: bool,

    /// PEM file of the certificate authority that signed the broker's certificate (implies
    /// --tls). `scripts/gen-certs DIR` makes DIR/ca.pem.
    #[arg(long, value_name = "FILE", env = "MQTT_CA_FILE", value_parser = CaFile::parse)]
    pub ca_file: Option<CaFile>,

    /// Speak MQTT over WebSockets: connect to ws://HOST:PORT/mqtt (wss:// with --tls), a
    /// broker's WebSocket listener (`mqtt-broker --ws-listen`, Mosquitto's
    /// `protocol websockets`).
    #[arg(long, env = "MQTT_WS")]
    pub ws: bool,

    /// User name to authenticate with; the password is read from the MQTT_PASSWORD
    /// environment variable (never a flag, which other users could see in `ps`).
    #[arg(long, value_name = "USER", env = "MQTT_USERNAME")]
    pub username: Option<String>,
}

/// A CA certificate file, read and parsed when the flag is parsed (a bad file is a usage
/// error before anything connects).
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    certs: Arc<Vec<CertificateDer<'static>>>,
}

impl CaFile {
    fn parse(path: &str) -> Result<CaFile, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read CA file {path}: {e}"))?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CA file {path} is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "CA file {path} holds no PEM certificate (scripts/gen-certs DIR makes DIR/ca.pem)"
            ));
        }
        Ok(CaFile {
            path: PathBuf::from(path),
            certs: Arc::new(certs),
        })
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// Where the brokers come from, most specific first: `--broker` flags; `--host`/`--port`
/// (flags or MQTT_HOST/MQTT_PORT); the MQTT_BROKERS list; 127.0.0.1:1883.
const BROKERS_ENV: &str = "MQTT_BROKERS";

/// The MQTT_BROKERS list: empty entries (and an empty variable) are ignored.
fn brokers_from_env() -> Result<Vec<Endpoint>, String> {
    let Ok(list) = std::env::var(BROKERS_ENV) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            entry
                .parse()
                .map_err(|e| format!("{BROKERS_ENV}={list:?}: {e}"))
        })
        .collect()
}

impl BrokerArgs {
    /// Checks what clap could not: the MQTT_BROKERS list.
    pub fn validate(&self) -> Result<(), String> {
        self.env_brokers.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The brokers to use, in order (see [`BROKERS_ENV`] for which source wins).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        if !self.brokers.is_empty() {
            return self.brokers.clone();
        }
        match &self.env_brokers {
            Ok(list) if !list.is_empty() && self.host.is_none() && self.port.is_none() => {
                list.clone()
            }
            _ => vec![Endpoint {
                host: self.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
                port: self.port.unwrap_or(1883),
            }],
        }
    }

    /// The first broker as `host:port`, or all of them comma-separated, for messages.
    pub fn address(&self) -> String {
        let all: Vec<String> = self.endpoints().iter().map(ToString::to_string).collect();
        all.join(",")
    }

    /// The client id to use: the one given, or `prefix-` and 8 random hex digits.
    pub fn client_id_or(&self, prefix: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{prefix}-{:08x}", rand::random::<u32>()))
    }

    /// Whether the connection uses TLS (`--tls` or `--ca-file`).
    pub fn uses_tls(&self) -> bool {
        self.tls || self.ca_file.is_some()
    }

    /// The MQTT options of `session` at broker `at`: every option either client sets is
    /// set here, from the flags and the session, so failover (which must rebuild the
    /// options for another broker, see [`crate::failover::retarget`]) can keep them all.
    pub fn options_at(&self, session: &Session, at: &Endpoint) -> MqttOptions {
        let transport = match (self.ws, self.uses_tls()) {
            (false, false) => Transport::Tcp,
            (ws, true) => {
                let config =
                    TlsConfiguration::Rustls(Arc::new(tls_client_config(self.ca_file.as_ref())));
                match ws {
                    false => Transport::tls_with_config(config),
                    true => Transport::wss_with_config(config),
                }
            }
            (true, false) => Transport::Ws,
        };
        let mut options = MqttOptions::new(
            session.client_id.clone(),
            broker_addr(&transport, at),
            at.port,
        );
        options.set_transport(transport);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(session.clean)
            .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
            .set_manual_acks(session.manual_acks)
            .set_request_channel_capacity(session.request_capacity);
        if let Some(inflight) = session.inflight {
            options.set_inflight(inflight);
        }
        if let Some(user) = &self.username {
            let password = std::env::var(PASSWORD_ENV).unwrap_or_default();
            options.set_credentials(user.clone(), password);
        }
        options
    }

    /// A client handle and its event loop for `session`, pointed at the first broker and
    /// with the connect timeout applied; nothing is sent until the first poll.
    pub fn open(&self, session: &Session) -> (AsyncClient, EventLoop) {
        let first = self.endpoints().swap_remove(0);
        let options = self.options_at(session, &first);
        let (client, mut eventloop) = AsyncClient::new(options, session.request_capacity);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(self.connect_timeout);
        eventloop.set_network_options(network);
        (client, eventloop)
    }
}

/// Keep-alive of both clients' connections.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// What one client's session needs beyond the shared flags. Together with
/// [`BrokerArgs`] it decides every MQTT option (see [`BrokerArgs::options_at`]); a new
/// option belongs here, where the failover test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub client_id: String,
    /// A clean session; a persistent one keeps what arrives while the client is away.
    pub clean: bool,
    /// Publishes that may await their acknowledgement at once (rumqttc's default, 100,
    /// when `None`).
    pub inflight: Option<u16>,
    /// Incoming publishes are acknowledged by the client itself (the subscriber's
    /// journal), not by rumqttc on arrival.
    pub manual_acks: bool,
    /// Requests the client handle may queue for the event loop.
    pub request_capacity: usize,
}

/// A rustls client configuration on the ring provider, trusting `ca` or the system's CAs.
fn tls_client_config(ca: Option<&CaFile>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            roots.add_parsable_certificates(ca.certs.iter().cloned());
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// What to check when the broker closes the connection before its CONNACK.
const HANDSHAKE_HINT: &str = "check credentials (--username and MQTT_PASSWORD), TLS (a TLS \
     port needs --tls/--ca-file, a plain port must not have them) and WebSockets (a WebSocket \
     port needs --ws)";

/// Why the first connection to the broker failed, in words a user can act on.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(
        "cannot reach the MQTT broker at {addr}: {source}. Is it running? Start one with \
         `mqtt-broker`, or point --broker (or --host/--port) at yours"
    )]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("no CONNACK from the MQTT broker at {addr} within {secs} s (--connect-timeout)")]
    Timeout { addr: String, secs: u64 },
    #[error(
        "the MQTT broker at {addr} refused the connection: {reason}{}",
        refusal_hint(reason)
    )]
    Refused { addr: String, reason: &'static str },
    #[error("connection closed during handshake by the MQTT broker at {addr}: {HANDSHAKE_HINT}")]
    ClosedDuringHandshake { addr: String },
    #[error(
        "the server at {addr} did not answer in MQTT ({detail}): if that is a TLS port, \
         connect with --tls (and --ca-file)"
    )]
    NotMqtt { addr: String, detail: String },
    #[error(
        "no WebSocket handshake with the server at {addr} ({detail}): --ws needs the broker's \
         WebSocket port (mqtt-broker --ws-listen; Mosquitto's `protocol websockets`); for its \
         MQTT port, leave --ws out"
    )]
    NotWebSocket { addr: String, detail: String },
    #[error(
        "TLS handshake with the MQTT broker at {addr} failed: {detail}. Check --ca-file (the CA \
         that signed the broker's certificate), --host (it must match the certificate) and that \
         --port is the broker's TLS port"
    )]
    Tls { addr: String, detail: String },
    #[error(
        "cannot open a connection to {addr}: {source} (each device is a socket; raise the \
         open-file limit with `ulimit -n`)"
    )]
    OutOfFiles {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not connect to the MQTT broker at {addr}: {source}")]
    Other {
        addr: String,
        source: ConnectionError,
    },
    #[error("none of the {} brokers (--broker) accepted the connection:{failures}", failures.0.len())]
    NoneAccepted { failures: Failures },
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

/// What to do about a refusal, if there is something to say.
fn refusal_hint(reason: &str) -> &'static str {
    match reason {
        "bad user name or password" => {
            ": check --username and the MQTT_PASSWORD environment variable"
        }
        "not authorized" => {
            ": the broker requires authentication; pass --username and set MQTT_PASSWORD"
        }
        _ => "",
    }
}

/// Polls `eventloop` until a broker's CONNACK, failing fast (within the connect timeout
/// per broker) when it is unreachable, silent or refuses. With several brokers
/// (`--broker`), tries each in order and fails only when none accepts; the event loop
/// stays pointed at the one that did.
pub async fn first_connack(
    eventloop: &mut EventLoop,
    broker: &BrokerArgs,
) -> Result<ConnAck, ConnectError> {
    let endpoints = broker.endpoints();
    if endpoints.len() == 1 {
        return connack_from(eventloop, broker.connect_timeout).await;
    }
    let mut failures = Vec::new();
    for endpoint in &endpoints {
        move_to(eventloop, endpoint);
        match connack_from(eventloop, broker.connect_timeout).await {
            Ok(ack) => return Ok(ack),
            Err(e) => {
                tracing::warn!("{e}; trying the next broker");
                failures.push(e);
            }
        }
    }
    Err(ConnectError::NoneAccepted {
        failures: Failures(failures),
    })
}

/// One broker's CONNACK, within `secs`.
async fn connack_from(eventloop: &mut EventLoop, secs: u64) -> Result<ConnAck, ConnectError> {
    let addr = current(eventloop).to_string();
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => return Ok(ack),
                Ok(_) => continue,
                Err(e) => return Err(classify(e, &addr, secs)),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(secs), wait).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr, secs }),
    }
}

/// Why each of several brokers failed, one per line.
#[derive(Debug)]
pub struct Failures(pub Vec<ConnectError>);

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

fn classify(e: ConnectionError, addr: &str, secs: u64) -> ConnectError {
    let addr = addr.to_owned();
    match e {
        ConnectionError::Io(source) if closed_by_peer(&source) => {
            ConnectError::ClosedDuringHandshake { addr }
        }
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            ConnectError::ClosedDuringHandshake { addr }
        }
        ConnectionError::MqttState(StateError::Io(source)) if closed_by_peer(&source) => {
            ConnectError::ClosedDuringHandshake { addr }
        }
        ConnectionError::Tls(rumqttc::TlsError::Io(source)) if closed_by_peer(&source) => {
            ConnectError::ClosedDuringHandshake { addr }
        }
        ConnectionError::MqttState(StateError::Deserialization(e)) => ConnectError::NotMqtt {
            addr,
            detail: e.to_string(),
        },
        ConnectionError::NotConnAck(packet) => ConnectError::NotMqtt {
            addr,
            detail: format!("{packet:?} instead of a CONNACK"),
        },
        ConnectionError::Tls(e) => ConnectError::Tls {
            addr,
            detail: tls_detail(&e),
        },
        ConnectionError::Io(source) if out_of_files(&source) => {
            ConnectError::OutOfFiles { addr, source }
        }
        ConnectionError::Io(source) => ConnectError::Unreachable { addr, source },
        ConnectionError::NetworkTimeout => ConnectError::Timeout { addr, secs },
        ConnectionError::Websocket(e) => ConnectError::NotWebSocket {
            addr,
            detail: e.to_string(),
        },
        ConnectionError::ResponseValidation(e) => ConnectError::NotWebSocket {
            addr,
            detail: e.to_string(),
        },
        ConnectionError::ConnectionRefused(code) => ConnectError::Refused {
            addr,
            reason: refusal_reason(code),
        },
        source => ConnectError::Other { addr, source },
    }
}

/// True when the process (or the system) has no file descriptor left for a socket.
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// True for the errors of a connection the peer closed (rather than one never made).
fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

/// The innermost words of a TLS error (rustls' own, such as "invalid peer certificate:
/// UnknownIssuer").
fn tls_detail(e: &rumqttc::TlsError) -> String {
    match e {
        rumqttc::TlsError::Io(io) => io
            .get_ref()
            .map_or_else(|| io.to_string(), |inner| inner.to_string()),
        other => other.to_string(),
    }
}

/// The QoS for a `--qos` level (validated to 0..=2 by the flags' parser).
pub fn qos(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// How long the final DISCONNECT may take.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Ends a session politely: sends DISCONNECT and polls (briefly) until it is written, so
/// the broker sees a clean goodbye (and does not publish a will).
pub async fn disconnect(client: &rumqttc::AsyncClient, eventloop: &mut EventLoop) {
    disconnect_seeing(client, eventloop, |_| {}).await;
}

/// [`disconnect`], handing each event polled on the way to `seen`: what was queued before
/// the DISCONNECT still goes out, and acknowledgements still arrive, and a publisher
/// counts them.
pub async fn disconnect_seeing(
    client: &rumqttc::AsyncClient,
    eventloop: &mut EventLoop,
    mut seen: impl FnMut(&Event),
) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(event) => seen(&event),
            }
        }
    })
    .await;
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

    fn session() -> Session {
        Session {
            client_id: "t".into(),
            clean: true,
            inflight: None,
            manual_acks: false,
            request_capacity: 10,
        }
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

    #[test]
    fn tls_and_credentials_reach_the_mqtt_options() {
        let cli = Cli::parse_from(["x"]);
        assert!(!cli.broker.uses_tls());
        let options = cli
            .broker
            .options_at(&session(), &cli.broker.endpoints()[0]);
        assert!(matches!(options.transport(), Transport::Tcp));
        assert!(options.credentials().is_none());

        let cli = Cli::parse_from(["x", "--tls", "--username", "alice"]);
        let options = cli
            .broker
            .options_at(&session(), &cli.broker.endpoints()[0]);
        assert!(matches!(options.transport(), Transport::Tls(_)));
        assert_eq!(
            options.credentials().map(|login| login.username),
            Some("alice".to_owned())
        );

        let err = Cli::try_parse_from(["x", "--ca-file", "/no/such/ca.pem"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read CA file /no/such/ca.pem"), "{err}");
    }

    #[test]
    fn refusals_say_what_to_check() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        for (error, says) in [
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
                "check --username and the MQTT_PASSWORD",
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
                "requires authentication",
            ),
            (ConnectionError::Io(emfile), "ulimit -n"),
        ] {
            let err = classify(error, "h:1", 5).to_string();
            assert!(err.contains(says), "{err}");
        }
        let aborted = ConnectionError::MqttState(StateError::ConnectionAborted);
        let err = classify(aborted, "h:1", 5).to_string();
        assert!(
            err.starts_with("connection closed during handshake"),
            "{err}"
        );
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
        let (_client, mut eventloop) = cli.broker.open(&session());
        let err = first_connack(&mut eventloop, &cli.broker)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("Is it running?"));
    }

    #[tokio::test]
    async fn with_several_brokers_every_one_is_tried_and_named() {
        let closed = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (a, b) = (closed(), closed());
        let list = format!("127.0.0.1:{a},127.0.0.1:{b}");
        let cli = Cli::parse_from(["x", "--port", "1", "--broker", &list]);
        assert_eq!(cli.broker.endpoints().len(), 2, "the list overrides --port");
        let (_client, mut eventloop) = cli.broker.open(&session());
        let err = first_connack(&mut eventloop, &cli.broker)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("none of the 2 brokers"), "{err}");
        for port in [a, b] {
            assert!(err.contains(&format!("127.0.0.1:{port}: ")), "{err}");
        }
        let bad = Cli::try_parse_from(["x", "--broker", "nohost"])
            .err()
            .unwrap();
        assert!(bad.to_string().contains("is not HOST:PORT"), "{bad}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cli = Cli::parse_from(["x", "--port", &port.to_string(), "--connect-timeout", "1"]);
        let (_client, mut eventloop) = cli.broker.open(&session());
        let started = std::time::Instant::now();
        let err = first_connack(&mut eventloop, &cli.broker)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
