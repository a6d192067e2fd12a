//! The broker's Prometheus endpoint: off by default, on at `--metrics-listen`, and after a
//! run its counters say what happened, in text a Prometheus parser reads.

mod support;

use std::time::{Duration, Instant};

use mqtt_harness::http;
use prometheus_parse::{Sample, Scrape, Value};
use support::{closed_port, num, publish, Broker, Subscriber};

/// The value of `name` (with `label` = `value`, if given) in a scrape.
fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s: &&Sample| s.metric == name)
        .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn scrape(port: u16) -> Scrape {
    let body = http::get(port, "/metrics").expect("the broker serves /metrics");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// A broker serving metrics (with `extra` flags) through which `n` readings went, every one
/// verified: the broker, the metrics port and the broker's listen address for them.
fn run_with_metrics(n: u64, extra: &[&str]) -> (Broker, u16, String) {
    let metrics_port = closed_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut args = vec!["--metrics-listen", &listen];
    args.extend_from_slice(extra);
    let broker = Broker::start_with(&args);
    let count = n.to_string();
    let subscriber = Subscriber::start(broker.port, &["--count", &count]);
    let (status, _, stderr) = publish(broker.port, &["--count", &count], Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let (status, report) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "distinct"), n);
    (broker, metrics_port, listen)
}

/// The first scrape for which `done` holds, waiting up to 10 s: the exporter's values are
/// copied from the broker's counters once a second.
fn scrape_until(port: u16, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(port);
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "{what}: {scrape:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_after_a_run_count_every_message_in_prometheus_format() {
    const N: u64 = 100_000;
    let (broker, metrics_port, listen) = run_with_metrics(N, &[]);
    let scrape = scrape_until(
        metrics_port,
        &format!("counters never reached {N}"),
        |scrape| {
            let sent = value(scrape, "mqtt_messages_sent_total", None).unwrap_or(0.0);
            let received = value(scrape, "mqtt_messages_received_total", None).unwrap_or(0.0);
            sent >= N as f64 && received >= N as f64
        },
    );
    for name in [
        "mqtt_connections",
        "mqtt_connections_total",
        "mqtt_bytes_received_total",
        "mqtt_bytes_sent_total",
        "mqtt_flow_held_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(value(&scrape, name, None).is_some(), "{name} is served");
    }
    assert!(value(&scrape, "mqtt_connections_total", None).unwrap() >= 2.0);
    assert!(value(&scrape, "mqtt_bytes_received_total", None).unwrap() > (N * 60) as f64);
    assert_eq!(
        value(
            &scrape,
            "mqtt_messages_dropped_total",
            Some(("reason", "log_rolled_over"))
        ),
        Some(0.0)
    );
    assert!(value(
        &scrape,
        "mqtt_connections_refused_total",
        Some(("reason", "handshake"))
    )
    .is_some());
    assert!(
        value(
            &scrape,
            "mqtt_flow_lag_messages",
            Some(("filter", "sensors/#"))
        )
        .is_some(),
        "{:?}",
        scrape.samples
    );
    assert!(value(&scrape, "process_resident_memory_bytes", None).unwrap() > 1e6);
    assert_eq!(
        value(&scrape, "mqtt_stored_bytes", None),
        None,
        "in memory: nothing stored"
    );
    let docs = &scrape.docs;
    assert!(
        docs.contains_key("mqtt_messages_sent_total"),
        "HELP lines: {docs:?}"
    );

    // Only where asked: the metrics address is announced, and a broker without the flag
    // serves none.
    let stdout = broker.proc.stdout();
    assert!(
        stdout.contains(&format!("serving metrics on http://{listen}/metrics")),
        "{stdout}"
    );
    let plain = Broker::start();
    assert!(
        !plain.proc.stdout().contains("metrics"),
        "{}",
        plain.proc.stdout()
    );
}

#[test]
fn with_storage_the_write_ahead_logs_size_on_disk_is_served() {
    const N: u64 = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Readings that match no subscription are delivered to no one, and not stored: the run
    // has its subscriber.
    let (_broker, metrics_port, _) =
        run_with_metrics(N, &["--data-dir", data.to_str().expect("utf-8 path")]);
    // Each reading is at least its 61-byte payload on disk.
    let what = format!("mqtt_stored_bytes never passed {}", N * 61);
    scrape_until(metrics_port, &what, |scrape| {
        value(scrape, "mqtt_stored_bytes", None).unwrap_or(0.0) > (N * 61) as f64
    });
}

#[test]
fn at_a_paced_rate_readings_reach_the_subscriber_directly_all_of_them_once_in_order() {
    // A caught-up clean-session subscriber gets each reading from the network thread before
    // rumqttd's router forwards its copy, which the broker then only acknowledges to the
    // router (README, Latency). Paced, nearly every reading goes that way; none may arrive
    // twice, out of order or not at all.
    const N: u64 = 4_000;
    let metrics_port = closed_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let broker = Broker::start_with(&["--metrics-listen", &listen]);
    let count = N.to_string();
    let subscriber = Subscriber::start(broker.port, &["--count", &count]);
    let (status, _, stderr) = publish(
        broker.port,
        &["--count", &count, "--rate", "4000"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let (status, report) = subscriber.finish(Duration::from_secs(60));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert_eq!(num(&report, "duplicates"), 0, "{report}");
    assert_eq!(num(&report, "out_of_order"), 0, "{report}");
    let scrape = scrape_until(metrics_port, "every reading counted as sent", |scrape| {
        value(scrape, "mqtt_messages_sent_total", None) == Some(N as f64)
    });
    let direct = value(&scrape, "mqtt_messages_sent_direct_total", None).unwrap_or(0.0);
    assert!(
        direct >= (N / 2) as f64,
        "most paced readings went directly: {direct} of {N}"
    );
}
