//! Readings as bytes: one device's readings encoded into shared buffers, one allocation
//! per few hundred readings instead of one (or two) per reading.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use mqtt_protocol::reading::{Reading, MAX_LATENESS_US};

use crate::sensor::Sensor;
use crate::PublisherArgs;

/// Encoded readings are cut from shared buffers of this size.
const ARENA_BYTES: usize = 64 * 1024;

/// Encodes one device's readings into shared buffers, reusing its scratch space.
pub struct Encoder<'a> {
    args: &'a PublisherArgs,
    device_id: &'a str,
    stream_id: u64,
    total: u64,
    sensor: Sensor,
    scratch: Vec<u8>,
    arena: BytesMut,
}

impl<'a> Encoder<'a> {
    /// `count` is the stream's total, or `None` when it is not known up front.
    pub fn new(
        args: &'a PublisherArgs,
        device_id: &'a str,
        stream_id: u64,
        count: Option<u64>,
    ) -> Self {
        Encoder {
            args,
            device_id,
            stream_id,
            total: count.unwrap_or(0),
            sensor: Sensor::new(stream_id),
            scratch: Vec::new(),
            arena: BytesMut::new(),
        }
    }

    /// Reading `seq` stamped with its send time, `sent_at_us` (intended, when paced), and
    /// how many µs after it the reading actually left (clamped to what the field holds).
    pub fn encode(&mut self, seq: u64, sent_at_us: u64, lateness_us: u64) -> Bytes {
        let (temperature, humidity) = self.sensor.sample(seq);
        let mut reading = Reading {
            stream_id: self.stream_id,
            device_id: Cow::Borrowed(self.device_id),
            seq,
            total: self.total,
            sent_at_us,
            lateness_us: Some(lateness_us.min(MAX_LATENESS_US.into()) as u32),
            temperature,
            humidity,
            padding: 0,
        };
        reading.padding =
            (self.args.payload_size as usize).saturating_sub(reading.binary_len()) as u32;
        self.scratch.clear();
        reading.encode(self.args.payload, &mut self.scratch);
        if self.arena.capacity() < self.scratch.len() {
            self.arena.reserve(ARENA_BYTES.max(self.scratch.len()));
        }
        self.arena.extend_from_slice(&self.scratch);
        self.arena.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use mqtt_protocol::reading::decode;

    fn args(extra: &[&str]) -> PublisherArgs {
        PublisherArgs::parse_from(std::iter::once("mqtt-publisher").chain(extra.iter().copied()))
    }

    #[test]
    fn encoded_readings_decode_and_do_not_share_bytes() {
        let a = args(&["--payload-size", "100"]);
        let mut e = Encoder::new(&a, "sensor-1", 42, Some(1000));
        let first = e.encode(1, 111, 0);
        let second = e.encode(2, 222, 7);
        for (bytes, seq, at, late) in [(&first, 1, 111, 0), (&second, 2, 222, 7)] {
            assert_eq!(bytes.len(), 100);
            let r = decode(bytes).unwrap();
            assert_eq!(
                (r.stream_id, r.seq, r.total, r.sent_at_us, r.lateness_us),
                (42, seq, 1000, at, Some(late))
            );
        }
        // Past an arena's worth of readings, the earlier ones are still intact.
        let readings: Vec<Bytes> = (3..2000).map(|s| e.encode(s, s, 0)).collect();
        assert_eq!(decode(&first).unwrap().seq, 1);
        assert_eq!(decode(&readings[1500]).unwrap().seq, 1503);
        let mut unknown = Encoder::new(&a, "d", 1, None);
        assert_eq!(decode(&unknown.encode(5, 1, u64::MAX)).unwrap().total, 0);
    }
}
