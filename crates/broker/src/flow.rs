//! Flow control: a slow subscriber slows the publishers feeding it, and nothing is dropped.
//!
//! rumqttd's router keeps one log per subscription filter, in segments, and drops the oldest
//! segment when it needs a new one, read or not. The broker is the only appender (every
//! publish enters through its ingest link, see `ingest`), so it mirrors each log exactly here:
//! the offset the next message gets, and where each segment begins and how full it is (the
//! router's own rule: a segment closes once the sizes counted into it reach
//! `max_segment_size`; a log keeps `max_segment_count` of them). Every message the router
//! forwards carries its offset, so the broker also knows where each reader stands (see
//! `delivery`). A publish is appended only if no log it goes to would, by taking it, drop a
//! segment that one of its readers has not finished: otherwise it is parked, unacknowledged,
//! until that reader leaves the oldest segment (the high and low watermarks: a full log, and
//! one segment freed). Publishers wait for their PUBACKs, so their own in-flight windows bound
//! what is parked.
//!
//! Readers are a client's subscription, or a `$share` group as a whole. An offline persistent
//! session keeps its place and holds publishers for `[flow] offline_hold_s`; after that it no
//! longer counts, and what the log then drops unread is counted as lost when it returns.
//! With storage, an offline session never holds publishers: the write-ahead log keeps what it
//! has not read, and flow control keeps the record id it is owed from (`owed_from`), so that
//! when it returns its connection delivers from disk what the router no longer has (see
//! `connection::catch_up`).
//! A log is created by the router when the first SUBSCRIBE for its filter arrives there;
//! publishes for it wait until the router has answered, so the mirror starts at offset 0
//! with the router's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::protocol::matches;
use tokio::sync::Notify;

use crate::direct::{Direct, DirectTx};
use crate::ingest::Message;

/// At most one "holds publishers" log line per log in this time.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// How flow control is set up, from `[flow]` and `[router]`.
#[derive(Debug, Clone)]
pub(crate) struct FlowConfig {
    /// Hold publishers for slow readers (`false`: rumqttd's roll-over decides, and what it
    /// drops unread is counted).
    pub hold: bool,
    /// How long an offline persistent session may hold publishers.
    pub offline_hold: Duration,
    pub max_segment_size: u64,
    pub max_segment_count: usize,
    /// Storage is on: an offline persistent session's backlog is kept on disk, so it never
    /// holds publishers.
    pub backlog_on_disk: bool,
}

/// Index of a log in [`Flow`].
pub(crate) type FilterId = usize;

/// Who reads a log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ReaderKey {
    /// A client's subscription (its router id).
    Client(String),
    /// A `$share` group, whose members read the log as one.
    Group(String),
}

impl std::fmt::Display for ReaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReaderKey::Client(id) => write!(f, "client {id:?}"),
            ReaderKey::Group(group) => write!(f, "share group {group:?}"),
        }
    }
}

impl ReaderKey {
    /// The reader a subscription of client `router_id` to `filter` makes, and the log it
    /// reads (a shared subscription reads its inner filter's).
    pub(crate) fn of(router_id: &str, filter: &str) -> (ReaderKey, String) {
        match filter
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((group, inner)) => (ReaderKey::Group(group.to_owned()), inner.to_owned()),
            None => (ReaderKey::Client(router_id.to_owned()), filter.to_owned()),
        }
    }
}

#[derive(Debug)]
struct Reader {
    /// The first offset the router would read for it next (for a persistent session: its
    /// first unacknowledged message).
    position: u64,
    /// Connected members (1 or 0 for a client).
    online: usize,
    offline_since: Option<Instant>,
    /// No longer holds publishers: offline too long, or its position cannot be known (two of
    /// its client's filters match one topic).
    excluded: bool,
    /// With storage: the first record id owed to this reader that the router may no longer
    /// hold for it (it went offline there), until its connection has delivered them from disk.
    owed_from: Option<u64>,
    /// Its connection takes messages directly (see `direct`).
    direct: Option<DirectTx>,
}

