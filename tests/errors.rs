//! The error paths a user meets first: no broker, bad flags, readings that never came,
//! and Ctrl-C, each with a clear message and a documented exit code.

mod support;

use std::time::{Duration, Instant};

use support::{
    closed_port, interrupt_publisher, num, publish, run_quick, Broker, Proc, Subscriber,
};

#[test]
fn clients_fail_fast_with_advice_when_no_broker_runs() {
    let port = closed_port().to_string();
    for name in ["mqtt-publisher", "mqtt-subscriber"] {
        let started = Instant::now();
        let mut proc = Proc::spawn(name, &["--port", &port, "--connect-timeout", "3"]);
        let status = proc.wait(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{name}: {}", proc.stderr());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        let stderr = proc.stderr();
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("Is it running?"), "{name}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{stderr}"
        );
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let cases: &[(&str, &[&str])] = &[
        ("mqtt-publisher", &["--qos", "3"]),
        ("mqtt-publisher", &["--count", "many"]),
        ("mqtt-publisher", &["--count", "0"]),
        ("mqtt-publisher", &["--topic", "sensors/+"]),
        ("mqtt-publisher", &["--no-such-flag"]),
        ("mqtt-subscriber", &["--topic", "sensors/#/x"]),
        ("mqtt-subscriber", &["--idle-timeout", "-1"]),
        ("mqtt-subscriber", &["--port", "70000"]),
        ("mqtt-broker", &["--listen", "not-an-address"]),
    ];
    for (name, args) in cases {
        let (status, _, stderr) = run_quick(name, args);
        assert_eq!(status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{name} {args:?}: {stderr}");
    }
}

#[test]
fn help_and_version_work_for_every_binary() {
    for name in ["mqtt-broker", "mqtt-publisher", "mqtt-subscriber"] {
        let out = std::process::Command::new(support::bin(name))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Exit codes"),
            "{name} --help lacks exit codes:\n{help}"
        );
        let out = std::process::Command::new(support::bin(name))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(name));
    }
}

#[test]
fn a_subscriber_expecting_more_than_is_sent_reports_exactly_what_is_missing() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "1500", "--idle-timeout", "1"]);
    let (status, _, stderr) = publish(broker.port, &["--count", "1000"], Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let (status, report) = subscriber.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{report}");
    assert_eq!(num(&report, "distinct"), 1000);
    assert_eq!(num(&report, "missing"), 500);
    assert_eq!(report["complete"], false);
    assert_eq!(report["idle_timeout"], true);
}

#[test]
fn ctrl_c_stops_a_waiting_subscriber_with_its_summary() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, &["--count", "10"]);
    subscriber.proc.signal(libc::SIGINT);
    let (status, report) = subscriber.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert_eq!(report["interrupted"], true);
    assert_eq!(num(&report, "missing"), 10);
}

#[test]
fn sigterm_stops_a_publisher_mid_run_with_its_summary() {
    let broker = Broker::start();
    let (_, stderr) = interrupt_publisher(broker.port, &[], 1000, libc::SIGTERM);
    assert!(stderr.contains("Total messages published:"), "{stderr}");
}

#[test]
fn flags_win_over_the_mqtt_brokers_list_and_a_bad_list_is_a_usage_error() {
    let broker = Broker::start();
    let port = broker.port.to_string();
    let dead = format!("127.0.0.1:{}", closed_port());
    // The publisher with MQTT_BROKERS set to `brokers`, to the end: its status and stderr.
    let publish_with_brokers = |args: &[&str], brokers: &str| {
        let env = [("MQTT_BROKERS", brokers)];
        let mut publisher = Proc::spawn_with_env("mqtt-publisher", args, &env);
        (publisher.wait(Duration::from_secs(30)), publisher.stderr())
    };
    // MQTT_BROKERS names a dead broker; the --port typed on the command line wins.
    let (status, stderr) = publish_with_brokers(&["--port", &port, "--count", "10"], &dead);
    assert!(status.success(), "{stderr}");
    // Empty entries are ignored; a bad one names the variable.
    let (status, stderr) = publish_with_brokers(&["--count", "10"], "127.0.0.1:1,,nohost");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MQTT_BROKERS="), "{stderr}");
    assert!(stderr.contains("\"nohost\" is not HOST:PORT"), "{stderr}");
}
