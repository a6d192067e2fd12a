//! Verified delivery, proved end to end: a rogue publisher inside the test sends a
//! crafted stream through the real broker (gaps, a lost tail, duplicates, reordering,
//! corrupted and foreign payloads) and the real subscriber must report exactly what was
//! done to it, with the exit code that says so. Then the real publisher, in JSON and
//! twice at once, must verify complete, stream by stream.

mod support;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context;
use mqtt_protocol::reading::{BinaryFormat, PayloadFormat, Reading};
use mqtt_protocol::timing::now_unix_us;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use serde_json::{json, Value};
use support::{num, publish, Broker, Subscriber};

const TOPIC: &str = "sensors/data";
const ROGUE_DEVICE: &str = "rogue";

/// Payloads for one stream of the rogue publisher, in the order they will be published.
/// rumqttd forwards one client's messages in order, so this is also the arrival order.
struct Script {
    stream_id: u64,
    total: u64,
    payloads: Vec<Vec<u8>>,
}

impl Script {
    fn new(stream_id: u64, total: u64) -> Script {
        Script {
            stream_id,
            total,
            payloads: Vec::new(),
        }
    }

    fn reading(&self, seq: u64) -> Reading<'static> {
        Reading {
            stream_id: self.stream_id,
            device_id: Cow::Borrowed(ROGUE_DEVICE),
            seq,
            total: self.total,
            sent_at_us: 0,
            lateness_us: None,
            temperature: 21.5,
            humidity: 40.0,
            padding: 0,
        }
    }

    fn encoded(&self, seq: u64, format: PayloadFormat) -> Vec<u8> {
        let mut buf = Vec::new();
        self.reading(seq).encode(format, &mut buf);
        buf
    }

    /// Valid binary readings.
    fn send(&mut self, seqs: impl IntoIterator<Item = u64>) -> &mut Self {
        for seq in seqs {
            let payload = self.encoded(seq, PayloadFormat::Binary);
            self.payloads.push(payload);
        }
        self
    }

    /// Valid readings in binary format 1, as publishers before format 2 wrote them.
    fn send_format_1(&mut self, seqs: impl IntoIterator<Item = u64>) -> &mut Self {
        for seq in seqs {
            let mut payload = Vec::new();
            self.reading(seq)
                .encode_binary_as(BinaryFormat::V1, &mut payload);
            self.payloads.push(payload);
        }
        self
    }

    /// A valid reading stamped as sent and left a minute from now: the clocks of its
    /// publisher and of the subscriber would disagree.
    fn send_from_the_future(&mut self, seq: u64) -> &mut Self {
        let mut payload = Vec::new();
        Reading {
            sent_at_us: now_unix_us() + 60_000_000,
            lateness_us: Some(0),
            ..self.reading(seq)
        }
        .encode_binary(&mut payload);
        self.payloads.push(payload);
        self
    }

    /// A valid reading in the JSON encoding, same stream.
    fn send_json(&mut self, seq: u64) -> &mut Self {
        let payload = self.encoded(seq, PayloadFormat::Json);
        self.payloads.push(payload);
        self
    }

    /// A binary reading with one byte in the middle flipped: its checksum fails.
    fn send_corrupt(&mut self, seq: u64) -> &mut Self {
        let mut payload = self.encoded(seq, PayloadFormat::Binary);
        let middle = payload.len() / 2;
        payload[middle] ^= 0x5a;
        self.payloads.push(payload);
        self
    }

    /// A JSON reading whose carried checksum is off by one bit.
    fn send_corrupt_json(&mut self, seq: u64) -> &mut Self {
        let mut doc: Value = serde_json::from_slice(&self.encoded(seq, PayloadFormat::Json))
            .expect("our own JSON reading parses");
        let crc = doc["crc32c"].as_u64().expect("JSON reading carries crc32c");
        doc["crc32c"] = json!(crc ^ 1);
        self.payloads
            .push(serde_json::to_vec(&doc).expect("serialising JSON"));
        self
    }

    /// A reading of this stream numbered past the stream's own total.
    fn send_past_total(&mut self) -> &mut Self {
        let past = self.total + 1;
        self.send([past])
    }

    /// Anything at all.
    fn send_raw(&mut self, payload: &[u8]) -> &mut Self {
        self.payloads.push(payload.to_vec());
        self
    }

    fn stream_hex(&self) -> String {
        format!("{:016x}", self.stream_id)
    }
}

/// Publishes `payloads` at QoS 1, in order, from a plain rumqttc client, and returns once
/// the broker acknowledged every one of them (bounded).
fn publish_rogue(port: u16, client_id: &str, payloads: &[Vec<u8>]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                rogue_session(port, client_id, payloads),
            )
            .await
            .context("the rogue publisher's run timed out")?
        })
        .unwrap_or_else(|e| panic!("rogue publisher: {e:#}"));
}