/// One router log, mirrored.
#[derive(Debug)]
struct Log {
    filter: String,
    /// The router has created it (its SUBACK came).
    ready: bool,
    /// The offset the next message appended gets.
    appended: u64,
    /// Start offset and counted bytes of each segment, oldest first; the last is being filled.
    segments: VecDeque<(u64, u64)>,
    readers: HashMap<ReaderKey, Reader>,
    /// Connections with publishes parked for this log.
    waiters: Vec<Arc<Notify>>,
    /// With storage: the record id of each message from offset `ids_base` on, as far back as
    /// a reader may still need (see `storage`); a message without a record of its own (QoS 0)
    /// has the id the next record got.
    ids: VecDeque<u64>,
    ids_base: u64,
    /// Since when publishers are held for it.
    holding_since: Option<Instant>,
    /// When a holding period of it was last logged, and whether the current one was.
    announced_at: Option<Instant>,
    announced: bool,
    /// Holding periods since the last one logged.
    unannounced: u64,
}

impl Log {
    /// The first offset the router still holds: the start of its oldest segment.
    fn oldest(&self) -> u64 {
        self.segments
            .front()
            .map_or(self.appended, |&(start, _)| start)
    }

    /// Where the router resumes a reader that stands at `position`: there, or at the
    /// oldest segment if its place has rolled out.
    fn resumes_at(&self, position: u64) -> u64 {
        position.max(self.oldest())
    }

    /// The record id of the message at `offset`; `end` at the end of the log; `None` when
    /// that offset is no longer mapped.
    fn record_at(&self, offset: u64, end: u64) -> Option<u64> {
        if offset >= self.appended {
            return Some(end);
        }
        let index = offset.checked_sub(self.ids_base)?;
        self.ids.get(usize::try_from(index).ok()?).copied()
    }

    /// `reader` is online in this log (once more): at `position` if given, else where it
    /// already stood, or for a new reader at the end of the log.
    fn join(&mut self, reader: ReaderKey, position: Option<u64>) {
        let appended = self.appended;
        let entry = self.readers.entry(reader).or_insert(Reader {
            position: position.unwrap_or(appended),
            online: 0,
            offline_since: None,
            excluded: false,
            owed_from: None,
            direct: None,
        });
        entry.online += 1;
        entry.offline_since = None;
        entry.excluded = false;
        if let Some(position) = position {
            entry.position = position;
        }
    }
}

/// Why a publish cannot be appended now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Park {
    /// The router is creating the log.
    Creating(FilterId),
    /// A reader has not finished the segment the next append would drop.
    Full(FilterId),
}

/// What to do with a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Append it to these logs.
    Append(Vec<FilterId>),
    /// No subscription matches it: MQTT delivers it to no one.
    NoSubscriber,
    Park(Park),
}

/// A log that started or stopped holding publishers, for the broker's log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Holding {
        filter: String,
        reader: ReaderKey,
        lag: u64,
        /// Holding periods of this log since the last one logged.
        unannounced: u64,
    },
    Released {
        filter: String,
        held: Duration,
    },
}

/// The mirror of every router log and its readers.
#[derive(Debug)]
pub(crate) struct Flow {
    config: FlowConfig,
    logs: Vec<Log>,
    by_filter: HashMap<String, FilterId>,
    /// The logs each topic seen so far goes to.
    routes: HashMap<Vec<u8>, Vec<FilterId>>,
}

impl Flow {
    pub(crate) fn new(config: FlowConfig) -> Flow {
        Flow {
            config,
            logs: Vec::new(),
            by_filter: HashMap::new(),
            routes: HashMap::new(),
        }
    }

    /// A SUBSCRIBE of `reader` to `filter` is about to go to the router. Creates the log if
    /// it is new (publishes for it wait until [`Flow::created`]); a new reader starts where
    /// the router will start it, at the end of the log. Returns that offset.
    pub(crate) fn subscribe(&mut self, reader: ReaderKey, filter: &str) -> u64 {
        let id = match self.by_filter.get(filter) {
            Some(&id) => id,
            None => {
                let id = self.logs.len();
                self.logs.push(Log {
                    filter: filter.to_owned(),
                    ready: false,
                    appended: 0,
                    segments: VecDeque::from([(0, 0)]),
                    ids: VecDeque::new(),
                    ids_base: 0,
                    readers: HashMap::new(),
                    waiters: Vec::new(),
                    holding_since: None,
                    announced_at: None,
                    announced: false,
                    unannounced: 0,
                });
                self.by_filter.insert(filter.to_owned(), id);
                // Cached routes may now have one more log.
                self.routes.clear();
                id
            }
        };
        let log = &mut self.logs[id];
        // What an offline reader of the same key left (a session a clean one replaced) does
        // not carry over to a new subscription.
        if log.readers.get(&reader).is_some_and(|r| r.online == 0) {
            log.readers.remove(&reader);
        }
        let end = log.appended;
        log.join(reader, None);
        end
    }

