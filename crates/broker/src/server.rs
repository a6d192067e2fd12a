//! Starting rumqttd and watching it serve. rumqttd has no readiness signal, no error path for a
//! failed bind and no way to stop: the broker claims the address itself, starts rumqttd on a
//! thread of its own, waits for rumqttd's "listening" log event (see `lifecycle`), and from then
//! on treats anything that ends rumqttd's serving as fatal.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::lifecycle::{self, Signal};
use crate::{listener, router_guard};

/// What `run` prints on stdout, followed by the socket address, once the broker accepts
/// connections. Scripts and tests parse this line.
pub const READY_PREFIX: &str = "mqtt-broker listening on ";

/// How long rumqttd gets to report that it listens.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes each rumqttd server name (and so its thread name) unique within the process.
static NEXT_SERVER: AtomicUsize = AtomicUsize::new(0);

/// A rumqttd broker that has reported listening.
///
/// rumqttd has no stop: its threads run until the process exits, even after [`serve`]
/// returns. The binary returns from `main`, which is the clean stop.
///
/// [`serve`]: RunningBroker::serve
#[derive(Debug)]
pub struct RunningBroker {
    addr: SocketAddr,
    server: String,
    signals: mpsc::Receiver<Signal>,
    stopped: oneshot::Receiver<String>,
}

/// Starts rumqttd with `config` and waits (up to 5 s) until it is listening. A taken port, a
/// failed bind or a rumqttd that stops while starting is an error.
///
/// Needs [`crate::lifecycle_layer`] in the global subscriber. Installs, once per process,
/// [`crate::install_router_panic_hook`]: a panic in rumqttd's router ends the process (code 1).
pub async fn start(config: &BrokerConfig) -> Result<RunningBroker, BrokerError> {
    config.validate().map_err(BrokerError::Config)?;
    if !lifecycle::installed() {
        return Err(BrokerError::NotObservable);
    }
    router_guard::install_router_panic_hook();

    let addr = listener::claim(config.listener.address)?;
    let server = format!("mqtt-v4-{}", NEXT_SERVER.fetch_add(1, Ordering::Relaxed));
    let rumqttd_config = config.to_rumqttd(addr, &server);

    // Watch before starting, so that no lifecycle event can be missed.
    let signals = lifecycle::watch();
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("rumqttd-start".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rumqttd_config);
            // `start` blocks while the server threads run, and returns (with `Ok`) only when
            // they have all ended, whatever the reason.
            let outcome = match broker.start() {
                Ok(()) => "its server thread ended".to_owned(),
                Err(e) => format!("start failed: {e}"),
            };
            let _ = done.send(outcome);
        })
        .map_err(BrokerError::Spawn)?;

    let mut broker = RunningBroker {
        addr,
        server,
        signals,
        stopped,
    };
    match tokio::time::timeout(STARTUP_TIMEOUT, broker.until_listening()).await {
        Ok(result) => result.map(|()| broker),
        Err(_) => Err(BrokerError::StartTimeout {
            addr,
            secs: STARTUP_TIMEOUT.as_secs(),
        }),
    }
}

impl RunningBroker {
    /// The address rumqttd really listens on (port 0 already resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled (then `Ok`), or until rumqttd's server or router
    /// stops (an error: the broker is no longer a broker).
    pub async fn serve(mut self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // rumqttd has no graceful stop; returning lets the process exit, which
                    // closes every connection at once. That is the clean stop.
                    info!("shutting down");
                    return Ok(());
                }
                signal = self.signals.recv() => {
                    if let Some(error) = self.fatal(signal) {
                        return Err(error);
                    }
                }
                outcome = &mut self.stopped => return Err(self.stopped_error(outcome)),
            }
        }
    }

    async fn until_listening(&mut self) -> Result<(), BrokerError> {
        loop {
            tokio::select! {
                // Signals first: a failed bind is logged before the thread ends.
                biased;
                signal = self.signals.recv() => match signal {
                    Some(Signal::Listening { server, .. }) if server == self.server => {
                        return Ok(())
                    }
                    Some(Signal::ServerFailed { server, error }) if server == self.server => {
                        return Err(if error.contains("AddrInUse") {
                            BrokerError::AddrInUse { addr: self.addr }
                        } else {
                            BrokerError::ServerFailed { addr: self.addr, error }
                        });
                    }
                    other => {
                        if let Some(error) = self.fatal(other) {
                            return Err(error);
                        }
                    }
                },
                outcome = &mut self.stopped => return Err(self.stopped_error(outcome)),
            }
        }
    }

    /// The error a signal means for this broker, if any.
    fn fatal(&self, signal: Option<Signal>) -> Option<BrokerError> {
        match signal {
            Some(Signal::ServerFailed { server, error }) if server == self.server => {
                Some(BrokerError::Stopped {
                    addr: self.addr,
                    detail: error,
                })
            }
            Some(Signal::RouterDone { reason }) => Some(BrokerError::RouterDone { reason }),
            Some(_) => None,
            // Cannot happen while the lifecycle layer holds the sender; if it does, we are
            // blind, which is as bad as stopped.
            None => Some(BrokerError::NotObservable),
        }
    }

    fn stopped_error(&self, outcome: Result<String, oneshot::error::RecvError>) -> BrokerError {
        BrokerError::Stopped {
            addr: self.addr,
            detail: outcome.unwrap_or_else(|_| "its start thread panicked".to_owned()),
        }
    }
}

/// Starts the broker, prints `mqtt-broker listening on ADDR:PORT` on stdout once it listens,
/// and serves until `shutdown` is cancelled. Cancelling during start-up returns `Ok` at once.
pub async fn run(config: BrokerConfig, shutdown: CancellationToken) -> Result<(), BrokerError> {
    let broker = tokio::select! {
        started = start(&config) => started?,
        _ = shutdown.cancelled() => {
            info!("shutting down before the listener was up");
            return Ok(());
        }
    };
    let addr = broker.local_addr();
    info!(%addr, "broker ready");
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{READY_PREFIX}{addr}").and_then(|()| stdout.flush()) {
        tracing::warn!(error = %e, "could not print the listening address on stdout");
    }
    drop(stdout);
    broker.serve(shutdown).await
}
