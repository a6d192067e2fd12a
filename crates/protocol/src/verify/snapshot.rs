//! The verifier's whole state as a value that can be written down and read back: what a
//! subscriber checkpoints so that its state file stays as small as the bitmaps, instead
//! of growing with every arrival. Sets are roaring's portable serialization (base64),
//! as in reports, so any roaring implementation can read them.

use serde::{Deserialize, Serialize};

use super::{decode_set, encode_set, SetError, StreamState, Verifier};

/// Everything a [`Verifier`] knows, but the example of the last bad payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierSnapshot {
    pub expected: u64,
    pub received: u64,
    pub distinct: u64,
    pub corrupt: u64,
    pub foreign: u64,
    pub streams: Vec<StreamSnapshot>,
}

/// One stream of a [`VerifierSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSnapshot {
    pub id: u64,
    pub device_id: String,
    pub total: u64,
    /// The sequence numbers that arrived, as [`encode_set`] writes them.
    pub seen: String,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub highest_seq: u64,
}

/// Why a snapshot cannot become a verifier again.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("stream {id:016x}: {source}")]
    Set { id: u64, source: SetError },
    #[error("stream {id:016x} appears twice")]
    DuplicateStream { id: u64 },
    #[error("the streams hold {held} distinct readings, the totals say {claimed}")]
    Inconsistent { held: u64, claimed: u64 },
}

impl Verifier {
    /// The verifier's state; [`Verifier::restore`] turns it back into an equal verifier.
    pub fn snapshot(&self) -> VerifierSnapshot {
        let mut streams: Vec<StreamSnapshot> = self
            .streams
            .iter()
            .map(|(&id, s)| StreamSnapshot {
                id,
                device_id: s.device_id.clone(),
                total: s.total,
                seen: encode_set(&s.seen),
                duplicates: s.duplicates,
                out_of_order: s.out_of_order,
                highest_seq: s.highest_seq,
            })
            .collect();
        streams.sort_by_key(|s| s.id);
        VerifierSnapshot {
            expected: self.expected,
            received: self.received,
            distinct: self.distinct,
            corrupt: self.corrupt,
            foreign: self.foreign,
            streams,
        }
    }

    /// The verifier a snapshot was taken of, checked for consistency.
    pub fn restore(snapshot: &VerifierSnapshot) -> Result<Verifier, SnapshotError> {
        let mut v = Verifier::new(snapshot.expected);
        v.received = snapshot.received;
        v.distinct = snapshot.distinct;
        v.corrupt = snapshot.corrupt;
        v.foreign = snapshot.foreign;
        let mut held = 0;
        for s in &snapshot.streams {
            let seen =
                decode_set(&s.seen).map_err(|source| SnapshotError::Set { id: s.id, source })?;
            held += seen.len();
            let state = StreamState {
                device_id: s.device_id.clone(),
                total: s.total,
                seen,
                duplicates: s.duplicates,
                out_of_order: s.out_of_order,
                highest_seq: s.highest_seq,
            };
            if v.streams.insert(s.id, state).is_some() {
                return Err(SnapshotError::DuplicateStream { id: s.id });
            }
        }
        if held != v.distinct {
            return Err(SnapshotError::Inconsistent {
                held,
                claimed: v.distinct,
            });
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::tests::binary as payload;
    use crate::verify::Observation;

    #[test]
    fn a_restored_verifier_goes_on_exactly_as_the_original() {
        let mut live = Verifier::new(30);
        for (stream, seqs) in [(1u64, vec![1, 2, 2, 5, 3]), (2, vec![10, 1])] {
            for seq in seqs {
                live.record_payload(&payload(stream, seq, 10));
            }
        }
        live.record_payload(b"not a reading");
        let snapshot = live.snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        let mut restored = Verifier::restore(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(restored.verdict(), live.verdict());
        let more = Observation::Reading {
            stream_id: 1,
            device_id: "dev".into(),
            seq: 4,
            total: 10,
        };
        assert_eq!(restored.observe(&more), live.observe(&more));
        assert_eq!(restored.verdict(), live.verdict());
    }

    #[test]
    fn an_inconsistent_snapshot_is_refused() {
        let mut v = Verifier::new(10);
        v.record_payload(&payload(1, 1, 10));
        let mut snapshot = v.snapshot();
        snapshot.distinct = 2;
        let err = Verifier::restore(&snapshot).unwrap_err();
        assert!(err.to_string().contains("hold 1 distinct"), "{err}");
        snapshot.distinct = 1;
        snapshot.streams[0].seen = "%%%".into();
        assert!(Verifier::restore(&snapshot).is_err());
    }
}