    /// `reader`'s connection takes messages of `filter`'s log directly through `tx`.
    pub(crate) fn take_direct(&mut self, reader: &ReaderKey, filter: &str, tx: DirectTx) {
        let Some(&id) = self.by_filter.get(filter) else {
            return;
        };
        if let Some(entry) = self.logs[id].readers.get_mut(reader) {
            entry.direct = Some(tx);
        }
    }

    /// Sends `message`, about to be appended to `logs`, directly to each reader that takes
    /// messages so and has read everything before it. Returns whether it sent any.
    pub(crate) fn send_direct(&self, logs: &[FilterId], message: &Message) -> bool {
        let mut sent = false;
        for &id in logs {
            let log = &self.logs[id];
            for reader in log.readers.values() {
                let Some(tx) = &reader.direct else {
                    continue;
                };
                if reader.online > 0 && !reader.excluded && reader.position == log.appended {
                    let direct = Direct {
                        offset: log.appended,
                        message: message.clone(),
                    };
                    // A connection that is gone has no use for it.
                    sent |= tx.send(direct).is_ok();
                }
            }
        }
        sent
    }

    /// The router has answered the SUBSCRIBE for `filter`: its log exists.
    pub(crate) fn created(&mut self, filter: &str) {
        if let Some(&id) = self.by_filter.get(filter) {
            let log = &mut self.logs[id];
            if !log.ready {
                log.ready = true;
                wake(&mut log.waiters);
            }
        }
    }

    /// `reader` left `filter` for good (UNSUBSCRIBE, or its clean session ended).
    pub(crate) fn unsubscribe(&mut self, reader: &ReaderKey, filter: &str) {
        self.member_left(reader, filter, false);
    }

    /// `reader`'s persistent session went offline: it keeps its place for a while. With
    /// storage (`next_record`: the id the next record gets) it holds no one, and is owed
    /// every record from its place on.
    pub(crate) fn offline(&mut self, reader: &ReaderKey, filter: &str, next_record: Option<u64>) {
        let owed = self
            .record_position(reader, filter)
            .map(|at| match next_record {
                Some(next) if at == u64::MAX => next,
                _ => at,
            });
        self.member_left(reader, filter, true);
        if !self.config.backlog_on_disk {
            return;
        }
        let Some(entry) = self.reader_mut(reader, filter) else {
            return;
        };
        if entry.online == 0 {
            entry.excluded = true;
            // `owed` already counts what it was owed before; it is unknown only when its place
            // rolled out of the router's log before it left (that loss is counted).
            if owed.is_some() {
                entry.owed_from = owed;
            }
        }
        if let Some(&id) = self.by_filter.get(filter) {
            self.check_release(id);
        }
    }

    /// A persistent session restored from storage: offline, owed every record from
    /// `ack_from` on.
    pub(crate) fn restored(&mut self, reader: &ReaderKey, filter: &str, ack_from: u64) {
        self.offline(reader, filter, None);
        if let Some(entry) = self.reader_mut(reader, filter) {
            entry.owed_from = Some(ack_from);
        }
    }

    fn reader_mut(&mut self, reader: &ReaderKey, filter: &str) -> Option<&mut Reader> {
        let &id = self.by_filter.get(filter)?;
        self.logs[id].readers.get_mut(reader)
    }

    fn member_left(&mut self, reader: &ReaderKey, filter: &str, keep: bool) {
        let Some(&id) = self.by_filter.get(filter) else {
            return;
        };
        let log = &mut self.logs[id];
        if let Some(entry) = log.readers.get_mut(reader) {
            entry.online = entry.online.saturating_sub(1);
            if entry.online == 0 {
                if keep && (self.config.hold || self.config.backlog_on_disk) {
                    entry.offline_since = Some(Instant::now());
                } else {
                    log.readers.remove(reader);
                }
            }
        }
        self.check_release(id);
    }

