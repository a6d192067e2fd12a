//! Riding out a lost connection: after the first CONNACK (before it, clients fail fast),
//! a dropped connection is retried with capped exponential backoff and jitter for at
//! most `--reconnect-for` seconds, logging the loss and the recovery once each. With
//! several brokers (`--broker`), the first attempt goes back to the same broker (most
//! losses are blips) and each failed attempt moves on to the next.

use std::time::{Duration, Instant};

use rumqttc::{ConnAck, ConnectionError, Event, EventLoop, Incoming};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connect::BrokerArgs;
use crate::failover::{current, move_to, next_after};

/// First pause before a reconnect attempt.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The reconnect flags both clients share.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconnectArgs {
    /// After a connection that worked is lost, keep trying to reconnect for this many
    /// seconds (0: give up at once).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub reconnect_for: u64,
}

/// Capped exponential backoff with "full jitter": each pause is uniform in
/// `[0, min(cap, initial * 2^attempt)]`, so many clients that lost the same broker do
/// not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            initial,
            cap,
            attempt: 0,
        }
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// Why reconnecting failed.
#[derive(Debug, Error)]
pub enum ReconnectError {
    #[error("gave up reconnecting after {secs} s (--reconnect-for); last error: {last}")]
    GaveUp { secs: u64, last: ConnectionError },
    #[error("interrupted while reconnecting")]
    Interrupted,
}

/// Reconnects after `lost`, polling `eventloop` (which reconnects by itself on the next
/// poll) until a CONNACK arrives from one of `broker`'s endpoints, the budget runs out,
/// or `shutdown` fires. Returns the CONNACK, whose `session_present` tells whether the
/// broker kept the session.
pub async fn reconnect(
    eventloop: &mut EventLoop,
    lost: ConnectionError,
    broker: &BrokerArgs,
    args: &ReconnectArgs,
    shutdown: &CancellationToken,
) -> Result<ConnAck, ReconnectError> {
    let started = Instant::now();
    let budget = Duration::from_secs(args.reconnect_for);
    let endpoints = broker.endpoints();
    let lost_from = current(eventloop);
    warn!(
        "connection to {lost_from} lost ({lost}); reconnecting for up to {} s{}",
        args.reconnect_for,
        if endpoints.len() > 1 {
            ", to any of the brokers"
        } else {
            ""
        }
    );
    let mut backoff = Backoff::default();
    let mut last = lost;
    let mut attempts = 0u32;
    loop {
        let remaining = budget.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(ReconnectError::GaveUp {
                secs: args.reconnect_for,
                last,
            });
        }
        let pause = backoff.next_delay().min(remaining);
        tokio::select! {
            _ = shutdown.cancelled() => return Err(ReconnectError::Interrupted),
            _ = tokio::time::sleep(pause) => {}
        }
        attempts += 1;
        let attempt = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Err(ReconnectError::Interrupted),
            outcome = tokio::time::timeout(remaining, attempt) => outcome,
        };
        match outcome {
            Ok(Ok(ack)) => {
                info!(
                    attempts,
                    session_present = ack.session_present,
                    "reconnected to {} after {:.1} s",
                    current(eventloop),
                    started.elapsed().as_secs_f64()
                );
                return Ok(ack);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = ConnectionError::NetworkTimeout,
        }
        let here = current(eventloop);
        if let Some(next) = next_after(&endpoints, &here) {
            debug!("{here} did not answer ({last}); trying {next}");
            move_to(eventloop, next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_is_jittered() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_millis(10 * (1 << i)).min(Duration::from_millis(300));
            assert!(*d <= ceiling, "attempt {i}: {d:?} > {ceiling:?}");
        }
        // Jitter: a dozen pauses are not all identical.
        assert!(delays.windows(2).any(|w| w[0] != w[1]));
    }
}
