//! The publisher's ledger across a lost connection and its batched writes: the one place
//! that reaches into rumqttc's internals (`EventLoop::pending`, `state.collision`,
//! `state.events`, `state.inflight()`, and `state` and `network` to write), because its
//! public API can neither keep a reading across a reconnect nor write more than one
//! publish per flush. That is why the workspace pins rumqttc to exactly 0.25.1, and why
//! `tests/rumqttc_internals.rs` checks, against a real broker, every behaviour relied on
//! here: a version that changes one fails that test loudly instead of losing readings.
//!
//! rumqttc keeps what the broker has not acknowledged in its pending queue, but clears
//! that queue when the broker answers the reconnect without a session (always, after a
//! broker restart). We keep a copy and put it back, so no reading is ever dropped by the
//! client; the subscriber can then blame only the broker for what the broker lost.
//!
//! rumqttc's event loop takes one request per wake-up and flushes it on its own (a
//! `writev` per publish, and a timer around each flush); [`write_batch`] hands rumqttc's
//! state machine as many publishes as its in-flight window has room for and flushes once.

use std::collections::VecDeque;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop, Incoming, Publish, Request, StateError};

use crate::packet_ids::PacketIds;

/// What a lost connection left behind.
pub struct Unacknowledged {
    /// Requests that went out before (publishes with a packet id), to write again.
    pub ledger: VecDeque<Request>,
    /// Publishes never sent: rumqttc moved them from its request channel to the pending
    /// queue, plus one held back by a packet-id collision.
    pub fresh: Vec<Publish>,
}

impl Unacknowledged {
    /// Publishes among the ledger: how many outgoing publishes after the reconnect are
    /// resends.
    pub fn resends(&self) -> u64 {
        self.ledger
            .iter()
            .filter(|r| matches!(r, Request::Publish(_)))
            .count() as u64
    }
}

/// Events rumqttc has queued in its state and not yet returned from `poll`: the
/// `Outgoing::Publish` of each publish [`write_batch`] or [`send_again`] wrote, and the
/// rest of a batch of packets read. A driver that writes itself takes them from here.
pub fn queued_events(eventloop: &mut EventLoop) -> std::collections::vec_deque::Drain<'_, Event> {
    eventloop.state.events.drain(..)
}

/// Events of the lost connection rumqttc had queued but not yet returned (a publish
/// whose write failed, acks read in the last batch): they still count. All but one: the
/// acknowledgement that broke the connection, when `lost` says rumqttc found it
/// unsolicited (its state queues an incoming packet's event before judging the packet),
/// acknowledged nothing and must not be counted as if it had.
pub fn events_left(eventloop: &mut EventLoop, lost: &ConnectionError) -> VecDeque<Event> {
    let mut events = std::mem::take(&mut eventloop.state.events);
    if let ConnectionError::MqttState(StateError::Unsolicited(pkid)) = lost {
        let refused = match events.back() {
            Some(Event::Incoming(Incoming::PubAck(ack))) => ack.pkid == *pkid,
            Some(Event::Incoming(Incoming::PubRec(ack))) => ack.pkid == *pkid,
            Some(Event::Incoming(Incoming::PubComp(ack))) => ack.pkid == *pkid,
            _ => false,
        };
        if refused {
            events.pop_back();
        }
    }
    events
}

/// Drops the connection after a failed write, as rumqttc's `poll` does after any error
/// of its own: what was in flight moves to the pending queue, for [`take_unacknowledged`].
pub fn drop_connection(eventloop: &mut EventLoop) {
    if eventloop.network.is_some() {
        eventloop.clean();
    }
}

