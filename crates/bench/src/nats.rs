//! The 3-node NATS Server cluster row: the three nodes of config/nats (the files
//! `scripts/cluster` and tests/cluster.rs run), started here directly on free loopback
//! ports so that each node is our child and `wait4` measures it like any other broker.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{free_port, tail, Proc, Usage};

/// How long the nodes get to elect a JetStream leader and report healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(40);

/// Three running nodes; `mqtt[i]` is node i+1's MQTT port.
pub struct NatsCluster {
    nodes: Vec<Proc>,
    pub mqtt: [u16; 3],
}

/// The configuration directory: `$CLUSTER_CONFIG` (as for scripts/cluster, e.g. a copy
/// with other replica settings), else config/nats in the workspace.
pub fn config_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CLUSTER_CONFIG") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace.join("config/nats"),
    }
}

impl NatsCluster {
    /// Starts node1..node3 of `config` with their stores under `dir` and waits until
    /// every node's /healthz says ok.
    pub fn start(server: &Path, config: &Path, dir: &Path) -> Result<NatsCluster> {
        // The variables config/nats/node<N>.conf reads (see scripts/cluster).
        let mut env: Vec<(String, String)> = Vec::new();
        let (mut mqtt, mut http) = ([0u16; 3], [0u16; 3]);
        for n in 1..=3 {
            let cluster = free_port()?;
            http[n - 1] = free_port()?;
            mqtt[n - 1] = free_port()?;
            env.push((
                format!("NATS_NODE{n}_CLIENT_PORT"),
                free_port()?.to_string(),
            ));
            env.push((format!("NATS_NODE{n}_CLUSTER_PORT"), cluster.to_string()));
            env.push((
                format!("NATS_NODE{n}_HTTP"),
                format!("127.0.0.1:{}", http[n - 1]),
            ));
            env.push((format!("NATS_NODE{n}_MQTT_PORT"), mqtt[n - 1].to_string()));
            let store = dir.join(format!("node{n}"));
            std::fs::create_dir_all(&store)?;
            env.push((format!("NATS_NODE{n}_STORE_DIR"), path_string(&store)?));
            env.push((
                format!("NATS_ROUTE{n}"),
                format!("nats-route://127.0.0.1:{cluster}"),
            ));
        }
        let mut nodes = Vec::new();
        for n in 1..=3 {
            let file = config.join(format!("node{n}.conf"));
            let args = vec!["-c".to_owned(), path_string(&file)?];
            nodes.push(Proc::spawn_with_env(
                &format!("nats-node{n}"),
                server,
                &args,
                &env,
                dir,
            )?);
        }
        let mut cluster = NatsCluster { nodes, mqtt };
        let deadline = Instant::now() + READY_TIMEOUT;
        for (i, port) in http.iter().enumerate() {
            loop {
                if cluster.nodes[i].try_reap().is_some() {
                    let log = tail(&cluster.nodes[i].stderr());
                    cluster.terminate();
                    bail!("nats node{} exited while starting:\n{log}", i + 1);
                }
                if healthz(*port).is_some_and(|body| body.contains("\"ok\"")) {
                    break;
                }
                if Instant::now() >= deadline {
                    let log = tail(&cluster.nodes[i].stderr());
                    cluster.terminate();
                    bail!(
                        "nats node{} not healthy within {READY_TIMEOUT:?}:\n{log}",
                        i + 1
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// Stops the three nodes; what they cost together (CPU seconds and peak RSS summed).
    pub fn terminate(&mut self) -> Usage {
        let mut total = Usage::default();
        for node in &mut self.nodes {
            let usage = node.terminate();
            total.cpu_s += usage.cpu_s;
            total.peak_rss_kib += usage.peak_rss_kib;
        }
        total
    }
}

/// The body of GET /healthz on a node's monitoring port, if it answers.
fn healthz(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .context("paths must be UTF-8")
}
