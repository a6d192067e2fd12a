//! `mqtt-cluster up|down|status`: the 3-node NATS cluster of config/nats as nodes that
//! outlive the command (`scripts/cluster` is a thin shell over it). The nodes start
//! exactly as the benchmark's and the tests' do (`mqtt_harness::nats`); their pids,
//! logs, stores and ports live in CLUSTER_DIR.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mqtt_harness::nats::{self, Ports, Unready, NODES};
use mqtt_harness::peers::find_program;
use mqtt_harness::process::tail;

/// A 3-node NATS Server cluster on 127.0.0.1 that speaks MQTT 3.1.1 on every node, from
/// config/nats (read node1.conf and mqtt.conf for every choice).
#[derive(Debug, Parser)]
#[command(name = "mqtt-cluster")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,

    /// Data, pid, log and ports files.
    #[arg(long, env = "CLUSTER_DIR", default_value = "target/nats-cluster")]
    dir: PathBuf,

    /// Directory holding node1.conf..node3.conf [default: config/nats].
    #[arg(long, env = "CLUSTER_CONFIG")]
    config: Option<PathBuf>,

    /// Node N (1..3) listens on BASE+10N+0 for NATS clients, +1 for routes, +2 for HTTP
    /// monitoring, +3 for MQTT; NATS_NODE<N>_<CLIENT|CLUSTER|HTTP|MQTT>_PORT overrides one.
    #[arg(long, env = "CLUSTER_BASE_PORT", default_value_t = 14200, value_parser = clap::value_parser!(u16).range(1024..=65490))]
    base_port: u16,

    /// Seconds `up` waits for the nodes to become healthy.
    #[arg(long, env = "CLUSTER_WAIT", default_value_t = 30)]
    wait: u64,

    /// The nats-server binary [default: found on PATH or in /usr/sbin].
    #[arg(long, env = "NATS_SERVER")]
    nats_server: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the three nodes; waits until each is healthy.
    Up,
    /// Which nodes run, their MQTT ports; exit 1 unless all three run.
    Status,
    /// Stop them (their data stays; delete the directory to forget it).
    Down,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up => up(&cli),
        Cmd::Status => status(&cli.dir),
        Cmd::Down => down(&cli.dir).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn pid_file(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("node{n}.pid"))
}

fn log_file(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("node{n}.log"))
}

/// The pid of node `n` if it runs.
fn running(dir: &Path, n: usize) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir, n))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

fn up(cli: &Cli) -> Result<bool> {
    let server = match &cli.nats_server {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => bail!("NATS_SERVER={} is not an executable file", path.display()),
        None => find_program("nats-server").context(
            "nats-server not found: install it with `apt-get install nats-server` \
             (Debian/Ubuntu, version 2.9 or newer), or set NATS_SERVER=/path/to/nats-server",
        )?,
    };
    let config = cli
        .config
        .clone()
        .unwrap_or_else(|| nats::config_dir(Path::new(".")));
    let ports = Ports::from_base(cli.base_port, |var| std::env::var(var).ok())
        .map_err(anyhow::Error::msg)?;
    let dir = &cli.dir;
    for n in NODES {
        if let Some(pid) = running(dir, n) {
            bail!(
                "node{n} already runs (pid {pid}, {}); `scripts/cluster down` first",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    std::fs::write(dir.join("ports.env"), ports.to_env_lines())?;
    for n in NODES {
        let check = nats::node_command(&server, &config, n, &ports, &dir)
            .arg("-t")
            .output()
            .context("while checking the configuration")?;
        if !check.status.success() {
            bail!(
                "{}/node{n}.conf is not valid: {}",
                config.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
    }
    let mut children = Vec::new();
    for n in NODES {
        std::fs::create_dir_all(dir.join(format!("node{n}")))?;
        let log = std::fs::File::create(log_file(&dir, n))?;
        let child = nats::node_command(&server, &config, n, &ports, &dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            // Its own process group: the node outlives this command and ignores a
            // Ctrl-C meant for the caller.
            .process_group(0)
            .spawn()
            .with_context(|| format!("while starting node{n}"))?;
        std::fs::write(pid_file(&dir, n), format!("{}\n", child.id()))?;
        children.push(child);
    }
    let timeout = Duration::from_secs(cli.wait);
    let exited = |n: usize| children[n - 1].try_wait().ok().flatten().is_some();
    match nats::wait_healthy(&ports, timeout, exited) {
        Ok(()) => status(&dir),
        Err(unready) => {
            let (n, why) = match unready {
                Unready::Exited(n) => (n, "exited while starting".to_owned()),
                Unready::NotHealthy(n) => (
                    n,
                    format!("was not healthy within {timeout:?} (CLUSTER_WAIT)"),
                ),
            };
            let log = std::fs::read_to_string(log_file(&dir, n)).unwrap_or_default();
            let _ = down(&dir);
            bail!(
                "node{n} {why}; the end of {}:\n{}",
                log_file(&dir, n).display(),
                tail(&log)
            )
        }
    }
}

fn status(dir: &Path) -> Result<bool> {
    let Ok(env) = std::fs::read_to_string(dir.join("ports.env")) else {
        println!(
            "no cluster in {} (scripts/cluster up starts one)",
            dir.display()
        );
        return Ok(false);
    };
    let ports = Ports::from_base(14200, |var| {
        env.lines()
            .find_map(|l| l.strip_prefix(var)?.strip_prefix('=').map(str::to_owned))
    })
    .map_err(anyhow::Error::msg)?;
    let mut all = true;
    for n in NODES {
        let mqtt = ports.mqtt[n - 1];
        match running(dir, n) {
            Some(pid) => {
                let state = if nats::healthy(ports.http[n - 1]) {
                    "healthy"
                } else {
                    "not healthy (yet?)"
                };
                println!("node{n}: running (pid {pid}), MQTT on 127.0.0.1:{mqtt}, {state}");
            }
            None => {
                all = false;
                println!("node{n}: stopped (MQTT port 127.0.0.1:{mqtt})");
            }
        }
    }
    println!("data and logs: {}", dir.display());
    Ok(all)
}

fn down(dir: &Path) -> Result<()> {
    let pids: Vec<i32> = NODES.iter().filter_map(|&n| running(dir, n)).collect();
    for &pid in &pids {
        // SAFETY: signalling a node this command started (its pid file says so).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    // A node flushes its streams on SIGTERM; give all of them 10 s, then SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in &pids {
        // SAFETY: as above; signal 0 only checks the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for n in NODES {
        let _ = std::fs::remove_file(pid_file(dir, n));
    }
    println!(
        "stopped {} node(s); data and logs stay in {}",
        pids.len(),
        dir.display()
    );
    Ok(())
}
