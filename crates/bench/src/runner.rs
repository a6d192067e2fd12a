//! Runs one row once: a fresh broker, the subscriber (ready before anything is sent),
//! then the publisher; measures from the publisher's start to the subscriber's verdict.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mqtt_harness::nats::{Cluster, Ports};
use mqtt_harness::process::{free_port, tail, Exit, Proc};
use mqtt_protocol::report::{BaselineReport, PublishReport, VerifyReport};
use mqtt_protocol::timing::Latencies;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::scenario::{BrokerKind, Clients, Scenario, Storage};

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
    /// Latency, transit and the publisher's lateness from our subscriber's report (in a
    /// median: each percentile the median over the runs, the distribution the median
    /// run's).
    #[serde(flatten)]
    pub latency: Option<Latencies>,
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
            let ports = Ports::free()?;
            let mut cluster =
                Cluster::start(server, &peers.nats_config, dir, ports, NATS_READY_TIMEOUT)?;
            let result = self.run_ours(
                publisher_args,
                cluster.mqtt(1),
                cluster.mqtt(2),
                dir,
                timeout,
            );
            let (cpu_s, peak_rss_kib) = cluster.terminate();
            return result.map(|m| Measurement {
                broker_cpu_s: cpu_s,
                broker_rss_kib: peak_rss_kib,
                ..m
            });
        }
        let (mut broker, port) = match self.broker {
            BrokerKind::Ours => start_our_broker(&self.bin_dir, dir, self.storage)?,
            BrokerKind::OursWebSocket => start_our_websocket_broker(&self.bin_dir, dir)?,
            BrokerKind::Rumqttd => start_rumqttd(&self.bin_dir, dir)?,
            BrokerKind::Mosquitto => start_mosquitto(peers, dir)?,
            BrokerKind::NatsCluster => unreachable!("handled above"),
        };
        let result = match &self.clients {
            Clients::Ours { publisher_args } => {
                self.run_ours(publisher_args, port, port, dir, timeout)
            }
            Clients::Seed => self.run_seed(peers, &mut broker, port, dir, timeout),
            Clients::Plain { inflight } => self.run_plain(*inflight, port, dir, timeout),
        };
        let broker = broker.terminate(Duration::from_secs(5));
        result.map(|m| Measurement {
            broker_cpu_s: broker.map_or(0.0, |e| e.cpu_s),
            broker_rss_kib: broker.map_or(0, |e| e.peak_rss_kib),
            ..m
        })
    }
}

/// How long the NATS nodes get to elect a JetStream leader and report healthy.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(40);

/// Starts one of the row's processes with its output in `dir`.
fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> Result<Proc> {
    let mut command = Proc::command(program);
    command
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Ok(Proc::spawn(name, &mut command, Some(dir))?)
}

/// Waits up to `timeout` for `needle` on `proc`'s stderr.
fn wait_for_stderr(proc: &mut Proc, needle: &str, timeout: Duration) -> Result<()> {
    proc.wait_until(&format!("{needle:?} on stderr"), timeout, |p| {
        p.stderr().contains(needle)
    })?;
    Ok(())
}

