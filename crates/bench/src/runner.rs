//! Runs one row once: a fresh broker, the subscriber (ready before anything is sent),
//! then the publisher; measures from the publisher's start to the subscriber's verdict.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::nats::NatsCluster;
use crate::process::{free_port, tail, Proc, Usage};
use crate::scenario::{BrokerKind, Clients, Scenario};

/// The third-party programs a run may need.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    pub mosquitto: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub seed_dir: Option<PathBuf>,
    pub nats_server: Option<PathBuf>,
    /// The cluster's configuration (config/nats unless $CLUSTER_CONFIG says otherwise).
    pub nats_config: PathBuf,
}

/// Latency percentiles from our subscriber's report, µs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    /// From the publisher's start to the subscriber's exit.
    pub wall_s: f64,
    /// Verified readings per second of wall time.
    pub msgs_per_s: f64,
    /// Every reading arrived (and every client exited 0).
    pub complete: bool,
    pub publisher_cpu_s: f64,
    pub subscriber_cpu_s: f64,
    pub broker_cpu_s: f64,
    pub publisher_rss_kib: u64,
    pub subscriber_rss_kib: u64,
    pub broker_rss_kib: u64,
    /// The publisher's own rate (first publish to last acknowledgement), if it says.
    pub publisher_msgs_per_s: Option<f64>,
    /// The subscriber's own rate (first arrival to last), if it says.
    pub subscriber_msgs_per_s: Option<f64>,
    pub latency_us: Option<Latency>,
}

impl Scenario {
    /// Why this row cannot run here, if it cannot.
    pub fn missing_peer(&self, peers: &Peers) -> Option<&'static str> {
        if self.broker == BrokerKind::Mosquitto && peers.mosquitto.is_none() {
            return Some("mosquitto not found (apt-get install mosquitto)");
        }
        if self.broker == BrokerKind::NatsCluster && peers.nats_server.is_none() {
            return Some("nats-server not found (apt-get install nats-server)");
        }
        if self.clients == Clients::Seed {
            if peers.python.is_none() {
                return Some("Python with paho-mqtt not found (scripts/python-env.sh)");
            }
            if peers.seed_dir.is_none() {
                return Some("the seed demo (../shared/seed-demo) not found");
            }
        }
        None
    }

    /// Runs the row once in the scratch directory `dir`.
    pub fn run_once(&self, peers: &Peers, dir: &Path) -> Result<Measurement> {
        let mut timeout = Duration::from_secs(120 + self.messages / 2_000);
        if self.broker == BrokerKind::NatsCluster {
            // Some runs of NATS 2.9 go at ~100 msg/s from start to end (see
            // config/nats/mqtt.conf): a slow figure for the table, not a failure.
            timeout = Duration::from_secs(120 + self.messages / 80);
            let Some(server) = &peers.nats_server else {
                bail!("nats-server not found");
            };
            let Clients::Ours { publisher_args } = &self.clients else {
                bail!("the NATS cluster row runs our clients");
            };
            let mut cluster = NatsCluster::start(server, &peers.nats_config, dir)?;
            let [node1, node2, _] = cluster.mqtt;
            let result = self.run_ours(publisher_args, node1, node2, dir, timeout);
            return with_broker_usage(result, cluster.terminate());
        }
        let (mut broker, port) = match self.broker {
            BrokerKind::Ours => start_our_broker(&self.bin_dir, dir)?,
            BrokerKind::Mosquitto => start_mosquitto(peers, dir)?,
            BrokerKind::NatsCluster => unreachable!("handled above"),
        };
        let result = match &self.clients {
            Clients::Ours { publisher_args } => {
                self.run_ours(publisher_args, port, port, dir, timeout)
            }
            Clients::Seed => self.run_seed(peers, &mut broker, port, dir, timeout),
        };
        let broker_usage = broker.terminate();
        with_broker_usage(result, broker_usage)
    }
}

