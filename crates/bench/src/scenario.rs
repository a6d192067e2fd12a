//! The rows of the benchmark: which broker, which clients, how much work.

use std::path::PathBuf;

use serde::Serialize;

/// The broker a row runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// Our `mqtt-broker` (rumqttd's router behind our network layer).
    Ours,
    /// Our `mqtt-broker`, the clients on its WebSocket listener (`--ws-listen`, `--ws`).
    #[serde(rename = "ours-websocket")]
    OursWebSocket,
    /// rumqttd 0.20's own broker, network layer and all (`mqtt-baseline broker`), with the
    /// router settings of our defaults' time: the stack ours wraps, as it comes.
    Rumqttd,
    /// Mosquitto from the system, with a temporary configuration of ours.
    Mosquitto,
    /// Three NATS Server nodes from config/nats; publisher on node 1, subscriber (with a
    /// persistent session) on node 2.
    #[serde(rename = "nats-cluster")]
    NatsCluster,
}

/// The clients a row runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clients {
    /// Our `mqtt-publisher` (with these extra flags) and our verifying `mqtt-subscriber`.
    Ours { publisher_args: Vec<String> },
    /// The original demo's Python paho-mqtt scripts (`seed_pub.py`, `seed_sub.py`).
    Seed,
    /// Plain rumqttc clients that publish and count fixed-size messages and verify nothing
    /// else (`mqtt-baseline publish/subscribe`), with this in-flight window.
    Plain { inflight: u16 },
}

/// One row: the same work run `repeat` times.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub group: &'static str,
    pub name: String,
    pub broker: BrokerKind,
    pub clients: Clients,
    /// Readings the subscriber must verify (over all devices).
    pub messages: u64,
    /// Our broker keeps a write-ahead log with this `fsync` mode (`--data-dir`), and the
    /// subscriber is a persistent session (`--client-id`) whose readings it stores.
    pub storage: Option<Storage>,
    /// Readings per second when the publisher is paced (the latency rows).
    pub paced_rate: Option<u64>,
    /// Directory of our binaries for this row.
    #[serde(skip)]
    pub bin_dir: PathBuf,
    /// Directory of the publisher for this row (the "before" row swaps only it).
    #[serde(skip)]
    pub publisher_dir: PathBuf,
}

/// How a row uses the broker's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In memory, but with the persistent subscriber the log rows have: their baseline.
    Memory,
    Interval,
    Always,
    Never,
}

impl Storage {
    /// The `[storage] fsync` value, for the log modes.
    pub fn fsync(self) -> Option<&'static str> {
        match self {
            Storage::Memory => None,
            Storage::Interval => Some("interval"),
            Storage::Always => Some("always"),
            Storage::Never => Some("never"),
        }
    }
}

/// The rates of the latency rows, readings per second.
pub const LATENCY_RATES: [u64; 3] = [1_000, 10_000, 50_000];
/// How long each latency row publishes, in a full run.
const LATENCY_SECONDS: u64 = 5;

/// The brokers of the latency rows, each with its rows' label.
pub const LATENCY_BROKERS: [(BrokerKind, &str); 3] = [
    (BrokerKind::Ours, "ours"),
    (BrokerKind::Rumqttd, "rumqttd's own broker + our clients"),
    (BrokerKind::Mosquitto, "Mosquitto + our clients"),
];

/// The label of `broker`'s latency rows.
pub fn latency_label(broker: BrokerKind) -> &'static str {
    LATENCY_BROKERS
        .iter()
        .find(|(kind, _)| *kind == broker)
        .map_or("", |(_, label)| label)
}

/// Sizes of the benchmark.
pub struct Plan {
    pub quick: bool,
    /// Readings in the headline rows.
    pub messages: u64,
    pub bin_dir: PathBuf,
    /// A publisher from before a change, for a side-by-side "before" row (with the
    /// current broker and subscriber).
    pub baseline_bin_dir: Option<PathBuf>,
    /// Extra flags for our publisher in every row.
    pub publisher_args: Vec<String>,
}

fn ours(args: &[&str], extra: Vec<String>) -> Clients {
    let mut publisher_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    publisher_args.extend(extra);
    Clients::Ours { publisher_args }
}

