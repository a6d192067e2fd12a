//! Helpers for the hardening stories (`tests/hardening.rs`): MQTT packets written by hand
//! for raw-TCP attacks, a check that a fresh QoS 1 client can still publish and receive,
//! and a background QoS 1 stream that must not lose a single message while the broker is
//! attacked.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upper bound for anything the broker should do "at once".
pub const WAIT: Duration = Duration::from_secs(10);

/// MQTT's variable-length "remaining length".
pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut digit = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            digit |= 0x80;
        }
        out.push(digit);
        if len == 0 {
            return out;
        }
    }
}

/// A packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    p.extend(remaining_length(body.len()));
    p.extend_from_slice(body);
    p
}

/// A two-byte length-prefixed field.
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let mut f = (bytes.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(bytes);
    f
}

/// CONNECT with the given flags, client id and trailing fields (will, user, password).
pub fn connect_with(level: u8, flags: u8, keep_alive: u16, id: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend(field(id));
    body.extend_from_slice(rest);
    packet(0x10, &body)
}

/// A plain clean-session CONNECT.
pub fn connect(id: &str) -> Vec<u8> {
    connect_with(4, 0x02, 60, id.as_bytes(), &[])
}

/// A CONNECT with a user name and password.
pub fn connect_login(id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut rest = field(user.as_bytes());
    rest.extend(field(password.as_bytes()));
    connect_with(4, 0xC2, 60, id.as_bytes(), &rest)
}

pub fn publish(topic: &[u8], qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

pub fn subscribe(filter: &[u8], qos: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend(field(filter));
    body.push(qos);
    packet(0x82, &body)
}

/// A raw MQTT connection to the broker.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect to the broker");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream }
    }

    /// Opens a connection and completes a clean-session handshake.
    pub fn connected(addr: SocketAddr, id: &str) -> Raw {
        let mut raw = Raw::open(addr);
        raw.send(&connect(id));
        assert_eq!(raw.read_n(4), [0x20, 2, 0, 0], "CONNACK accepted for {id}");
        raw
    }

    /// Sends bytes; a broker that already closed may make this fail, which is fine.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).expect("read from broker");
        buf
    }

    /// Reads one whole packet: (first byte, body).
    pub fn read_packet(&mut self) -> (u8, Vec<u8>) {
        let first = self.read_n(1)[0];
        let mut len = 0usize;
        for i in 0..4 {
            let digit = self.read_n(1)[0];
            len |= usize::from(digit & 0x7F) << (7 * i);
            if digit & 0x80 == 0 {
                break;
            }
        }
        (first, self.read_n(len))
    }

    /// True once the broker has closed the connection (EOF or reset) within `limit`,
    /// whatever it sent before.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// A fresh clean-session client subscribes at QoS 1, publishes at QoS 1 to its own topic and
/// gets both the PUBACK and its message back. Panics (naming `case`) otherwise.
pub fn assert_alive(addr: SocketAddr, case: &str) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let topic = format!("live/{n}");
    let mut c = Raw::connected(addr, &format!("live-{n}"));
    c.send(&subscribe(topic.as_bytes(), 1));
    let (first, body) = c.read_packet();
    assert_eq!((first, body), (0x90, vec![0, 1, 1]), "SUBACK after {case}");
    c.send(&publish(topic.as_bytes(), 1, 7, b"alive"));
    let (mut puback, mut echoed) = (false, false);
    while !(puback && echoed) {
        let (first, body) = c.read_packet();
        match first >> 4 {
            4 => puback = body == [0, 7],
            3 => {
                echoed = body.ends_with(b"alive");
                let pkid = [body[2 + topic.len()], body[3 + topic.len()]];
                c.send(&packet(0x40, &pkid));
            }
            _ => panic!("unexpected packet {first:#x} after {case}"),
        }
    }
}

