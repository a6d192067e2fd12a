//! Starting the broker and serving until told to stop: bind the configured listeners (the only
//! sockets the broker opens), spawn rumqttd's router and the ingest link, accept connections,
//! and on shutdown stop accepting, give connected clients a grace period, then close the rest.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use mqtt_protocol::resources::peak_rss_kib;

use crate::acl::Acl;
use crate::auth::Users;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::flow::{Change, Flow};
use crate::hub::{Hub, Stats};
use crate::ingest::Ingest;
use crate::listener::Transport;
use crate::retained::RetainedStore;
use crate::router::Router;
use crate::sessions::Sessions;
use crate::storage::Storage;
use crate::ticker::Ticker;
use crate::{listener, log, prometheus, recovery};

/// What `run` prints on stdout, followed by the socket address, once the broker accepts
/// connections. Scripts and tests parse this line.
pub const READY_PREFIX: &str = "mqtt-broker listening on ";

/// The line `run` prints for the TLS listener (after the plain one, if that runs too).
pub const READY_TLS_PREFIX: &str = "mqtt-broker listening for TLS on ";

/// The line `run` prints for the WebSocket listener, followed by `ws://ADDR:PORT/mqtt`.
pub const READY_WS_PREFIX: &str = "mqtt-broker listening for WebSockets on ";

/// A broker whose listeners are bound and whose router runs.
///
/// rumqttd's router thread has no stop: it runs until the process exits, even after
/// [`serve`] returns. The binary returns from `main`, which is the clean stop.
///
/// [`serve`]: RunningBroker::serve
#[derive(Debug)]
pub struct RunningBroker {
    addr: SocketAddr,
    plain: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    websocket: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    hub: Arc<Hub>,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// How long connected clients may stay after a shutdown signal.
    grace: Duration,
}

