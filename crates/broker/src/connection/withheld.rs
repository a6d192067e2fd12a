//! Messages the router forwards that the client may not read (its ACL denies their topic):
//! the client never sees them, but the router's window needs each acknowledged, in order
//! with the client's own acknowledgements of the messages around it (the router drops a
//! connection whose acknowledgements come out of order). Under the broker's window the
//! router is acknowledged at once anyway (see `window`); under the router's own window
//! (persistent sessions, QoS 2) this queue puts our acknowledgements where they belong:
//! PUBACK/PUBREC in the order of the forwards, PUBCOMP in the order of the router's PUBRELs.

use std::collections::{HashSet, VecDeque};

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
};

/// One QoS 1/2 message under the router's window, awaiting its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    pkid: u16,
    qos: u8,
    /// Withheld from the client: ours to acknowledge.
    withheld: bool,
}

/// The acknowledgements the router waits for, in its order.
#[derive(Debug, Default)]
pub(super) struct Withheld {
    /// Forwards awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    received: VecDeque<Pending>,
    /// QoS 2 messages the router sent PUBREL for, awaiting PUBCOMP; `true` if withheld.
    released: VecDeque<(u16, bool)>,
    /// Withheld QoS 2 messages whose PUBREL from the router is still to come.
    withheld_qos2: HashSet<u16>,
}

impl Withheld {
    /// A QoS 1/2 forward under the router's window. Returns the acknowledgements due now.
    pub(super) fn forwarded(&mut self, pkid: u16, qos: u8, withheld: bool) -> Vec<Packet> {
        if withheld && qos == 2 {
            self.withheld_qos2.insert(pkid);
        }
        self.received.push_back(Pending {
            pkid,
            qos,
            withheld,
        });
        self.release_received()
    }

    /// The client acknowledged (PUBACK/PUBREC) `packet`: it goes to the router, and after it
    /// whatever withheld ones were waiting behind it.
    pub(super) fn client_acked(&mut self, pkid: u16, packet: Packet) -> Vec<Packet> {
        if self
            .received
            .front()
            .is_some_and(|p| p.pkid == pkid && !p.withheld)
        {
            self.received.pop_front();
        }
        let mut out = vec![packet];
        out.extend(self.release_received());
        out
    }

    /// The router sent PUBREL for `pkid`. Returns `None` to pass it on to the client, or the
    /// acknowledgements due now if the message was withheld (the PUBREL goes no further).
    pub(super) fn router_released(&mut self, pkid: u16) -> Option<Vec<Packet>> {
        let withheld = self.withheld_qos2.remove(&pkid);
        self.released.push_back((pkid, withheld));
        withheld.then(|| self.release_released())
    }

    /// The client completed (PUBCOMP) `packet`: it goes to the router, and after it the
    /// withheld completions waiting behind it.
    pub(super) fn client_completed(&mut self, pkid: u16, packet: Packet) -> Vec<Packet> {
        if self
            .released
            .front()
            .is_some_and(|&(p, withheld)| p == pkid && !withheld)
        {
            self.released.pop_front();
        }
        let mut out = vec![packet];
        out.extend(self.release_released());
        out
    }

    /// Whether nothing is pending.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.received.is_empty() && self.released.is_empty() && self.withheld_qos2.is_empty()
    }

    /// PUBACK/PUBREC for the withheld forwards at the front.
    fn release_received(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(front) = self.received.front().copied().filter(|p| p.withheld) {
            self.received.pop_front();
            out.push(match front.qos {
                2 => Packet::PubRec(
                    PubRec {
                        pkid: front.pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                ),
                _ => Packet::PubAck(
                    PubAck {
                        pkid: front.pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                ),
            });
        }
        out
    }

    /// PUBCOMP for the withheld releases at the front.
    fn release_released(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(&(pkid, true)) = self.released.front() {
            self.released.pop_front();
            out.push(Packet::PubComp(
                PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                },
                None,
            ));
        }
        out
    }

    /// Forwards still awaiting PUBACK/PUBREC.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.received.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkids(packets: &[Packet]) -> Vec<(u8, u16)> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => (4, a.pkid),
                Packet::PubRec(r, _) => (5, r.pkid),
                Packet::PubComp(c, _) => (7, c.pkid),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn ack(pkid: u16) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )
    }

    #[test]
    fn a_withheld_forward_is_acknowledged_after_the_ones_before_it() {
        let mut w = Withheld::default();
        assert!(w.forwarded(1, 1, false).is_empty());
        assert!(w.forwarded(2, 1, true).is_empty(), "1 is still out");
        assert!(w.forwarded(3, 1, false).is_empty());
        assert_eq!(pkids(&w.client_acked(1, ack(1))), [(4, 1), (4, 2)]);
        assert_eq!(pkids(&w.client_acked(3, ack(3))), [(4, 3)]);
        assert_eq!(w.pending(), 0);
        // At the front, a withheld forward is acknowledged at once.
        assert_eq!(pkids(&w.forwarded(4, 1, true)), [(4, 4)]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_withheld_qos2_message_goes_through_pubrec_and_pubcomp_in_order() {
        let mut w = Withheld::default();
        assert!(w.forwarded(1, 2, false).is_empty());
        assert!(w.forwarded(2, 2, true).is_empty());
        let rec1 = Packet::PubRec(
            PubRec {
                pkid: 1,
                reason: PubRecReason::Success,
            },
            None,
        );
        assert_eq!(pkids(&w.client_acked(1, rec1)), [(5, 1), (5, 2)]);
        assert_eq!(w.router_released(1), None, "the client's own: passed on");
        assert_eq!(w.router_released(2).map(|p| pkids(&p)), Some(vec![]));
        let comp1 = Packet::PubComp(
            PubComp {
                pkid: 1,
                reason: PubCompReason::Success,
            },
            None,
        );
        assert_eq!(pkids(&w.client_completed(1, comp1)), [(7, 1), (7, 2)]);
        assert!(w.is_empty());
    }
}
