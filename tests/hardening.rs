//! The broker faces devices that send garbage, clients that never authenticate and networks
//! where anyone listens. These stories attack the real `mqtt-broker` on loopback and check
//! that it refuses what it must, with the right CONNACK code where MQTT has one, and keeps
//! serving everyone else: after every attack a fresh QoS 1 client still publishes and
//! receives, and a QoS 1 stream running through the whole battery loses nothing.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::hardening::{
    assert_alive, connect, connect_login, connect_with, field, packet, publish, run, subscribe,
    Raw, Rng, Stream, WAIT,
};
use support::{bin, closed_port, num, publish as run_publisher, Broker, Subscriber};

/// A broker with tight limits, so that each one can be broken quickly.
const BATTERY_CONFIG: &str = "\
[connections]
connection_timeout_ms = 1000
max_payload_size = 65536
max_client_id_len = 64
";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `bytes` on a fresh connection and expects the broker to close it.
fn closes(addr: SocketAddr, bytes: &[u8]) {
    let mut c = Raw::open(addr);
    c.send(bytes);
    assert!(c.closed_within(WAIT), "broker kept the connection open");
}

/// Completes a handshake, sends `bytes`, and expects the broker to close the connection.
fn closes_after_connect(addr: SocketAddr, bytes: &[u8]) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "bad-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut c = Raw::connected(addr, &id);
    c.send(bytes);
    assert!(c.closed_within(WAIT), "broker kept the connection open");
}

/// Sends a CONNECT and expects exactly CONNACK `code`, then the close.
fn connack(addr: SocketAddr, connect: &[u8], code: u8) {
    let mut c = Raw::open(addr);
    c.send(connect);
    assert_eq!(c.read_n(4), [0x20, 2, 0, code], "CONNACK code");
    assert!(c.closed_within(WAIT), "closed after the refusal");
}