/// Takes rumqttc's pending queue (where it put the unacknowledged publishes of the lost
/// connection) and its collision slot, split into the ledger and the never-sent.
///
/// The never-sent go back through the request channel, not the pending queue: rumqttc
/// drains that queue past its in-flight limit, so each would take a packet id still held
/// by a resend, and rumqttc keeps only the last of such collisions, silently dropping the
/// others (999 readings lost in a test where a NATS node died with the window full).
pub fn take_unacknowledged(eventloop: &mut EventLoop) -> Unacknowledged {
    let mut queued = std::mem::take(&mut eventloop.pending);
    if let Some(mut collided) = eventloop.state.collision.take() {
        collided.pkid = 0;
        queued.push_back(Request::Publish(collided));
    }
    let mut ledger = VecDeque::with_capacity(queued.len());
    let mut fresh = Vec::new();
    for request in queued {
        match request {
            Request::Publish(p) if p.pkid == 0 => fresh.push(p),
            other => ledger.push_back(other),
        }
    }
    Unacknowledged { ledger, fresh }
}

/// After the CONNACK: puts `ledger` back as rumqttc's pending queue and writes it to the
/// new connection at once, through the same state machine its event loop uses (packet
/// ids, in-flight table, `Outgoing` events). rumqttc itself sends that queue one request
/// per timer tick: its `pending_throttle` sleep rounds even zero up to a millisecond, so
/// a full window of 1,000 resends took a second, and under frequent cuts the publisher
/// never got past its resends (about 1,000 readings/s). A write that fails leaves the
/// rest queued; the next poll sees the broken connection and rumqttc takes back what was
/// written, as usual.
pub async fn send_again(eventloop: &mut EventLoop, ledger: VecDeque<Request>) {
    eventloop.pending = ledger;
    let Some(network) = eventloop.network.as_mut() else {
        return;
    };
    while let Some(request) = eventloop.pending.pop_front() {
        let written = match eventloop.state.handle_outgoing_packet(request) {
            Ok(Some(packet)) => network.write(packet).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!("resending the pending queue failed: {e}");
            return;
        }
    }
    if let Err(e) = network.flush().await {
        tracing::debug!("resending the pending queue failed: {e}");
    }
}

/// How many publishes rumqttc's own flow control would let out now: the room left in its
/// in-flight window, and none while an older queue waits (`pending`, sent first), while a
/// publish waits in the collision slot (rumqttc sends it itself once the broker acknowledges
/// the packet id it needs), or without a connection. The same conditions under which
/// rumqttc's event loop takes the next request.
pub fn room(eventloop: &EventLoop) -> usize {
    if eventloop.network.is_none()
        || !eventloop.pending.is_empty()
        || eventloop.state.collision.is_some()
    {
        return 0;
    }
    let limit = eventloop.mqtt_options.inflight();
    usize::from(limit.saturating_sub(eventloop.state.inflight()))
}

/// Writes publishes from the front of `queue` through rumqttc's state machine (in-flight
/// table, an `Outgoing::Publish` event each, as its event loop would), as many as [`room`]
/// allows, under packet ids from `ids` (see [`crate::packet_ids`]), then flushes them in one
/// go. Returns how many publishes it handed to rumqttc. A write or the flush that makes
/// no progress for `stall` fails with `FlushTimeout`, as rumqttc's own flush does: the
/// connection is then lost.
///
/// Should rumqttc find an id taken after all (its collision), the publish comes straight
/// back from its collision slot to the front of `queue`, that id counts as taken, and the
/// next is tried: no publish is ever left in that slot, whose release rumqttc gets wrong
/// at QoS 2.
///
/// Nothing is lost if it fails: a publish leaves the queue only when rumqttc's state
/// takes it, synchronously, before the write that may wait (for room in the socket), so
/// it is then in the in-flight table, where `EventLoop::clean` ([`drop_connection`])
/// finds it and the ledger sends it again. Dropped half-way (only when the run stops),
/// the publish being written counts as published but never went out.
pub async fn write_batch(
    eventloop: &mut EventLoop,
    queue: &mut VecDeque<Publish>,
    ids: &mut PacketIds,
    stall: Duration,
) -> Result<usize, ConnectionError> {
    let mut room = room(eventloop);
    let Some(network) = eventloop.network.as_mut() else {
        return Ok(0);
    };
    let mut handed = 0;
    while room > 0 {
        let Some(id) = ids.take() else {
            break;
        };
        let Some(mut publish) = queue.pop_front() else {
            ids.release(id);
            break;
        };
        publish.pkid = id;
        match eventloop
            .state
            .handle_outgoing_packet(Request::Publish(publish))?
        {
            Some(packet) => within(stall, network.write(packet)).await?,
            None => {
                if let Some(mut collided) = eventloop.state.collision.take() {
                    collided.pkid = 0;
                    queue.push_front(collided);
                }
                continue;
            }
        }
        handed += 1;
        room -= 1;
    }
    if handed > 0 {
        within(stall, network.flush()).await?;
    }
    Ok(handed)
}

