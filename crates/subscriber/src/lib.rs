//! The data consumer: subscribes, feeds every message to the verifier, and stops when
//! every expected reading is in, when the stream goes idle, or when told to.
//!
//! One task owns the connection and does the verification inline, so a message is
//! decoded straight from rumqttc's buffer with no hand-off between tasks. With a state
//! file, acks are held back until the journal has the readings (see `acks`), and a
//! restart replays the journal (see `journal`).

mod acks;
pub mod cli;
pub mod journal;
pub mod merge;

use std::time::{Duration, Instant};

use mqtt_client::connect::{disconnect, first_connack, qos, ConnectError, Session};
use mqtt_client::progress::Progress;
use mqtt_client::reconnect::{reconnect, ReconnectError};
use mqtt_protocol::report::{rate, VerifyReport, SCHEMA_VERSION};
use mqtt_protocol::resources::peak_rss_kib;
use mqtt_protocol::timing::{now_unix_us, Timing};
use mqtt_protocol::verify::Verifier;
use rumqttc::{ConnectionError, Event, Incoming, SubscribeReasonCode};
use tokio_util::sync::CancellationToken;
use tracing::info;

use acks::AckBatch;
pub use cli::SubscriberArgs;
use journal::{Header, Journal, JournalError};

/// Room in rumqttc's request channel for a whole batch of acks plus a subscribe.
const REQUEST_CAPACITY: usize = 4 * acks::MAX_BATCH;

/// Why a run failed. A failure after subscribing carries what had been verified.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    State(#[from] JournalError),
    #[error("the broker refused the subscription to {0:?}")]
    Refused(String),
    #[error("no SUBACK from the broker within {0} s")]
    NoSubAck(u64),
    #[error("lost the connection to the broker before the subscription was confirmed: {0}")]
    SubscribeLost(ConnectionError),
    #[error("after {} messages: {reason}", .report.verdict.received)]
    Stopped {
        report: Box<VerifyReport>,
        reason: String,
    },
}

