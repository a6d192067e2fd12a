//! Starting rumqttd and watching it serve. rumqttd has no readiness signal, no error path for a
//! failed bind and no way to stop: the broker binds the client-facing listeners itself (they
//! belong to the network front, see `front`), starts rumqttd on a thread of its own on an
//! internal loopback port, waits for rumqttd's "listening" log event (see `lifecycle`), then
//! starts the front, and from then on treats anything that ends rumqttd's serving as fatal.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use mqtt_protocol::resources::peak_rss_kib;

use crate::auth::Users;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::front::Front;
use crate::lifecycle::{self, Signal};
use crate::{listener, router_guard};

/// What `run` prints on stdout, followed by the socket address, once the broker accepts
/// connections. Scripts and tests parse this line.
pub const READY_PREFIX: &str = "mqtt-broker listening on ";

/// The line `run` prints for the TLS listener (after the plain one, if that runs too).
pub const READY_TLS_PREFIX: &str = "mqtt-broker listening for TLS on ";

/// Pending connections the kernel queues for each listener.
const BACKLOG: u32 = 1024;

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
    plain: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    front_stop: CancellationToken,
    /// The front, once it runs (it counts the connected clients).
    front: Option<Arc<Front>>,
    /// How long connected clients may stay after a shutdown signal.
    grace: Duration,
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

    let users = match &config.auth.password_file {
        Some(path) => {
            let users = Users::load(path).map_err(BrokerError::Auth)?;
            info!(users = users.len(), file = %path.display(), "authentication required");
            Some(Arc::new(users))
        }
        None => None,
    };
    let acceptor = match (
        &config.tls.address,
        &config.tls.cert_file,
        &config.tls.key_file,
    ) {
        (Some(_), Some(cert), Some(key)) => {
            Some(crate::tls::acceptor(cert, key).map_err(BrokerError::Tls)?)
        }
        _ => None,
    };
    let plain = match config.listener.enabled {
        true => Some(bind(config.listener.address)?),
        false => None,
    };
    let tls = match config.tls.address {
        Some(addr) if acceptor.is_some() => Some(bind(addr)?),
        _ => None,
    };
    let plain_addr = local_addr(plain.as_ref(), config.listener.address)?;
    let tls_addr = local_addr(tls.as_ref(), config.listener.address)?;
    if users.is_none() {
        for addr in plain_addr.iter().chain(tls_addr.iter()) {
            if !addr.ip().is_loopback() {
                warn!(
                    "listening on {addr} beyond loopback WITHOUT AUTHENTICATION: anyone who can \
                     reach it may publish and subscribe; set [auth] password_file \
                     (--password-file) to require a user name and password"
                );
            }
        }
    }

    let addr = listener::claim("127.0.0.1:0".parse().expect("a literal socket address"))?;
    let secret = format!("{:032x}", rand::random::<u128>());
    let server = format!("mqtt-v4-{}", NEXT_SERVER.fetch_add(1, Ordering::Relaxed));
    let rumqttd_config = config.to_rumqttd(addr, &server, &secret);

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

    let public = plain_addr.or(tls_addr).unwrap_or(addr);
    let mut broker = RunningBroker {
        addr: public,
        plain: plain_addr,
        tls: tls_addr,
        front_stop: CancellationToken::new(),
        front: None,
        grace: Duration::from_millis(config.connections.shutdown_grace_ms),
        server,
        signals,
        stopped,
    };
    match tokio::time::timeout(STARTUP_TIMEOUT, broker.until_listening()).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(BrokerError::StartTimeout {
                addr: public,
                secs: STARTUP_TIMEOUT.as_secs(),
            })
        }
    }

    let front = Arc::new(Front::new(config.limits(), addr, secret, users));
    if let Some(listener) = plain {
        let stop = broker.front_stop.clone();
        tokio::spawn(Arc::clone(&front).serve(listener, None, stop));
    }
    if let Some(listener) = tls {
        let stop = broker.front_stop.clone();
        tokio::spawn(Arc::clone(&front).serve(listener, acceptor, stop));
    }
    broker.front = Some(front);
    Ok(broker)
}

