//! The broker's own configuration: a small TOML file we own (`config/broker.toml`, commented
//! key by key) instead of rumqttd's sprawling format. Values are checked here, up front, so a
//! mistake is a one-line error naming the file and the key rather than a panic inside a rumqttd
//! thread; only then are they mapped onto `rumqttd::Config`.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the broker looks for its configuration when `--config` is not given, relative to the
/// current directory.
pub const DEFAULT_PATH: &str = "config/broker.toml";

/// MQTT's largest possible "remaining length" (the 4-byte variable length integer's maximum).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// The largest `max_inflight_messages`: the broker's packet ids for them must fit beside the
/// router's (1 to 100) in MQTT's 65535.
const MAX_INFLIGHT_MESSAGES: usize = 60_000;

/// Router connections beyond `max_connections`: the ingest link, and client links that are
/// still leaving while their clients' successors arrive.
const ROUTER_SPARE_LINKS: usize = 64;

/// Everything `mqtt-broker` can be told in its TOML file. Missing keys take the
/// [`Default`] values, which equal the shipped `config/broker.toml`; unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub listener: ListenerConfig,
    pub connections: ConnectionsConfig,
    pub router: RouterConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub flow: FlowSettings,
    pub metrics: MetricsConfig,
    pub websocket: WebSocketConfig,
    pub storage: StorageSettings,
}

/// `[storage]`: the write-ahead log that lets acknowledged readings, persistent sessions and
/// retained messages survive a crash; off (everything in memory) unless `dir` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// The storage directory (created if missing).
    pub dir: Option<PathBuf>,
    /// When the log is synced to disk.
    pub fsync: FsyncMode,
    /// How often `fsync = "interval"` syncs, in milliseconds.
    pub fsync_interval_ms: u64,
    /// The most bytes the log may take on disk; beyond, its oldest segments go, read or not.
    pub max_bytes: u64,
    /// Skip damaged records instead of refusing to start (`--repair`; not a file setting).
    #[serde(skip)]
    pub repair: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            dir: None,
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 100,
            max_bytes: 4 << 30,
            repair: false,
        }
    }
}

/// When the write-ahead log is synced to disk, and so what an acknowledged reading survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Each batch is synced before its PUBACKs go: survives a power loss.
    Always,
    /// PUBACKs wait for the write; syncs every `fsync_interval_ms`: survives a process
    /// crash, and a power loss but for the last interval.
    #[default]
    Interval,
    /// PUBACKs wait for the write; the kernel syncs when it pleases: survives a process crash.
    Never,
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncMode::Always => "always",
            FsyncMode::Interval => "interval",
            FsyncMode::Never => "never",
        })
    }
}

/// `[websocket]`: MQTT over WebSockets (MQTT 3.1.1 section 6), off unless `address` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// IP:PORT of the WebSocket listener (port 0: any free port).
    pub address: Option<SocketAddr>,
}

/// `[metrics]`: Prometheus metrics over HTTP, off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// IP:PORT serving `/metrics`.
    pub listen: Option<SocketAddr>,
}

