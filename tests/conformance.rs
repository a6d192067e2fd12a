//! MQTT 3.1.1 behaviours a broker must get right, checked on the real `mqtt-broker` with a
//! client of our own (`support::mqtt`) that connects at keep-alive 0 unless a story says
//! otherwise, as the Eclipse Paho interoperability suite's client does
//! (`interoperability/client_test.py`). The first ten stories cover that suite's ten tests,
//! with its topics; the rest cover what our network layer took over from rumqttd's: session
//! takeover, the will, client ids the router would refuse.
//!
//! No story sleeps to synchronise: where one must show that something did *not* arrive, it
//! sends a marker after it on the same path and checks what came before the marker.

mod support;

use std::time::{Duration, Instant};

use support::hardening::{connect, connect_with, WAIT};
use support::mqtt::{Client, Message, Options, Refused};
use support::Broker;

const TOPICS: [&str; 5] = ["TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"];
const WILDTOPICS: [&str; 7] = ["TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"];

fn payloads(messages: &[Message]) -> Vec<&[u8]> {
    messages.iter().map(|m| m.payload.as_slice()).collect()
}

/// The topics of what `client` receives, up to and including a message on `last`.
fn topics_until(client: &mut Client, last: &str) -> Vec<String> {
    let got = client.messages_until(WAIT, |m| m.topic == last);
    got.into_iter().map(|m| m.topic).collect()
}

#[test]
fn basic_subscribe_publish_at_each_qos_and_a_second_connect_is_refused() {
    let broker = Broker::start();
    let (client, session_present) = Client::connect(broker.addr(), &Options::new("myclientid"));
    assert!(!session_present);
    client.disconnect();

    let (mut client, session_present) = Client::connect(broker.addr(), &Options::new("myclientid"));
    assert!(!session_present, "a clean session has no session present");
    assert_eq!(client.subscribe(&[(TOPICS[0], 2)]), [2]);
    client.publish(TOPICS[0], b"qos 0", 0, false);
    client.publish(TOPICS[0], b"qos 1", 1, false);
    client.publish(TOPICS[0], b"qos 2", 2, false);
    let got = client.messages_until(WAIT, |m| m.payload == b"qos 2");
    assert_eq!(payloads(&got), [&b"qos 0"[..], b"qos 1", b"qos 2"]);

    // A second CONNECT on the same socket is a protocol violation.
    client.send(&connect("myclientid"));
    assert!(
        client.closed_within(WAIT),
        "second CONNECT closes the connection"
    );
    // A wrong protocol name is not MQTT: closed, no CONNACK.
    let mut wrong = connect_with(4, 2, 0, b"myclientid", &[]);
    wrong[4..8].copy_from_slice(b"hjhj");
    let mut raw = support::hardening::Raw::open(broker.addr());
    raw.send(&wrong);
    assert!(raw.closed_within(WAIT));
}

#[test]
fn retained_messages_reach_new_subscribers_and_empty_ones_clear_them() {
    let broker = Broker::start();
    let (mut publisher, _) = Client::connect(broker.addr(), &Options::new("myclientid"));
    publisher.publish(TOPICS[1], b"qos 0", 0, true);
    publisher.publish(TOPICS[2], b"qos 1", 1, true);
    publisher.publish(TOPICS[3], b"qos 2", 2, true);
    let (mut subscriber, _) = Client::connect(broker.addr(), &Options::new("myclientid2"));
    subscriber.subscribe(&[(WILDTOPICS[5], 2)]);
    let mut got: Vec<Message> = (0..3)
        .map(|_| subscriber.next_message(WAIT).expect("a retained message"))
        .collect();
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert!(got.iter().all(|m| m.retain), "{got:?}");
    assert_eq!(payloads(&got), [&b"qos 1"[..], b"qos 0", b"qos 2"]);
    subscriber.disconnect();

    publisher.publish(TOPICS[1], b"", 0, true);
    publisher.publish(TOPICS[2], b"", 1, true);
    publisher.publish(TOPICS[3], b"", 2, true);
    let (mut late, _) = Client::connect(broker.addr(), &Options::new("myclientid2"));
    late.subscribe(&[(WILDTOPICS[5], 2)]);
    publisher.publish("marker/retained", b"marker", 1, false);
    let got = late.messages_until(WAIT, |m| m.topic == "marker/retained");
    assert_eq!(got.len(), 1, "no retained message is left: {got:?}");
}

#[test]
fn a_zero_length_client_id_needs_a_clean_session() {
    let broker = Broker::start();
    let refused = Client::try_connect(broker.addr(), &Options::new("").persistent()).err();
    assert_eq!(
        refused,
        Some(Refused::Code(2)),
        "MQTT-3.1.3-8: identifier rejected"
    );
    let (mut client, _) = Client::connect(broker.addr(), &Options::new(""));
    client.ping();
    client.disconnect();
}

