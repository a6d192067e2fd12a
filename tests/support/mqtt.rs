//! A small blocking MQTT 3.1.1 client written for conformance stories: every packet is ours to
//! shape (keep-alive 0, a will of any QoS, acknowledgements held back), every wait is bounded,
//! and whatever arrives while the client waits for something else is kept, not lost.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::hardening::{connect_with, field, packet, WAIT};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct Options {
    pub id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    /// Topic, message, QoS, retain.
    pub will: Option<(String, Vec<u8>, u8, bool)>,
    /// User name and password.
    pub login: Option<(String, String)>,
}

impl Options {
    /// A clean session with keep-alive 0 (the Paho test client's default).
    pub fn new(id: &str) -> Options {
        Options {
            id: id.to_owned(),
            clean_session: true,
            keep_alive: 0,
            will: None,
            login: None,
        }
    }

    pub fn login(mut self, user: &str, password: &str) -> Options {
        self.login = Some((user.to_owned(), password.to_owned()));
        self
    }

    pub fn persistent(mut self) -> Options {
        self.clean_session = false;
        self
    }

    pub fn keep_alive(mut self, seconds: u16) -> Options {
        self.keep_alive = seconds;
        self
    }

    pub fn will(mut self, topic: &str, message: &[u8], qos: u8) -> Options {
        self.will = Some((topic.to_owned(), message.to_vec(), qos, false));
        self
    }

    fn connect_packet(&self) -> Vec<u8> {
        let mut flags = 0u8;
        let mut rest = Vec::new();
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some((topic, message, qos, retain)) = &self.will {
            flags |= 0x04 | (qos << 3) | if *retain { 0x20 } else { 0 };
            rest.extend(field(topic.as_bytes()));
            rest.extend(field(message));
        }
        if let Some((user, password)) = &self.login {
            flags |= 0xC0;
            rest.extend(field(user.as_bytes()));
            rest.extend(field(password.as_bytes()));
        }
        connect_with(4, flags, self.keep_alive, self.id.as_bytes(), &rest)
    }
}

/// A message the client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
}

/// The topics of `messages`, in order.
pub fn topics(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.topic.as_str()).collect()
}

/// How a CONNECT was answered, when it was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// CONNACK with this return code.
    Code(u8),
    /// The broker closed the connection without a CONNACK.
    Closed,
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    next_pkid: u16,
    /// Messages that arrived while the client waited for something else.
    inbox: VecDeque<Message>,
    /// Whether received QoS 1/2 messages are acknowledged.
    pub acknowledge: bool,
}

impl Client {
    /// Connects and expects CONNACK 0; returns the client and the session-present flag.
    pub fn connect(addr: SocketAddr, options: &Options) -> (Client, bool) {
        Client::try_connect(addr, options)
            .unwrap_or_else(|refused| panic!("CONNECT of {:?} refused: {refused:?}", options.id))
    }

