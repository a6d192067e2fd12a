//! `mqtt-bench`: runs the same publisher/subscriber workload through our broker,
//! Mosquitto, a 3-node NATS cluster and the original Python demo, each row several times, and writes the
//! medians as a table, JSON and an SVG picture. `scripts/bench` builds and runs it.

mod chart;
mod runner;
mod scenario;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use mqtt_harness::nats;
use mqtt_harness::peers::{find_program, python_with_paho};
use serde_json::json;

use runner::Peers;
use scenario::{Plan, Scenario};
use summary::Row;

/// Benchmark harness: the same QoS 1 workload through our broker, Mosquitto, a 3-node
/// NATS Server cluster (config/nats) and the original Python demo, measured per process (CPU seconds and peak RSS from wait4).
///
/// Exits 0 when every row that ran verified complete in every run, 1 otherwise.
#[derive(Debug, Parser)]
#[command(name = "mqtt-bench")]
struct BenchArgs {
    /// Small sizes: the whole table in under a minute.
    #[arg(long)]
    quick: bool,

    /// Readings in the headline rows [default: 1,000,000; 100,000 with --quick]; other
    /// rows scale from it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(100..))]
    messages: Option<u64>,

    /// Runs per row; the table shows medians.
    #[arg(long, value_name = "K", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,

    /// Directory with mqtt-broker, mqtt-publisher and mqtt-subscriber [default: the
    /// directory of this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Also run the headline row with the publisher in DIR (e.g. a copy taken before a
    /// change) and the current broker and subscriber, side by side in the same run.
    #[arg(long, value_name = "DIR")]
    baseline_bin_dir: Option<PathBuf>,

    /// Where the table, JSON and SVG go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,

    /// The Mosquitto broker [default: found on PATH or in /usr/sbin].
    #[arg(long, value_name = "PATH", env = "MQTT_BENCH_MOSQUITTO")]
    mosquitto: Option<PathBuf>,

    /// NATS Server, for the 3-node cluster row [default: found on PATH or in /usr/sbin].
    /// Its configuration is config/nats, or the directory in $CLUSTER_CONFIG.
    #[arg(long, value_name = "PATH", env = "MQTT_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,

    /// A Python that can import paho.mqtt [default: target/venv/bin/python].
    #[arg(long, value_name = "PATH", env = "MQTT_PAHO_PYTHON")]
    python: Option<PathBuf>,

    /// The original demo's scripts [default: ../shared/seed-demo beside the workspace].
    #[arg(long, value_name = "DIR")]
    seed_dir: Option<PathBuf>,

    /// Extra flags for our publisher in every row, for tuning experiments (e.g.
    /// `--publisher-args=--inflight=500`); space-separated.
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    publisher_args: Option<String>,

    /// Fail instead of skipping a row whose peer is missing (the default under CI=true).
    #[arg(long)]
    require_peers: bool,

    /// Run only the rows whose group or name contains one of these (comma-separated).
    #[arg(long, value_name = "TEXT,...", value_delimiter = ',')]
    only: Vec<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn peers(args: &BenchArgs) -> Peers {
    let python = args
        .python
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| workspace_root().join("target/venv/bin/python"));
    let seed = args
        .seed_dir
        .clone()
        .unwrap_or_else(|| workspace_root().join("../shared/seed-demo"));
    Peers {
        mosquitto: args.mosquitto.clone().or_else(|| find_program("mosquitto")),
        python: python_with_paho(&python),
        seed_dir: seed.join("seed_pub.py").is_file().then_some(seed),
        nats_server: args
            .nats_server
            .clone()
            .or_else(|| find_program("nats-server")),
        nats_config: nats::config_dir(&workspace_root()),
    }
}

/// The 1-minute load average, 0 when unknown.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn main() -> ExitCode {
    match run(BenchArgs::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The benchmark: plan the rows, mark those whose peer is missing, run the rounds,
/// summarise, write the outputs. True when every row that ran verified complete (and,
/// when peers are required, none was skipped).
fn run(args: BenchArgs) -> Result<bool> {
    let require = args.require_peers || std::env::var("CI").is_ok_and(|v| v == "true");
    let mut rows: Vec<Row> = plan(&args)?.into_iter().map(Row::new).collect();
    let peers = peers(&args);
    let all_peers = mark_skipped(&mut rows, &peers);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("while creating {}", args.out.display()))?;
    let load_before = loadavg();
    if load_before > 0.5 {
        eprintln!("warning: load average {load_before:.2} before the benchmark: other work on this machine will skew the figures");
    }
    let scratch = args.out.join("runs");
    run_rounds(&mut rows, &peers, &scratch, args.repeat)?;
    let _ = std::fs::remove_dir_all(&scratch);
    // Every row is summarised, also after one that failed.
    let verdicts: Vec<bool> = rows.iter_mut().map(Row::summarise).collect();
    let verified = verdicts.iter().all(|ok| *ok);
    write_outputs(&args, &rows, load_before)?;
    Ok(verified && (all_peers || !require))
}

