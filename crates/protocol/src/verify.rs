//! The verifier: which readings arrived, per stream, in memory that stays small for
//! 10^8 messages (a compressed bitmap of sequence numbers per stream, never a set of
//! every number), and what was lost, duplicated, reordered or corrupted.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};

use crate::reading::{self, DecodeError};
use crate::timing::SendTimes;

mod snapshot;
pub use snapshot::{SnapshotError, StreamSnapshot, VerifierSnapshot};

/// How many missing ranges a report lists.
pub const MISSING_RANGES_LISTED: usize = 10;

/// What the verifier made of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A reading not seen before.
    New,
    /// A reading that had arrived already (legal at QoS 1).
    Duplicate,
    /// A payload that claimed to be a reading but failed its checks.
    Corrupt,
    /// A message that is not a reading of an expected stream.
    Foreign,
}

/// What one message was, in the few fields the verifier needs: what a journal stores
/// so that a restarted subscriber can rebuild its verdict exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation<'a> {
    Reading {
        stream_id: u64,
        /// Borrowed from the payload, except where JSON decoding had to copy it.
        device_id: Cow<'a, str>,
        seq: u64,
        total: u64,
    },
    /// Claimed to be a reading but failed its checks.
    Corrupt,
    /// Not a reading at all.
    Foreign,
}

/// The result of [`Verifier::record_payload`].
#[derive(Debug, Clone)]
pub struct Recorded<'p> {
    pub arrival: Arrival,
    pub observation: Observation<'p>,
    /// When the reading was meant to leave and when it did, as far as it said.
    pub sent: SendTimes,
}

/// Everything known about one stream (one publisher run of one device).
#[derive(Debug, Default)]
struct StreamState {
    device_id: String,
    /// The largest total any of its readings carried (0 = the sender did not say).
    total: u64,
    seen: RoaringTreemap,
    duplicates: u64,
    out_of_order: u64,
    highest_seq: u64,
}

impl StreamState {
    /// Readings expected in this stream: its total or, when the sender did not say,
    /// `assumed_total` (the run's `--count` when this is the only stream) or the highest
    /// sequence number seen, whichever is larger.
    fn expected(&self, assumed_total: u64) -> u64 {
        if self.total > 0 {
            self.total
        } else {
            self.highest_seq.max(assumed_total)
        }
    }

    fn distinct(&self) -> u64 {
        self.seen.len()
    }

    fn missing(&self, assumed_total: u64) -> u64 {
        self.expected(assumed_total).saturating_sub(self.distinct())
    }

    /// The first `limit` runs of sequence numbers in `1..=expected` that never arrived.
    fn missing_ranges(&self, assumed_total: u64, limit: usize) -> Vec<[u64; 2]> {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        let expected = self.expected(assumed_total);
        if expected == 0 || self.missing(assumed_total) == 0 {
            return ranges;
        }
        let mut absent = RoaringTreemap::new();
        absent.insert_range(1..=expected);
        absent -= &self.seen;
        for seq in absent.iter() {
            let full = ranges.len() == limit;
            match ranges.last_mut() {
                Some(last) if last[1] + 1 == seq => last[1] = seq,
                _ if full => break,
                _ => ranges.push([seq, seq]),
            }
        }
        ranges
    }
}

/// Per-stream counts, as they appear in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// The stream id as 16 hex digits.
    pub id: String,
    pub device_id: String,
    /// Readings the stream announced (0 when it did not say).
    pub total: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub out_of_order: u64,
    /// The first missing runs of this stream as `[first, last]` pairs.
    pub missing_ranges: Vec<[u64; 2]>,
    /// The sequence numbers that arrived, as [`encode_set`] writes them; only in reports
    /// asked for with sets (`--report-sets`), so that `merge` can take their union.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}

impl StreamSummary {
    /// True when every reading the stream is known to hold arrived.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }
}

/// A set of sequence numbers as text: base64 (standard alphabet, padded) of roaring's
/// portable serialization of a 64-bit treemap, readable by any roaring implementation.
pub fn encode_set(set: &RoaringTreemap) -> String {
    let mut bytes = Vec::with_capacity(set.serialized_size());
    set.serialize_into(&mut bytes)
        .expect("writing to a Vec cannot fail");
    BASE64.encode(bytes)
}

/// Why a set written by [`encode_set`] could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("not a serialized roaring bitmap: {0}")]
    Roaring(#[from] std::io::Error),
}

