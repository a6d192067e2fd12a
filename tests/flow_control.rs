//! Lossless by default: a slow subscriber slows the publishers feeding it and nothing is
//! dropped, with the broker's memory small. Real processes on loopback; each story says what
//! it configures, and uses the shipped defaults otherwise.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::hardening::{publish as publish_packet, WAIT};
use support::mqtt::{Client, Options};
use support::{num, publish, publish_all, Broker, Resumable, Subscriber};

/// What the broker says when it stops: (its stderr, `dropped=`, `held_s=`, `peak_rss_mib=`),
/// and the sum of its `dropped=` ERROR lines.
struct Shutdown {
    log: String,
    dropped_total: u64,
    dropped_lines: u64,
    held_s: f64,
    qos0_dropped: u64,
    peak_mib: u64,
}

fn stop(mut broker: Broker) -> Shutdown {
    broker.proc.signal(libc::SIGTERM);
    broker.proc.wait(Duration::from_secs(15));
    let log = broker.proc.stderr();
    let field = |line: &str, key: &str| -> Option<String> {
        Some(
            line.split(key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned(),
        )
    };
    let last = log
        .lines()
        .find(|l| l.contains("shutting down"))
        .unwrap_or_else(|| panic!("no shutdown line:\n{log}"))
        .to_owned();
    let number = |key: &str| field(&last, key).and_then(|v| v.parse::<f64>().ok());
    let dropped_lines = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("rumqttd dropped"))
        .filter_map(|l| field(l, "dropped=")?.parse::<u64>().ok())
        .sum();
    Shutdown {
        dropped_total: number("dropped=").unwrap_or_else(|| panic!("{last}")) as u64,
        held_s: number("held_s=").unwrap_or_else(|| panic!("{last}")),
        qos0_dropped: number("qos0_dropped=").unwrap_or_else(|| panic!("{last}")) as u64,
        peak_mib: number("peak_rss_mib=").unwrap_or_else(|| panic!("{last}")) as u64,
        dropped_lines,
        log,
    }
}

fn rate(report: &serde_json::Value) -> f64 {
    report["msgs_per_s"].as_f64().unwrap_or(0.0)
}

/// A subscriber for `n` readings that takes `delay_us` µs over each one, started with
/// `extra` flags too.
fn slow_subscriber(port: u16, n: u64, delay_us: u32, extra: &[&str]) -> Subscriber {
    let (count, delay) = (n.to_string(), delay_us.to_string());
    let mut args = vec!["--count", &count, "--process-delay-us", &delay];
    args.extend_from_slice(extra);
    Subscriber::start(port, &args)
}

/// `n` readings from a publisher at full speed to a subscriber taking 20 µs over each
/// (at most about 50,000 readings/s, against a publisher several times faster), through
/// `broker`: every reading acknowledged and none missing, whatever the log's size. Returns
/// the publisher's and the subscriber's reports and what the broker said when it stopped.
fn slow_subscriber_run(broker: Broker, n: u64) -> (serde_json::Value, serde_json::Value, Shutdown) {
    let subscriber = slow_subscriber(broker.port, n, 20, &[]);
    let published = publish_all(broker.port, n, Duration::from_secs(120));
    let (status, report) = subscriber.finish(Duration::from_secs(120));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(num(&report, "distinct"), n, "{report}");
    let shutdown = stop(broker);
    assert_eq!(shutdown.dropped_total, 0, "{}", shutdown.log);
    (published, report, shutdown)
}

#[test]
fn a_slow_subscriber_slows_the_publisher_and_loses_nothing() {
    let (published, report, shutdown) = slow_subscriber_run(Broker::start(), 200_000);
    let (pub_rate, sub_rate) = (rate(&published), rate(&report));
    eprintln!(
        "publisher {pub_rate:.0} msg/s, subscriber {sub_rate:.0} msg/s, held {} s, broker peak \
         {} MiB",
        shutdown.held_s, shutdown.peak_mib
    );
    assert!(
        shutdown.held_s > 0.0,
        "the publisher was held: {}",
        shutdown.log
    );
    assert!(
        pub_rate < 2.0 * sub_rate,
        "the publisher's rate fell to the subscriber's: {pub_rate:.0} vs {sub_rate:.0} msg/s"
    );
    let window_full = published["window_full_s"].as_f64().unwrap_or(0.0);
    let elapsed = published["elapsed_s"].as_f64().unwrap_or(0.0);
    assert!(
        window_full > elapsed / 2.0,
        "the publisher spent most of its run waiting: {published}"
    );
    assert!(shutdown
        .log
        .contains("flow control holds publishers to sensors/#"));
}

