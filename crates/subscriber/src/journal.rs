//! The journal: an append-only record of what arrived since the last checkpoint (see
//! `state`), so that a subscriber killed at any point and started again with the same
//! `--state` ends with an exact verdict.
//!
//! Readings are acknowledged to the broker only after their records were written here
//! (see `acks`): whatever the broker considers delivered is on record, and whatever is
//! not yet on record the broker will deliver again. Records are handed to the OS before
//! the acks that cover them, which survives the process dying; `--fsync` also forces them
//! to disk before acking, which survives power loss.
//!
//! Layout: one JSON header line (`{"journal":1,"client_id":..,"topic":..,"count":..,
//! "generation":..}`), then binary records, little-endian:
//!
//! | tag | body | meaning |
//! |-----|------|---------|
//! | 1 | stream u64, seq u64, total u64 | a reading |
//! | 2 | stream u64, len u8, device id | the device of a stream (once per stream and file) |
//! | 3 | — | a corrupt payload |
//! | 4 | — | a foreign payload |
//!
//! A record torn by a crash mid-write is dropped on the next start (and cut off). The
//! generation says which checkpoint the records follow: generation G holds what arrived
//! after the checkpoint that covers G - 1.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mqtt_protocol::verify::{Observation, Verifier};
use serde::{Deserialize, Serialize};

use crate::state::{replace_file, StateError};

const TAG_READING: u8 = 1;
const TAG_DEVICE: u8 = 2;
const TAG_CORRUPT: u8 = 3;
const TAG_FOREIGN: u8 = 4;

/// What a state file was made for (a restart must match it), and which generation of
/// the journal it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub journal: u32,
    pub client_id: String,
    pub topic: String,
    pub count: u64,
    /// Journals from before checkpoints existed have none: they are the first.
    #[serde(default = "first_generation")]
    pub generation: u64,
}

fn first_generation() -> u64 {
    1
}

impl Header {
    /// A header of this run, generation `generation`.
    pub fn new(client_id: &str, topic: &str, count: u64, generation: u64) -> Header {
        Header {
            journal: 1,
            client_id: client_id.to_owned(),
            topic: topic.to_owned(),
            count,
            generation,
        }
    }

    /// Checks that `found` (read from `path`) was made for the same run as `self`.
    pub fn check(&self, found: &Header, path: &Path) -> Result<(), StateError> {
        if found.journal != 1 {
            return Err(StateError::NotState {
                path: path.to_owned(),
                reason: format!("journal format {}", found.journal),
            });
        }
        let mismatch = |what, theirs: String, ours: String| StateError::Mismatch {
            path: path.to_owned(),
            what,
            theirs,
            ours,
        };
        if found.client_id != self.client_id {
            return Err(mismatch(
                "--client-id",
                found.client_id.clone(),
                self.client_id.clone(),
            ));
        }
        if found.topic != self.topic {
            return Err(mismatch("--topic", found.topic.clone(), self.topic.clone()));
        }
        if found.count != self.count {
            return Err(mismatch(
                "--count",
                found.count.to_string(),
                self.count.to_string(),
            ));
        }
        Ok(())
    }
}

/// The header of the journal at `path`, if there is a journal there.
pub fn read_header(path: &Path) -> Result<Option<Header>, StateError> {
    let io = |source| StateError::io(path, source);
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(source)),
    };
    let mut line = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    if line.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| StateError::NotState {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// An open journal, positioned for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    header: Header,
    buffer: Vec<u8>,
    streams_on_record: HashSet<u64>,
    fsync: bool,
    /// Bytes of records in this generation (the header not counted).
    records_len: u64,
    /// Records replayed from an earlier run.
    pub replayed: u64,
}

