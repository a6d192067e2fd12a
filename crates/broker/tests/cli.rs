//! End-to-end stories for the `mqtt-broker` binary: it says where it listens, it really
//! listens there, it stops cleanly on a signal, and it refuses bad input with one clear line.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::{mqtt_handshake, run_to_end, shipped_config, workspace_root, Broker, TempFile, WAIT};

const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

#[test]
fn port_zero_prints_the_real_address_and_serves_mqtt() {
    let mut broker = Broker::start(&["--listen", "127.0.0.1:0"]);
    let addr = broker.ready();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);

    TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect to the printed address");
    assert_eq!(mqtt_handshake(addr, "story-1"), CONNACK_ACCEPTED);

    stop(&mut broker, libc::SIGTERM);
    assert!(
        broker.stdout_lines().is_empty(),
        "exactly one line on stdout"
    );
    let stderr = broker.stderr();
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn sigint_stops_it_cleanly_too() {
    let mut broker = Broker::start(&["--listen", "127.0.0.1:0"]);
    broker.ready();
    stop(&mut broker, libc::SIGINT);
}

#[test]
fn listen_can_come_from_the_environment() {
    let mut broker = Broker::start_with(
        &[],
        &[("MQTT_BROKER_LISTEN", "127.0.0.1:0")],
        &workspace_root(),
    );
    let addr = broker.ready();
    assert_ne!(addr.port(), 1883);
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stdout, stderr) = run_to_end(&["--listen", &addr], &workspace_root());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        stderr.contains("--listen 127.0.0.1:0"),
        "says what to try: {stderr}"
    );
}

/// Runs the broker with `args` from the workspace root and expects it refused: exit 1
/// and exactly one `error:` line, which is returned.
fn refused(args: &[&str]) -> String {
    let (code, _, stderr) = run_to_end(args, &workspace_root());
    assert_eq!(code, Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

/// Sends `signal` and expects the broker to exit 0 within 5 s.
fn stop(broker: &mut Broker, signal: i32) {
    broker.signal(signal);
    assert_eq!(broker.wait(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn an_unknown_key_or_a_wrong_type_is_a_one_line_error_naming_file_and_key() {
    let cases = [
        (
            "unknown-key.toml",
            "[listener]\nadress = \"127.0.0.1:0\"\n",
            "[listener] adress",
        ),
        (
            "wrong-type.toml",
            "[router]\nmax_segment_count = \"ten\"\n",
            "[router] max_segment_count",
        ),
    ];
    for (name, text, key) in cases {
        let file = TempFile::new(name, text);
        let line = refused(&["--config", file.path()]);
        assert!(line.contains(file.path()), "{line}");
        assert!(line.contains(key), "{line}");
    }
}

#[test]
fn a_value_rumqttd_would_panic_on_is_refused() {
    let file = TempFile::new("tiny-segment.toml", "[router]\nmax_segment_size = 100\n");
    let line = refused(&["--config", file.path(), "--check-config"]);
    assert!(line.contains("[router] max_segment_size = 100"), "{line}");
}

#[test]
fn a_missing_explicit_config_is_an_error() {
    let line = refused(&["--config", "no/such/broker.toml"]);
    assert!(line.contains("no/such/broker.toml"), "{line}");
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let config = shipped_config();
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) =
        run_to_end(&["--config", config, "--check-config"], &workspace_root());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.ends_with("would listen on 127.0.0.1:1883"),
        "{stdout}"
    );

    // Without --config, from the workspace root: the same file, found by default.
    let (code, stdout, _) = run_to_end(&["--check-config"], &workspace_root());
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("config/broker.toml: ok"), "{stdout}");

    // --listen wins over the file.
    let (code, stdout, _) = run_to_end(
        &["--check-config", "--listen", "127.0.0.1:7"],
        &workspace_root(),
    );
    assert_eq!(code, Some(0));
    assert!(stdout.ends_with("would listen on 127.0.0.1:7"), "{stdout}");
}

#[test]
fn without_a_config_file_it_uses_built_in_defaults() {
    let (code, stdout, stderr) = run_to_end(&["--check-config"], &std::env::temp_dir());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "built-in defaults: ok, would listen on 127.0.0.1:1883"
    );
    assert!(stderr.contains("using built-in defaults"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = run_to_end(&["--no-such-flag"], &workspace_root());
    assert_eq!(code, Some(2));
    let (code, _, stderr) = run_to_end(&["--listen", "localhost"], &workspace_root());
    assert_eq!(code, Some(2), "{stderr}");
}

/// Opens and drops `count` TCP connections, and sends garbage on a few more, each time
/// waiting until the broker has closed the connection: then it has dealt with it.
fn abuse(addr: std::net::SocketAddr, count: usize) {
    for _ in 0..count {
        drop(TcpStream::connect_timeout(&addr, WAIT).expect("connect"));
    }
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xFF; 16][..],
        &[0x10, 0x05, b'n', b'o', b'p', b'e', b'!'][..],
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..],
    ] {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        let _ = stream.write_all(garbage);
        assert!(
            closed_by_broker(&mut stream),
            "the broker kept a connection that sent {garbage:?}"
        );
    }
}