/// Reads a set written by [`encode_set`].
pub fn decode_set(text: &str) -> Result<RoaringTreemap, SetError> {
    let bytes = BASE64.decode(text)?;
    Ok(RoaringTreemap::deserialize_from(bytes.as_slice())?)
}

/// Totals over every stream, plus what could not be attributed to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub expected: u64,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub corrupt: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    /// First missing runs over all streams, `[first, last]` pairs.
    pub missing_ranges: Vec<[u64; 2]>,
    pub streams: Vec<StreamSummary>,
    /// Every expected reading arrived, intact, and nothing corrupt came.
    pub complete: bool,
}

/// Records arrivals and produces the [`Verdict`].
#[derive(Debug)]
pub struct Verifier {
    expected: u64,
    streams: HashMap<u64, StreamState>,
    received: u64,
    distinct: u64,
    corrupt: u64,
    foreign: u64,
    last_error: Option<DecodeError>,
}

impl Verifier {
    /// `expected` is the total number of readings expected over all streams.
    pub fn new(expected: u64) -> Self {
        Verifier {
            expected,
            streams: HashMap::new(),
            received: 0,
            distinct: 0,
            corrupt: 0,
            foreign: 0,
            last_error: None,
        }
    }

    /// Decodes and records one payload.
    pub fn record_payload<'p>(&mut self, payload: &'p [u8]) -> Recorded<'p> {
        match reading::decode(payload) {
            Ok(r) => {
                let sent = SendTimes {
                    sent_at_us: (r.sent_at_us > 0).then_some(r.sent_at_us),
                    departed_at_us: r.departed_at_us(),
                };
                let observation = Observation::Reading {
                    stream_id: r.stream_id,
                    device_id: r.device_id,
                    seq: r.seq,
                    total: r.total,
                };
                Recorded {
                    arrival: self.observe(&observation),
                    observation,
                    sent,
                }
            }
            Err(e) => {
                let observation = if e.is_corruption() {
                    Observation::Corrupt
                } else {
                    Observation::Foreign
                };
                self.last_error = Some(e);
                Recorded {
                    arrival: self.observe(&observation),
                    observation,
                    sent: SendTimes::default(),
                }
            }
        }
    }

    /// Records one arrival. Replaying the observations of a run (from a journal) gives
    /// the same verdict as the run itself.
    pub fn observe(&mut self, observation: &Observation<'_>) -> Arrival {
        self.received += 1;
        match observation {
            Observation::Reading {
                stream_id,
                device_id,
                seq,
                total,
            } => self.record(*stream_id, device_id, *seq, *total),
            Observation::Corrupt => {
                self.corrupt += 1;
                Arrival::Corrupt
            }
            Observation::Foreign => {
                self.foreign += 1;
                Arrival::Foreign
            }
        }
    }

    /// The state of `stream_id`, new (named after `device_id`) on its first reading.
    fn stream(&mut self, stream_id: u64, device_id: &str) -> &mut StreamState {
        self.streams
            .entry(stream_id)
            .or_insert_with(|| StreamState {
                device_id: device_id.to_owned(),
                ..StreamState::default()
            })
    }

    /// Records a decoded reading (not counted in `received`; see [`Self::observe`]).
    fn record(&mut self, stream_id: u64, device_id: &str, seq: u64, total: u64) -> Arrival {
        if total > 0 && seq > total {
            // A sequence number its own stream says cannot exist.
            self.foreign += 1;
            return Arrival::Foreign;
        }
        let stream = self.stream(stream_id, device_id);
        stream.total = stream.total.max(total);
        if !stream.seen.insert(seq) {
            stream.duplicates += 1;
            return Arrival::Duplicate;
        }
        if seq < stream.highest_seq {
            stream.out_of_order += 1;
        }
        stream.highest_seq = stream.highest_seq.max(seq);
        self.distinct += 1;
        Arrival::New
    }

    /// Payloads seen, valid or not.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct valid readings over all streams.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// True once every expected reading has arrived: the subscriber can stop.
    pub fn is_satisfied(&self) -> bool {
        let assumed = self.assumed_total();
        self.distinct >= self.expected && self.streams.values().all(|s| s.missing(assumed) == 0)
    }

    /// The most recent decoding failure, to show the user an example.
    pub fn last_error(&self) -> Option<&DecodeError> {
        self.last_error.as_ref()
    }

    /// The total to assume for a stream that did not announce one: with a single
    /// stream, the whole expected count is its (so a lost tail shows); with several, it
    /// cannot be apportioned and only gaps are attributed to streams.
    fn assumed_total(&self) -> u64 {
        if self.streams.len() == 1 {
            self.expected
        } else {
            0
        }
    }

    /// Adds one stream as another verifier recorded it (a member of a shared
    /// subscription; see `merge`): its set joins this one's, and readings both had count
    /// as duplicates, as if one verifier had seen every arrival.
    pub(crate) fn absorb_stream(
        &mut self,
        stream_id: u64,
        device_id: &str,
        total: u64,
        seen: &RoaringTreemap,
        duplicates: u64,
        out_of_order: u64,
    ) {
        let stream = self.stream(stream_id, device_id);
        let both = stream.seen.intersection_len(seen);
        stream.seen |= seen;
        stream.total = stream.total.max(total);
        stream.duplicates += duplicates + both;
        stream.out_of_order += out_of_order;
        stream.highest_seq = stream.highest_seq.max(seen.max().unwrap_or(0));
        self.distinct += seen.len() - both;
    }

    /// Adds another verifier's count of arrivals and of those that were no reading of a
    /// stream (see [`Self::absorb_stream`]).
    pub(crate) fn absorb_counts(&mut self, received: u64, corrupt: u64, foreign: u64) {
        self.received += received;
        self.corrupt += corrupt;
        self.foreign += foreign;
    }

    /// Summarises everything recorded so far.
    pub fn verdict(&self) -> Verdict {
        self.summarise(false)
    }

    /// [`Self::verdict`] with every stream's set of arrived sequence numbers, for a
    /// report that `merge` can combine with others.
    pub fn verdict_with_sets(&self) -> Verdict {
        self.summarise(true)
    }

    fn summarise(&self, with_sets: bool) -> Verdict {
        let assumed = self.assumed_total();
        let mut streams: Vec<StreamSummary> = self
            .streams
            .iter()
            .map(|(id, s)| StreamSummary {
                id: format!("{id:016x}"),
                device_id: s.device_id.clone(),
                total: s.total,
                distinct: s.distinct(),
                duplicates: s.duplicates,
                missing: s.missing(assumed),
                out_of_order: s.out_of_order,
                missing_ranges: s.missing_ranges(assumed, MISSING_RANGES_LISTED),
                set: with_sets.then(|| encode_set(&s.seen)),
            })
            .collect();
        // Worst stream first, then by id so the order is stable.
        streams.sort_by(|a, b| b.missing.cmp(&a.missing).then_with(|| a.id.cmp(&b.id)));
        let per_stream_missing: u64 = streams.iter().map(|s| s.missing).sum();
        let missing = per_stream_missing.max(self.expected.saturating_sub(self.distinct));
        let missing_ranges = streams
            .iter()
            .flat_map(|s| s.missing_ranges.iter().copied())
            .take(MISSING_RANGES_LISTED)
            .collect();
        Verdict {
            expected: self.expected,
            received: self.received,
            distinct: self.distinct,
            duplicates: streams.iter().map(|s| s.duplicates).sum(),
            missing,
            corrupt: self.corrupt,
            out_of_order: streams.iter().map(|s| s.out_of_order).sum(),
            foreign: self.foreign,
            missing_ranges,
            complete: missing == 0 && self.corrupt == 0,
            streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::reading::tests::binary as payload;

    fn feed(v: &mut Verifier, stream: u64, total: u64, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            v.record_payload(&payload(stream, seq, total));
        }
    }

    #[test]
    fn a_complete_stream_is_complete() {
        let mut v = Verifier::new(100);
        feed(&mut v, 1, 100, 1..=100);
        let verdict = v.verdict();
        assert!(verdict.complete && v.is_satisfied());
        assert_eq!(
            (verdict.distinct, verdict.missing, verdict.duplicates),
            (100, 0, 0)
        );
    }

    #[test]
    fn gaps_and_a_lost_tail_are_counted_and_listed() {
        let mut v = Verifier::new(100);
        feed(
            &mut v,
            1,
            100,
            (1..=100).filter(|s| !(10..=12).contains(s) && *s != 50 && *s < 98),
        );
        let verdict = v.verdict();
        assert_eq!(verdict.missing, 3 + 1 + 3);
        assert_eq!(verdict.missing_ranges, vec![[10, 12], [50, 50], [98, 100]]);
        assert!(!verdict.complete && !v.is_satisfied());
    }

    #[test]
    fn a_stream_that_lost_everything_after_its_first_reading_shows_it() {
        let mut v = Verifier::new(1000);
        feed(&mut v, 1, 1000, [1]);
        let verdict = v.verdict();
        assert_eq!(verdict.missing, 999);
        assert_eq!(verdict.missing_ranges, vec![[2, 1000]]);
    }

    #[test]
    fn duplicates_and_reordering_are_counted_not_failed() {
        let mut v = Verifier::new(5);
        feed(&mut v, 1, 5, [1, 3, 2, 2, 5, 4, 5, 1]);
        let verdict = v.verdict();
        assert_eq!(verdict.distinct, 5);
        assert_eq!(verdict.duplicates, 3);
        assert_eq!(verdict.out_of_order, 2);
        assert_eq!(verdict.received, 8);
        assert!(verdict.complete);
    }

    #[test]
    fn corrupt_and_foreign_payloads_are_told_apart() {
        let mut v = Verifier::new(3);
        feed(&mut v, 1, 3, 1..=3);
        let mut bad = payload(1, 2, 3);
        bad[13] ^= 0xff;
        assert_eq!(v.record_payload(&bad).arrival, Arrival::Corrupt);
        assert_eq!(v.record_payload(b"hello").arrival, Arrival::Foreign);
        assert_eq!(
            v.record_payload(&payload(1, 4, 3)).arrival,
            Arrival::Foreign
        );
        let verdict = v.verdict();
        assert_eq!(
            (verdict.corrupt, verdict.foreign, verdict.received),
            (1, 2, 6)
        );
        assert!(!verdict.complete, "corruption spoils a complete run");
    }

    #[test]
    fn interleaved_streams_are_verified_independently() {
        let mut v = Verifier::new(20);
        for seq in 1..=10 {
            v.record_payload(&payload(1, seq, 10));
            if seq != 7 {
                v.record_payload(&payload(2, seq, 10));
            }
        }
        let verdict = v.verdict();
        assert_eq!(verdict.streams.len(), 2);
        assert_eq!(verdict.streams[0].id, format!("{:016x}", 2));
        assert_eq!(verdict.streams[0].missing_ranges, vec![[7, 7]]);
        assert_eq!(verdict.streams[1].missing, 0);
        assert_eq!((verdict.distinct, verdict.missing), (19, 1));
    }

    #[test]
    fn expected_readings_from_streams_that_never_showed_up_are_missing() {
        let mut v = Verifier::new(30);
        feed(&mut v, 1, 10, 1..=10);
        assert_eq!(v.verdict().missing, 20);
        assert!(!v.is_satisfied());
    }

    #[test]
    fn a_lone_stream_without_a_total_is_held_to_the_expected_count() {
        let mut v = Verifier::new(10);
        for seq in [1, 2, 3, 5] {
            v.record(7, "demo", seq, 0);
        }
        let verdict = v.verdict();
        assert_eq!(verdict.missing, 6);
        assert_eq!(verdict.streams[0].missing, 6);
        assert_eq!(verdict.missing_ranges, vec![[4, 4], [6, 10]]);
    }

    #[test]
    fn replaying_observations_rebuilds_the_same_verdict() {
        let mut live = Verifier::new(10);
        let mut log = Vec::new();
        let mut bad = payload(1, 2, 10);
        bad[20] ^= 1;
        let payloads = [
            payload(1, 1, 10),
            payload(1, 3, 10),
            payload(1, 1, 10),
            bad,
            b"x".to_vec(),
        ];
        for p in &payloads {
            let recorded = live.record_payload(p);
            log.push(match recorded.observation {
                Observation::Reading {
                    stream_id,
                    seq,
                    total,
                    ..
                } => (1, stream_id, seq, total),
                Observation::Corrupt => (2, 0, 0, 0),
                Observation::Foreign => (3, 0, 0, 0),
            });
        }
        let mut replayed = Verifier::new(10);
        for (kind, stream_id, seq, total) in log {
            replayed.observe(&match kind {
                1 => Observation::Reading {
                    stream_id,
                    device_id: "dev".into(),
                    seq,
                    total,
                },
                2 => Observation::Corrupt,
                _ => Observation::Foreign,
            });
        }
        assert_eq!(replayed.verdict(), live.verdict());
    }

    #[test]
    fn memory_stays_small_for_a_hundred_million_readings() {
        let mut v = Verifier::new(100_000_000);
        // Record through the internal path: encoding 10^8 payloads would only slow the test.
        for seq in (1..=100_000_000).filter(|s| s % 1_000_000 != 0) {
            v.record(1, "dev", seq, 100_000_000);
        }
        let bytes = v.streams[&1].seen.serialized_size();
        assert!(bytes < 16 * 1024 * 1024, "bitmap uses {bytes} bytes");
        assert_eq!(v.verdict().missing, 100);
    }
}
