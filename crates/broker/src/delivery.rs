//! Where a subscriber stands in the router's logs. The router keeps one in-memory log per
//! subscription filter, and every message it forwards carries its offset in the log it came
//! from (`Forward::cursor`: offsets count messages). One subscriber's offsets in one log must
//! follow each other; a jump means the router skipped messages the subscriber had not read
//! (its log rolled over), and the broker counts them here, exactly, from what it forwards.
//!
//! Attribution needs to know which log a forward came from. It is certain when exactly one of
//! the connection's ordinary filters matches the topic, which is the pipeline's case (one
//! subscriber, one filter). Forwards that two of a connection's filters match, forwards through
//! a `$share` group (the group reads the log as a whole, each member sees part of it) and
//! retained messages (which come from outside the log) are not counted.

use std::collections::VecDeque;

use rumqttd::protocol::matches;

/// A subscription of this connection and the next offset expected in its log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sub {
    id: u32,
    filter: String,
    /// A `$share/GROUP/...` subscription: matched on its inner filter, never counted.
    shared: bool,
    /// The offset the next forward from this log should carry; `None` before the first.
    next: Option<u64>,
    /// Its position moved since flow control was last told.
    moved: bool,
    /// Two of the connection's filters matched one forward: this one's position cannot be
    /// followed.
    ambiguous: bool,
    /// Flow control has been told it is ambiguous.
    ambiguity_told: bool,
    /// The client got the messages below this offset from disk (see `connection::catch_up`):
    /// the next forward may jump to it without loss.
    covered_until: Option<u64>,
    /// It takes messages directly (see `direct`), at this QoS.
    direct_qos: Option<u8>,
}

impl Sub {
    fn inner_filter(&self) -> &str {
        if self.shared {
            shared_inner(&self.filter).unwrap_or(&self.filter)
        } else {
            &self.filter
        }
    }
}

fn shared_inner(filter: &str) -> Option<&str> {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, inner)| inner)
}

/// Messages the router skipped in one subscriber's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub filter: String,
    pub count: u64,
}

/// What a persistent session leaves behind: for each subscription, the offset the router will
/// resume it at (the first message the client has not acknowledged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    subs: Vec<(String, Option<u64>)>,
}

/// One connection's view of its subscriptions' logs.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// A persistent session: the router rereads its unacknowledged messages from the log when
    /// it comes back, so they count as unread.
    persistent: bool,
    subs: Vec<Sub>,
    next_id: u32,
    /// Forwards the router waits for the client to acknowledge, oldest first: which
    /// subscription each came through, if known, and its offset. Those acknowledgements come
    /// in order (the router disconnects a client whose do not), so a count is enough.
    inflight: VecDeque<(Option<u32>, Option<u64>)>,
    /// Acknowledgements already taken off `inflight`.
    acked: u64,
}

impl Delivery {
    /// A new connection's, clean or persistent.
    pub(crate) fn new(persistent: bool) -> Delivery {
        Delivery {
            persistent,
            ..Delivery::default()
        }
    }

    /// The delivery state of a persistent session that comes back.
    pub(crate) fn restore(saved: Saved) -> Delivery {
        let mut delivery = Delivery::new(true);
        for (filter, next) in saved.subs {
            delivery.subscribed(&filter, next);
        }
        delivery
    }

    /// The router has granted `filter` (its SUBACK came); its first message will be at
    /// offset `start`, if known.
    pub(crate) fn subscribed(&mut self, filter: &str, start: Option<u64>) {
        if self.subs.iter().any(|s| s.filter == filter) {
            return;
        }
        self.subs.push(Sub {
            id: self.next_id,
            filter: filter.to_owned(),
            shared: shared_inner(filter).is_some(),
            next: start,
            moved: false,
            ambiguous: false,
            ambiguity_told: false,
            covered_until: None,
            direct_qos: None,
        });
        self.next_id = self.next_id.wrapping_add(1);
    }

    /// The subscriptions, as the router holds them.
    pub(crate) fn filters(&self) -> impl Iterator<Item = &str> {
        self.subs.iter().map(|s| s.filter.as_str())
    }

    /// The router has removed `filter` (its UNSUBACK came).
    pub(crate) fn unsubscribed(&mut self, filter: &str) {
        self.subs.retain(|s| s.filter != filter);
    }