/// The rows `args` asks for, in table order.
fn plan(args: &BenchArgs) -> Result<Vec<Scenario>> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable has a directory")?
            .to_path_buf(),
    };
    let plan = Plan {
        quick: args.quick,
        messages: args
            .messages
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 }),
        bin_dir,
        baseline_bin_dir: args.baseline_bin_dir.clone(),
        publisher_args: args
            .publisher_args
            .as_deref()
            .map(|a| a.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    Ok(scenario::all(&plan)
        .into_iter()
        .filter(|s| {
            args.only.is_empty()
                || args
                    .only
                    .iter()
                    .any(|t| s.group.contains(t.as_str()) || s.name.contains(t.as_str()))
        })
        .collect())
}

/// Marks the rows whose peer is missing here as skipped, saying why; false if any was.
fn mark_skipped(rows: &mut [Row], peers: &Peers) -> bool {
    let mut all = true;
    for row in rows {
        if let Some(why) = row.scenario.missing_peer(peers) {
            eprintln!("== {}: skipped: {why}", row.label());
            row.skipped = Some(why.into());
            all = false;
        }
    }
    all
}

/// Rounds, not rows: round i runs every row once, so that whatever else the machine does
/// meanwhile (a build, say) weighs on every row alike.
fn run_rounds(rows: &mut [Row], peers: &Peers, scratch: &Path, repeat: u32) -> Result<()> {
    for i in 1..=repeat {
        for (index, row) in rows.iter_mut().enumerate() {
            if row.skipped.is_some() {
                continue;
            }
            let dir = scratch.join(format!("{index}-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let label = format!("{} [{i}/{repeat}]", row.label());
            match row.scenario.run_once(peers, &dir) {
                Ok(m) => {
                    let verdict = if m.complete {
                        "verified"
                    } else {
                        "NOT VERIFIED"
                    };
                    eprintln!(
                        "== {label}: {} msgs, {:.2} s, {:.0} msg/s, {verdict}",
                        row.scenario.messages, m.wall_s, m.msgs_per_s
                    );
                    row.runs.push(m);
                }
                Err(e) => {
                    eprintln!("== {label}: failed: {e:#}");
                    row.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    Ok(())
}

/// The tables (stdout and bench.md), every run (bench.json) and the pictures (bench.svg,
/// and latency.svg when latency rows ran).
fn write_outputs(args: &BenchArgs, rows: &[Row], load_before: f64) -> Result<()> {
    let load_after = loadavg();
    let ratios = summary::ratios(rows);
    let mut text = summary::table(rows);
    text.push('\n');
    if let Some(latency) = summary::latency_table(rows) {
        text.push_str(&latency);
        text.push('\n');
    }
    for r in &ratios {
        text.push_str(&format!("{}: {:.2}x\n", r.what, r.ratio));
    }
    for row in rows.iter().filter(|r| r.scenario.group == "pipeline") {
        if let Some(cpu) = summary::cpu_per_million(row) {
            text.push_str(&format!(
                "CPU seconds per 10^6 messages, all processes, {}: {cpu:.2}\n",
                row.scenario.name
            ));
        }
    }
    text.push_str(&format!(
        "load average (1 min): {load_before:.2} before, {load_after:.2} after\n"
    ));
    println!("\n{text}");

    let mode = if args.quick { "quick" } else { "full" };
    let doc = json!({
        "schema_version": 1,
        "kind": "bench",
        "mode": mode,
        "repeat": args.repeat,
        "publisher_args": args.publisher_args,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rows": rows,
        "ratios": ratios,
    });
    let json_path = args.out.join("bench.json");
    let md_path = args.out.join("bench.md");
    let svg_path = args.out.join("bench.svg");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::write(&md_path, &text)?;
    let title = format!(
        "mqtt-pipeline benchmark ({mode}, median of {})",
        args.repeat
    );
    std::fs::write(&svg_path, chart::svg(rows, &title)?)?;
    let mut wrote = format!(
        "{}, {} and {}",
        json_path.display(),
        md_path.display(),
        svg_path.display()
    );
    if let Some(latency) = chart::latency_svg(rows, &title)? {
        let latency_path = args.out.join("latency.svg");
        std::fs::write(&latency_path, latency)?;
        wrote.push_str(&format!(", {}", latency_path.display()));
    }
    eprintln!("wrote {wrote}");
    Ok(())
}
