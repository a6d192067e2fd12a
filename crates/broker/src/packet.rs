//! Just enough MQTT 3.1.1 to judge what a client sends before any of it reaches the router:
//! packet boundaries (the fixed header), the CONNECT packet, the fields of a PUBLISH, and the
//! rules for topics and SUBSCRIBE/UNSUBSCRIBE filters that rumqttd's codec does not enforce.
//! Pure functions over byte slices; nothing here allocates per PUBLISH. Packets the broker
//! sends are written with rumqttd's own codec (`connection::writer`).

use std::fmt;

/// MQTT's largest "remaining length" (four 7-bit digits).
const MAX_REMAINING: usize = 268_435_455;

/// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ReturnCode {
    BadProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ReturnCode {
    /// The 4-byte CONNACK packet carrying this code (no session present).
    pub(crate) fn connack(self) -> [u8; 4] {
        [0x20, 0x02, 0x00, self as u8]
    }
}

/// Why a client's packet was refused: a protocol violation or a broken limit. The client is
/// disconnected; `code` is the CONNACK to send first, where the protocol has one (CONNECT only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    pub reason: &'static str,
    pub code: Option<ReturnCode>,
}

impl Violation {
    pub(crate) const fn new(reason: &'static str) -> Violation {
        Violation { reason, code: None }
    }

    const fn refuse(code: ReturnCode, reason: &'static str) -> Violation {
        Violation {
            reason,
            code: Some(code),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

/// A packet's fixed header: first byte, remaining length and the header's own length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedHeader {
    pub first: u8,
    pub remaining: usize,
    pub header_len: usize,
}

impl FixedHeader {
    pub(crate) fn packet_type(&self) -> u8 {
        self.first >> 4
    }

    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the start of `buf`: `Ok(None)` if more bytes are needed. A
/// remaining length above `max_remaining` is refused as soon as its digits are in, before the
/// body arrives (so a claimed 200 MB packet is never waited for).
pub(crate) fn fixed_header(
    buf: &[u8],
    max_remaining: usize,
) -> Result<Option<FixedHeader>, Violation> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, &digit) in buf[1..].iter().take(4).enumerate() {
        remaining |= usize::from(digit & 0x7F) << (7 * i);
        if digit & 0x80 == 0 {
            if remaining > max_remaining.min(MAX_REMAINING) {
                return Err(Violation::new("packet larger than max_payload_size"));
            }
            return Ok(Some(FixedHeader {
                first,
                remaining,
                header_len: 2 + i,
            }));
        }
        if i == 3 {
            return Err(Violation::new(
                "malformed remaining length (more than 4 bytes)",
            ));
        }
    }
    Ok(None)
}

/// Reads a two-byte length-prefixed field at `*at`, advancing past it.
fn field<'a>(body: &'a [u8], at: &mut usize) -> Result<&'a [u8], Violation> {
    let malformed = Violation::new("truncated packet (a length-prefixed field overruns it)");
    let len = body.get(*at..*at + 2).ok_or(malformed)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let value = body.get(*at + 2..*at + 2 + len).ok_or(malformed)?;
    *at += 2 + len;
    Ok(value)
}

fn utf8(bytes: &[u8]) -> Result<&str, Violation> {
    let s = std::str::from_utf8(bytes).map_err(|_| Violation::new("string is not valid UTF-8"))?;
    if s.contains('\0') {
        return Err(Violation::new("string contains U+0000"));
    }
    Ok(s)
}

fn u16_at(body: &[u8], at: usize) -> Result<u16, Violation> {
    body.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(Violation::new("truncated packet"))
}

/// A parsed CONNECT (protocol level 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect<'a> {
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    /// Will flags (bits 2..=5 of the connect flags), topic and message, if a will is set.
    pub will: Option<(u8, &'a [u8], &'a [u8])>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Parses the body (after the fixed header) of a CONNECT whose first byte was 0x10.
