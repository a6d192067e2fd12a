//! The pipeline's headline promise, end to end with the real binaries: a million QoS 1
//! readings from the publisher, through the broker, all verified by the subscriber.

mod support;

use std::time::Duration;

use support::{num, qos1_run_complete, Broker};

const MILLION: u64 = 1_000_000;

#[test]
fn a_million_qos1_readings_arrive_complete() {
    let broker = Broker::start();
    // Every reading published, acknowledged and verified, in the publisher's stream.
    let (stderr, verified) = qos1_run_complete(broker.port, MILLION, Duration::from_secs(300));
    // With progress on the way and a total at the end.
    assert!(stderr.contains("Messages published: 1000\n"));
    assert!(stderr.contains("Total messages published: 1000000"));
    assert_eq!(num(&verified, "expected"), MILLION);
    assert_eq!(num(&verified["streams"][0], "total"), MILLION);
}