    /// Records one forward of a message on `topic` at `offset` (`None` for a retained
    /// message); `awaits_ack` if the router waits for the client's acknowledgement of it.
    /// Returns what the router skipped before it, if anything.
    pub(crate) fn forwarded(
        &mut self,
        topic: &[u8],
        offset: Option<u64>,
        awaits_ack: bool,
    ) -> Option<Skipped> {
        let mut candidates: Vec<usize> = match std::str::from_utf8(topic) {
            Ok(topic) => self
                .subs
                .iter()
                .enumerate()
                .filter(|(_, s)| matches(topic, s.inner_filter()))
                .map(|(i, _)| i)
                .collect(),
            Err(_) => Vec::new(),
        };
        if candidates.len() > 1 {
            for &i in &candidates {
                self.subs[i].ambiguous = true;
            }
            candidates.clear();
        }
        let mut skipped = None;
        let mut id = None;
        if let (Some(&i), Some(offset)) = (candidates.first(), offset) {
            let sub = &mut self.subs[i];
            id = Some(sub.id);
            sub.moved = true;
            let covered = sub.covered_until.take();
            if !sub.shared {
                if let Some(next) = sub.next {
                    let count = offset.saturating_sub(next.max(covered.unwrap_or(0)));
                    if count > 0 {
                        skipped = Some(Skipped {
                            filter: sub.filter.clone(),
                            count,
                        });
                    }
                }
            }
            sub.next = Some(sub.next.map_or(offset + 1, |next| next.max(offset + 1)));
        }
        if awaits_ack {
            self.inflight.push_back((id, offset));
        }
        skipped
    }

    /// `filter`, granted at `qos`, takes messages directly from now on (never a shared one).
    pub(crate) fn take_direct(&mut self, filter: &str, qos: u8) {
        if let Some(sub) = self
            .subs
            .iter_mut()
            .find(|s| s.filter == filter && !s.shared)
        {
            sub.direct_qos = Some(qos);
        }
    }

    /// The QoS at which a message on `topic` at `offset` may go to the client directly: the
    /// client's one filter matches it, takes messages directly, and expects that offset next.
    /// (With one filter, the router's copies come in the order the direct messages went.)
    pub(crate) fn direct_qos(&self, topic: &[u8], offset: u64) -> Option<u8> {
        let [sub] = self.subs.as_slice() else {
            return None;
        };
        let topic = std::str::from_utf8(topic).ok()?;
        if sub.next != Some(offset) || sub.covered_until.is_some() || !matches(topic, &sub.filter) {
            return None;
        }
        // Never set for a share group's filter (`take_direct`).
        sub.direct_qos
    }

    /// A message on `topic` at `offset` went to the client directly (after
    /// [`Delivery::direct_qos`] said it may).
    pub(crate) fn sent_directly(&mut self, topic: &[u8], offset: u64) {
        self.forwarded(topic, Some(offset), false);
    }

    /// The client got the messages of `filter`'s log below offset `until` from elsewhere
    /// (disk): the next forward may jump to it without loss.
    pub(crate) fn covered_until(&mut self, filter: &str, until: u64) {
        if let Some(sub) = self.subs.iter_mut().find(|s| s.filter == filter) {
            sub.covered_until = Some(until);
        }
    }

    /// The client has acknowledged `total` QoS 1/2 forwards since the connection began.
    pub(crate) fn acknowledged(&mut self, total: u64) {
        while self.acked < total {
            let Some((id, _)) = self.inflight.pop_front() else {
                break;
            };
            self.acked += 1;
            if let Some(sub) = self.subs.iter_mut().find(|s| Some(s.id) == id) {
                sub.moved = true;
            }
        }
    }

    /// The router's position in each log whose position moved since last asked: the first
    /// message it would read again, were the client to go now (its first unacknowledged one,
    /// or the next one). Flow control holds publishers for it.
    pub(crate) fn take_moved(&mut self) -> Vec<(String, u64)> {
        let mut moved = Vec::new();
        for i in 0..self.subs.len() {
            if self.subs[i].moved && !self.subs[i].ambiguous {
                self.subs[i].moved = false;
                if let Some(position) = self.position(&self.subs[i]) {
                    moved.push((self.subs[i].filter.clone(), position));
                }
            }
        }
        moved
    }

