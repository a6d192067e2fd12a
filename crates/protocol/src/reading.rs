//! The sensor reading and its two encodings.
//!
//! A reading carries what the subscriber needs to prove delivery: the stream it belongs
//! to (unique per publisher run and device), its sequence number, the stream's total
//! length (so a lost tail is visible), its send time and how late it actually left (for
//! latency, see [`Reading::lateness_us`]) and a checksum.
//!
//! **Binary** (compact, the default), format version 2, all integers little-endian:
//!
//! | offset  | size | field                                                        |
//! |---------|------|--------------------------------------------------------------|
//! | 0       | 4    | magic `MQR` + format version `0x02`                          |
//! | 4       | 8    | stream id (u64)                                              |
//! | 12      | 8    | sequence number (u64, 1-based)                               |
//! | 20      | 8    | stream total (u64; 0 = unknown)                              |
//! | 28      | 8    | send time (intended, when paced), µs since the Unix epoch    |
//! | 36      | 4    | lateness: µs it actually left after its send time (u32; `0xFFFFFFFF` = unknown) |
//! | 40      | 4    | temperature, °C (f32)                                        |
//! | 44      | 4    | humidity, % (f32)                                            |
//! | 48      | 1    | device id length L                                           |
//! | 49      | L    | device id, UTF-8                                             |
//! | 49+L    | P    | padding (zeros when we write it); P is what the length leaves |
//! | 49+L+P  | 4    | CRC-32C (Castagnoli) of every byte before it                 |
//!
//! Format 2 is the same size as format 1 for the same reading: format 1 had no lateness
//! but a 4-byte padding length (at 45+L), which the payload's own length makes redundant.
//! Format 1 readings (magic `MQR\x01`) still decode, with the lateness unknown.
//!
//! **JSON** (for humans and other tools): an object with `device_id`, `stream_id` (16 hex
//! digits), `seq`, `total`, `sent_at_us`, `lateness_us`, `temperature`, `humidity`, `pad`
//! (P characters) and `crc32c`. Its checksum is the CRC-32C of the *binary* encoding of
//! the same reading with zero padding (format 2 when the document has `lateness_us`,
//! format 1 when not, as older publishers wrote it), so both encodings are checked the
//! same way. Only `seq` is required: without `crc32c` a reading verifies by sequence
//! alone, without `stream_id` its stream is derived from `device_id`, and the original
//! demo's `ts` (float seconds) is accepted as a send time.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// First four bytes of every binary reading we write: `MQR` and the format version.
pub const BINARY_MAGIC: [u8; 4] = *b"MQR\x02";
/// The magic of format 1, which older publishers wrote and [`decode`] still reads.
pub const BINARY_MAGIC_V1: [u8; 4] = *b"MQR\x01";
/// Size of a binary reading with an empty device id and no padding (both formats).
pub const BINARY_OVERHEAD: usize = 4 + 8 * 4 + 4 + 4 * 2 + 1 + 4;
/// The lateness field's value for "unknown".
const LATENESS_UNKNOWN: u32 = u32::MAX;
/// Largest lateness a reading can carry, µs (about 71 minutes); later is clamped to it.
pub const MAX_LATENESS_US: u32 = LATENESS_UNKNOWN - 1;
/// Longest device id the binary encoding can carry.
pub const MAX_DEVICE_ID_LEN: usize = u8::MAX as usize;
/// Largest padding accepted on decode: guards against absurd lengths in corrupt input.
pub const MAX_PADDING: usize = 64 * 1024 * 1024;

/// One sensor reading. Borrows its device id from the payload when decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<'a> {
    pub stream_id: u64,
    pub device_id: Cow<'a, str>,
    pub seq: u64,
    /// Number of readings in the stream, or 0 when the sender did not say.
    pub total: u64,
    /// Send (or, when paced, intended send) time in µs since the Unix epoch; 0 = unknown.
    pub sent_at_us: u64,
    /// How many µs after `sent_at_us` the reading actually left the publisher, when the
    /// sender said (format 2): the publisher's own lateness, which a paced run counts in
    /// the latency from `sent_at_us` and which the transit time leaves out. At most
    /// [`MAX_LATENESS_US`].
    pub lateness_us: Option<u32>,
    pub temperature: f32,
    pub humidity: f32,
    /// Bytes of padding that make the message the requested size.
    pub padding: u32,
}

