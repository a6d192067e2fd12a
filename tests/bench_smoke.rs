//! `scripts/bench --quick` as a smoke check: every row of the benchmark runs once at a
//! tiny size and verifies complete, and the table, JSON and picture are written. A row
//! whose third-party peer this machine lacks is skipped (a failure under CI=true, where
//! the bench requires its peers), never installed: the test tells the script not to. No
//! timing is asserted; the figures of a debug build on a busy machine mean nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::peers;

#[test]
fn the_quick_benchmark_runs_every_row_and_writes_its_results() {
    // Each missing peer is reported here (a failure under CI=true); its rows are skipped.
    let mosquitto = peers::mosquitto();
    let nats_server = peers::nats_server();
    let python = peers::paho_python();
    let seed = peers::seed_demo();
    let bench = support::bin("mqtt-bench");
    let bin_dir = bench.parent().expect("binaries live in a directory");
    let out = tempfile::tempdir().expect("temp dir");

    let started = Instant::now();
    let mut command = Command::new(peers::workspace_root().join("scripts/bench"));
    command
        .args(["--quick", "--messages", "2000", "--repeat", "1", "--out"])
        .arg(out.path())
        // The debug binaries this test run built: no release build here.
        .env("MQTT_BENCH_BIN_DIR", bin_dir)
        // Never apt-get or pip from a test.
        .env("MQTT_BENCH_INSTALL", "no")
        .env_remove("MQTT_BENCH_MOSQUITTO")
        .env_remove("MQTT_BENCH_NATS_SERVER");
    match &python {
        Some(python) => command.env("MQTT_PAHO_PYTHON", python),
        None => command.env("MQTT_PAHO_PYTHON", "/nonexistent/python"),
    };
    let output = command.output().expect("running scripts/bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the smoke run took {:?}",
        started.elapsed()
    );

    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json is JSON");
    let rows = json["rows"].as_array().expect("rows");
    for group in ["pipeline", "payload", "devices", "latency", "storage"] {
        assert!(
            rows.iter().any(|r| r["group"] == group),
            "no {group} row: {json}"
        );
    }
    for row in rows {
        if let Some(why) = row["skipped"].as_str() {
            // Skipped only for a peer this machine lacks, and then neither run nor judged.
            let lacks = |peer: &str, found: bool| why.contains(peer) && !found;
            assert!(
                lacks("mosquitto", mosquitto.is_some())
                    || lacks("nats-server", nats_server.is_some())
                    || lacks("paho", python.is_some())
                    || lacks("seed demo", seed.is_some()),
                "skipped though its peer is here: {row}"
            );
            assert!(
                row["median"].is_null() && row["runs"] == serde_json::json!([]),
                "{row}"
            );
            continue;
        }
        assert_eq!(row["all_complete"], true, "row not verified: {row}");
        assert!(
            row["median"]["msgs_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{row}"
        );
        assert!(
            row["median"]["broker_rss_kib"].as_u64().unwrap_or(0) > 0,
            "{row}"
        );
    }
    // The latency table: three rates through each broker that is here, each with all
    // three histograms and its distribution.
    let paced: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["group"] == "latency" && r["skipped"].is_null())
        .collect();
    assert!(
        paced.len() >= 6,
        "ours and rumqttd at 3 rates at least: {json}"
    );
    for row in &paced {
        let median = &row["median"];
        for histogram in ["latency_us", "transit_us", "publisher_lateness_us"] {
            assert!(median[histogram]["p999"].as_u64().is_some(), "{row}");
        }
        assert!(
            median["latency_percentiles_us"]
                .as_array()
                .is_some_and(|points| points.len() > 3),
            "{row}"
        );
    }
    assert!(stdout.contains("| row |"), "no table on stdout:\n{stdout}");
    assert!(
        stdout.contains("| paced row"),
        "no latency table:\n{stdout}"
    );
    if mosquitto.is_some() {
        assert!(
            stdout.contains("latency p50 at 10000 msg/s: ours / Mosquitto"),
            "no latency ratio:\n{stdout}"
        );
    }
    for picture in ["bench.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(out.path().join(picture))
            .unwrap_or_else(|e| panic!("{picture} not written: {e}"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
