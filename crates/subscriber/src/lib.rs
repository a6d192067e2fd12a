//! The data consumer: subscribes, feeds every message to the verifier, and stops when
//! every expected reading is in, when the stream goes idle, or when told to.
//!
//! One task owns the connection and does the verification inline, so a message is
//! decoded straight from rumqttc's buffer with no hand-off between tasks.

pub mod cli;

use std::time::{Duration, Instant};

use mqtt_protocol::connect::{first_connack, ConnectError};
use mqtt_protocol::progress::Progress;
use mqtt_protocol::report::{rate, VerifyReport, SCHEMA_VERSION};
use mqtt_protocol::resources::peak_rss_kib;
use mqtt_protocol::timing::{now_unix_us, Timing};
use mqtt_protocol::verify::Verifier;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing, QoS, SubscribeReasonCode,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use cli::SubscriberArgs;

const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Why a run failed. A failure after subscribing carries what had been verified.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the broker refused the subscription to {0:?}")]
    Refused(String),
    #[error("no SUBACK from the broker within {0} s")]
    NoSubAck(u64),
    #[error("lost the connection to the broker before the subscription was confirmed: {0}")]
    SubscribeLost(ConnectionError),
    #[error("lost the connection to the broker after {} messages: {source}", .report.verdict.received)]
    ConnectionLost {
        report: Box<VerifyReport>,
        source: ConnectionError,
    },
}

impl SubscribeError {
    /// What had been verified before the failure, if anything.
    pub fn partial_report(&self) -> Option<&VerifyReport> {
        match self {
            SubscribeError::ConnectionLost { report, .. } => Some(report),
            _ => None,
        }
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Subscribes and verifies until `args.count` distinct readings arrived, the stream
/// went idle, or `shutdown` fired.
pub async fn run(
    args: SubscriberArgs,
    shutdown: CancellationToken,
) -> Result<VerifyReport, SubscribeError> {
    let client_id = args.broker.client_id_or("mqtt-sub");
    let options = args.broker.mqtt_options(client_id.clone());
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    args.broker.configure(&mut eventloop);
    first_connack(&mut eventloop, &args.broker).await?;
    subscribe(&client, &mut eventloop, &args).await?;
    info!(
        broker = %args.broker.address(),
        client_id = %client_id,
        "subscribed to {} at QoS {}; waiting for {} readings",
        args.topic,
        args.qos,
        args.count
    );

    let mut verifier = Verifier::new(args.count);
    let mut timing = Timing::new();
    let progress = Progress::new("Messages received", args.progress_every, args.count);
    let idle = Duration::from_secs_f64(args.idle_timeout);
    let mut last_arrival: Option<Instant> = None;
    let (mut interrupted, mut idle_timeout) = (false, false);
    let mut lost = None;

    while !verifier.is_satisfied() {
        // Before the first message the idle timer sleeps "forever" (a day).
        let idle_deadline =
            last_arrival.map_or(Instant::now() + Duration::from_secs(86_400), |t| t + idle);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                interrupted = true;
                break;
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let now = Instant::now();
                    let (_, sent_at) = verifier.record_payload(&publish.payload);
                    timing.record(now, now_unix_us(), sent_at);
                    progress.update(verifier.received());
                    last_arrival = Some(now);
                }
                Ok(_) => {}
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            },
            _ = tokio::time::sleep_until(idle_deadline.into()) => {
                idle_timeout = true;
                info!("nothing arrived for {} s (--idle-timeout); stopping", args.idle_timeout);
                break;
            }
        }
    }
    progress.finish();

    let elapsed = match (timing.started(), last_arrival) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let verdict = verifier.verdict();
    let report = VerifyReport {
        schema_version: SCHEMA_VERSION,
        kind: "subscriber".into(),
        client_id,
        topic: args.topic.clone(),
        qos: args.qos,
        msgs_per_s: rate(verdict.received, elapsed),
        verdict,
        latency_us: timing.latency(),
        per_second: timing.per_second().to_vec(),
        elapsed_s: elapsed,
        interrupted,
        idle_timeout,
        last_decode_error: verifier.last_error().map(ToString::to_string),
        peak_rss_kib: peak_rss_kib(),
    };
    if let Some(source) = lost {
        return Err(SubscribeError::ConnectionLost {
            report: Box::new(report),
            source,
        });
    }
    disconnect(&client, &mut eventloop).await;
    Ok(report)
}

/// Subscribes and waits for the SUBACK, which must grant the subscription.
async fn subscribe(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    args: &SubscriberArgs,
) -> Result<(), SubscribeError> {
    let secs = args.broker.connect_timeout;
    client
        .subscribe(args.topic.as_str(), qos(args.qos))
        .await
        .map_err(|_| SubscribeError::SubscribeLost(ConnectionError::RequestsDone))?;
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    return if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        Err(SubscribeError::Refused(args.topic.clone()))
                    } else {
                        Ok(())
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(SubscribeError::SubscribeLost(e)),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait)
        .await
        .unwrap_or(Err(SubscribeError::NoSubAck(secs)))
}

/// Sends DISCONNECT and waits (briefly) until it is written.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
