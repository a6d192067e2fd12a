//! Storage at work in a running broker (see `storage` for the design): on start, what a
//! storage directory held goes back into the broker and rumqttd's router (retained messages,
//! persistent sessions, then the stored readings they have not acknowledged, fed through flow
//! control); while running, a checkpoint a second, and a last one on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use rumqttd::protocol::{Filter, Packet, RetainForwardRule, Subscribe};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::delivery::Saved;
use crate::error::BrokerError;
use crate::flow::{Admission, ReaderKey};
use crate::hub::Hub;
use crate::ingest::Message;
use crate::router::LinkRequest;
use crate::storage::{self, Recovered, Replay};
use crate::ticker::Ticker;

/// How long the router may take to answer a restored session's SUBSCRIBE.
const SUBACK_WAIT: Duration = Duration::from_secs(5);

/// What was restored, for the one INFO line at the end of the replay.
#[derive(Debug)]
struct Restored {
    started: Instant,
    /// From start to the sessions back in the router (the log read): when clients may come.
    ready: Duration,
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    records: u64,
    torn_bytes: u64,
    skipped: u64,
}

/// Puts back what the storage directory held: retained messages and persistent sessions
/// now, and starts feeding the stored readings back (new publishes wait until that is done).
/// Call before any client connects.
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
    let restored = Restored {
        started,
        ready: started.elapsed(),
        sessions: recovered.sessions.len(),
        subscriptions,
        retained: recovered.retained.len(),
        records: recovered.records,
        torn_bytes: recovered.torn_bytes,
        skipped: recovered.skipped,
    };
    hub.lock_flow().set_replaying(true);
    let replay = storage::replay(recovered.segments, &recovered.sessions);
    tokio::spawn(feed(Arc::clone(hub), replay, restored));
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

/// Feeds the stored readings into the router in record order, each as far as flow control
/// lets it, then lets new publishes go and says what was restored.
async fn feed(hub: Arc<Hub>, mut replay: Replay, restored: Restored) {
    let waiter = Arc::new(Notify::new());
    let mut replayed = 0u64;
    let mut out = Vec::with_capacity(1024);
    'batches: while let Some(batch) = replay.recv().await {
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let parked = {
                let mut flow = hub.lock_flow();
                let mut parked = false;
                while let Some(stored) = batch.peek() {
                    match flow.admit_stored(&stored.topic) {
                        Admission::Append(logs) => {
                            let message = Message {
                                topic: stored.topic.clone(),
                                payload: stored.payload.clone(),
                            };
                            flow.append(&logs, message.counted_size(), Some(stored.id));
                            out.push(message);
                            batch.next();
                        }
                        Admission::NoSubscriber => {
                            batch.next();
                        }
                        Admission::Park(park) => {
                            flow.park(&park, &waiter);
                            parked = true;
                            break;
                        }
                    }
                }
                replayed += out.len() as u64;
                if hub.ingest.submit(&mut out).is_err() {
                    hub.router_gone.cancel();
                    return;
                }
                parked
            };
            if parked {
                tokio::select! {
                    () = waiter.notified() => {}
                    () = hub.cut_off.cancelled() => break 'batches,
                }
            }
        }
    }
    hub.lock_flow().set_replaying(false);
    let dir = hub
        .storage
        .as_ref()
        .map(|s| s.dir().display().to_string())
        .unwrap_or_default();
    let took = restored.started.elapsed().as_secs_f64();
    let ready = restored.ready.as_secs_f64();
    info!(
        sessions = restored.sessions,
        subscriptions = restored.subscriptions,
        retained = restored.retained,
        replayed,
        records = restored.records,
        torn_bytes = restored.torn_bytes,
        skipped = restored.skipped,
        ready_s = (ready * 1000.0).round() / 1000.0,
        took_s = (took * 1000.0).round() / 1000.0,
        "restored from {dir}: {} persistent sessions ({} subscriptions), {} retained messages, \
         {replayed} unacknowledged readings replayed, of {} log records read; {} damaged \
         records skipped, {} torn bytes cut off; ready for clients after {ready:.2} s, \
         replay done after {took:.2} s",
        restored.sessions,
        restored.subscriptions,
        restored.retained,
        restored.records,
        restored.skipped,
        restored.torn_bytes
    );
}

/// Once a second (not while stored readings are fed back): a checkpoint of retained
/// messages and persistent sessions, after which the log may delete what it covers.
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

/// A checkpoint as of now, unless stored readings are still being fed back (their
/// positions are not known yet).
fn take_checkpoint(hub: &Hub) -> Option<storage::Checkpoint> {
    let storage = hub.storage.as_ref()?;
    let flow = hub.lock_flow();
    if flow.replaying() {
        return None;
    }
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