impl Journal {
    /// Opens the journal at `path` for `header`'s run. Its records are replayed into
    /// `verifier` when they follow the checkpoint the verifier was restored from (which
    /// covers generations up to `covered`); a journal the checkpoint already covers, or
    /// none at all, is replaced by an empty one of the next generation.
    pub fn open(
        path: &Path,
        header: &Header,
        covered: u64,
        fsync: bool,
        verifier: &mut Verifier,
    ) -> Result<Journal, StateError> {
        let next = Header {
            generation: covered + 1,
            ..header.clone()
        };
        let found = match read_header(path)? {
            None => return Journal::create(path, next, fsync, || {}),
            Some(found) => found,
        };
        header.check(&found, path)?;
        if found.generation <= covered {
            // A crash after the checkpoint was written and before the journal it covers
            // was replaced: its records are in the checkpoint already.
            return Journal::create(path, next, fsync, || {});
        }
        if found.generation > next.generation {
            return Err(StateError::NotState {
                path: path.to_owned(),
                reason: format!(
                    "journal generation {} follows a checkpoint of generation {}, but the \
                     checkpoint here covers only {covered} (was {} deleted?)",
                    found.generation,
                    found.generation - 1,
                    crate::state::checkpoint_path(path).display()
                ),
            });
        }
        let io = |source| StateError::io(path, source);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let appender = file.try_clone().map_err(io)?;
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(io)?;
        let mut journal = Journal {
            path: path.to_owned(),
            file: appender,
            header: found,
            buffer: Vec::with_capacity(64 * 1024),
            streams_on_record: HashSet::new(),
            fsync,
            records_len: 0,
            replayed: 0,
        };
        let header_len = line.len() as u64;
        let valid_end = journal.replay(&mut reader, header_len, verifier)?;
        drop(reader);
        if valid_end < file.metadata().map_err(io)?.len() {
            // A record torn by a crash: cut it off so appends start on a boundary.
            file.set_len(valid_end).map_err(io)?;
        }
        journal.file.seek(SeekFrom::Start(valid_end)).map_err(io)?;
        journal.records_len = valid_end - header_len;
        Ok(journal)
    }

