//! Storage: what the broker has acknowledged survives its own crash. With `[storage] dir`
//! (`--data-dir`) set, every QoS 1/2 PUBLISH the broker accepts, and every retained one, is
//! appended to a write-ahead log before its PUBACK goes out; persistent sessions and retained
//! messages are checkpointed beside it. On start the broker restores them and feeds back
//! every stored reading a persistent session had not acknowledged, in its original order.
//!
//! # Files
//! `DIR/lock` (an exclusive `flock`: one broker per directory, released by the kernel when
//! its process dies, see `lock`), `DIR/wal/<first record id>.wal` (the log's segments, see
//! `wal`) and `DIR/state` (the checkpoint, see `state`). Every file starts with a 12-byte
//! header, an 8-byte magic and the format version (a u32, now 1; another version is a clear
//! error), followed by records framed as `len, !len, crc32(body), body` (see `record`). The
//! log's record bodies start with the record id, a u64 that grows by one per record.
//!
//! # The hook: one ingest order
//! Every publish enters rumqttd's router through the broker's one ingest link (see
//! `ingest`), under the flow lock, and the broker sends PUBACKs itself. Under that same lock
//! the connection appends the publish to the log, so the log's order is the router's order:
//! in each filter's router log, offsets grow with record ids. Flow control mirrors each router
//! log (see `flow`) and keeps, for the offsets its readers may still need, the record id at
//! each offset. A persistent session's position in a log (the first message it has not
//! acknowledged, which the broker already follows for flow control) therefore maps to a
//! record id, `ack_from`: every record of that filter below it is acknowledged.
//!
//! # Group commit
//! Appending only encodes the record into a shared buffer. One writer thread takes whatever
//! has gathered, writes it with one `write`, syncs according to `fsync`, and then publishes
//! the id below which everything is committed; each connection holds its PUBACKs (and
//! PUBRECs) until that id passes its publishes' records, and keeps reading meanwhile. So a
//! busy broker writes thousands of readings per `write` and per `fsync`.
//! - `always`: a PUBACK waits for the `fdatasync` of its batch. Survives a process crash and
//!   a power loss.
//! - `interval` (default): a PUBACK waits for the `write` (the kernel holds the data); the log
//!   is synced every `fsync_interval_ms`. Survives a process crash (`kill -9`); a power loss
//!   loses at most the last interval.
//! - `never`: as `interval`, but the broker never syncs (the kernel writes back when it
//!   pleases, typically within 30 s). Survives a process crash only.
//!
//! # Persistent sessions and retained messages
//! Subscribing, unsubscribing and the end of a persistent session (a clean session taking its
//! client id) are log records too, in the same order, so a SUBSCRIBE is on disk before any
//! publish acknowledged after it. A retained publish is a log record with its retain flag.
//! Once a second the broker checkpoints `state`: the record id it covers, the retained
//! messages and each persistent session's subscriptions with QoS and `ack_from`. The
//! checkpoint is taken under the flow lock (a consistent cut of the log order) and written
//! elsewhere. Acknowledgements are not logged one by one: after a crash a session resumes at
//! its last checkpointed `ack_from`, so it may get up to a second's worth of readings twice
//! (legal at QoS 1, and counted as duplicates by our subscriber), never fewer.
//!
//! # Recovery
//! On start: take the lock, read the checkpoint, scan every segment (cutting off a torn
//! tail, refusing damage), and apply the log records after the checkpoint (subscriptions,
//! retained messages). The router keeps sessions in memory only, so each persistent session
//! is rebuilt from outside it: a link with `clean_session(false)`, a SUBSCRIBE built by hand
//! with each filter's QoS, a DISCONNECT. Each session is then owed every stored reading from
//! its `ack_from` on: the router's new logs do not have them, so the session gets them from
//! disk when it returns (see "Offline sessions"), in record order, before anything the
//! router forwards it. Clients may connect as soon as the log is read. One INFO line says
//! what was restored and how long it took. QoS 2 exchanges in flight are not stored: after a
//! restart a publisher's PUBREL for an unknown packet id is simply completed.
//!
//! # Offline sessions
//! An offline persistent session holds no publishers when storage is on: flow control keeps
//! the record id it is owed from, and when it returns its connection reads the records the
//! router no longer holds for it back from the log and sends them before the router's
//! forwards (see `connection::catch_up`). The checkpoint keeps that id until the client has
//! acknowledged them all.
//!
//! # Bad files
//! A torn tail (a crash mid-write: a partial header, a body running past the end, zeros, or
//! a final record failing its checksum) is cut off with a WARN and the broker starts. Damage
//! with data behind it (a checksum or length that does not hold) is a one-line error naming
//! the file and offset, and the broker does not start unless given `--repair`, which skips
//! damaged records (counted in the restore line) and rewrites the file without them. A record
//! that fails its check is never replayed.
//!
//! # Bounded disk
//! A segment is deleted once a checkpoint is on disk that covers it and every persistent
//! session's `ack_from` is past it. Beyond `max_bytes` the oldest segments go anyway, with a
//! WARN (an offline session that never returns must not fill the disk).

