//! What a device's driver watches besides its connection: the interrupt, and a broker
//! gone silent. One timer serves the whole run: it checks a few times per --ack-timeout
//! whether anything showed progress (no clock is read per event), and after an interrupt
//! it ends the grace period in which acknowledgements are still collected.
//!
//! [`Watch::wait`] awaits the driver's work (a poll of rumqttc's event loop, a batch being
//! written) while watching, and hands the work back unfinished rather than dropping it:
//! rumqttc's `poll` is not cancel-safe (a packet its state counts as sent can be lost if
//! the future is dropped while it waits for the socket), so a driver drops its work only
//! when the run stops.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::warn;

use crate::device::Outcome;
use crate::PublisherArgs;

/// How long an interrupted run may spend collecting acknowledgements of what it sent.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// How a [`Watch::wait`] ended.
pub(crate) enum Woke<T> {
    /// The work finished.
    Done(T),
    /// The interrupt fired (once per run): the grace period has started and the work is
    /// still pending; wait again to finish it.
    Interrupted,
    /// The run must stop: the grace period is over, or the broker acknowledged nothing
    /// for --ack-timeout.
    Stop,
}

/// The interrupt and the silence timer of one device.
pub(crate) struct Watch {
    interrupt: Pin<Box<WaitForCancellationFutureOwned>>,
    timer: Pin<Box<Sleep>>,
    /// Events that showed progress; the driver adds to it.
    pub activity: u64,
    activity_seen: u64,
    quiet_since: Instant,
    ack_timeout: Duration,
    check_every: Duration,
    grace: Option<Instant>,
}

impl Watch {
    pub(crate) fn new(args: &PublisherArgs, shutdown: &CancellationToken) -> Watch {
        let ack_timeout = Duration::from_secs(args.ack_timeout);
        let check_every = ack_timeout / 4;
        let now = Instant::now();
        Watch {
            interrupt: Box::pin(shutdown.clone().cancelled_owned()),
            timer: Box::pin(tokio::time::sleep_until((now + check_every).into())),
            activity: 0,
            activity_seen: 0,
            quiet_since: now,
            ack_timeout,
            check_every,
            grace: None,
        }
    }

    /// True once interrupted: nothing new goes out, acknowledgements are collected until
    /// the grace period ends.
    pub(crate) fn in_grace(&self) -> bool {
        self.grace.is_some()
    }

    /// Awaits `work` while watching the interrupt and the timer; `work` stays with the
    /// caller, so [`Woke::Interrupted`] leaves it pending, to be awaited again.
    pub(crate) async fn wait<F: Future>(
        &mut self,
        outcome: &mut Outcome,
        mut work: Pin<&mut F>,
    ) -> Woke<F::Output> {
        loop {
            tokio::select! {
                biased;
                _ = self.interrupt.as_mut(), if self.grace.is_none() => {
                    self.interrupted(outcome);
                    return Woke::Interrupted;
                }
                done = work.as_mut() => return Woke::Done(done),
                () = self.timer.as_mut() => {
                    if self.tick(outcome) {
                        return Woke::Stop;
                    }
                }
            }
        }
    }

    /// The interrupt fired: starts the grace period.
    fn interrupted(&mut self, outcome: &mut Outcome) {
        outcome.interrupted = true;
        let grace = Instant::now() + INTERRUPT_GRACE;
        self.grace = Some(grace);
        if grace < self.timer.deadline().into_std() {
            self.timer.as_mut().reset(grace.into());
        }
    }

    /// The timer fired; returns true when the run must stop.
    fn tick(&mut self, outcome: &Outcome) -> bool {
        let now = Instant::now();
        if self.activity != self.activity_seen {
            self.activity_seen = self.activity;
            self.quiet_since = now;
        }
        if self.grace.is_some_and(|g| now >= g) {
            return true;
        }
        if now.duration_since(self.quiet_since) >= self.ack_timeout {
            if self.grace.is_none() {
                warn!(
                    device = %outcome.identity.device_id,
                    "the broker acknowledged nothing for {} s (--ack-timeout); giving up",
                    self.ack_timeout.as_secs()
                );
            }
            return true;
        }
        let next = now + self.check_every;
        let at = self.grace.map_or(next, |g| g.min(next));
        self.timer.as_mut().reset(at.into());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Identity;
    use clap::Parser;

    fn setup(ack_timeout: &str) -> (Watch, Outcome, CancellationToken) {
        let a = PublisherArgs::parse_from(["mqtt-publisher", "--ack-timeout", ack_timeout]);
        let shutdown = CancellationToken::new();
        let outcome = Outcome::new(Identity::new(&a, 1, "t"), 1, a.inflight);
        (Watch::new(&a, &shutdown), outcome, shutdown)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_goes_on_through_the_interrupt_and_the_grace_period_ends_the_run() {
        let (mut watch, mut out, shutdown) = setup("4");
        let done = std::future::ready(7);
        tokio::pin!(done);
        assert!(matches!(watch.wait(&mut out, done).await, Woke::Done(7)));

        // The interrupt leaves the work pending; it still finishes afterwards.
        shutdown.cancel();
        let later = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(later);
        assert!(matches!(
            watch.wait(&mut out, later.as_mut()).await,
            Woke::Interrupted
        ));
        assert!(out.interrupted && watch.in_grace());
        assert!(matches!(
            watch.wait(&mut out, later.as_mut()).await,
            Woke::Done(())
        ));

        // Work that never finishes is given up when the grace period ends, well before
        // --ack-timeout.
        let interrupted_at = Instant::now() - Duration::from_millis(100);
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        assert!(matches!(watch.wait(&mut out, never).await, Woke::Stop));
        let waited = interrupted_at.elapsed();
        assert!(
            waited >= INTERRUPT_GRACE - Duration::from_millis(100)
                && waited < INTERRUPT_GRACE + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_broker_stops_the_run_after_the_ack_timeout() {
        let (mut watch, mut out, _shutdown) = setup("1");
        let started = Instant::now();
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        assert!(matches!(watch.wait(&mut out, never).await, Woke::Stop));
        let waited = started.elapsed();
        // Checked every quarter of --ack-timeout (1 s here).
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        assert!(!out.interrupted);
    }
}
