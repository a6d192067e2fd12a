//! Delivery timing: end-to-end latency of each reading from the send time it carries,
//! in an HDR histogram, and throughput for each second of the run.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies above this are clamped (an hour is already a broken run).
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Microseconds since the Unix epoch, the clock readings carry.
pub fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Latency percentiles in µs, as in the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Readings that carried a usable send time.
    pub samples: u64,
}

/// Collects latencies and per-second arrival counts.
pub struct Timing {
    latency: Histogram<u64>,
    started: Option<Instant>,
    per_second: Vec<u64>,
}

impl Default for Timing {
    fn default() -> Self {
        Self::new()
    }
}

impl Timing {
    pub fn new() -> Self {
        Timing {
            // 3 significant digits from 1 µs to an hour: ~200 KB, fixed.
            latency: Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
                .expect("static histogram bounds are valid"),
            started: None,
            per_second: Vec::new(),
        }
    }

    /// Records one arrival at `now`; `sent_at_us` is the reading's send time, if known.
    pub fn record(&mut self, now: Instant, now_unix_us: u64, sent_at_us: Option<u64>) {
        let started = *self.started.get_or_insert(now);
        let second = now.duration_since(started).as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
        if let Some(sent) = sent_at_us {
            // A clock that runs backwards between hosts reads as 0 µs, never negative.
            let latency = now_unix_us.saturating_sub(sent).clamp(1, MAX_TRACKED_US);
            self.latency.saturating_record(latency);
        }
    }

    /// When the first arrival was recorded.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    pub fn latency(&self) -> LatencySummary {
        let h = &self.latency;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            samples: h.len(),
        }
    }

    pub fn per_second(&self) -> &[u64] {
        &self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_percentiles_and_per_second_counts() {
        let mut t = Timing::new();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 2);
            t.record(now, 1_000_000 + i + 100, Some(1_000_000 + i));
        }
        t.record(t0, 5, None);
        let l = t.latency();
        assert_eq!((l.p50, l.max, l.samples), (100, 100, 1000));
        assert_eq!(t.per_second(), &[501, 500]);
    }
}