/// True once the broker has closed `stream` (EOF or reset), within [`WAIT`].
fn closed_by_broker(stream: &mut TcpStream) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    let mut buf = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn aborted_connections_are_not_errors_and_do_not_harm_the_broker() {
    let mut broker = Broker::start(&["--listen", "127.0.0.1:0"]);
    let addr = broker.ready();
    abuse(addr, 50);
    assert_eq!(mqtt_handshake(addr, "after-abuse"), CONNACK_ACCEPTED);
    stop(&mut broker, libc::SIGTERM);

    let stderr = broker.stderr();
    assert!(
        !stderr.contains("ERROR"),
        "no ERROR lines at the default level:\n{stderr}"
    );
    assert!(!stderr.contains("Error while handling"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes when stderr is a pipe:\n{stderr}"
    );
    assert!(
        stderr.lines().count() < 20,
        "a handful of lines, not one per connection:\n{stderr}"
    );
}

#[test]
fn with_debug_each_aborted_handshake_is_one_debug_line() {
    // The broker's network front sees aborted handshakes first; rumqttd never does.
    let env = [("RUST_LOG", "info,rumqttd=debug,mqtt_broker=debug")];
    let mut broker = Broker::start_with(&["--listen", "127.0.0.1:0"], &env, &workspace_root());
    let addr = broker.ready();
    abuse(addr, 10);
    assert_eq!(mqtt_handshake(addr, "after-abuse"), CONNACK_ACCEPTED);
    stop(&mut broker, libc::SIGTERM);

    let stderr = broker.stderr();
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let handshakes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("connection dropped during handshake"))
        .collect();
    assert!(
        (10..=14).contains(&handshakes.len()),
        "one line per aborted handshake:\n{stderr}"
    );
    assert!(handshakes.iter().all(|l| l.contains(" DEBUG ")), "{stderr}");
}

#[test]
fn check_config_covers_tls_and_the_password_file() {
    let dir = std::env::temp_dir().join(format!("mqtt-broker-cli-tls-{}", std::process::id()));
    let dir_arg = dir.to_str().unwrap();
    let (code, stdout, stderr) = run_to_end(&["gen-certs", dir_arg], &workspace_root());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("ca.pem") && stdout.contains("server.key"),
        "{stdout}"
    );
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");

    let text = format!(
        "[tls]\naddress = \"127.0.0.1:8884\"\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    );
    let file = TempFile::new("tls.toml", &text);
    let (code, stdout, stderr) = run_to_end(
        &["--config", file.path(), "--check-config"],
        &workspace_root(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.ends_with("would listen on 127.0.0.1:1883 and 127.0.0.1:8884 (TLS)"),
        "{stdout}"
    );

    // A TLS address without its files, and files that are not what they claim.
    let file = TempFile::new("tls-nocert.toml", "[tls]\naddress = \"127.0.0.1:8884\"\n");
    let line = refused(&["--config", file.path(), "--check-config"]);
    assert!(line.contains("[tls] cert_file"), "{line}");
    let key_arg = key.to_str().unwrap();
    let line = refused(&[
        "--check-config",
        "--tls-cert",
        key_arg,
        "--tls-key",
        key_arg,
    ]);
    assert!(line.contains("no PEM certificate"), "{line}");

    // A password file with a clear-text password is refused.
    let passwd = TempFile::new("passwd", "alice:wonderland\n");
    let line = refused(&["--check-config", "--password-file", passwd.path()]);
    assert!(line.contains("line 1"), "{line}");

    // A client id limit MQTT does not allow.
    let file = TempFile::new("id.toml", "[connections]\nmax_client_id_len = 5\n");
    let line = refused(&["--config", file.path(), "--check-config"]);
    assert!(
        line.contains("[connections] max_client_id_len = 5"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn anonymous_access_beyond_loopback_is_warned_about() {
    let mut broker = Broker::start(&["--listen", "0.0.0.0:0"]);
    broker.ready();
    stop(&mut broker, libc::SIGTERM);
    let stderr = broker.stderr();
    assert!(stderr.contains("WITHOUT AUTHENTICATION"), "{stderr}");
}