#[test]
fn with_the_earlier_default_of_three_1_mib_segments_a_slow_subscriber_loses_nothing() {
    let broker =
        Broker::start_with_config("[router]\nmax_segment_size = 1048576\nmax_segment_count = 3\n");
    let (_, _, shutdown) = slow_subscriber_run(broker, 200_000);
    assert!(shutdown.held_s > 0.0, "held: {}", shutdown.log);
}

#[test]
fn a_log_of_two_small_segments_still_loses_nothing() {
    let broker =
        Broker::start_with_config("[router]\nmax_segment_size = 65536\nmax_segment_count = 2\n");
    slow_subscriber_run(broker, 100_000);
}

#[test]
fn without_holding_a_slow_subscriber_loses_exactly_what_the_broker_counts() {
    // The old behaviour, one setting away: rumqttd's roll-over decides, the broker counts.
    const N: u64 = 200_000;
    let broker = Broker::start_with_config(
        "[flow]\nhold = false\n[router]\nmax_segment_size = 1048576\nmax_segment_count = 3\n",
    );
    // 100 µs per reading: at most 10,000 readings/s, against a publisher at 100,000+.
    let subscriber = slow_subscriber(broker.port, N, 100, &["--idle-timeout", "3"]);
    publish_all(broker.port, N, Duration::from_secs(120));
    let (_, report) = subscriber.finish(Duration::from_secs(120));
    let missing = num(&report, "missing");
    let shutdown = stop(broker);
    eprintln!(
        "subscriber missing {missing}, broker reported {} dropped (total {})",
        shutdown.dropped_lines, shutdown.dropped_total
    );
    assert!(
        missing > 0,
        "the subscriber kept up; the test proves nothing: {report}"
    );
    assert_eq!(shutdown.dropped_lines, missing, "{}", shutdown.log);
    assert_eq!(shutdown.dropped_total, missing, "{}", shutdown.log);
    assert_eq!(num(&report, "distinct") + missing, N);
}

#[test]
fn a_fast_and_a_slow_subscriber_of_one_filter_both_get_everything() {
    const N: u64 = 100_000;
    let broker = Broker::start();
    let count = N.to_string();
    let fast = Subscriber::start(broker.port, &["--count", &count]);
    let slow = slow_subscriber(broker.port, N, 20, &[]);
    let (status, _, stderr) = publish(broker.port, &["--count", &count], Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    for subscriber in [fast, slow] {
        let (status, report) = subscriber.finish(Duration::from_secs(120));
        assert!(status.success(), "{report}");
        assert_eq!(num(&report, "missing"), 0, "{report}");
    }
    assert_eq!(stop(broker).dropped_total, 0);
}

#[test]
fn a_client_that_publishes_into_a_filter_it_reads_slowly_completes() {
    // One connection, a log of two 4 KiB segments (about 60 messages each) and a window of
    // 10 toward the client: it sends 2,000 publishes before it reads anything, so most of
    // them are held back; it then reads its own messages, and its acknowledgements of them
    // let the rest go.
    const N: u16 = 2000;
    let broker = Broker::start_with_config(
        "[connections]\nmax_inflight_messages = 10\n\
         [router]\nmax_segment_size = 4096\nmax_segment_count = 2\n",
    );
    let addr = broker.addr();
    let (mut client, _) = Client::connect(addr, &Options::new("loopback"));
    assert_eq!(client.subscribe(&[("loop/#", 1)]), [1]);
    let payload = [7u8; 60];
    for pkid in 1..=N {
        client.send(&publish_packet(b"loop/x", 1, pkid, &payload));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = 0;
    while received < usize::from(N) {
        assert!(Instant::now() < deadline, "stalled after {received} of {N}");
        if client.next_message(WAIT).is_some() {
            received += 1;
        }
    }
    client.ping();
    client.disconnect();
    let shutdown = stop(broker);
    assert_eq!(shutdown.dropped_total, 0, "{}", shutdown.log);
    assert!(
        shutdown
            .log
            .contains("flow control holds publishers to loop/#"),
        "publishes were held: {}",
        shutdown.log
    );
}

#[test]
fn a_subscriber_killed_for_3_s_holds_the_publisher_and_resumes_complete() {
    const N: u64 = 200_000;
    let broker = Broker::start();
    let subscriber = Resumable::new(N, "held-for-me", 10);
    let mut first = subscriber.start(broker.port);
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish(port, &["--count", &N.to_string()], Duration::from_secs(120))
    });
    first
        .proc
        .wait_for_stderr("Messages received: 50000\n", Duration::from_secs(60));
    first.kill();
    // Away for three seconds: within [flow] offline_hold_s (30), so it holds publishers.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !publisher.is_finished(),
        "the publisher was held while the subscriber was away"
    );
    let second = subscriber.start(broker.port);
    let (status, published, stderr) = publisher.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(num(&published, "acked"), N);
    let (status, report) = second.finish(Duration::from_secs(120));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    let shutdown = stop(broker);
    assert_eq!(shutdown.dropped_total, 0, "{}", shutdown.log);
    assert!(
        shutdown.held_s >= 2.5,
        "held for the outage: {}",
        shutdown.log
    );
}

