//! One simulated device: its own MQTT connection, stream and topic, and what both ways
//! of driving it share: its names, its outcome and how events are counted (the watch for
//! silence and interrupts is [`crate::watch`]).
//!
//! Flat out at QoS 1 or 2, the driver writes readings itself, in batches through
//! rumqttc's state machine (see [`crate::batched`]); paced (`--rate`) or at QoS 0, a
//! producer task hands them to rumqttc's request channel one by one (see
//! [`crate::queued`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_client::connect::{disconnect_seeing, first_connack, ConnectError, Session};
use mqtt_client::progress::Progress;
use mqtt_client::reconnect::{reconnect, ReconnectError};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing, Publish};
use tokio_util::sync::CancellationToken;

use crate::ledger;
use crate::pacing::Schedule;
use crate::PublisherArgs;

/// The names one device goes by.
#[derive(Debug, Clone)]
pub struct Identity {
    pub client_id: String,
    pub device_id: String,
    pub topic: String,
}

impl Identity {
    /// Device `index` (1-based) of `args.devices`. A single device keeps the names given
    /// on the command line; several get `-<index>` suffixes and a topic level of their own.
    pub fn new(args: &PublisherArgs, index: u32, client_prefix: &str) -> Self {
        if args.devices <= 1 {
            return Identity {
                client_id: client_prefix.to_owned(),
                device_id: args.device_id.clone(),
                topic: args.topic.clone(),
            };
        }
        let device_id = format!("{}-{index}", args.device_id);
        Identity {
            client_id: format!("{client_prefix}-{index}"),
            topic: format!("{}/{device_id}", args.topic),
            device_id,
        }
    }
}

/// A device whose connection is up, ready to publish.
pub struct Connected {
    pub identity: Identity,
    pub stream_id: u64,
    pub(crate) client: AsyncClient,
    pub(crate) eventloop: EventLoop,
}

/// Connects one device and waits for the broker's CONNACK.
pub async fn connect(args: &PublisherArgs, identity: Identity) -> Result<Connected, ConnectError> {
    let (client, mut eventloop) = args.client.broker.open(&Session {
        client_id: identity.client_id.clone(),
        // A named client keeps its session, so the broker resumes it after a reconnect;
        // a default id is random, and a session under it could never be resumed.
        clean: args.client.broker.client_id.is_none(),
        inflight: Some(args.inflight),
        manual_acks: false,
        request_capacity: usize::from(args.inflight),
    });
    first_connack(&mut eventloop, &args.client.broker).await?;
    Ok(Connected {
        identity,
        stream_id: rand::random(),
        client,
        eventloop,
    })
}

/// When a device publishes: from `start`, optionally paced, until its count or `end`.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Readings to publish, or `None` to publish until `end`.
    pub count: Option<u64>,
    pub end: Option<Instant>,
    pub schedule: Option<Schedule>,
}

/// Counters every device of a run adds to, for the progress lines.
pub struct Shared {
    pub progress: Progress,
    pub published: AtomicU64,
}

/// What one device did.
#[derive(Debug)]
pub struct Outcome {
    pub identity: Identity,
    pub stream_id: u64,
    pub published: u64,
    pub acked: u64,
    /// Unacknowledged readings sent again after reconnects.
    pub republished: u64,
    pub reconnects: u64,
    pub interrupted: bool,
    /// Why the connection was given up, if it was.
    pub lost: Option<String>,
    /// How long the in-flight window was full.
    pub window: WindowClock,
}

impl Outcome {
    /// The window counts as full (holding the publisher back) from `full_at` readings
    /// in flight.
    pub(crate) fn new(identity: Identity, stream_id: u64, full_at: u16) -> Outcome {
        Outcome {
            identity,
            stream_id,
            published: 0,
            acked: 0,
            republished: 0,
            reconnects: 0,
            interrupted: false,
            lost: None,
            window: WindowClock::new(full_at),
        }
    }

    /// Publishes the broker has confirmed: acknowledged at QoS 1 and 2, written at QoS 0.
    pub(crate) fn confirmed(&self, qos: u8) -> u64 {
        if qos == 0 {
            self.published
        } else {
            self.acked
        }
    }
}

