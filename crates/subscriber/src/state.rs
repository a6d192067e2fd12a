//! The subscriber's state on disk (`--state PATH`), bounded by the size of the
//! verifier's bitmaps: a checkpoint of the whole verifier (`PATH.checkpoint`, roaring's
//! portable format inside JSON) and the journal of what arrived since (`PATH`, see
//! `journal`). Once the journal outgrows the checkpoint, a new checkpoint replaces the
//! old one and an empty journal replaces the old journal.
//!
//! Both replacements are atomic (write a temporary file, fsync it, rename it over the
//! old one, fsync the directory), and the journal's generation says which checkpoint its
//! records follow, so a crash at any point of a checkpoint resumes exactly:
//!
//! | crash | on disk | resume |
//! |---|---|---|
//! | before the new checkpoint is renamed | old checkpoint (covers G-1), journal G | replay journal G |
//! | after it, before the journal is replaced | new checkpoint (covers G), journal G | skip journal G (covered), start G+1 |
//! | after the journal is replaced | new checkpoint (covers G), empty journal G+1 | nothing to replay |

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtt_protocol::verify::{Observation, SnapshotError, Verifier, VerifierSnapshot};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::journal::{read_header, Header, Journal};

/// Why the state file could not be used or kept.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not a subscriber's state ({reason}); pass a new --state path")]
    NotState { path: PathBuf, reason: String },
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

impl StateError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> StateError {
        StateError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Where the checkpoint of the state at `path` lives.
pub fn checkpoint_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

/// Replaces `path` with a file holding `contents`, atomically: written to `path.tmp`,
/// synced, then (after `before_rename`) renamed over `path`, and the directory synced.
/// Returns the new file, open for writing after `contents`.
pub fn replace_file(
    path: &Path,
    contents: &[u8],
    before_rename: impl FnOnce(),
) -> std::io::Result<File> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    before_rename();
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The checkpoint file: the verifier as it was after journal generation
/// `header.generation`.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    header: Header,
    verifier: VerifierSnapshot,
}

/// A point inside a checkpoint where a test can have the subscriber pause (and kill it
/// there): `--checkpoint-pause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The new checkpoint is written and synced, not yet renamed into place.
    CheckpointWritten,
    /// The new checkpoint is in place; the old journal still is too.
    CheckpointRenamed,
    /// The empty journal is written and synced, not yet renamed into place.
    JournalWritten,
}

/// When to checkpoint, and where to pause for a test.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Checkpoint once the journal holds this many bytes of records and more than twice
    /// the last checkpoint's size (so checkpoints cost O(1) per reading).
    pub min_journal_bytes: u64,
    pub pause: Option<Stage>,
}

/// How long a paused checkpoint waits for the test to kill it before going on.
const PAUSE: Duration = Duration::from_secs(60);

/// The state of one `--state` run: the journal being written and what a checkpoint needs.
pub struct State {
    path: PathBuf,
    journal: Journal,
    fsync: bool,
    policy: Policy,
    last_checkpoint_len: u64,
    /// Arrivals on record when the run started (checkpoint and journal together).
    pub resumed: u64,
}

impl State {
    /// Opens (or creates) the state at `path` for `header`'s run and returns it with the
    /// verifier it holds.
    pub fn open(
        path: &Path,
        header: &Header,
        fsync: bool,
        policy: Policy,
    ) -> Result<(State, Verifier), StateError> {
        let checkpoint_path = checkpoint_path(path);
        let (mut verifier, covered, last_checkpoint_len) = match std::fs::read(&checkpoint_path) {
            Ok(bytes) => {
                let bad = |reason: String| StateError::NotState {
                    path: checkpoint_path.clone(),
                    reason,
                };
                let checkpoint: Checkpoint =
                    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                header.check(&checkpoint.header, &checkpoint_path)?;
                let verifier = Verifier::restore(&checkpoint.verifier)
                    .map_err(|e: SnapshotError| bad(e.to_string()))?;
                (verifier, checkpoint.header.generation, bytes.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Verifier::new(header.count), 0, 0)
            }
            Err(source) => return Err(StateError::io(&checkpoint_path, source)),
        };
        let journal = Journal::open(path, header, covered, fsync, &mut verifier)?;
        let state = State {
            path: path.to_owned(),
            journal,
            fsync,
            policy,
            last_checkpoint_len,
            resumed: verifier.received(),
        };
        Ok((state, verifier))
    }

    /// Records one arrival (buffered until [`Self::commit`]).
    pub fn record(&mut self, observation: &Observation<'_>) {
        self.journal.append(observation);
    }

    /// Writes what was recorded; then, if the journal has outgrown the last checkpoint,
    /// checkpoints `verifier`, which must hold exactly what was recorded.
    pub fn commit(&mut self, verifier: &Verifier) -> Result<(), StateError> {
        self.journal.commit()?;
        let due = self
            .policy
            .min_journal_bytes
            .max(2 * self.last_checkpoint_len);
        if self.journal.records_len() >= due {
            self.checkpoint(verifier)?;
        }
        Ok(())
    }

    /// Writes what was recorded and, if the journal holds anything, checkpoints: a
    /// finished run leaves a checkpoint and an empty journal.
    pub fn finish(&mut self, verifier: &Verifier) -> Result<(), StateError> {
        self.journal.commit()?;
        if self.journal.records_len() > 0 {
            self.checkpoint(verifier)?;
        }
        Ok(())
    }