    /// A persistent session that came back (and is online in `filter` again), if it is owed
    /// records from disk: those the router will not deliver, `from..to` by id (empty if it
    /// acknowledged them all on an earlier connection), and the offset at which the router
    /// resumes it. `next_record` is the id the next record gets. Forgets what it owes when it
    /// cannot tell where the router takes over.
    pub(crate) fn backlog(
        &mut self,
        reader: &ReaderKey,
        filter: &str,
        next_record: u64,
    ) -> Option<(u64, u64, u64)> {
        let &id = self.by_filter.get(filter)?;
        let log = &self.logs[id];
        let entry = log.readers.get(reader)?;
        let from = entry.owed_from?;
        // Online again, it holds publishers, so the log rolls no further past it meanwhile.
        let resumes_at = log.resumes_at(entry.position);
        match log.record_at(resumes_at, next_record) {
            Some(to) => Some((from, to, resumes_at)),
            // It cannot be told (its place is no longer mapped): what the router skips is
            // counted as lost.
            None => {
                self.caught_up(reader, filter);
                None
            }
        }
    }

    /// The reader has acknowledged every record it was owed below `below`.
    pub(crate) fn owed_below(&mut self, reader: &ReaderKey, filter: &str, below: u64) {
        if let Some(entry) = self.reader_mut(reader, filter) {
            if let Some(owed) = entry.owed_from.as_mut() {
                *owed = (*owed).max(below);
            }
        }
    }

    /// The reader has every record it was owed from disk (acknowledged).
    pub(crate) fn caught_up(&mut self, reader: &ReaderKey, filter: &str) {
        if let Some(entry) = self.reader_mut(reader, filter) {
            entry.owed_from = None;
        }
    }

    /// A persistent session came back: its reader is online again, at its saved position.
    pub(crate) fn online(&mut self, reader: ReaderKey, filter: &str, position: Option<u64>) {
        let Some(&id) = self.by_filter.get(filter) else {
            return;
        };
        self.logs[id].join(reader, position);
    }

    /// `reader` now stands at `position` in `filter`'s log (a group: one of its members).
    pub(crate) fn advanced(&mut self, reader: &ReaderKey, filter: &str, position: u64) {
        let Some(&id) = self.by_filter.get(filter) else {
            return;
        };
        if let Some(entry) = self.logs[id].readers.get_mut(reader) {
            match reader {
                // Members each see part of the group's log; the group is as far as the
                // furthest of them.
                ReaderKey::Group(_) => entry.position = entry.position.max(position),
                ReaderKey::Client(_) => entry.position = position,
            }
        }
        self.check_release(id);
    }

    /// `reader`'s position in `filter` cannot be followed: it no longer holds publishers.
    pub(crate) fn exclude(&mut self, reader: &ReaderKey, filter: &str) {
        let Some(&id) = self.by_filter.get(filter) else {
            return;
        };
        if let Some(entry) = self.logs[id].readers.get_mut(reader) {
            entry.excluded = true;
        }
        self.check_release(id);
    }

