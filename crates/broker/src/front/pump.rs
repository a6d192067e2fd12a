//! The two directions of a passed-through connection, and the CONNECT read before it: client
//! bytes are forwarded only as whole packets that passed [`packet::check_packet`], in the
//! chunks they arrived in; rumqttd's bytes are copied unchanged, with an occasional packet of
//! the front's own (a refusal SUBACK) slipped in between two of rumqttd's packets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::packet::{self, Violation};
use super::{log, Info, CHUNK};

/// Reads until one whole packet is in; it must be a CONNECT. Returns the buffer (which may hold
/// bytes after the CONNECT), the CONNECT's frame length and its fixed header's length.
pub(super) async fn read_connect<S: AsyncRead + Unpin>(
    client: &mut S,
    max_packet: usize,
) -> Result<(Vec<u8>, usize, usize), Violation> {
    let mut buf = Vec::with_capacity(1024);
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
            buf.reserve(header.frame_len() - buf.len());
        } else if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        match client.read_buf(&mut buf).await {
            Ok(0) => return Err(Violation::new("closed before a whole CONNECT arrived")),
            Ok(_) => {}
            Err(_) => return Err(Violation::new("read error before CONNECT")),
        }
    }
}

/// Client → rumqttd: forwards every whole, valid packet, in the chunks they arrived in. Ends
/// with `Ok` when either side closes, with the violation when the client breaks a rule (the
/// valid packets before it are still forwarded). A SUBSCRIBE of only `$share` filters from a
/// persistent session is not forwarded; its failure SUBACK goes to `refusals`.
pub(super) async fn inbound<R, W>(
    mut client: R,
    mut upstream: W,
    mut buf: Vec<u8>,
    session: &Session<'_>,
    refusals: mpsc::Sender<Vec<u8>>,
) -> Result<(), Violation>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    buf.reserve(CHUNK);
    loop {
        let mut at = 0;
        let mut verdict = Ok(());
        let mut refused = None;
        loop {
            match packet::fixed_header(&buf[at..], session.max_packet) {
                Ok(Some(header)) if buf.len() - at >= header.frame_len() => {
                    let frame = &buf[at..at + header.frame_len()];
                    match packet::check_packet(&header, frame, session.info.persistent) {
                        Ok(()) => at += header.frame_len(),
                        Err(v) => {
                            let suback = (v.reason == packet::SHARED_NEEDS_CLEAN)
                                .then(|| packet::refuse_shared(&frame[header.header_len..]))
                                .flatten();
                            match suback {
                                Some(suback) => refused = Some((header.frame_len(), suback)),
                                None => verdict = Err(v),
                            }
                            break;
                        }
                    }
                }
                Ok(_) => break,
                Err(v) => {
                    verdict = Err(v);
                    break;
                }
            }
        }
        if at > 0 {
            if upstream.write_all(&buf[..at]).await.is_err() {
                return Ok(());
            }
            buf.drain(..at);
        }
        if let Some((len, suback)) = refused {
            buf.drain(..len);
            session.log.warn(format_args!(
                "refused a subscription of client {:?} from {}: {} (SUBACK 0x80)",
                session.info.client_id,
                session.info.peer,
                packet::SHARED_NEEDS_CLEAN
            ));
            if refusals.send(suback).await.is_err() {
                return Ok(());
            }
            continue;
        }
        verdict?;
        if buf.capacity() - buf.len() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// What `inbound` needs to know about its connection.
pub(super) struct Session<'a> {
    pub max_packet: usize,
    pub info: &'a Info,
    pub log: &'a log::Budget,
}

/// rumqttd → client: copied unchanged, in chunks of up to 64 KiB; packets of the front's own
/// (`inject`) go in between two of rumqttd's packets.
pub(super) async fn outbound<R, W>(
    mut upstream: R,
    mut client: W,
    mut inject: mpsc::Receiver<Vec<u8>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut boundaries = packet::Boundaries::default();
    loop {
        let bytes = tokio::select! {
            read = upstream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    boundaries.advance(&buf[..n]);
                    &buf[..n]
                }
            },
            Some(packet) = inject.recv(), if boundaries.at_boundary() => {
                if client.write_all(&packet).await.is_err() || client.flush().await.is_err() {
                    break;
                }
                continue;
            }
        };
        if client.write_all(bytes).await.is_err() || client.flush().await.is_err() {
            break;
        }
    }
    let _ = client.shutdown().await;
}