/// `[flow]`: how slow subscribers slow publishers down instead of losing messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowSettings {
    /// Hold publishers back (unacknowledged) rather than let a log drop what a subscriber
    /// has not read.
    pub hold: bool,
    /// How long an offline persistent session may hold publishers back, in seconds.
    pub offline_hold_s: u64,
    /// Bytes of held-back publishes one client may have before it is disconnected.
    pub max_parked_bytes: usize,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            hold: true,
            offline_hold_s: 30,
            max_parked_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[listener]`: where the MQTT 3.1.1 TCP listener binds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Whether the plain TCP listener runs at all (`false`: TLS only).
    pub enabled: bool,
    /// IP:PORT to listen on; port 0 picks a free port.
    pub address: SocketAddr,
    /// Pause after each accepted TCP connection (a crude accept-rate limit).
    pub next_connection_delay_ms: u64,
}

/// `[connections]`: limits applied to every client connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Time a new connection has to send its CONNECT packet.
    pub connection_timeout_ms: u16,
    /// Largest accepted packet "remaining length" (topic + payload + headers), in bytes.
    pub max_payload_size: usize,
    /// Packets decoded from one connection before they are handed on as one batch.
    #[serde(alias = "max_inflight_count")]
    pub read_batch: usize,
    /// QoS 1 messages sent to a clean-session client and not yet acknowledged, at most.
    pub max_inflight_messages: usize,
    /// Maximum number of simultaneous client connections.
    pub max_connections: usize,
    /// Longest accepted MQTT client id, in bytes.
    pub max_client_id_len: usize,
    /// On SIGINT/SIGTERM, how long connected clients may stay before the broker exits.
    pub shutdown_grace_ms: u64,
}

/// `[tls]`: the TLS listener, on when `address` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// IP:PORT of the TLS listener; `None`: no TLS listener.
    pub address: Option<SocketAddr>,
    /// PEM certificate chain of the server.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server.
    pub key_file: Option<PathBuf>,
    /// Time a new TLS connection has to complete its handshake.
    pub handshake_timeout_ms: u64,
}

/// `[auth]`: who may connect, and what each may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Password file (`mqtt-broker passwd`); when set, every client must authenticate.
    pub password_file: Option<PathBuf>,
    /// ACL file (Mosquitto's `acl_file` syntax); when set, what no rule allows is denied.
    pub acl_file: Option<PathBuf>,
}

/// `[router]`: the size of rumqttd's in-memory commit logs and its delivery batches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Size of one commit-log segment, in bytes.
    pub max_segment_size: usize,
    /// Number of segments one commit log keeps in memory.
    pub max_segment_count: usize,
    /// QoS 0 messages handed to one subscriber per scheduling round.
    pub max_outgoing_packet_count: u64,
    /// How a `$share` group's messages are dealt out among its members.
    pub shared_subscriptions_strategy: SharedStrategy,
}

/// rumqttd's ways of dealing a shared subscription's messages out: after each batch read
/// for the group, the next batch goes to the next member in turn, to a random member, or
/// to the same member for as long as it stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    #[default]
    RoundRobin,
    Random,
    Sticky,
}

impl From<SharedStrategy> for rumqttd::Strategy {
    fn from(strategy: SharedStrategy) -> Self {
        match strategy {
            SharedStrategy::RoundRobin => rumqttd::Strategy::RoundRobin,
            SharedStrategy::Random => rumqttd::Strategy::Random,
            SharedStrategy::Sticky => rumqttd::Strategy::Sticky,
        }
    }
}

// The defaults, in one place. `shipped_config_equals_defaults` keeps config/broker.toml equal.
impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            enabled: true,
            address: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1883)),
            next_connection_delay_ms: 1,
        }
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 * 1024,
            read_batch: 100,
            max_inflight_messages: 1000,
            max_connections: 10_000,
            max_client_id_len: 256,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            address: None,
            cert_file: None,
            key_file: None,
            handshake_timeout_ms: 5_000,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_segment_size: 256 * 1024,
            max_segment_count: 4,
            max_outgoing_packet_count: 200,
            shared_subscriptions_strategy: SharedStrategy::RoundRobin,
        }
    }
}

/// Where a configuration came from, for log lines and `--check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

/// A configuration that could not be read, parsed or accepted. Each variant displays as one
/// line naming the file (and, where known, the line and key).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error} (check --config or MQTT_BROKER_CONFIG)")]
    Read { path: String, error: io::Error },
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {setting}")]
    Invalid {
        origin: String,
        setting: InvalidSetting,
    },
}

/// One setting whose value the broker refuses, e.g. a zero size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {problem}")]
pub struct InvalidSetting {
    /// `[section] key`, as written in the file.
    pub key: &'static str,
    pub value: String,
    pub problem: &'static str,
}

