//! The beat of the broker's housekeeping tasks (checkpoints, flow holds, metrics): each
//! wakes every so often until the broker stops, and a late beat is delayed, never bunched,
//! so a busy broker is not handed a burst of catch-up work.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A housekeeping task's beat: the first comes at once, then one every period.
pub(crate) struct Ticker {
    tick: Interval,
    stop: CancellationToken,
}

impl Ticker {
    /// Beats every `period` until `stop` is cancelled.
    pub(crate) fn new(period: Duration, stop: CancellationToken) -> Ticker {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { tick, stop }
    }

    /// Waits for the next beat; `false` once the broker stops, when the task should end.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            () = self.stop.cancelled() => false,
        }
    }
}
