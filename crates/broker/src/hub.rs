//! What every connection of one broker shares: the limits, the password file, the router and
//! its ingest link, the registry of connected clients, and the broker's counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::acl::Acl;
use crate::auth::Users;
use crate::flow::Flow;
use crate::ingest::Ingest;
use crate::log;
use crate::retained::RetainedStore;
use crate::router::Router;
use crate::sessions::Sessions;

/// Limits every connection is held to, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest packet "remaining length" a client may send.
    pub max_packet: usize,
    pub max_client_id: usize,
    /// Time a new connection has to send its CONNECT.
    pub connect_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    /// Pause after each accepted TCP connection.
    pub next_connection_delay: Duration,
    /// Packets decoded from one connection before they are handed on as one batch.
    pub read_batch: usize,
    /// The outgoing QoS 1 window toward a clean-session client (0: the router's own).
    pub max_inflight: usize,
}

/// Why a connection was refused, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Closed before a CONNACK: not MQTT, too slow, a failed TLS handshake.
    Handshake = 0,
    ProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadCredentials = 4,
    NotAuthorized = 5,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 6] = [
        Refusal::Handshake,
        Refusal::ProtocolVersion,
        Refusal::IdentifierRejected,
        Refusal::ServerUnavailable,
        Refusal::BadCredentials,
        Refusal::NotAuthorized,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Handshake => "handshake",
            Refusal::ProtocolVersion => "protocol_version",
            Refusal::IdentifierRejected => "identifier_rejected",
            Refusal::ServerUnavailable => "server_unavailable",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::NotAuthorized => "not_authorized",
        }
    }
}

/// The broker's counters, for its logs and its metrics: relaxed atomics added to once per
/// batch, read by the metrics exporter once a second.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Clients past their CONNACK right now.
    pub connected: AtomicUsize,
    /// Clients accepted (CONNACK 0) so far.
    pub connections_total: AtomicU64,
    /// Connections refused, by [`Refusal`].
    pub refused: [AtomicU64; 6],
    /// PUBLISH packets from clients, and bytes read from them.
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// PUBLISH packets to clients, and bytes written to them.
    pub messages_sent: AtomicU64,
    /// Of those, sent directly, before the router's copy (see `direct`).
    pub messages_direct: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Sockets still in their handshake (TLS or CONNECT).
    pub pending: AtomicUsize,
    /// Messages the router skipped before a subscriber read them.
    pub dropped: AtomicU64,
    /// PUBLISH packets to `$` topics, acknowledged and delivered to no one.
    pub reserved_topic: AtomicU64,
    /// PUBLISH packets the ACL denied, acknowledged and delivered to no one.
    pub denied_publish: AtomicU64,
    /// Forwarded messages withheld from a subscriber its ACL does not let read them.
    pub denied_read: AtomicU64,
    /// Publishes no subscription matched (MQTT delivers them to no one).
    pub no_subscriber: AtomicU64,
    /// QoS 0 publishes dropped while flow control held their publisher.
    pub qos0_dropped: AtomicU64,
    /// Time publishers were held by flow control, summed over publishers, in microseconds.
    pub held_micros: AtomicU64,
}

/// Limits on what flow control may hold back.
#[derive(Debug, Clone)]
pub(crate) struct FlowLimits {
    /// Bytes of publishes one client may have held back before it is disconnected.
    pub max_parked_bytes: usize,
}

/// A counter held up by one connection; dropping it counts the connection out.
#[derive(Debug)]
pub(crate) struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// Counts one more in `counter` unless it already holds `limit`.
    pub(crate) fn take(counter: &'a AtomicUsize, limit: usize) -> Option<Slot<'a>> {
        if counter.fetch_add(1, Ordering::AcqRel) >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(counter))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shared state of one broker.
#[derive(Debug)]
pub(crate) struct Hub {
    pub limits: Limits,
    pub flow_limits: FlowLimits,
    pub users: Option<Arc<Users>>,
    pub acl: Option<Arc<Acl>>,
    pub router: Router,
    pub ingest: Ingest,
    /// The mirror of the router's logs and their readers (see `flow`). Appends to it and to
    /// the router happen under this lock, in one order.
    pub flow: Mutex<Flow>,
    pub retained: RetainedStore,
    pub sessions: Sessions,
    /// The write-ahead log and checkpoints, with `[storage] dir` (see `storage`).
    pub storage: Option<crate::storage::Storage>,
    pub stats: Stats,
    /// One WARN line per refused or disconnected client, rate-limited.
    pub log: log::Budget,
    /// Cancelled when the shutdown grace period ends: every connection closes now.
    pub cut_off: CancellationToken,
    /// Cancelled when a connection finds the router gone: the broker cannot go on.
    pub router_gone: CancellationToken,
}

impl Hub {
    /// Clients connected right now.
    pub(crate) fn connected(&self) -> usize {
        self.stats.connected.load(Ordering::Acquire)
    }

    /// Counts `count` messages the router skipped for a subscriber; returns the new total.
    pub(crate) fn count_dropped(&self, count: u64) -> u64 {
        self.stats.dropped.fetch_add(count, Ordering::Relaxed) + count
    }

    /// Messages skipped unread so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn lock_flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts time a publisher was held by flow control.
    pub(crate) fn count_held(&self, held: Duration) {
        let micros = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.stats.held_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn count_refused(&self, why: Refusal) {
        self.stats.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Time publishers were held by flow control, summed over publishers.
    pub(crate) fn held(&self) -> Duration {
        Duration::from_micros(self.stats.held_micros.load(Ordering::Relaxed))
    }
}