type Case = (&'static str, Box<dyn Fn(SocketAddr)>);

fn cases() -> Vec<Case> {
    let pad = |n: usize| vec![b'x'; n];
    vec![
        // --- the handshake ---
        (
            "HTTP request instead of MQTT",
            Box::new(|a| closes(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
        ),
        (
            "TLS ClientHello on the plain port",
            Box::new(|a| closes(a, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])),
        ),
        (
            "first packet is a PUBLISH, not a CONNECT",
            Box::new(|a| closes(a, &publish(b"t", 0, 0, b"x"))),
        ),
        (
            "CONNECT with a bad protocol name",
            Box::new(|a| {
                let mut p = connect("x");
                p[4] = b'X';
                closes(a, &p)
            }),
        ),
        (
            "CONNECT for MQTT 3.1 (level 3): CONNACK 1",
            Box::new(|a| connack(a, &connect_with(3, 2, 60, b"old", &[]), 1)),
        ),
        (
            "CONNECT for MQTT 5 (level 5): CONNACK 1",
            Box::new(|a| connack(a, &connect_with(5, 2, 60, b"new", &[]), 1)),
        ),
        (
            "client id over max_client_id_len: CONNACK 2",
            Box::new(|a| connack(a, &connect_with(4, 2, 60, &[b'i'; 65], &[]), 2)),
        ),
        (
            "empty client id with a persistent session: CONNACK 2",
            Box::new(|a| connack(a, &connect_with(4, 0, 60, b"", &[]), 2)),
        ),
        (
            "CONNECT reserved flag set",
            Box::new(|a| closes(a, &connect_with(4, 0x03, 60, b"r", &[]))),
        ),
        (
            "password flag without a user name",
            Box::new(|a| closes(a, &connect_with(4, 0x42, 60, b"p", &field(b"pw")))),
        ),
        (
            "client id that is not UTF-8",
            Box::new(|a| closes(a, &connect_with(4, 2, 60, &[0xC3, 0x28], &[]))),
        ),
        (
            "will with a wildcard topic",
            Box::new(|a| {
                let mut rest = field(b"will/#");
                rest.extend(field(b"bye"));
                closes(a, &connect_with(4, 0x06, 60, b"w", &rest))
            }),
        ),
        (
            "CONNECT with trailing garbage",
            Box::new(|a| closes(a, &connect_with(4, 2, 60, b"t", &[1, 2, 3]))),
        ),
        (
            "truncated CONNECT, then close",
            Box::new(|a| {
                let mut c = Raw::open(a);
                c.send(&connect("truncated")[..8]);
                drop(c);
            }),
        ),
        (
            "truncated CONNECT, then silence (connection_timeout_ms)",
            Box::new(|a| {
                let mut c = Raw::open(a);
                c.send(&connect("silent")[..8]);
                let started = Instant::now();
                assert!(c.closed_within(WAIT));
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{:?}",
                    started.elapsed()
                );
            }),
        ),
        // --- the fixed header ---
        (
            "remaining length with 5 continuation bytes",
            Box::new(|a| closes(a, &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])),
        ),
        (
            "CONNECT claiming 200 MB, then silence",
            Box::new(|a| {
                let mut c = Raw::open(a);
                let mut p = vec![0x10];
                p.extend(support::hardening::remaining_length(200 * 1024 * 1024));
                c.send(&p);
                let started = Instant::now();
                assert!(c.closed_within(WAIT));
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "refused at the header"
                );
            }),
        ),
        (
            "PUBLISH claiming 200 MB after CONNECT, then silence",
            Box::new(|a| {
                let mut p = vec![0x32];
                p.extend(support::hardening::remaining_length(200 * 1024 * 1024));
                closes_after_connect(a, &p)
            }),
        ),
        (
            "reserved packet type 0",
            Box::new(|a| closes_after_connect(a, &[0x00, 0x00])),
        ),
        (
            "reserved packet type 15",
            Box::new(|a| closes_after_connect(a, &[0xF0, 0x00])),
        ),
        (
            "a second CONNECT",
            Box::new(|a| closes_after_connect(a, &connect("again"))),
        ),
        (
            "a CONNACK from the client",
            Box::new(|a| closes_after_connect(a, &[0x20, 2, 0, 0])),
        ),
        (
            "PINGREQ with a body",
            Box::new(|a| closes_after_connect(a, &[0xC0, 1, 0])),
        ),
        (
            "PUBREL with wrong flags",
            Box::new(|a| closes_after_connect(a, &[0x60, 2, 0, 1])),
        ),
        (
            "PUBACK of the wrong length",
            Box::new(|a| closes_after_connect(a, &[0x40, 3, 0, 1, 0])),
        ),
        // --- PUBLISH ---
        (
            "PUBLISH to a topic with '+'",
            Box::new(|a| closes_after_connect(a, &publish(b"a/+/b", 1, 1, b"x"))),
        ),
        (
            "PUBLISH to a topic with '#'",
            Box::new(|a| closes_after_connect(a, &publish(b"a/#", 0, 0, b"x"))),
        ),
        (
            "PUBLISH to $SYS: acknowledged, delivered to no one, connection kept",
            Box::new(|a| {
                let mut c = Raw::connected(a, "dollar-publisher");
                c.send(&publish(b"$SYS/broker/x", 1, 7, b"x"));
                assert_eq!(c.read_packet(), (0x40, vec![0, 7]), "PUBACK");
                c.send(&[0xC0, 0]);
                assert_eq!(c.read_packet(), (0xD0, vec![]), "PINGRESP: still connected");
            }),
        ),
        (
            "PUBLISH to an empty topic",
            Box::new(|a| closes_after_connect(a, &publish(b"", 0, 0, b"x"))),
        ),
        (
            "PUBLISH topic that is not UTF-8",
            Box::new(|a| closes_after_connect(a, &publish(&[0xFF, 0xFE], 0, 0, b"x"))),
        ),
        (
            "PUBLISH topic with U+0000",
            Box::new(|a| closes_after_connect(a, &publish(b"a\0b", 0, 0, b"x"))),
        ),
        (
            "PUBLISH with QoS 3",
            Box::new(|a| closes_after_connect(a, &packet(0x36, &[0, 1, b't', 0, 1]))),
        ),
        (
            "PUBLISH at QoS 1 with packet id 0",
            Box::new(|a| closes_after_connect(a, &publish(b"t", 1, 0, b"x"))),
        ),
        (
            "PUBLISH whose topic length overruns the packet",
            Box::new(|a| closes_after_connect(a, &packet(0x30, &[0, 50, b't']))),
        ),
        (
            "PUBLISH over max_payload_size",
            Box::new(move |a| closes_after_connect(a, &publish(b"big", 1, 1, &pad(70_000)))),
        ),
        (
            "truncated PUBLISH, then close",
            Box::new(|a| {
                let mut c = Raw::connected(a, "trunc-pub");
                c.send(&publish(b"stream/data", 1, 1, b"1234567890")[..9]);
                drop(c);
            }),
        ),
        // --- SUBSCRIBE and UNSUBSCRIBE ---
        (
            "SUBSCRIBE with '#' not last",
            Box::new(|a| closes_after_connect(a, &subscribe(b"a/#/b", 1))),
        ),
        (
            "SUBSCRIBE with '+' inside a level",
            Box::new(|a| closes_after_connect(a, &subscribe(b"a+/b", 1))),
        ),
        (
            "SUBSCRIBE with an empty filter",
            Box::new(|a| closes_after_connect(a, &subscribe(b"", 1))),
        ),
        (
            "SUBSCRIBE with QoS 3",
            Box::new(|a| closes_after_connect(a, &subscribe(b"a", 3))),
        ),
        (
            "SUBSCRIBE with wrong flags",
            Box::new(|a| closes_after_connect(a, &packet(0x80, &[0, 1, 0, 1, b'a', 1]))),
        ),
        (
            "SUBSCRIBE without a filter",
            Box::new(|a| closes_after_connect(a, &packet(0x82, &[0, 1]))),
        ),
        (
            "SUBSCRIBE with packet id 0",
            Box::new(|a| closes_after_connect(a, &packet(0x82, &[0, 0, 0, 1, b'a', 1]))),
        ),
        (
            "UNSUBSCRIBE without a filter",
            Box::new(|a| closes_after_connect(a, &packet(0xA2, &[0, 1]))),
        ),
        (
            "$share subscription from a persistent session: SUBACK 0x80",
            Box::new(|a| {
                let mut c = Raw::open(a);
                c.send(&connect_with(4, 0x00, 60, b"shared-persistent", &[]));
                assert_eq!(c.read_n(4), [0x20, 2, 0, 0]);
                c.send(&subscribe(b"$share/g/stream/data", 1));
                assert_eq!(c.read_packet(), (0x90, vec![0, 1, 0x80]));
            }),
        ),
        (
            "$share and ordinary filters in one SUBSCRIBE from a persistent session",
            Box::new(|a| {
                let mut c = Raw::open(a);
                c.send(&connect_with(4, 0x00, 60, b"shared-mixed", &[]));
                assert_eq!(c.read_n(4), [0x20, 2, 0, 0]);
                let mut body = vec![0, 1];
                body.extend(field(b"$share/g/x"));
                body.push(1);
                body.extend(field(b"x"));
                body.push(1);
                c.send(&packet(0x82, &body));
                // The shared filter is refused, the ordinary one granted.
                assert_eq!(c.read_packet(), (0x90, vec![0, 1, 0x80, 1]));
            }),
        ),
        (
            "SUBSCRIBE to a $ filter: refused (0x80), connection kept",
            Box::new(|a| {
                let mut c = Raw::connected(a, "dollar-subscriber");
                c.send(&subscribe(b"$SYS/#", 1));
                assert_eq!(c.read_packet(), (0x90, vec![0, 1, 0x80]));
            }),
        ),
        // --- resource exhaustion ---
        (
            "300 random byte strings after a valid CONNECT",
            Box::new(|a| {
                let mut rng = Rng(0x5EED_1234_ABCD_0001);
                for i in 0..300 {
                    let mut c = Raw::connected(a, &format!("fuzz-{i}"));
                    c.send(&rng.bytes(64));
                    // Most are refused at once; the rest wait for more bytes until we go.
                    drop(c);
                }
            }),
        ),
        (
            "300 random byte strings instead of a CONNECT",
            Box::new(|a| {
                let mut rng = Rng(0xBAD_F00D);
                for _ in 0..300 {
                    let mut c = Raw::open(a);
                    c.send(&rng.bytes(64));
                    drop(c);
                }
            }),
        ),
        (
            "a thousand idle sockets",
            Box::new(|a| {
                let idle: Vec<TcpStream> = (0..1000)
                    .map(|_| TcpStream::connect_timeout(&a, WAIT).expect("idle socket"))
                    .collect();
                // While they are all open, the broker still serves.
                assert_alive(a, "a thousand idle sockets (while open)");
                drop(idle);
            }),
        ),
        (
            "keep-alive 0: accepted (MQTT 3.1.1 section 3.1.2.10)",
            Box::new(|a| {
                let mut c = Raw::open(a);
                c.send(&connect_with(4, 2, 0, b"forever", &[]));
                assert_eq!(c.read_n(4), [0x20, 2, 0, 0]);
                c.send(&[0xC0, 0]);
                assert_eq!(c.read_packet(), (0xD0, vec![]));
            }),
        ),
    ]
}