/// Whether a client exited 0.
fn success(exit: &Exit) -> bool {
    exit.status.success()
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
        let ws = strings(&["--ws"]);
        let transport: &[String] = match self.broker {
            BrokerKind::OursWebSocket => &ws,
            _ => &[],
        };
        sub_args.extend_from_slice(transport);
        if self.broker == BrokerKind::NatsCluster || self.storage.is_some() {
            // A named client: a persistent session, whose subscription lives in the
            // cluster (a replicated JetStream consumer) and survives a node.
            sub_args.extend(strings(&["--client-id", "bench-subscriber"]));
        }
        let subscriber = self.bin_dir.join("mqtt-subscriber");
        let mut sub = spawn("subscriber", &subscriber, &sub_args, dir)?;
        wait_for_stderr(&mut sub, "subscribed to", Duration::from_secs(20))?;
        let mut args = strings(&[
            "--port",
            &pub_port.to_string(),
            "--progress-every",
            "0",
            "--report-json",
            path_str(&pub_report)?,
        ]);
        args.extend_from_slice(transport);
        args.extend_from_slice(publisher_args);
        let started = Instant::now();
        let program = self.publisher_dir.join("mqtt-publisher");
        let mut publisher = spawn("publisher", &program, &args, dir)?;
        let sub_exit = sub.wait(timeout)?;
        let pub_exit = publisher.wait(Duration::from_secs(30))?;

        let verified: VerifyReport = read_report(&sub_report, &sub)?;
        let published: PublishReport = read_report(&pub_report, &publisher)?;
        Ok(Measurement {
            complete: success(&sub_exit) && success(&pub_exit) && verified.verdict.complete,
            publisher_msgs_per_s: Some(published.msgs_per_s),
            subscriber_msgs_per_s: Some(verified.msgs_per_s),
            latency: (verified.latency.latency_us.samples > 0).then_some(verified.latency),
            ..self.timed(started, &sub_exit, &pub_exit)
        })
    }

    /// `mqtt-baseline subscribe`, then `mqtt-baseline publish`: rumqttc and a count.
    fn run_plain(
        &self,
        inflight: u16,
        port: u16,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Measurement> {
        let baseline = self.bin_dir.join("mqtt-baseline");
        let (port, n) = (port.to_string(), self.messages.to_string());
        let mut sub = spawn(
            "plain-subscriber",
            &baseline,
            &strings(&["subscribe", "--port", &port, "--count", &n]),
            dir,
        )?;
        wait_for_stderr(&mut sub, "subscribed", Duration::from_secs(20))?;
        let started = Instant::now();
        let mut publisher = spawn(
            "plain-publisher",
            &baseline,
            &strings(&[
                "publish",
                "--port",
                &port,
                "--count",
                &n,
                "--inflight",
                &inflight.to_string(),
            ]),
            dir,
        )?;
        let sub_exit = sub.wait(timeout)?;
        let pub_exit = publisher.wait(Duration::from_secs(30))?;
        let received: BaselineReport = parse_stdout(&sub)?;
        let published: BaselineReport = parse_stdout(&publisher)?;
        Ok(Measurement {
            complete: success(&sub_exit) && success(&pub_exit) && received.complete,
            publisher_msgs_per_s: Some(published.msgs_per_s),
            subscriber_msgs_per_s: Some(received.msgs_per_s),
            ..self.timed(started, &sub_exit, &pub_exit)
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
        let mut sub = spawn(
            "seed-sub",
            python,
            &strings(&[path_str(&seed.join("seed_sub.py"))?, &port, &n, "900"]),
            dir,
        )?;
        sub.wait_until("ready", Duration::from_secs(20), |p| {
            p.stdout().contains("ready")
        })?;
        // `ready` comes before the SUBACK; Mosquitto logs the subscription itself.
        wait_for_stderr(broker, "seed-sub 1 sensors/data", Duration::from_secs(10))?;
        let started = Instant::now();
        let mut publisher = spawn(
            "seed-pub",
            python,
            &strings(&[path_str(&seed.join("seed_pub.py"))?, &port, &n]),
            dir,
        )?;
        let sub_exit = sub.wait(timeout)?;
        let pub_exit = publisher.wait(Duration::from_secs(60))?;
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
            complete: complete && success(&pub_exit),
            publisher_msgs_per_s: pub_secs.map(|s| self.messages as f64 / s),
            subscriber_msgs_per_s: sub_secs.map(|s| self.messages as f64 / s),
            ..self.timed(started, &sub_exit, &pub_exit)
        })
    }

    /// What every row measures the same way: the wall time from the publisher's start to
    /// the subscriber's exit, the rate that makes, and each client's CPU time and memory.
    fn timed(&self, started: Instant, sub_exit: &Exit, pub_exit: &Exit) -> Measurement {
        let wall_s = sub_exit.at.duration_since(started).as_secs_f64();
        Measurement {
            wall_s,
            msgs_per_s: self.messages as f64 / wall_s,
            publisher_cpu_s: pub_exit.cpu_s,
            subscriber_cpu_s: sub_exit.cpu_s,
            publisher_rss_kib: pub_exit.peak_rss_kib,
            subscriber_rss_kib: sub_exit.peak_rss_kib,
            ..Measurement::default()
        }
    }
}

