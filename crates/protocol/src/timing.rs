//! Delivery timing: how late each reading arrived, in HDR histograms, and throughput for
//! each second of the run.
//!
//! Three views of one arrival, because a paced run asks two questions at once:
//! - **latency**: from the reading's send time (its *intended* time, when paced) to its
//!   arrival. A publisher that stalls cannot hide it (no coordinated omission): what a
//!   device on that schedule would have seen.
//! - **transit**: from when the reading actually left the publisher to its arrival: the
//!   broker and the network (and both clients' queues), without the publisher's lateness.
//! - **publisher lateness**: how long after its intended time each reading left.
//!
//! All three compare the publisher's wall clock with the subscriber's: on one machine they
//! share a clock; across machines they must agree (NTP/PTP), and a reading that arrives
//! "before" it left is counted as a sign that they do not.

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

/// Percentiles of one histogram in µs, as in the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Readings that carried the times this histogram needs.
    pub samples: u64,
}

/// One point of a percentile distribution (the usual HdrHistogram plot).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    /// 0 to 100.
    pub percentile: f64,
    pub us: u64,
}

/// Everything the report says about timing; every field but `latency_us` is absent from
/// reports written before it existed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// From each reading's send time (intended, when paced) to its arrival.
    pub latency_us: LatencySummary,
    /// From when each reading actually left the publisher to its arrival (readings that
    /// said when they left: format 2).
    #[serde(default)]
    pub transit_us: LatencySummary,
    /// How long after its intended send time each reading actually left the publisher.
    #[serde(default)]
    pub publisher_lateness_us: LatencySummary,
    /// `latency_us` as a distribution: the value at 0, 50, 75, 87.5, ... 100 percent,
    /// halving the distance to 100 % at each step.
    #[serde(default)]
    pub latency_percentiles_us: Vec<Percentile>,
    /// Readings that arrived before the time they left, by the two clocks: the
    /// publisher's and the subscriber's clocks disagree, and the figures above with them.
    #[serde(default)]
    pub arrived_before_sent: u64,
}

/// When one reading was meant to leave and when it did, µs since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendTimes {
    /// Its send time (intended, when paced), if it carried one.
    pub sent_at_us: Option<u64>,
    /// When it actually left, if it said.
    pub departed_at_us: Option<u64>,
}

/// Collects latencies and per-second arrival counts.
pub struct Timing {
    latency: Histogram<u64>,
    transit: Histogram<u64>,
    lateness: Histogram<u64>,
    arrived_before_sent: u64,
    started: Option<Instant>,
    per_second: Vec<u64>,
}

impl Default for Timing {
    fn default() -> Self {
        Self::new()
    }
}

/// 3 significant digits from 1 µs to an hour: ~200 KB, fixed.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static histogram bounds are valid")
}

/// `to - from` in µs, at least 1 (the histograms start at 1 µs), at most an hour.
fn record_span(h: &mut Histogram<u64>, from: u64, to: u64) {
    h.saturating_record(to.saturating_sub(from).clamp(1, MAX_TRACKED_US));
}