/// The versions of the binary encoding: 2 is what we write, 1 what older publishers did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryFormat {
    V1,
    V2,
}

/// How a reading is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    Binary,
    Json,
}

impl std::str::FromStr for PayloadFormat {
    type Err = String;

    /// `binary` or `json`, as `--payload` takes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binary" => Ok(PayloadFormat::Binary),
            "json" => Ok(PayloadFormat::Json),
            other => Err(format!(
                "{other:?} is not a payload format (binary or json)"
            )),
        }
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadFormat::Binary => "binary",
            PayloadFormat::Json => "json",
        })
    }
}

/// Why a payload is not a valid reading. Decoding never panics; it returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Neither the binary magic nor a JSON object: not one of our readings at all.
    #[error("not a reading (no binary magic, not a JSON object)")]
    NotAReading,
    #[error("binary reading of format version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("binary reading truncated: {len} bytes, needs {needed}")]
    Truncated { len: usize, needed: usize },
    #[error("binary reading has {0} bytes after its checksum")]
    TrailingBytes(usize),
    #[error("device id is not UTF-8")]
    DeviceIdNotUtf8,
    #[error("padding of {0} bytes is over the limit")]
    PaddingTooLarge(u64),
    #[error("checksum mismatch: carried {carried:#010x}, computed {computed:#010x}")]
    BadChecksum { carried: u32, computed: u32 },
    #[error("invalid JSON reading: {0}")]
    Json(String),
    #[error("sequence number 0 (sequences start at 1)")]
    ZeroSequence,
}

impl DecodeError {
    /// True when the payload claimed to be a reading but failed its checks: a corrupted
    /// reading rather than a foreign message.
    pub fn is_corruption(&self) -> bool {
        !matches!(self, DecodeError::NotAReading)
    }
}

impl<'a> Reading<'a> {
    /// Size in bytes of this reading's binary encoding.
    pub fn binary_len(&self) -> usize {
        BINARY_OVERHEAD + self.device_id.len() + self.padding as usize
    }

    /// Appends the binary encoding (format 2) to `out`.
    ///
    /// # Panics
    /// If the device id is longer than [`MAX_DEVICE_ID_LEN`]; callers validate it first.
    pub fn encode_binary(&self, out: &mut Vec<u8>) {
        self.encode_binary_as(BinaryFormat::V2, out);
    }