    /// Offline readers past `offline_hold` stop holding publishers. Returns what they hold
    /// no more, for the log.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(String, ReaderKey)> {
        let mut expired = Vec::new();
        for id in 0..self.logs.len() {
            let log = &mut self.logs[id];
            for (key, reader) in log.readers.iter_mut() {
                let overdue = reader
                    .offline_since
                    .is_some_and(|since| now.duration_since(since) >= self.config.offline_hold);
                if overdue && !reader.excluded {
                    reader.excluded = true;
                    expired.push((log.filter.clone(), key.clone()));
                }
            }
            self.check_release(id);
        }
        expired
    }

    /// Decides about one publish to `topic`.
    pub(crate) fn admit(&mut self, topic: &[u8]) -> Admission {
        let logs = self.route(topic);
        if logs.is_empty() {
            return Admission::NoSubscriber;
        }
        for &id in &logs {
            let log = &self.logs[id];
            if !log.ready {
                return Admission::Park(Park::Creating(id));
            }
            if self.config.hold && self.would_drop_unread(id) {
                return Admission::Park(Park::Full(id));
            }
        }
        Admission::Append(logs)
    }

    /// Appends one message of `size` counted bytes to `logs`, as the router will; with
    /// storage, `record` is its record id.
    pub(crate) fn append(&mut self, logs: &[FilterId], size: u64, record: Option<u64>) {
        for &id in logs {
            if let Some(record) = record {
                self.track_record(id, record);
            }
            let max_size = self.config.max_segment_size;
            let max_count = self.config.max_segment_count;
            let log = &mut self.logs[id];
            let rolls = log
                .segments
                .back()
                .is_some_and(|&(_, bytes)| bytes >= max_size);
            if rolls {
                if log.segments.len() >= max_count {
                    log.segments.pop_front();
                }
                log.segments.push_back((log.appended, 0));
            }
            if let Some(active) = log.segments.back_mut() {
                active.1 += size;
            }
            log.appended += 1;
        }
    }

    /// Registers `waiter` to be woken when `park`'s reason is gone. Returns a log line's
    /// worth if this starts a holding period and none was logged for the log in the last
    /// [`ANNOUNCE_EVERY`].
    pub(crate) fn park(&mut self, park: &Park, waiter: &Arc<Notify>) -> Option<Change> {
        let id = match *park {
            Park::Creating(id) | Park::Full(id) => id,
        };
        let log = &mut self.logs[id];
        if !log.waiters.iter().any(|w| Arc::ptr_eq(w, waiter)) {
            log.waiters.push(Arc::clone(waiter));
        }
        if !matches!(park, Park::Full(_)) || log.holding_since.is_some() {
            return None;
        }
        let now = Instant::now();
        log.holding_since = Some(now);
        let quiet = log
            .announced_at
            .is_none_or(|at| now.duration_since(at) >= ANNOUNCE_EVERY);
        if !quiet {
            log.unannounced += 1;
            log.announced = false;
            return None;
        }
        log.announced_at = Some(now);
        log.announced = true;
        let unannounced = std::mem::take(&mut log.unannounced);
        let (reader, lag) = self.slowest(id)?;
        Some(Change::Holding {
            filter: self.logs[id].filter.clone(),
            reader,
            lag,
            unannounced,
        })
    }

    /// Logs that stopped holding since last asked, for those whose holding was logged, and
    /// for how long they held.
    pub(crate) fn take_released(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for log in &mut self.logs {
            if let Some(since) = log.holding_since {
                if log.waiters.is_empty() {
                    log.holding_since = None;
                    if std::mem::take(&mut log.announced) {
                        changes.push(Change::Released {
                            filter: log.filter.clone(),
                            held: since.elapsed(),
                        });
                    }
                }
            }
        }
        changes
    }

    /// Each log's filter and how many messages its slowest reader that counts has yet to read.
    pub(crate) fn lags(&self) -> Vec<(String, u64)> {
        (0..self.logs.len())
            .map(|id| {
                let lag = self.slowest(id).map_or(0, |(_, lag)| lag);
                (self.logs[id].filter.clone(), lag)
            })
            .collect()
    }

    /// The logs a topic goes to: every ready or pending log whose filter matches it.
    fn route(&mut self, topic: &[u8]) -> Vec<FilterId> {
        if let Some(ids) = self.routes.get(topic) {
            return ids.clone();
        }
        let Ok(name) = std::str::from_utf8(topic) else {
            return Vec::new();
        };
        let ids: Vec<FilterId> = self
            .logs
            .iter()
            .enumerate()
            .filter(|(_, log)| matches(name, &log.filter))
            .map(|(id, _)| id)
            .collect();
        // Topics are few (one per device); a flood of distinct ones only costs a reset.
        if self.routes.len() >= 100_000 {
            self.routes.clear();
        }
        self.routes.insert(topic.to_vec(), ids.clone());
        ids
    }

    /// The position the log's readers hold it at: the lowest of those that count.
    fn hold_position(&self, id: FilterId) -> Option<u64> {
        self.logs[id]
            .readers
            .values()
            .filter(|r| !r.excluded)
            .map(|r| r.position)
            .min()
    }

    fn slowest(&self, id: FilterId) -> Option<(ReaderKey, u64)> {
        let log = &self.logs[id];
        log.readers
            .iter()
            .filter(|(_, r)| !r.excluded)
            .min_by_key(|(_, r)| r.position)
            .map(|(key, r)| (key.clone(), log.appended.saturating_sub(r.position)))
    }

    /// True if one more append would make the router drop a segment that a reader that
    /// counts has not finished.
    fn would_drop_unread(&self, id: FilterId) -> bool {
        let log = &self.logs[id];
        let Some(&(_, active_bytes)) = log.segments.back() else {
            return false;
        };
        if active_bytes < self.config.max_segment_size
            || log.segments.len() < self.config.max_segment_count
        {
            return false;
        }
        let Some(position) = self.hold_position(id) else {
            return false;
        };
        // The append starts a new segment and drops the oldest; everything before the
        // second oldest's start goes.
        let kept_from = log
            .segments
            .get(1)
            .map_or(log.appended, |&(start, _)| start);
        position < kept_from
    }

    /// Keeps `record` as the id at the log's next offset, and forgets ids no reader needs:
    /// those before every reader's position, or before the router's oldest segment.
    fn track_record(&mut self, id: FilterId, record: u64) {
        let log = &mut self.logs[id];
        log.ids.push_back(record);
        if log.ids.len() & 4095 != 0 {
            return;
        }
        let oldest_kept = log.oldest();
        let slowest = log
            .readers
            .values()
            .map(|r| r.position)
            .min()
            .unwrap_or(log.appended);
        let needed = slowest.max(oldest_kept);
        while log.ids_base < needed && log.ids.pop_front().is_some() {
            log.ids_base += 1;
        }
    }

    /// The first record id `reader` of `filter` has not acknowledged, if flow control can
    /// tell (`u64::MAX`: it has read everything so far).
    pub(crate) fn record_position(&self, reader: &ReaderKey, filter: &str) -> Option<u64> {
        let &id = self.by_filter.get(filter)?;
        let log = &self.logs[id];
        let entry = log.readers.get(reader)?;
        let in_log = log.record_at(log.resumes_at(entry.position), u64::MAX);
        match (entry.owed_from, in_log) {
            (Some(owed), Some(at)) => Some(owed.min(at)),
            (owed, at) => owed.or(at),
        }
    }

    /// Wakes the log's parked publishers if nothing holds them any more.
    fn check_release(&mut self, id: FilterId) {
        if self.logs[id].waiters.is_empty() {
            return;
        }
        let ready = self.logs[id].ready;
        if ready && !(self.config.hold && self.would_drop_unread(id)) {
            wake(&mut self.logs[id].waiters);
        }
    }
}

