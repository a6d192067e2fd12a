//! Acknowledge only what is on record. With a state file, rumqttc's automatic acks are
//! off: each reading's PUBACK is held back until the journal record of it has been
//! written, then sent in arrival order (rumqttd disconnects a client whose acks come out
//! of order). Batches stay well under rumqttd's fixed window of 100 unacknowledged
//! messages, so the broker never stalls waiting for us.

use std::time::{Duration, Instant};

use mqtt_protocol::verify::{Observation, Verifier};
use rumqttc::{AsyncClient, Publish};

use crate::state::{State, StateError};

/// Most readings awaiting their ack at once (half of rumqttd's window of 100).
pub const MAX_BATCH: usize = 50;
/// Longest a reading waits for its ack when the stream is slow.
pub const MAX_DELAY: Duration = Duration::from_millis(5);

/// Holds back acks until the state file has the readings they cover.
pub struct AckBatch {
    state: State,
    pending: Vec<Publish>,
    oldest: Option<Instant>,
}

impl AckBatch {
    pub fn new(state: State) -> Self {
        AckBatch {
            state,
            pending: Vec::with_capacity(MAX_BATCH),
            oldest: None,
        }
    }

    /// Puts an arrival on record (buffered until [`Self::commit`]).
    pub fn record(&mut self, observation: &Observation<'_>) {
        self.state.record(observation);
    }

    /// Holds back the ack of a recorded arrival; returns true when the batch is full
    /// and must be committed.
    pub fn hold(&mut self, publish: Publish) -> bool {
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(publish);
        self.pending.len() >= MAX_BATCH
    }

    /// When the current batch must be committed at the latest, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + MAX_DELAY)
    }

    /// Writes the journal (checkpointing `verifier` when it is due), then queues the
    /// acks in arrival order. The client's request channel must have room for
    /// [`MAX_BATCH`] acks.
    pub fn commit(&mut self, client: &AsyncClient, verifier: &Verifier) -> Result<(), StateError> {
        self.state.commit(verifier)?;
        for publish in self.pending.drain(..) {
            // A full or closed channel means the connection is going away; the broker
            // will deliver the reading again, and the journal already has it (counted
            // as a duplicate then).
            let _ = client.try_ack(&publish);
        }
        self.oldest = None;
        Ok(())
    }

    /// Forgets acks that can no longer be sent (the connection they belong to is gone)
    /// after writing the records, which stay valid.
    pub fn abandon(&mut self, verifier: &Verifier) -> Result<(), StateError> {
        self.state.commit(verifier)?;
        self.pending.clear();
        self.oldest = None;
        Ok(())
    }

    /// Commits and acks what is held, and leaves the state as a checkpoint and an empty
    /// journal: the end of a run.
    pub fn finish(&mut self, client: &AsyncClient, verifier: &Verifier) -> Result<(), StateError> {
        self.commit(client, verifier)?;
        self.state.finish(verifier)
    }
}