    /// Replaces the checkpoint with `verifier` and the journal with an empty one of the
    /// next generation (see the module's table for what a crash in between leaves).
    fn checkpoint(&mut self, verifier: &Verifier) -> Result<(), StateError> {
        let header = self.journal.header().clone();
        let checkpoint_path = checkpoint_path(&self.path);
        let checkpoint = Checkpoint {
            header: header.clone(),
            verifier: verifier.snapshot(),
        };
        let bytes = serde_json::to_vec(&checkpoint).map_err(std::io::Error::other);
        let pause = self.policy.pause;
        bytes
            .and_then(|bytes| {
                self.last_checkpoint_len = bytes.len() as u64;
                replace_file(&checkpoint_path, &bytes, || {
                    pause_at(pause, Stage::CheckpointWritten)
                })
            })
            .map_err(|source| StateError::io(&checkpoint_path, source))?;
        pause_at(pause, Stage::CheckpointRenamed);
        let next = Header {
            generation: header.generation + 1,
            ..header
        };
        self.journal = Journal::create(&self.path, next, self.fsync, || {
            pause_at(pause, Stage::JournalWritten)
        })?;
        Ok(())
    }
}

/// Stops the whole process at `stage` when `pause` names it, saying so on stderr, for a
/// test to kill it there; goes on after [`PAUSE`].
fn pause_at(pause: Option<Stage>, stage: Stage) {
    if pause == Some(stage) {
        eprintln!("checkpoint paused at {stage:?} (--checkpoint-pause)");
        std::thread::sleep(PAUSE);
    }
}

/// The client id an existing state was made with, so that a restart without
/// `--client-id` resumes the same broker session.
pub fn recorded_client_id(path: &Path) -> Result<Option<String>, StateError> {
    if let Some(header) = read_header(path)? {
        return Ok(Some(header.client_id));
    }
    let checkpoint_path = checkpoint_path(path);
    match std::fs::read(&checkpoint_path) {
        Ok(bytes) => serde_json::from_slice::<Checkpoint>(&bytes)
            .map(|c| Some(c.header.client_id))
            .map_err(|e| StateError::NotState {
                path: checkpoint_path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::io(&checkpoint_path, source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seq: u64) -> Observation<'static> {
        Observation::Reading {
            stream_id: 7,
            device_id: "dev-7".into(),
            seq,
            total: 1000,
        }
    }

    const POLICY: Policy = Policy {
        min_journal_bytes: 250,
        pause: None,
    };

    /// Feeds `seqs` through a state at `path`, committing after each, and returns the
    /// live verifier.
    fn run(path: &Path, seqs: impl IntoIterator<Item = u64>) -> Verifier {
        let header = Header::new("sub", "t/#", 1000, 1);
        let (mut state, mut live) = State::open(path, &header, false, POLICY).unwrap();
        for seq in seqs {
            live.observe(&reading(seq));
            state.record(&reading(seq));
            state.commit(&live).unwrap();
        }
        live
    }

    fn reopen(path: &Path) -> Verifier {
        let header = Header::new("sub", "t/#", 1000, 1);
        State::open(path, &header, false, POLICY).unwrap().1
    }

    #[test]
    fn checkpoints_keep_the_journal_short_and_the_verdict_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let live = run(&path, (1..=1000).chain(5..=9));
        let journal = std::fs::metadata(&path).unwrap().len();
        let checkpoint = std::fs::metadata(checkpoint_path(&path)).unwrap().len();
        // Far below the 25 bytes per arrival a journal alone would hold.
        assert!(
            journal < 2 * checkpoint + 200 && journal < 10_000,
            "journal of {journal} bytes beside a checkpoint of {checkpoint}"
        );
        assert_eq!(reopen(&path).verdict(), live.verdict());
        assert!(live.verdict().complete);
    }

    /// The three rows of the module's table, each made on disk as a crash would leave it.
    #[test]
    fn a_crash_at_any_point_of_a_checkpoint_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let live = run(&path, 1..=100);
        let journal = read_header(&path).unwrap().unwrap();
        assert!(
            std::fs::metadata(&path).unwrap().len() > 100,
            "records to replay"
        );
        // Killed before the new checkpoint was renamed: a half-written temporary file.
        std::fs::write(dir.path().join("state.checkpoint.tmp"), b"{\"half").unwrap();
        assert_eq!(reopen(&path).verdict(), live.verdict());
        // Killed after the rename, before the journal was replaced: the checkpoint covers
        // the journal's generation, whose records must not count twice.
        let checkpoint = Checkpoint {
            header: journal.clone(),
            verifier: live.snapshot(),
        };
        let bytes = serde_json::to_vec(&checkpoint).unwrap();
        replace_file(&checkpoint_path(&path), &bytes, || {}).unwrap();
        assert_eq!(reopen(&path).verdict(), live.verdict());
        let next = read_header(&path).unwrap().unwrap();
        assert_eq!(next.generation, journal.generation + 1);
        // Killed before the empty journal was renamed into place.
        std::fs::write(dir.path().join("state.tmp"), b"{\"half").unwrap();
        assert_eq!(reopen(&path).verdict(), live.verdict());
        assert_eq!(recorded_client_id(&path).unwrap().as_deref(), Some("sub"));
    }
}