#[test]
fn an_unsubscribe_left_unanswered_when_the_connection_drops_still_ends_the_subscription() {
    // A persistent session stops acknowledging: with the router's 100 messages in flight,
    // the router holds its answers too, so the UNSUBACK has not come when the connection
    // drops. The router did remove the subscription; so must flow control, or the session,
    // back online and subscribed to nothing, would hold every publisher to that filter once
    // its log fills (two segments of about 230 messages here).
    let broker =
        Broker::start_with_config("[router]\nmax_segment_size = 16384\nmax_segment_count = 2\n");
    let addr = broker.addr();
    let quitter = Options::new("quitter").persistent();
    let (mut client, _) = Client::connect(addr, &quitter);
    client.acknowledge = false;
    assert_eq!(client.subscribe(&[("gone/#", 1)]), [1]);
    let (mut feeder, _) = Client::connect(addr, &Options::new("feeder"));
    let payload = [7u8; 60];
    for _ in 0..150 {
        feeder.publish("gone/x", &payload, 1, false);
    }
    for received in 0..100 {
        assert!(
            client.next_message(WAIT).is_some(),
            "only {received} of the router's window of 100 came"
        );
    }
    let pkid = client.send_unsubscribe(&["gone/#"]);
    assert!(
        !client.gets_within(0xB0, pkid, Duration::from_millis(500)),
        "the premise: the router answers nothing while its window is full"
    );
    drop(client);

    let (back, session_present) = Client::connect(addr, &quitter);
    assert!(session_present);
    for n in 0..2000 {
        // Each waits for its PUBACK (at most 10 s): a held publisher fails here.
        feeder.publish("gone/x", &payload, 1, false);
        if n % 500 == 0 {
            eprintln!("published {n} more");
        }
    }
    feeder.disconnect();
    back.disconnect();
    let shutdown = stop(broker);
    assert!(
        !shutdown
            .log
            .contains("flow control holds publishers to gone/#"),
        "{}",
        shutdown.log
    );
}

/// A persistent session (subscribes with QoS 1, then drops its connection without reading)
/// that stays away.
fn leave_a_persistent_session(addr: SocketAddr, id: &str, filter: &str) {
    let (mut client, _) = Client::connect(addr, &Options::new(id).persistent());
    assert_eq!(client.subscribe(&[(filter, 1)]), [1]);
    client.disconnect();
}

#[test]
fn an_offline_session_past_its_hold_loses_exactly_what_is_counted_and_the_run_goes_on() {
    const N: u64 = 50_000;
    let broker = Broker::start_with_config(
        "[flow]\noffline_hold_s = 1\n[router]\nmax_segment_size = 65536\nmax_segment_count = 2\n",
    );
    let subscriber = Resumable::new(N, "away-too-long", 3);
    // The session exists (subscribed) and is offline before anything is published.
    subscriber.start(broker.port).kill();
    let started = Instant::now();
    // The run goes on.
    publish_all(broker.port, N, Duration::from_secs(120));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "held for offline_hold_s first"
    );
    let (_, report) = subscriber
        .start(broker.port)
        .finish(Duration::from_secs(120));
    let missing = num(&report, "missing");
    let shutdown = stop(broker);
    eprintln!(
        "missing {missing}, broker counted {}",
        shutdown.dropped_total
    );
    assert!(
        missing > 0,
        "the log rolled over while it was away: {report}"
    );
    assert_eq!(shutdown.dropped_total, missing, "{}", shutdown.log);
    assert!(shutdown
        .log
        .contains("no longer holds publishers to sensors/#"));
}

