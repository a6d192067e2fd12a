//! The broker's listening sockets: binding them (a taken port is a clear error before anything
//! starts) and accepting connections on them. Each accepted socket gets a task of its own; a
//! bounded number may be in their handshake at once, and the TLS and WebSocket handshakes
//! have deadlines, so silent sockets never hold up other clients.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::BrokerError;
use crate::hub::{Hub, Refusal, Slot};
use crate::{connection, websocket};

/// Pending connections the kernel queues for each listener.
const BACKLOG: u32 = 1024;

/// Binds a listener with a generous backlog.
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    let error = |e| bind_error(addr, e);
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

pub(crate) fn bind_error(addr: SocketAddr, error: io::Error) -> BrokerError {
    match error.kind() {
        io::ErrorKind::AddrInUse => BrokerError::AddrInUse { addr },
        io::ErrorKind::AddrNotAvailable => BrokerError::Bind {
            addr,
            error,
            hint: "that IP address is not one of this host's; try 127.0.0.1 or 0.0.0.0",
        },
        io::ErrorKind::PermissionDenied => BrokerError::Bind {
            addr,
            error,
            hint: "ports below 1024 need privileges; try a port above 1024",
        },
        _ => BrokerError::Bind {
            addr,
            error,
            hint: "try --listen 127.0.0.1:0",
        },
    }
}

/// What a listener's connections speak below MQTT.
#[derive(Clone)]
pub(crate) enum Transport {
    Tcp,
    Tls(tokio_rustls::TlsAcceptor),
    /// MQTT over WebSockets (see `websocket`), unencrypted.
    WebSocket,
}

/// Accepts connections on `listener` until `stop` is cancelled. Accept errors (such as running
/// out of file descriptors) pause the loop briefly; they never end it.
pub(crate) async fn accept(
    hub: Arc<Hub>,
    listener: TcpListener,
    transport: Transport,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(Arc::clone(&hub), stream, peer, transport.clone()));
                if !hub.limits.next_connection_delay.is_zero() {
                    tokio::time::sleep(hub.limits.next_connection_delay).await;
                }
            }
            Err(e) => {
                hub.log
                    .warn(format_args!("cannot accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    hub: Arc<Hub>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    transport: Transport,
) {
    // Sockets that have not finished their handshake are bounded too: beyond as many as
    // there may be clients, new ones are closed at once.
    let Some(pending) = Slot::take(&hub.stats.pending, hub.limits.max_connections) else {
        debug!(%peer, "too many connections in their handshake; closed");
        return;
    };
    match transport {
        Transport::Tcp => connection::serve(&hub, stream, peer, pending).await,
        Transport::WebSocket => {
            // The upgrade counts against the time a client has to send its CONNECT.
            let upgrade = websocket::accept(stream);
            let timeout = (
                hub.limits.connect_timeout,
                "[connections] connection_timeout_ms",
            );
            if let Some(stream) = handshake(&hub, peer, "WebSocket", timeout, upgrade).await {
                connection::serve(&hub, stream, peer, pending).await;
            }
        }
        Transport::Tls(acceptor) => {
            let accept = acceptor.accept(stream);
            let timeout = (
                hub.limits.tls_handshake_timeout,
                "[tls] handshake_timeout_ms",
            );
            if let Some(stream) = handshake(&hub, peer, "TLS", timeout, accept).await {
                connection::serve(&hub, stream, peer, pending).await;
            }
        }
    }
}

/// A transport's handshake (`what`: TLS, WebSocket), bounded by `timeout` (and the setting
/// that gives it). A failed or late one is counted as a refusal and logged at DEBUG.
async fn handshake<S, E: std::fmt::Display>(
    hub: &Hub,
    peer: SocketAddr,
    what: &str,
    (timeout, setting): (Duration, &str),
    handshake: impl std::future::Future<Output = Result<S, E>>,
) -> Option<S> {
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => debug!(%peer, error = %e, "{what} handshake failed"),
        Err(_) => debug!(%peer, "no {what} handshake within {setting}"),
    }
    hub.count_refused(Refusal::Handshake);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_reported_as_in_use() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert!(matches!(err, BrokerError::AddrInUse { .. }), "{err}");
        assert!(err.to_string().contains("is already in use"), "{err}");
    }
}
