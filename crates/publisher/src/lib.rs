//! The IoT sensor simulator: publishes numbered readings through an MQTT broker with a
//! bounded in-flight window and counts what the broker acknowledges.
//!
//! A run simulates one device or many (`--devices`), each with its own connection and
//! stream; every device publishes a count of readings or for a duration, flat out or
//! paced (`--rate`). All devices connect first, then start together.

mod batched;
pub mod cli;
mod device;
mod encoder;
pub mod ledger;
pub mod pacing;
pub mod packet_ids;
mod queued;
pub mod report;
mod sensor;
mod watch;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_client::connect::ConnectError;
use mqtt_client::progress::Progress;
use mqtt_protocol::report::{rate, Partial, PublishReport, SCHEMA_VERSION};
use mqtt_protocol::resources::peak_rss_kib;
use mqtt_protocol::timing::now_unix_us;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use cli::PublisherArgs;
use device::{Connected, Identity, Plan, Shared};
use encoder::Encoder;
use pacing::{stagger, Schedule};
pub use report::{DeviceStream, RunReport};

/// Why a run failed. A failure after the connections were up carries what had been done.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("lost the connection to the broker after {} readings were published: {reason}", .report.summary.published)]
    ConnectionLost {
        report: Box<RunReport>,
        reason: String,
    },
}

impl Partial<RunReport> for PublishError {
    /// What had been done before the failure, if the connections were ever up.
    fn partial_report(&self) -> Option<&RunReport> {
        match self {
            PublishError::Connect(_) => None,
            PublishError::ConnectionLost { report, .. } => Some(report),
        }
    }
}

/// Publishes what `args` asks for, on every device, and reports what happened.
pub async fn run(
    args: PublisherArgs,
    shutdown: CancellationToken,
) -> Result<RunReport, PublishError> {
    let args = Arc::new(args);
    let client_prefix = args.client.broker.client_id_or("mqtt-pub");
    let devices = connect_all(&args, &client_prefix).await?;
    let count_per_device = args.count_per_device();
    let asked = count_per_device.map_or(0, |c| c * u64::from(args.devices));
    let streams: Vec<String> = devices
        .iter()
        .map(|d| format!("{:016x}", d.stream_id))
        .collect();
    info!(
        broker = %args.client.broker.address(),
        client_id = %client_prefix,
        stream_id = %streams[0],
        devices = args.devices,
        "connected; publishing {} to {} at QoS {}",
        match (count_per_device, args.duration) {
            (Some(c), _) if args.devices == 1 => format!("{c} readings"),
            (Some(c), _) => format!("{c} readings from each of {} devices", args.devices),
            (None, d) => format!("for {} s", d.unwrap_or_default()),
        },
        if args.devices == 1 { args.topic.clone() } else { format!("{}/+", args.topic) },
        args.client.qos
    );

    let mut report = PublishReport {
        schema_version: SCHEMA_VERSION,
        kind: "publisher".into(),
        client_id: client_prefix,
        stream_id: streams[0].clone(),
        device_id: args.device_id.clone(),
        topic: args.topic.clone(),
        qos: args.client.qos,
        payload: args.payload.to_string(),
        payload_bytes: sample_payload_len(&args),
        count: asked,
        published: 0,
        acked: 0,
        republished: 0,
        reconnects: 0,
        elapsed_s: 0.0,
        msgs_per_s: 0.0,
        window_full_s: 0.0,
        complete: false,
        interrupted: false,
        peak_rss_kib: None,
    };

    let expected_total = match (asked, args.rate, args.duration) {
        (0, Some(r), Some(d)) => (r * d) as u64 * u64::from(args.devices),
        (n, ..) => n,
    };
    let shared = Arc::new(Shared {
        progress: Progress::new(
            "Messages published",
            args.client.progress_every,
            expected_total,
        ),
        published: AtomicU64::new(0),
    });
    let started = Instant::now();
    let started_unix_us = now_unix_us();
    let end = args
        .duration
        .map(|secs| started + Duration::from_secs_f64(secs));
    let mut tasks = JoinSet::new();
    for (index, device) in devices.into_iter().enumerate() {
        let plan = Plan {
            count: count_per_device,
            end,
            schedule: args.rate.map(|rate| {
                let offset = stagger(index as u32, args.devices, rate);
                Schedule::new(started, started_unix_us, rate, offset)
            }),
        };
        let (args, shared, shutdown) = (args.clone(), shared.clone(), shutdown.clone());
        tasks.spawn(async move {
            (
                index,
                device::run(device::Job {
                    device,
                    args,
                    plan,
                    shared,
                    shutdown,
                })
                .await,
            )
        });
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        // A device task only ends by returning; a panic in one is a bug worth surfacing.
        outcomes.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    outcomes.sort_by_key(|(index, _)| *index);
    let elapsed = started.elapsed().as_secs_f64();
    shared.progress.finish();

    let mut lost = None;
    let mut device_streams = Vec::with_capacity(outcomes.len());
    for (_, outcome) in outcomes {
        report.published += outcome.published;
        report.acked += outcome.acked;
        report.republished += outcome.republished;
        report.reconnects += outcome.reconnects;
        report.window_full_s += outcome.window.total().as_secs_f64();
        report.interrupted |= outcome.interrupted;
        if lost.is_none() {
            lost = outcome.lost;
        }
        device_streams.push(DeviceStream {
            id: format!("{:016x}", outcome.stream_id),
            client_id: outcome.identity.client_id,
            device_id: outcome.identity.device_id,
            topic: outcome.identity.topic,
            published: outcome.published,
            acked: outcome.acked,
        });
    }
    report.elapsed_s = elapsed;
    report.msgs_per_s = rate(report.published, elapsed);
    let all_published = match count_per_device {
        Some(_) => report.published == asked,
        None => report.published > 0,
    };
    report.complete = all_published
        && (args.client.qos == 0 || report.acked == report.published)
        && lost.is_none();
    report.peak_rss_kib = peak_rss_kib();
    let report = RunReport {
        summary: report,
        devices: args.devices,
        rate_per_device: args.rate,
        duration_s: args.duration,
        streams: device_streams,
    };
    match lost {
        Some(reason) => Err(PublishError::ConnectionLost {
            report: Box::new(report),
            reason,
        }),
        None => Ok(report),
    }
}

/// Connects every device at once; fails with the first device that cannot connect.
async fn connect_all(
    args: &Arc<PublisherArgs>,
    client_prefix: &str,
) -> Result<Vec<Connected>, ConnectError> {
    let mut tasks = JoinSet::new();
    for index in 1..=args.devices {
        let identity = Identity::new(args, index, client_prefix);
        let args = args.clone();
        tasks.spawn(async move { (index, device::connect(&args, identity).await) });
    }
    let mut connected = Vec::with_capacity(args.devices as usize);
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        connected.push((index, result?));
    }
    connected.sort_by_key(|(index, _)| *index);
    Ok(connected.into_iter().map(|(_, device)| device).collect())
}

/// Size of one reading as this run encodes it (the last, largest sequence number).
fn sample_payload_len(args: &PublisherArgs) -> usize {
    let count = args.count_per_device();
    let last = count.unwrap_or(u64::MAX / 2);
    let device_id = Identity::new(args, args.devices, "x").device_id;
    Encoder::new(args, &device_id, 1, count)
        .encode(last, now_unix_us(), 0)
        .len()
}
