//! The 3-node NATS Server cluster of config/nats, started in one place for all who run
//! it: the benchmark's cluster row and tests/cluster.rs (as child processes, measured and
//! killed with them) and `scripts/cluster` (through `mqtt-cluster`, as nodes that outlive
//! it). Only ever on 127.0.0.1.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::process::{free_port, tail, Proc};

/// The nodes, numbered 1 to 3 as in config/nats/node<N>.conf.
pub const NODES: [usize; 3] = [1, 2, 3];

/// Every port of the cluster; index `n - 1` is node n's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub client: [u16; 3],
    pub cluster: [u16; 3],
    pub http: [u16; 3],
    pub mqtt: [u16; 3],
}

/// The kinds of port, in the order `BASE + 10 N + k` gives them (see `scripts/cluster`).
const KINDS: [&str; 4] = ["CLIENT", "CLUSTER", "HTTP", "MQTT"];

impl Ports {
    /// Free loopback ports (bound, then released: another process could take one in
    /// between, which makes a node fail to start; callers try again).
    pub fn free() -> io::Result<Ports> {
        let mut ports = [[0u16; 3]; 4];
        for kind in &mut ports {
            for port in kind.iter_mut() {
                *port = free_port()?;
            }
        }
        Ok(Ports::from_kinds(ports))
    }

    /// Node N listens on `base + 10 N + k` for kind k (client, cluster, HTTP, MQTT),
    /// unless `override_port("NATS_NODE<N>_<KIND>_PORT")` names another.
    pub fn from_base(
        base: u16,
        override_port: impl Fn(&str) -> Option<String>,
    ) -> Result<Ports, String> {
        let mut ports = [[0u16; 3]; 4];
        for (k, kind) in KINDS.iter().enumerate() {
            for n in NODES {
                let var = format!("NATS_NODE{n}_{kind}_PORT");
                ports[k][n - 1] = match override_port(&var) {
                    Some(v) => v
                        .parse()
                        .map_err(|_| format!("{var}={v} is not a port number"))?,
                    None => base + 10 * n as u16 + k as u16,
                };
            }
        }
        Ok(Ports::from_kinds(ports))
    }

    fn from_kinds([client, cluster, http, mqtt]: [[u16; 3]; 4]) -> Ports {
        Ports {
            client,
            cluster,
            http,
            mqtt,
        }
    }

    /// The ports as `NATS_NODE<N>_<KIND>_PORT=...` lines (what `mqtt-cluster up` writes
    /// to ports.env and reads back).
    pub fn to_env_lines(&self) -> String {
        let mut out = String::new();
        for n in NODES {
            for (kind, ports) in KINDS
                .iter()
                .zip([self.client, self.cluster, self.http, self.mqtt])
            {
                out.push_str(&format!("NATS_NODE{n}_{kind}_PORT={}\n", ports[n - 1]));
            }
        }
        out
    }

    /// The variables config/nats/node<N>.conf reads, with each node's store under `dir`.
    fn config_env(&self, dir: &Path) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for n in NODES {
            let i = n - 1;
            env.push((
                format!("NATS_NODE{n}_CLIENT_PORT"),
                self.client[i].to_string(),
            ));
            env.push((
                format!("NATS_NODE{n}_CLUSTER_PORT"),
                self.cluster[i].to_string(),
            ));
            env.push((format!("NATS_NODE{n}_MQTT_PORT"), self.mqtt[i].to_string()));
            env.push((
                format!("NATS_NODE{n}_HTTP"),
                format!("127.0.0.1:{}", self.http[i]),
            ));
            env.push((
                format!("NATS_NODE{n}_STORE_DIR"),
                dir.join(format!("node{n}")).display().to_string(),
            ));
            env.push((
                format!("NATS_ROUTE{n}"),
                format!("nats-route://127.0.0.1:{}", self.cluster[i]),
            ));
        }
        env
    }
}

/// The configuration directory: `$CLUSTER_CONFIG` (e.g. a copy with other replica
/// settings), else config/nats in `workspace`.
pub fn config_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CLUSTER_CONFIG") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace.join("config/nats"),
    }
}

/// The command that runs node `n` of `config` with `ports`, its store under `dir`.
pub fn node_command(server: &Path, config: &Path, n: usize, ports: &Ports, dir: &Path) -> Command {
    let mut command = Proc::command(server);
    command
        .arg("-c")
        .arg(config.join(format!("node{n}.conf")))
        .envs(ports.config_env(dir));
    command
}