    /// Appends the binary encoding in `format`; format 1 is for tools and tests that
    /// must write what older publishers wrote (it cannot carry the lateness).
    pub fn encode_binary_as(&self, format: BinaryFormat, out: &mut Vec<u8>) {
        let start = out.len();
        self.encode_binary_body(format, out);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Everything but the checksum.
    fn encode_binary_body(&self, format: BinaryFormat, out: &mut Vec<u8>) {
        let id = self.device_id.as_bytes();
        assert!(id.len() <= MAX_DEVICE_ID_LEN, "device id too long");
        out.reserve(self.binary_len());
        out.extend_from_slice(match format {
            BinaryFormat::V1 => &BINARY_MAGIC_V1,
            BinaryFormat::V2 => &BINARY_MAGIC,
        });
        for v in [self.stream_id, self.seq, self.total, self.sent_at_us] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if format == BinaryFormat::V2 {
            let lateness = self
                .lateness_us
                .map_or(LATENESS_UNKNOWN, |l| l.min(MAX_LATENESS_US));
            out.extend_from_slice(&lateness.to_le_bytes());
        }
        out.extend_from_slice(&self.temperature.to_le_bytes());
        out.extend_from_slice(&self.humidity.to_le_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        if format == BinaryFormat::V1 {
            out.extend_from_slice(&self.padding.to_le_bytes());
        }
        out.resize(out.len() + self.padding as usize, 0);
    }

    /// The checksum the JSON encoding carries: CRC-32C of the binary encoding before its
    /// checksum field, with zero padding; format 2 when the reading has a lateness,
    /// format 1 (as older publishers computed it) when not.
    pub fn checksum(&self) -> u32 {
        let format = match self.lateness_us {
            Some(_) => BinaryFormat::V2,
            None => BinaryFormat::V1,
        };
        let mut body = Vec::with_capacity(self.binary_len());
        self.encode_binary_body(format, &mut body);
        crc32c::crc32c(&body)
    }

    /// When the reading actually left the publisher, µs since the Unix epoch, if it
    /// said: its send time plus its lateness.
    pub fn departed_at_us(&self) -> Option<u64> {
        if self.sent_at_us == 0 {
            return None;
        }
        let lateness = self.lateness_us?;
        Some(self.sent_at_us.saturating_add(lateness.into()))
    }

    /// Appends the JSON encoding (with checksum) to `out`.
    pub fn encode_json(&self, out: &mut Vec<u8>) {
        let doc = JsonReading {
            device_id: Some(Cow::Borrowed(&self.device_id)),
            stream_id: Some(format!("{:016x}", self.stream_id)),
            seq: self.seq,
            total: Some(self.total),
            sent_at_us: Some(self.sent_at_us),
            lateness_us: self.lateness_us.map(|l| l.min(MAX_LATENESS_US)),
            ts: None,
            temperature: Some(self.temperature),
            humidity: Some(self.humidity),
            pad: (self.padding > 0).then(|| ".".repeat(self.padding as usize).into()),
            crc32c: Some(self.checksum()),
        };
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_writer(out, &doc).expect("serialising a reading to memory");
    }

    /// Appends the reading in `format`.
    pub fn encode(&self, format: PayloadFormat, out: &mut Vec<u8>) {
        match format {
            PayloadFormat::Binary => self.encode_binary(out),
            PayloadFormat::Json => self.encode_json(out),
        }
    }

    /// Copies the borrowed parts so the reading can outlive its payload.
    pub fn into_owned(self) -> Reading<'static> {
        Reading {
            device_id: Cow::Owned(self.device_id.into_owned()),
            ..self
        }
    }
}

/// Decodes a payload in either format, detected from its first bytes.
pub fn decode(payload: &[u8]) -> Result<Reading<'_>, DecodeError> {
    if payload.starts_with(&BINARY_MAGIC[..3]) {
        decode_binary(payload)
    } else if payload.trim_ascii_start().first() == Some(&b'{') {
        decode_json(payload)
    } else {
        Err(DecodeError::NotAReading)
    }
}

/// Reads `N` bytes at `at`, or says how many bytes the payload would need.
fn field<const N: usize>(payload: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    payload
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::Truncated {
            len: payload.len(),
            needed: at + N,
        })
}

fn decode_binary(payload: &[u8]) -> Result<Reading<'_>, DecodeError> {
    match *payload.get(3).ok_or(DecodeError::Truncated {
        len: payload.len(),
        needed: BINARY_OVERHEAD,
    })? {
        1 => decode_binary_v1(payload),
        2 => decode_binary_v2(payload),
        version => Err(DecodeError::UnsupportedVersion(version)),
    }
}

/// The fields both binary formats share, in their order.
struct Fixed {
    stream_id: u64,
    seq: u64,
    total: u64,
    sent_at_us: u64,
}

fn fixed(payload: &[u8]) -> Result<Fixed, DecodeError> {
    let u64_at = |at| field::<8>(payload, at).map(u64::from_le_bytes);
    Ok(Fixed {
        stream_id: u64_at(4)?,
        seq: u64_at(12)?,
        total: u64_at(20)?,
        sent_at_us: u64_at(28)?,
    })
}

