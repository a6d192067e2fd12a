//! A broker with a write-ahead log (`--data-dir`): what it acknowledged survives its own
//! crash, and bad files never crash or mislead it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::hardening::{connect_with, packet, publish, subscribe, Raw, WAIT};
use support::mqtt::{Client, Options};
use support::{num, publish_all, publish_ok, Broker, Proc, Publisher, Resumable, Subscriber};

/// A broker on `listen` keeping its log in `dir`, with `extra` flags.
fn broker(listen: &str, dir: &Path, extra: &[&str]) -> Broker {
    let mut args = vec!["--listen", listen, "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Broker::start_exact(&args)
}

/// The single log segment in `dir` that holds records (the newest one).
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a log segment")
}

/// A persistent session (clean session 0) for `id`; returns the connection and whether the
/// broker said it had the session.
fn persistent(port: u16, id: &str) -> (Raw, bool) {
    let mut raw = Raw::open(([127, 0, 0, 1], port).into());
    raw.send(&connect_with(4, 0x00, 60, id.as_bytes(), &[]));
    let connack = raw.read_n(4);
    assert_eq!(
        (connack[0], connack[3]),
        (0x20, 0),
        "CONNACK accepted for {id}"
    );
    (raw, connack[2] == 1)
}

/// Publishes at QoS 1 (retained if `retain`) and waits for the PUBACK.
fn publish_acked(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let mut raw = Raw::connected(([127, 0, 0, 1], port).into(), "storage-pub");
    let mut p = publish(topic.as_bytes(), 1, 7, payload);
    if retain {
        p[0] |= 0x01;
    }
    raw.send(&p);
    assert_eq!(raw.read_n(4), [0x40, 2, 0, 7], "PUBACK for {topic}");
}

/// Reads packets until a PUBLISH comes; returns its first byte, topic and payload.
fn next_publish(raw: &mut Raw) -> (u8, Vec<u8>, Vec<u8>) {
    loop {
        let (first, body) = raw.read_packet();
        if first >> 4 != 3 {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = body[2..2 + len].to_vec();
        let skip = if (first >> 1) & 3 > 0 { 2 } else { 0 };
        return (first, topic, body[2 + len + skip..].to_vec());
    }
}

#[test]
fn a_broker_killed_twice_mid_run_delivers_every_reading_it_acknowledged() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = broker("127.0.0.1:0", &data, &[]);
    let port = first.port;
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("sub.state");
    let count = N.to_string();
    let subscriber = Subscriber::start(
        port,
        &[
            "--count",
            &count,
            "--client-id",
            "wal-sub",
            "--state",
            state.to_str().unwrap(),
            "--idle-timeout",
            "20",
            "--reconnect-for",
            "60",
        ],
    );
    let mut publisher = Publisher::start(port, &["--count", &count, "--reconnect-for", "60"]);
    // Flat out; killed at 30% of the run, and again at 65%.
    let mut publisher_progress = |at: u64| {
        publisher.proc.wait_for_stderr(
            &format!("Messages published: {at}\n"),
            Duration::from_secs(60),
        );
    };
    publisher_progress(300_000);
    first.kill();
    let mut second = broker(&listen, &data, &[]);
    second
        .proc
        .wait_for_stderr("restored from", Duration::from_secs(30));
    publisher_progress(650_000);
    second.kill();
    let third = broker(&listen, &data, &[]);

    let (status, published, stderr) = publisher.finish(Duration::from_secs(120));
    assert!(status.success(), "{published}\n{stderr}");
    assert_eq!(num(&published, "acked"), N, "{published}");
    let (status, report) = subscriber.finish(Duration::from_secs(90));
    eprintln!("{report}");
    assert!(status.success(), "{report}\n{}", third.proc.stderr());
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert!(third.proc.stderr().contains("restored from"));
}

/// The broker's peak resident memory so far, in MiB (`VmHWM`).
fn peak_rss_mib(broker: &Broker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.proc.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib / 1024
}