    /// Connects; returns the refusal instead of panicking.
    pub fn try_connect(addr: SocketAddr, options: &Options) -> Result<(Client, bool), Refused> {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect to the broker");
        stream.set_nodelay(true).expect("nodelay");
        let mut client = Client {
            stream,
            buf: Vec::new(),
            next_pkid: 0,
            inbox: VecDeque::new(),
            acknowledge: true,
        };
        client.send(&options.connect_packet());
        match client.read_packet(Instant::now() + WAIT) {
            Some((0x20, body)) if body.len() == 2 && body[1] == 0 => {
                let session_present = body[0] & 1 == 1;
                Ok((client, session_present))
            }
            Some((0x20, body)) if body.len() == 2 => Err(Refused::Code(body[1])),
            Some(other) => panic!("expected a CONNACK, got {other:?}"),
            None => Err(Refused::Closed),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        self.next_pkid
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        let pkid = self.pkid();
        let mut body = pkid.to_be_bytes().to_vec();
        for (filter, qos) in filters {
            body.extend(field(filter.as_bytes()));
            body.push(*qos);
        }
        self.send(&packet(0x82, &body));
        let body = self.expect(0x90, pkid);
        body[2..].to_vec()
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub fn unsubscribe(&mut self, filters: &[&str]) {
        let pkid = self.send_unsubscribe(filters);
        self.expect(0xB0, pkid);
    }

    /// Sends UNSUBSCRIBE without waiting for the answer; returns its packet id.
    pub fn send_unsubscribe(&mut self, filters: &[&str]) -> u16 {
        let pkid = self.pkid();
        let mut body = pkid.to_be_bytes().to_vec();
        for filter in filters {
            body.extend(field(filter.as_bytes()));
        }
        self.send(&packet(0xA2, &body));
        pkid
    }

    /// Whether packet `first` with packet id `pkid` comes within `limit`, keeping messages
    /// that come first.
    pub fn gets_within(&mut self, first: u8, pkid: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some((got, body)) = self.read_packet(deadline) {
            if got == first && body.get(..2) == Some(&pkid.to_be_bytes()[..]) {
                return true;
            }
            if let Some(message) = self.handle(got, &body) {
                self.inbox.push_back(message);
            }
        }
        false
    }

    /// Publishes and completes the QoS handshake (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let pkid = if qos > 0 { self.pkid() } else { 0 };
        let mut body = field(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        self.send(&packet(0x30 | (qos << 1) | u8::from(retain), &body));
        match qos {
            1 => {
                self.expect(0x40, pkid);
            }
            2 => {
                self.expect(0x50, pkid);
                self.send(&packet(0x62, &pkid.to_be_bytes()));
                self.expect(0x70, pkid);
            }
            _ => {}
        }
    }

    /// Sends PINGREQ and waits for PINGRESP: proof that the connection is alive.
    pub fn ping(&mut self) {
        self.send(&[0xC0, 0]);
        self.expect(0xD0, 0);
    }

    /// The next message, waiting up to `timeout`.
    pub fn next_message(&mut self, timeout: Duration) -> Option<Message> {
        if let Some(message) = self.inbox.pop_front() {
            return Some(message);
        }
        let deadline = Instant::now() + timeout;
        while let Some((first, body)) = self.read_packet(deadline) {
            if let Some(message) = self.handle(first, &body) {
                return Some(message);
            }
        }
        None
    }

    /// Messages until one satisfies `last` (included), waiting up to `timeout` in all.
    pub fn messages_until(
        &mut self,
        timeout: Duration,
        mut last: impl FnMut(&Message) -> bool,
    ) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(message) =
            self.next_message(deadline.saturating_duration_since(Instant::now()))
        {
            let done = last(&message);
            got.push(message);
            if done {
                return got;
            }
        }
        panic!("the awaited message did not come within {timeout:?}; got {got:?}");
    }

    /// Sends DISCONNECT and closes.
    pub fn disconnect(mut self) {
        self.send(&[0xE0, 0]);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// True once the broker has closed the connection, within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self.read_some(deadline) {
                Ok(true) => continue,
                Ok(false) => return false,
                Err(()) => return true,
            }
        }
    }

    /// Waits for packet `first` with packet id `pkid` (0: any), keeping messages that come
    /// first.
    fn expect(&mut self, first: u8, pkid: u16) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        while let Some((got, body)) = self.read_packet(deadline) {
            if got == first && (pkid == 0 || body.get(..2) == Some(&pkid.to_be_bytes()[..])) {
                return body;
            }
            if let Some(message) = self.handle(got, &body) {
                self.inbox.push_back(message);
            }
        }
        panic!("no packet {first:#x} (id {pkid}) within {WAIT:?}");
    }

    /// Acknowledges what needs it; returns a message if the packet was one.
    fn handle(&mut self, first: u8, body: &[u8]) -> Option<Message> {
        match first >> 4 {
            3 => {
                let qos = (first >> 1) & 0x03;
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                let mut at = 2 + topic_len;
                let pkid = if qos > 0 {
                    at += 2;
                    [body[at - 2], body[at - 1]]
                } else {
                    [0, 0]
                };
                if self.acknowledge {
                    match qos {
                        1 => self.send(&packet(0x40, &pkid)),
                        2 => self.send(&packet(0x50, &pkid)),
                        _ => {}
                    }
                }
                Some(Message {
                    topic,
                    payload: body[at..].to_vec(),
                    qos,
                    retain: first & 0x01 != 0,
                    dup: first & 0x08 != 0,
                })
            }
            6 => {
                if self.acknowledge {
                    self.send(&packet(0x70, &body[..2]));
                }
                None
            }
            _ => None,
        }
    }

    /// One whole packet, or `None` if none came by `deadline` or the connection closed.
    fn read_packet(&mut self, deadline: Instant) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(packet) = self.take_packet() {
                return Some(packet);
            }
            if self.read_some(deadline) != Ok(true) {
                return None;
            }
        }
    }

    fn take_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut len = 0usize;
        for i in 0..4 {
            let digit = *self.buf.get(1 + i)?;
            len |= usize::from(digit & 0x7F) << (7 * i);
            if digit & 0x80 == 0 {
                let start = 2 + i;
                if self.buf.len() < start + len {
                    return None;
                }
                let first = self.buf[0];
                let body = self.buf[start..start + len].to_vec();
                self.buf.drain(..start + len);
                return Some((first, body));
            }
        }
        None
    }

    /// Reads what is there: `Ok(true)` if bytes came, `Ok(false)` at the deadline, `Err` when
    /// the connection is closed.
    fn read_some(&mut self, deadline: Instant) -> Result<bool, ()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(_) => Err(()),
        }
    }
}
