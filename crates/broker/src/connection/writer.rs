//! Broker to client: everything the router sends the client's link (forwarded messages, its
//! acknowledgements), and the replies of our own that the reader queues, written with
//! rumqttd's codec in as few writes as there are batches.
//!
//! Each forwarded message's log offset goes to `delivery`, which finds messages the router
//! skipped. SUBACK and UNSUBACK packets are completed here: a SUBACK gets the codes of the
//! filters the reader refused, and of the router's UNSUBACKs for one UNSUBSCRIBE (one per
//! filter) only the last goes out.

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use rumqttd::local::LinkRx;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol as _, SubAck, SubscribeReasonCode};
use rumqttd::Notification;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{Close, Conn, PendingAck};
use crate::delivery::Delivery;

/// Notifications taken from the router's link per write, at most.
const MAX_BATCH: usize = 1024;

/// Writes until the connection ends; returns why it ended.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    conn: &Conn<'_>,
    mut socket: W,
    link: &mut LinkRx,
    outbox: &mut mpsc::Receiver<Bytes>,
    delivery: &mut Delivery,
) -> Close {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let mut unscheduled = false;
        let mut ended = None;
        tokio::select! {
            notification = link.next() => {
                match notification {
                    Ok(notification) => {
                        delivery.acknowledged(conn.acked.load(Ordering::Relaxed));
                        let mut next = notification;
                        for _ in 0..MAX_BATCH {
                            if let Some(notification) = next {
                                match write(conn, notification, &mut buf, delivery) {
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
            replies = outbox.recv() => match replies {
                Some(replies) => {
                    buf.extend_from_slice(&replies);
                    while let Ok(more) = outbox.try_recv() {
                        buf.extend_from_slice(&more);
                    }
                }
                None => ended = Some(Close::ReaderGone),
            },
        }
        if !buf.is_empty() {
            if let Err(e) = socket.write_all(&buf).await {
                return Close::SocketError(e.kind());
            }
            buf.clear();
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

/// Encodes one notification into `buf`; returns whether the router paused the link.
fn write(
    conn: &Conn<'_>,
    notification: Notification,
    buf: &mut BytesMut,
    delivery: &mut Delivery,
) -> Result<bool, Close> {
    let packet = match notification {
        Notification::Forward(forward) => {
            let offset = forward.cursor.map(|(_segment, offset)| offset);
            let topic = forward.publish.topic.clone();
            let start = buf.len();
            encode(Packet::Publish(forward.publish, forward.properties), buf)?;
            // The router sends at the subscription's QoS; the fixed header says which.
            let qos = (buf[start] >> 1) & 0x03;
            if let Some(skipped) = delivery.forwarded(&topic, offset, qos) {
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
        Packet::SubAck(suback, _) => match complete_suback(conn, suback, delivery) {
            Some(suback) => Packet::SubAck(suback, None),
            None => return Ok(false),
        },
        Packet::UnsubAck(unsuback, props) => {
            if !complete_unsuback(conn, unsuback.pkid, delivery) {
                return Ok(false);
            }
            Packet::UnsubAck(unsuback, props)
        }
        packet => packet,
    };
    encode(packet, buf)?;
    Ok(false)
}

fn encode(packet: Packet, buf: &mut BytesMut) -> Result<(), Close> {
    V4.write(packet, buf)
        .map(drop)
        .map_err(|_| Close::Violation("a packet could not be encoded"))
}

/// Puts the router's return codes where the reader left room for them; logs what the client
/// now reads, and lets held publishes go.
fn complete_suback(conn: &Conn<'_>, suback: SubAck, delivery: &mut Delivery) -> Option<SubAck> {
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
        delivery.subscribed(filter);
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
fn complete_unsuback(conn: &Conn<'_>, pkid: u16, delivery: &mut Delivery) -> bool {
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
        delivery.unsubscribed(filter);
    }
    conn.barrier.lower();
    true
}
