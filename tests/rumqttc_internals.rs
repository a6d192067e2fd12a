//! The rumqttc behaviours the publisher's ledger and batched writes
//! (crates/publisher/src/ledger.rs) rely on, checked against our real broker, so that a rumqttc that changes one of them fails
//! here, loudly, instead of quietly losing readings. rumqttc is pinned to the version
//! these hold for (=0.25.1 in Cargo.toml); move the pin only with this test green.

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use mqtt_publisher::ledger;
use mqtt_publisher::packet_ids::PacketIds;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS};
use support::Broker;

const N: u16 = 5;
/// How long a batch's write may make no progress.
const STALL: Duration = Duration::from_secs(5);
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

/// A client of our own, connected to `port` with an in-flight window of `window`.
async fn connected(id: &str, port: u16, window: u16) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(window);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    poll_until(&mut eventloop, "CONNACK", 1, |e| {
        matches!(e, Event::Incoming(Incoming::ConnAck(_)))
    })
    .await;
    (client, eventloop)
}

fn reading(i: u8) -> Publish {
    Publish::new("ledger/batch", QoS::AtLeastOnce, vec![i])
}

/// The events rumqttc queued in its state, taken out as the flat-out driver does (which
/// also shows them to its packet ids).
fn queued_events(eventloop: &mut EventLoop, ids: &mut PacketIds) -> Vec<Event> {
    let events: Vec<Event> = eventloop.state.events.drain(..).collect();
    events.iter().for_each(|e| ids.see(e));
    events
}

/// Polls until `n` PUBACKs came, showing every event to `ids`.
async fn acks(eventloop: &mut EventLoop, ids: &mut PacketIds, n: usize) {
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < n {
            let event = eventloop.poll().await.expect("poll");
            ids.see(&event);
            acked += usize::from(matches!(event, Event::Incoming(Incoming::PubAck(_))));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {acked} of {n} acknowledged"));
}

fn published(ids: impl IntoIterator<Item = u16>) -> Vec<Event> {
    ids.into_iter()
        .map(|pkid| Event::Outgoing(Outgoing::Publish(pkid)))
        .collect()
}

/// What the flat-out publisher (crates/publisher/src/batched.rs) relies on when it
/// writes readings in batches through rumqttc's state (`ledger::write_batch`) and polls
/// the event loop only for acknowledgements.
#[tokio::test(flavor = "current_thread")]
async fn batches_go_through_rumqttcs_state_within_its_window() {
    const W: u16 = 5;
    let broker = Broker::start();
    let (_client, mut eventloop) = connected("batch-probe", broker.port, W).await;
    let mut ids = PacketIds::new(W, 1);
    assert_eq!(ledger::room(&eventloop), usize::from(W));

    // 1. A batch takes as many publishes as the window has room for, under our packet
    //    ids; rumqttc counts them in flight and queues an Outgoing::Publish event each.
    let mut queue: VecDeque<Publish> = (0..8).map(reading).collect();
    let handed = ledger::write_batch(&mut eventloop, &mut queue, &mut ids, STALL)
        .await
        .expect("batch written");
    assert_eq!((handed, queue.len()), (usize::from(W), 3));
    assert_eq!(eventloop.state.inflight(), W);
    assert_eq!(ledger::room(&eventloop), 0, "the window is full");
    assert_eq!(
        queued_events(&mut eventloop, &mut ids),
        published(1..=W),
        "rumqttc's state no longer queues one Outgoing::Publish per publish written, \
         under the packet id given: the publisher would miscount"
    );

    // 2. The broker acknowledges all of them (one flush sent them); polling the event
    //    loop frees the window, and the ids.
    acks(&mut eventloop, &mut ids, W.into()).await;
    assert_eq!(eventloop.state.inflight(), 0);
    assert_eq!(ledger::room(&eventloop), usize::from(W));

    // 3. Should rumqttc find an id taken that our ids thought free (here: ids that know
    //    nothing of three publishes in flight), the publish comes back from its
    //    collision slot, the id counts as taken and the next is tried: nothing is left
    //    in the collision slot and nothing is lost or reordered.
    let mut queue: VecDeque<Publish> = (10..13).map(reading).collect();
    ledger::write_batch(&mut eventloop, &mut queue, &mut ids, STALL)
        .await
        .expect("batch written");
    assert_eq!(queued_events(&mut eventloop, &mut ids), published(1..=3));
    let mut unaware = PacketIds::new(W, 1);
    let mut queue: VecDeque<Publish> = (20..24).map(reading).collect();
    let handed = ledger::write_batch(&mut eventloop, &mut queue, &mut unaware, STALL)
        .await
        .expect("batch written");
    assert_eq!((handed, queue.len()), (2, 2));
    assert!(eventloop.state.collision.is_none());
    assert_eq!(queue.front().map(|p| (p.pkid, p.payload[0])), Some((0, 22)));
    let mut events = queued_events(&mut eventloop, &mut ids);
    assert_eq!(
        events.drain(..3).collect::<Vec<_>>(),
        (1..=3)
            .map(|pkid| Event::Outgoing(Outgoing::AwaitAck(pkid)))
            .collect::<Vec<_>>(),
        "rumqttc no longer reports a collision as AwaitAck"
    );
    assert_eq!(events, published(4..=5));
    acks(&mut eventloop, &mut ids, W.into()).await;
    assert_eq!(ledger::room(&eventloop), usize::from(W));

    // 4. After a batch the broker never acknowledged, EventLoop::clean (what the driver
    //    calls when a batch fails, as rumqttc's poll does on an error) hands every
    //    publish in flight to the ledger with its packet id.
    broker.proc.signal(libc::SIGSTOP);
    let mut queue: VecDeque<Publish> = (30..40).map(reading).collect();
    let handed = ledger::write_batch(&mut eventloop, &mut queue, &mut ids, STALL)
        .await
        .expect("batch written");
    assert_eq!(handed, usize::from(W));
    eventloop.clean();
    assert_eq!(ledger::room(&eventloop), 0, "no batch without a connection");
    let unacked = ledger::take_unacknowledged(&mut eventloop);
    assert_eq!(
        (unacked.resends(), unacked.fresh.len()),
        (u64::from(W), 0),
        "EventLoop::clean no longer hands back what write_batch put in flight"
    );
    broker.proc.signal(libc::SIGCONT);
}
