//! Client to broker: reads the socket in batches, checks every packet whole, and hands each
//! on. PUBLISH packets go to the router through the ingest link and are acknowledged by us
//! (PUBACK, PUBREC/PUBCOMP) once handed on; SUBSCRIBE, UNSUBSCRIBE and the client's
//! acknowledgements of what it receives go to the router over the client's own link;
//! PINGREQ is answered here.
//!
//! Publishes are handed on in the order they came, and wait (unacknowledged) while
//! - a SUBSCRIBE or UNSUBSCRIBE of the same client is unanswered by the router, so that a
//!   client that subscribes and then publishes sees the router do the same, in that order;
//! - flow control holds them (see `flow`): a log they go to cannot take more until its
//!   slowest reader moves on.
//!
//! The reader keeps reading meanwhile, so acknowledgements the router is waiting for still
//! flow and a client that publishes into a filter it reads itself cannot stall itself. What
//! waits is bounded by the client's own in-flight window; beyond `[flow] max_parked_bytes` the
//! client is disconnected, and QoS 0 publishes beyond a small number are dropped and counted.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    Packet, PingResp, Protocol as _, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tracing::info;

use super::{window, Close, Conn, Outbound, PendingAck};
use crate::flow::{Admission, Change, ReaderKey};
use crate::ingest::Message;
use crate::packet::{self, FixedHeader};

/// Bytes read from the socket at once, at most.
const CHUNK: usize = 64 * 1024;

/// QoS 0 publishes that may wait for flow control; beyond, they are dropped (and counted).
const MAX_PARKED_QOS0: usize = 1000;

/// A publish accepted from the client, waiting to be handed on and acknowledged.
struct Accepted {
    /// `None` for a message delivered to no one (a `$` topic, a QoS 2 resend).
    message: Option<Message>,
    retain: bool,
    qos: u8,
    pkid: u16,
}

impl Accepted {
    /// What it holds of the client's memory while it waits.
    fn bytes(&self) -> usize {
        self.message
            .as_ref()
            .map_or(0, |m| m.topic.len() + m.payload.len())
    }
}

/// The reader's state between batches.
struct Reader<'c, 'h> {
    conn: &'c Conn<'h>,
    /// Publishes not yet handed on, in the order they came.
    held: VecDeque<Accepted>,
    held_bytes: usize,
    held_qos0: usize,
    /// Since when flow control holds this client's publishes.
    parked_since: Option<Instant>,
    /// Packets for the router's link, this batch.
    to_router: Vec<Packet>,
    /// Messages for the ingest link, this batch.
    to_ingest: Vec<Message>,
    /// A message of this batch went to a subscriber directly (see `direct`).
    sent_direct: bool,
    /// Encoded packets of ours for the client (acknowledgements), this batch.
    replies: BytesMut,
    /// With storage: the replies wait until the log has committed every record below this
    /// (their publishes'); 0 when they need not wait.
    replies_after: u64,
    /// The client's acknowledgements of messages sent under the broker's window, this batch.
    window_acks: Vec<u16>,
    /// SUBACKs of ours (see `Conn::catching_up`), this batch.
    subacks: Vec<SubAck>,
    /// QoS 2 packet ids received and not yet released (PUBREL): a resend is not delivered
    /// twice.
    qos2: HashSet<u16>,
    /// Filters the client is subscribed to, as far as the router will have been told.
    subscribed: HashSet<String>,
}

