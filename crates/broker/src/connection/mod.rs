//! One task per client connection: the MQTT network layer in front of rumqttd's router.
//!
//! After the handshake (`handshake`), the connection claims its client id (taking the session
//! over from an older connection with the same id), gets a link to the router, sends the
//! router's CONNACK, and then runs two halves side by side: `reader` (client to broker) and
//! `writer` (broker to client). When either ends, or the session is taken over, or the broker
//! shuts down, the connection fires the client's will if it ended abnormally, and leaves the
//! router with a DISCONNECT (a persistent session then stays in the router for its return).

mod catch_up;
mod handshake;
mod reader;
mod window;
mod withheld;
mod writer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Packet, Protocol as _, SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::acl::ClientAcl;
use crate::delivery::Delivery;
use crate::flow::{Admission, ReaderKey};
use crate::hub::{Hub, Slot};
use crate::ingest::Message;
use crate::packet::{ReturnCode, Violation};
use crate::router::LinkRequest;
use crate::sessions;
use rumqttd::local::LinkTx;
use window::Window;
use withheld::Withheld;

pub(crate) use handshake::Will;

/// Chunks of replies the reader may queue for the writer.
const OUTBOX: usize = 64;

/// What the reader passes the writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Encoded packets of ours for the client (acknowledgements, PINGRESP, refusals).
    Bytes(bytes::Bytes),
    /// The same, to go once the write-ahead log has committed every record below the id
    /// (they acknowledge publishes it holds).
    Committed(u64, bytes::Bytes),
    /// The client acknowledged these messages sent under the broker's window.
    Acked(Vec<u16>),
    /// A SUBACK the reader answered itself, to be completed as the router's are.
    SubAck(rumqttd::protocol::SubAck),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client sent DISCONNECT: the only ending without the will.
    Disconnected,
    SocketClosed,
    SocketError(std::io::ErrorKind),
    KeepAliveTimeout,
    /// The client broke a rule of the protocol or a limit.
    Violation(&'static str),
    /// Another connection with the same client id took the session over.
    TakenOver,
    /// The router dropped the client's link (it refuses out-of-order acknowledgements).
    RouterClosed,
    /// The router is gone altogether.
    RouterGone,
    /// What a returning session missed could not be read back from the log.
    BacklogUnreadable,
    /// The broker's shutdown grace period ended.
    ShutDown,
    ReaderGone,
    WriterGone,
}

impl Close {
    /// MQTT publishes the will whenever the network connection closes without DISCONNECT.
    /// A broker that is shutting down has no one left to tell.
    fn fires_will(&self) -> bool {
        !matches!(
            self,
            Close::Disconnected | Close::ShutDown | Close::RouterGone
        )
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Disconnected => f.write_str("client disconnected"),
            Close::SocketClosed => f.write_str("connection closed by the client"),
            Close::SocketError(kind) => write!(f, "connection error: {kind}"),
            Close::KeepAliveTimeout => f.write_str("nothing received for 1.5 keep-alive periods"),
            Close::Violation(reason) => f.write_str(reason),
            Close::TakenOver => f.write_str("session taken over by a new connection"),
            Close::RouterClosed => f.write_str("the router closed the client's link"),
            Close::RouterGone => f.write_str("the router has stopped"),
            Close::BacklogUnreadable => f.write_str("its backlog could not be read from disk"),
            Close::ShutDown => f.write_str("the broker is shutting down"),
            Close::ReaderGone | Close::WriterGone => f.write_str("connection ended"),
        }
    }
}

/// SUBACK/UNSUBACK that the writer completes when the router's answer comes.
#[derive(Debug)]
pub(crate) enum PendingAck {
    /// One code per filter: `Some` for the reader's refusals, `None` where the router's goes;
    /// each granted filter with its QoS and, if new, the offset its reader starts at.
    Subscribe {
        codes: Vec<Option<SubscribeReasonCode>>,
        filters: Vec<(String, u8, Option<u64>)>,
    },
    /// The router answers an UNSUBSCRIBE with one UNSUBACK per filter it removes.
    Unsubscribe {
        filters: Vec<String>,
        remaining: usize,
    },
}

/// SUBSCRIBE/UNSUBSCRIBE packets the router has not answered yet.
#[derive(Debug, Default)]
pub(crate) struct Barrier {
    raised: AtomicUsize,
}

impl Barrier {
    fn raise(&self) {
        self.raised.fetch_add(1, Ordering::AcqRel);
    }

