//! One simulated device: its own MQTT connection, stream and topic.
//!
//! Two tasks share the connection: the *producer* encodes readings and hands them to
//! rumqttc's bounded request channel (which blocks it while the window is full), and
//! the *driver* polls the event loop, counting what went out and what came back.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqtt_client::connect::{disconnect, first_connack, ConnectError, Session};
use mqtt_client::progress::Progress;
use mqtt_client::reconnect::{reconnect, ReconnectError};
use mqtt_protocol::reading::Reading;
use mqtt_protocol::timing::now_unix_us;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing, Publish};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::ledger;
use crate::pacing::Schedule;
use crate::sensor::Sensor;
use crate::PublisherArgs;

/// How long an interrupted run may spend collecting acknowledgements of what it sent.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// Encoded readings are cut from shared buffers of this size: one allocation per few
/// hundred readings instead of one (or two) per reading.
const ARENA_BYTES: usize = 64 * 1024;

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
    client: AsyncClient,
    eventloop: EventLoop,
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

/// Times the in-flight window's full stretches: the clock is read only when the window fills
/// or frees a slot, never per reading otherwise.
#[derive(Debug)]
pub struct WindowClock {
    limit: u64,
    full_since: Option<std::time::Instant>,
    pub full: Duration,
}

impl WindowClock {
    fn new(limit: u16) -> WindowClock {
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

/// Publishes according to `plan` and counts what the broker acknowledged.
pub async fn run(
    device: Connected,
    args: Arc<PublisherArgs>,
    plan: Plan,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Outcome {
    let Connected {
        identity,
        stream_id,
        client,
        mut eventloop,
    } = device;
    let handed_over = Arc::new(AtomicU64::new(0));
    let stop_producing = shutdown.child_token();
    let producer = tokio::spawn(produce(
        client.clone(),
        args.clone(),
        identity.clone(),
        stream_id,
        plan,
        handed_over.clone(),
        stop_producing.clone(),
    ));

    let mut outcome = Outcome {
        identity,
        stream_id,
        published: 0,
        acked: 0,
        republished: 0,
        reconnects: 0,
        interrupted: false,
        lost: None,
        window: WindowClock::new(args.inflight),
    };
    // Outgoing publishes still to come that are resends of unacknowledged readings.
    let mut resends_due: u64 = 0;
    let ack_timeout = Duration::from_secs(args.ack_timeout);
    // Silence is checked a few times per --ack-timeout rather than timed per message:
    // one timer for the whole run, and no clock read per event. `activity` counts events
    // that show progress; `quiet_since` is when a check last saw it unchanged.
    let check_every = ack_timeout / 4;
    let mut activity: u64 = 0;
    let mut activity_seen: u64 = 0;
    let mut quiet_since = Instant::now();
    let mut grace_deadline: Option<Instant> = None;
    let timer = tokio::time::sleep_until((quiet_since + check_every).into());
    tokio::pin!(timer);
    let cancelled = shutdown.clone().cancelled_owned();
    tokio::pin!(cancelled);

    loop {
        // What was handed over, or went out: whichever the driver has seen more of.
        let target = handed_over.load(Ordering::Acquire).max(outcome.published);
        let confirmed = if args.client.qos == 0 {
            outcome.published
        } else {
            outcome.acked
        };
        if confirmed >= target && producer.is_finished() {
            break;
        }
        tokio::select! {
            biased;
            _ = &mut cancelled, if grace_deadline.is_none() => {
                outcome.interrupted = true;
                let grace = Instant::now() + INTERRUPT_GRACE;
                grace_deadline = Some(grace);
                if grace < timer.deadline().into_std() {
                    timer.as_mut().reset(grace.into());
                }
            }
            event = eventloop.poll() => match event {
                Ok(event) => {
                    if tally(&mut outcome, &mut resends_due, &event, args.client.qos, &shared) {
                        activity += 1;
                    }
                }
                Err(e) => {
                    // Events of the lost connection still queued (a publish whose write
                    // failed, acks read in the last batch) count under its rules.
                    for event in ledger::events_left(&mut eventloop) {
                        tally(&mut outcome, &mut resends_due, &event, args.client.qos, &shared);
                    }
                    if args.client.reconnect.reconnect_for == 0 {
                        outcome.lost = Some(e.to_string());
                        break;
                    }
                    match resume(&mut eventloop, e, &args, &client, &stop_producing, &shutdown).await {
                        Ok(resends) => {
                            outcome.reconnects += 1;
                            resends_due = resends;
                            activity += 1;
                        }
                        Err(ReconnectError::Interrupted) => {
                            outcome.interrupted = true;
                            break;
                        }
                        Err(e) => {
                            outcome.lost = Some(e.to_string());
                            break;
                        }
                    }
                }
            },
            () = &mut timer => {
                let now = Instant::now();
                if activity != activity_seen {
                    activity_seen = activity;
                    quiet_since = now;
                }
                if grace_deadline.is_some_and(|g| now >= g) {
                    break;
                }
                if now.duration_since(quiet_since) >= ack_timeout {
                    if grace_deadline.is_none() {
                        warn!(
                            device = %outcome.identity.device_id,
                            "the broker acknowledged nothing for {} s (--ack-timeout); giving up",
                            args.ack_timeout
                        );
                    }
                    break;
                }
                let next = now + check_every;
                timer.as_mut().reset(grace_deadline.map_or(next, |g| g.min(next)).into());
            }
        }
    }
    stop_producing.cancel();
    if outcome.lost.is_none() {
        disconnect(&client, &mut eventloop).await;
    }
    outcome
}

/// Counts one event of the connection; returns whether it shows progress. After a
/// reconnect the first `resends_due` outgoing publishes are resends (see [`resume`]).
fn tally(
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

/// Rides out a lost connection keeping every reading (see [`ledger`]): publishes that
/// went out before are written again at once after the CONNACK, first; the driver counts
/// the first `resends` outgoing publishes as resends, the number returned. Publishes
/// never sent go back through the request channel on a task of their own, under
/// rumqttc's flow control.
async fn resume(
    eventloop: &mut EventLoop,
    lost: ConnectionError,
    args: &PublisherArgs,
    client: &AsyncClient,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<u64, ReconnectError> {
    let unacked = ledger::take_unacknowledged(eventloop);
    let resends = unacked.resends();
    tokio::spawn(republish(client.clone(), unacked.fresh, stop.clone()));
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

/// Hands never-sent publishes back to rumqttc's request channel, in order, waiting for
/// room as the producer does.
async fn republish(client: AsyncClient, fresh: Vec<Publish>, stop: CancellationToken) {
    for p in fresh {
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = client.publish_bytes(p.topic.clone(), p.qos, p.retain, p.payload) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Encodes and hands over readings until the plan is done or told to stop.
async fn produce(
    client: AsyncClient,
    args: Arc<PublisherArgs>,
    identity: Identity,
    stream_id: u64,
    plan: Plan,
    handed_over: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let qos = mqtt_client::connect::qos(args.client.qos);
    let mut encoder = Encoder::new(&args, &identity.device_id, stream_id, plan.count);
    let last = match (plan.count, plan.schedule, plan.end) {
        (Some(count), _, _) => count,
        // Paced for a duration: exactly the readings due before the end.
        (None, Some(schedule), Some(end)) => schedule.due_before(end),
        (None, _, _) => u64::MAX,
    };
    for seq in 1..=last {
        if stop.is_cancelled() {
            return;
        }
        let sent_at_us = match &plan.schedule {
            Some(schedule) => {
                let due = schedule.due(seq);
                if due > Instant::now() {
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {}
                        () = stop.cancelled() => return,
                    }
                }
                schedule.intended_unix_us(seq)
            }
            None => {
                if plan.end.is_some_and(|end| Instant::now() >= end) {
                    return;
                }
                now_unix_us()
            }
        };
        let payload = encoder.encode(seq, sent_at_us);
        // Not raced against `stop`: a send abandoned half-way may still reach the event
        // loop, and then it would go out uncounted. The driver keeps polling meanwhile.
        if client
            .publish_bytes(identity.topic.as_str(), qos, false, payload)
            .await
            .is_err()
        {
            return; // The event loop is gone; the driver reports why.
        }
        handed_over.store(seq, Ordering::Release);
    }
}

/// Encodes one device's readings into shared buffers, reusing its scratch space.
pub struct Encoder<'a> {
    args: &'a PublisherArgs,
    device_id: &'a str,
    stream_id: u64,
    total: u64,
    sensor: Sensor,
    scratch: Vec<u8>,
    arena: BytesMut,
}

impl<'a> Encoder<'a> {
    /// `count` is the stream's total, or `None` when it is not known up front.
    pub fn new(
        args: &'a PublisherArgs,
        device_id: &'a str,
        stream_id: u64,
        count: Option<u64>,
    ) -> Self {
        Encoder {
            args,
            device_id,
            stream_id,
            total: count.unwrap_or(0),
            sensor: Sensor::new(stream_id),
            scratch: Vec::new(),
            arena: BytesMut::new(),
        }
    }

    /// Reading `seq` stamped with `sent_at_us`.
    pub fn encode(&mut self, seq: u64, sent_at_us: u64) -> Bytes {
        let (temperature, humidity) = self.sensor.sample(seq);
        let mut reading = Reading {
            stream_id: self.stream_id,
            device_id: Cow::Borrowed(self.device_id),
            seq,
            total: self.total,
            sent_at_us,
            temperature,
            humidity,
            padding: 0,
        };
        reading.padding =
            (self.args.payload_size as usize).saturating_sub(reading.binary_len()) as u32;
        self.scratch.clear();
        reading.encode(self.args.payload, &mut self.scratch);
        if self.arena.capacity() < self.scratch.len() {
            self.arena.reserve(ARENA_BYTES.max(self.scratch.len()));
        }
        self.arena.extend_from_slice(&self.scratch);
        self.arena.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use mqtt_protocol::reading::decode;

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

    #[test]
    fn encoded_readings_decode_and_do_not_share_bytes() {
        let a = args(&["--payload-size", "100"]);
        let mut e = Encoder::new(&a, "sensor-1", 42, Some(1000));
        let first = e.encode(1, 111);
        let second = e.encode(2, 222);
        for (bytes, seq, at) in [(&first, 1, 111), (&second, 2, 222)] {
            assert_eq!(bytes.len(), 100);
            let r = decode(bytes).unwrap();
            assert_eq!(
                (r.stream_id, r.seq, r.total, r.sent_at_us),
                (42, seq, 1000, at)
            );
        }
        // Past an arena's worth of readings, the earlier ones are still intact.
        let readings: Vec<Bytes> = (3..2000).map(|s| e.encode(s, s)).collect();
        assert_eq!(decode(&first).unwrap().seq, 1);
        assert_eq!(decode(&readings[1500]).unwrap().seq, 1503);
        let mut unknown = Encoder::new(&a, "d", 1, None);
        assert_eq!(decode(&unknown.encode(5, 1)).unwrap().total, 0);
    }
}