/// Reads until the connection ends; returns why it ended.
pub(super) async fn run<R: AsyncRead + Unpin>(
    conn: &Conn<'_>,
    mut socket: R,
    mut buf: BytesMut,
    outbox: &mpsc::Sender<Outbound>,
    subscribed: HashSet<String>,
) -> Close {
    let mut reader = Reader {
        conn,
        held: VecDeque::new(),
        held_bytes: 0,
        held_qos0: 0,
        parked_since: None,
        to_router: Vec::new(),
        to_ingest: Vec::new(),
        sent_direct: false,
        replies: BytesMut::new(),
        replies_after: 0,
        window_acks: Vec::new(),
        subacks: Vec::new(),
        qos2: HashSet::new(),
        subscribed,
    };
    let keep_alive = conn.keep_alive_timeout();
    let close = loop {
        let verdict = reader.take_packets(&mut buf);
        if let Err(close) = reader.hand_on(outbox).await {
            break close;
        }
        let more = match verdict {
            Ok(more) => more,
            Err(close) => break close,
        };
        if reader.held_bytes > conn.hub.flow_limits.max_parked_bytes {
            break Close::Violation("held back more than [flow] max_parked_bytes of publishes");
        }
        if more {
            // A full batch: the buffer may hold more whole packets. Let others run first.
            tokio::task::yield_now().await;
            continue;
        }
        if buf.capacity() - buf.len() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        let waiting = !reader.held.is_empty();
        tokio::select! {
            read = read_some(&mut socket, &mut buf, keep_alive) => match read {
                Ok(n) => {
                    conn.hub.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(close) => break close,
            },
            () = conn.wake.notified(), if waiting => {}
        }
    };
    reader.unparked();
    close
}

/// Reads what the socket has (returns how much); the keep-alive deadline (1.5 times the
/// client's) starts anew with every read.
async fn read_some<R: AsyncRead + Unpin>(
    socket: &mut R,
    buf: &mut BytesMut,
    keep_alive: Option<std::time::Duration>,
) -> Result<usize, Close> {
    let read = match keep_alive {
        Some(limit) => match tokio::time::timeout(limit, socket.read_buf(buf)).await {
            Ok(read) => read,
            Err(_) => return Err(Close::KeepAliveTimeout),
        },
        None => socket.read_buf(buf).await,
    };
    match read {
        Ok(0) => Err(Close::SocketClosed),
        Ok(n) => Ok(n),
        Err(e) => Err(Close::SocketError(e.kind())),
    }
}

impl Reader<'_, '_> {
    /// Takes whole packets out of `buf`, at most `read_batch` of them; returns whether it
    /// stopped at that limit (more may be waiting). A packet that breaks a rule ends the
    /// connection; the valid ones before it are still handed on.
    fn take_packets(&mut self, buf: &mut BytesMut) -> Result<bool, Close> {
        let limits = &self.conn.hub.limits;
        for _ in 0..limits.read_batch {
            let header = match packet::fixed_header(buf, limits.max_packet) {
                Ok(Some(header)) if buf.len() >= header.frame_len() => header,
                Ok(_) => return Ok(false),
                Err(violation) => return Err(Close::Violation(violation.reason)),
            };
            let frame = buf.split_to(header.frame_len());
            packet::check_packet(&header, &frame).map_err(|v| Close::Violation(v.reason))?;
            self.take(&header, frame)?;
        }
        Ok(true)
    }

    fn take(&mut self, header: &FixedHeader, frame: BytesMut) -> Result<(), Close> {
        let pkid = || u16::from_be_bytes([frame[2], frame[3]]);
        match header.packet_type() {
            3 => self.publish(header, &frame),
            // A message of ours (sent under the broker's window, or a retained one): the
            // router has nothing to do with it.
            4 | 7 if window::is_ours(pkid()) => self.window_acks.push(pkid()),
            5 if window::is_ours(pkid()) => {
                let pubrel = PubRel {
                    pkid: pkid(),
                    reason: PubRelReason::Success,
                };
                self.reply(Packet::PubRel(pubrel, None))?;
            }
            4 | 5 => {
                // The client acknowledges a QoS 1/2 message the router forwarded.
                let pkid = pkid();
                self.conn.acked.fetch_add(1, Ordering::Relaxed);
                let packet = decode(frame)?;
                match self.conn.lock_withheld() {
                    // With an ACL, acknowledgements of withheld messages go in between, in
                    // order: this one goes to the router now, under the lock.
                    Some(mut withheld) => {
                        let acks = withheld.client_acked(pkid, packet);
                        let ours = acks.len() as u64 - 1;
                        self.conn.acked.fetch_add(ours, Ordering::Relaxed);
                        self.conn.to_router(self.to_router.drain(..).chain(acks))?;
                    }
                    None => self.to_router.push(packet),
                }
            }
            7 => {
                let pkid = pkid();
                let packet = decode(frame)?;
                match self.conn.lock_withheld() {
                    Some(mut withheld) => {
                        let acks = withheld.client_completed(pkid, packet);
                        self.conn.to_router(self.to_router.drain(..).chain(acks))?;
                    }
                    None => self.to_router.push(packet),
                }
            }
            6 => {
                let pkid = pkid();
                self.qos2.remove(&pkid);
                let pubcomp = PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                };
                self.reply(Packet::PubComp(pubcomp, None))?;
            }
            8 => self.subscribe(decode(frame)?)?,
            10 => self.unsubscribe(decode(frame)?)?,
            12 => self.reply(Packet::PingResp(PingResp))?,
            14 => return Err(Close::Disconnected),
            // check_packet lets nothing else through.
            _ => return Err(Close::Violation("unexpected packet type")),
        }
        Ok(())
    }

    fn publish(&mut self, header: &FixedHeader, frame: &[u8]) {
        let Ok(fields) = packet::publish_fields(header, frame) else {
            return;
        };
        let stats = &self.conn.hub.stats;
        stats.messages_received.fetch_add(1, Ordering::Relaxed);
        if fields.qos == 0 && self.parked_since.is_some() && self.held_qos0 >= MAX_PARKED_QOS0 {
            // QoS 0 promises nothing; held back without end it would only cost memory.
            stats.qos0_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let topic = &frame[fields.topic.clone()];
        let deliver = if packet::is_reserved_topic(topic) {
            stats.reserved_topic.fetch_add(1, Ordering::Relaxed);
            false
        } else if !self.conn.may_write(topic) {
            // As Mosquitto does: acknowledged, delivered to no one.
            stats.denied_publish.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            // A QoS 2 resend of a message not yet released was delivered already.
            fields.qos < 2 || self.qos2.insert(fields.pkid)
        };
        let message = deliver.then(|| {
            // One copy of topic and payload together: a stored message must not pin the
            // whole read buffer, and messages must not share a reference count either (the
            // router's thread and ours would fight over its cache line).
            let whole = Bytes::copy_from_slice(&frame[fields.topic.start..]);
            let payload_at = fields.payload.start - fields.topic.start;
            Message {
                topic: whole.slice(..topic.len()),
                payload: whole.slice(payload_at..),
            }
        });
        let accepted = Accepted {
            message,
            retain: fields.retain,
            qos: fields.qos,
            pkid: fields.pkid,
        };
        self.held_bytes += accepted.bytes();
        self.held_qos0 += usize::from(accepted.qos == 0);
        self.held.push_back(accepted);
    }

    /// Grants each filter or refuses it (0x80). Granted ones go to the router, at once and
    /// while flow control knows it (a new reader starts at the end of its log); the writer
    /// completes the SUBACK with the refusals when the router's arrives.
    fn subscribe(&mut self, packet: Packet) -> Result<(), Close> {
        let Packet::Subscribe(mut subscribe, _) = packet else {
            return Err(Close::Violation("malformed SUBSCRIBE"));
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters.drain(..) {
            match self.conn.refusal(&filter.path) {
                Some(reason) => {
                    self.conn.hub.log.warn(format_args!(
                        "refused a subscription to {:?} of client {:?} from {}: {reason} (SUBACK 0x80)",
                        filter.path, self.conn.client_id, self.conn.peer
                    ));
                    codes.push(Some(SubscribeReasonCode::Failure));
                }
                None => {
                    codes.push(None);
                    granted.push(filter);
                }
            }
        }
        if granted.is_empty() {
            let suback = SubAck {
                pkid: subscribe.pkid,
                return_codes: codes.into_iter().flatten().collect(),
            };
            return self.reply(Packet::SubAck(suback, None));
        }
        let storage = self.conn.session_storage();
        // While the session catches up from disk the router would hold this SUBACK; when it
        // only repeats subscriptions the session has, at their QoS, the answer is ours.
        let unchanged = self.conn.catching_up.load(Ordering::Acquire)
            && storage.is_some_and(|storage| {
                granted.iter().all(|f| {
                    self.subscribed.contains(&f.path)
                        && storage.subscription_qos(&self.conn.router_id, &f.path)
                            == Some(f.qos as u8)
                })
            });
        self.before_barrier()?;
        let mut flow = self.conn.hub.lock_flow();
        // Everything appended to the mirror goes to the router first (see the end).
        self.flush_ingest()?;
        let mut filters = Vec::with_capacity(granted.len());
        for filter in &granted {
            if let Some(storage) = storage {
                storage.subscribed(&self.conn.router_id, &filter.path, filter.qos as u8);
            }
            let start = if self.subscribed.insert(filter.path.clone()) {
                let (reader, log) = ReaderKey::of(&self.conn.router_id, &filter.path);
                let start = flow.subscribe(reader.clone(), &log);
                if let (Some(tx), ReaderKey::Client(_), 0..=1) =
                    (&self.conn.direct, &reader, filter.qos as u8)
                {
                    flow.take_direct(&reader, &log, tx.clone());
                }
                Some(start)
            } else {
                None
            };
            filters.push((filter.path.clone(), filter.qos as u8, start));
        }
        self.conn
            .expect(subscribe.pkid, PendingAck::Subscribe { codes, filters });
        if unchanged {
            drop(flow);
            let return_codes = granted
                .iter()
                .map(|f| match f.qos as u8 {
                    0 => SubscribeReasonCode::QoS0,
                    1 => SubscribeReasonCode::QoS1,
                    _ => SubscribeReasonCode::QoS2,
                })
                .collect();
            let suback = SubAck {
                pkid: subscribe.pkid,
                return_codes,
            };
            self.subacks.push(suback);
            return Ok(());
        }
        subscribe.filters = granted;
        self.to_router.push(Packet::Subscribe(subscribe, None));
        // Sent while flow control is locked and after every append was flushed to the
        // router, so none can come between: the router starts the new readers exactly where
        // `subscribe` said.
        self.conn.to_router(self.to_router.drain(..))
    }

    /// Only filters the client holds go to the router, which answers each with an UNSUBACK of
    /// its own; the writer passes on one. Without any, the UNSUBACK is ours (MQTT-3.10.4-5).
    fn unsubscribe(&mut self, packet: Packet) -> Result<(), Close> {
        let Packet::Unsubscribe(unsubscribe, _) = packet else {
            return Err(Close::Violation("malformed UNSUBSCRIBE"));
        };
        let mut held = Vec::new();
        let storage = self.conn.session_storage();
        for filter in &unsubscribe.filters {
            if let Some(storage) = storage {
                storage.unsubscribed(&self.conn.router_id, filter);
            }
            if self.subscribed.remove(filter) {
                held.push(filter.clone());
            }
        }
        if held.is_empty() {
            let unsuback = UnsubAck {
                pkid: unsubscribe.pkid,
                reasons: vec![UnsubAckReason::Success],
            };
            return self.reply(Packet::UnsubAck(unsuback, None));
        }
        self.before_barrier()?;
        self.conn.expect(
            unsubscribe.pkid,
            PendingAck::Unsubscribe {
                filters: held.clone(),
                remaining: held.len(),
            },
        );
        let unsubscribe = Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: held,
        };
        self.to_router.push(Packet::Unsubscribe(unsubscribe, None));
        Ok(())
    }

    /// Publishes that came before a SUBSCRIBE/UNSUBSCRIBE go to the router before it (as far
    /// as nothing else holds them), then the barrier goes up.
    fn before_barrier(&mut self) -> Result<(), Close> {
        self.release_held()?;
        self.flush_ingest()?;
        self.conn.barrier.raise();
        Ok(())
    }

    /// Hands on the held publishes, in order, as far as nothing holds them: appends them to
    /// the logs flow control mirrors and the router's together, and acknowledges them.
    fn release_held(&mut self) -> Result<(), Close> {
        if self.held.is_empty() || self.conn.barrier.is_raised() {
            return Ok(());
        }
        let hub = self.conn.hub;
        let mut flow = hub.lock_flow();
        while let Some(front) = self.held.front() {
            let logs = match &front.message {
                None => None,
                Some(message) => match flow.admit(&message.topic) {
                    Admission::Append(logs) => Some(logs),
                    Admission::NoSubscriber => {
                        hub.stats.no_subscriber.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Admission::Park(park) => {
                        if let Some(Change::Holding {
                            filter,
                            reader,
                            lag,
                            unannounced,
                        }) = flow.park(&park, &self.conn.wake)
                        {
                            info!(
                                filter,
                                lag,
                                unannounced,
                                "flow control holds publishers to {filter}: its slowest \
                                 subscriber ({reader}) is {lag} messages behind"
                            );
                        }
                        self.parked_since.get_or_insert_with(Instant::now);
                        break;
                    }
                },
            };
            let Some(accepted) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= accepted.bytes();
            self.held_qos0 -= usize::from(accepted.qos == 0);
            if let Some(message) = accepted.message {
                if accepted.retain {
                    hub.retained
                        .publish(&message.topic, &message.payload, accepted.qos);
                }
                // Logged before its acknowledgement can go, in the router's order.
                let record = hub.storage.as_ref().map(|storage| {
                    let stored = accepted.retain || (logs.is_some() && accepted.qos > 0);
                    if !stored {
                        return (storage.next_id(), false);
                    }
                    let id = storage.publish(
                        &message.topic,
                        &message.payload,
                        accepted.qos,
                        accepted.retain,
                        logs.is_some(),
                    );
                    (id, true)
                });
                if let Some((id, true)) = record {
                    self.replies_after = id + 1;
                }
                if let Some(logs) = logs {
                    self.sent_direct |= flow.send_direct(&logs, &message);
                    flow.append(&logs, message.counted_size(), record.map(|(id, _)| id));
                    self.to_ingest.push(message);
                }
            }
            acknowledge(&mut self.replies, accepted.qos, accepted.pkid);
        }
        if self.held.is_empty() {
            self.unparked();
        }
        // Appended to the mirror and queued for the router under one lock, in one order.
        hub.ingest.queue(&mut self.to_ingest);
        Ok(())
    }

    /// Hands what `release_held` queued to the router.
    fn flush_ingest(&mut self) -> Result<(), Close> {
        self.sent_direct = false;
        self.conn.hub.ingest.flush().map_err(|_| Close::RouterGone)
    }

    /// Flow control no longer holds this client: counts the time it did.
    fn unparked(&mut self) {
        if let Some(since) = self.parked_since.take() {
            self.conn.hub.count_held(since.elapsed());
        }
    }

    fn reply(&mut self, packet: Packet) -> Result<(), Close> {
        V4.write(packet, &mut self.replies)
            .map(drop)
            .map_err(|_| Close::Violation("a reply could not be encoded"))
    }

    /// Hands this batch on: router packets, then the publishes (as far as nothing holds
    /// them), then our replies to the client.
    async fn hand_on(&mut self, outbox: &mpsc::Sender<Outbound>) -> Result<(), Close> {
        self.conn.to_router(self.to_router.drain(..))?;
        self.release_held()?;
        if self.sent_direct {
            // The subscribers' direct copies go out first; the router's thread, woken now,
            // would run beside them, and on two cores make one of them wait for a CPU.
            tokio::task::yield_now().await;
        }
        self.flush_ingest()?;
        if !self.replies.is_empty() {
            let bytes = self.replies.split().freeze();
            let after = std::mem::take(&mut self.replies_after);
            let committed = self.conn.hub.storage.as_ref().map_or(0, |s| s.committed());
            let replies = if after > committed {
                Outbound::Committed(after, bytes)
            } else {
                Outbound::Bytes(bytes)
            };
            if outbox.send(replies).await.is_err() {
                return Err(Close::WriterGone);
            }
        }
        if !self.window_acks.is_empty() {
            let acks = Outbound::Acked(std::mem::take(&mut self.window_acks));
            if outbox.send(acks).await.is_err() {
                return Err(Close::WriterGone);
            }
        }
        for suback in std::mem::take(&mut self.subacks) {
            if outbox.send(Outbound::SubAck(suback)).await.is_err() {
                return Err(Close::WriterGone);
            }
        }
        Ok(())
    }
}

/// PUBACK (QoS 1) or PUBREC (QoS 2) for a publish we handed on.
fn acknowledge(replies: &mut BytesMut, qos: u8, pkid: u16) {
    let ack = match qos {
        1 => Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        ),
        2 => Packet::PubRec(
            PubRec {
                pkid,
                reason: PubRecReason::Success,
            },
            None,
        ),
        _ => return,
    };
    // Acknowledgements always encode.
    let _ = V4.write(ack, replies);
}

/// Decodes one whole, checked frame with rumqttd's codec, which fills in what the router
/// needs.
fn decode(mut frame: BytesMut) -> Result<Packet, Close> {
    V4.read_mut(&mut frame, usize::MAX)
        .map_err(|_| Close::Violation("malformed packet"))
}