/// Checks the checksum at `body_end` (the payload's last 4 bytes) and the fields that
/// need it, and builds the reading.
fn seal(
    payload: &[u8],
    fixed: Fixed,
    lateness_us: Option<u32>,
    floats_at: usize,
    id_at: usize,
    padding: u32,
) -> Result<Reading<'_>, DecodeError> {
    let body_end = payload.len() - 4;
    let carried = u32::from_le_bytes(field::<4>(payload, body_end)?);
    let computed = crc32c::crc32c(&payload[..body_end]);
    if carried != computed {
        return Err(DecodeError::BadChecksum { carried, computed });
    }
    let f32_at = |at| field::<4>(payload, at).map(f32::from_le_bytes);
    let id_len = payload[id_at - 1] as usize;
    let device_id = std::str::from_utf8(&payload[id_at..id_at + id_len])
        .map_err(|_| DecodeError::DeviceIdNotUtf8)?;
    if fixed.seq == 0 {
        return Err(DecodeError::ZeroSequence);
    }
    Ok(Reading {
        stream_id: fixed.stream_id,
        device_id: Cow::Borrowed(device_id),
        seq: fixed.seq,
        total: fixed.total,
        sent_at_us: fixed.sent_at_us,
        lateness_us,
        temperature: f32_at(floats_at)?,
        humidity: f32_at(floats_at + 4)?,
        padding,
    })
}

/// Format 2: the padding is whatever lies between the device id and the checksum.
fn decode_binary_v2(payload: &[u8]) -> Result<Reading<'_>, DecodeError> {
    let fixed = fixed(payload)?;
    let lateness = u32::from_le_bytes(field::<4>(payload, 36)?);
    let id_len = field::<1>(payload, 48)?[0] as usize;
    let id_end = 49 + id_len;
    let needed = id_end + 4;
    if payload.len() < needed {
        return Err(DecodeError::Truncated {
            len: payload.len(),
            needed,
        });
    }
    let padding = payload.len() - needed;
    if padding > MAX_PADDING {
        return Err(DecodeError::PaddingTooLarge(padding as u64));
    }
    let lateness_us = (lateness != LATENESS_UNKNOWN).then_some(lateness);
    seal(payload, fixed, lateness_us, 40, 49, padding as u32)
}

/// Format 1: a padding length field after the device id, and no lateness.
fn decode_binary_v1(payload: &[u8]) -> Result<Reading<'_>, DecodeError> {
    let fixed = fixed(payload)?;
    let id_len = field::<1>(payload, 44)?[0] as usize;
    let id_end = 45 + id_len;
    let padding = u32::from_le_bytes(field::<4>(payload, id_end)?);
    if padding as usize > MAX_PADDING {
        return Err(DecodeError::PaddingTooLarge(padding.into()));
    }
    let body_end = id_end + 4 + padding as usize;
    field::<4>(payload, body_end)?;
    if payload.len() > body_end + 4 {
        return Err(DecodeError::TrailingBytes(payload.len() - body_end - 4));
    }
    seal(payload, fixed, None, 36, 45, padding)
}

/// The JSON shape; everything but `seq` is optional so other tools' readings decode.
#[derive(Serialize, Deserialize)]
struct JsonReading<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    device_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_id: Option<String>,
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_at_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lateness_us: Option<u32>,
    /// The original demo's send time: float seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    humidity: Option<f32>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pad: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<u32>,
}