fn wake(waiters: &mut Vec<Arc<Notify>>) {
    for waiter in waiters.drain(..) {
        waiter.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(segment: u64, count: usize) -> Flow {
        Flow::new(FlowConfig {
            hold: true,
            offline_hold: Duration::from_secs(30),
            max_segment_size: segment,
            max_segment_count: count,
            backlog_on_disk: false,
        })
    }

    fn client(id: &str) -> ReaderKey {
        ReaderKey::Client(id.to_owned())
    }

    /// A log on topic `t` of `segments` segments of 100 counted bytes, read by `readers`,
    /// filled with 10-byte messages until it holds publishers.
    fn full(segments: usize, readers: &[ReaderKey]) -> Flow {
        let mut flow = flow(100, segments);
        for reader in readers {
            flow.subscribe(reader.clone(), "t");
        }
        flow.created("t");
        assert_eq!(fill(&mut flow, b"t", 10, 1000), 10 * segments);
        flow
    }

    /// Appends while admitted; returns how many went in.
    fn fill(flow: &mut Flow, topic: &[u8], size: u64, max: usize) -> usize {
        for n in 0..max {
            match flow.admit(topic) {
                Admission::Append(logs) => flow.append(&logs, size, None),
                _ => return n,
            }
        }
        max
    }

    #[test]
    fn a_direct_message_goes_to_each_reader_that_has_read_everything_before_it() {
        let mut flow = flow(1000, 3);
        let message = Message {
            topic: bytes::Bytes::from_static(b"t"),
            payload: bytes::Bytes::from_static(b"x"),
        };
        let (tx, mut caught_up) = crate::direct::channel();
        let (behind_tx, mut behind) = crate::direct::channel();
        flow.subscribe(client("caught-up"), "t");
        flow.subscribe(client("behind"), "t");
        flow.subscribe(client("no-direct"), "t");
        flow.take_direct(&client("caught-up"), "t", tx);
        flow.take_direct(&client("behind"), "t", behind_tx);
        flow.created("t");
        let Admission::Append(logs) = flow.admit(b"t") else {
            panic!("admitted");
        };
        assert!(flow.send_direct(&logs, &message));
        flow.append(&logs, 2, None);
        assert_eq!(caught_up.try_recv().map(|d| d.offset).ok(), Some(0));
        assert_eq!(behind.try_recv().map(|d| d.offset).ok(), Some(0));
        // Only one reader moves past offset 0; only it gets offset 1.
        flow.advanced(&client("caught-up"), "t", 1);
        assert!(flow.send_direct(&logs, &message));
        flow.append(&logs, 2, None);
        assert_eq!(caught_up.try_recv().map(|d| d.offset).ok(), Some(1));
        assert!(behind.try_recv().is_err());
        // An offline reader gets nothing.
        flow.offline(&client("caught-up"), "t", None);
        flow.advanced(&client("behind"), "t", 2);
        assert!(flow.send_direct(&logs, &message));
        assert!(caught_up.try_recv().is_err());
        assert_eq!(behind.try_recv().map(|d| d.offset).ok(), Some(2));
    }

    #[test]
    fn publishes_wait_for_a_new_log_and_go_nowhere_without_a_subscriber() {
        let mut flow = flow(100, 3);
        assert_eq!(flow.admit(b"a/b"), Admission::NoSubscriber);
        flow.subscribe(client("s"), "a/#");
        assert_eq!(flow.admit(b"a/b"), Admission::Park(Park::Creating(0)));
        let waiter = Arc::new(Notify::new());
        assert_eq!(flow.park(&Park::Creating(0), &waiter), None);
        flow.created("a/#");
        assert_eq!(flow.admit(b"a/b"), Admission::Append(vec![0]));
        assert_eq!(flow.admit(b"x"), Admission::NoSubscriber);
    }

    #[test]
    fn a_reader_that_has_not_finished_the_oldest_segment_holds_publishers() {
        // Segments of 100 counted bytes, 3 of them: 30 messages of 10 bytes fill the log.
        let mut flow = full(3, &[client("slow")]);
        let park = match flow.admit(b"t") {
            Admission::Park(park) => park,
            other => panic!("{other:?}"),
        };
        let waiter = Arc::new(Notify::new());
        let change = flow.park(&park, &waiter);
        assert_eq!(
            change,
            Some(Change::Holding {
                filter: "t".into(),
                reader: client("slow"),
                lag: 30,
                unannounced: 0,
            })
        );
        // Reading within the oldest segment frees nothing; leaving it frees a segment.
        flow.advanced(&client("slow"), "t", 9);
        assert!(matches!(flow.admit(b"t"), Admission::Park(_)));
        flow.advanced(&client("slow"), "t", 10);
        assert_eq!(fill(&mut flow, b"t", 10, 1000), 10);
        assert_eq!(flow.take_released().len(), 1);
        // The next holding period within 10 s is not logged, nor its release.
        let Admission::Park(park) = flow.admit(b"t") else {
            panic!("full again");
        };
        assert_eq!(flow.park(&park, &waiter), None);
        flow.advanced(&client("slow"), "t", 20);
        assert!(flow.take_released().is_empty());
    }

    #[test]
    fn the_slowest_of_several_readers_and_a_group_as_a_whole_decide() {
        let mut flow = full(2, &[client("fast"), ReaderKey::Group("g".into())]);
        flow.advanced(&client("fast"), "t", 20);
        assert!(matches!(flow.admit(b"t"), Admission::Park(_)));
        // Two members of the group, each past part of the log: the group is past the first.
        flow.advanced(&ReaderKey::Group("g".into()), "t", 7);
        flow.advanced(&ReaderKey::Group("g".into()), "t", 12);
        flow.advanced(&ReaderKey::Group("g".into()), "t", 11);
        assert_eq!(fill(&mut flow, b"t", 10, 1000), 10);
    }

    #[test]
    fn an_offline_session_holds_publishers_until_its_time_is_up() {
        let mut flow = full(2, &[client("away")]);
        flow.offline(&client("away"), "t", None);
        assert!(matches!(flow.admit(b"t"), Admission::Park(_)));
        assert!(flow.expire(Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_secs(31);
        assert_eq!(flow.expire(later), vec![("t".to_owned(), client("away"))]);
        assert_eq!(fill(&mut flow, b"t", 10, 1000), 1000);
        // Back online at its old place: it counts again.
        flow.online(client("away"), "t", Some(1005));
        assert!(matches!(flow.admit(b"t"), Admission::Park(_)));
    }

    #[test]
    fn without_holding_only_new_logs_wait() {
        let mut flow = Flow::new(FlowConfig {
            hold: false,
            offline_hold: Duration::ZERO,
            max_segment_size: 100,
            max_segment_count: 2,
            backlog_on_disk: false,
        });
        flow.subscribe(client("slow"), "t");
        flow.created("t");
        assert_eq!(fill(&mut flow, b"t", 10, 500), 500);
        assert_eq!(flow.lags(), vec![("t".to_owned(), 500)]);
    }

    #[test]
    fn a_readers_position_maps_to_the_record_id_at_that_offset() {
        let mut flow = flow(100, 2);
        flow.subscribe(client("p"), "t");
        flow.created("t");
        // Records 10, 11, then a QoS 0 message (the next record's id, 12), then 12.
        for record in [10, 11, 12, 12] {
            let Admission::Append(logs) = flow.admit(b"t") else {
                panic!("admitted");
            };
            flow.append(&logs, 10, Some(record));
        }
        assert_eq!(flow.record_position(&client("p"), "t"), Some(10));
        flow.advanced(&client("p"), "t", 2);
        assert_eq!(flow.record_position(&client("p"), "t"), Some(12));
        flow.advanced(&client("p"), "t", 4);
        assert_eq!(flow.record_position(&client("p"), "t"), Some(u64::MAX));
        assert_eq!(flow.record_position(&client("q"), "t"), None);
    }

    #[test]
    fn with_storage_an_offline_session_holds_no_one_and_is_owed_what_rolled_out() {
        let mut flow = Flow::new(FlowConfig {
            hold: true,
            offline_hold: Duration::from_secs(30),
            max_segment_size: 100,
            max_segment_count: 2,
            backlog_on_disk: true,
        });
        let append = |flow: &mut Flow, records: std::ops::Range<u64>| {
            for record in records {
                let Admission::Append(logs) = flow.admit(b"t") else {
                    panic!("record {record} held");
                };
                flow.append(&logs, 10, Some(record));
            }
        };
        flow.subscribe(client("p"), "t");
        flow.created("t");
        // Offsets 0..5 are records 100..105; the session has read two of them.
        append(&mut flow, 100..105);
        flow.advanced(&client("p"), "t", 2);
        flow.offline(&client("p"), "t", Some(105));
        assert_eq!(flow.record_position(&client("p"), "t"), Some(102));
        // Away, it holds no one: a thousand more go by, rolling its place out of the log.
        append(&mut flow, 105..1105);
        flow.online(client("p"), "t", Some(2));
        // The router resumes it at its oldest segment (offset 990: record 1090); the
        // records before that, from the one it had not read, come from disk.
        assert_eq!(
            flow.backlog(&client("p"), "t", 1105),
            Some((102, 1090, 990))
        );
        assert_eq!(flow.record_position(&client("p"), "t"), Some(102));
        // Caught up, and then reading the router's log: its place there is what counts.
        flow.caught_up(&client("p"), "t");
        flow.advanced(&client("p"), "t", 1000);
        assert_eq!(flow.record_position(&client("p"), "t"), Some(1100));
        // Back in time, it is owed nothing from disk.
        flow.advanced(&client("p"), "t", 1005);
        flow.offline(&client("p"), "t", Some(1105));
        flow.online(client("p"), "t", Some(1005));
        assert_eq!(
            flow.backlog(&client("p"), "t", 1105),
            Some((1105, 1105, 1005))
        );
        flow.caught_up(&client("p"), "t");
        assert_eq!(flow.record_position(&client("p"), "t"), Some(u64::MAX));
    }

    #[test]
    fn readers_of_shared_subscriptions_read_the_inner_filters_log() {
        assert_eq!(
            ReaderKey::of("c1", "$share/g/sensors/#"),
            (ReaderKey::Group("g".into()), "sensors/#".into())
        );
        assert_eq!(
            ReaderKey::of("c1", "sensors/#"),
            (ReaderKey::Client("c1".into()), "sensors/#".into())
        );
    }
}