mod entry;
mod lock;
mod record;
mod recover;
mod state;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::config::FsyncMode;
pub(crate) use entry::Subscription;
pub(crate) use recover::{Recovered, Replay, Stored, Wanted};
pub(crate) use state::{Book, Checkpoint};

use entry::Entry;
use record::FILE_HEADER_LEN;
use wal::Wal;

/// How storage is set up, from `[storage]` and the command line.
#[derive(Debug, Clone)]
pub(crate) struct StorageConfig {
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    pub max_bytes: u64,
    /// Skip damaged records instead of refusing to start.
    pub repair: bool,
}

/// Why storage could not be opened or written; each one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {action} {path}: {error}")]
    Io {
        path: String,
        action: &'static str,
        error: std::io::Error,
    },
    #[error(
        "the storage directory {dir} is in use by another broker (process {holder}); stop it, \
         or give this one another --data-dir"
    )]
    Locked { dir: String, holder: String },
    #[error(
        "{path}: damaged record at offset {offset} (checksum or length does not match); the \
         broker does not start on damaged data: run it once with --repair to skip damaged \
         records (they are counted), or move the directory away"
    )]
    Damaged { path: String, offset: u64 },
    #[error(
        "{path}: written in storage format version {found}, this broker reads version {}; \
         use the broker that wrote it, or move the directory away",
        record::VERSION
    )]
    Version { path: String, found: u32 },
    #[error("{path}: not a file of this broker's storage (bad header); move it away")]
    Foreign { path: String },
    #[error("cannot start the write-ahead log's thread: {0}")]
    Thread(String),
}

impl StorageError {
    fn io(path: &Path, action: &'static str, error: std::io::Error) -> StorageError {
        StorageError::Io {
            path: path.display().to_string(),
            action,
            error,
        }
    }

    fn damaged(path: &Path, offset: u64) -> StorageError {
        StorageError::Damaged {
            path: path.display().to_string(),
            offset,
        }
    }
}

/// Makes a directory's entries (new, renamed files) durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, "sync", e))
}

/// The broker's storage, open: the log's appending end and the persistent sessions' book.
#[derive(Debug)]
pub(crate) struct Storage {
    dir: PathBuf,
    wal: Wal,
    /// Persistent sessions' subscriptions, as the log says; `ack_from` as of the last
    /// checkpoint.
    book: Mutex<Book>,
    /// One checkpoint written at a time (the periodic one and the last one may meet), never
    /// an older one after a newer: the `next_id` of the last one written.
    writing: Mutex<u64>,
    _lock: lock::DirLock,
}

impl Storage {
    /// Opens (creating if needed) the directory, recovers what it holds, and starts the log.
    pub(crate) fn open(config: &StorageConfig) -> Result<(Storage, Recovered), StorageError> {
        let wal_dir = config.dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(|e| StorageError::io(&wal_dir, "create", e))?;
        let lock = lock::lock(&config.dir)?;
        let (recovered, segments) = recover::recover(&config.dir, &wal_dir, config.repair)?;
        let wal = Wal::start(
            wal::WriterConfig {
                wal_dir,
                fsync: config.fsync,
                fsync_interval: config.fsync_interval,
                max_bytes: config.max_bytes,
                segments,
            },
            recovered.next_id,
        )?;
        let storage = Storage {
            dir: config.dir.clone(),
            wal,
            book: Mutex::new(recovered.sessions.clone()),
            writing: Mutex::new(0),
            _lock: lock,
        };
        Ok((storage, recovered))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an accepted publish; returns its record id. Call under the flow lock, in the
    /// order the router gets the publishes.
    pub(crate) fn publish(
        &self,
        topic: &[u8],
        payload: &[u8],
        qos: u8,
        retain: bool,
        routed: bool,
    ) -> u64 {
        self.wal.append(&Entry::Publish {
            qos,
            retain,
            routed,
            topic,
            payload,
        })
    }

    /// The id the next record gets: what an offset without a record of its own (a QoS 0
    /// publish) maps to.
    pub(crate) fn next_id(&self) -> u64 {
        self.wal.next_id()
    }

    /// Bytes the write-ahead log takes on disk now (checkpoints not included).
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.wal.stored_bytes()
    }

