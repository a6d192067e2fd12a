//! The rumqttc behaviours the publisher's ledger (crates/publisher/src/ledger.rs) relies
//! on, checked against our real broker, so that a rumqttc that changes one of them fails
//! here, loudly, instead of quietly losing readings. rumqttc is pinned to the version
//! these hold for (=0.25.1 in Cargo.toml); move the pin only with this test green.

mod support;

use std::time::Duration;

use mqtt_publisher::ledger;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use support::Broker;

const N: u16 = 5;
const WAIT: Duration = Duration::from_secs(10);

/// Polls `eventloop` until `done(event)` has held `count` times; panics with `what` after
/// [`WAIT`] or on a connection error.
async fn poll_until(
    eventloop: &mut EventLoop,
    what: &str,
    count: usize,
    done: impl Fn(&Event) -> bool,
) {
    let mut seen = 0;
    let wait = async {
        while seen < count {
            match eventloop.poll().await {
                Ok(event) if done(&event) => seen += 1,
                Ok(_) => {}
                Err(e) => panic!("{what}: connection error {e}"),
            }
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!("{what}: only {seen} of {count} within {WAIT:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_ledger_keeps_what_a_restarted_broker_lost() {
    let broker = Broker::start();
    let port = broker.port;
    let mut options = MqttOptions::new("ledger-probe", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    poll_until(&mut eventloop, "CONNACK", 1, |e| {
        matches!(e, Event::Incoming(Incoming::ConnAck(_)))
    })
    .await;

    // The broker stops answering: the publishes go out and stay unacknowledged.
    broker.proc.signal(libc::SIGSTOP);
    for i in 0..N {
        client
            .publish("ledger/probe", QoS::AtLeastOnce, false, vec![i as u8])
            .await
            .expect("request channel");
    }
    poll_until(&mut eventloop, "publishes written", N.into(), |e| {
        matches!(e, Event::Outgoing(Outgoing::Publish(_)))
    })
    .await;
    let mut broker = broker;
    broker.proc.signal(libc::SIGKILL);
    broker.proc.wait(WAIT);
    let lost = tokio::time::timeout(WAIT, eventloop.poll()).await;
    assert!(
        matches!(lost, Ok(Err(_))),
        "the dead broker's connection did not fail: {lost:?}"
    );

    // 1. rumqttc moves the unacknowledged publishes, with their packet ids, into
    //    EventLoop::pending (its state.clean()); that is where the ledger takes them.
    let unacked = ledger::take_unacknowledged(&mut eventloop);
    assert_eq!(
        (unacked.resends(), unacked.fresh.len()),
        (u64::from(N), 0),
        "rumqttc no longer leaves the lost connection's unacknowledged publishes in \
         EventLoop::pending with their packet ids: crates/publisher/src/ledger.rs would \
         lose readings"
    );

    // 2. A CONNACK without a session makes rumqttc clear its pending queue: the reason
    //    the ledger goes back only after the CONNACK.
    eventloop.pending = unacked.ledger.clone();
    let _restarted = Broker::start_with_listen(&format!("127.0.0.1:{port}"));
    let connack = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => return ack,
                Ok(_) => {}
                // Until the restarted broker listens.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a CONNACK from the restarted broker");
    assert!(
        !connack.session_present,
        "a restarted broker has no session"
    );
    assert!(
        eventloop.pending.is_empty(),
        "rumqttc kept its pending queue across a CONNACK without a session: the ledger \
         would now send every reading twice"
    );

    // 3. Written again through rumqttc's state and network, the ledger's publishes go
    //    out as Outgoing::Publish events (the publisher counts them as resends) and the
    //    broker acknowledges every one.
    ledger::send_again(&mut eventloop, unacked.ledger).await;
    let mut outgoing = 0;
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < N {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => outgoing += 1,
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("after resending: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("resent through rumqttc's state: {outgoing} written, {acked} of {N} acknowledged")
    });
    assert_eq!(
        outgoing, N,
        "rumqttc's state no longer reports what send_again wrote as Outgoing::Publish"
    );
}
