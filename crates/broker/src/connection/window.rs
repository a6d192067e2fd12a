//! The outgoing window toward a clean-session client. rumqttd's router sends a connection at
//! most 100 QoS 1/2 messages ahead of its acknowledgements, a window it does not let anyone
//! change; a fast subscriber then spends much of its time waiting for the next hundred. For a
//! clean session the broker keeps a larger window itself: it acknowledges each message to the
//! router as it sends it on (the router's window never fills), gives it a packet id of its own
//! (101 and up; the router's are 1 to 100), and stops taking the router's messages while its
//! own window is full, so the router holds the rest. MQTT discards a clean session's
//! unacknowledged messages with its connection, so nothing is lost that would have been kept.
//!
//! Persistent sessions keep the router's window, whose state the router saves for their
//! return. So do connections with a QoS 2 or `$share` subscription, once they have one: QoS 2
//! needs the router's four-packet exchange, and a share group's messages belong to the group.

use std::collections::VecDeque;

use bytes::BytesMut;
use rumqttd::Forward;

/// The router's packet ids are 1 to 100; ours follow.
const FIRST_PKID: u16 = 101;

/// Whether a packet id the client acknowledges is one of ours (not the router's).
pub(super) fn is_ours(pkid: u16) -> bool {
    pkid >= FIRST_PKID
}

/// Where a forward goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Sent under the broker's window: acknowledged to the router as it goes out.
    Broker,
    /// Sent as the router numbered it; the client's acknowledgement goes to the router.
    Router,
}

/// What waits in the window, in the router's order. (Nearly all of it forwards: boxing
/// them to shrink the rare skip would cost an allocation each.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Held {
    Forward(Forward, Mode),
    /// The router's copy of a message the client got directly (see `direct`): only its
    /// acknowledgement goes, in its turn (the router takes acknowledgements in order).
    Skip(u16),
}

#[derive(Debug)]
pub(super) struct Window {
    limit: usize,
    /// Whether new forwards go under the broker's window.
    broker_mode: bool,
    /// Our packet ids in flight, oldest first, and whether the client has acknowledged each.
    inflight: VecDeque<(u16, bool)>,
    next_pkid: u16,
    /// Forwards that wait for room, in the router's order; the router has not had them
    /// acknowledged, so it holds everything after them.
    held: VecDeque<Held>,
    /// Router packet ids to acknowledge on the client's behalf.
    router_acks: Vec<u16>,
    /// Every forward waits (a persistent session is being sent what it missed, first).
    paused: bool,
}

impl Window {
    /// A window of `limit` messages (0: the router's window only) for a connection.
    pub(super) fn new(limit: usize, clean_session: bool) -> Window {
        Window {
            limit,
            broker_mode: limit > 0 && clean_session,
            inflight: VecDeque::new(),
            next_pkid: FIRST_PKID - 1,
            held: VecDeque::new(),
            router_acks: Vec::new(),
            paused: false,
        }
    }

    /// Holds every forward until [`Window::resume`].
    pub(super) fn pause(&mut self) {
        self.paused = true;
    }

    pub(super) fn resume(&mut self) {
        self.paused = false;
    }

    /// Whether a message of the broker's own may go out now: our packet ids in flight stay
    /// within the window (at least the router's 100, when ours is off).
    pub(super) fn has_room_for_own(&self) -> bool {
        self.inflight.len() < self.limit.max(100)
    }