#[test]
fn bad_input_battery_leaves_the_broker_serving_and_loses_nothing() {
    let broker = Broker::start_with_config(BATTERY_CONFIG);
    let a = addr(broker.port);
    let stream = Stream::start(broker.port);

    let cases = cases();
    assert!(cases.len() >= 20);
    for (name, attack) in &cases {
        attack(a);
        assert_alive(a, name);
    }
    let delivered = stream.finish();
    assert!(
        delivered > 100,
        "the stream ran through the battery: {delivered}"
    );

    let stderr = broker.proc.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(" ERROR "), "no ERROR lines:\n{stderr}");
    // One concise line per refused client, rate-limited: no flood.
    assert!(stderr.lines().count() < 100, "{stderr}");
    assert!(stderr.contains("(CONNACK 2)"), "{stderr}");
}

#[test]
fn shared_subscription_disconnect_does_not_kill_routing() {
    // The sequence that panics rumqttd's router: a persistent session joins a $share group,
    // takes QoS 1 messages without acknowledging them and goes away. The front refuses the
    // subscription (SUBACK 0x80) and the session stays connected, receiving nothing.
    let broker = Broker::start();
    let a = addr(broker.port);
    let mut persistent = Raw::open(a);
    persistent.send(&connect_with(4, 0x00, 60, b"group-member", &[]));
    assert_eq!(persistent.read_n(4), [0x20, 2, 0, 0]);
    persistent.send(&subscribe(b"$share/workers/jobs", 1));
    assert_eq!(persistent.read_packet(), (0x90, vec![0, 1, 0x80]));
    let mut publisher = Raw::connected(a, "jobs-pub");
    for i in 1..=20u16 {
        publisher.send(&publish(b"jobs", 1, i, b"job"));
    }
    // Every job is in the broker once it is acknowledged.
    for i in 1..=20u16 {
        assert_eq!(
            publisher.read_packet(),
            (0x40, i.to_be_bytes().to_vec()),
            "PUBACK {i}"
        );
    }
    persistent.send(&[0xC0, 0]);
    assert_eq!(
        persistent.read_packet(),
        (0xD0, vec![]),
        "PINGRESP, no jobs"
    );
    drop(persistent);

    // A clean session may still share: it gets its SUBACK and messages.
    let mut worker = Raw::connected(a, "clean-worker");
    worker.send(&subscribe(b"$share/workers/jobs", 1));
    assert_eq!(worker.read_packet(), (0x90, vec![0, 1, 1]));
    publisher.send(&publish(b"jobs", 1, 99, b"after"));
    loop {
        let (first, body) = worker.read_packet();
        if first >> 4 == 3 && body.ends_with(b"after") {
            break;
        }
    }
    drop(worker);
    assert_alive(a, "shared subscriptions");
    std::thread::sleep(Duration::from_millis(300));
    assert_alive(a, "shared subscriptions, later");
    assert!(!broker.proc.stderr().contains("panicked"));
}

