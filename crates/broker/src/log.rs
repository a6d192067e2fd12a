//! One concise WARN line per refused or disconnected client, but never a flood: at most
//! [`PER_WINDOW`] lines per [`WINDOW`]; beyond that, lines are counted and the count is
//! reported with the next line that gets through.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);
const PER_WINDOW: u32 = 20;

#[derive(Debug, Default)]
pub(crate) struct Budget {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Budget {
    /// Logs `message` at WARN unless this window's budget is spent.
    pub(crate) fn warn(&self, message: fmt::Arguments<'_>) {
        let suppressed = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let expired = match s.window_start {
                Some(start) => now.duration_since(start) >= WINDOW,
                None => true,
            };
            if expired {
                s.window_start = Some(now);
                s.used = 0;
            }
            if s.used >= PER_WINDOW {
                s.suppressed += 1;
                return;
            }
            s.used += 1;
            std::mem::take(&mut s.suppressed)
        };
        if suppressed > 0 {
            tracing::warn!("{message} ({suppressed} similar lines suppressed before this one)");
        } else {
            tracing::warn!("{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_what_it_suppresses() {
        let budget = Budget::default();
        for _ in 0..PER_WINDOW + 5 {
            budget.warn(format_args!("x"));
        }
        let s = budget.state.lock().unwrap();
        assert_eq!((s.used, s.suppressed), (PER_WINDOW, 5));
    }
}
