//! Scaling out, end to end with the real binaries: a thousand simulated devices through
//! our broker, verified by one subscriber and, at the same time, by two subscribers that
//! split the stream through a shared subscription and merge their reports; and a shared
//! group whose last member dies while readings are in flight, which must not take the
//! broker's routing with it.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::{num, publish, publish_ok, run_quick, write_report, Broker, Subscriber};

const DEVICES: u64 = 1000;
const PER_DEVICE: u64 = 50;

fn stream_ids(streams: &Value) -> BTreeSet<String> {
    streams
        .as_array()
        .expect("streams array")
        .iter()
        .map(|s| s["id"].as_str().expect("stream id").to_owned())
        .collect()
}

#[test]
fn a_thousand_devices_verified_by_one_subscriber_and_by_two_share_members_merged() {
    let total = (DEVICES * PER_DEVICE).to_string();
    let broker = Broker::start();
    let mut alone = Subscriber::start(broker.port, &["--count", &total]);
    let member = || {
        Subscriber::start(
            broker.port,
            &[
                "--share",
                "fleet",
                "--count",
                &total,
                "--idle-timeout",
                "3",
                "--report-sets",
            ],
        )
    };
    let (first, second) = (member(), member());

    let (published, _) = publish_ok(
        broker.port,
        &[
            "--devices",
            &DEVICES.to_string(),
            "--count",
            &PER_DEVICE.to_string(),
            "--client-id",
            "fleet",
            "--progress-every",
            "10000",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(num(&published, "acked"), DEVICES * PER_DEVICE);
    let device_streams = stream_ids(&published["streams"]);
    assert_eq!(device_streams.len() as u64, DEVICES);

    // The lone subscriber verified every device's stream on its own.
    let status = alone.proc.wait(Duration::from_secs(60));
    let summary = alone.proc.stderr();
    let (_, verified) = alone.finish(Duration::from_secs(5));
    assert!(status.success(), "subscriber failed: {status}\n{summary}");
    assert_eq!(verified["complete"], true);
    assert_eq!(stream_ids(&verified["streams"]), device_streams);
    for s in verified["streams"].as_array().expect("streams") {
        assert_eq!(
            (num(s, "total"), num(s, "distinct")),
            (PER_DEVICE, PER_DEVICE)
        );
        assert!(s.get("set").is_none(), "sets only with --report-sets");
    }
    assert!(
        summary.contains("Streams: 1000, all complete, 0 with duplicates"),
        "{summary}"
    );
    assert!(
        summary.lines().filter(|l| l.starts_with("Stream ")).count() == 0,
        "a complete run of 1000 streams names none of them:\n{summary}"
    );

    // Each member saw a share, says so, and exits 0: it cannot judge completeness.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut reports = Vec::new();
    let mut received = 0;
    for (name, member) in [("first.json", first), ("second.json", second)] {
        let (status, report) = member.finish(Duration::from_secs(60));
        assert!(status.success(), "member failed: {status}: {report}");
        assert_eq!(report["share_group"], "fleet");
        assert_eq!(report["complete"], false);
        assert!(num(&report, "received") > 0, "{name} got no share");
        assert!(report["streams"][0]["set"].is_string());
        received += num(&report, "received");
        reports.push(write_report(dir.path(), name, &report));
    }
    assert_eq!(
        received,
        DEVICES * PER_DEVICE,
        "the members split the stream"
    );

    let path = |p: &std::path::PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let (status, stdout, stderr) = run_quick(
        "mqtt-subscriber",
        &[
            "merge",
            &path(&reports[0]),
            &path(&reports[1]),
            "--count",
            &total,
            "--report-json",
            "-",
        ],
    );
    assert!(status.success(), "merge failed: {status}\n{stderr}");
    let merged: Value = serde_json::from_str(&stdout).expect("merged report is JSON");
    assert_eq!(merged["kind"], "merge");
    assert_eq!(merged["complete"], true);
    assert_eq!(
        (num(&merged, "distinct"), num(&merged, "missing")),
        (DEVICES * PER_DEVICE, 0)
    );
    assert_eq!(stream_ids(&merged["streams"]), device_streams);
    for s in merged["streams"].as_array().expect("streams") {
        assert_eq!(
            (num(s, "total"), num(s, "distinct")),
            (PER_DEVICE, PER_DEVICE)
        );
    }
    assert_eq!(merged["members"].as_array().map(Vec::len), Some(2));
    assert!(stderr.contains("Verdict: COMPLETE"), "{stderr}");

    // One member alone is not the whole: what the other got is missing (exit 3).
    let (status, stdout, _) = run_quick(
        "mqtt-subscriber",
        &["merge", &path(&reports[0]), "--report-json", "-"],
    );
    assert_eq!(status.code(), Some(3));
    let half: Value = serde_json::from_str(&stdout).expect("JSON");
    let first: Value =
        serde_json::from_slice(&std::fs::read(&reports[0]).expect("report")).expect("JSON");
    assert_eq!(
        num(&half, "missing"),
        DEVICES * PER_DEVICE - num(&first, "distinct")
    );
}

#[test]
fn killing_the_last_member_of_a_share_group_leaves_the_broker_routing() {
    let mut broker = Broker::start();
    // A named member would get a persistent session (which rumqttd 0.20 cannot survive
    // as a group's last member); --share keeps it clean, or the broker's front would
    // refuse the subscription.
    let mut member = Subscriber::start(
        broker.port,
        &[
            "--share",
            "crew",
            "--client-id",
            "crew-1",
            "--count",
            "200000",
            "--process-delay-us",
            "200",
        ],
    );
    let publisher = std::thread::spawn({
        let port = broker.port;
        move || publish(port, &["--count", "200000"], Duration::from_secs(120))
    });
    // Readings are flowing and the slow member holds a window of unacknowledged ones.
    member
        .proc
        .wait_for_stderr("Messages received: 2000", Duration::from_secs(60));
    member.kill();
    let (status, _, stderr) = publisher.join().expect("publisher thread");
    assert!(status.success(), "publisher failed: {status}\n{stderr}");

    // The broker is alive and still routes, to a new member of the same group too: the
    // new member's SUBACK and readings come after the router dealt with the dead one.
    let after = Subscriber::start(
        broker.port,
        &[
            "--share",
            "crew",
            "--client-id",
            "crew-1",
            "--topic",
            "after/#",
            "--count",
            "1000",
        ],
    );
    publish_ok(
        broker.port,
        &["--topic", "after/data", "--count", "1000"],
        Duration::from_secs(60),
    );
    let (status, report) = after.finish(Duration::from_secs(60));
    assert!(status.success(), "member failed: {status}: {report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(num(&report, "distinct"), 1000);
    let stderr = broker.proc.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(broker.proc.exited().is_none(), "broker exited:\n{stderr}");
}

#[test]
fn share_and_merge_usage_errors_are_clear() {
    let (status, _, stderr) = run_quick(
        "mqtt-subscriber",
        &["--share", "g", "--state", "/nonexistent/state"],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--share cannot be used with --state"),
        "{stderr}"
    );

    let (status, _, stderr) = run_quick("mqtt-subscriber", &["--share", "a/b"]);
    assert_eq!(status.code(), Some(2), "{stderr}");

    let (status, _, stderr) = run_quick("mqtt-subscriber", &["--report-sets"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--report-json"), "{stderr}");

    let (status, _, stderr) = run_quick("mqtt-subscriber", &["merge"]);
    assert_eq!(status.code(), Some(2), "{stderr}");

    let (status, _, stderr) = run_quick("mqtt-subscriber", &["merge", "/nonexistent/m.json"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line, no panic: {stderr}"
    );
    assert!(
        stderr.starts_with("error: cannot read the report"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let not_json = write_report(dir.path(), "a.json", &Value::String("x".into()));
    let (status, _, stderr) = run_quick(
        "mqtt-subscriber",
        &["merge", not_json.to_str().expect("utf-8")],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a subscriber report"), "{stderr}");
}