/// How many messages the stream's publisher had acknowledged, and which sequence numbers
/// its subscriber received; or why the stream broke.
type StreamOutcome = Result<(u64, BTreeSet<u64>), String>;

/// A QoS 1 stream through the broker for as long as a test runs: a subscriber and a paced
/// publisher (rumqttc), each on its own connection. [`Stream::finish`] checks that every
/// acknowledged message arrived.
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<StreamOutcome>>,
}

impl Stream {
    pub fn start(port: u16) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(stream(port, flag, ready_tx))
        });
        ready_rx
            .recv_timeout(WAIT)
            .expect("the background stream subscribed");
        Stream {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops publishing and returns how many messages were acknowledged, after checking that
    /// every one of them arrived.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let result = self
            .thread
            .take()
            .expect("finish once")
            .join()
            .expect("stream thread");
        let (sent, received) = result.unwrap_or_else(|e| panic!("background stream broke: {e}"));
        let missing: Vec<u64> = (1..=sent).filter(|s| !received.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "{} of {sent} background messages missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        sent
    }
}

async fn stream(
    port: u16,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> StreamOutcome {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let mut sub_options = MqttOptions::new("hardening-stream-sub", "127.0.0.1", port);
    sub_options.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_loop) = AsyncClient::new(sub_options, 100);
    sub.subscribe("stream/data", QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match sub_loop.poll().await {
            Ok(Event::Incoming(Incoming::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("subscriber: {e}")),
        }
    }
    let seen = Arc::clone(&received);
    let subscriber = tokio::spawn(async move {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let seq = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or("bad payload")?;
                    seen.lock().map_err(|_| "poisoned")?.insert(seq);
                }
                Ok(_) => {}
                Err(e) => return Err::<(), String>(format!("subscriber: {e}")),
            }
        }
    });
    let mut pub_options = MqttOptions::new("hardening-stream-pub", "127.0.0.1", port);
    pub_options.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pub_loop) = AsyncClient::new(pub_options, 100);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = Arc::clone(&acked);
    let driver = tokio::spawn(async move {
        loop {
            match pub_loop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::AcqRel);
                }
                Ok(_) => {}
                Err(e) => return Err::<(), String>(format!("publisher: {e}")),
            }
        }
    });
    let _ = ready.send(());
    let mut sent = 0u64;
    while !stop.load(Ordering::Acquire) {
        sent += 1;
        publisher
            .publish("stream/data", QoS::AtLeastOnce, false, sent.to_string())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        if driver.is_finished() || subscriber.is_finished() {
            break;
        }
    }
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let all_acked = acked.load(Ordering::Acquire) >= sent;
        let all_in = received.lock().map_err(|_| "poisoned")?.len() as u64 >= sent;
        if (all_acked && all_in) || driver.is_finished() || subscriber.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if driver.is_finished() {
        driver.await.map_err(|e| e.to_string())??;
    }
    if subscriber.is_finished() {
        subscriber.await.map_err(|e| e.to_string())??;
    }
    if acked.load(Ordering::Acquire) < sent {
        return Err(format!(
            "only {} of {sent} publishes acknowledged",
            acked.load(Ordering::Acquire)
        ));
    }
    let received = received.lock().map_err(|_| "poisoned")?.clone();
    Ok((sent, received))
}

/// Runs one of the workspace's binaries to its end with `env` set (and the MQTT_* variables
/// cleared first) and `stdin` as its input, killing it after `limit`: (status, stdout, stderr).
pub fn run(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut command = mqtt_harness::process::Proc::command(bin);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped());
    let name = bin
        .file_name()
        .map_or("binary".into(), |n| n.to_string_lossy());
    let mut proc = super::Proc::start(&name, &mut command);
    let _ = proc.take_stdin().write_all(stdin);
    let status = proc.wait(limit);
    (status, proc.stdout(), proc.stderr())
}

/// A small deterministic PRNG (xorshift64*), so random-input cases repeat exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = (self.next() as usize) % (max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}
