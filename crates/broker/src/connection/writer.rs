//! Broker to client: everything the router sends the client's link (forwarded messages, its
//! acknowledgements), and the replies of our own that the reader queues, written with
//! rumqttd's codec in as few writes as there are batches.
//!
//! Forwarded messages go through the outgoing `window`, and each one's log offset through
//! `delivery`, which finds messages the router skipped. SUBACK and UNSUBACK packets are
//! completed here: a SUBACK gets the codes of the filters the reader refused, and of the
//! router's UNSUBACKs for one UNSUBSCRIBE (one per filter) only the last goes out.

use bytes::BytesMut;
use futures_util::FutureExt as _;
use rumqttd::local::LinkRx;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol as _, PubAck, PubAckReason, SubAck, SubscribeReasonCode};
use rumqttd::{Forward, Notification};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::window::{Mode, Window};
use super::{Close, Conn, Outbound, PendingAck};
use crate::delivery::Delivery;

/// Notifications taken from the router's link per write, at most.
const MAX_BATCH: usize = 1024;

/// What the writer keeps between batches.
pub(super) struct Writer<'a> {
    pub delivery: &'a mut Delivery,
    pub window: Window,
    buf: BytesMut,
}

impl<'a> Writer<'a> {
    pub(super) fn new(delivery: &'a mut Delivery, window: Window) -> Writer<'a> {
        Writer {
            delivery,
            window,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }
}

/// Writes until the connection ends; returns why it ended.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    mut socket: W,
    link: &mut LinkRx,
    outbox: &mut mpsc::Receiver<Outbound>,
    writer: &mut Writer<'_>,
) -> Close {
    loop {
        let mut unscheduled = false;
        let mut ended = None;
        tokio::select! {
            notification = link.next() => {
                match notification {
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
            outbound = outbox.recv() => match outbound {
                Some(outbound) => {
                    writer.outbound(outbound);
                    while let Ok(more) = outbox.try_recv() {
                        writer.outbound(more);
                    }
                }
                None => ended = Some(Close::ReaderGone),
            },
        }
        if let Err(close) = writer.release(conn) {
            ended.get_or_insert(close);
        }
        if !writer.buf.is_empty() {
            if let Err(e) = socket.write_all(&writer.buf).await {
                return Close::SocketError(e.kind());
            }
            writer.buf.clear();
        }
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
            Packet::SubAck(suback, _) => match self.complete_suback(conn, suback) {
                Some(suback) => Packet::SubAck(suback, None),
                None => return Ok(false),
            },
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

    /// Something the reader queued for the client, or acknowledgements under our window.
    fn outbound(&mut self, outbound: Outbound) {
        match outbound {
            Outbound::Bytes(bytes) => self.buf.extend_from_slice(&bytes),
            Outbound::Acked(pkids) => self.window.acked(&pkids),
        }
    }

    /// Sends the held forwards there is room for, and acknowledges to the router what went
    /// out under our window.
    fn release(&mut self, conn: &Conn<'_>) -> Result<(), Close> {
        while let Some((forward, mode)) = self.window.release() {
            self.send(conn, forward, mode)?;
        }
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
        if mode == Mode::Broker {
            self.window.sent(&mut self.buf, start);
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

    /// Puts the router's return codes where the reader left room for them; logs what the
    /// client now reads, and lets held publishes go.
    fn complete_suback(&mut self, conn: &Conn<'_>, suback: SubAck) -> Option<SubAck> {
        let Some(PendingAck::Subscribe { codes, filters }) = conn.take_expected(suback.pkid) else {
            return Some(suback);
        };
        let mut granted = suback.return_codes.into_iter();
        let return_codes = codes
            .into_iter()
            .map(|code| {
                code.or_else(|| granted.next())
                    .unwrap_or(SubscribeReasonCode::Failure)
            })
            .collect();
        for (filter, qos) in &filters {
            if *qos == 2 || filter.starts_with("$share/") {
                self.window.use_routers();
            }
            self.delivery.subscribed(filter);
            info!(
                "client {:?} subscribed to {filter} (QoS {qos})",
                conn.client_id
            );
        }
        conn.barrier.lower();
        Some(SubAck {
            pkid: suback.pkid,
            return_codes,
        })
    }

    /// True when this UNSUBACK is the last the router sends for its UNSUBSCRIBE.
    fn complete_unsuback(&mut self, conn: &Conn<'_>, pkid: u16) -> bool {
        let Some(PendingAck::Unsubscribe { filters, remaining }) = conn.take_expected(pkid) else {
            return true;
        };
        if remaining > 1 {
            conn.expect(
                pkid,
                PendingAck::Unsubscribe {
                    filters,
                    remaining: remaining - 1,
                },
            );
            return false;
        }
        for filter in &filters {
            self.delivery.unsubscribed(filter);
        }
        conn.barrier.lower();
        true
    }
}

fn encode(packet: Packet, buf: &mut BytesMut) -> Result<(), Close> {
    V4.write(packet, buf)
        .map(drop)
        .map_err(|_| Close::Violation("a packet could not be encoded"))
}