#[test]
fn messages_wait_for_an_offline_persistent_session() {
    let broker = Broker::start();
    let (mut away, session_present) =
        Client::connect(broker.addr(), &Options::new("myclientid").persistent());
    assert!(!session_present);
    away.subscribe(&[(WILDTOPICS[5], 2)]);
    away.disconnect();

    let (mut publisher, _) = Client::connect(broker.addr(), &Options::new("myclientid2"));
    publisher.publish(TOPICS[1], b"qos 0", 0, false);
    publisher.publish(TOPICS[2], b"qos 1", 1, false);
    publisher.publish(TOPICS[3], b"qos 2", 2, false);

    let (mut back, session_present) =
        Client::connect(broker.addr(), &Options::new("myclientid").persistent());
    assert!(session_present, "the session was kept");
    let got = back.messages_until(WAIT, |m| m.payload == b"qos 2");
    // The router queues QoS 0 messages for offline sessions too.
    assert_eq!(payloads(&got), [&b"qos 0"[..], b"qos 1", b"qos 2"]);
}

#[test]
fn overlapping_subscriptions_deliver_once_per_matching_subscription() {
    let broker = Broker::start();
    let (mut client, _) = Client::connect(broker.addr(), &Options::new("myclientid"));
    assert_eq!(
        client.subscribe(&[(WILDTOPICS[6], 2), (WILDTOPICS[0], 1)]),
        [2, 1]
    );
    client.publish(TOPICS[3], b"overlapping topic filters", 2, false);
    // The marker goes through both subscriptions too: once both copies of it are in, so are
    // both copies of the message before it.
    client.publish("TopicA/marker", b"marker", 1, false);
    let mut markers = 0;
    let got = client.messages_until(WAIT, |m| {
        markers += usize::from(m.payload == b"marker");
        markers == 2
    });
    let mut qos: Vec<u8> = got
        .iter()
        .filter(|m| m.payload == b"overlapping topic filters")
        .map(|m| m.qos)
        .collect();
    qos.sort_unstable();
    // One message per matching subscription, each at its subscription's QoS.
    assert_eq!(qos, [1, 2], "{got:?}");
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives_and_keep_alive_0_never_is() {
    let broker = Broker::start();
    let (mut watcher, _) =
        Client::connect(broker.addr(), &Options::new("myclientid2").keep_alive(0));
    watcher.subscribe(&[(TOPICS[4], 2)]);
    let started = Instant::now();
    let (_silent, _) = Client::connect(
        broker.addr(),
        &Options::new("myclientid")
            .keep_alive(2)
            .will(TOPICS[4], b"keepalive expiry", 2),
    );
    let will = watcher
        .next_message(Duration::from_secs(15))
        .expect("the will of the silent client");
    assert_eq!(will.payload, b"keepalive expiry");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(2900),
        "not before 1.5 x 2 s: {after:?}"
    );
    // The watcher (keep-alive 0) has been silent for longer than that, and stays connected.
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    watcher.ping();
}

#[test]
fn unacknowledged_messages_are_redelivered_when_a_persistent_session_reconnects() {
    let broker = Broker::start();
    let options = Options::new("myclientid2").persistent();
    let (mut client, _) = Client::connect(broker.addr(), &options);
    client.subscribe(&[(WILDTOPICS[6], 2)]);
    client.acknowledge = false;
    client.publish(TOPICS[1], b"", 1, false);
    client.publish(TOPICS[3], b"", 2, false);
    let unacked = client.messages_until(WAIT, |m| m.topic == TOPICS[3]);
    assert_eq!(unacked.len(), 2);
    client.disconnect();

    let (mut client, session_present) = Client::connect(broker.addr(), &options);
    assert!(session_present);
    assert_eq!(topics_until(&mut client, TOPICS[3]), [TOPICS[1], TOPICS[3]]);
}

#[test]
fn a_refused_subscription_gets_0x80_and_the_rest_of_the_packet_is_granted() {
    let broker = Broker::start();
    let (mut client, _) = Client::connect(broker.addr(), &Options::new("myclientid"));
    // Until an ACL is configured, `$` filters are what this broker refuses.
    assert_eq!(client.subscribe(&[("$SYS/#", 2)]), [0x80]);
    assert_eq!(
        client.subscribe(&[("$SYS/#", 2), (TOPICS[0], 1)]),
        [0x80, 1]
    );
    client.publish(TOPICS[0], b"granted", 1, false);
    let got = client
        .next_message(WAIT)
        .expect("the granted filter delivers");
    assert_eq!(got.payload, b"granted");
}

#[test]
fn a_publish_to_a_dollar_topic_is_acknowledged_and_reaches_no_one() {
    let broker = Broker::start();
    let (mut client, _) = Client::connect(broker.addr(), &Options::new("myclientid2"));
    client.subscribe(&[(WILDTOPICS[5], 2), (WILDTOPICS[2], 2)]);
    let dollar = format!("${}", TOPICS[1]);
    client.publish(&dollar, b"", 1, false);
    client.publish(TOPICS[1], b"marker", 1, false);
    let got = client.messages_until(WAIT, |m| m.payload == b"marker");
    assert!(got.iter().all(|m| !m.topic.starts_with('$')), "{got:?}");
    client.ping();
}