/// Binds the listeners and starts the router. A taken port, a bad certificate or password
/// file is an error; nothing is left running then. Installs, once per process, the router
/// panic hook: a panic in rumqttd's router ends the process (code 1).
pub async fn start(config: &BrokerConfig) -> Result<RunningBroker, BrokerError> {
    config.validate().map_err(BrokerError::Config)?;
    let users = match &config.auth.password_file {
        Some(path) => {
            let users = Users::load(path).map_err(BrokerError::Auth)?;
            info!(users = users.len(), file = %path.display(), "authentication required");
            Some(Arc::new(users))
        }
        None => None,
    };
    let acl = match &config.auth.acl_file {
        Some(path) => {
            let acl = Acl::load(path).map_err(BrokerError::Acl)?;
            info!(file = %path.display(), "access control: {acl}");
            Some(Arc::new(acl))
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
        true => Some(listener::bind(config.listener.address)?),
        false => None,
    };
    let tls = match config.tls.address {
        Some(addr) if acceptor.is_some() => Some(listener::bind(addr)?),
        _ => None,
    };
    let websocket = config.websocket.address.map(listener::bind).transpose()?;
    let plain_addr = local_addr(plain.as_ref(), config.listener.address)?;
    let tls_addr = local_addr(tls.as_ref(), config.listener.address)?;
    let ws_addr = local_addr(websocket.as_ref(), config.listener.address)?;
    if users.is_none() {
        for addr in plain_addr.iter().chain(&tls_addr).chain(&ws_addr) {
            if !addr.ip().is_loopback() {
                warn!(
                    "listening on {addr} beyond loopback WITHOUT AUTHENTICATION: anyone who can \
                     reach it may publish and subscribe; set [auth] password_file \
                     (--password-file) to require a user name and password"
                );
            }
        }
    }

    let started = Instant::now();
    let opened = match config.storage_config() {
        Some(storage) => {
            let (storage, recovered) = Storage::open(&storage).map_err(BrokerError::Storage)?;
            info!(
                dir = %storage.dir().display(),
                fsync = %config.storage.fsync,
                "keeping a write-ahead log in {}: acknowledged readings, persistent sessions \
                 and retained messages survive a crash",
                storage.dir().display()
            );
            Some((storage, recovered))
        }
        None => {
            info!(
                "no [storage] dir (--data-dir): running in memory only; a crash loses the \
                 readings it acknowledged but had not delivered, persistent sessions and \
                 retained messages"
            );
            None
        }
    };
    let (storage, recovered) = match opened {
        Some((storage, recovered)) => (Some(storage), Some(recovered)),
        None => (None, None),
    };
    let router = Router::spawn(config.router_config());
    let ingest = Ingest::open(&router)
        .await
        .map_err(|_| BrokerError::RouterGone)?;
    let hub = Arc::new(Hub {
        limits: config.limits(),
        flow_limits: config.flow_limits(),
        users,
        acl,
        router,
        ingest,
        flow: Mutex::new(Flow::new(config.flow_config())),
        retained: RetainedStore::default(),
        sessions: Sessions::default(),
        storage,
        stats: Stats::default(),
        log: log::Budget::default(),
        cut_off: CancellationToken::new(),
        router_gone: CancellationToken::new(),
    });
    if let Some(recovered) = recovered {
        recovery::restore(&hub, recovered, started).await?;
    }
    let stop_accepting = CancellationToken::new();
    tokio::spawn(watch_flow(Arc::clone(&hub), stop_accepting.clone()));
    if hub.storage.is_some() {
        tokio::spawn(recovery::checkpoints(
            Arc::clone(&hub),
            stop_accepting.clone(),
        ));
    }
    if let Some(addr) = config.metrics.listen {
        // The exporter binds before it returns: a taken port is an error here.
        prometheus::serve(Arc::clone(&hub), addr, stop_accepting.clone())?;
    }
    let listeners = plain
        .map(|l| (l, Transport::Tcp))
        .into_iter()
        .chain(tls.zip(acceptor).map(|(l, a)| (l, Transport::Tls(a))))
        .chain(websocket.map(|l| (l, Transport::WebSocket)));
    for (listener, transport) in listeners {
        let stop = stop_accepting.clone();
        tokio::spawn(listener::accept(
            Arc::clone(&hub),
            listener,
            transport,
            stop,
        ));
    }
    let addr = plain_addr
        .or(tls_addr)
        .or(ws_addr)
        .ok_or(BrokerError::NoListener)?;
    Ok(RunningBroker {
        addr,
        plain: plain_addr,
        tls: tls_addr,
        websocket: ws_addr,
        metrics: config.metrics.listen,
        hub,
        stop_accepting,
        grace: Duration::from_millis(config.connections.shutdown_grace_ms),
    })
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
        self.stop_accepting.cancel();
        self.hub.cut_off.cancel();
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

    /// The WebSocket listener's address, if it runs.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Serves until `shutdown` is cancelled (then `Ok`), or until the router is found gone
    /// (an error: the broker is no longer a broker).
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let storage_failed = self.hub.storage.as_ref().map(|s| s.failed());
        let storage_failed = async {
            match storage_failed {
                Some(failed) => failed.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.hub.router_gone.cancelled() => return Err(BrokerError::RouterGone),
            () = storage_failed => return Err(BrokerError::StorageFailed),
        }
        self.drain().await;
        recovery::close(&self.hub);
        let dropped = self.hub.dropped();
        let peak_rss_mib = peak_rss_kib().map(|kib| kib / 1024);
        let held_s = (self.hub.held().as_secs_f64() * 10.0).round() / 10.0;
        let qos0_dropped = self.hub.stats.qos0_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            error!(dropped, held_s, qos0_dropped, peak_rss_mib, "shutting down; {dropped} messages were dropped unread by slow subscribers during this run");
        } else {
            info!(dropped, held_s, qos0_dropped, peak_rss_mib, "shutting down");
        }
        Ok(())
    }

    /// The graceful half of a shutdown: stops accepting connections (the listeners close),
    /// then lets the connected clients finish and leave for up to the grace period (a
    /// second signal ends it early), says what happened, and closes whoever is left.
    async fn drain(&self) {
        self.stop_accepting.cancel();
        let hub = &self.hub;
        let connected = hub.connected();
        if connected == 0 || self.grace.is_zero() {
            info!(connected, "stopped accepting connections");
            self.cut_off().await;
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
            while hub.connected() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let why = tokio::select! {
            () = all_left => "every client left",
            () = tokio::time::sleep(self.grace) => "the grace period ended",
            () = mqtt_protocol::shutdown::signalled() => "a second signal came",
        };
        let left = hub.connected();
        info!(
            left_by_themselves = connected.saturating_sub(left),
            cut_off = left,
            "{why} after {:.1} s: {} of {connected} clients left by themselves, {left} \
             disconnected now",
            started.elapsed().as_secs_f64(),
            connected.saturating_sub(left)
        );
        self.cut_off().await;
    }

    /// Closes every connection still open, and waits (briefly) until they are gone.
    async fn cut_off(&self) {
        self.hub.cut_off.cancel();
        let gone = async {
            while self.hub.connected() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), gone).await;
    }
}

/// Once a second: offline persistent sessions whose hold is up stop holding publishers, and
/// logs that stopped holding publishers say so (at most one line per log per 10 s).
async fn watch_flow(hub: Arc<Hub>, stop: CancellationToken) {
    let mut ticker = Ticker::new(Duration::from_secs(1), stop);
    while ticker.next().await {
        let (expired, released) = {
            let mut flow = hub.lock_flow();
            (flow.expire(Instant::now()), flow.take_released())
        };
        for (filter, reader) in expired {
            warn!(
                filter,
                "the offline {reader} no longer holds publishers to {filter} ([flow] \
                 offline_hold_s); what its log drops before it returns is lost, and counted"
            );
        }
        for change in released {
            if let Change::Released { filter, held } = change {
                info!(
                    filter,
                    held_s = held.as_secs_f64(),
                    "flow control released publishers to {filter} after {:.1} s",
                    held.as_secs_f64()
                );
            }
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
    if let Some(ws) = broker.websocket_addr() {
        lines.push_str(&format!("{READY_WS_PREFIX}ws://{ws}/mqtt\n"));
    }
    if let Some(metrics) = broker.metrics_addr() {
        lines.push_str(&format!(
            "mqtt-broker serving metrics on http://{metrics}/metrics\n"
        ));
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
