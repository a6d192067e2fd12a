//! Packet ids for the batched writes, chosen by us rather than by rumqttc.
//!
//! rumqttc numbers publishes 1, 2, 3... around its window and checks only that the next
//! id is not awaiting a PUBACK or PUBREC. When acknowledgements complete out of order
//! (after a reconnect the ledger resends in packet-id order, PUBRELs last) that goes
//! wrong in two ways, both seen in a QoS 2 run cut every few dozen milliseconds: an id
//! still awaiting its PUBCOMP is given to a new publish, so one PUBCOMP completes two
//! readings' exchanges and the second reading is never acknowledged; and a publish that
//! collides is held and, at QoS 2, sent at the PUBCOMP without being recorded, so its
//! PUBREC is "unsolicited", the connection drops and the reading is forgotten.
//!
//! [`PacketIds`] follows every id from its publish to the end of its exchange (PUBACK at
//! QoS 1, PUBCOMP at QoS 2) from the events the driver counts anyway, and gives out only
//! ids that are free. Ids survive a reconnect unchanged: the ledger resends each
//! unacknowledged publish and PUBREL under its id.

use rumqttc::{Event, Incoming, Outgoing};

/// The ids of one device's exchanges in flight, 1..=window.
#[derive(Debug)]
pub struct PacketIds {
    /// `busy[id]`: the exchange under `id` is not complete (index 0 unused).
    busy: Vec<bool>,
    in_use: usize,
    /// Where the search for a free id starts: after the last one given out.
    next: u16,
    /// The acknowledgement that completes an exchange: PUBCOMP at QoS 2, else PUBACK.
    qos2: bool,
}

impl PacketIds {
    pub fn new(window: u16, qos: u8) -> PacketIds {
        PacketIds {
            busy: vec![false; usize::from(window) + 1],
            in_use: 0,
            next: 1,
            qos2: qos == 2,
        }
    }

    /// A free id, now counted as in use; `None` when every id is.
    pub fn take(&mut self) -> Option<u16> {
        let window = self.busy.len() - 1;
        if self.in_use >= window {
            return None;
        }
        for _ in 0..window {
            let id = self.next;
            self.next = if usize::from(id) >= window { 1 } else { id + 1 };
            if !self.busy[usize::from(id)] {
                self.mark(id, true);
                return Some(id);
            }
        }
        None
    }

    /// Gives back an id [`PacketIds::take`] gave out and nothing used.
    pub fn release(&mut self, id: u16) {
        self.mark(id, false);
    }

    /// Follows one event of the connection: a publish or PUBREL written holds its id, the
    /// acknowledgement that ends its exchange frees it.
    pub fn see(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(id) | Outgoing::PubRel(id)) => self.mark(*id, true),
            Event::Incoming(Incoming::PubAck(ack)) if !self.qos2 => self.mark(ack.pkid, false),
            Event::Incoming(Incoming::PubComp(ack)) if self.qos2 => self.mark(ack.pkid, false),
            _ => {}
        }
    }

    fn mark(&mut self, id: u16, busy: bool) {
        // Id 0 (QoS 0) and ids beyond the window are not ours to follow.
        let Some(slot) = self.busy.get_mut(usize::from(id)).filter(|_| id != 0) else {
            return;
        };
        if *slot != busy {
            *slot = busy;
            if busy {
                self.in_use += 1;
            } else {
                self.in_use -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{PubAck, PubComp, PubRec};

    fn ack(id: u16) -> Event {
        Event::Incoming(Incoming::PubAck(PubAck::new(id)))
    }

    #[test]
    fn ids_go_round_the_window_and_skip_those_in_flight() {
        let mut ids = PacketIds::new(4, 1);
        assert_eq!(
            [ids.take(), ids.take(), ids.take()],
            [Some(1), Some(2), Some(3)]
        );
        // Acknowledged out of order: 2 is free again, 1 and 3 are not.
        ids.see(&ack(2));
        assert_eq!(ids.take(), Some(4));
        assert_eq!(ids.take(), Some(2));
        assert_eq!(ids.take(), None, "all four in flight");
        ids.see(&ack(3));
        assert_eq!(ids.take(), Some(3));
        // What rumqttc says it wrote holds its id; an id given back is free.
        ids.see(&ack(1));
        ids.see(&Event::Outgoing(Outgoing::Publish(1)));
        assert_eq!(ids.take(), None);
        ids.release(4);
        assert_eq!(ids.take(), Some(4));
        // Out-of-range ids and QoS 0's id 0 change nothing.
        ids.see(&ack(0));
        ids.see(&ack(9));
        assert_eq!(ids.take(), None);
    }

    #[test]
    fn at_qos_2_an_id_is_free_only_after_its_pubcomp() {
        let mut ids = PacketIds::new(2, 2);
        assert_eq!((ids.take(), ids.take()), (Some(1), Some(2)));
        ids.see(&Event::Incoming(Incoming::PubRec(PubRec::new(1))));
        ids.see(&Event::Outgoing(Outgoing::PubRel(1)));
        ids.see(&ack(1));
        assert_eq!(ids.take(), None, "1 still awaits its PUBCOMP");
        ids.see(&Event::Incoming(Incoming::PubComp(PubComp { pkid: 1 })));
        assert_eq!(ids.take(), Some(1));
        // A PUBREL resent after a reconnect holds its id until its PUBCOMP.
        let mut ids = PacketIds::new(2, 2);
        ids.see(&Event::Outgoing(Outgoing::PubRel(2)));
        assert_eq!((ids.take(), ids.take()), (Some(1), None));
    }
}