    /// Whether the client has acknowledged every message sent under our packet ids.
    pub(super) fn all_acked(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Whether a message may go out directly now, past the router (see `direct`): under our
    /// window, with room in it and nothing held (everything held goes first).
    pub(super) fn takes_direct(&self) -> bool {
        self.broker_mode && !self.paused && self.held.is_empty() && !self.full()
    }

    /// Whether forwards go under our window (not the router's).
    pub(super) fn broker_mode(&self) -> bool {
        self.broker_mode
    }

    /// From now on, forwards keep the router's window (a QoS 2 or shared subscription came).
    pub(super) fn use_routers(&mut self) {
        self.broker_mode = false;
    }

    /// Takes a forward from the router: returns it with its mode if it may go out now, or
    /// keeps it until there is room (everything after a held forward waits behind it).
    pub(super) fn admit(&mut self, forward: Forward) -> Option<(Forward, Mode)> {
        let mode = if self.broker_mode {
            Mode::Broker
        } else {
            Mode::Router
        };
        if self.paused || !self.held.is_empty() || (mode == Mode::Broker && self.full()) {
            self.held.push_back(Held::Forward(forward, mode));
            return None;
        }
        Some((forward, mode))
    }

    /// The router's copy of a message the client got directly, with the router's packet id
    /// (`None` at QoS 0): acknowledged to the router now, or after what is held before it.
    pub(super) fn skip(&mut self, router_pkid: Option<u16>) {
        let Some(pkid) = router_pkid else {
            return;
        };
        if self.held.is_empty() {
            self.router_acks.push(pkid);
        } else {
            self.held.push_back(Held::Skip(pkid));
        }
    }

    /// The next held forward that may go out now, if any.
    pub(super) fn release(&mut self) -> Option<(Forward, Mode)> {
        loop {
            match self.held.front() {
                _ if self.paused => return None,
                Some(Held::Forward(_, Mode::Broker)) if self.full() => return None,
                Some(Held::Skip(pkid)) => {
                    self.router_acks.push(*pkid);
                    self.held.pop_front();
                }
                Some(Held::Forward(..)) => {
                    return match self.held.pop_front() {
                        Some(Held::Forward(forward, mode)) => Some((forward, mode)),
                        _ => None,
                    };
                }
                None => return None,
            }
        }
    }

    fn full(&self) -> bool {
        self.inflight.len() >= self.limit
    }

    /// A forward was just encoded at `buf[start..]` under the broker's window: gives it our
    /// packet id and notes the router's for acknowledgement. QoS 0 needs neither.
    pub(super) fn sent(&mut self, buf: &mut BytesMut, start: usize) {
        if let Some(router_pkid) = self.number(buf, start) {
            self.router_acks.push(router_pkid);
        }
    }

    /// A packet id of ours for a QoS 1/2 message of the broker's own (a retained one).
    pub(super) fn own(&mut self) -> u16 {
        self.next_pkid = if self.next_pkid == u16::MAX {
            FIRST_PKID
        } else {
            self.next_pkid + 1
        };
        self.inflight.push_back((self.next_pkid, false));
        self.next_pkid
    }

    /// Writes our next packet id into the PUBLISH at `buf[start..]`; returns the one it had.
    fn number(&mut self, buf: &mut BytesMut, start: usize) -> Option<u16> {
        let at = start + pkid_offset(&buf[start..])?;
        let previous = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let pkid = self.own();
        buf[at..at + 2].copy_from_slice(&pkid.to_be_bytes());
        Some(previous)
    }

    /// The client acknowledged these packet ids of ours (in any order).
    pub(super) fn acked(&mut self, pkids: &[u16]) {
        for pkid in pkids {
            if let Some(entry) = self.inflight.iter_mut().find(|(p, _)| p == pkid) {
                entry.1 = true;
            }
        }
        while self.inflight.front().is_some_and(|(_, acked)| *acked) {
            self.inflight.pop_front();
        }
    }

    /// A forward under the broker's window that the client does not get (its ACL): the
    /// router is acknowledged as if it had gone out.
    pub(super) fn acknowledge_router(&mut self, router_pkid: u16) {
        self.router_acks.push(router_pkid);
    }

    /// How many router packet ids wait to be acknowledged.
    pub(super) fn router_acks_pending(&self) -> usize {
        self.router_acks.len()
    }

    /// Router packet ids to acknowledge now.
    pub(super) fn take_router_acks(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.router_acks)
    }
}

