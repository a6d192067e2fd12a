//! The framing every file in the storage directory shares: a file header (magic and format
//! version), then records, each `len: u32 LE`, `!len: u32 LE`, `crc32(body): u32 LE`, `body`.
//! The length is written twice so that a damaged length is told apart from a record cut off
//! by a crash; the checksum (CRC-32, `crc32fast`) covers the body.
//!
//! Reading classifies what follows each record: another whole record, the end of the file, a
//! torn tail (a write the crash cut short: a partial header, a body running past the end of
//! the file, zeros, or a last record whose checksum fails) or damage (anything else: a
//! checksum or length that fails with more data behind it).

use std::io::{self, Read};
use std::path::Path;

use super::StorageError;

/// The format version this broker writes and reads.
pub(crate) const VERSION: u32 = 1;

/// Magic + version.
pub(crate) const FILE_HEADER_LEN: usize = 12;

/// `len`, `!len`, `crc`.
pub(crate) const FRAME_HEADER_LEN: usize = 12;

/// No record is larger: MQTT's largest packet plus room.
pub(crate) const MAX_BODY: usize = 300 << 20;

/// The header that starts a file of kind `magic`.
pub(crate) fn file_header(magic: &[u8; 8]) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0; FILE_HEADER_LEN];
    header[..8].copy_from_slice(magic);
    header[8..].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// What a file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    Ours,
    /// Our kind of file, another format version.
    Version(u32),
    /// Not our kind of file (or shorter than a header).
    Foreign,
}

impl Header {
    /// Why the file at `path` with this header cannot be read, `None` for one of ours: the
    /// same error for a log segment and a state file.
    pub(crate) fn refusal(self, path: &Path) -> Option<StorageError> {
        let path = path.display().to_string();
        match self {
            Header::Ours => None,
            Header::Version(found) => Some(StorageError::Version { path, found }),
            Header::Foreign => Some(StorageError::Foreign { path }),
        }
    }
}

pub(crate) fn check_file_header(bytes: &[u8], magic: &[u8; 8]) -> Header {
    if bytes.len() < FILE_HEADER_LEN || &bytes[..8] != magic {
        return Header::Foreign;
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version == VERSION {
        Header::Ours
    } else {
        Header::Version(version)
    }
}

/// Appends one framed record to `buf`; `body` writes the body.
pub(crate) fn frame(buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    body(buf);
    let len = (buf.len() - at - FRAME_HEADER_LEN) as u32;
    let crc = crc32fast::hash(&buf[at + FRAME_HEADER_LEN..]);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&(!len).to_le_bytes());
    buf[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
}

/// The body length a frame header announces, if its two copies agree.
fn frame_len(header: &[u8]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let not = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    (len == !not && (len as usize) <= MAX_BODY).then_some((len as usize, crc))
}

/// What comes next in a file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<'a> {
    Record(&'a [u8]),
    End,
    /// A crash cut the file short here: what follows is cut off.
    TornTail,
    /// Damage here, with more data behind it.
    Damaged,
}

/// Reads the records of a file held in memory (the small state file, and a segment under
/// repair). `pos` starts after the file header and moves past each record read.
pub(crate) fn next_in<'a>(data: &'a [u8], pos: &mut usize) -> Next<'a> {
    let rest = &data[*pos..];
    if rest.is_empty() {
        return Next::End;
    }
    if rest.len() < FRAME_HEADER_LEN || rest.iter().all(|&b| b == 0) {
        return Next::TornTail;
    }
    let Some((len, crc)) = frame_len(rest) else {
        return Next::Damaged;
    };
    let end = FRAME_HEADER_LEN + len;
    if end > rest.len() {
        return Next::TornTail;
    }
    let body = &rest[FRAME_HEADER_LEN..end];
    if crc32fast::hash(body) != crc {
        return if end == rest.len() {
            Next::TornTail
        } else {
            Next::Damaged
        };
    }
    *pos += end;
    Next::Record(body)
}

/// After damage at `from`: the offset of the next whole, valid record, if any.
pub(crate) fn resync(data: &[u8], from: usize) -> Option<usize> {
    (from + 1..data.len().saturating_sub(FRAME_HEADER_LEN - 1)).find(|&at| {
        let mut pos = at;
        matches!(next_in(data, &mut pos), Next::Record(_))
    })
}

/// Reads the records of a file as a stream (WAL segments, which are large), with one body
/// buffer reused.
pub(crate) struct Stream<R> {
    inner: R,
    /// Offset of the next record in the file.
    pub pos: u64,
    len: u64,
    body: Vec<u8>,
}

/// What [`Stream::next`] found, with the stream's body buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Record,
    End,
    TornTail,
    Damaged,
}

impl<R: Read> Stream<R> {
    /// `inner` is positioned after the file header; `len` is the whole file's length.
    pub(crate) fn new(inner: R, len: u64) -> Stream<R> {
        Stream {
            inner,
            pos: FILE_HEADER_LEN as u64,
            len,
            body: Vec::new(),
        }
    }