#[test]
fn max_connections_is_answered_with_server_unavailable() {
    let broker = Broker::start_with_config("[connections]\nmax_connections = 3\n");
    let a = addr(broker.port);
    let held: Vec<Raw> = (0..3)
        .map(|i| Raw::connected(a, &format!("held-{i}")))
        .collect();
    connack(a, &connect("one-too-many"), 3);
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Raw::open(a);
        c.send(&connect("after"));
        if c.read_n(4) == [0x20, 2, 0, 0] {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.proc.stderr().contains("max_connections reached"));
}

#[test]
fn the_broker_listens_on_exactly_the_configured_sockets() {
    // One listener by default: no internal port, nothing else (metrics and WebSockets are off
    // unless configured).
    let broker = Broker::start();
    let mut c = Raw::connected(addr(broker.port), "listening-check");
    c.send(&[0xC0, 0]);
    assert_eq!(c.read_packet(), (0xD0, vec![]));
    assert_listening_on(&broker, vec![broker.port]);

    // With TLS too: exactly those two.
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, cert, key) = certificates(&dir);
    let (broker, tls_port) = tls_broker(&cert, &key, &[]);
    assert_listening_on(&broker, vec![broker.port, tls_port]);

    // Every listener there is: MQTT, TLS, WebSockets, metrics. Exactly those four.
    let [ws_port, metrics_port] = [closed_port(), closed_port()];
    let [ws_listen, metrics_listen] =
        [ws_port, metrics_port].map(|port| format!("127.0.0.1:{port}"));
    let (broker, tls_port) = tls_broker(
        &cert,
        &key,
        &[
            "--ws-listen",
            &ws_listen,
            "--metrics-listen",
            &metrics_listen,
        ],
    );
    assert_listening_on(&broker, vec![broker.port, tls_port, ws_port, metrics_port]);
}