/// The packet id of the QoS 1/2 PUBLISH at the start of `frame`; `None` at QoS 0.
pub(super) fn pkid_of(frame: &[u8]) -> Option<u16> {
    let at = pkid_offset(frame)?;
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Where the packet id of the QoS 1/2 PUBLISH at the start of `frame` is; `None` at QoS 0.
fn pkid_offset(frame: &[u8]) -> Option<usize> {
    if (frame.first()? >> 1) & 0x03 == 0 {
        return None;
    }
    let mut header_len = 1;
    while frame.get(header_len)? & 0x80 != 0 {
        header_len += 1;
    }
    header_len += 1;
    let topic_len = usize::from(u16::from_be_bytes([
        *frame.get(header_len)?,
        *frame.get(header_len + 1)?,
    ]));
    Some(header_len + 2 + topic_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::{Packet, Protocol as _};

    /// A QoS 1 PUBLISH with the router's packet id `pkid`, as the router forwards it.
    fn forward(pkid: u16, payload: &[u8]) -> (Forward, BytesMut) {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[0x32, 0]);
        wire.extend_from_slice(&[0, 1, b't']);
        wire.extend_from_slice(&pkid.to_be_bytes());
        wire.extend_from_slice(payload);
        wire[1] = (wire.len() - 2) as u8;
        let Ok(Packet::Publish(publish, _)) = V4.read_mut(&mut wire.clone(), 1024) else {
            panic!("a publish");
        };
        let forward = Forward {
            cursor: Some((0, u64::from(pkid))),
            size: 0,
            publish,
            properties: None,
        };
        (forward, wire)
    }

    #[test]
    fn packet_ids_are_rewritten_and_router_ids_acknowledged() {
        let mut window = Window::new(2, true);
        let (f, wire) = forward(7, b"x");
        let (f, mode) = window.admit(f).expect("room");
        assert_eq!(mode, Mode::Broker);
        let mut buf = BytesMut::new();
        V4.write(Packet::Publish(f.publish, None), &mut buf)
            .unwrap();
        assert_eq!(buf, wire);
        window.sent(&mut buf, 0);
        assert_eq!(&buf[5..7], &101u16.to_be_bytes());
        assert_eq!(window.take_router_acks(), [7]);
    }

    #[test]
    fn a_full_window_holds_forwards_in_order_until_acknowledgements_come() {
        let mut window = Window::new(2, true);
        let mut buf = BytesMut::new();
        for pkid in 1..=2 {
            let (f, _) = window.admit(forward(pkid, b"x").0).expect("room");
            V4.write(Packet::Publish(f.publish, None), &mut buf)
                .unwrap();
            let start = buf.len() - 8;
            window.sent(&mut buf, start);
        }
        assert!(window.admit(forward(3, b"x").0).is_none(), "full: held");
        assert!(window.release().is_none());
        window.acked(&[102]);
        assert!(window.release().is_none(), "the oldest is still out");
        window.acked(&[101]);
        let (released, _) = window.release().expect("room again");
        assert_eq!(released.cursor, Some((0, 3)));
    }

    #[test]
    fn the_acknowledgement_of_a_skipped_copy_waits_behind_held_forwards() {
        let mut window = Window::new(1, true);
        let mut buf = BytesMut::new();
        let (f, _) = window.admit(forward(1, b"x").0).expect("room");
        V4.write(Packet::Publish(f.publish, None), &mut buf)
            .unwrap();
        window.sent(&mut buf, 0);
        assert_eq!(window.take_router_acks(), [1]);
        assert!(window.admit(forward(2, b"x").0).is_none(), "full: held");
        window.skip(Some(3));
        assert!(window.take_router_acks().is_empty(), "3 after 2");
        window.acked(&[101]);
        let (released, _) = window.release().expect("room again");
        assert_eq!(released.cursor, Some((0, 2)));
        buf.clear();
        V4.write(Packet::Publish(released.publish, None), &mut buf)
            .unwrap();
        window.sent(&mut buf, 0);
        assert!(window.release().is_none());
        assert_eq!(window.take_router_acks(), [2, 3]);
        window.skip(Some(4));
        assert_eq!(window.take_router_acks(), [4], "nothing held: at once");
    }

    #[test]
    fn persistent_sessions_keep_the_routers_window() {
        let mut window = Window::new(1000, false);
        let (_, mode) = window.admit(forward(1, b"x").0).expect("no limit of ours");
        assert_eq!(mode, Mode::Router);
        let mut window = Window::new(0, true);
        assert_eq!(
            window.admit(forward(1, b"x").0).map(|f| f.1),
            Some(Mode::Router)
        );
    }

    #[test]
    fn qos0_has_no_packet_id() {
        assert_eq!(pkid_offset(&[0x30, 4, 0, 1, b't', b'x']), None);
        assert_eq!(pkid_offset(&[0x32, 6, 0, 1, b't', 0, 9, b'x']), Some(5));
    }
}
