//! The subscriber's state file: an append-only journal of what arrived, so that a
//! subscriber killed at any point and started again with the same `--state` ends with
//! an exact verdict.
//!
//! Readings are acknowledged to the broker only after their records were written here
//! (see the ack batching in `lib.rs`): whatever the broker considers delivered is on
//! record, and whatever is not yet on record the broker will deliver again. Records are
//! handed to the OS before the acks that cover them, which survives the process dying;
//! `--fsync` also forces them to disk before acking, which survives power loss.
//!
//! Layout: one JSON header line (`{"journal":1,"client_id":..,"topic":..,"count":..}`),
//! then binary records, little-endian:
//!
//! | tag | body | meaning |
//! |-----|------|---------|
//! | 1 | stream u64, seq u64, total u64 | a reading |
//! | 2 | stream u64, len u8, device id | the device of a stream (once per stream) |
//! | 3 | — | a corrupt payload |
//! | 4 | — | a foreign payload |
//!
//! A record torn by a crash mid-write is dropped on the next start (and cut off).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mqtt_protocol::verify::{Observation, Verifier};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const TAG_READING: u8 = 1;
const TAG_DEVICE: u8 = 2;
const TAG_CORRUPT: u8 = 3;
const TAG_FOREIGN: u8 = 4;

/// What a state file was made for; a restart must match it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub journal: u32,
    pub client_id: String,
    pub topic: String,
    pub count: u64,
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not a subscriber journal ({reason}); pass a new --state path")]
    NotAJournal { path: PathBuf, reason: String },
    #[error(
        "state file {path} was made for {what} {theirs:?}, not {ours:?}: pass the same flags \
         to resume, or a new --state path to start over"
    )]
    Mismatch {
        path: PathBuf,
        what: &'static str,
        theirs: String,
        ours: String,
    },
}

/// The client id an existing state file was made with, so that a restart without
/// `--client-id` resumes the same broker session.
pub fn recorded_client_id(path: &Path) -> Result<Option<String>, JournalError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut line = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut line)
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
    if line.is_empty() {
        return Ok(None);
    }
    let header: Header = serde_json::from_slice(&line).map_err(|e| JournalError::NotAJournal {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Some(header.client_id))
}

/// An open journal, positioned for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    buffer: Vec<u8>,
    streams_on_record: HashSet<u64>,
    fsync: bool,
    /// Records replayed from an earlier run.
    pub replayed: u64,
}

impl Journal {
    /// Opens `path`, creating it with `header` or, if it exists, checking that it was
    /// made for the same run and replaying its records into `verifier`.
    pub fn open(
        path: &Path,
        header: &Header,
        fsync: bool,
        verifier: &mut Verifier,
    ) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut journal = Journal {
            path: path.to_owned(),
            file: file.try_clone().map_err(io)?,
            buffer: Vec::with_capacity(64 * 1024),
            streams_on_record: HashSet::new(),
            fsync,
            replayed: 0,
        };
        if file.metadata().map_err(io)?.len() == 0 {
            let mut line = serde_json::to_vec(header).expect("header serialises");
            line.push(b'\n');
            journal.file.write_all(&line).map_err(io)?;
            journal.sync()?;
            return Ok(journal);
        }
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(io)?;
        let found: Header =
            serde_json::from_slice(&line).map_err(|e| JournalError::NotAJournal {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        journal.check(&found, header)?;
        let valid_end = journal.replay(&mut reader, line.len() as u64, verifier)?;
        drop(reader);
        if valid_end < file.metadata().map_err(io)?.len() {
            // A record torn by a crash: cut it off so appends start on a boundary.
            file.set_len(valid_end).map_err(io)?;
        }
        Ok(journal)
    }

    fn check(&self, found: &Header, ours: &Header) -> Result<(), JournalError> {
        let mismatch = |what, theirs: String, ours: String| JournalError::Mismatch {
            path: self.path.clone(),
            what,
            theirs,
            ours,
        };
        if found.journal != 1 {
            return Err(JournalError::NotAJournal {
                path: self.path.clone(),
                reason: format!("journal format {}", found.journal),
            });
        }
        if found.client_id != ours.client_id {
            return Err(mismatch(
                "--client-id",
                found.client_id.clone(),
                ours.client_id.clone(),
            ));
        }
        if found.topic != ours.topic {
            return Err(mismatch("--topic", found.topic.clone(), ours.topic.clone()));
        }
        if found.count != ours.count {
            return Err(mismatch(
                "--count",
                found.count.to_string(),
                ours.count.to_string(),
            ));
        }
        Ok(())
    }

    /// Replays records into `verifier`; returns the offset after the last whole record.
    fn replay(
        &mut self,
        reader: &mut impl Read,
        mut offset: u64,
        verifier: &mut Verifier,
    ) -> Result<u64, JournalError> {
        let mut devices: std::collections::HashMap<u64, String> = Default::default();
        let mut tag = [0u8; 1];
        loop {
            match reader.read_exact(&mut tag) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(offset),
                Err(source) => {
                    return Err(JournalError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
            let body_len = match tag[0] {
                TAG_READING => 24,
                TAG_DEVICE => 9,
                TAG_CORRUPT | TAG_FOREIGN => 0,
                other => {
                    return Err(JournalError::NotAJournal {
                        path: self.path.clone(),
                        reason: format!("unknown record tag {other} at offset {offset}"),
                    })
                }
            };
            let mut body = [0u8; 24];
            if reader.read_exact(&mut body[..body_len]).is_err() {
                return Ok(offset); // torn record
            }
            let word = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap());
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
    pub fn commit(&mut self) -> Result<(), JournalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buffer)
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.buffer.clear();
        self.sync()
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        if self.fsync {
            self.file.sync_data().map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            journal: 1,
            client_id: "sub".into(),
            topic: "sensors/#".into(),
            count: 10,
        }
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
            let mut j = Journal::open(&path, &header(), false, &mut live).unwrap();
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
        let j = Journal::open(&path, &header(), false, &mut resumed).unwrap();
        assert_eq!(j.replayed, 5);
        assert_eq!(resumed.verdict(), live.verdict());
        assert_eq!(resumed.verdict().streams[0].device_id, "dev-7");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
    }

    #[test]
    fn a_journal_of_another_run_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        Journal::open(&path, &header(), false, &mut Verifier::new(10)).unwrap();
        let other = Header {
            count: 11,
            ..header()
        };
        let err = Journal::open(&path, &other, false, &mut Verifier::new(11))
            .err()
            .unwrap();
        assert!(err.to_string().contains("--count"), "{err}");
        std::fs::write(&path, b"garbage\n").unwrap();
        let err = Journal::open(&path, &header(), false, &mut Verifier::new(10))
            .err()
            .unwrap();
        assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");
    }
}