    /// Puts an empty journal with `header` at `path` atomically (see [`replace_file`]);
    /// `before_rename` runs once it is written and synced, before it takes the place of
    /// whatever was at `path`.
    pub fn create(
        path: &Path,
        header: Header,
        fsync: bool,
        before_rename: impl FnOnce(),
    ) -> Result<Journal, StateError> {
        let mut line = serde_json::to_vec(&header).map_err(std::io::Error::other);
        if let Ok(line) = &mut line {
            line.push(b'\n');
        }
        let file = line
            .and_then(|line| replace_file(path, &line, before_rename))
            .map_err(|source| StateError::io(path, source))?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            header,
            buffer: Vec::with_capacity(64 * 1024),
            streams_on_record: HashSet::new(),
            fsync,
            records_len: 0,
            replayed: 0,
        })
    }

    /// The header this journal was opened or created with.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of records in this generation, written or buffered.
    pub fn records_len(&self) -> u64 {
        self.records_len + self.buffer.len() as u64
    }

    /// Replays records into `verifier`; returns the offset after the last whole record.
    fn replay(
        &mut self,
        reader: &mut impl Read,
        mut offset: u64,
        verifier: &mut Verifier,
    ) -> Result<u64, StateError> {
        let mut devices: HashMap<u64, String> = HashMap::new();
        let mut tag = [0u8; 1];
        loop {
            match reader.read_exact(&mut tag) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(offset),
                Err(source) => return Err(StateError::io(&self.path, source)),
            }
            let body_len = match tag[0] {
                TAG_READING => 24,
                TAG_DEVICE => 9,
                TAG_CORRUPT | TAG_FOREIGN => 0,
                other => {
                    return Err(StateError::NotState {
                        path: self.path.clone(),
                        reason: format!("unknown record tag {other} at offset {offset}"),
                    })
                }
            };
            let mut body = [0u8; 24];
            if reader.read_exact(&mut body[..body_len]).is_err() {
                return Ok(offset); // torn record
            }
            let word = |i: usize| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&body[i * 8..i * 8 + 8]);
                u64::from_le_bytes(bytes)
            };
            let mut record_len = 1 + body_len as u64;
            match tag[0] {
                TAG_READING => {
                    let stream_id = word(0);
                    let device_id = devices.get(&stream_id).map_or("", String::as_str);
                    verifier.observe(&Observation::Reading {
                        stream_id,
                        device_id: device_id.into(),
                        seq: word(1),
                        total: word(2),
                    });
                    self.replayed += 1;
                }
                TAG_DEVICE => {
                    let len = body[8] as usize;
                    let mut id = vec![0u8; len];
                    if reader.read_exact(&mut id).is_err() {
                        return Ok(offset); // torn record
                    }
                    record_len += len as u64;
                    devices.insert(word(0), String::from_utf8_lossy(&id).into_owned());
                    self.streams_on_record.insert(word(0));
                }
                TAG_CORRUPT => {
                    verifier.observe(&Observation::Corrupt);
                    self.replayed += 1;
                }
                _ => {
                    verifier.observe(&Observation::Foreign);
                    self.replayed += 1;
                }
            }
            offset += record_len;
        }
    }

    /// Buffers the record of one arrival (written by [`Self::commit`]).
    pub fn append(&mut self, observation: &Observation<'_>) {
        match observation {
            &Observation::Reading {
                stream_id,
                ref device_id,
                seq,
                total,
            } => {
                if self.streams_on_record.insert(stream_id) {
                    let id = &device_id.as_bytes()[..device_id.len().min(255)];
                    self.buffer.push(TAG_DEVICE);
                    self.buffer.extend_from_slice(&stream_id.to_le_bytes());
                    self.buffer.push(id.len() as u8);
                    self.buffer.extend_from_slice(id);
                }
                self.buffer.push(TAG_READING);
                for v in [stream_id, seq, total] {
                    self.buffer.extend_from_slice(&v.to_le_bytes());
                }
            }
            Observation::Corrupt => self.buffer.push(TAG_CORRUPT),
            Observation::Foreign => self.buffer.push(TAG_FOREIGN),
        }
    }

    /// Writes buffered records to the OS (and, with `--fsync`, to disk). After this
    /// returns, the readings they cover may be acknowledged.
    pub fn commit(&mut self) -> Result<(), StateError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buffer)
            .map_err(|source| StateError::io(&self.path, source))?;
        self.records_len += self.buffer.len() as u64;
        self.buffer.clear();
        if self.fsync {
            self.file
                .sync_data()
                .map_err(|source| StateError::io(&self.path, source))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header::new("sub", "sensors/#", 10, 1)
    }

    fn reading(seq: u64) -> Observation<'static> {
        Observation::Reading {
            stream_id: 7,
            device_id: "dev-7".into(),
            seq,
            total: 10,
        }
    }

    #[test]
    fn a_reopened_journal_rebuilds_the_verdict_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut live = Verifier::new(10);
        {
            let mut j = Journal::open(&path, &header(), 0, false, &mut live).unwrap();
            for obs in [
                reading(1),
                reading(2),
                reading(2),
                Observation::Corrupt,
                Observation::Foreign,
            ] {
                live.observe(&obs);
                j.append(&obs);
            }
            j.commit().unwrap();
        }
        // A crash in the middle of the next record.
        let whole = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[TAG_READING, 1, 2])
            .unwrap();

        let mut resumed = Verifier::new(10);
        let mut j = Journal::open(&path, &header(), 0, false, &mut resumed).unwrap();
        assert_eq!(j.replayed, 5);
        assert_eq!(resumed.verdict(), live.verdict());
        assert_eq!(resumed.verdict().streams[0].device_id, "dev-7");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        // Appends go on after the last whole record.
        j.append(&reading(3));
        j.commit().unwrap();
        let mut again = Verifier::new(10);
        Journal::open(&path, &header(), 0, false, &mut again).unwrap();
        assert_eq!(again.verdict().distinct, 3);
    }

    #[test]
    fn a_journal_of_another_run_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        Journal::open(&path, &header(), 0, false, &mut Verifier::new(10)).unwrap();
        let other = Header {
            count: 11,
            ..header()
        };
        let err = Journal::open(&path, &other, 0, false, &mut Verifier::new(11))
            .err()
            .unwrap();
        assert!(err.to_string().contains("--count"), "{err}");
        std::fs::write(&path, b"garbage\n").unwrap();
        let err = Journal::open(&path, &header(), 0, false, &mut Verifier::new(10))
            .err()
            .unwrap();
        assert!(matches!(err, StateError::NotState { .. }), "{err}");
    }

    #[test]
    fn a_journal_the_checkpoint_covers_is_not_replayed_and_a_later_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut j = Journal::open(&path, &header(), 0, false, &mut Verifier::new(10)).unwrap();
        j.append(&reading(1));
        j.commit().unwrap();
        // Generation 1 is covered by a checkpoint: nothing is replayed, and the journal
        // starts over as generation 2.
        let mut v = Verifier::new(10);
        let j = Journal::open(&path, &header(), 1, false, &mut v).unwrap();
        assert_eq!((j.replayed, v.received(), j.header().generation), (0, 0, 2));
        assert_eq!(read_header(&path).unwrap().unwrap().generation, 2);
        // Generation 2 without the checkpoint of generation 1.
        let err = Journal::open(&path, &header(), 0, false, &mut Verifier::new(10))
            .err()
            .unwrap();
        assert!(err.to_string().contains("was"), "{err}");
    }
}
