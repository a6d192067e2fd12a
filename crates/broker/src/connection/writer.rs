//! Broker to client: everything the router sends the client's link (forwarded messages, its
//! acknowledgements), and the replies of our own that the reader queues, written with
//! rumqttd's codec in as few writes as there are batches.
//!
//! Forwarded messages go through the outgoing `window`, and each one's log offset through
//! `delivery`, which finds messages the router skipped. SUBACK and UNSUBACK packets are
//! completed here: a SUBACK gets the codes of the filters the reader refused, and of the
//! router's UNSUBACKs for one UNSUBSCRIBE (one per filter) only the last goes out.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use rumqttd::local::LinkRx;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    Packet, Protocol as _, PubAck, PubAckReason, Publish, SubAck, SubscribeReasonCode,
};
use rumqttd::{Forward, Notification};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use super::catch_up::CatchUp;
use super::window::{self, Mode, Window};
use super::{Close, Conn, Outbound, PendingAck};
use crate::delivery::Delivery;
use crate::direct::{Direct, DirectRx};
use crate::flow::ReaderKey;
use crate::retained::Retained;

/// Notifications taken from the router's link per write, at most.
const MAX_BATCH: usize = 1024;

/// Direct messages remembered until their router copies come, at most.
const MAX_DIRECTS_PENDING: usize = 4096;

/// The router's acknowledgements for forwards sent under our window go in batches of this
/// many (half the router's window of 100, so it never fills) or after `ROUTER_ACK_DELAY`.
/// Each batch wakes the router thread, which at a paced rate would otherwise run beside
/// the subscriber it just sent to, and on two cores make it wait for one.
const ROUTER_ACK_BATCH: usize = 50;
const ROUTER_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// What the writer keeps between batches.
pub(super) struct Writer<'a> {
    pub delivery: &'a mut Delivery,
    pub window: Window,
    buf: BytesMut,
    /// With storage: how far the write-ahead log has committed.
    committed: Option<watch::Receiver<u64>>,
    /// Replies of ours that wait for the log to commit past the id (0: only for those ahead
    /// of them), in order.
    uncommitted: VecDeque<(u64, Bytes)>,
    /// What a returning persistent session is sent from disk before the router's forwards.
    catch_up: Option<CatchUp>,
    /// When the router's acknowledgements held back must go, if any are.
    router_acks_due: Option<tokio::time::Instant>,
    /// Room to encode a router forward the client already has, for its packet id.
    scratch: BytesMut,
    /// Messages sent directly whose router copies have not come yet: each one's offset and
    /// payload (the router's copy shares the payload's bytes, so it is known for certain).
    directs: VecDeque<(u64, Bytes)>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        delivery: &'a mut Delivery,
        mut window: Window,
        committed: Option<watch::Receiver<u64>>,
        catch_up: Option<CatchUp>,
        hold_forwards: bool,
    ) -> Writer<'a> {
        if catch_up.is_some() || hold_forwards {
            window.pause();
        }
        Writer {
            delivery,
            window,
            buf: BytesMut::with_capacity(16 * 1024),
            committed,
            uncommitted: VecDeque::new(),
            catch_up,
            router_acks_due: None,
            scratch: BytesMut::new(),
            directs: VecDeque::new(),
        }
    }

    /// Moves the replies the log has committed for into the write buffer.
    fn take_committed(&mut self) {
        let Some(committed) = self.committed.as_mut() else {
            return;
        };
        let upto = *committed.borrow_and_update();
        while let Some((after, _)) = self.uncommitted.front() {
            if *after > upto {
                break;
            }
            if let Some((_, bytes)) = self.uncommitted.pop_front() {
                self.buf.extend_from_slice(&bytes);
            }
        }
    }
}