#[test]
fn a_persistent_subscriber_away_for_a_million_readings_gets_them_all_from_disk() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut b = broker("127.0.0.1:0", &dir.path().join("data"), &[]);
    let subscriber = Resumable::new(N, "away-for-a-million", 30);
    let first = subscriber.start(b.port);
    b.proc.wait_for_stderr(
        "client \"away-for-a-million\" subscribed to",
        Duration::from_secs(30),
    );
    first.kill();
    // With storage the offline session holds no one: the whole run goes by while it is
    // away, and its backlog stays on disk, not in the router's memory.
    publish_all(b.port, N, Duration::from_secs(120));
    let away = peak_rss_mib(&b);
    // Back, and killed again a third of the way through what it missed: what it had
    // acknowledged is not owed again.
    let mut second = subscriber.start(b.port);
    second
        .proc
        .wait_for_stderr("Messages received: 300000\n", Duration::from_secs(60));
    second.kill();
    let third = subscriber.start(b.port);
    let report = third.finish_complete(Duration::from_secs(120), N);
    assert!(num(&report, "duplicates") < 10_000, "{report}");
    let log = b.proc.stderr();
    assert!(log.contains("it had missed from disk"), "{log}");
    assert!(!log.contains("rumqttd dropped"), "{log}");
    let peak = peak_rss_mib(&b);
    eprintln!(
        "broker peak RSS: {away} MiB while away, {peak} MiB after the catch-up; {} duplicates",
        num(&report, "duplicates")
    );
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("from disk"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        away <= 64 && peak <= 64,
        "peak RSS {away} MiB while away, {peak} MiB in all"
    );
}

#[test]
fn a_clean_session_taking_a_persistent_ones_id_is_owed_nothing_and_holds_no_one() {
    const N: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let b = broker("127.0.0.1:0", &dir.path().join("data"), &[]);
    // A persistent session goes away while N readings roll its place out of the router's
    // log (4 x 256 KiB hold about 12,000).
    let (mut away, _) = Client::connect(b.addr(), &Options::new("twice").persistent());
    assert_eq!(away.subscribe(&[("sensors/#", 1)]), [1]);
    away.disconnect();
    publish_all(b.port, N, Duration::from_secs(60));
    // The same id as a clean session ends that session: it reads from now on, and nothing
    // of the old one holds publishers back or is owed to it.
    let (mut clean, present) = Client::connect(b.addr(), &Options::new("twice"));
    assert!(!present, "a clean session starts afresh");
    assert_eq!(clean.subscribe(&[("sensors/#", 1)]), [1]);
    let port = b.port;
    let publisher = std::thread::spawn(move || {
        let count = N.to_string();
        let args = ["--count", count.as_str(), "--ack-timeout", "5"];
        publish_ok(port, &args, Duration::from_secs(60)).0
    });
    let mut got = 0;
    clean.messages_until(Duration::from_secs(60), |_| {
        got += 1;
        got == N
    });
    let published = publisher.join().unwrap();
    assert_eq!(num(&published, "acked"), N, "{published}");
    assert!(
        clean.next_message(Duration::from_millis(500)).is_none(),
        "only the readings published after it subscribed"
    );
}

#[test]
fn retained_messages_sessions_and_their_backlog_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = broker("127.0.0.1:0", &data, &[]);
    let port = first.port;
    let (mut session, present) = persistent(port, "away");
    assert!(!present);
    session.send(&subscribe(b"t/#", 1));
    assert_eq!(session.read_packet().0, 0x90, "SUBACK");
    session.send(&packet(0xE0, &[]));
    drop(session);
    publish_acked(port, "status/a", b"up", true);
    publish_acked(port, "t/x", b"while away", false);
    first.kill();

    let second = broker(&format!("127.0.0.1:{port}"), &data, &[]);
    let (mut session, present) = persistent(port, "away");
    assert!(present, "the session survived the restart");
    let (first_byte, topic, payload) = next_publish(&mut session);
    assert_eq!(
        (topic.as_slice(), payload.as_slice()),
        (&b"t/x"[..], &b"while away"[..])
    );
    assert_eq!((first_byte >> 1) & 3, 1, "at the subscription's QoS");

    let mut fresh = Raw::connected(([127, 0, 0, 1], port).into(), "fresh");
    fresh.send(&subscribe(b"status/+", 1));
    let (first_byte, topic, payload) = next_publish(&mut fresh);
    assert_eq!(
        (topic.as_slice(), payload.as_slice()),
        (&b"status/a"[..], &b"up"[..])
    );
    assert_eq!(first_byte & 1, 1, "retain flag set");
    let stderr = second.proc.stderr();
    assert!(
        stderr.contains("1 persistent sessions (1 subscriptions), 1 retained messages"),
        "{stderr}"
    );
}