async fn rogue_session(port: u16, client_id: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    // The request queue is bounded, so the publishes go from their own task while this
    // one drives the event loop.
    let sender = {
        let client = client.clone();
        let payloads = payloads.to_vec();
        tokio::spawn(async move {
            for payload in payloads {
                client
                    .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                    .await
                    .context("queueing a publish")?;
            }
            anyhow::Ok(())
        })
    };
    let mut acked = 0;
    while acked < payloads.len() {
        let event = eventloop
            .poll()
            .await
            .with_context(|| format!("connection lost after {acked} PUBACKs"))?;
        if let Event::Incoming(Incoming::PubAck(_)) = event {
            acked += 1;
        }
    }
    sender.await.context("the publishing task panicked")??;
    client.disconnect().await.context("queueing DISCONNECT")?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// The report's summary of the stream with id `id` (16 hex digits).
fn stream<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no stream {id} in the report: {report}"))
}

#[test]
fn every_kind_of_damage_is_counted_exactly_and_corruption_exits_4() {
    let broker = Broker::start();
    let mut subscriber = Subscriber::start(broker.port, &["--count", "200", "--idle-timeout", "2"]);

    let mut script = Script::new(0x0bad_c0de_0000_0001, 200);
    script
        .send(1..=5)
        .send([5]) // duplicate 1: straight after the original
        .send(6..=9) // 10 comes later
        .send(11..=16)
        .send_corrupt(17) // corrupt 1: a reading that never arrives intact; 17..=19 missing
        .send(20..=30)
        .send_corrupt(30) // corrupt 2: a damaged copy of one that arrived
        .send(31..=40)
        .send([42, 41, 42]) // out of order 1 (41), duplicate 2 (42)
        .send(43..=60)
        .send([10]) // out of order 2
        .send(61..=99)
        .send([101, 102, 103, 100]) // out of order 3
        .send(104..=119)
        .send_json(120) // a valid JSON reading counts in the same stream
        .send(121..=149)
        .send_raw(b"hello") // foreign 1; 150 missing
        .send_corrupt_json(150) // corrupt 3, and 150 stays missing
        .send(151..=198) // 199 and 200, the tail, are lost
        .send_raw(b"\x00\x01") // foreign 2
        .send_past_total() // foreign 3: seq 201 of a stream of 200
        .send([1]); // duplicate 3: below the highest seq, but a duplicate, not reordered
    assert_eq!(script.payloads.len(), 194 + 3 + 3 + 3);
    publish_rogue(broker.port, "rogue-corrupt", &script.payloads);

    // Humans get the same verdict on stderr.
    subscriber.proc.wait_for_stderr(
        "Verdict: CORRUPT: 3 corrupt readings",
        Duration::from_secs(30),
    );
    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(num(&report, "expected"), 200, "{report}");
    assert_eq!(num(&report, "received"), 203, "{report}");
    assert_eq!(num(&report, "distinct"), 194, "{report}");
    assert_eq!(num(&report, "duplicates"), 3, "{report}");
    assert_eq!(num(&report, "missing"), 6, "{report}");
    assert_eq!(
        report["missing_ranges"],
        json!([[17, 19], [150, 150], [199, 200]]),
        "{report}"
    );
    assert_eq!(num(&report, "corrupt"), 3, "{report}");
    assert_eq!(num(&report, "foreign"), 3, "{report}");
    assert_eq!(num(&report, "out_of_order"), 3, "{report}");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["idle_timeout"], true, "{report}");
    assert!(report["last_decode_error"].is_string(), "{report}");

    assert_eq!(report["streams"].as_array().map(Vec::len), Some(1));
    let s = stream(&report, &script.stream_hex());
    assert_eq!(s["device_id"], ROGUE_DEVICE);
    assert_eq!(num(s, "total"), 200);
    assert_eq!(num(s, "distinct"), 194);
    assert_eq!(num(s, "duplicates"), 3);
    assert_eq!(num(s, "missing"), 6);
    assert_eq!(num(s, "out_of_order"), 3);
    assert_eq!(s["missing_ranges"], report["missing_ranges"]);

    // Corruption wins over missing readings.
    assert_eq!(status.code(), Some(4), "{report}");
}

