//! `mqtt-broker`: parse flags, start logging, load the configuration, run the broker until
//! SIGINT or SIGTERM. Everything else lives in the library.

mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use mqtt_broker::config::{BrokerConfig, ConfigSource, DEFAULT_PATH};
use mqtt_protocol::exit;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    mqtt_broker::logging::init("info");
    match broker(cli) {
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
    }
    if cli.check_config {
        println!("{source}: ok, would listen on {}", config.listener.address);
        return Ok(());
    }
    tracing::info!(config = %source, "starting");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = mqtt_protocol::shutdown::on_signals();
        mqtt_broker::run(config, shutdown).await
    })?;
    Ok(())
}