    /// Subscriptions found ambiguous since last asked (their positions cannot be followed).
    pub(crate) fn take_ambiguous(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in &mut self.subs {
            if sub.ambiguous && !sub.ambiguity_told {
                sub.ambiguity_told = true;
                found.push(sub.filter.clone());
            }
        }
        found
    }

    fn position(&self, sub: &Sub) -> Option<u64> {
        // A clean session's unacknowledged messages go with it; a share group's cursor never
        // goes back.
        if !self.persistent || sub.shared {
            return sub.next;
        }
        let unacked = self
            .inflight
            .iter()
            .find(|(id, offset)| *id == Some(sub.id) && offset.is_some())
            .and_then(|(_, offset)| *offset);
        unacked.or(sub.next)
    }

    /// Where the router will resume each subscription if the session comes back: at the
    /// first message of its log the client has not acknowledged.
    pub(crate) fn saved(&self) -> Saved {
        let subs = self
            .subs
            .iter()
            .map(|sub| (sub.filter.clone(), self.position(sub)))
            .collect();
        Saved { subs }
    }
}

impl Saved {
    /// What a restored persistent session left behind: each subscription and where its
    /// reader starts.
    pub(crate) fn at(subs: Vec<(String, Option<u64>)>) -> Saved {
        Saved { subs }
    }