pub(crate) fn connect(body: &[u8], max_client_id: usize) -> Result<Connect<'_>, Violation> {
    let mut at = 0;
    let name = field(body, &mut at)?;
    let level = *body.get(at).ok_or(Violation::new("truncated CONNECT"))?;
    match (name, level) {
        (b"MQTT", 4) => {}
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return Err(Violation::refuse(
                ReturnCode::BadProtocolVersion,
                "unsupported protocol level (only MQTT 3.1.1 is served)",
            ))
        }
        _ => return Err(Violation::new("not an MQTT CONNECT (bad protocol name)")),
    }
    let flags = *body
        .get(at + 1)
        .ok_or(Violation::new("truncated CONNECT"))?;
    let keep_alive = u16_at(body, at + 2)?;
    at += 4;
    if flags & 0x01 != 0 {
        return Err(Violation::new("CONNECT reserved flag set"));
    }
    let clean_session = flags & 0x02 != 0;
    let client_id = utf8(field(body, &mut at)?)?;
    if client_id.len() > max_client_id {
        return Err(Violation::refuse(
            ReturnCode::IdentifierRejected,
            "client id longer than max_client_id_len",
        ));
    }
    if client_id.is_empty() && !clean_session {
        return Err(Violation::refuse(
            ReturnCode::IdentifierRejected,
            "empty client id with a persistent session",
        ));
    }
    let will = if flags & 0x04 != 0 {
        if (flags >> 3) & 0x03 == 3 {
            return Err(Violation::new("CONNECT will QoS 3"));
        }
        let topic = field(body, &mut at)?;
        valid_topic_name(topic)?;
        let message = field(body, &mut at)?;
        Some((flags & 0x3C, topic, message))
    } else {
        if flags & 0x38 != 0 {
            return Err(Violation::new("CONNECT will QoS/retain set without a will"));
        }
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(utf8(field(body, &mut at)?)?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        if username.is_none() {
            return Err(Violation::new("CONNECT password without a user name"));
        }
        Some(field(body, &mut at)?)
    } else {
        None
    };
    if at != body.len() {
        return Err(Violation::new("CONNECT has trailing bytes"));
    }
    Ok(Connect {
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

/// The fields of a PUBLISH frame (fixed header included), as offsets into that frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishFields {
    pub qos: u8,
    pub retain: bool,
    /// 0 at QoS 0.
    pub pkid: u16,
    pub topic: std::ops::Range<usize>,
    pub payload: std::ops::Range<usize>,
}

/// Reads the fields of a PUBLISH that [`check_packet`] accepted.
pub(crate) fn publish_fields(
    header: &FixedHeader,
    frame: &[u8],
) -> Result<PublishFields, Violation> {
    let body = header.header_len;
    let qos = (header.first >> 1) & 0x03;
    let mut at = body;
    let topic_len = field(frame, &mut at)?.len();
    let topic = at - topic_len..at;
    let pkid = if qos > 0 {
        let pkid = u16_at(frame, at)?;
        at += 2;
        pkid
    } else {
        0
    };
    Ok(PublishFields {
        qos,
        retain: header.first & 0x01 != 0,
        pkid,
        topic,
        payload: at..frame.len(),
    })
}

/// A topic name a client may publish to: non-empty UTF-8 without wildcards. Topics that start
/// with `$` are valid names; the broker accepts and drops them (see [`is_reserved_topic`]).
pub(crate) fn valid_topic_name(topic: &[u8]) -> Result<(), Violation> {
    if topic.is_empty() {
        return Err(Violation::new("empty topic name"));
    }
    let topic = utf8(topic)?;
    if topic.contains(['+', '#']) {
        return Err(Violation::new("wildcard in a topic name"));
    }
    Ok(())
}

/// Topics that start with `$` are the server's (MQTT 3.1.1 section 4.7.2): clients must not
/// exchange messages on them, and the router never routes them.
pub(crate) fn is_reserved_topic(topic: &[u8]) -> bool {
    topic.first() == Some(&b'$')
}

/// A topic filter: non-empty UTF-8; `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(filter: &str) -> Result<(), Violation> {
    if filter.is_empty() {
        return Err(Violation::new("empty topic filter"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(Violation::new("misplaced '#' in a topic filter"));
        }
        if level.contains('+') && level != "+" {
            return Err(Violation::new("misplaced '+' in a topic filter"));
        }
    }
    Ok(())
}

/// Checks one filter of a SUBSCRIBE/UNSUBSCRIBE, including `$share/GROUP/FILTER`.
fn check_filter(filter: &[u8]) -> Result<(), Violation> {
    let filter = utf8(filter)?;
    if let Some(rest) = filter.strip_prefix("$share/") {
        let (group, inner) = rest
            .split_once('/')
            .ok_or(Violation::new("shared subscription without a filter"))?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(Violation::new("invalid shared subscription group name"));
        }
        return valid_filter(inner);
    }
    valid_filter(filter)
}

/// Validates one complete client-to-broker packet after the CONNECT (`frame` includes the
/// fixed header). What is valid MQTT but refused by policy (a `$share` filter from a
/// persistent session, a `$` topic) is the connection's decision, not a violation.
pub(crate) fn check_packet(header: &FixedHeader, frame: &[u8]) -> Result<(), Violation> {
    let body = &frame[header.header_len..];
    let flags = header.first & 0x0F;
    match header.packet_type() {
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(Violation::new("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(Violation::new("PUBLISH with DUP set at QoS 0"));
            }
            let mut at = 0;
            let topic = field(body, &mut at)?;
            valid_topic_name(topic)?;
            if qos > 0 && u16_at(body, at)? == 0 {
                return Err(Violation::new("PUBLISH with packet id 0"));
            }
            Ok(())
        }
        4 | 5 | 7 if flags == 0 && body.len() == 2 => Ok(()),
        6 if flags == 0x02 && body.len() == 2 => Ok(()),
        4..=7 => Err(Violation::new("malformed acknowledgement packet")),
        8 | 10 => {
            let subscribe = header.packet_type() == 8;
            if flags != 0x02 {
                return Err(Violation::new("SUBSCRIBE/UNSUBSCRIBE with wrong flags"));
            }
            if u16_at(body, 0)? == 0 {
                return Err(Violation::new("SUBSCRIBE/UNSUBSCRIBE with packet id 0"));
            }
            let mut at = 2;
            if at == body.len() {
                return Err(Violation::new(
                    "SUBSCRIBE/UNSUBSCRIBE without a topic filter",
                ));
            }
            while at < body.len() {
                let filter = field(body, &mut at)?;
                check_filter(filter)?;
                if subscribe {
                    let qos = *body
                        .get(at)
                        .ok_or(Violation::new("SUBSCRIBE filter without a QoS"))?;
                    if qos > 2 {
                        return Err(Violation::new("SUBSCRIBE with an invalid QoS byte"));
                    }
                    at += 1;
                }
            }
            Ok(())
        }
        12 | 14 if flags == 0 && body.is_empty() => Ok(()),
        12 | 14 => Err(Violation::new("malformed PINGREQ/DISCONNECT")),
        1 => Err(Violation::new("second CONNECT on one connection")),
        2 | 9 | 11 | 13 => Err(Violation::new("server-to-client packet sent by a client")),
        _ => Err(Violation::new("reserved packet type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_field(out: &mut Vec<u8>, value: &[u8]) {
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }

    fn put_remaining(out: &mut Vec<u8>, mut len: usize) {
        loop {
            let mut digit = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                digit |= 0x80;
            }
            out.push(digit);
            if len == 0 {
                break;
            }
        }
    }

    fn connect_body(flags: u8, id: &str, rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
        put_field(&mut b, id.as_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn fixed_headers_are_read_incrementally_and_bounded() {
        assert_eq!(fixed_header(&[], 100), Ok(None));
        assert_eq!(fixed_header(&[0x30], 100), Ok(None));
        assert_eq!(fixed_header(&[0x30, 0x80], 100), Ok(None));
        let h = fixed_header(&[0x30, 0x05, 1], 100).unwrap().unwrap();
        assert_eq!((h.remaining, h.header_len, h.frame_len()), (5, 2, 7));
        let h = fixed_header(&[0x30, 0xC1, 0x02], 1000).unwrap().unwrap();
        assert_eq!(h.remaining, 321);
        assert!(fixed_header(&[0x30, 0xC1, 0x02], 100).is_err());
        assert!(fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX).is_err());
        assert!(fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX).is_ok());
    }

    #[test]
    fn connect_is_parsed_and_limits_give_return_codes() {
        let body = connect_body(0x02, "dev-1", &[]);
        let c = connect(&body, 23).unwrap();
        assert_eq!(c.client_id, "dev-1");
        assert!(c.clean_session && c.username.is_none());
        assert_eq!(c.keep_alive, 60);

        let long = connect_body(0x02, &"x".repeat(24), &[]);
        assert_eq!(
            connect(&long, 23).unwrap_err().code,
            Some(ReturnCode::IdentifierRejected)
        );
        let mut v3 = connect_body(0x02, "a", &[]);
        v3[6] = 3;
        assert_eq!(
            connect(&v3, 23).unwrap_err().code,
            Some(ReturnCode::BadProtocolVersion)
        );
        assert_eq!(
            connect(&connect_body(0x03, "a", &[]), 23).unwrap_err().code,
            None
        );
        assert_eq!(
            connect(&connect_body(0x00, "", &[]), 23).unwrap_err().code,
            Some(ReturnCode::IdentifierRejected)
        );
        assert!(connect(&connect_body(0x02, "", &[]), 23).is_ok());
        assert!(connect(&connect_body(0x42, "a", &[0, 1, b'p']), 23).is_err());
        assert!(connect(&connect_body(0x02, "a", &[9]), 23).is_err());
    }

    #[test]
    fn a_will_and_credentials_are_read() {
        let mut rest = Vec::new();
        put_field(&mut rest, b"will/t");
        put_field(&mut rest, b"bye");
        put_field(&mut rest, b"alice");
        put_field(&mut rest, b"pw");
        // will flag, will QoS 1, will retain, user name, password, clean session
        let body = connect_body(0xC0 | 0x20 | 0x08 | 0x04 | 0x02, "id", &rest);
        let c = connect(&body, 23).unwrap();
        assert_eq!(c.username, Some("alice"));
        assert_eq!(c.password, Some(&b"pw"[..]));
        assert_eq!(c.will, Some((0x2C, &b"will/t"[..], &b"bye"[..])));
    }

    fn frame(first: u8, body: &[u8]) -> (FixedHeader, Vec<u8>) {
        let mut f = vec![first];
        put_remaining(&mut f, body.len());
        f.extend_from_slice(body);
        (fixed_header(&f, 1 << 20).unwrap().unwrap(), f)
    }

    fn publish(topic: &str, qos: u8) -> (FixedHeader, Vec<u8>) {
        let mut body = Vec::new();
        put_field(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&[0, 1]);
        }
        body.extend_from_slice(b"payload");
        frame(0x30 | (qos << 1), &body)
    }

    #[test]
    fn publish_topics_are_checked() {
        for (topic, ok) in [
            ("sensors/data", true),
            ("a/b/c", true),
            ("$SYS/x", true),
            ("", false),
            ("a/+/b", false),
            ("a/#", false),
            ("nul\0", false),
        ] {
            let (h, f) = publish(topic, 1);
            assert_eq!(check_packet(&h, &f).is_ok(), ok, "{topic:?}");
        }
        let (h, f) = publish("t", 3);
        assert!(check_packet(&h, &f).is_err());
        assert!(is_reserved_topic(b"$SYS/x") && !is_reserved_topic(b"a/$"));
    }

    #[test]
    fn publish_fields_are_located_in_the_frame() {
        let (h, f) = publish("sensors/data", 1);
        let p = publish_fields(&h, &f).unwrap();
        assert_eq!((p.qos, p.pkid, p.retain), (1, 1, false));
        assert_eq!(&f[p.topic], b"sensors/data");
        assert_eq!(&f[p.payload], b"payload");
        let (mut h, mut f) = publish("t", 0);
        f[0] |= 0x01;
        h.first |= 0x01;
        let p = publish_fields(&h, &f).unwrap();
        assert_eq!((p.qos, p.pkid, p.retain), (0, 0, true));
        assert_eq!(&f[p.payload], b"payload");
    }

    fn subscribe(filter: &str) -> (FixedHeader, Vec<u8>) {
        let mut body = vec![0, 1];
        put_field(&mut body, filter.as_bytes());
        body.push(1);
        frame(0x82, &body)
    }

    #[test]
    fn subscribe_filters_are_checked() {
        for (filter, ok) in [
            ("sensors/#", true),
            ("+/x/+", true),
            ("#", true),
            ("a/#/b", false),
            ("a/b#", false),
            ("a+/b", false),
            ("", false),
            ("$share/g/sensors/#", true),
            ("$share//x", false),
            ("$share/g", false),
        ] {
            let (h, f) = subscribe(filter);
            assert_eq!(check_packet(&h, &f).is_ok(), ok, "{filter:?}");
        }
        let (h, f) = frame(0x82, &[0, 1]);
        assert!(check_packet(&h, &f).is_err());
        let (h, f) = frame(0x80, &[0, 1, 0, 1, b'a', 0]);
        assert!(check_packet(&h, &f).is_err());
    }

    #[test]
    fn other_packets_follow_the_fixed_rules() {
        let ok = [
            (0x40, &[0u8, 1][..]),
            (0x62, &[0, 1]),
            (0xC0, &[]),
            (0xE0, &[]),
        ];
        for (first, body) in ok {
            let (h, f) = frame(first, body);
            assert!(check_packet(&h, &f).is_ok(), "{first:#x}");
        }
        let bad = [
            (0x40, &[0u8][..]),
            (0x60, &[0, 1]),
            (0xC0, &[1]),
            (0x10, &[]),
            (0x20, &[0, 0]),
            (0x90, &[0, 1, 0]),
            (0x00, &[]),
            (0xF0, &[]),
        ];
        for (first, body) in bad {
            let (h, f) = frame(first, body);
            assert!(check_packet(&h, &f).is_err(), "{first:#x}");
        }
    }
}
