//! `mqtt-broker`: parse flags, start logging, load the configuration, run the broker until
//! SIGINT or SIGTERM; or run one of its tools (`passwd`, `gen-certs`). Everything else lives
//! in the library.

mod cli;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use mqtt_broker::config::{BrokerConfig, ConfigSource, DEFAULT_PATH};
use mqtt_protocol::exit;

/// The TLS address `--tls-cert` uses when neither `--tls-listen` nor the file names one.
const DEFAULT_TLS_ADDR: &str = "127.0.0.1:8883";

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    mqtt_broker::logging::init("info");
    let result = match cli.command {
        Some(cli::Command::Passwd { ref file, ref user }) => passwd(file, user),
        Some(cli::Command::GenCerts { ref dir }) => gen_certs(dir),
        None => broker(cli),
    };
    match result {
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code(exit::RUNTIME_ERROR)
        }
    }
}

fn broker(cli: cli::Cli) -> anyhow::Result<()> {
    let (mut config, source) = BrokerConfig::load(cli.config.as_deref())?;
    if source == ConfigSource::BuiltIn {
        tracing::info!("no {DEFAULT_PATH} in the current directory; using built-in defaults");
    }
    if let Some(listen) = cli.listen {
        config.listener.address = listen;
        config.listener.enabled = true;
    }
    if let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) {
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
        if config.tls.address.is_none() {
            config.tls.address = Some(DEFAULT_TLS_ADDR.parse()?);
        }
    }
    if let Some(tls) = cli.tls_listen {
        config.tls.address = Some(tls);
    }
    if let Some(file) = cli.password_file {
        config.auth.password_file = Some(file);
    }
    if let Some(file) = cli.acl_file {
        config.auth.acl_file = Some(file);
    }
    if let Some(addr) = cli.ws_listen {
        config.websocket.address = Some(addr);
    }
    if let Some(dir) = cli.data_dir {
        config.storage.dir = Some(dir);
    }
    config.storage.repair = cli.repair;
    if let Some(addr) = cli.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    config
        .validate()
        .map_err(|setting| anyhow::anyhow!("{source}: {setting}"))?;
    if cli.check_config {
        if let Some(file) = &config.auth.password_file {
            mqtt_broker::auth::Users::load(file)?;
        }
        if let Some(file) = &config.auth.acl_file {
            mqtt_broker::acl::Acl::load(file)?;
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            mqtt_broker::tls::acceptor(cert, key)?;
        }
        let mut addresses = Vec::new();
        if config.listener.enabled {
            addresses.push(config.listener.address.to_string());
        }
        if let Some(tls) = config.tls.address {
            addresses.push(format!("{tls} (TLS)"));
        }
        if let Some(ws) = config.websocket.address {
            addresses.push(format!("{ws} (WebSockets)"));
        }
        if let Some(metrics) = config.metrics.listen {
            addresses.push(format!("{metrics} (metrics)"));
        }
        if let Some(dir) = &config.storage.dir {
            addresses.push(format!("keep a write-ahead log in {}", dir.display()));
        }
        println!("{source}: ok, would listen on {}", addresses.join(" and "));
        return Ok(());
    }
    config.connections.max_connections = fit_open_file_limit(config.connections.max_connections);
    tracing::info!(config = %source, "starting");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("mqtt-net")
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = mqtt_protocol::shutdown::on_signals();
        mqtt_broker::run(config, shutdown).await
    })?;
    // rumqttd's router thread never ends; do not wait for the runtime's tasks either.
    runtime.shutdown_background();
    Ok(())
}

/// Every client costs one socket: lifts the soft limit on open files to the hard one and
/// returns how many clients to accept, `max_connections` or fewer if the limit cannot hold
/// that many. Clients beyond it then get CONNACK "server unavailable" instead of the broker
/// failing to accept sockets.
fn fit_open_file_limit(max_connections: usize) -> usize {
    let Some(limit) = mqtt_protocol::resources::raise_open_file_limit() else {
        return max_connections;
    };
    // Listeners, logs, the runtime's own descriptors and some slack.
    let clients = usize::try_from(limit.saturating_sub(64)).unwrap_or(usize::MAX);
    if clients >= max_connections {
        return max_connections;
    }
    if clients < 16 {
        tracing::warn!(
            "the open-file limit ({limit}) holds only {clients} clients; raise it with `ulimit -n`"
        );
    } else {
        tracing::info!(
            "accepting at most {clients} clients, which the open-file limit ({limit}) holds \
             ([connections] max_connections is {max_connections}; raise `ulimit -n` for more)"
        );
    }
    clients.max(1)
}

fn passwd(file: &std::path::Path, user: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprint!("password for {user}: ");
        let _ = std::io::stderr().flush();
    }
    let echo = interactive.then(EchoOff::new).flatten();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("while reading the password from stdin")?;
    drop(echo);
    if interactive {
        eprintln!();
    }
    let password = line.trim_end_matches(['\n', '\r']);
    let changed = mqtt_broker::auth::set_password(file, user, password)?;
    eprintln!(
        "{} user {user:?} in {}",
        if changed { "changed" } else { "added" },
        file.display()
    );
    Ok(())
}

/// Turns terminal echo off while the password is typed, and back on when dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios struct we own.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut term) != 0 {
                return None;
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term) != 0 {
                return None;
            }
            Some(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

fn gen_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    let files = mqtt_broker::tls::generate(dir)?;
    for file in files {
        println!("{}", file.display());
    }
    Ok(())
}
