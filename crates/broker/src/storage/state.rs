//! The state file, `DIR/state`: a checkpoint of the retained messages and persistent sessions
//! (subscriptions, QoS, the first record each has not acknowledged) as of one log record id.
//! Written whole to `state.tmp`, synced, then renamed over `state`, so a crash leaves the old
//! checkpoint or the new one; read with the same torn-tail and checksum rules as the log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use bytes::Bytes;
use tracing::warn;

use super::entry::{StateEntry, Subscription};
use super::record::{check_file_header, file_header, frame, next_in, resync, Header, Next};
use super::{StorageError, FILE_HEADER_LEN};

pub(crate) const STATE_MAGIC: &[u8; 8] = b"MQTTSTA\0";

/// Persistent sessions by router id: each subscription by filter.
pub(crate) type Book = BTreeMap<String, BTreeMap<String, Subscription>>;

/// `client` subscribed to `filter` at `qos` in record `id`: a new subscription reads what
/// comes after that record, a repeated one only changes its QoS. The one rule for the live
/// book and for the replay of the log.
pub(crate) fn book_subscribe(book: &mut Book, client: &str, filter: &str, qos: u8, id: u64) {
    let sub = book
        .entry(client.to_owned())
        .or_default()
        .entry(filter.to_owned())
        .or_insert(Subscription {
            qos,
            ack_from: id + 1,
        });
    sub.qos = qos;
}

/// `client` unsubscribed from `filter`; a client left without subscriptions leaves the
/// book. Whether it had that subscription.
pub(crate) fn book_unsubscribe(book: &mut Book, client: &str, filter: &str) -> bool {
    let Some(subs) = book.get_mut(client) else {
        return false;
    };
    let had = subs.remove(filter).is_some();
    if subs.is_empty() {
        book.remove(client);
    }
    had
}

/// What a checkpoint holds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Checkpoint {
    /// Covers every log record below this id.
    pub next_id: u64,
    /// Retained messages by topic: QoS and payload.
    pub retained: BTreeMap<Bytes, (u8, Bytes)>,
    pub sessions: Book,
}

impl Checkpoint {
    /// Writes the checkpoint to `dir/state` (through `state.tmp` and a rename).
    pub(crate) fn write(&self, dir: &Path) -> Result<(), StorageError> {
        let mut buf = file_header(STATE_MAGIC).to_vec();
        let entry = |buf: &mut Vec<u8>, e: StateEntry<'_>| frame(buf, |b| e.encode(b));
        entry(
            &mut buf,
            StateEntry::Meta {
                next_id: self.next_id,
            },
        );
        for (topic, (qos, payload)) in &self.retained {
            entry(
                &mut buf,
                StateEntry::Retained {
                    qos: *qos,
                    topic,
                    payload,
                },
            );
        }
        for (client, subscriptions) in &self.sessions {
            let subscriptions = subscriptions
                .iter()
                .map(|(filter, sub)| (filter.as_str(), *sub))
                .collect();
            entry(
                &mut buf,
                StateEntry::Session {
                    client,
                    subscriptions,
                },
            );
        }
        let tmp = dir.join("state.tmp");
        let path = dir.join("state");
        let mut file = File::create(&tmp).map_err(|e| StorageError::io(&tmp, "create", e))?;
        file.write_all(&buf)
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::io(&tmp, "write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, "replace", e))?;
        super::sync_dir(dir)
    }

    /// Reads `dir/state` (none yet: an empty checkpoint). A torn tail is cut off with a
    /// WARN; damage is an error unless `repair`, which skips the damaged records.
    pub(crate) fn load(dir: &Path, repair: bool) -> Result<(Checkpoint, u64), StorageError> {
        let path = dir.join("state");
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Checkpoint::default(), 0))
            }
            Err(e) => return Err(StorageError::io(&path, "read", e)),
        };
        let header = check_file_header(&data, STATE_MAGIC);
        if header == Header::Foreign && data.len() < FILE_HEADER_LEN && repair {
            return Ok((Checkpoint::default(), 1));
        }
        if let Some(refused) = header.refusal(&path) {
            return Err(refused);
        }
        let mut checkpoint = Checkpoint::default();
        let mut skipped = 0;
        let mut pos = FILE_HEADER_LEN;
        loop {
            match next_in(&data, &mut pos) {
                Next::Record(body) => match StateEntry::decode(body) {
                    Some(entry) => checkpoint.apply(entry),
                    None if repair => skipped += 1,
                    None => return Err(StorageError::damaged(&path, pos as u64)),
                },
                Next::End => break,
                Next::TornTail => {
                    warn!(
                        file = %path.display(),
                        offset = pos,
                        "the state file ends in a torn write: cut off {} bytes at offset {pos}",
                        data.len() - pos
                    );
                    break;
                }
                Next::Damaged if repair => {
                    skipped += 1;
                    match resync(&data, pos) {
                        Some(next) => pos = next,
                        None => break,
                    }
                }
                Next::Damaged => return Err(StorageError::damaged(&path, pos as u64)),
            }
        }
        Ok((checkpoint, skipped))
    }

    fn apply(&mut self, entry: StateEntry<'_>) {
        match entry {
            StateEntry::Meta { next_id } => self.next_id = next_id,
            StateEntry::Retained {
                qos,
                topic,
                payload,
            } => {
                self.retained.insert(
                    Bytes::copy_from_slice(topic),
                    (qos, Bytes::copy_from_slice(payload)),
                );
            }
            StateEntry::Session {
                client,
                subscriptions,
            } => {
                let subs = subscriptions
                    .into_iter()
                    .map(|(filter, sub)| (filter.to_owned(), sub))
                    .collect();
                self.sessions.insert(client.to_owned(), subs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TestDir;

    #[test]
    fn a_checkpoint_reads_back_and_survives_a_torn_tail() {
        let dir = TestDir::new("state");
        let mut checkpoint = Checkpoint {
            next_id: 77,
            ..Checkpoint::default()
        };
        checkpoint
            .retained
            .insert(Bytes::from_static(b"a/b"), (1, Bytes::from_static(b"up")));
        checkpoint.sessions.entry("sub".into()).or_default().insert(
            "s/#".into(),
            Subscription {
                qos: 1,
                ack_from: 50,
            },
        );
        checkpoint.write(&dir).unwrap();
        let (back, skipped) = Checkpoint::load(&dir, false).unwrap();
        assert_eq!((back.next_id, skipped), (77, 0));
        assert_eq!(back.retained, checkpoint.retained);
        assert_eq!(back.sessions, checkpoint.sessions);

        let path = dir.join("state");
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 3).unwrap();
        let (torn, _) = Checkpoint::load(&dir, false).unwrap();
        assert_eq!(torn.next_id, 77);
        assert!(torn.sessions.is_empty());
    }
}
