//! The write-ahead log: segment files `DIR/wal/<first record id, 20 digits>.wal`, appended to
//! by one writer thread that commits in groups. Appending (under the broker's flow lock, so
//! in ingest order) only encodes a record into a shared buffer; the thread takes the whole
//! buffer at once, writes it with one `write`, syncs as `fsync` says, and then publishes the
//! id below which every record is committed. Connections send their PUBACKs once that id
//! passes their publishes' records.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::entry::Entry;
use super::record::{file_header, frame};
use super::{FsyncMode, StorageError};

/// The magic of a segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"MQTTWAL\0";

/// A segment is closed once it holds this many bytes (smaller if `max_bytes` is small).
const SEGMENT_BYTES: u64 = 64 << 20;

/// The file of the segment whose first record id is `first`.
pub(crate) fn segment_path(wal_dir: &Path, first: u64) -> PathBuf {
    wal_dir.join(format!("{first:020}.wal"))
}

/// The segments in `wal_dir`, by first record id.
pub(crate) fn list_segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let entries = std::fs::read_dir(wal_dir).map_err(|e| StorageError::io(wal_dir, "read", e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(wal_dir, "read", e))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((first, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// What appenders and the writer thread share.
struct Pending {
    buf: Vec<u8>,
    /// The id the next record gets.
    next_id: u64,
    /// Segments holding only records below this may go.
    delete_below: u64,
    stop: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    work: Condvar,
    /// Every record below this id is committed (written, and synced for `always`).
    committed: watch::Sender<u64>,
    /// Cancelled when the log cannot be written: the broker cannot acknowledge anything.
    failed: CancellationToken,
    /// Bytes of the log's segments on disk (`mqtt_stored_bytes`).
    stored_bytes: AtomicU64,
}

/// The log's appending end.
pub(crate) struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").finish_non_exhaustive()
    }
}

/// How the writer thread writes.
pub(crate) struct WriterConfig {
    pub wal_dir: PathBuf,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    pub max_bytes: u64,
    /// Segments already there (recovered), oldest first, with their sizes.
    pub segments: Vec<(u64, PathBuf, u64)>,
}

impl Wal {
    /// Starts a new segment at `next_id` and the writer thread.
    pub(crate) fn start(config: WriterConfig, next_id: u64) -> Result<Wal, StorageError> {
        let (committed, _) = watch::channel(next_id);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(1 << 20),
                next_id,
                delete_below: 0,
                stop: false,
            }),
            work: Condvar::new(),
            committed,
            failed: CancellationToken::new(),
            stored_bytes: AtomicU64::new(0),
        });
        let segment_bytes = SEGMENT_BYTES.min(config.max_bytes / 4).max(1 << 20);
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            segments: config
                .segments
                .into_iter()
                .map(|(first, path, bytes)| Segment { first, path, bytes })
                .collect(),
            active: None,
            wal_dir: config.wal_dir,
            fsync: config.fsync,
            interval: config.fsync_interval,
            max_bytes: config.max_bytes,
            segment_bytes,
            written_to: next_id,
            dirty: false,
            synced_at: Instant::now(),
            over_budget_warned: false,
        };
        writer.open_segment(next_id)?;
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::Thread(e.to_string()))?;
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one entry; returns its record id.
    pub(crate) fn append(&self, entry: &Entry<'_>) -> u64 {
        let mut pending = self.lock();
        let id = pending.next_id;
        pending.next_id += 1;
        let was_empty = pending.buf.is_empty();
        frame(&mut pending.buf, |body| entry.encode(id, body));
        drop(pending);
        if was_empty {
            self.shared.work.notify_one();
        }
        id
    }

    /// Bytes of the log's segments on disk, as of the writer's last batch.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.shared.stored_bytes.load(Ordering::Relaxed)
    }

    /// The id the next record will get.
    pub(crate) fn next_id(&self) -> u64 {
        self.lock().next_id
    }

    /// Every record below the returned id is committed.
    pub(crate) fn committed(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// Follows [`Wal::committed`].
    pub(crate) fn watch_committed(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// Cancelled when the log can no longer be written.
    pub(crate) fn failed(&self) -> CancellationToken {
        self.shared.failed.clone()
    }

    /// Segments holding only records below `id` are no longer needed.
    pub(crate) fn delete_below(&self, id: u64) {
        let mut pending = self.lock();
        pending.delete_below = pending.delete_below.max(id);
        drop(pending);
        self.shared.work.notify_one();
    }

    /// Writes and syncs what is pending, then stops the writer thread.
    pub(crate) fn close(&self) {
        self.lock().stop = true;
        self.shared.work.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    /// Every segment on disk, oldest first; the last is `active`.
    segments: VecDeque<Segment>,
    active: Option<File>,
    wal_dir: PathBuf,
    fsync: FsyncMode,
    interval: Duration,
    max_bytes: u64,
    segment_bytes: u64,
    /// Records below this id are written.
    written_to: u64,
    /// Written since the last sync.
    dirty: bool,
    synced_at: Instant,
    over_budget_warned: bool,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(1 << 20);
        loop {
            let (upto, delete_below, stop) = {
                let mut pending = self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                while pending.buf.is_empty() && !pending.stop && !self.sync_due() {
                    let wait = self.until_sync_due();
                    pending = self
                        .shared
                        .work
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if pending.delete_below > 0 && pending.buf.is_empty() {
                        break;
                    }
                }
                std::mem::swap(&mut pending.buf, &mut batch);
                let delete_below = std::mem::take(&mut pending.delete_below);
                (pending.next_id, delete_below, pending.stop)
            };
            if let Err(e) = self.write(&batch, upto, stop) {
                error!(
                    "cannot write the write-ahead log in {}: {e}; the broker stops, as it can \
                     acknowledge nothing more (free disk space or fix the directory, then \
                     restart it)",
                    self.wal_dir.display()
                );
                self.shared.failed.cancel();
                return;
            }
            batch.clear();
            if batch.capacity() > 8 << 20 {
                batch.shrink_to(1 << 20);
            }
            self.shared.committed.send_replace(upto);
            if delete_below > 0 {
                self.delete(delete_below);
            }
            self.keep_budget();
            let stored = self.segments.iter().map(|s| s.bytes).sum();
            self.shared.stored_bytes.store(stored, Ordering::Relaxed);
            if stop {
                return;
            }
        }
    }

    fn sync_due(&self) -> bool {
        self.dirty && self.fsync == FsyncMode::Interval && self.synced_at.elapsed() >= self.interval
    }

    fn until_sync_due(&self) -> Duration {
        if self.dirty && self.fsync == FsyncMode::Interval {
            self.interval.saturating_sub(self.synced_at.elapsed())
        } else {
            Duration::from_secs(1)
        }
    }

    /// Writes one batch (records `written_to..upto`) and syncs as configured.
    fn write(&mut self, batch: &[u8], upto: u64, stop: bool) -> std::io::Result<()> {
        if !batch.is_empty() {
            let full = self
                .segments
                .back()
                .is_some_and(|s| s.bytes >= self.segment_bytes);
            if full {
                self.sync()?;
                self.open_segment(self.written_to)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            if let Some(file) = self.active.as_mut() {
                file.write_all(batch)?;
            }
            if let Some(segment) = self.segments.back_mut() {
                segment.bytes += batch.len() as u64;
            }
            self.written_to = upto;
            self.dirty = true;
        }
        let sync = match self.fsync {
            FsyncMode::Always => true,
            FsyncMode::Interval => self.synced_at.elapsed() >= self.interval || stop,
            FsyncMode::Never => stop,
        };
        if sync && self.dirty {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(file) = &self.active {
            rustix::fs::fdatasync(file)?;
        }
        self.dirty = false;
        self.synced_at = Instant::now();
        Ok(())
    }

    /// Starts a segment whose first record will be `first`.
    fn open_segment(&mut self, first: u64) -> Result<(), StorageError> {
        let path = segment_path(&self.wal_dir, first);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, "create", e))?;
        file.write_all(&file_header(SEGMENT_MAGIC))
            .map_err(|e| StorageError::io(&path, "write", e))?;
        if self.fsync != FsyncMode::Never {
            super::sync_dir(&self.wal_dir)?;
        }
        let bytes = super::record::FILE_HEADER_LEN as u64;
        self.segments.push_back(Segment { first, path, bytes });
        self.active = Some(file);
        Ok(())
    }

    /// Deletes the segments (never the active one) that hold only records below `below`.
    fn delete(&mut self, below: u64) {
        while self.segments.len() > 1 && self.segments[1].first <= below {
            if let Some(segment) = self.segments.pop_front() {
                if let Err(e) = std::fs::remove_file(&segment.path) {
                    warn!(file = %segment.path.display(), "cannot delete a read segment: {e}");
                }
            }
        }
    }

    /// Keeps the log within `max_bytes`: beyond it the oldest segments go, read or not.
    fn keep_budget(&mut self) {
        let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        if total <= self.max_bytes {
            self.over_budget_warned = false;
            return;
        }
        if self.segments.len() < 2 {
            return;
        }
        if let Some(segment) = self.segments.pop_front() {
            let last = self.segments.front().map_or(segment.first, |s| s.first);
            warn!(
                file = %segment.path.display(),
                first_record = segment.first,
                last_record = last.saturating_sub(1),
                "the write-ahead log exceeds [storage] max_bytes ({} bytes): deleting its \
                 oldest segment; records in it a persistent session had not acknowledged will \
                 not be replayed after a restart",
                self.max_bytes
            );
            let _ = std::fs::remove_file(&segment.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TestDir;

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn appends_are_committed_in_segments_and_read_segments_are_deleted() {
        let dir = TestDir::new("wal");
        let config = WriterConfig {
            wal_dir: dir.to_path_buf(),
            fsync: FsyncMode::Never,
            fsync_interval: Duration::from_millis(100),
            // Segments of 1 MiB (a quarter of it, at least 1 MiB).
            max_bytes: 4 << 20,
            segments: Vec::new(),
        };
        let wal = Wal::start(config, 1).unwrap();
        let payload = [7u8; 100];
        let mut last = 0;
        for _ in 0..20_000 {
            last = wal.append(&Entry::Publish {
                qos: 1,
                retain: false,
                routed: true,
                topic: b"t",
                payload: &payload,
            });
        }
        assert_eq!(last, 20_000);
        wait_for("the commit", || wal.committed() == 20_001);
        // Segments roll only between batches: a new one starts once the last is full.
        for _ in 0..3 {
            wal.append(&Entry::Forget { client: "c" });
            let next = wal.next_id();
            wait_for("the commit", || wal.committed() == next);
        }
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() >= 2, "{segments:?}");
        wal.delete_below(wal.next_id());
        wait_for("the deletion", || list_segments(&dir).unwrap().len() == 1);
        wal.close();
    }
}
