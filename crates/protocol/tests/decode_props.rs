//! Property tests for the reading decoder: whatever arrives on the wire, `decode` answers
//! with a reading or a typed error and never panics; every reading survives a round trip
//! through either encoding; readings in the old binary format (1) still decode; and no
//! single damaged byte of a binary reading goes unnoticed.

use std::borrow::Cow;

use mqtt_protocol::reading::{
    decode, BinaryFormat, PayloadFormat, Reading, BINARY_MAGIC, BINARY_MAGIC_V1, BINARY_OVERHEAD,
    MAX_DEVICE_ID_LEN, MAX_LATENESS_US,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// Largest padding the round-trip properties generate: a few KB keeps a debug run short.
const MAX_TEST_PADDING: u32 = 4 * 1024;

/// Finite floats only: NaN never equals itself, so it cannot round-trip by `==`.
fn finite_f32() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// Arbitrary UTF-8 of at most [`MAX_DEVICE_ID_LEN`] bytes, cut at a character boundary.
fn device_id() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=MAX_DEVICE_ID_LEN).prop_map(|chars| {
        let mut id = String::new();
        for c in chars {
            if id.len() + c.len_utf8() > MAX_DEVICE_ID_LEN {
                break;
            }
            id.push(c);
        }
        id
    })
}

prop_compose! {
    fn reading(max_padding: u32)(
        stream_id in any::<u64>(),
        device_id in device_id(),
        seq in 1..=u64::MAX,
        total in any::<u64>(),
        sent_at_us in any::<u64>(),
        lateness_us in prop::option::of(0..=MAX_LATENESS_US),
        temperature in finite_f32(),
        humidity in finite_f32(),
        padding in 0..=max_padding,
    ) -> Reading<'static> {
        Reading {
            stream_id,
            device_id: Cow::Owned(device_id),
            seq,
            total,
            sent_at_us,
            lateness_us,
            temperature,
            humidity,
            padding,
        }
    }
}

fn format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Binary), Just(PayloadFormat::Json)]
}

/// A JSON value of the kinds a foreign or broken document might put in a field.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<u32>().prop_map(|n| json!(n)),
        "[0-9a-fA-F+-]{0,20}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        (0usize..3000).prop_map(|n| Value::from(".".repeat(n))),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object with each of the reading's own fields present or not, holding a value of
