//! `scripts/bench --quick` as a smoke check: every row of the benchmark runs once at a
//! tiny size and verifies complete, and the table, JSON and picture are written. No
//! timing is asserted; the figures of a debug build on a busy machine mean nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::peers;

#[test]
fn the_quick_benchmark_runs_every_row_and_writes_its_results() {
    // Skips (with a message) when a peer is missing, fails under CI=true.
    let (Some(_), Some(python), Some(_)) =
        (peers::mosquitto(), peers::paho_python(), peers::seed_demo())
    else {
        return;
    };
    let bench = support::bin("mqtt-bench");
    let bin_dir = bench.parent().expect("binaries live in a directory");
    let out = tempfile::tempdir().expect("temp dir");

    let started = Instant::now();
    let output = Command::new(peers::workspace_root().join("scripts/bench"))
        .args(["--quick", "--messages", "2000", "--repeat", "1", "--out"])
        .arg(out.path())
        // The debug binaries this test run built: no release build here.
        .env("MQTT_BENCH_BIN_DIR", bin_dir)
        .env("MQTT_PAHO_PYTHON", &python)
        .output()
        .expect("running scripts/bench");
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
    for group in ["pipeline", "payload", "devices", "latency"] {
        assert!(
            rows.iter().any(|r| r["group"] == group),
            "no {group} row: {json}"
        );
    }
    for row in rows {
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
    let paced = rows
        .iter()
        .find(|r| r["group"] == "latency")
        .expect("latency row");
    assert!(
        paced["median"]["latency_us"]["p99"].as_u64().is_some(),
        "{paced}"
    );
    assert!(stdout.contains("| row |"), "no table on stdout:\n{stdout}");
    let svg = std::fs::read_to_string(out.path().join("bench.svg")).expect("bench.svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}