/// Times the in-flight window's full stretches: the clock is read only when the window fills
/// or frees a slot, never per reading otherwise.
#[derive(Debug)]
pub struct WindowClock {
    limit: u64,
    full_since: Option<std::time::Instant>,
    pub full: Duration,
}

impl WindowClock {
    pub(crate) fn new(limit: u16) -> WindowClock {
        WindowClock {
            limit: u64::from(limit),
            full_since: None,
            full: Duration::ZERO,
        }
    }

    /// `in_flight` readings await their acknowledgement now.
    fn update(&mut self, in_flight: u64) {
        let full = in_flight >= self.limit;
        match (full, self.full_since) {
            (true, None) => self.full_since = Some(std::time::Instant::now()),
            (false, Some(since)) => {
                self.full += since.elapsed();
                self.full_since = None;
            }
            _ => {}
        }
    }

    /// The total, counting a stretch still going on.
    pub fn total(&self) -> Duration {
        self.full
            + self
                .full_since
                .map_or(Duration::ZERO, |since| since.elapsed())
    }
}

/// One device's run: its connection, what to publish, and what it shares with the others.
pub struct Job {
    pub device: Connected,
    pub args: Arc<PublisherArgs>,
    pub plan: Plan,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
}

/// Publishes according to the job's plan and counts what the broker acknowledged: in
/// batches when flat out at QoS 1 or 2, reading by reading otherwise.
pub async fn run(job: Job) -> Outcome {
    if job.plan.schedule.is_none() && job.args.client.qos > 0 {
        crate::batched::run(job).await
    } else {
        crate::queued::run(job).await
    }
}

/// What a device counts as its connection goes, kept the same way by both ways of
/// publishing: the outcome so far and the resends still to come after a reconnect.
pub(crate) struct Books {
    pub outcome: Outcome,
    /// Outgoing publishes still to come that are resends of unacknowledged readings.
    pub resends_due: u64,
    pub qos: u8,
    shared: Arc<Shared>,
}

impl Books {
    /// Books for `device` at `qos`, its window counted full from `full_at` readings in flight.
    pub(crate) fn new(device: &Connected, full_at: u16, qos: u8, shared: Arc<Shared>) -> Books {
        Books {
            outcome: Outcome::new(device.identity.clone(), device.stream_id, full_at),
            resends_due: 0,
            qos,
            shared,
        }
    }

    /// Counts one event (see [`tally`]); returns whether it shows progress.
    pub(crate) fn see(&mut self, event: &Event) -> bool {
        tally(
            &mut self.outcome,
            &mut self.resends_due,
            event,
            self.qos,
            &self.shared,
        )
    }

    /// Whether to ride out the connection just `lost` (`--reconnect-for` above 0); if not,
    /// the device's run ends with the connection given up.
    pub(crate) fn rides_out(&mut self, lost: &ConnectionError, args: &PublisherArgs) -> bool {
        if args.client.reconnect.reconnect_for == 0 {
            self.outcome.lost = Some(lost.to_string());
            return false;
        }
        true
    }

    /// Counts how riding out a lost connection ([`resume`]) ended; returns whether the run
    /// goes on (reconnected, with that many resends to come first).
    pub(crate) fn resumed(&mut self, resumed: Result<u64, ReconnectError>) -> bool {
        match resumed {
            Ok(resends) => {
                self.outcome.reconnects += 1;
                self.resends_due = resends;
                true
            }
            Err(ReconnectError::Interrupted) => {
                self.outcome.interrupted = true;
                false
            }
            Err(e) => {
                self.outcome.lost = Some(e.to_string());
                false
            }
        }
    }

    /// Ends the run (see [`finish`]) and hands over what the device did.
    pub(crate) async fn close(
        mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
    ) -> Outcome {
        finish(
            client,
            eventloop,
            &mut self.outcome,
            &mut self.resends_due,
            self.qos,
            &self.shared,
        )
        .await;
        self.outcome
    }
}

