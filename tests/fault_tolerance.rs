//! Faults at QoS 1 (and QoS 2 for the flat-out publisher): a subscriber killed mid-run,
//! connections cut, a broker killed, restarted or stopped.
//! Nothing acknowledged may be lost silently; what is lost must be counted exactly.

mod support;

use std::time::Duration;

use serde_json::Value;

use support::chaos::ChaosProxy;
use support::{num, publish, Broker, Subscriber};

/// A pseudo-random number in `lo..hi`, printed so a failing run can be reproduced.
fn pick(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + nanos % (hi - lo)
}

#[test]
fn a_subscriber_killed_mid_run_resumes_from_its_state_with_nothing_missing() {
    const N: u64 = 100_000;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sub.state");
    let count = N.to_string();
    let args = [
        "--count",
        &count,
        "--state",
        state.to_str().unwrap(),
        "--client-id",
        "crash-test-sub",
        "--idle-timeout",
        "5",
    ];
    let mut first = Subscriber::start(broker.port, &args);
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish(port, &["--count", &N.to_string()], Duration::from_secs(120))
    });

    let kill_at = pick(10, 80) * 1000;
    eprintln!("killing the subscriber after {kill_at} messages");
    first.proc.wait_for_stderr(
        &format!("Messages received: {kill_at}\n"),
        Duration::from_secs(60),
    );
    first.proc.signal(libc::SIGKILL);
    first.proc.wait(Duration::from_secs(10));

    let second = Subscriber::start(broker.port, &args);
    let (status, published, stderr) = publisher.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(num(&published, "acked"), N);
    let (status, report) = second.finish(Duration::from_secs(120));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(report["complete"], true);
    let resumed = num(&report, "resumed");
    // Progress is printed on arrival, the journal written per ack batch (at most 50).
    assert!(
        resumed + 50 >= kill_at,
        "resumed only {resumed} of {kill_at}: {report}"
    );
    // Readings on record but not yet acknowledged when it died come again: duplicates,
    // at most one ack batch's worth.
    assert!(num(&report, "duplicates") <= 100, "{report}");
}

