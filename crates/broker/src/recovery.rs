//! Storage at work in a running broker (see `storage` for the design): on start, what a
//! storage directory held goes back into the broker and rumqttd's router (retained messages
//! and persistent sessions; the stored readings a session has not acknowledged wait on disk
//! until it returns, see `connection::catch_up`); while running, a checkpoint a second, and a
//! last one on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use rumqttd::protocol::{Filter, Packet, RetainForwardRule, Subscribe};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::delivery::Saved;
use crate::error::BrokerError;
use crate::flow::ReaderKey;
use crate::hub::Hub;
use crate::router::LinkRequest;
use crate::storage::{self, Recovered};
use crate::ticker::Ticker;

/// How long the router may take to answer a restored session's SUBSCRIBE.
const SUBACK_WAIT: Duration = Duration::from_secs(5);

/// Puts back what the storage directory held: retained messages and persistent sessions,
/// each owed the stored readings it has not acknowledged. Says what it restored in one INFO
/// line. Call before any client connects.
pub(crate) async fn restore(
    hub: &Arc<Hub>,
    recovered: Recovered,
    started: Instant,
) -> Result<(), BrokerError> {
    if recovered.records == 0 && recovered.sessions.is_empty() && recovered.retained.is_empty() {
        return Ok(());
    }
    for (topic, qos, payload) in &recovered.retained {
        hub.retained.publish(topic, payload, *qos);
    }
    let mut subscriptions = 0;
    for (client, subs) in &recovered.sessions {
        subscriptions += subs.len();
        restore_session(hub, client, subs).await?;
    }
    let dir = hub
        .storage
        .as_ref()
        .map(|s| s.dir().display().to_string())
        .unwrap_or_default();
    let ready = started.elapsed().as_secs_f64();
    info!(
        sessions = recovered.sessions.len(),
        subscriptions,
        retained = recovered.retained.len(),
        records = recovered.records,
        torn_bytes = recovered.torn_bytes,
        skipped = recovered.skipped,
        ready_s = (ready * 1000.0).round() / 1000.0,
        "restored from {dir}: {} persistent sessions ({subscriptions} subscriptions), {} \
         retained messages, of {} log records read; {} damaged records skipped, {} torn \
         bytes cut off; ready for clients after {ready:.2} s (each session gets what it has \
         not acknowledged from disk when it returns)",
        recovered.sessions.len(),
        recovered.retained.len(),
        recovered.records,
        recovered.skipped,
        recovered.torn_bytes
    );
    Ok(())
}

/// Rebuilds one persistent session in the router from outside it: a link that is not a
/// clean session, a SUBSCRIBE of our own making, and a DISCONNECT. The router keeps the
/// session, its readers at the end of their (new, empty) logs, for the client's return.
async fn restore_session(
    hub: &Hub,
    client: &str,
    subs: &std::collections::BTreeMap<String, storage::Subscription>,
) -> Result<(), BrokerError> {
    let request = LinkRequest {
        client_id: client.to_owned(),
        clean_session: false,
        dynamic_filters: false,
    };
    let mut link = hub
        .router
        .link(request)
        .await
        .map_err(|_| BrokerError::RouterGone)?;
    let filters = subs
        .iter()
        .map(|(path, sub)| Filter {
            path: path.clone(),
            qos: rumqttd::protocol::qos(sub.qos.min(2)).unwrap_or_default(),
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        })
        .collect();
    let mut saved = Vec::with_capacity(subs.len());
    {
        let mut flow = hub.lock_flow();
        for path in subs.keys() {
            let (reader, log) = ReaderKey::of(client, path);
            saved.push((path.clone(), Some(flow.subscribe(reader, &log))));
        }
        let subscribe = Subscribe { pkid: 1, filters };
        // rumqttd's `send` never waits: it completes on its first poll.
        if let Some(Err(_)) = link
            .tx
            .send(Packet::Subscribe(subscribe, None))
            .now_or_never()
        {
            return Err(BrokerError::RouterGone);
        }
    }
    let answered = tokio::time::timeout(SUBACK_WAIT, async {
        loop {
            match link.rx.next().await {
                Ok(Some(notification)) => {
                    if let Some(Packet::SubAck(..)) = Option::<Packet>::from(notification) {
                        return true;
                    }
                }
                Ok(None) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if !matches!(answered, Ok(true)) {
        return Err(BrokerError::RouterGone);
    }
    let disconnect = Packet::Disconnect(
        rumqttd::protocol::Disconnect {
            reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    let _ = link.tx.send(disconnect).await;
    {
        let mut flow = hub.lock_flow();
        for (path, sub) in subs {
            let (reader, log) = ReaderKey::of(client, path);
            flow.created(&log);
            flow.restored(&reader, &log, sub.ack_from);
        }
    }
    hub.sessions.save(client, Saved::at(saved));
    Ok(())
}

/// Once a second: a checkpoint of retained messages and persistent sessions, after which
/// the log may delete what it covers.
pub(crate) async fn checkpoints(hub: Arc<Hub>, stop: CancellationToken) {
    let mut ticker = Ticker::new(Duration::from_secs(1), stop);
    while ticker.next().await {
        let Some(checkpoint) = take_checkpoint(&hub) else {
            continue;
        };
        let writer = Arc::clone(&hub);
        let written = tokio::task::spawn_blocking(move || {
            writer
                .storage
                .as_ref()
                .map(|s| s.write_checkpoint(&checkpoint))
        })
        .await;
        if let Ok(Some(Err(e))) = written {
            error!("cannot write a checkpoint: {e}");
        }
    }
}

/// A checkpoint as of now.
fn take_checkpoint(hub: &Hub) -> Option<storage::Checkpoint> {
    let storage = hub.storage.as_ref()?;
    let flow = hub.lock_flow();
    let retained = hub.retained.snapshot();
    Some(storage.checkpoint(retained, |client, filter| {
        let (reader, log) = ReaderKey::of(client, filter);
        flow.record_position(&reader, &log)
    }))
}

/// On shutdown: a last checkpoint, and the log written and synced.
pub(crate) fn close(hub: &Hub) {
    let Some(storage) = hub.storage.as_ref() else {
        return;
    };
    if let Some(checkpoint) = take_checkpoint(hub) {
        if let Err(e) = storage.write_checkpoint(&checkpoint) {
            error!("cannot write the last checkpoint: {e}");
        }
    }
    storage.close();
}