/// the right type or an arbitrary one (so the decoder gets past its first checks often,
/// and sometimes accepts the document), plus a few unknown fields, serialised.
fn reading_like_json() -> impl Strategy<Value = String> {
    use serde_json::Value;
    fn field(
        name: &'static str,
        plausible: BoxedStrategy<Value>,
    ) -> impl Strategy<Value = Option<(String, Value)>> {
        prop::option::of(prop_oneof![3 => plausible, 1 => json_value()])
            .prop_map(move |v| v.map(|v| (name.to_owned(), v)))
    }
    let number = || any::<u64>().prop_map(Value::from).boxed();
    let float = || any::<f64>().prop_map(|f| serde_json::json!(f)).boxed();
    let text = || any::<String>().prop_map(Value::from).boxed();
    let known = (
        field("device_id", text()),
        field("stream_id", "[0-9a-f]{1,16}".prop_map(Value::from).boxed()),
        field("seq", number()),
        field("total", number()),
        field("sent_at_us", number()),
        field("lateness_us", any::<u32>().prop_map(Value::from).boxed()),
        field("ts", float()),
        field("temperature", float()),
        field("humidity", float()),
        field("pad", "[.]{0,100}".prop_map(Value::from).boxed()),
        field("crc32c", any::<u32>().prop_map(Value::from).boxed()),
    );
    let unknown = prop::collection::vec(("[a-z]{1,8}", json_value()), 0..3);
    (known, unknown).prop_map(|(known, unknown)| {
        let (a, b, c, d, e, f, g, h, i, j, k) = known;
        let fields = [a, b, c, d, e, f, g, h, i, j, k]
            .into_iter()
            .flatten()
            .chain(unknown);
        let body: Vec<String> = fields
            .map(|(k, v)| format!("{}:{v}", Value::from(k)))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes_after_the_binary_magic(
        tail in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = BINARY_MAGIC.to_vec();
        bytes.extend_from_slice(&tail);
        // Without a matching checksum nothing decodes; a short payload never does.
        prop_assert!(decode(&bytes).is_err() || bytes.len() >= BINARY_OVERHEAD);
    }

    #[test]
    fn a_well_framed_binary_payload_decodes_exactly_when_its_fields_are_valid(
        fixed in prop::collection::vec(any::<u8>(), 44),
        id in prop::collection::vec(any::<u8>(), 0..=MAX_DEVICE_ID_LEN),
        padding in prop::collection::vec(any::<u8>(), 0..64),
        zero_seq in any::<bool>(),
        format_1 in any::<bool>(),
    ) {
        // Arbitrary field values (and device id bytes that may not be UTF-8) framed
        // correctly, as format 2 or format 1 (no lateness, a padding length), and sealed
        // with a correct checksum, so decoding reaches its last checks.
        let (magic, fixed) = if format_1 {
            (BINARY_MAGIC_V1, &fixed[..40])
        } else {
            (BINARY_MAGIC, &fixed[..])
        };
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(fixed);
        if zero_seq {
            bytes[12..20].fill(0);
        }
        bytes.push(id.len() as u8);
        bytes.extend_from_slice(&id);
        if format_1 {
            bytes.extend_from_slice(&(padding.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(&padding);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let seq = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
        match decode(&bytes) {
            Ok(r) => {
                prop_assert!(seq != 0);
                prop_assert_eq!(r.seq, seq);
                prop_assert_eq!(r.device_id.as_bytes(), &id[..]);
                prop_assert_eq!(r.padding as usize, padding.len());
                prop_assert_eq!(r.binary_len(), bytes.len());
                let lateness = u32::from_le_bytes(bytes[36..40].try_into().unwrap());
                let expected = (!format_1 && lateness != u32::MAX).then_some(lateness);
                prop_assert_eq!(r.lateness_us, expected);
            }
            Err(e) => {
                prop_assert!(e.is_corruption());
                prop_assert!(
                    seq == 0 || std::str::from_utf8(&id).is_err(),
                    "valid fields rejected: {:?}", e
                );
            }
        }
    }

    #[test]
    fn decode_never_panics_on_json_ish_text(text in "[ \t\r\n]{0,2}\\{[^\\x00]{0,300}") {
        let _ = decode(text.as_bytes());
    }

    #[test]
    fn decode_never_panics_on_reading_like_json_objects(text in reading_like_json()) {
        // What the JSON decoder accepts is a reading the binary encoding can carry
        // (bytes compared, not readings: absent floats decode as NaN).
        if let Ok(r) = decode(text.as_bytes()) {
            prop_assert!(r.seq >= 1);
            let mut binary = Vec::new();
            r.encode_binary(&mut binary);
            let again = decode(&binary);
            prop_assert!(again.is_ok(), "{:?}", again);
            let mut binary_again = Vec::new();
            again.unwrap().encode_binary(&mut binary_again);
            prop_assert_eq!(binary, binary_again);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_reading_round_trips_in_both_formats(
        r in reading(MAX_TEST_PADDING),
        format in format(),
    ) {
        let mut buf = Vec::new();
        r.encode(format, &mut buf);
        if format == PayloadFormat::Binary {
            prop_assert_eq!(buf.len(), r.binary_len());
        }
        let decoded = decode(&buf);
        prop_assert_eq!(decoded, Ok(r));
    }

    #[test]
    fn every_format_1_reading_still_decodes_with_its_lateness_unknown(
        r in reading(MAX_TEST_PADDING),
    ) {
        let mut buf = Vec::new();
        r.encode_binary_as(BinaryFormat::V1, &mut buf);
        prop_assert_eq!(&buf[..4], &BINARY_MAGIC_V1[..]);
        prop_assert_eq!(buf.len(), r.binary_len());
        prop_assert_eq!(decode(&buf), Ok(Reading { lateness_us: None, ..r }));
    }

    #[test]
    fn a_reading_appended_to_a_buffer_round_trips_from_its_own_bytes(
        r in reading(64),
        format in format(),
        prefix in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut buf = prefix.clone();
        r.encode(format, &mut buf);
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        prop_assert_eq!(decode(&buf[prefix.len()..]), Ok(r));
    }

    #[test]
    fn any_single_damaged_byte_of_a_binary_reading_is_detected(
        r in reading(MAX_TEST_PADDING),
        at in any::<Index>(),
        flip in 1..=u8::MAX,
    ) {
        let mut buf = Vec::new();
        r.encode(PayloadFormat::Binary, &mut buf);
        let at = at.index(buf.len());
        buf[at] ^= flip;
        let decoded = decode(&buf);
        prop_assert!(
            decoded.is_err(),
            "byte {} of {} xor {:#04x} went unnoticed: {:?}",
            at,
            buf.len(),
            flip,
            decoded
        );
    }
}