fn decode_json(payload: &[u8]) -> Result<Reading<'_>, DecodeError> {
    let doc: JsonReading<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let device_id = doc.device_id.unwrap_or(Cow::Borrowed(""));
    let stream_id = match &doc.stream_id {
        Some(hex) if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16)
                .map_err(|_| DecodeError::Json(format!("stream_id {hex:?} is not 16 hex digits")))?
        }
        Some(hex) => {
            return Err(DecodeError::Json(format!(
                "stream_id {hex:?} is not 16 hex digits"
            )))
        }
        None => stream_id_for_device(&device_id),
    };
    let padding = doc.pad.as_ref().map_or(0, |p| p.chars().count());
    if padding > MAX_PADDING {
        return Err(DecodeError::PaddingTooLarge(padding as u64));
    }
    if device_id.len() > MAX_DEVICE_ID_LEN {
        return Err(DecodeError::Json(format!(
            "device_id longer than {MAX_DEVICE_ID_LEN} bytes"
        )));
    }
    if doc.lateness_us.is_some_and(|l| l > MAX_LATENESS_US) {
        return Err(DecodeError::Json(format!(
            "lateness_us over the limit of {MAX_LATENESS_US}"
        )));
    }
    let sent_at_us = doc
        .sent_at_us
        .or_else(|| {
            doc.ts
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(|t| (t * 1e6) as u64)
        })
        .unwrap_or(0);
    let reading = Reading {
        stream_id,
        device_id,
        seq: doc.seq,
        total: doc.total.unwrap_or(0),
        sent_at_us,
        lateness_us: doc.lateness_us,
        temperature: doc.temperature.unwrap_or(f32::NAN),
        humidity: doc.humidity.unwrap_or(f32::NAN),
        padding: padding as u32,
    };
    if let Some(carried) = doc.crc32c {
        let computed = reading.checksum();
        if carried != computed {
            return Err(DecodeError::BadChecksum { carried, computed });
        }
    }
    if reading.seq == 0 {
        return Err(DecodeError::ZeroSequence);
    }
    Ok(reading)
}