impl BrokerConfig {
    /// Loads the configuration: `explicit` if given (a missing file is an error), else
    /// [`DEFAULT_PATH`] if it exists, else the built-in defaults.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, ConfigSource), ConfigError> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None => {
                let path = PathBuf::from(DEFAULT_PATH);
                match std::fs::metadata(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Ok((BrokerConfig::default(), ConfigSource::BuiltIn))
                    }
                    _ => path,
                }
            }
        };
        let config = Self::from_file(&path)?;
        Ok((config, ConfigSource::File(path)))
    }

    /// Reads, parses and validates one TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: origin.clone(),
            error,
        })?;
        Self::from_toml(&text, &origin)
    }

    /// Parses and validates TOML text; `origin` names it in errors (usually the file path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: BrokerConfig =
            toml::from_str(text).map_err(|e| parse_error(origin, text, &e))?;
        config.validate().map_err(|setting| ConfigError::Invalid {
            origin: origin.to_owned(),
            setting,
        })?;
        Ok(config)
    }

    /// Rejects values rumqttd would choke on (several of them panic inside its threads).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let c = &self.connections;
        let r = &self.router;
        let st = &self.storage;
        let checks: [(&'static str, u64, bool, &'static str); 15] = [
            (
                "[storage] fsync_interval_ms",
                st.fsync_interval_ms,
                (1..=60_000).contains(&st.fsync_interval_ms),
                "must be between 1 and 60000",
            ),
            (
                "[storage] max_bytes",
                st.max_bytes,
                st.max_bytes >= 16 << 20,
                "must be at least 16777216 (16 MiB)",
            ),
            (
                "[connections] connection_timeout_ms",
                u64::from(c.connection_timeout_ms),
                c.connection_timeout_ms > 0,
                "must be at least 1 (0 would drop every client before its CONNECT)",
            ),
            (
                "[connections] max_payload_size",
                c.max_payload_size as u64,
                (1..=MQTT_MAX_PACKET).contains(&c.max_payload_size),
                "must be between 1 and 268435455 (MQTT's largest packet)",
            ),
            (
                "[connections] read_batch",
                c.read_batch as u64,
                c.read_batch > 0,
                "must be at least 1",
            ),
            (
                "[connections] max_inflight_messages",
                c.max_inflight_messages as u64,
                c.max_inflight_messages <= MAX_INFLIGHT_MESSAGES,
                "must be at most 60000 (0: rumqttd's own window of 100)",
            ),
            (
                "[connections] max_connections",
                c.max_connections as u64,
                c.max_connections > 0,
                "must be at least 1",
            ),
            (
                "[connections] max_client_id_len",
                c.max_client_id_len as u64,
                (23..=65_535).contains(&c.max_client_id_len),
                "must be between 23 (MQTT 3.1.1 requires accepting 23 bytes) and 65535",
            ),
            (
                "[connections] shutdown_grace_ms",
                c.shutdown_grace_ms,
                c.shutdown_grace_ms <= 600_000,
                "must be at most 600000 (ten minutes)",
            ),
            (
                "[tls] handshake_timeout_ms",
                self.tls.handshake_timeout_ms,
                self.tls.handshake_timeout_ms > 0,
                "must be at least 1",
            ),
            (
                "[router] max_segment_size",
                r.max_segment_size as u64,
                r.max_segment_size >= 1024,
                "must be at least 1024 bytes (rumqttd panics below 1 KiB)",
            ),
            (
                "[router] max_segment_count",
                r.max_segment_count as u64,
                r.max_segment_count > 0,
                "must be at least 1 (rumqttd panics on 0)",
            ),
            (
                "[flow] offline_hold_s",
                self.flow.offline_hold_s,
                self.flow.offline_hold_s <= 86_400,
                "must be at most 86400 (a day)",
            ),
            (
                "[flow] max_parked_bytes",
                self.flow.max_parked_bytes as u64,
                self.flow.max_parked_bytes >= c.max_payload_size,
                "must be at least [connections] max_payload_size (one whole publish)",
            ),
            (
                "[router] max_outgoing_packet_count",
                r.max_outgoing_packet_count,
                r.max_outgoing_packet_count > 0,
                "must be at least 1 (0 would starve QoS 0 subscribers)",
            ),
        ];
        if let Some((key, value, _, problem)) = checks.into_iter().find(|(_, _, ok, _)| !ok) {
            return Err(InvalidSetting {
                key,
                value: value.to_string(),
                problem,
            });
        }
        if let Some(listen) = self.metrics.listen {
            if listen.port() == 0 {
                return Err(InvalidSetting {
                    key: "[metrics] listen",
                    value: listen.to_string(),
                    problem: "needs a port of its own (port 0 is not supported here)",
                });
            }
        }
        let t = &self.tls;
        if let Some(address) = t.address {
            let missing = if t.cert_file.is_none() {
                Some("[tls] cert_file")
            } else if t.key_file.is_none() {
                Some("[tls] key_file")
            } else {
                None
            };
            if let Some(key) = missing {
                return Err(InvalidSetting {
                    key,
                    value: "(unset)".to_owned(),
                    problem:
                        "required when [tls] address is set (make files with scripts/gen-certs DIR)",
                });
            }
            if self.listener.enabled && address == self.listener.address && address.port() != 0 {
                return Err(InvalidSetting {
                    key: "[tls] address",
                    value: address.to_string(),
                    problem: "must differ from [listener] address",
                });
            }
        } else if !self.listener.enabled && self.websocket.address.is_none() {
            return Err(InvalidSetting {
                key: "[listener] enabled",
                value: "false".to_owned(),
                problem: "needs a TLS listener ([tls] address) or a WebSocket one ([websocket] \
                          address), or the broker listens nowhere",
            });
        }
        if let Some(ws) = self.websocket.address {
            let taken = [
                self.listener.enabled.then_some(self.listener.address),
                self.tls.address,
                self.metrics.listen,
            ];
            if ws.port() != 0 && taken.contains(&Some(ws)) {
                return Err(InvalidSetting {
                    key: "[websocket] address",
                    value: ws.to_string(),
                    problem: "must differ from the other listeners' addresses",
                });
            }
        }
        Ok(())
    }

    /// The limits every connection is held to.
    pub(crate) fn limits(&self) -> crate::hub::Limits {
        let c = &self.connections;
        crate::hub::Limits {
            max_packet: c.max_payload_size,
            max_client_id: c.max_client_id_len,
            connect_timeout: Duration::from_millis(u64::from(c.connection_timeout_ms)),
            tls_handshake_timeout: Duration::from_millis(self.tls.handshake_timeout_ms),
            max_connections: c.max_connections,
            next_connection_delay: Duration::from_millis(self.listener.next_connection_delay_ms),
            read_batch: c.read_batch,
            max_inflight: c.max_inflight_messages,
        }
    }

    /// How flow control mirrors the router's logs and what it holds.
    pub(crate) fn flow_config(&self) -> crate::flow::FlowConfig {
        crate::flow::FlowConfig {
            hold: self.flow.hold,
            offline_hold: Duration::from_secs(self.flow.offline_hold_s),
            max_segment_size: self.router.max_segment_size as u64,
            max_segment_count: self.router.max_segment_count,
            backlog_on_disk: self.storage.dir.is_some(),
        }
    }

    /// Storage, if a directory is set.
    pub(crate) fn storage_config(&self) -> Option<crate::storage::StorageConfig> {
        let s = &self.storage;
        s.dir.as_ref().map(|dir| crate::storage::StorageConfig {
            dir: dir.clone(),
            fsync: s.fsync,
            fsync_interval: Duration::from_millis(s.fsync_interval_ms),
            max_bytes: s.max_bytes,
            repair: s.repair,
        })
    }

    /// What one client may have held back.
    pub(crate) fn flow_limits(&self) -> crate::hub::FlowLimits {
        crate::hub::FlowLimits {
            max_parked_bytes: self.flow.max_parked_bytes,
        }
    }

    /// The configuration of rumqttd's router: its logs and its connection table.
    pub fn router_config(&self) -> rumqttd::RouterConfig {
        rumqttd::RouterConfig {
            // Our layer enforces max_connections (with a CONNACK); the router also holds the
            // broker's own links, and links on their way out.
            max_connections: self.connections.max_connections + ROUTER_SPARE_LINKS,
            max_outgoing_packet_count: self.router.max_outgoing_packet_count,
            max_segment_size: self.router.max_segment_size,
            max_segment_count: self.router.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: self.router.shared_subscriptions_strategy.into(),
        }
    }
}