    /// Returns true when the last one is answered.
    fn lower(&self) -> bool {
        self.raised.fetch_sub(1, Ordering::AcqRel) == 1
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire) > 0
    }
}

/// What both halves of one connection share.
pub(crate) struct Conn<'h> {
    hub: &'h Hub,
    /// The client's link to the router: the reader sends the client's packets, the writer
    /// its acknowledgements under the broker's window.
    link: Mutex<LinkTx>,
    client_id: String,
    /// The id the router knows the client by.
    router_id: String,
    peer: SocketAddr,
    persistent: bool,
    keep_alive: u16,
    /// QoS 1/2 forwards the client has acknowledged (PUBACK, PUBREC), counted by the reader.
    acked: AtomicU64,
    barrier: Barrier,
    /// SUBSCRIBE/UNSUBSCRIBE packets sent to the router and not yet answered, in the order
    /// they went (a few at most).
    expected: Mutex<Vec<(u16, PendingAck)>>,
    /// Wakes the reader when publishes it holds may go (a SUBSCRIBE answered, flow control
    /// released).
    wake: Arc<Notify>,
    /// What the ACL lets this client do, if an ACL is configured.
    acl: Option<ClientAcl>,
    /// With an ACL: acknowledgements the router needs for messages withheld from the client.
    withheld: Option<Mutex<Withheld>>,
    /// The writer is sending what the session missed from disk (see `catch_up`); the router
    /// holds this client's SUBACKs meanwhile (its window is full), so the reader answers
    /// a SUBSCRIBE that changes nothing itself.
    catching_up: std::sync::atomic::AtomicBool,
    /// Where messages for this client go directly, past the router (a clean session under
    /// the broker's window; see `direct`).
    direct: Option<crate::direct::DirectTx>,
}

impl Conn<'_> {
    /// The storage that keeps this client's subscriptions: only a persistent session's are
    /// kept, and only with `[storage] dir`.
    pub(super) fn session_storage(&self) -> Option<&crate::storage::Storage> {
        self.hub.storage.as_ref().filter(|_| self.persistent)
    }

    /// MQTT 3.1.1 section 3.1.2.10: 1.5 times the keep-alive; 0 turns the check off.
    fn keep_alive_timeout(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// Why a subscription to `filter` is refused, if it is.
    fn refusal(&self, filter: &str) -> Option<&'static str> {
        if filter.starts_with("$share/") {
            // rumqttd 0.20's router panics when a persistent session leaves a group with
            // messages in flight (`expect("group must exists")`).
            return self.persistent.then_some(
                "shared subscriptions ($share/...) need a clean session (clean_session = 1)",
            );
        }
        if filter.starts_with('$') {
            // The router disconnects a client that subscribes to a `$` filter; nothing is
            // ever published on one here.
            return Some("this broker has no $ topics");
        }
        if self
            .acl
            .as_ref()
            .is_some_and(|acl| !acl.can_subscribe(filter))
        {
            return Some("not allowed by the ACL");
        }
        None
    }

    /// Whether the ACL lets this client publish to `topic` (no ACL: yes).
    fn may_write(&self, topic: &[u8]) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => std::str::from_utf8(topic).is_ok_and(|t| acl.can_write(t)),
        }
    }

    /// Whether the ACL lets this client receive a message on `topic` (no ACL: yes).
    fn may_read(&self, topic: &[u8]) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => std::str::from_utf8(topic).is_ok_and(|t| acl.can_read(t)),
        }
    }

    fn lock_withheld(&self) -> Option<std::sync::MutexGuard<'_, Withheld>> {
        self.withheld
            .as_ref()
            .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The router answered a SUBSCRIBE/UNSUBSCRIBE.
    fn lower_barrier(&self) {
        if self.barrier.lower() {
            self.wake.notify_one();
        }
    }

    fn expect(&self, pkid: u16, pending: PendingAck) {
        self.lock_expected().push((pkid, pending));
    }

    fn take_expected(&self, pkid: u16) -> Option<PendingAck> {
        let mut expected = self.lock_expected();
        let at = expected.iter().position(|(p, _)| *p == pkid)?;
        Some(expected.remove(at).1)
    }

    fn lock_expected(&self) -> std::sync::MutexGuard<'_, Vec<(u16, PendingAck)>> {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `packets` to the router on the client's link, with one wake-up.
    fn to_router(&self, packets: impl IntoIterator<Item = Packet>) -> Result<(), Close> {
        let mut packets = packets.into_iter().peekable();
        if packets.peek().is_none() {
            return Ok(());
        }
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last = None;
        {
            let mut buffer = link.buffer();
            for packet in packets {
                if let Some(previous) = last.replace(packet) {
                    buffer.push_back(previous);
                }
            }
        }
        let Some(last) = last else {
            return Ok(());
        };
        // rumqttd's `send` appends and wakes the router; it never waits, so it completes on
        // its first poll.
        match link.send(last).now_or_never() {
            Some(Err(_)) => Err(Close::RouterGone),
            _ => Ok(()),
        }
    }
}