fn summary(h: &Histogram<u64>) -> LatencySummary {
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

impl Timing {
    pub fn new() -> Self {
        Timing {
            latency: histogram(),
            transit: histogram(),
            lateness: histogram(),
            arrived_before_sent: 0,
            started: None,
            per_second: Vec::new(),
        }
    }

    /// Records one arrival at `now` (`now_unix_us` on the wall clock). When it arrived
    /// before it left by the clocks, counts it and returns by how many µs.
    pub fn record(&mut self, now: Instant, now_unix_us: u64, sent: SendTimes) -> Option<u64> {
        let started = *self.started.get_or_insert(now);
        let second = now.duration_since(started).as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
        if let Some(sent_at) = sent.sent_at_us {
            record_span(&mut self.latency, sent_at, now_unix_us);
        }
        if let Some(departed) = sent.departed_at_us {
            record_span(&mut self.transit, departed, now_unix_us);
            if let Some(sent_at) = sent.sent_at_us {
                // Lateness 0 is recorded as 1 µs: the histogram's floor.
                record_span(&mut self.lateness, sent_at, departed);
            }
        }
        let left = sent.departed_at_us.or(sent.sent_at_us)?;
        let early = left.checked_sub(now_unix_us).filter(|&by| by > 0)?;
        self.arrived_before_sent += 1;
        Some(early)
    }

    /// Readings so far that arrived before they left, by the clocks.
    pub fn arrived_before_sent(&self) -> u64 {
        self.arrived_before_sent
    }

    /// When the first arrival was recorded.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Latency from the send time, the headline figure.
    pub fn latency(&self) -> LatencySummary {
        summary(&self.latency)
    }

    /// Everything the report says about timing.
    pub fn latencies(&self) -> Latencies {
        let latency_percentiles_us = if self.latency.is_empty() {
            Vec::new()
        } else {
            self.latency
                .iter_quantiles(1)
                .map(|v| Percentile {
                    percentile: v.quantile_iterated_to() * 100.0,
                    us: v.value_iterated_to(),
                })
                .collect()
        };
        Latencies {
            latency_us: self.latency(),
            transit_us: summary(&self.transit),
            publisher_lateness_us: summary(&self.lateness),
            latency_percentiles_us,
            arrived_before_sent: self.arrived_before_sent,
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

    fn sent(sent_at_us: u64, departed_at_us: Option<u64>) -> SendTimes {
        SendTimes {
            sent_at_us: Some(sent_at_us),
            departed_at_us,
        }
    }

    #[test]
    fn latency_percentiles_and_per_second_counts() {
        let mut t = Timing::new();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 2);
            assert_eq!(
                t.record(now, 1_000_000 + i + 100, sent(1_000_000 + i, None)),
                None
            );
        }
        t.record(t0, 5, SendTimes::default());
        let l = t.latency();
        assert_eq!((l.p50, l.max, l.samples), (100, 100, 1000));
        assert_eq!(t.per_second(), &[501, 500]);
        // Readings that did not say when they left have no transit.
        assert_eq!(t.latencies().transit_us.samples, 0);
    }

    #[test]
    fn a_late_publisher_shows_in_latency_and_lateness_but_not_in_transit() {
        let mut t = Timing::new();
        let now = Instant::now();
        for i in 0..100u64 {
            // Meant to leave at 1 s, left 900 µs late, arrived 200 µs after leaving.
            let intended = 1_000_000 + i * 1000;
            t.record(now, intended + 1100, sent(intended, Some(intended + 900)));
        }
        let l = t.latencies();
        assert_eq!((l.latency_us.p50, l.latency_us.samples), (1100, 100));
        assert_eq!((l.transit_us.p50, l.transit_us.samples), (200, 100));
        assert_eq!(l.publisher_lateness_us.p50, 900);
        assert_eq!(l.arrived_before_sent, 0);
    }

    #[test]
    fn the_distribution_runs_from_0_to_100_percent() {
        let mut t = Timing::new();
        let now = Instant::now();
        for us in 1..=10_000u64 {
            t.record(now, 1_000_000 + us, sent(1_000_000, None));
        }
        let points = t.latencies().latency_percentiles_us;
        assert!(points.len() > 10, "{points:?}");
        assert_eq!(points.first().map(|p| p.percentile), Some(0.0));
        assert_eq!(points.last().map(|p| p.percentile), Some(100.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].percentile <= w[1].percentile && w[0].us <= w[1].us));
        let median = points.iter().find(|p| p.percentile == 50.0).unwrap();
        assert!((4990..=5010).contains(&median.us), "{median:?}");
        assert!(Timing::new().latencies().latency_percentiles_us.is_empty());
    }

    #[test]
    fn an_arrival_before_its_departure_is_a_clock_disagreement() {
        let mut t = Timing::new();
        let now = Instant::now();
        assert_eq!(t.record(now, 1_000, sent(900, Some(1_200))), Some(200));
        assert_eq!(t.record(now, 1_300, sent(900, Some(1_200))), None);
        assert_eq!(t.record(now, 800, sent(900, None)), Some(100));
        let l = t.latencies();
        assert_eq!(l.arrived_before_sent, 2);
        // Counted as the histograms' floor, never negative.
        assert_eq!(l.transit_us.p50, 1);
    }
}