/// Turns a TOML/serde error into one line: `file:line:column: [section] key: message`.
fn parse_error(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let at = locate(text, span.start);
            ConfigError::Parse {
                origin: origin.to_owned(),
                line: at.line,
                column: at.column,
                key: at.key,
                message,
            }
        }
        None => ConfigError::Syntax {
            origin: origin.to_owned(),
            message,
        },
    }
}

/// A byte offset in a TOML text, as a human finds it: line, column and `[section] key`.
#[derive(Debug, PartialEq, Eq)]
struct Location {
    line: usize,
    column: usize,
    key: String,
}

fn locate(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let this_line = text[line_start..].lines().next().unwrap_or("").trim();

    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    let key = if this_line.starts_with('[') {
        this_line.to_owned()
    } else {
        let name = this_line.split('=').next().unwrap_or("").trim();
        match section {
            Some(section) => format!("{section} {name}"),
            None => name.to_owned(),
        }
    };
    Location { line, column, key }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../config/broker.toml");

    /// The one-line error `text` (as file `file`) is refused with.
    fn rejected(text: &str, file: &str) -> String {
        BrokerConfig::from_toml(text, file).unwrap_err().to_string()
    }

    #[test]
    fn shipped_config_equals_defaults() {
        let parsed = BrokerConfig::from_toml(SHIPPED, "config/broker.toml").unwrap();
        assert_eq!(parsed, BrokerConfig::default());
        assert_eq!(parsed.listener.address.to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn every_shipped_setting_has_a_comment() {
        let lines: Vec<&str> = SHIPPED.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains('=') && !line.trim_start().starts_with('#') {
                assert!(
                    i > 0 && lines[i - 1].trim_start().starts_with('#'),
                    "setting without comment: {line}"
                );
            }
        }
    }

    #[test]
    fn empty_file_means_defaults_and_partial_file_overrides() {
        assert_eq!(
            BrokerConfig::from_toml("", "x").unwrap(),
            BrokerConfig::default()
        );
        let c = BrokerConfig::from_toml("[router]\nmax_segment_count = 3\n", "x").unwrap();
        assert_eq!(c.router.max_segment_count, 3);
        assert_eq!(
            c.router.max_segment_size,
            RouterConfig::default().max_segment_size
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[listener]\naddress = \"127.0.0.1:1\"\nbogus = 1\n";
        let err = rejected(text, "my.toml");
        assert!(
            err.starts_with("my.toml:3:1: [listener] bogus: unknown field `bogus`"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn unknown_section_and_wrong_type_are_one_line() {
        let err = rejected("[nope]\n", "f.toml");
        assert!(err.starts_with("f.toml:1:"), "{err}");
        assert!(err.contains("nope"), "{err}");

        let text = "[connections]\nmax_payload_size = \"big\"\n";
        let err = rejected(text, "f.toml");
        assert!(
            err.starts_with("f.toml:2:20: [connections] max_payload_size: invalid type"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn bad_address_and_overflowing_timeout_are_rejected() {
        let err = rejected("[listener]\naddress = \"localhost\"\n", "f");
        assert!(err.contains("[listener] address"), "{err}");
        let err = rejected("[connections]\nconnection_timeout_ms = 70000\n", "f");
        assert!(err.contains("[connections] connection_timeout_ms"), "{err}");
    }

    #[test]
    fn zero_and_too_small_values_are_invalid() {
        for (text, key) in [
            (
                "[router]\nmax_segment_size = 512\n",
                "[router] max_segment_size",
            ),
            (
                "[router]\nmax_segment_count = 0\n",
                "[router] max_segment_count",
            ),
            (
                "[router]\nmax_outgoing_packet_count = 0\n",
                "[router] max_outgoing_packet_count",
            ),
            (
                "[connections]\nmax_payload_size = 0\n",
                "[connections] max_payload_size",
            ),
            (
                "[connections]\nmax_inflight_count = 0\n",
                "[connections] read_batch",
            ),
            (
                "[connections]\nmax_inflight_messages = 70000\n",
                "[connections] max_inflight_messages",
            ),
            (
                "[connections]\nmax_connections = 0\n",
                "[connections] max_connections",
            ),
            (
                "[connections]\nconnection_timeout_ms = 0\n",
                "[connections] connection_timeout_ms",
            ),
        ] {
            let err = rejected(text, "f.toml");
            assert!(err.starts_with(&format!("f.toml: {key} = ")), "{err}");
        }
    }

    #[test]
    fn maps_onto_the_routers_configuration() {
        let r = BrokerConfig::default().router_config();
        assert_eq!(r.max_segment_count, 4);
        assert_eq!(r.max_segment_size, 256 * 1024);
        assert!(r.max_connections > 10_000);
        let limits = BrokerConfig::default().limits();
        assert_eq!(limits.max_packet, 256 * 1024);
        assert_eq!(limits.read_batch, 100);
        assert_eq!(limits.max_inflight, 1000);
    }

    #[test]
    fn locate_finds_section_and_key() {
        let text = "# c\n[a]\nx = 1\n\n[b]\n  y = 2\n";
        let at = locate(text, text.find("y").unwrap());
        assert_eq!(
            at,
            Location {
                line: 6,
                column: 3,
                key: "[b] y".into()
            }
        );
        let at = locate(text, text.find("[b]").unwrap());
        assert_eq!(at.key, "[b]");
    }
}
