//! One broker per storage directory: an exclusive `flock` on `DIR/lock`, which holds the
//! process id of its holder for the error message. The kernel releases a `flock` when its
//! process ends, however it ends, so a lock left by a killed broker never blocks a restart;
//! a live broker's does.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

use super::StorageError;

/// Held for as long as the broker runs; the lock goes with the file.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the directory's lock, or says which process holds it.
pub(crate) fn lock(dir: &Path) -> Result<DirLock, StorageError> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io(&path, "open", e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(StorageError::Locked {
                dir: dir.display().to_string(),
                holder: holder.trim().to_owned(),
            });
        }
        Err(e) => return Err(StorageError::io(&path, "lock", e.into())),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| StorageError::io(&path, "write", e))?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TestDir;

    #[test]
    fn a_held_lock_refuses_a_second_taker_and_a_dropped_one_does_not() {
        let dir = TestDir::new("lock");
        let first = lock(&dir).unwrap();
        let err = lock(&dir).unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        lock(&dir).unwrap();
    }
}