/// Resolves when the router's acknowledgements held back are due (never without any).
async fn router_acks_due_at(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The next direct message (never without a direct path).
async fn next_direct(direct: &mut Option<DirectRx>) -> Option<Direct> {
    match direct {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the log commits more (never without storage).
async fn log_committed(committed: &mut Option<watch::Receiver<u64>>) {
    match committed {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The next batch a catch-up has read back (never without one).
async fn read_back(
    catch_up: &mut Option<CatchUp>,
) -> Option<Result<Vec<crate::storage::Stored>, String>> {
    match catch_up {
        Some(catch_up) => catch_up.next_batch().await,
        None => std::future::pending().await,
    }
}

/// Writes until the connection ends; returns why it ended.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    mut socket: W,
    link: &mut LinkRx,
    outbox: &mut mpsc::Receiver<Outbound>,
    direct: &mut Option<DirectRx>,
    writer: &mut Writer<'_>,
) -> Close {
    loop {
        let mut unscheduled = false;
        let mut ended = None;
        let mut router_acks_due = false;
        tokio::select! {
            () = router_acks_due_at(writer.router_acks_due) => router_acks_due = true,
            notification = link.next() => {
                // Direct messages first: the router's copies of them may be in this batch.
                if let Err(close) = writer.take_directs(conn, direct) {
                    ended = Some(close);
                }
                match notification {
                    Ok(_) if ended.is_some() => {}
                    Ok(notification) => {
                        writer.delivery.acknowledged(conn.acked.load(Ordering::Relaxed));
                        let mut next = notification;
                        for _ in 0..MAX_BATCH {
                            if let Some(notification) = next {
                                match writer.take(conn, notification) {
                                    Ok(u) => unscheduled |= u,
                                    Err(close) => {
                                        ended = Some(close);
                                        break;
                                    }
                                }
                            }
                            next = match link.next().now_or_never() {
                                Some(Ok(notification)) => notification,
                                Some(Err(_)) => {
                                    ended = Some(Close::RouterClosed);
                                    break;
                                }
                                None => break,
                            };
                        }
                    }
                    Err(_) => ended = Some(Close::RouterClosed),
                }
            }
            Some(first) = next_direct(direct) => {
                let mut taken = writer.direct(conn, first);
                if taken.is_ok() {
                    taken = writer.take_directs(conn, direct);
                }
                if let Err(close) = taken {
                    ended = Some(close);
                }
            }
            () = log_committed(&mut writer.committed), if !writer.uncommitted.is_empty() => {}
            batch = read_back(&mut writer.catch_up),
                if writer.catch_up.as_ref().is_some_and(CatchUp::wants_more) =>
            {
                if let Some(catch_up) = writer.catch_up.as_mut() {
                    catch_up.take(batch);
                }
            }
            outbound = outbox.recv() => match outbound {
                Some(outbound) => {
                    let mut taken = writer.outbound(conn, outbound);
                    while let (Ok(()), Ok(more)) = (&taken, outbox.try_recv()) {
                        taken = writer.outbound(conn, more);
                    }
                    if let Err(close) = taken {
                        ended = Some(close);
                    }
                }
                None => ended = Some(Close::ReaderGone),
            },
        }
        writer.take_committed();
        if let Err(close) = writer.catch_up(conn) {
            ended.get_or_insert(close);
        }
        if let Err(close) = writer.release(conn) {
            ended.get_or_insert(close);
        }
        // Under our window the client first: the router's acknowledgements and flow
        // control's bookkeeping wait until the batch is on its way (each wake of the router
        // thread costs microseconds that would otherwise come before the client's copy).
        // Under the router's, ours go first: the client's own may follow the moment it has
        // the batch, and the router takes acknowledgements in order only.
        if !writer.window.broker_mode() {
            if let Err(close) = writer.acknowledge_router(conn, true) {
                ended.get_or_insert(close);
            }
        }
        if !writer.buf.is_empty() {
            if let Err(e) = socket.write_all(&writer.buf).await {
                return Close::SocketError(e.kind());
            }
            let stats = &conn.hub.stats;
            stats
                .bytes_sent
                .fetch_add(writer.buf.len() as u64, Ordering::Relaxed);
            writer.buf.clear();
        }
        if let Err(close) = writer.acknowledge_router(conn, ended.is_some() || router_acks_due) {
            ended.get_or_insert(close);
        }
        writer.tell_flow(conn);
        if let Some(close) = ended {
            return close;
        }
        // The router stops sending after a full batch until the link says it is ready.
        if unscheduled && link.wake().await.is_err() {
            return Close::RouterClosed;
        }
    }
}

impl Writer<'_> {
    /// Takes one notification from the router; returns whether the router paused the link.
    fn take(&mut self, conn: &Conn<'_>, notification: Notification) -> Result<bool, Close> {
        let packet = match notification {
            Notification::Forward(forward) => {
                if self.window.broker_mode() && self.went_directly(&forward) {
                    // The client has it: the router only needs its acknowledgement.
                    self.scratch.clear();
                    encode(
                        Packet::Publish(forward.publish, forward.properties),
                        &mut self.scratch,
                    )?;
                    self.window.skip(window::pkid_of(&self.scratch));
                    return Ok(false);
                }
                if let Some((forward, mode)) = self.window.admit(forward) {
                    self.send(conn, forward, mode)?;
                }
                return Ok(false);
            }
            Notification::Unschedule => return Ok(true),
            Notification::Disconnect(..) => return Err(Close::RouterClosed),
            other => match Option::<Packet>::from(other) {
                Some(packet) => packet,
                None => return Ok(false),
            },
        };
        let packet = match packet {
            Packet::SubAck(suback, _) => {
                self.suback(conn, suback)?;
                return Ok(false);
            }
            Packet::PubRel(pubrel, props) => {
                let swallowed = conn
                    .lock_withheld()
                    .and_then(|mut withheld| withheld.router_released(pubrel.pkid));
                if let Some(acks) = swallowed {
                    // The release of a message withheld from the client: completed by us.
                    conn.to_router(acks)?;
                    return Ok(false);
                }
                Packet::PubRel(pubrel, props)
            }
            Packet::UnsubAck(unsuback, props) => {
                if !self.complete_unsuback(conn, unsuback.pkid) {
                    return Ok(false);
                }
                Packet::UnsubAck(unsuback, props)
            }
            packet => packet,
        };
        encode(packet, &mut self.buf)?;
        Ok(false)
    }

    /// Takes the direct messages waiting.
    fn take_directs(
        &mut self,
        conn: &Conn<'_>,
        direct: &mut Option<DirectRx>,
    ) -> Result<(), Close> {
        let Some(rx) = direct.as_mut() else {
            return Ok(());
        };
        while let Ok(next) = rx.try_recv() {
            self.direct(conn, next)?;
        }
        Ok(())
    }

    /// A message past the router (see `direct`): sent now if the client expects it next
    /// and our window has room, else dropped (the router's copy goes out as always).
    fn direct(&mut self, conn: &Conn<'_>, direct: Direct) -> Result<(), Close> {
        let Direct { offset, message } = direct;
        // Not while a SUBSCRIBE or UNSUBSCRIBE waits for the router's answer: the client's
        // filters are changing. Not an empty payload either: its router copy could not be
        // told apart by its bytes.
        if !self.window.takes_direct()
            || conn.barrier.is_raised()
            || message.payload.is_empty()
            || !conn.may_read(&message.topic)
        {
            return Ok(());
        }
        let Some(qos) = self.delivery.direct_qos(&message.topic, offset) else {
            return Ok(());
        };
        let pkid = if qos > 0 { self.window.own() } else { 0 };
        let publish = publish_of_ours(&message.topic, &message.payload, qos, pkid);
        encode(Packet::Publish(publish, None), &mut self.buf)?;
        let stats = &conn.hub.stats;
        stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        stats.messages_direct.fetch_add(1, Ordering::Relaxed);
        self.delivery.sent_directly(&message.topic, offset);
        if self.directs.len() >= MAX_DIRECTS_PENDING {
            // Its copy is long overdue; should it still come, it goes out again (a
            // duplicate, never a loss).
            self.directs.pop_front();
        }
        self.directs.push_back((offset, message.payload));
        Ok(())
    }

    /// Whether `forward` is the router's copy of a message sent directly (then forgotten).
    fn went_directly(&mut self, forward: &Forward) -> bool {
        let Some((_, offset)) = forward.cursor else {
            return false;
        };
        let payload = &forward.publish.payload;
        let Some(at) = self.directs.iter().position(|(o, p)| {
            *o == offset && p.as_ptr() == payload.as_ptr() && p.len() == payload.len()
        }) else {
            return false;
        };
        // Copies come in the order the messages went; ones skipped before it are not coming.
        self.directs.drain(..=at);
        true
    }

    /// Completes a SUBACK (the router's, or one the reader made) and sends the retained
    /// messages the new subscriptions get.
    fn suback(&mut self, conn: &Conn<'_>, suback: SubAck) -> Result<(), Close> {
        let (suback, retained) = self.complete_suback(conn, suback);
        if !self.window.broker_mode() {
            // The window just switched to the router's (or was): what we owe the router
            // goes before anything the client acknowledges under it. The router's copies of
            // messages sent directly now go out again, as forwards the client acknowledges
            // in turn (a skip acknowledged by us could overtake the client's acknowledgement
            // of an earlier forward): duplicates, which QoS 1 allows, in this rare case.
            self.acknowledge_router(conn, true)?;
            self.directs.clear();
        }
        encode(Packet::SubAck(suback, None), &mut self.buf)?;
        self.send_retained(conn, retained)
    }

    /// Something the reader queued for the client, or acknowledgements under our window.
    fn outbound(&mut self, conn: &Conn<'_>, outbound: Outbound) -> Result<(), Close> {
        match outbound {
            Outbound::SubAck(suback) => return self.suback(conn, suback),
            Outbound::Bytes(bytes) if self.uncommitted.is_empty() => {
                self.buf.extend_from_slice(&bytes);
            }
            Outbound::Bytes(bytes) => self.uncommitted.push_back((0, bytes)),
            Outbound::Committed(after, bytes) => self.uncommitted.push_back((after, bytes)),
            Outbound::Acked(pkids) => self.acked(&pkids),
        }
        Ok(())
    }

    /// The client acknowledged these packet ids of ours (a catch-up's among them).
    fn acked(&mut self, pkids: &[u16]) {
        if let Some(catch_up) = self.catch_up.as_mut() {
            catch_up.acked(pkids);
        }
        self.window.acked(pkids);
    }

    /// A catch-up cut short (the connection ends): how far the client got, per filter.
    pub(super) fn catch_up_progress(&self) -> Vec<(String, u64)> {
        self.catch_up
            .as_ref()
            .map_or_else(Vec::new, CatchUp::progress)
    }

    /// Sends what a catch-up has read back, as far as the window lets it; once the client
    /// has acknowledged all of it, lets the router's forwards go.
    fn catch_up(&mut self, conn: &Conn<'_>) -> Result<(), Close> {
        let Some(catch_up) = self.catch_up.as_mut() else {
            return Ok(());
        };
        if let Some(why) = catch_up.failed() {
            // The session stays owed what it has not acknowledged; it gets it when it comes
            // back, if the log can be read then.
            error!(
                client_id = conn.client_id,
                "cannot read back what client {:?} missed from the log: {why}; disconnecting it",
                conn.client_id
            );
            return Err(Close::BacklogUnreadable);
        }
        while self.window.has_room_for_own() {
            let Some((stored, qos, owed)) = catch_up.next() else {
                break;
            };
            if !conn.may_read(&stored.topic) {
                conn.hub.stats.denied_read.fetch_add(1, Ordering::Relaxed);
                catch_up.sent(None, stored.id, owed);
                continue;
            }
            let pkid = if qos > 0 { self.window.own() } else { 0 };
            catch_up.sent((qos > 0).then_some(pkid), stored.id, owed);
            let publish = publish_of_ours(&stored.topic, &stored.payload, qos, pkid);
            encode(Packet::Publish(publish, None), &mut self.buf)?;
            conn.hub.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.finish_catch_up(conn);
        Ok(())
    }

    /// The connection is over: takes the client's last acknowledgements, which the reader
    /// queued before it ended, so that a catch-up they completed counts as done.
    pub(super) fn closing(&mut self, conn: &Conn<'_>, outbox: &mut mpsc::Receiver<Outbound>) {
        while let Ok(outbound) = outbox.try_recv() {
            if let Outbound::Acked(pkids) = outbound {
                self.acked(&pkids);
            }
        }
        self.finish_catch_up(conn);
    }

    /// Once the client has acknowledged everything a catch-up sent, and it has sent all:
    /// flow control forgets what the session was owed, and the router's forwards may go.
    fn finish_catch_up(&mut self, conn: &Conn<'_>) {
        let done = self
            .catch_up
            .as_ref()
            .is_some_and(|c| c.all_sent() && self.window.all_acked());
        if !done {
            return;
        }
        let Some(catch_up) = self.catch_up.take() else {
            return;
        };
        let owed = catch_up.owed().to_vec();
        let (sent, took) = catch_up.finish();
        {
            let mut flow = conn.hub.lock_flow();
            for o in &owed {
                let (reader, log) = ReaderKey::of(&conn.router_id, &o.filter);
                flow.caught_up(&reader, &log);
            }
        }
        for o in &owed {
            let count = sent.get(&o.filter).copied().unwrap_or(0);
            // The router's first forward jumps past what it no longer had, up to where it
            // takes over: the client has that now (this connection sent part of it, earlier
            // ones may have sent the rest; what the log deleted beyond `max_bytes` was
            // reported when it went). A jump beyond is counted as lost.
            self.delivery.covered_until(&o.filter, o.resumes_at);
            info!(
                client_id = conn.client_id,
                filter = o.filter,
                delivered = count,
                took_s = (took * 1000.0).round() / 1000.0,
                "client {:?} got {count} readings of {} it had missed from disk in {took:.2} s",
                conn.client_id,
                o.filter
            );
        }
        self.window.resume();
        conn.catching_up.store(false, Ordering::Release);
    }

    /// Encodes the held forwards there is room for.
    fn release(&mut self, conn: &Conn<'_>) -> Result<(), Close> {
        while let Some((forward, mode)) = self.window.release() {
            self.send(conn, forward, mode)?;
        }
        Ok(())
    }

    /// Acknowledges to the router what went out under our window, in batches (see
    /// `ROUTER_ACK_BATCH`); `all` sends what is pending whatever its number.
    fn acknowledge_router(&mut self, conn: &Conn<'_>, all: bool) -> Result<(), Close> {
        let pending = self.window.router_acks_pending();
        if pending == 0 {
            self.router_acks_due = None;
            return Ok(());
        }
        // Under the router's window the client's own acknowledgements go to the router at
        // once, so ours must not wait behind them (the router takes them in order only).
        if !all && pending < ROUTER_ACK_BATCH && self.window.broker_mode() {
            self.router_acks_due
                .get_or_insert_with(|| tokio::time::Instant::now() + ROUTER_ACK_DELAY);
            return Ok(());
        }
        self.router_acks_due = None;
        let acks = self.window.take_router_acks();
        conn.to_router(acks.into_iter().map(|pkid| {
            Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )
        }))
    }

    /// Encodes one forward; counts what the router skipped before it.
    fn send(&mut self, conn: &Conn<'_>, forward: Forward, mode: Mode) -> Result<(), Close> {
        let offset = forward.cursor.map(|(_segment, offset)| offset);
        let topic = forward.publish.topic.clone();
        let start = self.buf.len();
        encode(
            Packet::Publish(forward.publish, forward.properties),
            &mut self.buf,
        )?;
        // The router sends at the subscription's QoS; the fixed header says which.
        let qos = (self.buf[start] >> 1) & 0x03;
        // QoS 2 keeps the router's exchange (a QoS 2 subscription turns our window off before
        // its first message comes).
        let mode = if qos == 2 { Mode::Router } else { mode };
        let readable = conn.may_read(&topic);
        if !readable {
            // The ACL does not let this client read it: it never sees it, and the router
            // gets its acknowledgement from us, in its place.
            conn.hub.stats.denied_read.fetch_add(1, Ordering::Relaxed);
            let router_pkid = window::pkid_of(&self.buf[start..]);
            self.buf.truncate(start);
            if let Some(pkid) = router_pkid {
                match mode {
                    Mode::Broker => self.window.acknowledge_router(pkid),
                    Mode::Router => {
                        if let Some(mut withheld) = conn.lock_withheld() {
                            let acks = withheld.forwarded(pkid, qos, true);
                            conn.acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
                            conn.to_router(acks)?;
                        }
                    }
                }
            }
        } else if mode == Mode::Broker {
            conn.hub.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            self.window.sent(&mut self.buf, start);
        } else if let (Some(pkid), Some(mut withheld)) =
            (window::pkid_of(&self.buf[start..]), conn.lock_withheld())
        {
            // Tracked, so that acknowledgements of withheld ones find their place.
            withheld.forwarded(pkid, qos, false);
        }
        if readable && mode == Mode::Router {
            conn.hub.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        let awaits_router_ack = qos > 0 && mode == Mode::Router;
        if let Some(skipped) = self.delivery.forwarded(&topic, offset, awaits_router_ack) {
            let total = conn.hub.count_dropped(skipped.count);
            error!(
                client_id = conn.client_id,
                filter = skipped.filter,
                dropped = skipped.count,
                total,
                "rumqttd dropped {} messages a subscriber of {} had not read yet (its \
                 in-memory log rolled over: raise [router] max_segment_size or \
                 max_segment_count); they are lost",
                skipped.count,
                skipped.filter
            );
        }
        Ok(())
    }

    /// Puts the router's return codes where the reader left room for them; tells flow
    /// control the new logs exist, logs what the client now reads, and lets held publishes
    /// go. Returns the SUBACK and the retained messages the new subscriptions get.
    fn complete_suback(
        &mut self,
        conn: &Conn<'_>,
        suback: SubAck,
    ) -> (SubAck, Vec<(Retained, u8)>) {
        let Some(PendingAck::Subscribe { codes, filters }) = conn.take_expected(suback.pkid) else {
            return (suback, Vec::new());
        };
        let mut granted = suback.return_codes.into_iter();
        let return_codes = codes
            .into_iter()
            .map(|code| {
                code.or_else(|| granted.next())
                    .unwrap_or(SubscribeReasonCode::Failure)
            })
            .collect();
        let mut retained = Vec::new();
        {
            let mut flow = conn.hub.lock_flow();
            for (filter, _, _) in &filters {
                let (_, log) = ReaderKey::of(&conn.router_id, filter);
                flow.created(&log);
            }
        }
        for (filter, qos, start) in &filters {
            if *qos == 2 || filter.starts_with("$share/") {
                self.window.use_routers();
            }
            self.delivery.subscribed(filter, *start);
            if conn.direct.is_some() && *qos < 2 {
                self.delivery.take_direct(filter, *qos);
            }
            info!(
                "client {:?} subscribed to {filter} (QoS {qos})",
                conn.client_id
            );
            for message in conn.hub.retained.matching(filter) {
                if conn.may_read(&message.topic) {
                    retained.push((message, (*qos).min(2)));
                }
            }
        }
        conn.lower_barrier();
        let suback = SubAck {
            pkid: suback.pkid,
            return_codes,
        };
        (suback, retained)
    }

    /// Sends retained messages, each at the lower of its QoS and the subscription's (`max`),
    /// under packet ids of ours (the router has nothing to do with them).
    fn send_retained(
        &mut self,
        conn: &Conn<'_>,
        retained: Vec<(Retained, u8)>,
    ) -> Result<(), Close> {
        for (message, max) in retained {
            let qos = message.qos.min(max);
            let pkid = if qos > 0 { self.window.own() } else { 0 };
            let mut publish = publish_of_ours(&message.topic, &message.payload, qos, pkid);
            publish.retain = true;
            encode(Packet::Publish(publish, None), &mut self.buf)?;
            conn.hub.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Tells flow control where this client's readers now stand in the router's logs.
    fn tell_flow(&mut self, conn: &Conn<'_>) {
        let moved = self.delivery.take_moved();
        let ambiguous = self.delivery.take_ambiguous();
        if moved.is_empty() && ambiguous.is_empty() {
            return;
        }
        let mut flow = conn.hub.lock_flow();
        for (filter, position) in moved {
            let (reader, log) = ReaderKey::of(&conn.router_id, &filter);
            flow.advanced(&reader, &log, position);
        }
        for filter in ambiguous {
            let (reader, log) = ReaderKey::of(&conn.router_id, &filter);
            flow.exclude(&reader, &log);
        }
    }

    /// True when this UNSUBACK is the last the router sends for its UNSUBSCRIBE.
    fn complete_unsuback(&mut self, conn: &Conn<'_>, pkid: u16) -> bool {
        {
            // Not the last: counted in place, so the UNSUBSCRIBE keeps its place in the order.
            let mut expected = conn.lock_expected();
            if let Some((_, PendingAck::Unsubscribe { remaining, .. })) =
                expected.iter_mut().find(|(p, _)| *p == pkid)
            {
                if *remaining > 1 {
                    *remaining -= 1;
                    return false;
                }
            }
        }
        let Some(PendingAck::Unsubscribe { filters, .. }) = conn.take_expected(pkid) else {
            return true;
        };
        // Router copies of the filter's messages not forwarded yet never come.
        self.directs.clear();
        let mut flow = conn.hub.lock_flow();
        for filter in &filters {
            self.delivery.unsubscribed(filter);
            let (reader, log) = ReaderKey::of(&conn.router_id, filter);
            flow.unsubscribe(&reader, &log);
        }
        drop(flow);
        conn.lower_barrier();
        true
    }
}

/// A PUBLISH of the broker's own (not the router's) at `qos` with packet id `pkid`.
fn publish_of_ours(topic: &[u8], payload: &[u8], qos: u8, pkid: u16) -> Publish {
    // rumqttd's `Publish` takes a QoS and packet id from outside its crate only through its
    // own serialization.
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.extend_from_slice(&[0b0011_0000 | (qos << 1)]);
    raw.extend_from_slice(&pkid.to_be_bytes());
    raw.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    raw.extend_from_slice(topic);
    raw.extend_from_slice(payload);
    Publish::deserialize(raw.freeze())
}

fn encode(packet: Packet, buf: &mut BytesMut) -> Result<(), Close> {
    V4.write(packet, buf)
        .map(drop)
        .map_err(|_| Close::Violation("a packet could not be encoded"))
}
