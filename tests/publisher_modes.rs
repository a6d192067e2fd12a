//! The publisher's simulation modes, end to end with the real binaries: several devices
//! in one process, a paced rate, and publishing for a duration instead of a count.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{num, publish, Broker, Subscriber};

#[test]
fn several_devices_each_publish_a_complete_stream_of_their_own() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "3000"]);

    let (status, published, stderr) = publish(
        broker.port,
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
        Duration::from_secs(60),
    );
    assert!(status.success(), "publisher failed: {status}\n{stderr}");
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

    let (status, verified) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "subscriber failed: {status}: {verified}");
    assert_eq!(verified["complete"], true);
    let ids = |v: &serde_json::Value| -> BTreeSet<String> {
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
    let (status, published, stderr) = publish(
        broker.port,
        &["--count", "2000", "--rate", "1000"],
        Duration::from_secs(60),
    );
    let wall = started.elapsed();
    assert!(status.success(), "publisher failed: {status}\n{stderr}");
    assert_eq!(num(&published, "acked"), 2000);
    assert_eq!(published["rate_per_device"], 1000.0);
    // Reading 2000 is due 1.999 s after the first: the run cannot be much shorter.
    assert!(wall >= Duration::from_millis(1500), "took only {wall:?}");
    assert!(published["elapsed_s"].as_f64().expect("elapsed") >= 1.5);

    let (status, verified) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "subscriber failed: {status}: {verified}");
    assert_eq!(num(&verified["latency_us"], "samples"), 2000);
}

#[test]
fn a_duration_run_announces_no_total_and_reports_what_it_sent() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "500"]);

    let (status, published, stderr) = publish(
        broker.port,
        &["--duration", "1", "--rate", "500"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "publisher failed: {status}\n{stderr}");
    // Paced for a duration: exactly the readings due within it.
    assert_eq!(num(&published, "published"), 500);
    assert_eq!(num(&published, "acked"), 500);
    assert_eq!(num(&published, "count"), 0);
    assert_eq!(published["complete"], true);

    let (status, verified) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "subscriber failed: {status}: {verified}");
    let stream = &verified["streams"][0];
    assert_eq!((num(stream, "total"), num(stream, "distinct")), (0, 500));
}
