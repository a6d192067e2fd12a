//! Every PUBLISH the broker accepts, and every will it fires, enters rumqttd's router through
//! one link of ours, the ingest link, as a QoS 0 publish. The broker acknowledges publishers
//! itself (PUBACK, PUBREC/PUBCOMP) once it has handed their messages on, so a PUBACK means
//! what the broker decides, the router's appends happen in one order that the broker chose,
//! and the router only ever sees topics that passed our rules.
//!
//! The router stores a message at the QoS each subscription asks for, whatever QoS it was
//! published at, so nothing is lost by entering as QoS 0.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use futures_util::FutureExt as _;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};

use crate::router::{LinkRequest, Router};

/// The router id of the ingest link. Client ids are escaped so that none maps to a `%` that
/// is not followed by a two-digit code (see `sessions::router_id`), so no client can take it.
const INGEST_ID: &str = "%ingest";

/// The router has stopped: nothing can be published any more.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("rumqttd's router has stopped")]
pub(crate) struct RouterGone;

/// The broker's link for publishing into the router.
pub(crate) struct Ingest {
    tx: Mutex<LinkTx>,
    /// Messages appended to flow control's mirror, in its order, not yet handed to the
    /// router (see [`Ingest::queue`]).
    queued: Mutex<Vec<Message>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// One message for the router. Retained messages are the broker's (see `retained`): the
/// router only ever sees publishes to deliver.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
}

impl Message {
    /// What the router counts for it against a log segment's size: 4 + topic + payload.
    pub(crate) fn counted_size(&self) -> u64 {
        (4 + self.topic.len() + self.payload.len()) as u64
    }
}

impl Ingest {
    /// Opens the ingest link. Publishes to topics no subscription matches must not make the
    /// router disconnect it, so it keeps them in logs of their own (`dynamic_filters`).
    pub(crate) async fn open(router: &Router) -> Result<Ingest, RouterGone> {
        let link = router
            .link(LinkRequest {
                client_id: INGEST_ID.to_owned(),
                clean_session: true,
                dynamic_filters: true,
            })
            .await
            .map_err(|_| RouterGone)?;
        tokio::spawn(drain(link.rx));
        Ok(Ingest {
            tx: Mutex::new(link.tx),
            queued: Mutex::new(Vec::new()),
        })
    }

    /// Hands `messages` to the router in order, with one wake-up for the whole batch (and
    /// whatever was queued before them).
    pub(crate) fn submit(&self, messages: &mut Vec<Message>) -> Result<(), RouterGone> {
        self.queue(messages);
        self.flush()
    }

    /// Queues `messages` for the router. Called with flow control's lock held, so the router
    /// appends them in the mirror's order whoever flushes them; the caller may flush a
    /// moment later (after a direct message has gone out, see `direct`).
    pub(crate) fn queue(&self, messages: &mut Vec<Message>) {
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(messages);
    }

    /// Hands everything queued to the router, in order, with one wake-up.
    pub(crate) fn flush(&self) -> Result<(), RouterGone> {
        let mut tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let queued =
            std::mem::take(&mut *self.queued.lock().unwrap_or_else(PoisonError::into_inner));
        let mut packets: Vec<Packet> = queued
            .into_iter()
            .map(|m| Packet::Publish(Publish::new(m.topic, m.payload, false), None))
            .collect();
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        tx.buffer().extend(packets);
        // `send` appends its packet and wakes the router. It never waits (rumqttd's channel
        // send inside is a blocking one that returns once queued), so it completes on its
        // first poll.
        match tx.send(last).now_or_never() {
            Some(Err(_)) => Err(RouterGone),
            Some(Ok(_)) | None => Ok(()),
        }
    }
}

/// Reads whatever the router sends the ingest link (nothing, for QoS 0 publishes): every
/// link's notifications must be drained, or they would queue without limit.
async fn drain(mut rx: LinkRx) {
    while rx.next().await.is_ok() {}
}