/// The stream id of a reading that did not carry one: a stable hash (FNV-1a) of its
/// device id, so each device of a foreign publisher is its own stream.
pub fn stream_id_for_device(device_id: &str) -> u64 {
    device_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A binary reading of device "dev" (the other modules' tests share it).
    pub(crate) fn binary(stream_id: u64, seq: u64, total: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        Reading {
            stream_id,
            device_id: Cow::Borrowed("dev"),
            seq,
            total,
            sent_at_us: 1,
            lateness_us: Some(0),
            temperature: 20.0,
            humidity: 50.0,
            padding: 0,
        }
        .encode_binary(&mut buf);
        buf
    }

    fn sample(padding: u32) -> Reading<'static> {
        Reading {
            stream_id: 0x0123_4567_89ab_cdef,
            device_id: Cow::Borrowed("sensor-1"),
            seq: 42,
            total: 1000,
            sent_at_us: 1_764_000_000_000_000,
            lateness_us: Some(17),
            temperature: 21.5,
            humidity: 40.25,
            padding,
        }
    }

    #[test]
    fn binary_round_trips_and_has_the_documented_size() {
        for padding in [0, 1, 100, 16 * 1024] {
            let r = sample(padding);
            let mut buf = Vec::new();
            r.encode_binary(&mut buf);
            assert_eq!(buf.len(), r.binary_len());
            assert_eq!(buf.len(), 53 + 8 + padding as usize);
            assert_eq!(decode(&buf).unwrap(), r);
        }
    }

    #[test]
    fn json_round_trips_and_shares_the_binary_checksum() {
        let r = sample(7);
        let mut buf = Vec::new();
        r.encode_json(&mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["stream_id"], "0123456789abcdef");
        assert_eq!(v["crc32c"].as_u64().unwrap() as u32, r.checksum());
        assert_eq!(decode(&buf).unwrap(), r);
    }

    #[test]
    fn every_flipped_bit_in_a_binary_reading_is_detected() {
        let mut buf = Vec::new();
        sample(3).encode_binary(&mut buf);
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bad).is_err(), "bit {i} flip went unnoticed");
        }
    }

    /// Whether `r` in JSON, with `from` replaced by `to`, fails its checksum.
    fn edited_json_fails_its_checksum(r: &Reading<'_>, from: &str, to: &str) -> bool {
        let mut buf = Vec::new();
        r.encode_json(&mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(from), "{text}");
        matches!(
            decode(text.replace(from, to).as_bytes()),
            Err(DecodeError::BadChecksum { .. })
        )
    }

    #[test]
    fn a_changed_json_field_fails_the_checksum() {
        assert!(edited_json_fails_its_checksum(
            &sample(0),
            "\"seq\":42",
            "\"seq\":43"
        ));
    }

    #[test]
    fn the_original_demos_json_decodes_without_checksum() {
        let doc = br#"{"device_id": "sensor-1", "seq": 7, "temperature": 21.5, "humidity": 40.2, "ts": 1764000000.5}"#;
        let r = decode(doc).unwrap();
        assert_eq!(r.seq, 7);
        assert_eq!(r.total, 0);
        assert_eq!(r.sent_at_us, 1_764_000_000_500_000);
        assert_eq!(r.stream_id, stream_id_for_device("sensor-1"));
    }

    #[test]
    fn foreign_and_broken_payloads_are_typed_errors() {
        assert_eq!(decode(b"hello"), Err(DecodeError::NotAReading));
        assert_eq!(decode(b""), Err(DecodeError::NotAReading));
        assert!(!DecodeError::NotAReading.is_corruption());
        assert!(matches!(decode(b"MQR"), Err(DecodeError::Truncated { .. })));
        assert!(matches!(
            decode(b"MQR\x03rest"),
            Err(DecodeError::UnsupportedVersion(3))
        ));
        assert!(matches!(
            decode(b"{\"seq\": \"x\"}"),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(decode(b"{\"seq\": 0}"), Err(DecodeError::ZeroSequence));
        assert!(matches!(
            decode(b"{\"seq\": 1, \"stream_id\": \"+1\"}"),
            Err(DecodeError::Json(_))
        ));
        let mut buf = Vec::new();
        sample(0).encode_binary_as(BinaryFormat::V1, &mut buf);
        buf.push(0);
        assert_eq!(decode(&buf), Err(DecodeError::TrailingBytes(1)));
        // Format 2 has no padding length: a byte more is padding the checksum did not seal.
        let mut buf = Vec::new();
        sample(0).encode_binary(&mut buf);
        buf.push(0);
        assert!(matches!(decode(&buf), Err(DecodeError::BadChecksum { .. })));
    }

    #[test]
    fn format_1_readings_decode_with_their_lateness_unknown() {
        for padding in [0, 5] {
            let r = sample(padding);
            let mut buf = Vec::new();
            r.encode_binary_as(BinaryFormat::V1, &mut buf);
            assert_eq!(&buf[..4], b"MQR\x01");
            assert_eq!(buf.len(), r.binary_len(), "both formats are the same size");
            let decoded = decode(&buf).unwrap();
            assert_eq!(decoded.lateness_us, None);
            assert_eq!(decoded.departed_at_us(), None);
            assert_eq!(
                decoded,
                Reading {
                    lateness_us: None,
                    ..r
                }
            );
        }
    }

    #[test]
    fn json_without_lateness_is_checked_as_format_1_wrote_it() {
        // A reading from a publisher before format 2: its checksum covers the format 1
        // body, and it still verifies.
        let mut old = sample(3);
        old.lateness_us = None;
        let mut buf = Vec::new();
        old.encode_json(&mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert!(!text.contains("lateness_us"), "{text}");
        let mut v1 = Vec::new();
        old.encode_binary_as(BinaryFormat::V1, &mut v1);
        let v1_body_crc = crc32c::crc32c(&v1[..v1.len() - 4]);
        assert!(
            text.contains(&format!("\"crc32c\":{v1_body_crc}")),
            "{text}"
        );
        assert_eq!(decode(text.as_bytes()).unwrap(), old);
        // With the lateness, the checksum is format 2's, so the field is sealed too.
        assert!(edited_json_fails_its_checksum(
            &sample(0),
            "\"lateness_us\":17",
            "\"lateness_us\":18"
        ));
    }

    #[test]
    fn the_departure_is_the_send_time_plus_the_lateness() {
        let r = sample(0);
        assert_eq!(r.departed_at_us(), Some(1_764_000_000_000_017));
        let unknown_send = Reading {
            sent_at_us: 0,
            ..sample(0)
        };
        assert_eq!(unknown_send.departed_at_us(), None);
        // Later than the field can say is clamped, never wrapped.
        let very_late = Reading {
            lateness_us: Some(u32::MAX),
            ..sample(0)
        };
        let mut buf = Vec::new();
        very_late.encode_binary(&mut buf);
        assert_eq!(decode(&buf).unwrap().lateness_us, Some(MAX_LATENESS_US));
    }
}
