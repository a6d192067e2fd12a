//! The publisher's simulation modes, end to end with the real binaries: several devices
//! in one process, a paced rate, publishing for a duration instead of a count, and flat
//! out (batched writes) at each QoS level.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{interrupt_publisher, num, publish, publish_ok, Broker, Subscriber};

/// A run through a broker of its own: a subscriber waiting for `expected` readings, then
/// the publisher with `args`, run to completion (exit 0). Returns the broker (to keep until
/// the subscriber is done), the subscriber, and the publisher's report and stderr.
fn publish_through_a_broker(expected: u64, args: &[&str]) -> (Broker, Subscriber, Value, String) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", &expected.to_string()]);
    let (published, stderr) = publish_ok(broker.port, args, Duration::from_secs(60));
    (broker, subscriber, published, stderr)
}

#[test]
fn several_devices_each_publish_a_complete_stream_of_their_own() {
    let (_broker, subscriber, published, stderr) = publish_through_a_broker(
        3000,
        &[
            "--devices",
            "3",
            "--count",
            "1000",
            "--client-id",
            "farm",
            "--device-id",
            "probe",
        ],
    );
    assert_eq!(num(&published, "published"), 3000);
    assert_eq!(num(&published, "acked"), 3000);
    assert_eq!(num(&published, "devices"), 3);
    assert!(
        stderr.contains("Total messages published: 3000"),
        "{stderr}"
    );
    let streams = published["streams"].as_array().expect("streams array");
    assert_eq!(streams.len(), 3);
    for (i, s) in streams.iter().enumerate() {
        let n = i + 1;
        assert_eq!(s["client_id"], format!("farm-{n}"));
        assert_eq!(s["device_id"], format!("probe-{n}"));
        assert_eq!(s["topic"], format!("sensors/data/probe-{n}"));
        assert_eq!(num(s, "acked"), 1000);
    }

    let verified = subscriber.finish_ok(Duration::from_secs(60));
    assert_eq!(verified["complete"], true);
    let ids = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .expect("streams")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(ids(&verified["streams"]), ids(&published["streams"]));
    for s in verified["streams"].as_array().expect("streams") {
        assert_eq!((num(s, "total"), num(s, "distinct")), (1000, 1000), "{s}");
    }
}

#[test]
fn a_paced_publisher_is_not_faster_than_its_rate() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "2000"]);

    let started = Instant::now();
    let (published, _) = publish_ok(
        broker.port,
        &["--count", "2000", "--rate", "1000"],
        Duration::from_secs(60),
    );
    let wall = started.elapsed();
    assert_eq!(num(&published, "acked"), 2000);
    assert_eq!(published["rate_per_device"], 1000.0);
    // Reading 2000 is due 1.999 s after the first: the run cannot be much shorter.
    assert!(wall >= Duration::from_millis(1500), "took only {wall:?}");
    assert!(published["elapsed_s"].as_f64().expect("elapsed") >= 1.5);

    let (status, verified) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "subscriber failed: {status}: {verified}");
    // Every reading says when it was due and when it left: all three histograms.
    for histogram in ["latency_us", "transit_us", "publisher_lateness_us"] {
        assert_eq!(num(&verified[histogram], "samples"), 2000, "{verified}");
    }
    // Leaving late adds to the latency, never to the transit.
    let p50 = |h: &str| num(&verified[h], "p50");
    assert!(p50("transit_us") <= p50("latency_us"), "{verified}");
    let percentiles = verified["latency_percentiles_us"]
        .as_array()
        .expect("the latency distribution");
    assert_eq!(
        percentiles.first().map(|p| &p["percentile"]),
        Some(&0.0.into())
    );
    assert_eq!(num(&verified, "arrived_before_sent"), 0, "{verified}");
}

#[test]
fn a_duration_run_announces_no_total_and_reports_what_it_sent() {
    let (_broker, subscriber, published, _) =
        publish_through_a_broker(500, &["--duration", "1", "--rate", "500"]);
    // Paced for a duration: exactly the readings due within it.
    assert_eq!(num(&published, "published"), 500);
    assert_eq!(num(&published, "acked"), 500);
    assert_eq!(num(&published, "count"), 0);
    assert_eq!(published["complete"], true);

    let verified = subscriber.finish_ok(Duration::from_secs(60));
    let stream = &verified["streams"][0];
    assert_eq!((num(stream, "total"), num(stream, "distinct")), (0, 500));
}

