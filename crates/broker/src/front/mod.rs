//! The broker's network front: the sockets clients connect to are ours, not rumqttd's. Each
//! connection gets a bounded time to send a valid CONNECT (after a bounded TLS handshake, on
//! the TLS port), is checked against the limits and the password file, answered with a proper
//! CONNACK code when refused, and otherwise passed through to rumqttd, which listens only on an
//! internal loopback port and accepts nobody but the front (a random per-process credential
//! that the front puts into every forwarded CONNECT). After the handshake, every packet the
//! client sends is checked whole (packet size, topic names, filters, flags) before it is
//! forwarded, in the same chunks it arrived in; what rumqttd sends back is copied unchanged.
//!
//! rumqttd 0.20 leaves all of this out: it does not validate PUBLISH topic names, has no client
//! id limit, closes refused connections without a CONNACK, runs TLS handshakes without a
//! timeout inside its accept loop, and panics its router when a persistent session leaves a
//! `$share` group with messages in flight.

mod log;
pub(crate) mod packet;
mod pump;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::{Users, Verdict};
use packet::{ReturnCode, Violation};
use pump::{inbound, outbound, read_connect, Session};

/// The user name the front presents to rumqttd's internal listener.
pub(crate) const UPSTREAM_USER: &str = "mqtt-broker-front";

/// Bytes read from a socket at once; forwarding happens in chunks up to this size.
const CHUNK: usize = 64 * 1024;

/// Limits the front enforces, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_packet: usize,
    pub max_client_id: usize,
    pub connect_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub next_connection_delay: Duration,
}

/// Shared state of every listener of one broker.
pub(crate) struct Front {
    limits: Limits,
    upstream: SocketAddr,
    secret: String,
    users: Option<Arc<Users>>,
    /// Connections passed through to rumqttd right now.
    active: AtomicUsize,
    /// Sockets still in their handshake (TLS or CONNECT).
    pending: AtomicUsize,
    log: log::Budget,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("upstream", &self.upstream)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// Decrements a counter when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Front {
    pub(crate) fn new(
        limits: Limits,
        upstream: SocketAddr,
        secret: String,
        users: Option<Arc<Users>>,
    ) -> Front {
        Front {
            limits,
            upstream,
            secret,
            users,
            active: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            log: log::Budget::default(),
        }
    }