    /// Every record below the returned id is committed.
    pub(crate) fn committed(&self) -> u64 {
        self.wal.committed()
    }

    pub(crate) fn watch_committed(&self) -> watch::Receiver<u64> {
        self.wal.watch_committed()
    }

    /// Cancelled when the log can no longer be written.
    pub(crate) fn failed(&self) -> CancellationToken {
        self.wal.failed()
    }

    /// A persistent session subscribed to `filter`: it reads what comes after. Subscribing
    /// again to a filter it has changes only the QoS.
    pub(crate) fn subscribed(&self, client: &str, filter: &str, qos: u8) {
        let id = self.wal.append(&Entry::Subscribe {
            client,
            filter,
            qos,
        });
        state::book_subscribe(&mut self.book(), client, filter, qos, id);
    }

    /// A persistent session unsubscribed from `filter`.
    pub(crate) fn unsubscribed(&self, client: &str, filter: &str) {
        if state::book_unsubscribe(&mut self.book(), client, filter) {
            self.wal.append(&Entry::Unsubscribe { client, filter });
        }
    }

    /// The QoS of `client`'s persistent subscription to `filter`, if it has one.
    pub(crate) fn subscription_qos(&self, client: &str, filter: &str) -> Option<u8> {
        self.book().get(client)?.get(filter).map(|sub| sub.qos)
    }

    /// Reads back, on a thread of its own, the publishes `wanted` asks for, in record order.
    /// Every record below the largest `to` must be committed.
    pub(crate) fn read_back(&self, wanted: Vec<Wanted>) -> Replay {
        let from = wanted.iter().map(|w| w.from).min().unwrap_or(u64::MAX);
        let segments = match wal::list_segments(&self.dir.join("wal")) {
            Ok(segments) => segments,
            Err(e) => return recover::unreadable(e.to_string()),
        };
        // A segment holds the ids from its name up to the next one's.
        let mut paths = Vec::with_capacity(segments.len());
        for (i, (_, path)) in segments.iter().enumerate() {
            if segments.get(i + 1).is_none_or(|(next, _)| *next > from) {
                paths.push(path.clone());
            }
        }
        recover::read_publishes("wal-backlog", paths, wanted)
    }

    /// `client`'s persistent session ended (a clean session took the id).
    pub(crate) fn forget(&self, client: &str) {
        if self.book().remove(client).is_some() {
            self.wal.append(&Entry::Forget { client });
        }
    }

    /// Takes a checkpoint: call under the flow lock. `position` gives a subscription's
    /// first unacknowledged record id where flow control knows it (`u64::MAX`: everything
    /// so far).
    pub(crate) fn checkpoint(
        &self,
        retained: std::collections::BTreeMap<bytes::Bytes, (u8, bytes::Bytes)>,
        mut position: impl FnMut(&str, &str) -> Option<u64>,
    ) -> Checkpoint {
        let next_id = self.wal.next_id();
        let mut book = self.book();
        for (client, subs) in book.iter_mut() {
            for (filter, sub) in subs.iter_mut() {
                if let Some(at) = position(client, filter) {
                    sub.ack_from = at.min(next_id);
                }
            }
        }
        Checkpoint {
            next_id,
            retained,
            sessions: book.clone(),
        }
    }

    /// Writes a checkpoint (blocking), then lets the log delete what it makes unneeded.
    pub(crate) fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StorageError> {
        let mut written = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if checkpoint.next_id < *written {
            return Ok(());
        }
        checkpoint.write(&self.dir)?;
        *written = checkpoint.next_id;
        let oldest_unacked = checkpoint
            .sessions
            .values()
            .flat_map(|subs| subs.values().map(|s| s.ack_from))
            .min()
            .unwrap_or(u64::MAX);
        self.wal
            .delete_below(oldest_unacked.min(checkpoint.next_id));
        Ok(())
    }

    /// Writes and syncs what is pending and stops the log's thread.
    pub(crate) fn close(&self) {
        self.wal.close();
    }
}

/// A scratch directory for one unit test's files, named for the test and this process:
/// emptied when made and removed when dropped, so a failed run leaves nothing behind.
#[cfg(test)]
pub(crate) struct TestDir(PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("mqtt-{name}-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
