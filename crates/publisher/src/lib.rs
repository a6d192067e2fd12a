//! The IoT sensor simulator: publishes numbered readings through an MQTT broker with a
//! bounded in-flight window and counts what the broker acknowledges.
//!
//! Two tasks share one connection: the *producer* encodes readings and hands them to
//! rumqttc's bounded request channel (which blocks it while the window is full), and
//! the *driver* polls the event loop, counting what went out and what came back.

pub mod cli;
mod sensor;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_protocol::connect::{first_connack, ConnectError};
use mqtt_protocol::progress::Progress;
use mqtt_protocol::reading::Reading;
use mqtt_protocol::report::{rate, PublishReport, SCHEMA_VERSION};
use mqtt_protocol::resources::peak_rss_kib;
use mqtt_protocol::timing::now_unix_us;
use rumqttc::{AsyncClient, ConnectionError, Event, Incoming, Outgoing, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use cli::PublisherArgs;
use sensor::Sensor;

/// How long an interrupted run may spend collecting acknowledgements of what it sent.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long the final DISCONNECT may take.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Why a run failed. A failure after the connection was up carries what had been done.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("lost the connection to the broker after {} readings were published: {source}", .report.published)]
    ConnectionLost {
        report: Box<PublishReport>,
        source: ConnectionError,
    },
}

impl PublishError {
    /// What had been done before the failure, if the connection was ever up.
    pub fn partial_report(&self) -> Option<&PublishReport> {
        match self {
            PublishError::Connect(_) => None,
            PublishError::ConnectionLost { report, .. } => Some(report),
        }
    }
}

/// Publishes `args.count` readings and reports what happened.
pub async fn run(
    args: PublisherArgs,
    shutdown: CancellationToken,
) -> Result<PublishReport, PublishError> {
    let client_id = args.broker.client_id_or("mqtt-pub");
    let mut options = args.broker.mqtt_options(client_id.clone());
    options.set_inflight(args.inflight);
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(args.inflight));
    args.broker.configure(&mut eventloop);
    first_connack(&mut eventloop, &args.broker).await?;

    let stream_id: u64 = rand::random();
    let mut report = PublishReport {
        schema_version: SCHEMA_VERSION,
        kind: "publisher".into(),
        client_id,
        stream_id: format!("{stream_id:016x}"),
        device_id: args.device_id.clone(),
        topic: args.topic.clone(),
        qos: args.qos,
        payload: args.payload.to_string(),
        payload_bytes: 0,
        count: args.count,
        published: 0,
        acked: 0,
        elapsed_s: 0.0,
        msgs_per_s: 0.0,
        complete: false,
        interrupted: false,
        peak_rss_kib: None,
    };
    info!(
        broker = %args.broker.address(),
        client_id = %report.client_id,
        stream_id = %report.stream_id,
        "connected; publishing {} readings to {} at QoS {}",
        args.count,
        args.topic,
        args.qos
    );

    let started = Instant::now();
    let handed_over = Arc::new(AtomicU64::new(0));
    let stop_producing = shutdown.child_token();
    let producer = tokio::spawn(produce(
        client.clone(),
        args.clone(),
        stream_id,
        handed_over.clone(),
        stop_producing.clone(),
    ));
    report.payload_bytes = sample_payload_len(&args, stream_id);

    let progress = Progress::new("Messages published", args.progress_every, args.count);
    let ack_timeout = Duration::from_secs(args.ack_timeout);
    let mut last_progress = Instant::now();
    let mut grace_deadline: Option<Instant> = None;
    let mut lost: Option<ConnectionError> = None;

    loop {
        let producing = !producer.is_finished();
        // What was handed over, or went out: whichever the driver has seen more of.
        let target = handed_over.load(Ordering::Acquire).max(report.published);
        let confirmed = if args.qos == 0 {
            report.published
        } else {
            report.acked
        };
        if !producing && confirmed >= target {
            break;
        }
        let deadline = grace_deadline.map_or(last_progress + ack_timeout, |g| {
            g.min(last_progress + ack_timeout)
        });
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if grace_deadline.is_none() => {
                report.interrupted = true;
                grace_deadline = Some(Instant::now() + INTERRUPT_GRACE);
            }
            event = eventloop.poll() => match event {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    report.published += 1;
                    progress.update(report.published);
                    last_progress = Instant::now();
                }
                Ok(Event::Incoming(Incoming::PubAck(_))) if args.qos == 1 => {
                    report.acked += 1;
                    last_progress = Instant::now();
                }
                Ok(Event::Incoming(Incoming::PubComp(_))) if args.qos == 2 => {
                    report.acked += 1;
                    last_progress = Instant::now();
                }
                Ok(_) => {}
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if grace_deadline.is_none() {
                    warn!(
                        "the broker acknowledged nothing for {} s (--ack-timeout); giving up",
                        args.ack_timeout
                    );
                }
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop_producing.cancel();
    progress.finish();

    report.elapsed_s = elapsed;
    report.msgs_per_s = rate(report.published, elapsed);
    report.complete =
        report.published == args.count && (args.qos == 0 || report.acked == args.count);
    report.peak_rss_kib = peak_rss_kib();
    if let Some(source) = lost {
        return Err(PublishError::ConnectionLost {
            report: Box::new(report),
            source,
        });
    }
    disconnect(&client, &mut eventloop).await;
    Ok(report)
}

/// Encodes and hands over readings 1..=count until done or told to stop.
async fn produce(
    client: AsyncClient,
    args: PublisherArgs,
    stream_id: u64,
    handed_over: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let mut sensor = Sensor::new(stream_id);
    for seq in 1..=args.count {
        if stop.is_cancelled() {
            return;
        }
        let payload = encode(&args, stream_id, seq, &mut sensor);
        // Not raced against `stop`: a send abandoned half-way may still reach the event
        // loop, and then it would go out uncounted. The driver keeps polling meanwhile.
        if client
            .publish(args.topic.as_str(), qos, false, payload)
            .await
            .is_err()
        {
            return; // The event loop is gone; the driver reports why.
        }
        handed_over.store(seq, Ordering::Release);
    }
}

fn encode(args: &PublisherArgs, stream_id: u64, seq: u64, sensor: &mut Sensor) -> Vec<u8> {
    let (temperature, humidity) = sensor.sample(seq);
    let mut reading = Reading {
        stream_id,
        device_id: Cow::Borrowed(&args.device_id),
        seq,
        total: args.count,
        sent_at_us: now_unix_us(),
        temperature,
        humidity,
        padding: 0,
    };
    reading.padding = (args.payload_size as usize).saturating_sub(reading.binary_len()) as u32;
    let mut payload = Vec::with_capacity(reading.binary_len() + 16);
    reading.encode(args.payload, &mut payload);
    payload
}

fn sample_payload_len(args: &PublisherArgs, stream_id: u64) -> usize {
    encode(args, stream_id, args.count, &mut Sensor::new(1)).len()
}

/// Sends DISCONNECT and waits (briefly) until it is written.
async fn disconnect(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
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