/// Asserts that `broker` listens on exactly `ports`, whatever their order.
fn assert_listening_on(broker: &Broker, mut ports: Vec<u16>) {
    ports.sort_unstable();
    assert_eq!(listening_ports(broker.proc.pid()), ports);
}

/// The TCP ports process `pid` listens on: its socket descriptors, matched against the
/// kernel's table of listening sockets.
fn listening_ports(pid: i32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the broker's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is "IP:PORT" in hex; state 0A is LISTEN; field 9 is the inode.
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if inodes.contains(*inode) {
                let port = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// A password file with alice (right password "wonderland") written by `mqtt-broker passwd`.
fn password_file(dir: &tempfile::TempDir) -> String {
    let file = dir.path().join("passwd");
    let file = file.to_str().expect("utf-8").to_owned();
    let (status, _, stderr) = run(
        &bin("mqtt-broker"),
        &["passwd", &file, "alice"],
        &[],
        b"wonderland\n",
        WAIT,
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("added user \"alice\""), "{stderr}");
    let text = std::fs::read_to_string(&file).expect("password file");
    assert!(
        !text.contains("wonderland"),
        "no clear-text password: {text}"
    );
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    file
}

#[test]
fn authentication_refuses_with_codes_and_clear_client_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = password_file(&dir);
    let broker = Broker::start_with(&["--password-file", &file]);
    let a = addr(broker.port);

    // Raw CONNECTs: the CONNACK codes.
    connack(a, &connect("anonymous"), 5);
    connack(a, &connect_login("wrong", "alice", "looking-glass"), 4);
    connack(a, &connect_login("unknown", "mallory", "wonderland"), 4);
    let mut ok = Raw::open(a);
    ok.send(&connect_login("right", "alice", "wonderland"));
    assert_eq!(ok.read_n(4), [0x20, 2, 0, 0]);

    // Our clients: a clear error for each refusal, success with the right credentials.
    let port = broker.port_arg();
    let publisher = bin("mqtt-publisher");
    let base = ["--port", port.as_str(), "--count", "10"];
    let attempt = |extra: &[&str], password: Option<&str>| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let env: Vec<(&str, &str)> = password.map(|p| ("MQTT_PASSWORD", p)).into_iter().collect();
        run(&publisher, &args, &env, b"", Duration::from_secs(30))
    };
    let (status, _, stderr) = attempt(&[], None);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not authorized"), "{stderr}");
    assert!(stderr.contains("--username"), "{stderr}");
    let (status, _, stderr) = attempt(&["--username", "alice"], Some("nope"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad user name or password"), "{stderr}");
    let (status, _, stderr) = attempt(&["--username", "mallory"], Some("wonderland"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad user name or password"), "{stderr}");
    let (status, _, stderr) = attempt(&["--username", "alice"], Some("wonderland"));
    assert!(status.success(), "{stderr}");

    let log = broker.proc.stderr();
    assert!(log.contains("refused client \"wrong\""), "{log}");
    assert!(
        !log.contains("looking-glass"),
        "passwords never logged: {log}"
    );
}

/// `mqtt-broker gen-certs DIR`: a CA and a server certificate for 127.0.0.1.
fn certificates(dir: &tempfile::TempDir) -> (String, String, String) {
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let (status, stdout, stderr) = run(
        &bin("mqtt-broker"),
        &["gen-certs", dir.path().to_str().expect("utf-8")],
        &[],
        b"",
        WAIT,
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

/// A broker with a TLS listener too, on a port of its own (returned), serving `cert` and
/// `key`, and started with `extra` flags.
fn tls_broker(cert: &str, key: &str, extra: &[&str]) -> (Broker, u16) {
    let tls_port = closed_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let mut args = vec![
        "--tls-listen",
        &tls_listen,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    args.extend_from_slice(extra);
    (Broker::start_with(&args), tls_port)
}

#[test]
fn tls_end_to_end_verifies_complete_and_wrong_clients_fail_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = certificates(&dir);
    let (broker, tls_port) = tls_broker(&cert, &key, &[]);
    let tls_addr = addr(tls_port);

    // A silent socket on the TLS port holds up nobody.
    let _silent = TcpStream::connect_timeout(&tls_addr, WAIT).expect("silent socket");

    let count = "20000";
    let tls_args = ["--ca-file", ca.as_str(), "--count", count];
    let subscriber = Subscriber::start(tls_port, &tls_args);
    let started = Instant::now();
    let (status, published, stderr) = run_publisher(tls_port, &tls_args, Duration::from_secs(120));
    assert!(status.success(), "publisher over TLS: {stderr}");
    let (status, verified) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "subscriber over TLS: {verified}");
    assert_eq!(num(&verified, "distinct"), 20_000);
    assert_eq!(verified["complete"], true);
    eprintln!(
        "TLS run: 20000 readings, publisher {} msg/s, subscriber {} msg/s, {:.2} s",
        published["msgs_per_s"],
        verified["msgs_per_s"],
        started.elapsed().as_secs_f64()
    );

    let publisher = bin("mqtt-publisher");
    let port = tls_port.to_string();
    // A plaintext client on the TLS port.
    let (status, _, stderr) = run(
        &publisher,
        &["--port", &port, "--count", "1"],
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not answer in MQTT") && stderr.contains("connect with --tls"),
        "{stderr}"
    );
    // A client that does not trust the broker's CA (another CA).
    let other = tempfile::tempdir().expect("temp dir");
    let (other_ca, _, _) = certificates(&other);
    let (status, _, stderr) = run(
        &publisher,
        &["--port", &port, "--count", "1", "--ca-file", &other_ca],
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");
    // The plain listener still serves beside the TLS one.
    assert_alive(addr(broker.port), "TLS clients");
}