#[test]
fn a_publisher_outlasts_the_hold_only_if_its_ack_timeout_is_longer() {
    const N: u64 = 20_000;
    let config =
        "[flow]\noffline_hold_s = 4\n[router]\nmax_segment_size = 16384\nmax_segment_count = 2\n";
    for (ack_timeout, outlasts) in [("2", false), ("8", true)] {
        let broker = Broker::start_with_config(config);
        let addr = broker.addr();
        leave_a_persistent_session(addr, "held-by-an-absent-one", "sensors/#");
        let (status, published, stderr) = publish(
            broker.port,
            &["--count", &N.to_string(), "--ack-timeout", ack_timeout],
            Duration::from_secs(60),
        );
        if outlasts {
            assert!(status.success(), "{stderr}");
            assert_eq!(num(&published, "acked"), N);
        } else {
            // Exit 3: readings left unacknowledged.
            assert_eq!(status.code(), Some(3), "{stderr}");
            assert!(stderr.contains("acknowledged nothing for 2 s"), "{stderr}");
        }
    }
}

#[test]
fn qos0_publishes_beyond_the_bound_are_dropped_while_held_and_the_connection_stays() {
    // A QoS 0 flood into a log whose reader does not read: the broker holds 1000 of them and
    // drops the rest (QoS 0 promises nothing), and the connection keeps working.
    let broker =
        Broker::start_with_config("[router]\nmax_segment_size = 4096\nmax_segment_count = 2\n");
    let addr = broker.addr();
    let (mut reader, _) = Client::connect(addr, &Options::new("not-reading"));
    reader.subscribe(&[("flood/#", 1)]);
    reader.acknowledge = false;
    let (mut flooder, _) = Client::connect(addr, &Options::new("flooder"));
    for _ in 0..5000 {
        flooder.send(&publish_packet(b"flood/x", 0, 0, &[1u8; 60]));
    }
    // PINGREQ is read and answered behind the held publishes.
    flooder.ping();
    drop(reader);
    let shutdown = stop(broker);
    eprintln!("QoS 0 dropped while held: {}", shutdown.qos0_dropped);
    assert!(shutdown.qos0_dropped > 0, "{}", shutdown.log);
    assert!(shutdown.qos0_dropped < 5000, "{}", shutdown.log);
    assert_eq!(shutdown.dropped_total, 0, "{}", shutdown.log);
}

#[test]
fn a_subscriber_switching_to_the_routers_window_mid_stream_gets_everything_once() {
    // A clean session under the broker's window of 10 gets paced messages directly (the
    // router's copies are only acknowledged, in batches), then subscribes at QoS 2, which
    // puts it under the router's window: from then on its own acknowledgements go to the
    // router at once, and the router drops a link whose acknowledgements come out of order.
    let broker = Broker::start_with_config("[connections]\nmax_inflight_messages = 10\n");
    let addr = broker.addr();
    let (mut sub, _) = Client::connect(addr, &Options::new("switcher"));
    assert_eq!(sub.subscribe(&[("a/#", 1)]), [1]);
    let (mut feeder, _) = Client::connect(addr, &Options::new("feeder"));
    let mut expected = Vec::new();
    for i in 0u32..60 {
        feeder.publish("a/x", &i.to_be_bytes(), 1, false);
        expected.push(("a/x".to_owned(), i));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sub.subscribe(&[("b/#", 2)]), [2]);
    for i in 60u32..120 {
        let topic = if i % 2 == 0 { "a/x" } else { "b/x" };
        feeder.publish(topic, &i.to_be_bytes(), 1, false);
        expected.push((topic.to_owned(), i));
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < expected.len() && Instant::now() < deadline {
        if let Some(m) = sub.next_message(Duration::from_millis(500)) {
            let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            got.push((m.topic, n));
        }
    }
    // Nothing more comes (no second copy), and the connection is alive.
    assert!(sub.next_message(Duration::from_millis(300)).is_none());
    sub.ping();
    assert_eq!(got, expected);
    feeder.disconnect();
    sub.disconnect();
    let shutdown = stop(broker);
    assert!(
        !shutdown.log.contains("disconnected client \"switcher\""),
        "{}",
        shutdown.log
    );
}
