//! The pipeline's headline promise, end to end with the real binaries: a million QoS 1
//! readings from the publisher, through the broker, all verified by the subscriber.

mod support;

use std::time::Duration;

use support::{num, publish, Broker, Subscriber};

const MILLION: u64 = 1_000_000;

#[test]
fn a_million_qos1_readings_arrive_complete() {
    let broker = Broker::start();
    let count = MILLION.to_string();
    let subscriber = Subscriber::start(broker.port, &["--count", &count, "--qos", "1"]);

    let (status, published, stderr) = publish(
        broker.port,
        &["--count", &count, "--qos", "1"],
        Duration::from_secs(300),
    );
    assert!(status.success(), "publisher failed: {status}\n{stderr}");
    assert_eq!(num(&published, "published"), MILLION);
    assert_eq!(num(&published, "acked"), MILLION);
    assert!(stderr.contains("Messages published: 1000\n"));
    assert!(stderr.contains("Total messages published: 1000000"));

    let (status, verified) = subscriber.finish(Duration::from_secs(120));
    assert!(status.success(), "subscriber failed: {status}: {verified}");
    assert_eq!(num(&verified, "expected"), MILLION);
    assert_eq!(num(&verified, "distinct"), MILLION);
    assert_eq!(num(&verified, "missing"), 0);
    assert_eq!(num(&verified, "corrupt"), 0);
    assert_eq!(verified["complete"], true);
    // The subscriber names the publisher's stream.
    assert_eq!(verified["streams"][0]["id"], published["stream_id"]);
    assert_eq!(num(&verified["streams"][0], "total"), MILLION);
}