/// A run's measurement with what the broker (all its processes) cost.
fn with_broker_usage(result: Result<Measurement>, broker: Usage) -> Result<Measurement> {
    let mut m = result?;
    m.broker_cpu_s = broker.cpu_s;
    m.broker_rss_kib = broker.peak_rss_kib;
    Ok(m)
}

impl Scenario {
    /// Our subscriber on `sub_port`, then our publisher on `pub_port` (the same broker
    /// but for the cluster row).
    fn run_ours(
        &self,
        publisher_args: &[String],
        pub_port: u16,
        sub_port: u16,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Measurement> {
        let sub_report = dir.join("subscriber.json");
        let pub_report = dir.join("publisher.json");
        let mut sub_args = strings(&[
            "--port",
            &sub_port.to_string(),
            "--count",
            &self.messages.to_string(),
            "--progress-every",
            "0",
            "--idle-timeout",
            "15",
            "--report-json",
            path_str(&sub_report)?,
        ]);
        if self.broker == BrokerKind::NatsCluster {
            // A named client: a persistent session, whose subscription lives in the
            // cluster (a replicated JetStream consumer) and survives a node.
            sub_args.extend(strings(&["--client-id", "bench-subscriber"]));
        }
        let mut sub = Proc::spawn(
            "subscriber",
            &self.bin_dir.join("mqtt-subscriber"),
            &sub_args,
            dir,
        )?;
        sub.wait_until("subscription", Duration::from_secs(20), |_, err| {
            err.contains("subscribed to")
        })?;
        let mut args = strings(&[
            "--port",
            &pub_port.to_string(),
            "--progress-every",
            "0",
            "--report-json",
            path_str(&pub_report)?,
        ]);
        args.extend_from_slice(publisher_args);
        let started = Instant::now();
        let mut publisher = Proc::spawn(
            "publisher",
            &self.publisher_dir.join("mqtt-publisher"),
            &args,
            dir,
        )?;
        let (sub_usage, sub_end) = sub.reap_within(timeout)?;
        let (pub_usage, _) = publisher.reap_within(Duration::from_secs(30))?;
        let wall_s = sub_end.duration_since(started).as_secs_f64();

        let sub_json = read_json(&sub_report, &sub)?;
        let pub_json = read_json(&pub_report, &publisher)?;
        let latency = &sub_json["latency_us"];
        let latency_us = (latency["samples"].as_u64().unwrap_or(0) > 0).then(|| Latency {
            p50: latency["p50"].as_u64().unwrap_or(0),
            p90: latency["p90"].as_u64().unwrap_or(0),
            p99: latency["p99"].as_u64().unwrap_or(0),
            p999: latency["p999"].as_u64().unwrap_or(0),
            max: latency["max"].as_u64().unwrap_or(0),
        });
        Ok(Measurement {
            wall_s,
            msgs_per_s: self.messages as f64 / wall_s,
            complete: sub_usage.code == Some(0)
                && pub_usage.code == Some(0)
                && sub_json["complete"] == true,
            publisher_cpu_s: pub_usage.cpu_s,
            subscriber_cpu_s: sub_usage.cpu_s,
            publisher_rss_kib: pub_usage.peak_rss_kib,
            subscriber_rss_kib: sub_usage.peak_rss_kib,
            publisher_msgs_per_s: pub_json["msgs_per_s"].as_f64(),
            subscriber_msgs_per_s: sub_json["msgs_per_s"].as_f64(),
            latency_us,
            ..Measurement::default()
        })
    }

    fn run_seed(
        &self,
        peers: &Peers,
        broker: &mut Proc,
        port: u16,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Measurement> {
        let (Some(python), Some(seed)) = (&peers.python, &peers.seed_dir) else {
            bail!("the seed demo needs Python with paho-mqtt");
        };
        let port = port.to_string();
        let n = self.messages.to_string();
        let mut sub = Proc::spawn(
            "seed-sub",
            python,
            &strings(&[path_str(&seed.join("seed_sub.py"))?, &port, &n, "900"]),
            dir,
        )?;
        sub.wait_until("ready", Duration::from_secs(20), |out, _| {
            out.contains("ready")
        })?;
        // `ready` comes before the SUBACK; Mosquitto logs the subscription itself.
        broker.wait_until(
            "the seed subscription",
            Duration::from_secs(10),
            |_, err| err.contains("seed-sub 1 sensors/data"),
        )?;
        let started = Instant::now();
        let mut publisher = Proc::spawn(
            "seed-pub",
            python,
            &strings(&[path_str(&seed.join("seed_pub.py"))?, &port, &n]),
            dir,
        )?;
        let (sub_usage, sub_end) = sub.reap_within(timeout)?;
        let (pub_usage, _) = publisher.reap_within(Duration::from_secs(60))?;
        let wall_s = sub_end.duration_since(started).as_secs_f64();
        let sub_out = sub.stdout();
        let summary = sub_out.lines().last().unwrap_or("");
        let complete = summary.contains("missing 0 ") && summary.ends_with("ok=True");
        // "Total messages published: N acked: A in T s"
        let pub_out = publisher.stdout();
        let pub_secs = pub_out
            .lines()
            .last()
            .and_then(|l| l.rsplit(" in ").next())
            .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok());
        let sub_secs = summary
            .split(" in ")
            .nth(1)
            .and_then(|t| t.split('s').next())
            .and_then(|t| t.parse::<f64>().ok());
        if !complete {
            eprintln!(
                "  seed demo incomplete: {summary}\n{}",
                tail(&publisher.stdout())
            );
        }
        Ok(Measurement {
            wall_s,
            msgs_per_s: self.messages as f64 / wall_s,
            complete: complete && pub_usage.code == Some(0),
            publisher_cpu_s: pub_usage.cpu_s,
            subscriber_cpu_s: sub_usage.cpu_s,
            publisher_rss_kib: pub_usage.peak_rss_kib,
            subscriber_rss_kib: sub_usage.peak_rss_kib,
            publisher_msgs_per_s: pub_secs.map(|s| self.messages as f64 / s),
            subscriber_msgs_per_s: sub_secs.map(|s| self.messages as f64 / s),
            latency_us: None,
            ..Measurement::default()
        })
    }
}

fn start_our_broker(bin_dir: &Path, dir: &Path) -> Result<(Proc, u16)> {
    let mut broker = Proc::spawn(
        "broker",
        &bin_dir.join("mqtt-broker"),
        &strings(&["--listen", "127.0.0.1:0"]),
        dir,
    )?;
    broker.wait_until("listening line", Duration::from_secs(20), |out, _| {
        out.contains("listening on")
    })?;
    let out = broker.stdout();
    let port = out
        .lines()
        .find_map(|l| l.strip_prefix("mqtt-broker listening on "))
        .and_then(|addr| addr.trim().rsplit(':').next()?.parse().ok())
        .with_context(|| format!("no port in the broker's line {out:?}"))?;
    Ok((broker, port))
}

fn start_mosquitto(peers: &Peers, dir: &Path) -> Result<(Proc, u16)> {
    let Some(mosquitto) = &peers.mosquitto else {
        bail!("mosquitto not found");
    };
    let port = free_port()?;
    let config = dir.join("mosquitto.conf");
    // Unlimited queues, so that Mosquitto never drops what a slow subscriber has not
    // taken yet (its default queue holds 1000 QoS 1 messages per client).
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n\
             log_type notice\nlog_type information\nlog_type subscribe\n"
        ),
    )?;
    let mut broker = Proc::spawn(
        "mosquitto",
        mosquitto,
        &strings(&["-c", path_str(&config)?]),
        dir,
    )?;
    broker.wait_until("listening", Duration::from_secs(10), |_, err| {
        err.contains(" running") && TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    Ok((broker, port))
}

fn read_json(path: &Path, proc: &Proc) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{} wrote no report; stderr:\n{}",
            proc.name,
            tail(&proc.stderr())
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("paths must be UTF-8")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
