//! One subscriber run as a small state machine: what it waits for, what each event does,
//! and why it ends.
//!
//! | phase | event | next |
//! |---|---|---|
//! | Subscribing | SUBACK granted | Receiving |
//! | Subscribing | SUBACK refused, or none within --connect-timeout | end: failed |
//! | either | a reading | same (the backlog of a resumed session may come before its SUBACK) |
//! | either | connection lost, reconnected, session kept | same |
//! | either | connection lost, reconnected, session gone | Subscribing (subscribe again) |
//! | either | connection lost for good (--reconnect-for) | end: failed |
//! | either | the state file cannot be written | end: failed |
//! | Receiving | nothing for --idle-timeout | end: idle |
//! | either | SIGINT or SIGTERM | end: interrupted |
//! | either | every expected reading in | end: satisfied |
//!
//! One task owns the connection and verifies inline, so a message is decoded straight
//! from rumqttc's buffer with no hand-off between tasks.

use std::pin::Pin;
use std::time::{Duration, Instant};

use mqtt_client::connect::qos;
use mqtt_client::progress::Progress;
use mqtt_client::reconnect::{reconnect, ReconnectError};
use mqtt_protocol::timing::{now_unix_us, Timing};
use mqtt_protocol::verify::Verifier;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, Publish, SubAck, SubscribeReasonCode,
};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::info;

use crate::acks::AckBatch;
use crate::{SubscribeError, SubscriberArgs};

/// Where a run is between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A SUBSCRIBE is out and its SUBACK not yet in.
    Subscribing,
    /// Subscribed; verifying what arrives.
    Receiving,
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every expected reading arrived.
    Satisfied,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// Nothing arrived for --idle-timeout.
    Idle,
    /// The broker or the network failed us, for good.
    Failed(String),
    /// The state file could not be written: nothing more may be acknowledged.
    StateFailed(String),
}

/// What woke the run up.
enum Wakeup {
    Signal,
    SubAckOverdue,
    AckDue,
    IdleCheck,
    Polled(Result<Event, ConnectionError>),
}

/// The run's timers, one of each kind for the whole run, reset only when a deadline
/// moves: building fresh timers for every message cost about 13% of the subscriber's CPU.
struct Timers {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Sleeps "forever" (a day) before the first reading; after it, pushed back lazily,
    /// when it fires, to the last arrival plus --idle-timeout.
    idle: Pin<Box<Sleep>>,
    ack: Pin<Box<Sleep>>,
    ack_armed: Option<Instant>,
    suback: Pin<Box<Sleep>>,
}

/// Everything one run holds.
pub struct Run {
    pub args: SubscriberArgs,
    pub client_id: String,
    pub persistent: bool,
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub verifier: Verifier,
    pub batch: Option<AckBatch>,
    pub timing: Timing,
    pub last_arrival: Option<Instant>,
    pub reconnects: u64,
    subscription: String,
    progress: Progress,
    phase: Phase,
    announced: bool,
    timers: Timers,
}

impl Run {
    /// A run whose SUBSCRIBE to `subscription` has just been sent.
    pub fn new(
        args: SubscriberArgs,
        client_id: String,
        persistent: bool,
        (client, eventloop): (AsyncClient, EventLoop),
        verifier: Verifier,
        batch: Option<AckBatch>,
        shutdown: &CancellationToken,
    ) -> Run {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        let suback_timeout = Duration::from_secs(args.client.broker.connect_timeout);
        Run {
            subscription: args.subscription(),
            progress: Progress::new(
                "Messages received",
                args.client.progress_every,
                args.client.count,
            ),
            args,
            client_id,
            persistent,
            client,
            eventloop,
            verifier,
            batch,
            timing: Timing::new(),
            last_arrival: None,
            reconnects: 0,
            phase: Phase::Subscribing,
            announced: false,
            timers: Timers {
                cancelled: Box::pin(shutdown.clone().cancelled_owned()),
                idle: Box::pin(tokio::time::sleep_until(far)),
                ack: Box::pin(tokio::time::sleep_until(far)),
                ack_armed: None,
                suback: Box::pin(tokio::time::sleep(suback_timeout)),
            },
        }
    }

    /// Runs until the run ends; then commits and acknowledges what is held.
    pub async fn drive(&mut self, shutdown: &CancellationToken) -> End {
        let mut end = loop {
            if self.verifier.is_satisfied() {
                break End::Satisfied;
            }
            let wakeup = self.wait().await;
            if let Some(end) = self.handle(wakeup, shutdown).await {
                break end;
            }
        };
        self.progress.finish();
        if let (Some(batch), false) = (&mut self.batch, matches!(end, End::StateFailed(_))) {
            if let Err(e) = batch.finish(&self.client, &self.verifier) {
                end = End::StateFailed(e.to_string());
            }
        }
        end
    }

    /// Waits for the next thing that needs handling.
    async fn wait(&mut self) -> Wakeup {
        let ack_deadline = self.batch.as_ref().and_then(AckBatch::deadline);
        let timers = &mut self.timers;
        if ack_deadline != timers.ack_armed {
            if let Some(deadline) = ack_deadline {
                timers.ack.as_mut().reset(deadline.into());
            }
            timers.ack_armed = ack_deadline;
        }
        let subscribing = self.phase == Phase::Subscribing;
        tokio::select! {
            biased;
            _ = timers.cancelled.as_mut() => Wakeup::Signal,
            _ = timers.suback.as_mut(), if subscribing => Wakeup::SubAckOverdue,
            _ = timers.ack.as_mut(), if timers.ack_armed.is_some() => Wakeup::AckDue,
            event = self.eventloop.poll() => Wakeup::Polled(event),
            _ = timers.idle.as_mut(), if self.last_arrival.is_some() => Wakeup::IdleCheck,
        }
    }