#[test]
fn unsubscribe_stops_delivery_of_that_filter_only() {
    let broker = Broker::start();
    let (mut subscriber, _) = Client::connect(broker.addr(), &Options::new("myclientid2"));
    for topic in &TOPICS[..3] {
        subscriber.subscribe(&[(topic, 2)]);
    }
    subscriber.unsubscribe(&[TOPICS[0]]);
    // An UNSUBSCRIBE of something not subscribed is answered too (MQTT-3.10.4-5).
    subscriber.unsubscribe(&["never/subscribed"]);
    let (mut publisher, _) = Client::connect(broker.addr(), &Options::new("myclientid"));
    for topic in &TOPICS[..3] {
        publisher.publish(topic, b"", 1, false);
    }
    assert_eq!(
        topics_until(&mut subscriber, TOPICS[2]),
        [TOPICS[1], TOPICS[2]]
    );
}

#[test]
fn a_second_connection_with_the_same_id_takes_the_session_over_and_fires_the_will() {
    let broker = Broker::start();
    let (mut watcher, _) = Client::connect(broker.addr(), &Options::new("watcher"));
    watcher.subscribe(&[("will/#", 1)]);
    let twin = Options::new("twin").will("will/twin", b"first connection gone", 1);
    let (mut first, _) = Client::connect(broker.addr(), &twin);
    let (mut second, _) = Client::connect(broker.addr(), &Options::new("twin"));
    assert!(first.closed_within(WAIT), "the first connection is closed");
    let will = watcher
        .next_message(WAIT)
        .expect("the first connection's will");
    assert_eq!(will.payload, b"first connection gone");
    second.ping();
}

#[test]
fn a_will_is_not_published_after_disconnect() {
    let broker = Broker::start();
    let (mut watcher, _) = Client::connect(broker.addr(), &Options::new("watcher"));
    watcher.subscribe(&[("will/#", 1)]);
    let (polite, _) = Client::connect(
        broker.addr(),
        &Options::new("polite").will("will/polite", b"should not come", 1),
    );
    polite.disconnect();
    let (mut other, _) = Client::connect(broker.addr(), &Options::new("other"));
    other.publish("will/marker", b"marker", 1, false);
    let got = watcher.messages_until(WAIT, |m| m.payload == b"marker");
    assert_eq!(got.len(), 1, "{got:?}");
}

#[test]
fn client_ids_with_characters_the_router_refuses_still_work() {
    let broker = Broker::start();
    let id = "devices/7+#$%";
    let (mut client, _) = Client::connect(broker.addr(), &Options::new(id).persistent());
    assert_eq!(client.subscribe(&[("odd/ids", 1)]), [1]);
    client.disconnect();
    let (mut back, session_present) =
        Client::connect(broker.addr(), &Options::new(id).persistent());
    assert!(session_present, "the session of {id:?} was kept");
    let (mut publisher, _) =
        Client::connect(broker.addr(), &Options::new("devices%2F7%2B%23%24%25"));
    publisher.publish("odd/ids", b"hello", 1, false);
    assert_eq!(
        back.next_message(WAIT).map(|m| m.payload),
        Some(b"hello".to_vec())
    );
}

#[test]
fn a_clean_session_gets_the_brokers_window_and_a_persistent_one_the_routers() {
    let broker = Broker::start_with_config("[connections]\nmax_inflight_messages = 300\n");
    // Received, in order, without acknowledging any: how many come before the flow stops.
    let unacknowledged = |client: &mut Client| {
        let mut got = Vec::new();
        while let Some(message) = client.next_message(Duration::from_millis(500)) {
            got.push(message);
            assert!(got.len() <= 1000, "more than was published");
        }
        got
    };
    let (mut clean, _) = Client::connect(broker.addr(), &Options::new("window-clean"));
    clean.subscribe(&[("window/clean", 1)]);
    clean.acknowledge = false;
    let (mut persistent, _) = Client::connect(
        broker.addr(),
        &Options::new("window-persistent").persistent(),
    );
    persistent.subscribe(&[("window/persistent", 1)]);
    persistent.acknowledge = false;
    let (mut publisher, _) = Client::connect(broker.addr(), &Options::new("window-publisher"));
    for i in 0..1000u32 {
        publisher.publish("window/clean", &i.to_be_bytes(), 1, false);
        publisher.publish("window/persistent", &i.to_be_bytes(), 1, false);
    }
    let got = unacknowledged(&mut clean);
    assert_eq!(
        got.len(),
        300,
        "max_inflight_messages ahead of the acknowledgements"
    );
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, m)| m.payload == (i as u32).to_be_bytes()));
    assert_eq!(
        unacknowledged(&mut persistent).len(),
        100,
        "the router's window"
    );

    // Acknowledging lets the rest come, in order; acknowledgements may come in any order.
    clean.acknowledge = true;
    let mut next = 300u32;
    for pkid in (101..=400u16).rev() {
        clean.send(&support::hardening::packet(0x40, &pkid.to_be_bytes()));
    }
    while let Some(message) = clean.next_message(WAIT) {
        assert_eq!(message.payload, next.to_be_bytes());
        next += 1;
        if next == 1000 {
            break;
        }
    }
    assert_eq!(next, 1000, "all 1000 arrived");
}