fn start_our_broker(bin_dir: &Path, dir: &Path, storage: Option<Storage>) -> Result<(Proc, u16)> {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    if let Some(fsync) = storage.and_then(Storage::fsync) {
        let config = dir.join("broker.toml");
        std::fs::write(&config, format!("[storage]\nfsync = \"{fsync}\"\n"))
            .context("while writing the broker's configuration")?;
        let data = dir.join("data");
        args.extend(strings(&[
            "--config",
            path_str(&config)?,
            "--data-dir",
            path_str(&data)?,
        ]));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let program = bin_dir.join("mqtt-broker");
    start_listening(&program, &args, "mqtt-broker listening on ", dir)
}

/// Our broker with a WebSocket listener too: the WebSocket port, from the broker's
/// `listening for WebSockets on ws://ADDR/mqtt` line.
fn start_our_websocket_broker(bin_dir: &Path, dir: &Path) -> Result<(Proc, u16)> {
    let program = bin_dir.join("mqtt-broker");
    let args = ["--listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"];
    start_listening(
        &program,
        &args,
        "mqtt-broker listening for WebSockets on ws://",
        dir,
    )
}

/// rumqttd's own broker (`mqtt-baseline broker`), which prints `listening on ADDR`.
fn start_rumqttd(bin_dir: &Path, dir: &Path) -> Result<(Proc, u16)> {
    let program = bin_dir.join("mqtt-baseline");
    let args = ["broker", "--listen", "127.0.0.1:0"];
    start_listening(&program, &args, "listening on ", dir)
}

/// Starts a broker and reads its port from the stdout line that starts with `prefix`
/// (`PREFIX` then `ADDR:PORT`, possibly followed by a path).
fn start_listening(program: &Path, args: &[&str], prefix: &str, dir: &Path) -> Result<(Proc, u16)> {
    let mut broker = spawn("broker", program, &strings(args), dir)?;
    broker.wait_until("its listening line", Duration::from_secs(20), |p| {
        p.stdout().lines().any(|line| line.starts_with(prefix))
    })?;
    let stdout = broker.stdout();
    let port = stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|addr| {
            let addr = addr.trim();
            let addr = addr.strip_suffix("/mqtt").unwrap_or(addr);
            addr.rsplit(':').next()?.parse().ok()
        })
        .with_context(|| format!("no port after {prefix:?} in {stdout:?}"))?;
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
    let mut broker = spawn(
        "mosquitto",
        mosquitto,
        &strings(&["-c", path_str(&config)?]),
        dir,
    )?;
    broker.wait_until("listening", Duration::from_secs(10), |p| {
        p.stderr().contains(" running") && TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    Ok((broker, port))
}

/// A client's JSON report as the type it was written from: a renamed or missing field
/// is an error here, not a zero in the table.
fn read_report<T: DeserializeOwned>(path: &Path, proc: &Proc) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{} wrote no report; stderr:\n{}",
            proc.name,
            tail(&proc.stderr())
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}'s report {} is not what this bench reads",
            proc.name,
            path.display()
        )
    })
}

/// A plain client's one-line JSON report on stdout.
fn parse_stdout<T: DeserializeOwned>(proc: &Proc) -> Result<T> {
    let out = proc.stdout();
    let line = out.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "{} printed no report; stderr:\n{}",
            proc.name,
            tail(&proc.stderr())
        )
    })
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("paths must be UTF-8")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