pub use crate::http::get as http_get;

/// True when node with monitoring port `http` says it is healthy (its JetStream too).
pub fn healthy(http: u16) -> bool {
    http_get(http, "/healthz").is_some_and(|body| body.contains("\"ok\""))
}

/// Why the cluster did not come up.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("while starting nats node{node}: {source}")]
    Spawn { node: usize, source: io::Error },
    #[error("nats node{node} exited while starting:\n{log}")]
    Exited { node: usize, log: String },
    #[error("nats node{node} not healthy within {timeout:?}:\n{log}")]
    NotHealthy {
        node: usize,
        timeout: Duration,
        log: String,
    },
}

/// How a node failed to come up: it exited, or it was not healthy in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unready {
    Exited(usize),
    NotHealthy(usize),
}

/// Waits until every node answers /healthz with ok; `exited(n)` says when node n has
/// died meanwhile.
pub fn wait_healthy(
    ports: &Ports,
    timeout: Duration,
    mut exited: impl FnMut(usize) -> bool,
) -> Result<(), Unready> {
    let deadline = Instant::now() + timeout;
    for n in NODES {
        while !healthy(ports.http[n - 1]) {
            if exited(n) {
                return Err(Unready::Exited(n));
            }
            if Instant::now() >= deadline {
                return Err(Unready::NotHealthy(n));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Three running nodes, our children: measured when stopped, SIGKILLed when dropped.
pub struct Cluster {
    nodes: Vec<Proc>,
    pub ports: Ports,
}

impl Cluster {
    /// Starts node1..node3 of `config` on `ports` with their stores and logs under `dir`
    /// and waits until each is healthy.
    pub fn start(
        server: &Path,
        config: &Path,
        dir: &Path,
        ports: Ports,
        timeout: Duration,
    ) -> Result<Cluster, ClusterError> {
        let mut nodes = Vec::new();
        for n in NODES {
            let mut command = node_command(server, config, n, &ports, dir);
            let node = Proc::spawn(&format!("nats-node{n}"), &mut command, Some(dir))
                .map_err(|source| ClusterError::Spawn { node: n, source })?;
            nodes.push(node);
        }
        let mut cluster = Cluster { nodes, ports };
        let ready = wait_healthy(&ports, timeout, |n| {
            cluster.nodes[n - 1].try_wait().is_some()
        });
        match ready {
            Ok(()) => Ok(cluster),
            Err(Unready::Exited(node)) => Err(ClusterError::Exited {
                node,
                log: tail(&cluster.log(node)),
            }),
            Err(Unready::NotHealthy(node)) => Err(ClusterError::NotHealthy {
                node,
                timeout,
                log: tail(&cluster.log(node)),
            }),
        }
    }

    /// Node `n`'s MQTT port.
    pub fn mqtt(&self, n: usize) -> u16 {
        self.ports.mqtt[n - 1]
    }

    /// SIGKILL: the node gets no chance to hand anything over.
    pub fn kill(&mut self, n: usize) {
        self.nodes[n - 1].kill();
    }

    /// Node `n`'s log so far.
    pub fn log(&self, n: usize) -> String {
        self.nodes[n - 1].stderr()
    }

    /// Stops the three nodes (SIGTERM, 10 s to flush, SIGKILL); what they cost together
    /// (CPU seconds and peak RSS summed).
    pub fn terminate(&mut self) -> (f64, u64) {
        let mut total = (0.0, 0);
        for node in &mut self.nodes {
            if let Some(exit) = node.terminate(Duration::from_secs(10)) {
                total.0 += exit.cpu_s;
                total.1 += exit.peak_rss_kib;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_base_and_take_overrides() {
        let ports = Ports::from_base(14200, |var| {
            (var == "NATS_NODE2_MQTT_PORT").then(|| "15000".to_owned())
        })
        .unwrap();
        assert_eq!(ports.client, [14210, 14220, 14230]);
        assert_eq!(ports.mqtt, [14213, 15000, 14233]);
        assert!(ports
            .to_env_lines()
            .contains("NATS_NODE3_HTTP_PORT=14232\n"));
        let bad = Ports::from_base(14200, |_| Some("x".into())).unwrap_err();
        assert!(bad.contains("is not a port number"), "{bad}");
    }
}
