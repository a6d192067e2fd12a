//! Reading a storage directory back: the checkpoint, then every segment of the log (cutting
//! off a torn tail, refusing or, with `--repair`, skipping damage), giving the retained
//! messages and persistent sessions as of the last record; and, on a thread of its own for
//! a returning session, the stored publishes it is owed.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rumqttd::protocol::matches;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::entry::Entry;
use super::record::{check_file_header, file_header, frame, next_in, resync, Found, Next, Stream};
use super::state::{book_subscribe, book_unsubscribe, Book, Checkpoint};
use super::wal::{list_segments, SEGMENT_MAGIC};
use super::{StorageError, FILE_HEADER_LEN};

/// What a storage directory held.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The id the next record gets.
    pub next_id: u64,
    /// Retained messages: topic, QoS, payload.
    pub retained: Vec<(Bytes, u8, Bytes)>,
    pub sessions: Book,
    /// Records read from the log.
    pub records: u64,
    /// Bytes of torn tails cut off.
    pub torn_bytes: u64,
    /// Damaged records skipped (`--repair`).
    pub skipped: u64,
}

/// Segment files: first record id, path, size.
pub(crate) type SegmentFiles = Vec<(u64, PathBuf, u64)>;

/// Reads the directory; returns what it held and the segments the log goes on with (first
/// id, path, size).
pub(crate) fn recover(
    dir: &Path,
    wal_dir: &Path,
    repair: bool,
) -> Result<(Recovered, SegmentFiles), StorageError> {
    let (checkpoint, skipped) = Checkpoint::load(dir, repair)?;
    let Checkpoint {
        next_id: covered,
        retained,
        sessions,
    } = checkpoint;
    let mut state = Apply {
        covered,
        retained,
        sessions,
        last_id: None,
    };
    let mut recovered = Recovered {
        skipped,
        ..Recovered::default()
    };
    let listed = list_segments(wal_dir)?;
    let mut segments = Vec::with_capacity(listed.len());
    for (i, (first, path)) in listed.iter().enumerate() {
        let last = i + 1 == listed.len();
        let scan = scan_segment(path, last, repair, &mut |id, entry| state.apply(id, entry))?;
        recovered.records += scan.records;
        recovered.torn_bytes += scan.torn_bytes;
        recovered.skipped += scan.skipped;
        match scan.len {
            Some(len) => segments.push((*first, path.clone(), len)),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    recovered.next_id = state
        .covered
        .max(state.last_id.map_or(0, |id| id + 1))
        .max(1);
    // A segment that would start where the log goes on holds nothing: it is made anew.
    segments.retain(|(first, path, _)| {
        let keep = *first < recovered.next_id;
        if !keep {
            let _ = std::fs::remove_file(path);
        }
        keep
    });
    recovered.retained = state
        .retained
        .into_iter()
        .map(|(topic, (qos, payload))| (topic, qos, payload))
        .collect();
    recovered.sessions = state.sessions;
    Ok((recovered, segments))
}

/// The state being rebuilt from the log's records after the checkpoint.
struct Apply {
    covered: u64,
    retained: std::collections::BTreeMap<Bytes, (u8, Bytes)>,
    sessions: Book,
    last_id: Option<u64>,
}

impl Apply {
    fn apply(&mut self, id: u64, entry: Entry<'_>) {
        self.last_id = Some(self.last_id.map_or(id, |last| last.max(id)));
        if id < self.covered {
            return;
        }
        match entry {
            Entry::Publish {
                qos,
                retain: true,
                topic,
                payload,
                ..
            } => {
                let topic = Bytes::copy_from_slice(topic);
                if payload.is_empty() {
                    self.retained.remove(&topic);
                } else {
                    self.retained
                        .insert(topic, (qos, Bytes::copy_from_slice(payload)));
                }
            }
            Entry::Publish { .. } => {}
            Entry::Subscribe {
                client,
                filter,
                qos,
            } => book_subscribe(&mut self.sessions, client, filter, qos, id),
            Entry::Unsubscribe { client, filter } => {
                book_unsubscribe(&mut self.sessions, client, filter);
            }
            Entry::Forget { client } => {
                self.sessions.remove(client);
            }
        }
    }
}

/// What scanning one segment found.
struct Scan {
    records: u64,
    torn_bytes: u64,
    skipped: u64,
    /// Its length once fixed; `None`: nothing usable, deleted.
    len: Option<u64>,
}

fn scan_segment(
    path: &Path,
    last: bool,
    repair: bool,
    apply: &mut dyn FnMut(u64, Entry<'_>),
) -> Result<Scan, StorageError> {
    let mut file = File::open(path).map_err(|e| StorageError::io(path, "open", e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io(path, "read", e))?
        .len();
    let mut header = [0; FILE_HEADER_LEN];
    if len < FILE_HEADER_LEN as u64 {
        // Cut off while it was being created.
        if last || repair {
            warn!(file = %path.display(), "a log segment ends in a torn write before its header: deleted");
            return Ok(Scan {
                records: 0,
                torn_bytes: len,
                skipped: 0,
                len: None,
            });
        }
        return Err(StorageError::damaged(path, 0));
    }
    file.read_exact(&mut header)
        .map_err(|e| StorageError::io(path, "read", e))?;
    if let Some(refused) = check_file_header(&header, SEGMENT_MAGIC).refusal(path) {
        return Err(refused);
    }
    let mut stream = Stream::new(BufReader::with_capacity(1 << 20, file), len);
    let mut records = 0;
    let mut last_id = None;
    loop {
        let found = stream
            .next()
            .map_err(|e| StorageError::io(path, "read", e))?;
        let decoded = match found {
            Found::Record => Entry::decode(stream.body()).map(|(id, _)| id),
            _ => None,
        };
        match (found, decoded) {
            (Found::Record, Some(id)) => {
                if let Some((id, entry)) = Entry::decode(stream.body()) {
                    apply(id, entry);
                }
                last_id = Some(id);
                records += 1;
            }
            (Found::End, _) => {
                return Ok(Scan {
                    records,
                    torn_bytes: 0,
                    skipped: 0,
                    len: Some(len),
                })
            }
            (Found::TornTail, _) if last || repair => {
                let at = stream.pos;
                warn!(
                    file = %path.display(),
                    offset = at,
                    "the write-ahead log ends in a torn write (a crash mid-write): cut off {} \
                     bytes at offset {at}",
                    len - at
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| StorageError::io(path, "open", e))?;
                file.set_len(at)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| StorageError::io(path, "truncate", e))?;
                return Ok(Scan {
                    records,
                    torn_bytes: len - at,
                    skipped: 0,
                    len: Some(at),
                });
            }
            _ if repair => {
                let (more, skipped, new_len) = repair_segment(path, last_id, apply)?;
                return Ok(Scan {
                    records: records + more,
                    torn_bytes: 0,
                    skipped,
                    len: Some(new_len),
                });
            }
            _ => return Err(StorageError::damaged(path, stream.pos)),
        }
    }
}

/// Rewrites a damaged segment with its valid records only; applies those after `after`.
/// Returns the records applied, the damaged ones skipped, and the new length.
fn repair_segment(
    path: &Path,
    after: Option<u64>,
    apply: &mut dyn FnMut(u64, Entry<'_>),
) -> Result<(u64, u64, u64), StorageError> {
    let data = std::fs::read(path).map_err(|e| StorageError::io(path, "read", e))?;
    let mut out = file_header(SEGMENT_MAGIC).to_vec();
    let (mut records, mut skipped) = (0, 0);
    let mut pos = FILE_HEADER_LEN;
    loop {
        let at = pos;
        match next_in(&data, &mut pos) {
            Next::Record(body) => match Entry::decode(body) {
                Some((id, entry)) => {
                    frame(&mut out, |b| b.extend_from_slice(body));
                    if after.is_none_or(|after| id > after) {
                        apply(id, entry);
                        records += 1;
                    }
                }
                None => {
                    error!(file = %path.display(), offset = at, "skipped a record that does not parse (--repair)");
                    skipped += 1;
                }
            },
            Next::End => break,
            Next::TornTail => {
                warn!(file = %path.display(), offset = at, "cut off a torn tail (--repair)");
                break;
            }
            Next::Damaged => {
                error!(file = %path.display(), offset = at, "skipped a damaged record (--repair)");
                skipped += 1;
                match resync(&data, at) {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    let tmp = path.with_extension("repair");
    let mut file = File::create(&tmp).map_err(|e| StorageError::io(&tmp, "create", e))?;
    file.write_all(&out)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io(&tmp, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, "replace", e))?;
    Ok((records, skipped, out.len() as u64))
}

/// One stored publish fed back into the router.
#[derive(Debug)]
pub(crate) struct Stored {
    pub id: u64,
    /// The QoS it was published at.
    pub qos: u8,
    pub topic: Bytes,
    pub payload: Bytes,
}

/// What a thread reading publishes back sends, in record order: batches, or why it could
/// not read on (then nothing more comes).
pub(crate) type Replay = mpsc::Receiver<Result<Vec<Stored>, String>>;

/// A [`Replay`] that only says why nothing can be read back.
pub(crate) fn unreadable(why: String) -> Replay {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Err(why));
    rx
}

/// The publishes to `filter` with record ids in `from..to`.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub filter: String,
    pub from: u64,
    pub to: u64,
}

/// Starts a thread (named `name`) that reads `segments` and sends every routed publish that
/// one of `wanted` asks for, in batches, in record order.
pub(crate) fn read_publishes(name: &str, segments: Vec<PathBuf>, wanted: Vec<Wanted>) -> Replay {
    let (tx, rx) = mpsc::channel(4);
    let thread_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let tx = thread_tx;
            if wanted.is_empty() {
                return;
            }
            let mut batch = Vec::with_capacity(1024);
            for path in segments {
                match replay_segment(&path, &wanted, &mut batch, &tx) {
                    Ok(true) => {}
                    Ok(false) => break,
                    // Deleted since it was listed: beyond `max_bytes` (said when deleted).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(format!("{}: {e}", path.display())));
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(batch));
            }
        });
    if let Err(e) = spawned {
        let _ = tx.try_send(Err(format!("cannot start a thread to read the log: {e}")));
    }
    rx
}

/// Reads one segment; returns whether later segments may hold more that is wanted.
fn replay_segment(
    path: &Path,
    wanted: &[Wanted],
    batch: &mut Vec<Stored>,
    tx: &mpsc::Sender<Result<Vec<Stored>, String>>,
) -> std::io::Result<bool> {
    let from = wanted.iter().map(|w| w.from).min().unwrap_or(u64::MAX);
    let to = wanted.iter().map(|w| w.to).max().unwrap_or(0);
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0; FILE_HEADER_LEN];
    file.read_exact(&mut header)?;
    let mut stream = Stream::new(BufReader::with_capacity(1 << 20, file), len);
    loop {
        match stream.next()? {
            Found::Record => {}
            Found::End => return Ok(true),
            // Read while the broker runs, the segment being written may end in a record
            // still on its way: past what is wanted (everything wanted is committed).
            Found::TornTail if to != u64::MAX => return Ok(true),
            Found::TornTail | Found::Damaged => {
                error!(file = %path.display(), offset = stream.pos, "a record fails its check on replay: the rest of this segment is not replayed");
                return Ok(true);
            }
        }
        let Some((
            id,
            Entry::Publish {
                qos,
                topic,
                payload,
                routed: true,
                ..
            },
        )) = Entry::decode(stream.body())
        else {
            continue;
        };
        if id >= to {
            return Ok(false);
        }
        if id < from {
            continue;
        }
        let Ok(name) = std::str::from_utf8(topic) else {
            continue;
        };
        if !wanted
            .iter()
            .any(|w| (w.from..w.to).contains(&id) && matches(name, &w.filter))
        {
            continue;
        }
        let whole = Bytes::copy_from_slice(stream.body());
        // The topic and payload as slices of one copy of the body.
        let topic_at = whole.len() - payload.len() - topic.len();
        batch.push(Stored {
            id,
            qos,
            topic: whole.slice(topic_at..topic_at + topic.len()),
            payload: whole.slice(whole.len() - payload.len()..),
        });
        if batch.len() >= 1024 {
            let full = std::mem::replace(batch, Vec::with_capacity(1024));
            if tx.blocking_send(Ok(full)).is_err() {
                return Ok(false);
            }
        }
    }
}
