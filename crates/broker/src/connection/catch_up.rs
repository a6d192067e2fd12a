//! A persistent session that comes back to a broker with storage gets, first, what it missed
//! that rumqttd's router no longer holds for it: its log rolled over while the session was
//! away (an offline session holds no publishers when storage is on), or the broker restarted.
//! Flow control knows the record id it is owed from (see `flow`), and the router's place for
//! it tells where the router takes over; the records in between that match the subscription
//! are read back from the write-ahead log on a thread of their own and sent by the writer
//! under packet ids of the broker's own, within its window. Meanwhile the router's forwards
//! wait in the window (the router sends a persistent session at most 100 ahead of its
//! acknowledgements, so that stays small), and flow control holds publishers for the session
//! as for any slow reader. Once the client has acknowledged everything read back, the
//! forwards go out: the client sees every reading once, in the original order.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rumqttd::protocol::matches;

use crate::storage::{Replay, Stored, Wanted};

/// One subscription's records owed from disk.
#[derive(Debug, Clone)]
pub(crate) struct Owed {
    pub filter: String,
    /// The subscription's QoS, at most 1; each record goes out at the lower of this and its
    /// own.
    pub qos: u8,
    /// Record ids `from..to`.
    pub from: u64,
    pub to: u64,
    /// The offset in the router's log where the router takes over.
    pub resumes_at: u64,
}

/// A catch-up in progress.
#[derive(Debug)]
pub(super) struct CatchUp {
    owed: Vec<Owed>,
    /// The records read back; `None` once the reading thread has sent them all.
    source: Option<Replay>,
    /// Why reading back stopped short, if it did.
    failed: Option<String>,
    /// Read back, not sent yet: each with the index of the subscription it is owed to.
    pending: VecDeque<(Stored, usize)>,
    /// Sent, per filter.
    sent: HashMap<String, u64>,
    /// Sent and not yet acknowledged in order: packet id, record id, subscription index,
    /// and whether the client has acknowledged it.
    unacked: VecDeque<(u16, u64, usize, bool)>,
    /// Per subscription: every record it is owed below this id has been acknowledged.
    acked_below: Vec<u64>,
    started: Instant,
}

impl CatchUp {
    /// Starts reading `owed` back from `storage`'s log. Call once the log has committed
    /// every record below the largest `to`.
    pub(super) fn start(storage: &crate::storage::Storage, owed: Vec<Owed>) -> CatchUp {
        let wanted = owed
            .iter()
            .map(|o| Wanted {
                filter: o.filter.clone(),
                from: o.from,
                to: o.to,
            })
            .collect();
        CatchUp {
            source: Some(storage.read_back(wanted)),
            acked_below: owed.iter().map(|o| o.from).collect(),
            owed,
            failed: None,
            pending: VecDeque::new(),
            sent: HashMap::new(),
            unacked: VecDeque::new(),
            started: Instant::now(),
        }
    }

    /// The subscriptions it serves.
    pub(super) fn owed(&self) -> &[Owed] {
        &self.owed
    }

    /// Whether the writer should take the next batch read back (one batch is kept ahead).
    pub(super) fn wants_more(&self) -> bool {
        self.source.is_some() && self.pending.len() < 1024
    }

    /// The next batch read back, or `None` once all is read (then [`CatchUp::take`] says so).
    pub(super) async fn next_batch(&mut self) -> Option<Result<Vec<Stored>, String>> {
        match self.source.as_mut() {
            Some(source) => source.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Takes a batch read back (`None`: the reading is done): each record once per owed
    /// subscription it belongs to, at that subscription's QoS.
    pub(super) fn take(&mut self, batch: Option<Result<Vec<Stored>, String>>) {
        let batch = match batch {
            Some(Ok(batch)) => batch,
            Some(Err(why)) => {
                self.failed = Some(why);
                self.source = None;
                return;
            }
            None => {
                self.source = None;
                return;
            }
        };
        for stored in batch {
            let Ok(topic) = std::str::from_utf8(&stored.topic) else {
                continue;
            };
            for (i, owed) in self.owed.iter().enumerate() {
                if (owed.from..owed.to).contains(&stored.id) && matches(topic, &owed.filter) {
                    let copy = Stored {
                        id: stored.id,
                        qos: stored.qos,
                        topic: stored.topic.clone(),
                        payload: stored.payload.clone(),
                    };
                    self.pending.push_back((copy, i));
                }
            }
        }
    }

    /// The next record to send, with its QoS and the subscription it is owed to.
    pub(super) fn next(&mut self) -> Option<(Stored, u8, usize)> {
        let (stored, i) = self.pending.pop_front()?;
        let owed = &self.owed[i];
        *self.sent.entry(owed.filter.clone()).or_default() += 1;
        // MQTT's rule: the lower of the publish's QoS and the subscription's.
        let qos = stored.qos.min(owed.qos);
        Some((stored, qos, i))
    }

    /// Record `id`, owed to subscription `owed`, went out under packet id `pkid` (or was
    /// withheld: `None`, which counts as acknowledged).
    pub(super) fn sent(&mut self, pkid: Option<u16>, id: u64, owed: usize) {
        self.unacked
            .push_back((pkid.unwrap_or(0), id, owed, pkid.is_none()));
        self.settle();
    }

    /// The client acknowledged these packet ids (some may not be the catch-up's).
    pub(super) fn acked(&mut self, pkids: &[u16]) {
        for pkid in pkids {
            if let Some(entry) = self.unacked.iter_mut().find(|e| e.0 == *pkid && !e.3) {
                entry.3 = true;
            }
        }
        self.settle();
    }

    fn settle(&mut self) {
        while let Some(&(_, id, owed, true)) = self.unacked.front() {
            self.unacked.pop_front();
            self.acked_below[owed] = id + 1;
        }
    }

    /// How far the client has acknowledged, per filter: it is owed from there on.
    pub(super) fn progress(&self) -> Vec<(String, u64)> {
        self.owed
            .iter()
            .zip(&self.acked_below)
            .map(|(o, &below)| (o.filter.clone(), below))
            .collect()
    }

    /// Everything is read back and sent.
    pub(super) fn all_sent(&self) -> bool {
        self.source.is_none() && self.pending.is_empty() && self.failed.is_none()
    }

    /// Why the log could not be read back, if it could not.
    pub(super) fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Records sent per filter, and the time it took.
    pub(super) fn finish(self) -> (HashMap<String, u64>, f64) {
        (self.sent, self.started.elapsed().as_secs_f64())
    }
}
