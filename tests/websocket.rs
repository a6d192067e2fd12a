//! MQTT over WebSockets: the broker's `--ws-listen` listener, off unless asked for, serving
//! third-party (paho-mqtt) and our own clients (`--ws`) with the same verification, limits,
//! authentication and access control as the TCP listener.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::hardening::run;
use support::{bin, num, peers, publish, Broker, Subscriber};

/// A broker with its TCP listener and a WebSocket one, both on ephemeral ports:
/// the broker and its WebSocket port (read from its `listening for WebSockets` line).
fn broker_with_ws(extra: &[&str]) -> (Broker, u16) {
    let mut args = vec!["--ws-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut broker = Broker::start_with(&args);
    const PREFIX: &str = "mqtt-broker listening for WebSockets on ws://127.0.0.1:";
    broker.proc.wait_for_stdout(
        "the WebSocket listener's line",
        Duration::from_secs(10),
        |out| out.contains(PREFIX),
    );
    let stdout = broker.proc.stdout();
    let port = stdout
        .lines()
        .find_map(|line| line.strip_prefix(PREFIX))
        .and_then(|rest| rest.strip_suffix("/mqtt"))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no WebSocket port in {stdout:?}"));
    (broker, port)
}

#[test]
fn our_clients_over_websockets_deliver_every_reading_verified() {
    const N: u64 = 100_000;
    let (broker, ws) = broker_with_ws(&[]);
    let count = N.to_string();
    let over_ws = Subscriber::start(ws, &["--ws", "--count", &count]);
    let over_tcp = Subscriber::start(broker.port, &["--count", &count]);
    let (status, report, stderr) =
        publish(ws, &["--ws", "--count", &count], Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert_eq!(num(&report, "acked"), N, "{report}");
    for subscriber in [over_ws, over_tcp] {
        let (status, verified) = subscriber.finish(Duration::from_secs(60));
        assert!(status.success(), "{verified}");
        assert_eq!(verified["complete"], true, "{verified}");
        assert_eq!(num(&verified, "distinct"), N);
        assert_eq!(num(&verified, "duplicates"), 0);
    }
}

#[test]
fn the_paho_websocket_publisher_feeds_our_tcp_subscriber() {
    let Some(python) = peers::paho_python() else {
        return;
    };
    const N: u64 = 10_000;
    let (broker, ws) = broker_with_ws(&[]);
    let subscriber = Subscriber::start(broker.port, &["--count", &N.to_string()]);
    let seen = peers::paho_check(&python, "wspub", ws, &[&N.to_string()]);
    assert_eq!(seen["acked"], N, "paho over WebSockets: {seen}");

    // The demo's JSON has no checksum: verified by sequence, per device.
    let (status, verified) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "{verified}");
    assert_eq!(verified["complete"], true, "{verified}");
    assert_eq!(num(&verified, "distinct"), N);
    assert_eq!(num(&verified, "missing"), 0);
    assert_eq!(verified["streams"][0]["device_id"], "sensor-1");
}

#[test]
fn websocket_clients_get_the_same_authentication_and_access_control() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    // Anonymous clients may publish readings but read nothing.
    std::fs::write(&acl, "topic write sensors/#\n").expect("write the ACL file");
    let (_broker, ws) = broker_with_ws(&["--acl-file", acl.to_str().unwrap()]);
    let port = ws.to_string();
    let (status, _, stderr) = run(
        &bin("mqtt-subscriber"),
        &["--ws", "--port", &port, "--count", "10"],
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused the subscription"),
        "a clear reason: {stderr}"
    );

    let password_file = dir.path().join("passwd");
    let (status, _, stderr) = run(
        &bin("mqtt-broker"),
        &["passwd", password_file.to_str().unwrap(), "alice"],
        &[],
        b"wonderland\n",
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    let (_broker, ws) = broker_with_ws(&["--password-file", password_file.to_str().unwrap()]);
    let port = ws.to_string();
    let publisher = bin("mqtt-publisher");
    let args = ["--ws", "--port", &port, "--count", "10"];
    let (status, _, stderr) = run(&publisher, &args, &[], b"", Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not authorized"), "{stderr}");
    let mut args = args.to_vec();
    args.extend(["--username", "alice"]);
    let env = [("MQTT_PASSWORD", "wonderland")];
    let (status, _, stderr) = run(&publisher, &args, &env, b"", Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
}

#[test]
fn what_is_not_a_websocket_handshake_is_closed_and_the_listener_keeps_serving() {
    let (broker, ws) = broker_with_ws(&[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], ws));
    // Raw MQTT (a CONNECT) on the WebSocket port: not an HTTP upgrade.
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connect = [
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 4, b'r', b'a', b'w', b'1',
    ];
    raw.write_all(&connect).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the socket was closed, not left open"
    );
    assert!(
        !answer.starts_with(&[0x20]),
        "no CONNACK on a WebSocket port: {answer:?}"
    );
    // An HTTP request that is no upgrade: closed too.
    let mut http = TcpStream::connect(addr).expect("connect");
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let _ = http.read_to_end(&mut Vec::new());
    assert!(started.elapsed() < Duration::from_secs(9), "closed");

    // Meanwhile the listener serves WebSocket clients as before.
    let (status, report, stderr) =
        publish(ws, &["--ws", "--count", "100"], Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert_eq!(num(&report, "acked"), 100);

    // A client on the wrong kind of port is told which flag to check.
    let publisher = bin("mqtt-publisher");
    let mqtt_port = broker.port_arg();
    let wrong = ["--ws", "--port", &mqtt_port, "--count", "1"];
    let (status, _, stderr) = run(&publisher, &wrong, &[], b"", Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("leave --ws out"), "{stderr}");
    let ws_port = ws.to_string();
    let wrong = ["--port", &ws_port, "--count", "1"];
    let (status, _, stderr) = run(&publisher, &wrong, &[], b"", Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs --ws"), "{stderr}");
    drop(broker);

    // Off unless asked for. The broker writes all its listening lines in one write, so the
    // first line's arrival means all of them are there.
    let plain = Broker::start();
    assert!(
        !plain.proc.stdout().contains("WebSockets"),
        "{}",
        plain.proc.stdout()
    );
}
