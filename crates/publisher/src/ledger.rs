//! The publisher's ledger across a lost connection, and the one place that reaches into
//! rumqttc's internals (`EventLoop::pending`, `state.collision`, `state.events`, and
//! `state` and `network` to write), because its public API cannot keep a reading across a reconnect. That is
//! why the workspace pins rumqttc to exactly 0.25.1, and why
//! `tests/rumqttc_internals.rs` checks, against a real broker, every behaviour relied on
//! here: a version that changes one fails that test loudly instead of losing readings.
//!
//! rumqttc keeps what the broker has not acknowledged in its pending queue, but clears
//! that queue when the broker answers the reconnect without a session (always, after a
//! broker restart). We keep a copy and put it back, so no reading is ever dropped by the
//! client; the subscriber can then blame only the broker for what the broker lost.

use std::collections::VecDeque;

use rumqttc::{Event, EventLoop, Publish, Request};

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

/// Events of the lost connection rumqttc had queued but not yet returned (a publish
/// whose write failed, acks read in the last batch): they still count.
pub fn events_left(eventloop: &mut EventLoop) -> VecDeque<Event> {
    std::mem::take(&mut eventloop.state.events)
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