/// Rides out a lost connection keeping every reading (see [`ledger`]): publishes that
/// went out before are written again at once after the CONNACK, first, and the number of
/// them returned (the driver counts that many outgoing publishes as resends). Publishes
/// never sent go to `keep_fresh`, each way of publishing sending them on its own terms.
pub(crate) async fn resume(
    eventloop: &mut EventLoop,
    lost: ConnectionError,
    args: &PublisherArgs,
    shutdown: &CancellationToken,
    keep_fresh: impl FnOnce(Vec<Publish>),
) -> Result<u64, ReconnectError> {
    let unacked = ledger::take_unacknowledged(eventloop);
    let resends = unacked.resends();
    keep_fresh(unacked.fresh);
    // rumqttc clears its (now empty) pending queue on a CONNACK without a session; the
    // ledger goes back after it either way.
    reconnect(
        eventloop,
        lost,
        &args.client.broker,
        &args.client.reconnect,
        shutdown,
    )
    .await?;
    ledger::send_again(eventloop, unacked.ledger).await;
    Ok(resends)
}

/// Ends a device's run: counts the events rumqttc still holds queued and, unless the
/// connection was given up, sends DISCONNECT, counting what goes out and comes back on
/// the way (an acknowledgement that arrives then is a promise like any other).
pub(crate) async fn finish(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    outcome: &mut Outcome,
    resends_due: &mut u64,
    qos: u8,
    shared: &Shared,
) {
    for event in ledger::queued_events(eventloop) {
        tally(outcome, resends_due, &event, qos, shared);
    }
    if outcome.lost.is_none() {
        disconnect_seeing(client, eventloop, |event| {
            tally(outcome, resends_due, event, qos, shared);
        })
        .await;
    }
}

/// Counts one event of the connection; returns whether it shows progress. After a
/// reconnect the first `resends_due` outgoing publishes are resends of the ledger.
pub(crate) fn tally(
    outcome: &mut Outcome,
    resends_due: &mut u64,
    event: &Event,
    qos: u8,
    shared: &Shared,
) -> bool {
    match event {
        Event::Outgoing(Outgoing::Publish(_)) if *resends_due > 0 => {
            *resends_due -= 1;
            outcome.republished += 1;
        }
        Event::Outgoing(Outgoing::Publish(_)) => {
            outcome.published += 1;
            let total = shared.published.fetch_add(1, Ordering::Relaxed) + 1;
            shared.progress.update(total);
        }
        Event::Incoming(Incoming::PubAck(_)) if qos == 1 => outcome.acked += 1,
        Event::Incoming(Incoming::PubComp(_)) if qos == 2 => outcome.acked += 1,
        _ => return false,
    }
    if qos > 0 {
        let in_flight = outcome.published.saturating_sub(outcome.acked);
        outcome.window.update(in_flight);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> PublisherArgs {
        PublisherArgs::parse_from(std::iter::once("mqtt-publisher").chain(extra.iter().copied()))
    }

    /// The names device `index` gets, as plain strings.
    fn names(a: &PublisherArgs, index: u32, prefix: &str) -> [String; 3] {
        let id = Identity::new(a, index, prefix);
        [id.client_id, id.device_id, id.topic]
    }

    #[test]
    fn one_device_keeps_the_names_given() {
        let a = args(&["--topic", "t/x", "--device-id", "d"]);
        assert_eq!(names(&a, 1, "pub-1"), ["pub-1", "d", "t/x"]);
    }

    #[test]
    fn several_devices_get_names_and_topics_of_their_own() {
        let a = args(&["--topic", "t/x", "--device-id", "d", "--devices", "3"]);
        assert_eq!(names(&a, 3, "pub"), ["pub-3", "d-3", "t/x/d-3"]);
        assert!(a.validate().is_ok());
        let bad = args(&["--device-id", "a+b", "--devices", "2"]);
        assert!(bad.validate().is_err());
        let long = "x".repeat(254);
        let too_long = args(&["--device-id", &long, "--devices", "10"]);
        assert!(too_long.validate().is_err());
    }
}
