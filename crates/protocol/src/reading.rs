//! The sensor reading and its two encodings.
//!
//! A reading carries what the subscriber needs to prove delivery: the stream it belongs
//! to (unique per publisher run and device), its sequence number, the stream's total
//! length (so a lost tail is visible), the send timestamp (for latency) and a checksum.
//!
//! **Binary** (compact, the default), all integers little-endian:
//!
//! | offset  | size | field                                          |
//! |---------|------|------------------------------------------------|
//! | 0       | 4    | magic `MQR` + format version `0x01`            |
//! | 4       | 8    | stream id (u64)                                |
//! | 12      | 8    | sequence number (u64, 1-based)                 |
//! | 20      | 8    | stream total (u64; 0 = unknown)                |
//! | 28      | 8    | send time, µs since the Unix epoch (u64)       |
//! | 36      | 4    | temperature, °C (f32)                          |
//! | 40      | 4    | humidity, % (f32)                              |
//! | 44      | 1    | device id length L                             |
//! | 45      | L    | device id, UTF-8                               |
//! | 45+L    | 4    | padding length P (u32)                         |
//! | 49+L    | P    | padding (zeros when we write it)               |
//! | 49+L+P  | 4    | CRC-32C (Castagnoli) of every byte before it   |
//!
//! **JSON** (for humans and other tools): an object with `device_id`, `stream_id` (16 hex
//! digits), `seq`, `total`, `sent_at_us`, `temperature`, `humidity`, `pad` (P characters)
//! and `crc32c`. Its checksum is the CRC-32C of the *binary* encoding of the same reading
//! with zero padding, so both encodings are checked the same way. Only `seq` is required:
//! without `crc32c` a reading verifies by sequence alone, without `stream_id` its stream
//! is derived from `device_id`, and the original demo's `ts` (float seconds) is accepted
//! as a send time.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// First four bytes of every binary reading: `MQR` and the format version.
pub const BINARY_MAGIC: [u8; 4] = *b"MQR\x01";
/// Size of a binary reading with an empty device id and no padding.
pub const BINARY_OVERHEAD: usize = 4 + 8 * 4 + 4 * 2 + 1 + 4 + 4;
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
    pub temperature: f32,
    pub humidity: f32,
    /// Bytes of padding that make the message the requested size.
    pub padding: u32,
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

    /// Appends the binary encoding to `out`.
    ///
    /// # Panics
    /// If the device id is longer than [`MAX_DEVICE_ID_LEN`]; callers validate it first.
    pub fn encode_binary(&self, out: &mut Vec<u8>) {
        let start = out.len();
        self.encode_binary_body(out);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Everything but the checksum.
    fn encode_binary_body(&self, out: &mut Vec<u8>) {
        let id = self.device_id.as_bytes();
        assert!(id.len() <= MAX_DEVICE_ID_LEN, "device id too long");
        out.reserve(self.binary_len());
        out.extend_from_slice(&BINARY_MAGIC);
        for v in [self.stream_id, self.seq, self.total, self.sent_at_us] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.temperature.to_le_bytes());
        out.extend_from_slice(&self.humidity.to_le_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.padding.to_le_bytes());
        out.resize(out.len() + self.padding as usize, 0);
    }

    /// The checksum both encodings carry: CRC-32C of the binary encoding before its
    /// checksum field, with zero padding.
    pub fn checksum(&self) -> u32 {
        let mut body = Vec::with_capacity(self.binary_len());
        self.encode_binary_body(&mut body);
        crc32c::crc32c(&body)
    }

    /// Appends the JSON encoding (with checksum) to `out`.
    pub fn encode_json(&self, out: &mut Vec<u8>) {
        let doc = JsonReading {
            device_id: Some(Cow::Borrowed(&self.device_id)),
            stream_id: Some(format!("{:016x}", self.stream_id)),
            seq: self.seq,
            total: Some(self.total),
            sent_at_us: Some(self.sent_at_us),
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
    if payload.len() < 4 {
        return Err(DecodeError::Truncated {
            len: payload.len(),
            needed: BINARY_OVERHEAD,
        });
    }
    if payload[3] != BINARY_MAGIC[3] {
        return Err(DecodeError::UnsupportedVersion(payload[3]));
    }
    let u64_at = |at| field::<8>(payload, at).map(u64::from_le_bytes);
    let f32_at = |at| field::<4>(payload, at).map(f32::from_le_bytes);
    let stream_id = u64_at(4)?;
    let seq = u64_at(12)?;
    let total = u64_at(20)?;
    let sent_at_us = u64_at(28)?;
    let temperature = f32_at(36)?;
    let humidity = f32_at(40)?;
    let id_len = field::<1>(payload, 44)?[0] as usize;
    let id_end = 45 + id_len;
    let padding = u32::from_le_bytes(field::<4>(payload, id_end)?);
    if padding as usize > MAX_PADDING {
        return Err(DecodeError::PaddingTooLarge(padding.into()));
    }
    let body_end = id_end + 4 + padding as usize;
    let carried = u32::from_le_bytes(field::<4>(payload, body_end)?);
    if payload.len() > body_end + 4 {
        return Err(DecodeError::TrailingBytes(payload.len() - body_end - 4));
    }
    let computed = crc32c::crc32c(&payload[..body_end]);
    if carried != computed {
        return Err(DecodeError::BadChecksum { carried, computed });
    }
    let device_id =
        std::str::from_utf8(&payload[45..id_end]).map_err(|_| DecodeError::DeviceIdNotUtf8)?;
    if seq == 0 {
        return Err(DecodeError::ZeroSequence);
    }
    Ok(Reading {
        stream_id,
        device_id: Cow::Borrowed(device_id),
        seq,
        total,
        sent_at_us,
        temperature,
        humidity,
        padding,
    })
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

    #[test]
    fn a_changed_json_field_fails_the_checksum() {
        let mut buf = Vec::new();
        sample(0).encode_json(&mut buf);
        let text = String::from_utf8(buf)
            .unwrap()
            .replace("\"seq\":42", "\"seq\":43");
        assert!(matches!(
            decode(text.as_bytes()),
            Err(DecodeError::BadChecksum { .. })
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
            decode(b"MQR\x02rest"),
            Err(DecodeError::UnsupportedVersion(2))
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
        sample(0).encode_binary(&mut buf);
        buf.push(0);
        assert_eq!(decode(&buf), Err(DecodeError::TrailingBytes(1)));
    }
}