#[test]
fn connections_cut_dozens_of_times_lose_nothing() {
    const N: u64 = 100_000;
    let broker = Broker::start();
    let proxy = ChaosProxy::start(broker.port, 30, 150);
    let count = N.to_string();
    // Both clients go through the proxy. The named subscriber keeps its session across
    // the cuts; the anonymous publisher gets a clean session each time, so its ledger
    // must put back what the broker had not acknowledged.
    let subscriber = Subscriber::start(
        proxy.port,
        &[
            "--count",
            &count,
            "--client-id",
            "chaos-sub",
            "--idle-timeout",
            "10",
        ],
    );
    // Paced so the run lasts long enough for dozens of cuts.
    let (status, published, stderr) = publish(
        proxy.port,
        &["--count", &count, "--rate", "10000"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{published}\n{stderr}");
    assert_eq!(num(&published, "published"), N, "{published}");
    assert_eq!(num(&published, "acked"), N, "{published}");
    assert!(num(&published, "reconnects") >= 1, "{published}");
    let (status, report) = subscriber.finish(Duration::from_secs(120));
    let cuts = proxy.cuts();
    eprintln!("{cuts} cuts; publisher: {published}; subscriber: {report}");
    assert!(status.success(), "{report}");
    assert!(cuts >= 12, "only {cuts} cuts");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(num(&report, "distinct"), N);
    assert!(num(&report, "reconnects") >= 1, "{report}");
}

#[test]
fn a_flat_out_publisher_whose_connection_is_cut_again_and_again_loses_nothing() {
    const N: u64 = 300_000;
    let count = N.to_string();
    for qos in ["1", "2"] {
        let broker = Broker::start();
        // Held until the publisher is connected: a client fails fast until its first
        // CONNACK, by design, and the proxy cuts every 10-60 ms.
        let proxy = ChaosProxy::start_held(broker.port, 10, 60);
        // The subscriber connects directly: only the publisher's connection is cut, with
        // a full window of readings in flight each time, written in batches.
        let subscriber =
            Subscriber::start(broker.port, &["--count", &count, "--idle-timeout", "10"]);
        let dir = tempfile::tempdir().unwrap();
        let pub_report = dir.path().join("pub.json");
        let proxy_port = proxy.port.to_string();
        let mut publisher = support::Proc::spawn(
            "mqtt-publisher",
            &[
                "--port",
                &proxy_port,
                "--count",
                &count,
                "--qos",
                qos,
                "--report-json",
                pub_report.to_str().unwrap(),
            ],
        );
        publisher.wait_for_stderr("connected; publishing", Duration::from_secs(30));
        proxy.unleash();
        let status = publisher.wait(Duration::from_secs(120));
        let published = support::read_json(&pub_report, &publisher);
        let cuts = proxy.cuts();
        assert!(
            status.success(),
            "QoS {qos}: {published}\n{}\nbroker: {}",
            tail(&publisher.stderr()),
            tail(&broker.proc.stderr())
        );
        assert_eq!(num(&published, "published"), N, "QoS {qos}: {published}");
        assert_eq!(num(&published, "acked"), N, "QoS {qos}: {published}");
        let (status, report) = subscriber.finish(Duration::from_secs(120));
        eprintln!("QoS {qos}: {cuts} cuts; publisher: {published}; subscriber: {report}");
        assert!(status.success(), "QoS {qos}: {report}");
        assert_eq!(num(&report, "missing"), 0, "QoS {qos}: {report}");
        assert_eq!(num(&report, "distinct"), N, "QoS {qos}: {report}");
        // The run is short: it must still have been cut, and resent what was in flight.
        assert!(num(&published, "reconnects") >= 2, "QoS {qos}: {published}");
        assert!(
            num(&published, "republished") >= 1,
            "QoS {qos}: {published}"
        );
    }
}

/// The end of a long log, for a failure message.
fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(4000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    &log[start..]
}

/// The last `Messages ...: N` count a process printed.
fn last_progress(stderr: &str, label: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

#[test]
fn a_broker_killed_and_restarted_mid_run_loses_only_what_it_held() {
    const N: u64 = 60_000;
    let broker = Broker::start();
    let port = broker.port;
    let count = N.to_string();
    let mut subscriber = Subscriber::start(
        port,
        &[
            "--count",
            &count,
            "--client-id",
            "restart-sub",
            "--idle-timeout",
            "5",
        ],
    );
    // Paced, so the broker dies with the run half done.
    let dir = tempfile::tempdir().unwrap();
    let pub_report = dir.path().join("pub.json");
    let port_arg = port.to_string();
    let mut publisher = support::Proc::spawn(
        "mqtt-publisher",
        &[
            "--port",
            &port_arg,
            "--count",
            &count,
            "--rate",
            "10000",
            "--report-json",
            pub_report.to_str().unwrap(),
        ],
    );
    subscriber
        .proc
        .wait_for_stderr("Messages received: 20000\n", Duration::from_secs(60));
    let mut broker = broker;
    broker.proc.signal(libc::SIGKILL);
    broker.proc.wait(Duration::from_secs(10));
    let received_at_kill = last_progress(&subscriber.proc.stderr(), "Messages received:");
    let published_at_kill = last_progress(&publisher.stderr(), "Messages published:");
    let listen = format!("127.0.0.1:{port}");
    let _restarted = Broker::start_with_listen(&listen);

    let status = publisher.wait(Duration::from_secs(120));
    let published = support::read_json(&pub_report, &publisher);
    assert!(status.success(), "{published}\n{}", publisher.stderr());
    assert_eq!(
        num(&published, "acked"),
        N,
        "the ledger re-sends what was not acknowledged"
    );
    assert!(num(&published, "reconnects") >= 1);
    let (_, report) = subscriber.finish(Duration::from_secs(120));
    let (distinct, missing) = (num(&report, "distinct"), num(&report, "missing"));
    eprintln!(
        "at the kill: {published_at_kill} published, {received_at_kill} received; \
         afterwards {distinct} distinct, {missing} missing; {report}"
    );
    assert_eq!(distinct + missing, N, "{report}");
    assert!(num(&report, "reconnects") >= 1, "{report}");
    // What is missing is one run of readings from around the crash: those the broker held
    // when it died (acknowledged to the publisher, not yet delivered), plus those the
    // restarted broker took before the subscriber had subscribed again (MQTT discards a
    // message no one subscribes to). Nothing before the crash, nothing long after.
    // (Or nothing at all, when the subscriber was back before the publisher.)
    assert_lost_only_around_the_crash(&report, received_at_kill, published_at_kill);
    assert!(missing < N / 10, "{report}");
}

/// What is missing after a broker died is one run of readings from around the crash:
/// those it held when it died (acknowledged to the publisher, not yet delivered), plus
/// those the next broker took before the subscriber had subscribed there (MQTT discards
/// a message no one subscribes to). Nothing before the crash, nothing long after. (Or
/// nothing at all, when the subscriber was back before the publisher.)
fn assert_lost_only_around_the_crash(
    report: &Value,
    received_at_kill: u64,
    published_at_kill: u64,
) {
    let missing = num(report, "missing");
    let ranges = report["missing_ranges"].as_array().unwrap();
    assert!(ranges.len() <= 1, "{report}");
    if let Some(range) = ranges.first() {
        let (first, last) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
        assert_eq!(last - first + 1, missing);
        assert!(
            first + 1000 > received_at_kill && first <= published_at_kill + 1000,
            "missing {first}..={last} does not start at the crash: {report}"
        );
    }
}

#[test]
fn a_broker_killed_and_restarted_under_a_flat_out_publisher_loses_only_what_it_held() {
    const N: u64 = 400_000;
    let count = N.to_string();
    for qos in ["1", "2"] {
        let broker = Broker::start();
        let port = broker.port;
        let subscriber = Subscriber::start(
            port,
            &[
                "--count",
                &count,
                "--client-id",
                &format!("flat-out-restart-sub-{qos}"),
                "--idle-timeout",
                "5",
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let pub_report = dir.path().join("pub.json");
        let port_arg = port.to_string();
        // Flat out: the broker dies with a full window of batched readings in flight.
        let mut publisher = support::Proc::spawn(
            "mqtt-publisher",
            &[
                "--port",
                &port_arg,
                "--count",
                &count,
                "--qos",
                qos,
                "--report-json",
                pub_report.to_str().unwrap(),
            ],
        );
        publisher.wait_for_stderr("Messages published: 50000\n", Duration::from_secs(60));
        let mut broker = broker;
        broker.proc.signal(libc::SIGKILL);
        broker.proc.wait(Duration::from_secs(10));
        let received_at_kill = last_progress(&subscriber.proc.stderr(), "Messages received:");
        let published_at_kill = last_progress(&publisher.stderr(), "Messages published:");
        let _restarted = Broker::start_with_listen(&format!("127.0.0.1:{port}"));

        let status = publisher.wait(Duration::from_secs(180));
        let published = support::read_json(&pub_report, &publisher);
        assert!(
            status.success(),
            "QoS {qos}: {published}\n{}",
            publisher.stderr()
        );
        assert_eq!(num(&published, "published"), N, "QoS {qos}: {published}");
        assert_eq!(
            num(&published, "acked"),
            N,
            "QoS {qos}: the ledger re-sends what was not acknowledged: {published}"
        );
        assert!(num(&published, "reconnects") >= 1, "QoS {qos}: {published}");
        // At QoS 1 a flat-out window always holds readings awaiting their PUBACK when the
        // broker dies. At QoS 2 they may all be past PUBREC then: those get their PUBREL
        // again, which is not a re-sent reading (seen once in CI: republished 0, every
        // reading acknowledged).
        if qos == "1" {
            assert!(
                num(&published, "republished") >= 1,
                "QoS {qos}: {published}"
            );
        }
        let (_, report) = subscriber.finish(Duration::from_secs(180));
        let (distinct, missing) = (num(&report, "distinct"), num(&report, "missing"));
        eprintln!(
            "QoS {qos}: at the kill {published_at_kill} published, {received_at_kill} received; \
             afterwards {distinct} distinct, {missing} missing; {report}"
        );
        // Without its log (--data-dir) the broker keeps nothing across a restart: what it
        // held is lost, and counted.
        assert_eq!(distinct + missing, N, "QoS {qos}: {report}");
        assert_eq!(num(&report, "corrupt"), 0, "QoS {qos}: {report}");
        assert!(num(&report, "reconnects") >= 1, "QoS {qos}: {report}");
        // The publisher counts a batch's readings once the batch is written: its progress
        // lines may lag what went out by one window (1,000).
        assert_lost_only_around_the_crash(&report, received_at_kill, published_at_kill + 1000);
        assert!(missing < N / 4, "QoS {qos}: {report}");
    }
}

/// With its write-ahead log (`--data-dir`) the broker keeps what it acknowledged across a
/// SIGKILL: then the flat-out publisher's accounting and the subscriber's verdict must both
/// be whole. The publisher at QoS 2 (tests/storage.rs has the QoS 1 story): a PUBREC is
/// the broker's promise, and the PUBRELs the ledger resends after the restart complete the
/// exchanges. The subscriber reads at QoS 1 (a persistent QoS 2 subscription with
/// `--state` moves about 2,300 readings/s here: the run would take minutes).
#[test]
fn a_broker_with_its_log_killed_under_a_flat_out_qos_2_publisher_loses_nothing() {
    const N: u64 = 300_000;
    let count = N.to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let broker = Broker::start_with(&["--data-dir", data_arg]);
    let port = broker.port;
    let state = dir.path().join("sub.state");
    let subscriber = Subscriber::start(
        port,
        &[
            "--count",
            &count,
            "--client-id",
            "flat-out-wal-sub",
            "--state",
            state.to_str().unwrap(),
            "--idle-timeout",
            "20",
        ],
    );
    let pub_report = dir.path().join("pub.json");
    let port_arg = port.to_string();
    let mut publisher = support::Proc::spawn(
        "mqtt-publisher",
        &[
            "--port",
            &port_arg,
            "--count",
            &count,
            "--qos",
            "2",
            "--report-json",
            pub_report.to_str().unwrap(),
        ],
    );
    publisher.wait_for_stderr("Messages published: 100000\n", Duration::from_secs(60));
    let mut broker = broker;
    broker.proc.signal(libc::SIGKILL);
    broker.proc.wait(Duration::from_secs(10));
    let listen = format!("127.0.0.1:{port}");
    let mut restarted = Broker::start_exact(&["--listen", &listen, "--data-dir", data_arg]);
    restarted
        .proc
        .wait_for_stderr("restored from", Duration::from_secs(30));

    let status = publisher.wait(Duration::from_secs(180));
    let published = support::read_json(&pub_report, &publisher);
    assert!(
        status.success(),
        "{published}\n{}\nbroker: {}",
        tail(&publisher.stderr()),
        tail(&restarted.proc.stderr())
    );
    assert_eq!(num(&published, "published"), N, "{published}");
    assert_eq!(num(&published, "acked"), N, "{published}");
    assert!(num(&published, "reconnects") >= 1, "{published}");
    let (status, report) = subscriber.finish(Duration::from_secs(180));
    eprintln!("publisher: {published}; subscriber: {report}");
    assert!(
        status.success(),
        "{report}\nbroker: {}",
        tail(&restarted.proc.stderr())
    );
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert_eq!(num(&report, "corrupt"), 0, "{report}");
    assert_eq!(report["complete"], true, "{report}");
}

#[test]
fn clients_fail_over_to_the_next_broker_when_theirs_dies() {
    const N: u64 = 40_000;
    let first = Broker::start();
    let second = Broker::start();
    let brokers = format!("127.0.0.1:{},127.0.0.1:{}", first.port, second.port);
    let count = N.to_string();
    let dir = tempfile::tempdir().unwrap();
    let sub_report = dir.path().join("sub.json");
    let pub_report = dir.path().join("pub.json");
    // Both clients take the list from MQTT_BROKERS, the subscriber from --broker flags.
    let [a, b]: [String; 2] = [first.port, second.port].map(|p| format!("127.0.0.1:{p}"));
    let mut subscriber = support::Proc::spawn(
        "mqtt-subscriber",
        &[
            "--broker",
            &a,
            "--broker",
            &b,
            "--count",
            &count,
            "--client-id",
            "failover-sub",
            "--idle-timeout",
            "5",
            "--report-json",
            sub_report.to_str().unwrap(),
        ],
    );
    subscriber.wait_for_stderr("subscribed to", Duration::from_secs(30));
    let mut publisher = support::Proc::spawn_with_env(
        "mqtt-publisher",
        &[
            "--count",
            &count,
            "--rate",
            "10000",
            "--report-json",
            pub_report.to_str().unwrap(),
        ],
        &[("MQTT_BROKERS", brokers.as_str())],
    );
    subscriber.wait_for_stderr("Messages received: 15000\n", Duration::from_secs(60));
    let mut first = first;
    first.proc.signal(libc::SIGKILL);
    first.proc.wait(Duration::from_secs(10));
    let received_at_kill = last_progress(&subscriber.stderr(), "Messages received:");
    let published_at_kill = last_progress(&publisher.stderr(), "Messages published:");

    let status = publisher.wait(Duration::from_secs(120));
    let published = support::read_json(&pub_report, &publisher);
    assert!(status.success(), "{published}\n{}", publisher.stderr());
    assert_eq!(
        num(&published, "acked"),
        N,
        "the ledger re-sends what was not acknowledged"
    );
    assert!(
        publisher.stderr().contains(&format!("reconnected to {b}")),
        "{}",
        publisher.stderr()
    );
    subscriber.wait(Duration::from_secs(120));
    let report = support::read_json(&sub_report, &subscriber);
    assert!(
        subscriber.stderr().contains(&format!("reconnected to {b}")),
        "{}",
        subscriber.stderr()
    );
    let (distinct, missing) = (num(&report, "distinct"), num(&report, "missing"));
    eprintln!(
        "at the kill: {published_at_kill} published, {received_at_kill} received; \
         afterwards {distinct} distinct, {missing} missing; {report}"
    );
    assert_eq!(distinct + missing, N, "{report}");
    assert_lost_only_around_the_crash(&report, received_at_kill, published_at_kill);
    assert!(missing < N / 10, "{report}");
    drop(second);
}

#[test]
fn a_broker_told_to_stop_lets_a_run_in_progress_finish_then_exits() {
    const N: u64 = 12_000;
    let broker = Broker::start();
    let port = broker.port;
    let count = N.to_string();
    let subscriber = Subscriber::start(port, &["--count", &count, "--idle-timeout", "5"]);
    let port_arg = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let pub_report = dir.path().join("pub.json");
    // Paced to take about 2 s, well inside the default 5 s grace.
    let mut publisher = support::Proc::spawn(
        "mqtt-publisher",
        &[
            "--port",
            &port_arg,
            "--count",
            &count,
            "--rate",
            "6000",
            "--report-json",
            pub_report.to_str().unwrap(),
        ],
    );
    publisher.wait_for_stderr("Messages published: 2000\n", Duration::from_secs(30));
    let mut broker = broker;
    broker.proc.signal(libc::SIGTERM);
    broker
        .proc
        .wait_for_stderr("stopped accepting connections", Duration::from_secs(10));
    // No new client gets in during the grace period...
    let refused = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(refused.is_err(), "the listener still accepts: {refused:?}");
    // ...while the two connected ones finish their run.
    assert!(
        publisher.wait(Duration::from_secs(60)).success(),
        "{}",
        publisher.stderr()
    );
    assert_eq!(
        num(&support::read_json(&pub_report, &publisher), "acked"),
        N
    );
    let (status, report) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    let status = broker.proc.wait(Duration::from_secs(10));
    let log = broker.proc.stderr();
    assert!(status.success(), "{log}");
    assert!(log.contains("every client left"), "{log}");
    assert!(
        log.contains("2 of 2 clients left by themselves, 0 disconnected now"),
        "{log}"
    );
}

#[test]
fn a_broker_told_to_stop_disconnects_clients_still_there_after_the_grace_period() {
    let broker = Broker::start_with_config("[connections]\nshutdown_grace_ms = 1500\n");
    let subscriber = Subscriber::start(broker.port, &["--count", "10", "--reconnect-for", "1"]);
    let mut broker = broker;
    let asked = std::time::Instant::now();
    broker.proc.signal(libc::SIGINT);
    let status = broker.proc.wait(Duration::from_secs(10));
    let log = broker.proc.stderr();
    assert!(status.success(), "{log}");
    assert!(asked.elapsed() >= Duration::from_millis(1400), "{log}");
    assert!(
        log.contains("waiting up to 1.5 s for 1 connected clients"),
        "{log}"
    );
    assert!(log.contains("the grace period ended"), "{log}");
    assert!(
        log.contains("0 of 1 clients left by themselves, 1 disconnected now"),
        "{log}"
    );
    // The subscriber sees its broker go, tries to come back, and says so.
    let (status, report) = subscriber.finish(Duration::from_secs(20));
    assert!(!status.success(), "{report}");
}