    /// Each subscription and where the router resumes it (if known).
    pub(crate) fn positions(&self) -> impl Iterator<Item = (&str, Option<u64>)> {
        self.subs
            .iter()
            .map(|(filter, next)| (filter.as_str(), *next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session (`persistent` or clean) subscribed to `filter` and forwarded `n` messages
    /// on `topic`, at offsets `0..n` of the router's log, none acknowledged yet.
    fn forwarded(persistent: bool, filter: &str, topic: &[u8], n: u64) -> Delivery {
        let mut d = Delivery::new(persistent);
        d.subscribed(filter, None);
        for offset in 0..n {
            d.forwarded(topic, Some(offset), true);
        }
        d
    }

    #[test]
    fn consecutive_offsets_are_fine_and_a_jump_is_counted() {
        let mut d = Delivery::default();
        d.subscribed("sensors/#", None);
        for offset in 0..10 {
            assert_eq!(d.forwarded(b"sensors/data", Some(offset), true), None);
        }
        let skipped = d.forwarded(b"sensors/data", Some(25), true);
        assert_eq!(
            skipped,
            Some(Skipped {
                filter: "sensors/#".into(),
                count: 15
            })
        );
        assert_eq!(d.forwarded(b"sensors/data", Some(26), true), None);
    }

    #[test]
    fn a_direct_message_goes_only_to_a_lone_filter_at_the_offset_it_expects_next() {
        let mut d = Delivery::new(false);
        d.subscribed("s/#", Some(10));
        // Not before the filter takes direct messages.
        assert_eq!(d.direct_qos(b"s/1", 10), None);
        d.take_direct("s/#", 1);
        assert_eq!(d.direct_qos(b"s/1", 11), None, "not the next offset");
        assert_eq!(d.direct_qos(b"x/1", 10), None, "not its topic");
        assert_eq!(d.direct_qos(b"s/1", 10), Some(1));
        d.sent_directly(b"s/1", 10);
        assert_eq!(d.direct_qos(b"s/1", 10), None, "sent already");
        assert_eq!(d.direct_qos(b"s/1", 11), Some(1));
        // A jump after a direct message is still counted from it.
        let skipped = d.forwarded(b"s/1", Some(20), false).map(|s| s.count);
        assert_eq!(skipped, Some(9));
        assert_eq!(d.take_moved(), [("s/#".to_owned(), 21)]);
        // A second filter, even one that never matches: nothing goes directly.
        d.subscribed("other/#", Some(0));
        assert_eq!(d.direct_qos(b"s/1", 21), None);
    }

    #[test]
    fn two_matching_filters_or_a_share_group_take_nothing_directly() {
        let mut d = Delivery::new(false);
        d.subscribed("a/#", Some(0));
        d.subscribed("a/+", Some(0));
        d.subscribed("$share/g/b/#", Some(0));
        for filter in ["a/#", "a/+", "$share/g/b/#"] {
            d.take_direct(filter, 1);
        }
        assert_eq!(d.direct_qos(b"a/x", 0), None);
        assert_eq!(d.direct_qos(b"b/x", 0), None);
        let mut shared = Delivery::new(false);
        shared.subscribed("$share/g/b/#", Some(0));
        shared.take_direct("$share/g/b/#", 1);
        assert_eq!(shared.direct_qos(b"b/x", 0), None);
    }

    #[test]
    fn a_jump_before_the_first_forward_is_counted_from_where_the_reader_started() {
        let mut d = Delivery::new(true);
        d.subscribed("s/#", Some(100));
        let skipped = d.forwarded(b"s/1", Some(140), true).map(|s| s.count);
        assert_eq!(skipped, Some(40));
    }

    #[test]
    fn ambiguous_shared_and_retained_forwards_are_not_counted() {
        let mut d = Delivery::default();
        d.subscribed("a/#", None);
        d.subscribed("a/+", None);
        d.subscribed("$share/g/b/#", None);
        assert_eq!(d.forwarded(b"a/x", Some(0), true), None);
        assert_eq!(d.forwarded(b"a/x", Some(50), true), None);
        assert_eq!(d.forwarded(b"b/x", Some(0), true), None);
        assert_eq!(d.forwarded(b"b/x", Some(90), true), None);
        assert_eq!(d.forwarded(b"a/y/z", None, true), None);
        assert_eq!(d.inflight.len(), 5);
        let mut ambiguous = d.take_ambiguous();
        ambiguous.sort();
        assert_eq!(ambiguous, ["a/#", "a/+"]);
        // The shared one moves (its group's position), the ambiguous ones are not reported.
        assert_eq!(d.take_moved(), vec![("$share/g/b/#".to_owned(), 91)]);
    }

    #[test]
    fn a_clean_sessions_position_is_what_was_forwarded() {
        let mut d = forwarded(false, "t", b"t", 2);
        assert_eq!(d.take_moved(), vec![("t".to_owned(), 2)]);
    }

    #[test]
    fn a_session_resumes_at_its_first_unacknowledged_message() {
        let mut d = forwarded(true, "s/#", b"s/1", 5);
        d.acknowledged(2);
        let saved = d.saved();
        assert_eq!(saved.subs, vec![("s/#".to_owned(), Some(2))]);
        // The router resends from offset 2: no loss. A later jump is a loss.
        let mut back = Delivery::restore(saved);
        assert_eq!(back.forwarded(b"s/1", Some(2), true), None);
        assert_eq!(back.forwarded(b"s/1", Some(3), true), None);
        let mut skipped_while_away = Delivery::restore(d.saved());
        assert_eq!(
            skipped_while_away
                .forwarded(b"s/1", Some(7), true)
                .map(|s| s.count),
            Some(5)
        );
    }

    #[test]
    fn a_jump_over_what_came_from_disk_is_no_loss_and_one_beyond_it_is() {
        let mut d = Delivery::new(true);
        d.subscribed("s/#", Some(10));
        d.covered_until("s/#", 500);
        assert_eq!(d.forwarded(b"s/1", Some(500), true), None);
        let mut d = Delivery::new(true);
        d.subscribed("s/#", Some(10));
        d.covered_until("s/#", 500);
        let skipped = d.forwarded(b"s/1", Some(520), true).map(|s| s.count);
        assert_eq!(skipped, Some(20));
        // Only the first forward after the catch-up is covered.
        assert_eq!(
            d.forwarded(b"s/1", Some(530), true).map(|s| s.count),
            Some(9)
        );
    }

    #[test]
    fn the_routers_position_is_the_first_unacknowledged_message() {
        let mut d = forwarded(true, "t", b"t", 3);
        assert_eq!(d.take_moved(), vec![("t".to_owned(), 0)]);
        assert!(d.take_moved().is_empty(), "nothing moved since");
        d.acknowledged(2);
        assert_eq!(d.take_moved(), vec![("t".to_owned(), 2)]);
        d.acknowledged(3);
        assert_eq!(d.take_moved(), vec![("t".to_owned(), 3)]);
    }

    #[test]
    fn forwards_the_router_does_not_wait_for_leave_nothing_in_flight() {
        let mut d = Delivery::default();
        d.subscribed("t", None);
        d.forwarded(b"t", Some(0), false);
        d.forwarded(b"t", Some(1), false);
        assert!(d.inflight.is_empty());
        assert_eq!(d.saved().subs, vec![("t".to_owned(), Some(2))]);
        d.unsubscribed("t");
        assert!(d.saved().subs.is_empty());
    }
}