impl SubscribeError {
    /// What had been verified before the failure, if anything.
    pub fn partial_report(&self) -> Option<&VerifyReport> {
        match self {
            SubscribeError::Stopped { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// Subscribes and verifies until `args.client.count` distinct readings arrived, the stream
/// went idle, or `shutdown` fired.
pub async fn run(
    args: SubscriberArgs,
    shutdown: CancellationToken,
) -> Result<VerifyReport, SubscribeError> {
    let client_id = match (&args.client.broker.client_id, &args.state) {
        (Some(id), _) => id.clone(),
        (None, Some(path)) => journal::recorded_client_id(path)?
            .unwrap_or_else(|| args.client.broker.client_id_or("mqtt-sub")),
        (None, None) => args.client.broker.client_id_or("mqtt-sub"),
    };
    let mut verifier = Verifier::new(args.client.count);
    let mut batch = match &args.state {
        Some(path) => {
            let header = Header {
                journal: 1,
                client_id: client_id.clone(),
                topic: args.topic.clone(),
                count: args.client.count,
            };
            let journal = Journal::open(path, &header, args.fsync, &mut verifier)?;
            if journal.replayed > 0 {
                info!(
                    "resumed from {}: {} arrivals on record",
                    path.display(),
                    journal.replayed
                );
            }
            Some(AckBatch::new(journal))
        }
        None => None,
    };
    let resumed = verifier.received();
    // A named or stateful subscriber keeps its session, so nothing published while it
    // is away is lost; an anonymous one has a random id no one could resume. A member of
    // a shared subscription never does: rumqttd 0.20's router panics when the last
    // member of a group leaves with a persistent session and messages unacknowledged.
    let persistent =
        args.share.is_none() && (args.client.broker.client_id.is_some() || args.state.is_some());
    let subscription = args.subscription();
    let waiting_for = match args.share {
        Some(_) => " over the group (or the idle timeout)",
        None => "",
    };
    let (client, mut eventloop) = args.client.broker.open(&Session {
        client_id: client_id.clone(),
        clean: !persistent,
        inflight: None,
        manual_acks: batch.is_some(),
        request_capacity: REQUEST_CAPACITY,
    });
    first_connack(&mut eventloop, &args.client.broker).await?;
    // The SUBACK is awaited in the main loop: a resumed session may deliver its backlog
    // before it, and every one of those readings must be counted.
    let suback_timeout = Duration::from_secs(args.client.broker.connect_timeout);
    let mut awaiting_suback = true;
    let mut announced = false;
    client
        .try_subscribe(subscription.as_str(), qos(args.client.qos))
        .map_err(|_| SubscribeError::SubscribeLost(ConnectionError::RequestsDone))?;

    let mut timing = Timing::new();
    let progress = Progress::new(
        "Messages received",
        args.client.progress_every,
        args.client.count,
    );
    let idle = Duration::from_secs_f64(args.idle_timeout);
    let process_delay = Duration::from_micros(args.process_delay_us);
    let mut last_arrival: Option<Instant> = None;
    let (mut interrupted, mut idle_timeout) = (false, false);
    let mut reconnects = 0;
    let mut failure: Option<String> = None;

    // One timer of each kind for the whole run, reset only when its deadline moves:
    // building fresh timers for every message cost about 13% of the subscriber's CPU.
    // Before the first message the idle timer sleeps "forever" (a day); after it, the
    // timer is pushed back lazily, when it fires, to the last arrival plus --idle-timeout.
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let cancelled = shutdown.cancelled();
    let idle_timer = tokio::time::sleep_until(far());
    let ack_timer = tokio::time::sleep_until(far());
    let suback_timer = tokio::time::sleep(suback_timeout);
    tokio::pin!(cancelled, idle_timer, ack_timer, suback_timer);
    let mut ack_armed: Option<Instant> = None;

    while !verifier.is_satisfied() {
        let ack_deadline = batch.as_ref().and_then(AckBatch::deadline);
        if ack_deadline != ack_armed {
            if let Some(deadline) = ack_deadline {
                ack_timer.as_mut().reset(deadline.into());
            }
            ack_armed = ack_deadline;
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                interrupted = true;
                break;
            }
            _ = &mut suback_timer, if awaiting_suback => {
                failure = Some(SubscribeError::NoSubAck(args.client.broker.connect_timeout).to_string());
                break;
            }
            _ = &mut ack_timer, if ack_armed.is_some() => {
                if let Some(batch) = batch.as_mut() {
                    batch.commit(&client)?;
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let now = Instant::now();
                    let recorded = verifier.record_payload(&publish.payload);
                    timing.record(now, now_unix_us(), recorded.sent_at_us);
                    progress.update(verifier.received());
                    if last_arrival.is_none() {
                        idle_timer.as_mut().reset((now + idle).into());
                    }
                    last_arrival = Some(now);
                    if let Some(batch) = batch.as_mut() {
                        batch.record(&recorded.observation);
                        if batch.hold(publish) {
                            batch.commit(&client)?;
                        }
                    }
                    simulate_work(process_delay);
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                        failure = Some(SubscribeError::Refused(subscription.clone()).to_string());
                        break;
                    }
                    awaiting_suback = false;
                    if !announced {
                        announced = true;
                        info!(
                            broker = %mqtt_client::failover::current(&eventloop),
                            client_id = %client_id,
                            persistent,
                            "subscribed to {} at QoS {}; waiting for {} readings{}",
                            subscription,
                            args.client.qos,
                            args.client.count,
                            waiting_for
                        );
                    }
                }
                Ok(_) => {}
                Err(lost) => {
                    if let Some(batch) = batch.as_mut() {
                        // Those acks belonged to the lost connection; the broker sends
                        // the readings again and the journal already has them.
                        batch.abandon()?;
                    }
                    match reconnect(&mut eventloop, lost, &args.client.broker, &args.client.reconnect, &shutdown).await {
                        Ok(ack) => {
                            reconnects += 1;
                            if !ack.session_present {
                                // The broker forgot us (restart, or a clean session):
                                // subscribe again; the SUBACK is checked above.
                                let _ = client.try_subscribe(subscription.as_str(), qos(args.client.qos));
                                awaiting_suback = true;
                                suback_timer.as_mut().reset(tokio::time::Instant::now() + suback_timeout);
                            }
                        }
                        Err(ReconnectError::Interrupted) => {
                            interrupted = true;
                            break;
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
            },
            _ = &mut idle_timer, if last_arrival.is_some() => {
                let due = last_arrival.map_or(Instant::now(), |t| t + idle);
                if Instant::now() < due {
                    idle_timer.as_mut().reset(due.into());
                    continue;
                }
                idle_timeout = true;
                info!("nothing arrived for {} s (--idle-timeout); stopping", args.idle_timeout);
                break;
            }
        }
    }
    if let Some(batch) = batch.as_mut() {
        batch.commit(&client)?;
    }
    progress.finish();

    let elapsed = match (timing.started(), last_arrival) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let verdict = if args.report_sets {
        verifier.verdict_with_sets()
    } else {
        verifier.verdict()
    };
    let report = VerifyReport {
        schema_version: SCHEMA_VERSION,
        kind: "subscriber".into(),
        client_id,
        topic: args.topic.clone(),
        qos: args.client.qos,
        msgs_per_s: rate(verdict.received - resumed, elapsed),
        verdict,
        latency_us: timing.latency(),
        per_second: timing.per_second().to_vec(),
        elapsed_s: elapsed,
        interrupted,
        idle_timeout,
        last_decode_error: verifier.last_error().map(ToString::to_string),
        reconnects,
        resumed,
        peak_rss_kib: peak_rss_kib(),
        share_group: args.share.clone(),
    };
    if let Some(reason) = failure {
        return Err(SubscribeError::Stopped {
            report: Box::new(report),
            reason,
        });
    }
    disconnect(&client, &mut eventloop).await;
    Ok(report)
}

/// Spends `delay` as a consumer doing real work would: blocking. Short delays spin,
/// because a sleeping thread wakes 50 µs or more late and would overstate them.
fn simulate_work(delay: Duration) {
    if delay.is_zero() {
        return;
    }
    if delay >= Duration::from_millis(1) {
        std::thread::sleep(delay);
        return;
    }
    let until = Instant::now() + delay;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}