/// Awaits `io`, failing with `FlushTimeout` if it is still pending after `stall`. Most
/// writes finish at once (room in the buffer and the socket): those set no timer and read
/// no clock.
async fn within<F>(stall: Duration, io: F) -> Result<(), ConnectionError>
where
    F: Future<Output = Result<(), StateError>>,
{
    let mut io = std::pin::pin!(io);
    let first = std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await;
    let done = match first {
        Poll::Ready(done) => done,
        Poll::Pending => tokio::time::timeout(stall, io)
            .await
            .map_err(|_| ConnectionError::FlushTimeout)?,
    };
    Ok(done?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{MqttOptions, Outgoing, Packet, PubAck, PubComp, QoS};

    fn puback(pkid: u16) -> Event {
        Event::Incoming(Incoming::PubAck(PubAck::new(pkid)))
    }

    /// An event loop (never connected) whose state has sent publishes 1 and 2, had 1
    /// acknowledged, and then judged an acknowledgement of `pkid`.
    fn acked_then(ack: Packet) -> (EventLoop, ConnectionError) {
        let mut eventloop = EventLoop::new(MqttOptions::new("t", "127.0.0.1", 1), 10);
        let state = &mut eventloop.state;
        for _ in 0..2 {
            let publish = Publish::new("t", QoS::AtLeastOnce, vec![1]);
            state
                .handle_outgoing_packet(Request::Publish(publish))
                .expect("publish");
        }
        state
            .handle_incoming_packet(Packet::PubAck(PubAck::new(1)))
            .expect("ack of 1");
        let judged = state.handle_incoming_packet(ack);
        let lost = judged.expect_err("an unsolicited ack is an error");
        (eventloop, lost.into())
    }

    #[test]
    fn an_unsolicited_ack_that_broke_the_connection_is_not_counted() {
        let sent = [
            Event::Outgoing(Outgoing::Publish(1)),
            Event::Outgoing(Outgoing::Publish(2)),
            puback(1),
        ];
        // rumqttc queues the ack's event, then refuses it; it is not counted.
        let (mut eventloop, lost) = acked_then(Packet::PubAck(PubAck::new(7)));
        assert!(matches!(
            lost,
            ConnectionError::MqttState(StateError::Unsolicited(7))
        ));
        assert_eq!(eventloop.state.events.back(), Some(&puback(7)));
        assert_eq!(events_left(&mut eventloop, &lost), sent);
        assert!(eventloop.state.events.is_empty());
        let (mut eventloop, lost) = acked_then(Packet::PubComp(PubComp { pkid: 9 }));
        assert_eq!(events_left(&mut eventloop, &lost), sent);

        // Any other loss keeps every event.
        let (mut eventloop, _) = acked_then(Packet::PubAck(PubAck::new(7)));
        let io = ConnectionError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(events_left(&mut eventloop, &io).len(), sent.len() + 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_write_times_out_and_a_quick_one_does_not() {
        let quick = within(Duration::from_millis(1), async { Ok(()) }).await;
        assert!(quick.is_ok());
        let failed = within(Duration::from_secs(60), async {
            Err(StateError::ConnectionAborted)
        })
        .await;
        assert!(matches!(
            failed,
            Err(ConnectionError::MqttState(StateError::ConnectionAborted))
        ));
        let stalled = within(Duration::from_millis(50), std::future::pending()).await;
        assert!(matches!(stalled, Err(ConnectionError::FlushTimeout)));
    }
}