    /// Clients connected through the front right now.
    pub(crate) fn connected(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Accepts connections on `listener` until `stop` is cancelled. Accept errors (such as
    /// running out of file descriptors) pause the loop briefly; they never end it.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
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
                    let front = Arc::clone(&self);
                    let tls = tls.clone();
                    tokio::spawn(async move { front.handle(stream, peer, tls).await });
                    if !self.limits.next_connection_delay.is_zero() {
                        tokio::time::sleep(self.limits.next_connection_delay).await;
                    }
                }
                Err(e) => {
                    self.log
                        .warn(format_args!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        // Sockets that have not finished their handshake are bounded too: beyond as many as
        // there may be clients, new ones are closed at once.
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            debug!(%peer, "too many connections in their handshake; closed");
            return;
        }
        let pending = Slot(&self.pending);
        match tls {
            None => {
                let Some((connect, rest)) = self.handshake(stream, peer, pending).await else {
                    return;
                };
                let (read, write) = connect.client.into_split();
                self.pass_through(read, write, connect.upstream, rest, connect.info)
                    .await;
            }
            Some(acceptor) => {
                let timeout = self.limits.tls_handshake_timeout;
                let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "no TLS handshake within tls_handshake_timeout_ms");
                        return;
                    }
                };
                let Some((connect, rest)) = self.handshake(stream, peer, pending).await else {
                    return;
                };
                let (read, write) = tokio::io::split(connect.client);
                self.pass_through(read, write, connect.upstream, rest, connect.info)
                    .await;
            }
        }
    }

    /// Reads and judges the CONNECT; on success, returns the client, a connection to rumqttd
    /// that has been sent the rewritten CONNECT, and any bytes the client sent after it.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut client: S,
        peer: SocketAddr,
        pending: Slot<'_>,
    ) -> Option<(Accepted<S>, Vec<u8>)> {
        let read = tokio::time::timeout(
            self.limits.connect_timeout,
            read_connect(&mut client, self.limits.max_packet),
        )
        .await;
        let (mut buf, frame_len, header_len) = match read {
            Ok(Ok(frame)) => frame,
            Ok(Err(reason)) => {
                debug!(%peer, %reason, "connection dropped during handshake");
                return None;
            }
            Err(_) => {
                debug!(%peer, reason = "no CONNECT within connection_timeout_ms", "connection dropped during handshake");
                return None;
            }
        };
        let connect = match packet::connect(&buf[header_len..frame_len], self.limits.max_client_id)
        {
            Ok(connect) => connect,
            Err(violation) => {
                self.refuse(&mut client, peer, "", violation).await;
                return None;
            }
        };
        let client_id = connect.client_id.to_owned();
        if let Some(users) = &self.users {
            let verdict = users
                .verify(connect.username, connect.password.map(<[u8]>::to_vec))
                .await;
            let refusal = match verdict {
                Verdict::Allowed => None,
                Verdict::NoCredentials => Some(Violation {
                    reason: "no user name or password (authentication is required)",
                    code: Some(ReturnCode::NotAuthorized),
                }),
                Verdict::Denied => Some(Violation {
                    reason: "bad user name or password",
                    code: Some(ReturnCode::BadUserNameOrPassword),
                }),
            };
            if let Some(violation) = refusal {
                self.refuse(&mut client, peer, &client_id, violation).await;
                return None;
            }
        }
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.active.fetch_sub(1, Ordering::AcqRel);
            let violation = Violation {
                reason: "max_connections reached",
                code: Some(ReturnCode::ServerUnavailable),
            };
            self.refuse(&mut client, peer, &client_id, violation).await;
            return None;
        }
        let upstream_connect = connect.for_upstream(UPSTREAM_USER, self.secret.as_bytes());
        let persistent = !connect.clean_session;
        buf.drain(..frame_len);
        drop(pending);
        let upstream = match TcpStream::connect(self.upstream).await {
            Ok(stream) => stream,
            Err(e) => {
                self.active.fetch_sub(1, Ordering::AcqRel);
                self.log.warn(format_args!(
                    "cannot reach rumqttd's internal listener {}: {e}",
                    self.upstream
                ));
                let _ = client
                    .write_all(&ReturnCode::ServerUnavailable.connack())
                    .await;
                return None;
            }
        };
        let _ = upstream.set_nodelay(true);
        let mut upstream = upstream;
        if upstream.write_all(&upstream_connect).await.is_err() {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let info = Info {
            peer,
            client_id,
            persistent,
        };
        Some((
            Accepted {
                client,
                upstream,
                info,
            },
            buf,
        ))
    }

    async fn refuse<S: AsyncWrite + Unpin>(
        &self,
        client: &mut S,
        peer: SocketAddr,
        client_id: &str,
        violation: Violation,
    ) {
        match violation.code {
            Some(code) => {
                self.log.warn(format_args!(
                    "refused client {client_id:?} from {peer}: {violation} (CONNACK {})",
                    code as u8
                ));
                let _ = client.write_all(&code.connack()).await;
                let _ = client.flush().await;
                let _ = client.shutdown().await;
            }
            None => debug!(%peer, reason = %violation, "connection dropped during handshake"),
        }
    }

    /// Forwards both ways until either side closes or the client breaks a rule.
    async fn pass_through<R, W>(
        &self,
        client_read: R,
        client_write: W,
        upstream: TcpStream,
        rest: Vec<u8>,
        info: Info,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let _active = Slot(&self.active);
        let (up_read, up_write) = upstream.into_split();
        let (refusals, inject) = mpsc::channel(4);
        let session = Session {
            max_packet: self.limits.max_packet,
            info: &info,
            log: &self.log,
        };
        let inbound = inbound(client_read, up_write, rest, &session, refusals);
        let outbound = outbound(up_read, client_write, inject);
        tokio::select! {
            result = inbound => {
                if let Err(violation) = result {
                    self.log.warn(format_args!(
                        "disconnected client {:?} from {}: {violation}",
                        info.client_id, info.peer
                    ));
                }
            }
            () = outbound => {}
        }
    }
}

/// What the handshake learnt about a client.
struct Info {
    peer: SocketAddr,
    client_id: String,
    persistent: bool,
}

struct Accepted<S> {
    client: S,
    upstream: TcpStream,
    info: Info,
}
