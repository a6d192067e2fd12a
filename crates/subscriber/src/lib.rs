//! The data consumer: subscribes, feeds every message to the verifier, and stops when
//! every expected reading is in, when the stream goes idle, or when told to (see `run`
//! for the states of a run).
//!
//! With a state file, acks are held back until the journal has the readings (see
//! `acks`), the state is checkpointed so that it stays as small as the verifier's
//! bitmaps, and a restart resumes from it (see `state` and `journal`).

mod acks;
pub mod cli;
pub mod journal;
pub mod merge;
mod run;
pub mod state;

use mqtt_client::connect::{disconnect, first_connack, qos, ConnectError, Session};
use mqtt_protocol::report::{rate, Partial, VerifyReport, SCHEMA_VERSION};
use mqtt_protocol::resources::peak_rss_kib;
use mqtt_protocol::verify::Verifier;
use rumqttc::ConnectionError;
use tokio_util::sync::CancellationToken;
use tracing::info;

use acks::AckBatch;
pub use cli::SubscriberArgs;
use journal::Header;
use run::{End, Run};
use state::{State, StateError};

/// Room in rumqttc's request channel for an ack of every message a broker can have in
/// flight (65,535 packet ids) plus a subscribe: rumqttc drains the channel only between
/// incoming packets, and an ack that found it full would be lost, leaving the broker
/// waiting for it for good. (The channel grows only as far as it is filled.)
const REQUEST_CAPACITY: usize = u16::MAX as usize + 2 * acks::MAX_BATCH;

/// Why a run failed. A failure after subscribing carries what had been verified.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    State(#[from] StateError),
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

impl Partial<VerifyReport> for SubscribeError {
    /// What had been verified before the failure, if anything.
    fn partial_report(&self) -> Option<&VerifyReport> {
        match self {
            SubscribeError::Stopped { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// Subscribes and verifies until `--count` distinct readings arrived, the stream went
/// idle, or `shutdown` fired.
pub async fn run(
    args: SubscriberArgs,
    shutdown: CancellationToken,
) -> Result<VerifyReport, SubscribeError> {
    let client_id = match (&args.client.broker.client_id, &args.state) {
        (Some(id), _) => id.clone(),
        (None, Some(path)) => state::recorded_client_id(path)?
            .unwrap_or_else(|| args.client.broker.client_id_or("mqtt-sub")),
        (None, None) => args.client.broker.client_id_or("mqtt-sub"),
    };
    let (verifier, batch) = match &args.state {
        Some(path) => {
            let header = Header::new(&client_id, &args.topic, args.client.count, 1);
            let (state, verifier) = State::open(path, &header, args.fsync, args.policy())?;
            if state.resumed > 0 {
                info!(
                    "resumed from {}: {} arrivals on record",
                    path.display(),
                    state.resumed
                );
            }
            (verifier, Some(AckBatch::new(state)))
        }
        None => (Verifier::new(args.client.count), None),
    };
    let resumed = verifier.received();
    // A named or stateful subscriber keeps its session, so nothing published while it
    // is away is lost; an anonymous one has a random id no one could resume. A member of
    // a shared subscription never does: rumqttd 0.20's router panics when the last
    // member of a group leaves with a persistent session and messages unacknowledged.
    let persistent =
        args.share.is_none() && (args.client.broker.client_id.is_some() || args.state.is_some());
    let (client, mut eventloop) = args.client.broker.open(&Session {
        client_id: client_id.clone(),
        clean: !persistent,
        inflight: None,
        manual_acks: batch.is_some(),
        request_capacity: REQUEST_CAPACITY,
    });
    first_connack(&mut eventloop, &args.client.broker).await?;
    // The SUBACK is awaited by the run: a resumed session may deliver its backlog before
    // it, and every one of those readings must be counted.
    client
        .try_subscribe(args.subscription(), qos(args.client.qos))
        .map_err(|_| SubscribeError::SubscribeLost(ConnectionError::RequestsDone))?;
    let mut run = Run::new(
        args,
        client_id,
        persistent,
        (client, eventloop),
        verifier,
        batch,
        &shutdown,
    );
    let end = run.drive(&shutdown).await;
    let report = report(&run, &end, resumed);
    match end {
        End::Failed(reason) | End::StateFailed(reason) => Err(SubscribeError::Stopped {
            report: Box::new(report),
            reason,
        }),
        End::Satisfied | End::Interrupted | End::Idle => {
            disconnect(&run.client, &mut run.eventloop).await;
            Ok(report)
        }
    }
}

/// The report of a run that ended with `end`; `resumed` arrivals came from the state file.
fn report(run: &Run, end: &End, resumed: u64) -> VerifyReport {
    let args = &run.args;
    let elapsed = match (run.timing.started(), run.last_arrival) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let verdict = if args.report_sets {
        run.verifier.verdict_with_sets()
    } else {
        run.verifier.verdict()
    };
    VerifyReport {
        schema_version: SCHEMA_VERSION,
        kind: "subscriber".into(),
        client_id: run.client_id.clone(),
        topic: args.topic.clone(),
        qos: args.client.qos,
        msgs_per_s: rate(verdict.received - resumed, elapsed),
        verdict,
        latency: run.timing.latencies(),
        per_second: run.timing.per_second().to_vec(),
        elapsed_s: elapsed,
        interrupted: *end == End::Interrupted,
        idle_timeout: *end == End::Idle,
        last_decode_error: run.verifier.last_error().map(ToString::to_string),
        reconnects: run.reconnects,
        resumed,
        peak_rss_kib: peak_rss_kib(),
        share_group: args.share.clone(),
    }
}