#[test]
fn missing_readings_without_corruption_exit_3() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "100", "--idle-timeout", "2"]);

    let mut script = Script::new(0x0bad_c0de_0000_0002, 100);
    script
        .send(1..=49) // 50 missing
        .send(51..=70)
        .send([70]) // duplicate
        .send_raw(b"hello") // foreign, which spoils nothing
        .send(71..=90); // 91..=100 lost
    publish_rogue(broker.port, "rogue-missing", &script.payloads);

    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(num(&report, "received"), 91, "{report}");
    assert_eq!(num(&report, "distinct"), 89, "{report}");
    assert_eq!(num(&report, "duplicates"), 1, "{report}");
    assert_eq!(num(&report, "missing"), 11, "{report}");
    assert_eq!(
        report["missing_ranges"],
        json!([[50, 50], [91, 100]]),
        "{report}"
    );
    assert_eq!(num(&report, "corrupt"), 0, "{report}");
    assert_eq!(num(&report, "foreign"), 1, "{report}");
    assert_eq!(num(&report, "out_of_order"), 0, "{report}");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(num(stream(&report, &script.stream_hex()), "missing"), 11);
    assert_eq!(status.code(), Some(3), "{report}");
}

#[test]
fn duplicates_reordering_and_foreign_messages_do_not_spoil_a_complete_stream() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "50", "--idle-timeout", "10"]);

    let mut script = Script::new(0x0bad_c0de_0000_0003, 50);
    script
        .send(1..=20)
        .send([25, 21, 22, 23, 24]) // four out of order
        .send([21, 3]) // two duplicates
        .send_raw(b"hello")
        .send(26..=50); // the last reading completes the stream: the subscriber stops
    publish_rogue(broker.port, "rogue-complete", &script.payloads);

    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(num(&report, "distinct"), 50, "{report}");
    assert_eq!(num(&report, "duplicates"), 2, "{report}");
    assert_eq!(num(&report, "out_of_order"), 4, "{report}");
    assert_eq!(num(&report, "foreign"), 1, "{report}");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["idle_timeout"], false, "{report}");
    assert_eq!(status.code(), Some(0), "{report}");
}

#[test]
fn old_format_readings_verify_and_a_reading_from_the_future_warns_of_the_clocks() {
    let broker = Broker::start();
    let mut subscriber = Subscriber::start(broker.port, &["--count", "40", "--idle-timeout", "10"]);

    let mut script = Script::new(0x0bad_c0de_0000_0004, 40);
    script
        .send_format_1(1..=20)
        .send_from_the_future(21)
        .send(22..=40);
    publish_rogue(broker.port, "rogue-formats", &script.payloads);

    subscriber
        .proc
        .wait_for_stderr("before it left", Duration::from_secs(30));
    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(num(&report, "corrupt"), 0, "{report}");
    assert_eq!(num(&report, "arrived_before_sent"), 1, "{report}");
    // Only the one format 2 reading with a send time said when it left.
    assert_eq!(num(&report["transit_us"], "samples"), 1, "{report}");
    assert_eq!(num(&report["latency_us"], "samples"), 1, "{report}");
}

#[test]
fn a_json_run_of_the_real_publisher_verifies_complete() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "3000", "--idle-timeout", "10"]);

    let (status, published, stderr) = publish(
        broker.port,
        &["--count", "3000", "--payload", "json"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "publisher failed: {status}\n{stderr}");
    assert_eq!(published["payload"], "json");
    assert_eq!(num(&published, "acked"), 3000);

    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(num(&report, "distinct"), 3000, "{report}");
    assert_eq!(num(&report, "corrupt"), 0, "{report}");
    assert_eq!(num(&report, "foreign"), 0, "{report}");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    // The subscriber names the publisher's stream.
    let id = published["stream_id"].as_str().expect("stream_id");
    let s = stream(&report, id);
    assert_eq!(s["device_id"], published["device_id"]);
    assert_eq!(num(s, "total"), 3000);
    assert_eq!(num(s, "distinct"), 3000);
}

#[test]
fn two_publishers_at_once_are_verified_stream_by_stream() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "5000", "--idle-timeout", "10"]);

    let port = broker.port;
    let runs: Vec<(&str, u64)> = vec![("sensor-a", 2000), ("sensor-b", 3000)];
    let published: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&(device, count)| {
                scope.spawn(move || {
                    let count = count.to_string();
                    let (status, report, stderr) = publish(
                        port,
                        &["--count", &count, "--device-id", device],
                        Duration::from_secs(60),
                    );
                    assert!(
                        status.success(),
                        "publisher {device} failed: {status}\n{stderr}"
                    );
                    report
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .collect()
    });
    assert_ne!(published[0]["stream_id"], published[1]["stream_id"]);

    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(num(&report, "expected"), 5000, "{report}");
    assert_eq!(num(&report, "distinct"), 5000, "{report}");
    assert_eq!(
        report["streams"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    for ((device, count), p) in runs.iter().zip(&published) {
        let s = stream(&report, p["stream_id"].as_str().expect("stream_id"));
        assert_eq!(s["device_id"], *device, "{report}");
        assert_eq!(num(s, "total"), *count, "{report}");
        assert_eq!(num(s, "distinct"), *count, "{report}");
        assert_eq!(num(s, "missing"), 0, "{report}");
        assert_eq!(num(s, "duplicates"), 0, "{report}");
    }
}
