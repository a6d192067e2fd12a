//! Access control: an ACL file in Mosquitto's syntax decides what each client may publish,
//! subscribe to and receive. Real broker, real clients on loopback.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;

use support::hardening::WAIT;
use support::mqtt::{topics, Client, Options};
use support::{run_quick, Broker};

/// Writes `text` to an ACL file in `dir`.
fn acl_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("acl");
    std::fs::write(&path, text).expect("write the ACL file");
    path
}

/// A broker enforcing the ACL `text` (read once, at start), and its address.
fn broker_with_acl(text: &str) -> (Broker, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let acl = acl_file(&dir, text);
    let broker = Broker::start_with(&["--acl-file", acl.to_str().unwrap()]);
    let a = broker.addr();
    (broker, a)
}

const DEVICES: &str = "\
# devices write their own readings and read nothing
pattern write sensors/data/%c

user reader
topic read sensors/#
topic deny sensors/secret

user admin
topic readwrite #
";

#[test]
fn a_device_writes_only_its_own_topic_and_a_reader_gets_only_what_it_may_read() {
    let (_broker, a) = broker_with_acl(DEVICES);

    let (mut reader, _) = Client::connect(a, &Options::new("r1").login("reader", "x"));
    assert_eq!(reader.subscribe(&[("sensors/#", 1)]), [1]);
    let (mut d1, _) = Client::connect(a, &Options::new("d1"));
    // Reading nothing: a subscription to anything is refused, the connection stays.
    assert_eq!(
        d1.subscribe(&[("#", 1), ("sensors/data/d1", 1)]),
        [0x80, 0x80]
    );
    // A publish elsewhere is acknowledged and delivered to no one; its own topic works.
    d1.publish("sensors/data/d2", b"forged", 1, false);
    d1.publish("sensors/other", b"forged", 1, false);
    d1.publish("sensors/data/d1", b"mine", 1, false);
    let got = reader.messages_until(WAIT, |m| m.payload == b"mine");
    assert_eq!(topics(&got), ["sensors/data/d1"], "{got:?}");

    // The reader's wildcard never brings it what it may not read.
    let (mut admin, _) = Client::connect(a, &Options::new("a1").login("admin", "x"));
    admin.publish("sensors/secret", b"hidden", 1, false);
    admin.publish("sensors/open", b"marker", 1, false);
    let got = reader.messages_until(WAIT, |m| m.payload == b"marker");
    assert_eq!(topics(&got), ["sensors/open"], "{got:?}");
    // Wholly denied filters are refused at SUBSCRIBE; unknown users get nothing.
    assert_eq!(reader.subscribe(&[("sensors/secret", 1)]), [0x80]);
    let (mut stranger, _) = Client::connect(a, &Options::new("m1").login("mallory", "x"));
    assert_eq!(stranger.subscribe(&[("sensors/#", 1)]), [0x80]);
    reader.ping();
    d1.ping();
}

#[test]
fn withheld_messages_keep_the_routers_window_in_order_for_persistent_and_qos2_readers() {
    // Under the router's own window (a persistent session; QoS 2) the broker acknowledges
    // the messages a reader may not see in their place: the reader gets all the others, in
    // order, and is never disconnected for acknowledging out of order.
    let (_broker, a) = broker_with_acl(DEVICES);
    let (mut persistent, _) = Client::connect(
        a,
        &Options::new("r-persistent")
            .login("reader", "x")
            .persistent(),
    );
    persistent.subscribe(&[("sensors/#", 1)]);
    let (mut exactly_once, _) = Client::connect(a, &Options::new("r-qos2").login("reader", "x"));
    exactly_once.subscribe(&[("sensors/#", 2)]);
    let (mut admin, _) = Client::connect(a, &Options::new("a1").login("admin", "x"));
    for i in 0..300u32 {
        let topic = if i % 3 == 0 {
            "sensors/secret"
        } else {
            "sensors/open"
        };
        admin.publish(topic, &i.to_be_bytes(), 1, false);
    }
    let expected: Vec<[u8; 4]> = (0..300u32)
        .filter(|i| i % 3 != 0)
        .map(u32::to_be_bytes)
        .collect();
    for reader in [&mut persistent, &mut exactly_once] {
        let got = reader.messages_until(WAIT, |m| m.payload == 299u32.to_be_bytes());
        let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
        let want: Vec<&[u8]> = expected.iter().map(|p| &p[..]).collect();
        assert_eq!(payloads, want);
        reader.ping();
    }
    // The persistent session comes back to nothing left over: everything was acknowledged.
    persistent.disconnect();
    let (mut back, present) = Client::connect(
        a,
        &Options::new("r-persistent")
            .login("reader", "x")
            .persistent(),
    );
    assert!(present);
    admin.publish("sensors/open", b"after", 1, false);
    let got = back.messages_until(WAIT, |m| m.payload == b"after");
    assert_eq!(got.len(), 1, "nothing redelivered: {got:?}");
}

#[test]
fn with_a_deny_rule_the_paho_subscribe_failure_test_gets_its_0x80() {
    // The ACL the Eclipse Paho interoperability suite expects for test_subscribe_failure.
    let (_broker, a) = broker_with_acl("topic readwrite #\ntopic deny test/nosubscribe\n");
    let (mut client, _) = Client::connect(a, &Options::new("myclientid"));
    assert_eq!(client.subscribe(&[("test/nosubscribe", 2)]), [0x80]);
    // Everything else still works, wildcards included.
    assert_eq!(client.subscribe(&[("+/+", 2), ("#", 1)]), [2, 1]);
    client.publish("test/nosubscribe", b"hidden", 1, false);
    client.publish("TopicA/B", b"seen", 1, false);
    let got = client.messages_until(WAIT, |m| m.payload == b"seen" && m.qos == 2);
    assert!(got.iter().all(|m| m.topic != "test/nosubscribe"), "{got:?}");
}

#[test]
fn a_malformed_acl_is_a_one_line_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let acl = acl_file(&dir, "topic read sensors/#\ntopic write a/#/b\n");
    let path = acl.to_str().unwrap();
    for args in [
        vec!["--listen", "127.0.0.1:0", "--acl-file", path],
        vec!["--acl-file", path, "--check-config"],
    ] {
        let (status, _, stderr) = run_quick("mqtt-broker", &args);
        assert_eq!(status.code(), Some(1), "{stderr}");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(
            error.contains(&format!("ACL file {path}, line 2")),
            "{error}"
        );
        assert!(error.contains("'#' must be a whole last level"), "{error}");
    }
    let (status, stdout, stderr) = run_quick(
        "mqtt-broker",
        &["--acl-file", "config/acl.example", "--check-config"],
    );
    assert!(status.success(), "the shipped example is valid: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}
