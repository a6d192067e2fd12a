//! Several brokers for one client: `--broker HOST:PORT` (repeatable) or `MQTT_BROKERS`.
//! A client connects to the first that answers and, when its connection is lost and
//! the broker does not come back, moves on to the next, keeping its event loop (and so
//! its counts, its in-flight publishes and its ledger).
//!
//! rumqttc has no setter for the broker address, so moving on means rebuilding the
//! options with the same settings (see [`retarget`]); the event loop's state is kept.

use std::fmt;
use std::str::FromStr;

use rumqttc::{EventLoop, MqttOptions, Transport};

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = String;

    /// `host:port`, `1.2.3.4:port` or `[::1]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let hint = || format!("{s:?} is not HOST:PORT (for example 127.0.0.1:1883 or [::1]:1883)");
        let (host, port) = s.rsplit_once(':').ok_or_else(hint)?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(hint)?,
            None if host.contains(':') => return Err(hint()),
            None => host,
        };
        let port: u16 = port.parse().map_err(|_| hint())?;
        if host.is_empty() {
            return Err(hint());
        }
        if port == 0 {
            return Err(format!("{s:?}: port 0 cannot be connected to"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The broker `eventloop` connects to (or tried last).
pub fn current(eventloop: &EventLoop) -> Endpoint {
    let (addr, port) = eventloop.mqtt_options.broker_address();
    match ws_endpoint(&addr) {
        Some(endpoint) => endpoint,
        None => Endpoint { host: addr, port },
    }
}

/// The path MQTT over WebSockets is served at by convention (Mosquitto, EMQX, ours).
const WS_PATH: &str = "/mqtt";

/// What rumqttc wants as the broker address for `transport`: the host, or for WebSockets
/// (whose address rumqttc takes from a URL) `ws://HOST:PORT/mqtt` or `wss://...`.
pub(crate) fn broker_addr(transport: &Transport, at: &Endpoint) -> String {
    match transport {
        Transport::Ws => format!("ws://{at}{WS_PATH}"),
        Transport::Wss(_) => format!("wss://{at}{WS_PATH}"),
        _ => at.host.clone(),
    }
}

/// The endpoint in a WebSocket URL made by [`broker_addr`].
fn ws_endpoint(addr: &str) -> Option<Endpoint> {
    let rest = addr
        .strip_prefix("ws://")
        .or_else(|| addr.strip_prefix("wss://"))?;
    rest.strip_suffix(WS_PATH)?.parse().ok()
}

/// Points `eventloop` at `to`; the next poll connects there.
pub fn move_to(eventloop: &mut EventLoop, to: &Endpoint) {
    eventloop.mqtt_options = retarget(&eventloop.mqtt_options, to);
}

/// The endpoint after the current one in `endpoints` (wrapping), or `None` when there
/// is no other to go to.
pub fn next_after<'a>(endpoints: &'a [Endpoint], current: &Endpoint) -> Option<&'a Endpoint> {
    if endpoints.len() < 2 {
        return None;
    }
    let at = endpoints.iter().position(|e| e == current).unwrap_or(0);
    endpoints.get((at + 1) % endpoints.len())
}

/// `options` with another broker address and every setting kept: those our clients use
/// (all made by [`crate::connect::BrokerArgs::options_at`], see the test below) and the
/// others rumqttc has getters for.
pub fn retarget(options: &MqttOptions, to: &Endpoint) -> MqttOptions {
    let transport = options.transport();
    let mut moved = MqttOptions::new(options.client_id(), broker_addr(&transport, to), to.port);
    moved
        .set_transport(transport)
        .set_keep_alive(options.keep_alive())
        .set_clean_session(options.clean_session())
        // `options_at` sets both limits alike; rumqttc has a getter for one only.
        .set_max_packet_size(options.max_packet_size(), options.max_packet_size())
        .set_request_channel_capacity(options.request_channel_capacity())
        .set_pending_throttle(options.pending_throttle())
        .set_inflight(options.inflight())
        .set_manual_acks(options.manual_acks());
    if let Some(login) = options.credentials() {
        moved.set_credentials(login.username, login.password);
    }
    if let Some(will) = options.last_will() {
        moved.set_last_will(will);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for s in ["127.0.0.1:1883", "broker.local:8883", "[::1]:1884"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        assert_eq!("[::1]:1884".parse::<Endpoint>().unwrap().host, "::1");
        for bad in [
            "",
            "host",
            "host:",
            ":1883",
            "host:99999",
            "::1:1883",
            "[::1:1",
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert!(err.contains("is not HOST:PORT"), "{bad}: {err}");
        }
        let err = "host:0".parse::<Endpoint>().unwrap_err();
        assert!(err.contains("port 0 cannot be connected to"), "{err}");
    }

    #[test]
    fn websocket_urls_name_the_endpoint_and_give_it_back() {
        for s in ["127.0.0.1:8080", "[::1]:9001", "broker.local:80"] {
            let at: Endpoint = s.parse().unwrap();
            let url = broker_addr(&Transport::Ws, &at);
            assert_eq!(url, format!("ws://{s}/mqtt"));
            assert_eq!(ws_endpoint(&url), Some(at.clone()));
            let url = broker_addr(&Transport::wss_with_config(Default::default()), &at);
            assert_eq!(url, format!("wss://{s}/mqtt"));
            assert_eq!(ws_endpoint(&url), Some(at.clone()));
            assert_eq!(broker_addr(&Transport::Tcp, &at), at.host);
        }
    }

    #[test]
    fn next_wraps_around_and_needs_another_broker() {
        let list: Vec<Endpoint> = ["a:1", "b:2", "c:3"].map(|s| s.parse().unwrap()).into();
        assert_eq!(next_after(&list, &list[0]), Some(&list[1]));
        assert_eq!(next_after(&list, &list[2]), Some(&list[0]));
        assert_eq!(next_after(&list[..1], &list[0]), None);
        // A current broker that is not in the list (the --host/--port one) moves to the second.
        assert_eq!(next_after(&list, &"z:9".parse().unwrap()), Some(&list[1]));
    }

    /// Every option either client sets comes from [`BrokerArgs::options_at`], from the
    /// flags and a [`Session`]. Built with every such flag and every session field unlike
    /// rumqttc's defaults (the struct literal makes a new field a compile error here),
    /// the options moved to another broker must be exactly those built for it.
    #[test]
    fn retargeting_keeps_every_option_either_client_sets() {
        use crate::connect::{BrokerArgs, Session};
        use clap::Parser;
        use rumqttc::{TlsConfiguration, Transport};

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            broker: BrokerArgs,
        }
        let cli = Cli::parse_from([
            "x",
            "--broker",
            "a:1",
            "--broker",
            "b:2",
            "--tls",
            "--username",
            "alice",
        ]);
        let [a, b]: [Endpoint; 2] = cli.broker.endpoints().try_into().unwrap();
        let ws = Cli::parse_from(["x", "--broker", "a:1", "--ws"]);
        let session = Session {
            client_id: "ws".into(),
            clean: true,
            inflight: None,
            manual_acks: false,
            request_capacity: 10,
        };
        let moved = retarget(&ws.broker.options_at(&session, &a), &b);
        assert_eq!(moved.broker_address(), ("ws://b:2/mqtt".to_owned(), 2));
        assert!(matches!(moved.transport(), Transport::Ws));
        for session in [
            Session {
                client_id: "dev-7".into(),
                clean: false,
                inflight: Some(77),
                manual_acks: true,
                request_capacity: 33,
            },
            Session {
                client_id: "sub".into(),
                clean: true,
                inflight: None,
                manual_acks: false,
                request_capacity: 200,
            },
        ] {
            let moved = retarget(&cli.broker.options_at(&session, &a), &b);
            let direct = cli.broker.options_at(&session, &b);
            assert_eq!(moved.broker_address(), ("b".to_owned(), 2));
            assert_eq!(format!("{moved:?}"), format!("{direct:?}"), "{session:?}");
            // rumqttc's Debug leaves the transport out.
            match (moved.transport(), direct.transport()) {
                (
                    Transport::Tls(TlsConfiguration::Rustls(moved)),
                    Transport::Tls(TlsConfiguration::Rustls(direct)),
                ) => assert_eq!(format!("{moved:?}"), format!("{direct:?}")),
                _ => panic!("the TLS transport was lost on the way to {b}"),
            }
        }
    }
}