    /// The body of the record last found.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    /// Reads the next record; on anything but a record, the stream stays at its start.
    pub(crate) fn next(&mut self) -> io::Result<Found> {
        let rest = self.len.saturating_sub(self.pos);
        if rest == 0 {
            return Ok(Found::End);
        }
        if rest < FRAME_HEADER_LEN as u64 {
            return Ok(Found::TornTail);
        }
        let mut header = [0; FRAME_HEADER_LEN];
        self.inner.read_exact(&mut header)?;
        let Some((len, crc)) = frame_len(&header) else {
            return self.zeros_to_end(&header);
        };
        let end = (FRAME_HEADER_LEN + len) as u64;
        if end > rest {
            return Ok(Found::TornTail);
        }
        self.body.resize(len, 0);
        self.inner.read_exact(&mut self.body)?;
        if crc32fast::hash(&self.body) != crc {
            return Ok(if end == rest {
                Found::TornTail
            } else {
                Found::Damaged
            });
        }
        self.pos += end;
        Ok(Found::Record)
    }

    /// A header that does not hold together: a torn tail if nothing but zeros follows.
    fn zeros_to_end(&mut self, header: &[u8]) -> io::Result<Found> {
        if header.iter().any(|&b| b != 0) {
            return Ok(Found::Damaged);
        }
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.inner.read(&mut chunk)?;
            if n == 0 {
                return Ok(Found::TornTail);
            }
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(Found::Damaged);
            }
        }
    }
}

/// Little-endian readers over a record body; `None` when the body is too short.
pub(crate) struct Body<'a>(pub &'a [u8]);

impl<'a> Body<'a> {
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        let bytes = self.take(8)?;
        let mut raw = [0; 8];
        raw.copy_from_slice(bytes);
        Some(u64::from_le_bytes(raw))
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A u16-length-prefixed byte string.
    pub(crate) fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    pub(crate) fn str16(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes16()?).ok()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Writes a u16-length-prefixed byte string (callers keep them under 64 KiB: MQTT topics,
/// filters and client ids are).
pub(crate) fn put16(buf: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len().min(u16::MAX as usize);
    buf.extend_from_slice(&(n as u16).to_le_bytes());
    buf.extend_from_slice(&bytes[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[&[u8]]) -> Vec<u8> {
        let mut buf = file_header(b"TESTFILE").to_vec();
        for r in records {
            frame(&mut buf, |b| b.extend_from_slice(r));
        }
        buf
    }

    fn all(data: &[u8]) -> (Vec<Vec<u8>>, Next<'static>) {
        let mut pos = FILE_HEADER_LEN;
        let mut out = Vec::new();
        loop {
            match next_in(data, &mut pos) {
                Next::Record(body) => out.push(body.to_vec()),
                Next::End => return (out, Next::End),
                Next::TornTail => return (out, Next::TornTail),
                Next::Damaged => return (out, Next::Damaged),
            }
        }
    }

    fn streamed(data: &[u8]) -> (usize, Found) {
        let mut s = Stream::new(&data[FILE_HEADER_LEN..], data.len() as u64);
        let mut n = 0;
        loop {
            match s.next().unwrap() {
                Found::Record => n += 1,
                other => return (n, other),
            }
        }
    }

    #[test]
    fn records_read_back_and_a_cut_anywhere_is_a_torn_tail() {
        let data = file(&[b"one", b"two", b"three"]);
        assert_eq!(
            all(&data).0,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(streamed(&data), (3, Found::End));
        let whole_two = FILE_HEADER_LEN + 2 * FRAME_HEADER_LEN + 6;
        for cut in FILE_HEADER_LEN + 1..data.len() {
            let (got, next) = all(&data[..cut]);
            let whole = if cut >= whole_two {
                2
            } else if cut >= FILE_HEADER_LEN + 15 {
                1
            } else {
                0
            };
            let boundary = cut == FILE_HEADER_LEN + 15 || cut == whole_two;
            let (torn, found) = if boundary {
                (Next::End, Found::End)
            } else {
                (Next::TornTail, Found::TornTail)
            };
            assert_eq!((got.len(), &next), (whole, &torn), "cut at {cut}");
            assert_eq!(streamed(&data[..cut]), (whole, found), "cut at {cut}");
        }
        let mut zeros = data.clone();
        zeros.extend_from_slice(&[0; 100]);
        assert_eq!(all(&zeros).1, Next::TornTail);
        assert_eq!(streamed(&zeros), (3, Found::TornTail));
    }

    #[test]
    fn a_flipped_byte_before_the_last_record_is_damage_and_resync_finds_the_next() {
        let data = file(&[b"one", b"two", b"three"]);
        for at in FILE_HEADER_LEN..FILE_HEADER_LEN + 2 * FRAME_HEADER_LEN + 6 {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            assert_eq!(all(&bad).1, Next::Damaged, "flip at {at}");
            assert_eq!(streamed(&bad).1, Found::Damaged, "flip at {at}");
            let from = if at < FILE_HEADER_LEN + 15 {
                FILE_HEADER_LEN
            } else {
                FILE_HEADER_LEN + 15
            };
            let next = resync(&bad, from).expect("a later record");
            let mut pos = next;
            assert!(matches!(next_in(&bad, &mut pos), Next::Record(_)));
        }
    }

    #[test]
    fn headers_tell_version_and_kind() {
        let mut header = file_header(b"TESTFILE");
        assert_eq!(check_file_header(&header, b"TESTFILE"), Header::Ours);
        assert_eq!(check_file_header(&header, b"OTHERFIL"), Header::Foreign);
        header[8] = 7;
        assert_eq!(check_file_header(&header, b"TESTFILE"), Header::Version(7));
    }
}