/// Binds a client-facing listener with a generous backlog.
fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    let error = |e| listener::bind_error(addr, e);
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(BACKLOG).map_err(error)
}

fn local_addr(
    listener: Option<&TcpListener>,
    configured: SocketAddr,
) -> Result<Option<SocketAddr>, BrokerError> {
    listener
        .map(|l| {
            l.local_addr()
                .map_err(|e| listener::bind_error(configured, e))
        })
        .transpose()
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.front_stop.cancel();
    }
}

impl RunningBroker {
    /// The address clients connect to (port 0 already resolved): the plain listener's, or the
    /// TLS listener's when there is no plain one.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain listener's address, if it runs.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain
    }

    /// The TLS listener's address, if it runs.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// Serves until `shutdown` is cancelled (then `Ok`), or until rumqttd's server or router
    /// stops (an error: the broker is no longer a broker).
    pub async fn serve(mut self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let _stop_front_on_return = self.front_stop.clone().drop_guard();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.drain().await;
                    // rumqttd has no graceful stop; returning lets the process exit, which
                    // closes every connection left. That is the clean stop.
                    let dropped = lifecycle::dropped_total();
                    let peak_rss_mib = peak_rss_kib().map(|kib| kib / 1024);
                    if dropped > 0 {
                        error!(dropped, peak_rss_mib, "shutting down; {dropped} messages were dropped unread by slow subscribers during this run");
                    } else {
                        info!(dropped, peak_rss_mib, "shutting down");
                    }
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

    /// The graceful half of a shutdown: stops accepting connections (the listeners close),
    /// then lets the connected clients finish and leave for up to the grace period (a
    /// second signal ends it early), and says what happened.
    async fn drain(&mut self) {
        self.front_stop.cancel();
        let Some(front) = self.front.clone() else {
            return;
        };
        let connected = front.connected();
        if connected == 0 || self.grace.is_zero() {
            info!(connected, "stopped accepting connections");
            return;
        }
        info!(
            connected,
            "stopped accepting connections; waiting up to {:.1} s for {connected} connected \
             clients to finish (a second Ctrl-C ends the wait)",
            self.grace.as_secs_f64()
        );
        let started = tokio::time::Instant::now();
        let all_left = async {
            while front.connected() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let why = tokio::select! {
            () = all_left => "every client left",
            () = tokio::time::sleep(self.grace) => "the grace period ended",
            () = mqtt_protocol::shutdown::signalled() => "a second signal came",
        };
        let left = front.connected();
        info!(
            left_by_themselves = connected.saturating_sub(left),
            cut_off = left,
            "{why} after {:.1} s: {} of {connected} clients left by themselves, {left} \
             disconnected now",
            started.elapsed().as_secs_f64(),
            connected.saturating_sub(left)
        );
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
            Some(Signal::Dropped { filter, count }) => {
                // The loud half of the accounting: rumqttd itself only logs a WARN.
                error!(
                    filter,
                    dropped = count,
                    total = lifecycle::dropped_total(),
                    "rumqttd dropped {count} messages a subscriber of {filter} had not read yet \
                     (its in-memory log rolled over: raise [router] max_segment_size or \
                     max_segment_count); they are lost"
                );
                None
            }
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
    info!(%addr, tls = ?broker.tls_addr(), "broker ready");
    let mut lines = String::new();
    if let Some(plain) = broker.plain_addr() {
        lines.push_str(&format!("{READY_PREFIX}{plain}\n"));
    }
    if let Some(tls) = broker.tls_addr() {
        lines.push_str(&format!("{READY_TLS_PREFIX}{tls}\n"));
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(error = %e, "could not print the listening address on stdout");
    }
    drop(stdout);
    broker.serve(shutdown).await
}
