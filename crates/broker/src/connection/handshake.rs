//! The first exchange on a connection: a valid CONNECT within `connection_timeout_ms`, judged
//! against the limits and the password file. A refused client gets the CONNACK code MQTT has
//! for its case (and one rate-limited WARN line); garbage gets the socket closed.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::auth::Verdict;
use crate::hub::{Hub, Refusal, Slot};
use crate::packet::{self, ReturnCode, Violation};

/// Bytes read at once while waiting for the CONNECT.
const CONNECT_CHUNK: usize = 1024;

/// A client's will message.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub topic: Bytes,
    pub message: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// What the handshake learnt about an accepted client.
#[derive(Debug)]
pub(crate) struct Accepted<'a> {
    /// The client id: the client's own, or one the broker assigned to an empty one.
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Bytes the client sent after its CONNECT.
    pub rest: BytesMut,
    /// The client's place among `max_connections`.
    pub slot: Slot<'a>,
}

/// Reads and judges the CONNECT. Refused clients have been answered when this returns `None`.
pub(crate) async fn accept<'h, S>(
    hub: &'h Hub,
    client: &mut S,
    peer: SocketAddr,
) -> Option<Accepted<'h>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &hub.limits;
    let read = tokio::time::timeout(
        limits.connect_timeout,
        read_connect(client, limits.max_packet),
    )
    .await;
    let (mut buf, frame_len, header_len) = match read {
        Ok(Ok(frame)) => frame,
        Ok(Err(reason)) => {
            hub.count_refused(Refusal::Handshake);
            debug!(%peer, %reason, "connection dropped during handshake");
            return None;
        }
        Err(_) => {
            hub.count_refused(Refusal::Handshake);
            debug!(%peer, reason = "no CONNECT within connection_timeout_ms", "connection dropped during handshake");
            return None;
        }
    };
    let connect = match packet::connect(&buf[header_len..frame_len], limits.max_client_id) {
        Ok(connect) => connect,
        Err(violation) => {
            refuse(hub, client, peer, "", violation).await;
            return None;
        }
    };
    if let Some(users) = &hub.users {
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
            refuse(hub, client, peer, connect.client_id, violation).await;
            return None;
        }
    }
    let Some(slot) = Slot::take(&hub.stats.connected, limits.max_connections) else {
        let violation = Violation {
            reason: "max_connections reached",
            code: Some(ReturnCode::ServerUnavailable),
        };
        refuse(hub, client, peer, connect.client_id, violation).await;
        return None;
    };
    let client_id = if connect.client_id.is_empty() {
        // MQTT-3.1.3-6: a clean session with an empty id gets one the server assigns.
        format!("auto-{:016x}", rand::random::<u64>())
    } else {
        connect.client_id.to_owned()
    };
    let will = connect.will.map(|(flags, topic, message)| Will {
        topic: Bytes::copy_from_slice(topic),
        message: Bytes::copy_from_slice(message),
        qos: (flags >> 3) & 0x03,
        retain: flags & 0x20 != 0,
    });
    let accepted = Accepted {
        client_id,
        clean_session: connect.clean_session,
        keep_alive: connect.keep_alive,
        will,
        username: connect.username.map(str::to_owned),
        rest: BytesMut::new(),
        slot,
    };
    let _ = buf.split_to(frame_len);
    Some(Accepted {
        rest: buf,
        ..accepted
    })
}

/// Answers a refused client with its CONNACK code (where MQTT has one) and closes.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    hub: &Hub,
    client: &mut S,
    peer: SocketAddr,
    client_id: &str,
    violation: Violation,
) {
    hub.count_refused(match violation.code {
        None => Refusal::Handshake,
        Some(ReturnCode::BadProtocolVersion) => Refusal::ProtocolVersion,
        Some(ReturnCode::IdentifierRejected) => Refusal::IdentifierRejected,
        Some(ReturnCode::ServerUnavailable) => Refusal::ServerUnavailable,
        Some(ReturnCode::BadUserNameOrPassword) => Refusal::BadCredentials,
        Some(ReturnCode::NotAuthorized) => Refusal::NotAuthorized,
    });
    match violation.code {
        Some(code) => {
            hub.log.warn(format_args!(
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

/// Reads until one whole packet is in; it must be a CONNECT. Returns the buffer (which may hold
/// bytes after the CONNECT), the CONNECT's frame length and its fixed header's length. The
/// buffer grows with what arrives, never ahead of it to what a header claims.
async fn read_connect<S: AsyncRead + Unpin>(
    client: &mut S,
    max_packet: usize,
) -> Result<(BytesMut, usize, usize), Violation> {
    let mut buf = BytesMut::with_capacity(CONNECT_CHUNK);
    loop {
        if let Some(&first) = buf.first() {
            if first != 0x10 {
                return Err(Violation::new("first packet is not a CONNECT"));
            }
        }
        if let Some(header) = packet::fixed_header(&buf, max_packet)? {
            if buf.len() >= header.frame_len() {
                return Ok((buf, header.frame_len(), header.header_len));
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(CONNECT_CHUNK);
        }
        match client.read_buf(&mut buf).await {
            Ok(0) => return Err(Violation::new("closed before a whole CONNECT arrived")),
            Ok(_) => {}
            Err(_) => return Err(Violation::new("read error before CONNECT")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connect_claiming_much_reserves_only_what_arrives() {
        // A header that claims 200 KiB, then 10 bytes of body, then the end.
        let mut claim = vec![0x10, 0x80, 0x80, 0x0C];
        claim.extend_from_slice(&[0; 10]);
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&claim).await.unwrap();
        drop(client);
        let err = read_connect(&mut server, 256 * 1024).await.unwrap_err();
        assert!(err.reason.contains("closed before"), "{err}");
    }

    #[tokio::test]
    async fn bytes_after_the_connect_are_kept() {
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        let mut sent = connect.to_vec();
        sent.extend_from_slice(&[0xC0, 0]);
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&sent).await.unwrap();
        let (buf, frame_len, header_len) = read_connect(&mut server, 1024).await.unwrap();
        assert_eq!((frame_len, header_len), (14, 2));
        assert_eq!(&buf[frame_len..], &[0xC0, 0]);
    }
}