#[test]
fn every_qos_level_publishes_flat_out_with_its_own_acknowledgements() {
    const N: u64 = 20_000;
    let count = N.to_string();
    for qos in ["0", "1", "2"] {
        let broker = Broker::start();
        let subscriber = Subscriber::start(
            broker.port,
            &["--count", &count, "--qos", qos, "--idle-timeout", "2"],
        );
        // A small window, so that it fills and frees many times over.
        let (status, published, stderr) = publish(
            broker.port,
            &["--count", &count, "--qos", qos, "--inflight", "50"],
            Duration::from_secs(60),
        );
        assert!(status.success(), "QoS {qos}: {status}\n{stderr}");
        assert_eq!(num(&published, "qos"), qos.parse::<u64>().unwrap());
        assert_eq!(num(&published, "published"), N, "QoS {qos}: {published}");
        // PUBACKs at QoS 1, PUBCOMPs at QoS 2, nothing to count at QoS 0.
        let acked = if qos == "0" { 0 } else { N };
        assert_eq!(num(&published, "acked"), acked, "QoS {qos}: {published}");
        assert_eq!(num(&published, "republished"), 0, "QoS {qos}: {published}");
        assert_eq!(published["complete"], true, "QoS {qos}: {published}");
        assert!(
            stderr.contains(&format!("Total messages published: {N}")),
            "QoS {qos}: {stderr}"
        );
        let (status, verified) = subscriber.finish(Duration::from_secs(60));
        assert_eq!(num(&verified, "corrupt"), 0, "QoS {qos}: {verified}");
        assert_eq!(num(&verified, "foreign"), 0, "QoS {qos}: {verified}");
        if qos == "0" {
            // QoS 0 promises nothing; what came is checked all the same.
            assert!(num(&verified, "distinct") <= N, "{verified}");
        } else {
            assert!(status.success(), "QoS {qos}: {verified}");
            assert_eq!(num(&verified, "distinct"), N, "QoS {qos}: {verified}");
            // Nothing was cut, so nothing came twice (at QoS 2 nothing ever may).
            assert_eq!(num(&verified, "duplicates"), 0, "QoS {qos}: {verified}");
        }
    }
}

#[test]
fn a_flat_out_duration_run_stops_on_time_with_everything_acknowledged() {
    // The subscriber cannot know the total: it is told more than will come, and the
    // stream's one gap must then be exactly what was never sent.
    const MORE: u64 = 100_000_000;
    let broker = Broker::start();
    let subscriber = Subscriber::start(
        broker.port,
        &["--count", &MORE.to_string(), "--idle-timeout", "2"],
    );
    let started = Instant::now();
    let (published, _) = publish_ok(broker.port, &["--duration", "1"], Duration::from_secs(60));
    let wall = started.elapsed();
    let sent = num(&published, "published");
    assert!(sent > 1000, "{published}");
    assert_eq!(num(&published, "acked"), sent, "{published}");
    assert_eq!(num(&published, "count"), 0, "{published}");
    assert_eq!(published["duration_s"], 1.0);
    assert_eq!(published["complete"], true);
    // It stops making readings at the end and only collects what is still in flight.
    let elapsed = published["elapsed_s"].as_f64().expect("elapsed");
    assert!((1.0..4.0).contains(&elapsed), "{published}");
    assert!(wall < Duration::from_secs(15), "took {wall:?}");

    let (_, verified) = subscriber.finish(Duration::from_secs(60));
    let stream = &verified["streams"][0];
    assert_eq!(stream["id"], published["stream_id"], "{verified}");
    assert_eq!((num(stream, "total"), num(stream, "distinct")), (0, sent));
    assert_eq!(num(stream, "duplicates"), 0, "{verified}");
    assert_eq!(
        stream["missing_ranges"],
        serde_json::json!([[sent + 1, MORE]]),
        "readings 1..={sent} arrived, and nothing beyond: {verified}"
    );
    assert_eq!(num(&verified, "corrupt"), 0, "{verified}");
}

#[test]
fn a_flat_out_run_interrupted_at_qos_2_still_collects_its_pubcomps() {
    let broker = Broker::start();
    // Whatever was written before the signal completes its exchange (PUBREC, PUBREL,
    // PUBCOMP) in the grace period: acknowledged means a PUBCOMP came.
    interrupt_publisher(broker.port, &["--qos", "2"], 5000, libc::SIGINT);
}