/// Starts a broker on `dir` that must refuse; returns its stderr.
fn refused(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("mqtt-broker", &args);
    let status = proc.wait(WAIT);
    assert_eq!(status.code(), Some(1), "{}", proc.output());
    proc.stderr()
}

/// A data directory (`data` in the scratch directory returned) with a persistent session
/// subscribed to `t/#` and `n` readings for it acknowledged, left by a killed broker.
fn killed_with_backlog(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut b = broker("127.0.0.1:0", &data, &[]);
    let (mut session, _) = persistent(b.port, "away");
    session.send(&subscribe(b"t/#", 1));
    assert_eq!(session.read_packet().0, 0x90, "SUBACK");
    session.send(&packet(0xE0, &[]));
    for i in 0..n {
        publish_acked(b.port, "t/x", format!("reading {i}").as_bytes(), false);
    }
    // A checkpoint is written once a second: wait for the first, so there is one to damage.
    let deadline = std::time::Instant::now() + WAIT;
    while !data.join("state").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    b.kill();
    (dir, data)
}

/// Reads the next `n` publishes of `session` (QoS 1), acknowledging each; returns their
/// payloads.
fn read_back(session: &mut Raw, n: u8) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (_, body) = loop {
                let (first, body) = session.read_packet();
                if first >> 4 == 3 {
                    break (first, body);
                }
            };
            let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let packet_id = &body[2 + len..4 + len];
            session.send(&packet(0x40, packet_id));
            String::from_utf8(body[4 + len..].to_vec()).unwrap()
        })
        .collect()
}

#[test]
fn a_torn_tail_on_the_log_or_the_state_file_is_cut_off_and_the_broker_starts() {
    let (_dir, data) = killed_with_backlog(3);
    // Half a record at the end of the log, as a crash mid-write leaves it.
    let segment = newest_segment(&data);
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&100u32.to_le_bytes());
    bytes.extend_from_slice(&(!100u32).to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 20]);
    std::fs::write(&segment, &bytes).unwrap();
    // And the state file cut short.
    let state = data.join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len - 1)
        .unwrap();

    let b = broker("127.0.0.1:0", &data, &[]);
    let (mut session, present) = persistent(b.port, "away");
    let stderr = b.proc.stderr();
    assert!(stderr.contains("torn write"), "{stderr}");
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), whole as u64);
    assert!(present, "{stderr}");
    assert_eq!(
        read_back(&mut session, 3),
        ["reading 0", "reading 1", "reading 2"]
    );
}

#[test]
fn a_flipped_byte_refuses_to_start_until_repair_skips_the_damaged_record() {
    let (_dir, data) = killed_with_backlog(5);
    let segment = newest_segment(&data);
    let mut bytes = std::fs::read(&segment).unwrap();
    // Inside the third-last record (each is 36 bytes): damage with data behind it.
    let at = bytes.len() - 90;
    bytes[at] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let stderr = refused(&data, &[]);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains(segment.to_str().unwrap()), "{line}");
    assert!(line.contains("damaged record at offset"), "{line}");
    assert!(line.contains("--repair"), "{line}");

    let mut b = broker("127.0.0.1:0", &data, &["--repair"]);
    let (mut session, present) = persistent(b.port, "away");
    assert!(present);
    let got = read_back(&mut session, 4);
    assert_eq!(got.len(), 4, "one of five readings damaged: {got:?}");
    b.proc.wait_for_stderr("1 damaged records skipped", WAIT);
    drop(b);
    // Repaired for good: the next start needs no --repair.
    let again = broker("127.0.0.1:0", &data, &[]);
    drop(again);
}

#[test]
fn a_lock_left_by_a_killed_broker_never_blocks_and_a_live_ones_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut live = broker("127.0.0.1:0", &data, &[]);
    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains(&format!(
            "in use by another broker (process {})",
            live.proc.pid()
        )),
        "{stderr}"
    );
    live.kill();
    let _next = broker("127.0.0.1:0", &data, &[]);
}

#[test]
fn a_log_of_another_format_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("wal")).unwrap();
    let mut header = b"MQTTWAL\0".to_vec();
    header.extend_from_slice(&2u32.to_le_bytes());
    std::fs::write(data.join("wal/00000000000000000001.wal"), header).unwrap();
    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains("written in storage format version 2, this broker reads version 1"),
        "{stderr}"
    );
}