/// Every row of the benchmark, in table order.
pub fn all(plan: &Plan) -> Vec<Scenario> {
    let n = plan.messages;
    let row = |group, name: String, broker, clients, messages| Scenario {
        group,
        name,
        broker,
        clients,
        messages,
        storage: None,
        paced_rate: None,
        bin_dir: plan.bin_dir.clone(),
        publisher_dir: plan.bin_dir.clone(),
    };
    let count = |n: u64| {
        let mut args = vec!["--count".to_string(), n.to_string()];
        args.extend(plan.publisher_args.iter().cloned());
        args
    };
    let mut rows = vec![row(
        "pipeline",
        "ours: our broker + our clients".into(),
        BrokerKind::Ours,
        ours(&["--payload-size", "100"], count(n)),
        n,
    )];
    if let Some(dir) = &plan.baseline_bin_dir {
        let mut before = rows[0].clone();
        before.name = "ours, publisher before tuning".into();
        before.publisher_dir = dir.clone();
        rows.push(before);
    }
    rows.push(row(
        "pipeline",
        "Mosquitto + our clients".into(),
        BrokerKind::Mosquitto,
        ours(&["--payload-size", "100"], count(n)),
        n,
    ));
    // NATS stores every QoS 1 message in a 3-way replicated stream: a few thousand
    // msg/s, so fewer messages (the N column says how many).
    let nats_n = if plan.quick { 10_000 } else { 20_000 }.min(n);
    rows.push(row(
        "pipeline",
        "NATS 3-node cluster + our clients (pub node 1, sub node 2)".into(),
        BrokerKind::NatsCluster,
        ours(&["--payload-size", "100"], count(nats_n)),
        nats_n,
    ));
    // The network layer: ours against rumqttd's own, each with our verifying clients and
    // with plain rumqttc clients, 61-byte readings as in the demo.
    for (name, broker, clients) in [
        ("ours, 61 B readings", BrokerKind::Ours, ours(&[], count(n))),
        (
            "rumqttd's own broker + plain rumqttc clients (in-flight 500)",
            BrokerKind::Rumqttd,
            Clients::Plain { inflight: 500 },
        ),
        (
            "rumqttd's own broker + our clients",
            BrokerKind::Rumqttd,
            ours(&[], count(n)),
        ),
        (
            "our broker + plain rumqttc clients (in-flight 500)",
            BrokerKind::Ours,
            Clients::Plain { inflight: 500 },
        ),
    ] {
        rows.push(row("network", name.into(), broker, clients, n));
    }
    // The same pipeline over WebSockets, beside the TCP row above.
    rows.push(row(
        "network",
        "ours over WebSockets (--ws), 61 B readings".into(),
        BrokerKind::OursWebSocket,
        ours(&[], count(n)),
        n,
    ));
    let seed_n = if plan.quick { 2_000 } else { 50_000 }.min(n);
    rows.push(row(
        "pipeline",
        "seed demo: Python paho + Mosquitto".into(),
        BrokerKind::Mosquitto,
        Clients::Seed,
        seed_n,
    ));

    // Payload sizes: 16 KB readings at fewer messages, so that the broker's in-memory
    // log (about 1 GiB) is never the subject of the row.
    for (size, label, msgs) in [
        (100u32, "100 B", n / 4),
        (1024, "1 KB", n / 4),
        (16 * 1024, "16 KB", (n / 50).max(100)),
    ] {
        rows.push(row(
            "payload",
            format!("ours, {label} payload"),
            BrokerKind::Ours,
            ours(&["--payload-size", &size.to_string()], count(msgs)),
            msgs,
        ));
    }
    for devices in [1u64, 10, 100] {
        let per_device = (n / 4 / devices).max(1);
        rows.push(row(
            "devices",
            format!("ours, {devices} device(s)"),
            BrokerKind::Ours,
            ours(
                &["--payload-size", "100", "--devices", &devices.to_string()],
                count(per_device),
            ),
            per_device * devices,
        ));
    }
    // The write-ahead log: each fsync mode against the in-memory broker, all with a
    // persistent subscriber (whose readings the log keeps).
    for (storage, label) in [
        (Storage::Memory, "ours in memory, persistent subscriber"),
        (Storage::Interval, "ours, write-ahead log, fsync = interval"),
        (Storage::Always, "ours, write-ahead log, fsync = always"),
        (Storage::Never, "ours, write-ahead log, fsync = never"),
    ] {
        let mut r = row(
            "storage",
            label.into(),
            BrokerKind::Ours,
            ours(&["--payload-size", "100"], count(n)),
            n,
        );
        r.storage = Some(storage);
        rows.push(r);
    }
    // Latency at fixed rates: the same paced publisher through each broker, 61-byte
    // readings as in the one-at-a-time probe. Each row runs LATENCY_SECONDS of readings
    // (a fraction of a second in a quick run).
    for rate in LATENCY_RATES {
        let msgs = if plan.quick {
            (rate / 5).clamp(200, 2_000)
        } else {
            rate * LATENCY_SECONDS
        };
        for (broker, label) in LATENCY_BROKERS {
            let mut r = row(
                "latency",
                format!("{label}, paced at {rate} msg/s"),
                broker,
                ours(&["--rate", &rate.to_string()], count(msgs)),
                msgs,
            );
            r.paced_rate = Some(rate);
            rows.push(r);
        }
    }
    if !plan.quick {
        for exp in [5u32, 6, 7] {
            let msgs = 10u64.pow(exp);
            rows.push(row(
                "linearity",
                format!("ours, 10^{exp} messages"),
                BrokerKind::Ours,
                ours(&["--payload-size", "100"], count(msgs)),
                msgs,
            ));
        }
    }
    rows
}