/// Serves one client connection from its first byte to its close.
pub(crate) async fn serve<S>(hub: &Hub, mut stream: S, peer: SocketAddr, pending: Slot<'_>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(accepted) = handshake::accept(hub, &mut stream, peer).await else {
        return;
    };
    drop(pending);
    let router_id = sessions::router_id(&accepted.client_id).into_owned();
    let claim = hub.sessions.claim(&router_id).await;
    if claim.takeover.is_cancelled() {
        return;
    }
    // A persistent session coming back holds its place in flow control before the router
    // resumes it, so no log rolls further past it meanwhile (see `catch_up`).
    let returning = if accepted.clean_session {
        None
    } else {
        hub.sessions.take_saved(&router_id)
    };
    if let Some(saved) = &returning {
        let mut flow = hub.lock_flow();
        for (filter, position) in saved.positions() {
            let (reader, log) = ReaderKey::of(&router_id, filter);
            flow.online(reader, &log, position);
        }
    }
    let request = LinkRequest {
        client_id: router_id.clone(),
        clean_session: accepted.clean_session,
        dynamic_filters: false,
    };
    let mut link = match hub.router.link(request).await {
        Ok(link) => link,
        Err(e) => {
            let violation = Violation {
                reason: "the router did not accept the connection",
                code: Some(ReturnCode::ServerUnavailable),
            };
            debug!(error = %e, "router refused a link");
            stay_away(hub, &router_id, returning);
            handshake::refuse(hub, &mut stream, peer, &accepted.client_id, violation).await;
            return;
        }
    };
    let Some(Packet::ConnAck(connack, _)) = Option::<Packet>::from(link.connack.clone()) else {
        stay_away(hub, &router_id, returning);
        return;
    };
    if accepted.clean_session {
        if let Some(storage) = &hub.storage {
            storage.forget(&router_id);
        }
        // The persistent session this clean one ends: its readers go.
        if let Some(replaced) = hub.sessions.take_saved(&router_id) {
            forget_readers(hub, &router_id, &replaced);
        }
    }
    let saved = if connack.session_present {
        returning
    } else {
        // The router has no session to resume: its readers start afresh.
        if let Some(saved) = returning {
            forget_readers(hub, &router_id, &saved);
        }
        None
    };
    let session_present = connack.session_present;
    let mut hello = bytes::BytesMut::new();
    if V4
        .write(Packet::ConnAck(connack, None), &mut hello)
        .is_err()
        || stream.write_all(&hello).await.is_err()
    {
        let _ = link.tx.send(disconnect()).now_or_never();
        stay_away(hub, &router_id, saved);
        return;
    }
    hub.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    debug!(
        client_id = accepted.client_id,
        %peer,
        username = accepted.username.as_deref().unwrap_or(""),
        clean_session = accepted.clean_session,
        keep_alive = accepted.keep_alive,
        session_present,
        "client connected"
    );

    let (direct_tx, mut direct_rx) = if accepted.clean_session && hub.limits.max_inflight > 0 {
        let (tx, rx) = crate::direct::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let conn = Conn {
        hub,
        link: Mutex::new(link.tx),
        client_id: accepted.client_id.clone(),
        router_id: router_id.clone(),
        peer,
        persistent: !accepted.clean_session,
        keep_alive: accepted.keep_alive,
        acked: AtomicU64::new(0),
        barrier: Barrier::default(),
        expected: Mutex::new(Vec::new()),
        wake: Arc::new(Notify::new()),
        acl: hub
            .acl
            .as_ref()
            .map(|acl| acl.for_client(accepted.username.as_deref(), &accepted.client_id)),
        withheld: hub.acl.as_ref().map(|_| Mutex::new(Withheld::default())),
        catching_up: std::sync::atomic::AtomicBool::new(false),
        direct: direct_tx,
    };
    // What the router no longer holds for a returning session comes from disk first.
    let mut owed = Vec::new();
    let mut covered = Vec::new();
    if let (Some(saved), Some(storage)) = (&saved, &hub.storage) {
        let mut flow = hub.lock_flow();
        for (filter, _) in saved.positions() {
            let (reader, log) = ReaderKey::of(&router_id, filter);
            let Some((from, to, resumes_at)) = flow.backlog(&reader, &log, storage.next_id())
            else {
                continue;
            };
            match storage.subscription_qos(&router_id, filter) {
                // At most QoS 1: the broker's own packet ids do not outlive a connection,
                // and a QoS 2 exchange cut off midway could then lose a reading.
                Some(qos) if qos > 0 && from < to => owed.push(catch_up::Owed {
                    filter: filter.to_owned(),
                    qos: qos.min(1),
                    from,
                    to,
                    resumes_at,
                }),
                // A QoS 0 subscription was promised nothing.
                Some(0) => flow.caught_up(&reader, &log),
                // Acknowledged on an earlier connection: the router's jump loses nothing.
                _ => {
                    flow.caught_up(&reader, &log);
                    covered.push((filter.to_owned(), resumes_at));
                }
            }
        }
    }
    // `hold_forwards`: the connection ends at once (taken over, shut down, the log failed)
    // and the session stays owed; nothing the router holds may go out before that.
    let (catch_up, hold_forwards) = match &hub.storage {
        Some(storage) if !owed.is_empty() => {
            // What is read back must be on disk first.
            let to = owed.iter().map(|o| o.to).max().unwrap_or(0);
            let mut committed = storage.watch_committed();
            let failed = storage.failed();
            tokio::select! {
                _ = committed.wait_for(|&c| c >= to) => {
                    conn.catching_up.store(true, Ordering::Release);
                    (Some(catch_up::CatchUp::start(storage, owed)), false)
                }
                () = claim.takeover.cancelled() => (None, true),
                () = hub.cut_off.cancelled() => (None, true),
                () = failed.cancelled() => (None, true),
            }
        }
        _ => (None, false),
    };
    let mut delivery = match saved {
        Some(saved) => Delivery::restore(saved),
        None => Delivery::new(conn.persistent),
    };
    for (filter, until) in covered {
        delivery.covered_until(&filter, until);
    }
    let subscribed: HashSet<String> = delivery.filters().map(str::to_owned).collect();
    let window = Window::new(hub.limits.max_inflight, accepted.clean_session);
    let (outbox_tx, mut outbox_rx) = mpsc::channel(OUTBOX);
    let (read_half, write_half) = tokio::io::split(stream);
    let (close, caught_up_to) = {
        let committed = hub.storage.as_ref().map(|s| s.watch_committed());
        let mut writer =
            writer::Writer::new(&mut delivery, window, committed, catch_up, hold_forwards);
        let reader = reader::run(&conn, read_half, accepted.rest, &outbox_tx, subscribed);
        let writer_run = writer::run(
            &conn,
            write_half,
            &mut link.rx,
            &mut outbox_rx,
            &mut direct_rx,
            &mut writer,
        );
        let close = tokio::select! {
            close = reader => close,
            close = writer_run => close,
            () = claim.takeover.cancelled() => Close::TakenOver,
            () = hub.cut_off.cancelled() => Close::ShutDown,
        };
        writer.closing(&conn, &mut outbox_rx);
        // What the reader queued for the router before it stopped (see `Ingest::queue`).
        if hub.ingest.flush().is_err() {
            hub.router_gone.cancel();
        }
        (close, writer.catch_up_progress())
    };
    // SUBSCRIBEs and UNSUBSCRIBEs the router applied but has not answered yet (it holds its
    // answers while the session's window is full, or while it catches up): they take
    // effect here as if answered, in the order they were sent.
    let unanswered = std::mem::take(&mut *conn.lock_expected());
    if !unanswered.is_empty() {
        let mut flow = hub.lock_flow();
        for (_, pending) in unanswered {
            match pending {
                PendingAck::Subscribe { filters, .. } => {
                    for (filter, _, start) in filters {
                        let (_, log) = ReaderKey::of(&router_id, &filter);
                        flow.created(&log);
                        delivery.subscribed(&filter, start);
                    }
                }
                PendingAck::Unsubscribe { filters, .. } => {
                    for filter in filters {
                        let (reader, log) = ReaderKey::of(&router_id, &filter);
                        flow.unsubscribe(&reader, &log);
                        delivery.unsubscribed(&filter);
                    }
                }
            }
        }
    }
    match &close {
        Close::Disconnected | Close::SocketClosed | Close::ShutDown => {
            debug!(client_id = conn.client_id, %peer, "{close}");
        }
        Close::RouterGone => hub.router_gone.cancel(),
        _ => hub.log.warn(format_args!(
            "disconnected client {:?} from {peer}: {close}",
            conn.client_id
        )),
    }
    leave(&conn);
    delivery.acknowledged(conn.acked.load(Ordering::Relaxed));
    {
        let mut flow = hub.lock_flow();
        // A catch-up cut short: what the client acknowledged of it is not owed again.
        for (filter, below) in caught_up_to {
            let (reader, log) = ReaderKey::of(&router_id, &filter);
            flow.owed_below(&reader, &log, below);
        }
        for (filter, position) in delivery.take_moved() {
            let (reader, log) = ReaderKey::of(&router_id, &filter);
            flow.advanced(&reader, &log, position);
        }
        for filter in delivery.filters() {
            let (reader, log) = ReaderKey::of(&router_id, filter);
            if conn.persistent {
                flow.offline(&reader, &log, hub.storage.as_ref().map(|s| s.next_id()));
            } else {
                flow.unsubscribe(&reader, &log);
            }
        }
    }
    if conn.persistent {
        hub.sessions.save(&router_id, delivery.saved());
    }
    drop(accepted.slot);
    drop(claim);
    if close.fires_will() {
        if let Some(will) = accepted.will {
            if conn.may_write(&will.topic) {
                fire_will(hub, will).await;
            } else {
                hub.stats.denied_publish.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A persistent session that is no more: its readers leave flow control for good.
fn forget_readers(hub: &Hub, router_id: &str, saved: &crate::delivery::Saved) {
    let mut flow = hub.lock_flow();
    for (filter, _) in saved.positions() {
        let (reader, log) = ReaderKey::of(router_id, filter);
        flow.unsubscribe(&reader, &log);
    }
}

/// A returning persistent session whose connection failed before it began: its readers go
/// offline again, and what it left behind stays for its next return.
fn stay_away(hub: &Hub, router_id: &str, saved: Option<crate::delivery::Saved>) {
    let Some(saved) = saved else {
        return;
    };
    {
        let mut flow = hub.lock_flow();
        let next_record = hub.storage.as_ref().map(|s| s.next_id());
        for (filter, _) in saved.positions() {
            let (reader, log) = ReaderKey::of(router_id, filter);
            flow.offline(&reader, &log, next_record);
        }
    }
    hub.sessions.save(router_id, saved);
}

/// Publishes the client's will (unless its topic is a `$` topic, delivered to no one), as
/// any publish: retained if it says so, and through flow control, which may make it wait.
async fn fire_will(hub: &Hub, will: Will) {
    if crate::packet::is_reserved_topic(&will.topic) {
        return;
    }
    if will.retain {
        let _flow = hub.lock_flow();
        hub.retained.publish(&will.topic, &will.message, will.qos);
        if let Some(storage) = &hub.storage {
            storage.publish(&will.topic, &will.message, will.qos, true, false);
        }
    }
    let message = Message {
        topic: will.topic,
        payload: will.message,
    };
    let waiter = Arc::new(Notify::new());
    loop {
        {
            let mut flow = hub.lock_flow();
            match flow.admit(&message.topic) {
                Admission::NoSubscriber => return,
                Admission::Append(logs) => {
                    let record = hub.storage.as_ref().map(|storage| {
                        if will.qos > 0 {
                            storage.publish(&message.topic, &message.payload, will.qos, false, true)
                        } else {
                            storage.next_id()
                        }
                    });
                    flow.append(&logs, message.counted_size(), record);
                    if hub.ingest.submit(&mut vec![message]).is_err() {
                        hub.router_gone.cancel();
                    }
                    return;
                }
                Admission::Park(park) => {
                    flow.park(&park, &waiter);
                }
            }
        }
        tokio::select! {
            () = waiter.notified() => {}
            () = hub.cut_off.cancelled() => return,
        }
    }
}

/// Tells the router the client has gone: without it the router keeps the link forever. A
/// persistent session stays in the router (without its will, which we fire ourselves).
fn leave(conn: &Conn<'_>) {
    let _ = conn.to_router([disconnect()]);
}

fn disconnect() -> Packet {
    let disconnect = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
    };
    Packet::Disconnect(disconnect, None)
}