    /// Handles one wakeup; returns why the run ends, if it does.
    async fn handle(&mut self, wakeup: Wakeup, shutdown: &CancellationToken) -> Option<End> {
        match wakeup {
            Wakeup::Signal => Some(End::Interrupted),
            Wakeup::SubAckOverdue => Some(End::Failed(
                SubscribeError::NoSubAck(self.args.client.broker.connect_timeout).to_string(),
            )),
            Wakeup::AckDue => self.commit(),
            Wakeup::IdleCheck => self.check_idle(),
            Wakeup::Polled(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                self.on_reading(publish)
            }
            Wakeup::Polled(Ok(Event::Incoming(Incoming::SubAck(ack)))) => self.on_suback(&ack),
            Wakeup::Polled(Ok(_)) => None,
            Wakeup::Polled(Err(lost)) => self.on_lost(lost, shutdown).await,
        }
    }

    fn on_reading(&mut self, publish: Publish) -> Option<End> {
        let now = Instant::now();
        let recorded = self.verifier.record_payload(&publish.payload);
        let early = self.timing.record(now, now_unix_us(), recorded.sent);
        // Said once, when the first such reading arrives; the summary gives the count.
        if let Some(early) = early.filter(|_| self.timing.arrived_before_sent() == 1) {
            tracing::warn!(
                "a reading arrived {early} µs before it left, by the clocks: the publisher's \
                 clock and this machine's disagree, and latency figures with them (the \
                 report counts such readings in arrived_before_sent)"
            );
        }
        self.progress.update(self.verifier.received());
        if self.last_arrival.is_none() {
            let idle = Duration::from_secs_f64(self.args.idle_timeout);
            self.timers.idle.as_mut().reset((now + idle).into());
        }
        self.last_arrival = Some(now);
        let mut full = false;
        if let Some(batch) = self.batch.as_mut() {
            batch.record(&recorded.observation);
            full = batch.hold(publish);
        }
        let end = if full { self.commit() } else { None };
        simulate_work(Duration::from_micros(self.args.process_delay_us));
        end
    }

    /// Puts the held readings on record and acknowledges them.
    fn commit(&mut self) -> Option<End> {
        let batch = self.batch.as_mut()?;
        batch
            .commit(&self.client, &self.verifier)
            .err()
            .map(|e| End::StateFailed(e.to_string()))
    }

    fn on_suback(&mut self, ack: &SubAck) -> Option<End> {
        if ack
            .return_codes
            .iter()
            .any(|c| matches!(c, SubscribeReasonCode::Failure))
        {
            let refused = SubscribeError::Refused(self.subscription.clone());
            return Some(End::Failed(refused.to_string()));
        }
        self.phase = Phase::Receiving;
        if !self.announced {
            self.announced = true;
            let waiting_for = match self.args.share {
                Some(_) => " over the group (or the idle timeout)",
                None => "",
            };
            info!(
                broker = %mqtt_client::failover::current(&self.eventloop),
                client_id = %self.client_id,
                persistent = self.persistent,
                "subscribed to {} at QoS {}; waiting for {} readings{}",
                self.subscription,
                self.args.client.qos,
                self.args.client.count,
                waiting_for
            );
        }
        None
    }

    async fn on_lost(
        &mut self,
        lost: ConnectionError,
        shutdown: &CancellationToken,
    ) -> Option<End> {
        if let Some(batch) = self.batch.as_mut() {
            // Those acks belonged to the lost connection; the broker sends the readings
            // again and the journal already has them.
            if let Err(e) = batch.abandon(&self.verifier) {
                return Some(End::StateFailed(e.to_string()));
            }
        }
        let client = &self.args.client;
        match reconnect(
            &mut self.eventloop,
            lost,
            &client.broker,
            &client.reconnect,
            shutdown,
        )
        .await
        {
            Ok(ack) => {
                self.reconnects += 1;
                if !ack.session_present {
                    // The broker forgot us (restart, or a clean session): subscribe again.
                    let _ = self
                        .client
                        .try_subscribe(self.subscription.as_str(), qos(client.qos));
                    self.phase = Phase::Subscribing;
                    let timeout = Duration::from_secs(client.broker.connect_timeout);
                    let deadline = tokio::time::Instant::now() + timeout;
                    self.timers.suback.as_mut().reset(deadline);
                }
                None
            }
            Err(ReconnectError::Interrupted) => Some(End::Interrupted),
            Err(e) => Some(End::Failed(e.to_string())),
        }
    }

    fn check_idle(&mut self) -> Option<End> {
        let idle = Duration::from_secs_f64(self.args.idle_timeout);
        let due = self.last_arrival.map_or(Instant::now(), |t| t + idle);
        if Instant::now() < due {
            self.timers.idle.as_mut().reset(due.into());
            return None;
        }
        info!(
            "nothing arrived for {} s (--idle-timeout); stopping",
            self.args.idle_timeout
        );
        Some(End::Idle)
    }
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
