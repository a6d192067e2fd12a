//! Pacing: when each reading is due, and the send time it carries.
//!
//! A paced device publishes reading `seq` at `start + offset + (seq - 1) / rate` and
//! stamps it with that *intended* time, not with the moment it actually went out. A
//! publisher that stalls (a slow broker, a full window, a descheduled process) therefore
//! cannot hide the delay: the readings it sends late arrive with the lateness counted in
//! their latency (no "coordinated omission"). Each reading also carries how late it
//! actually left, so the subscriber can tell the publisher's lateness from the transit.
//!
//! [`Pacer`] waits for each due time. tokio's own timer wheel ticks in milliseconds, so a
//! reading waiting on `sleep_until` left up to a millisecond late and a latency histogram
//! measured mostly the pacer. On Linux the pacer arms a timerfd instead (a kernel
//! high-resolution timer, without the timer slack `nanosleep` gets), which wakes the
//! runtime's `epoll_wait` within microseconds of the due time; a wait shorter than a
//! wake-up costs is finished by yielding to the runtime instead.

use std::time::{Duration, Instant};

/// The fixed-rate schedule of one device.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    start_unix_us: u64,
    nanos_per_reading: f64,
}

impl Schedule {
    /// `rate` readings per second from `start` (which is `start_unix_us` on the wall
    /// clock), shifted by `offset` so that several devices do not all fire at once.
    pub fn new(start: Instant, start_unix_us: u64, rate: f64, offset: Duration) -> Self {
        Schedule {
            start: start + offset,
            start_unix_us: start_unix_us + offset.as_micros() as u64,
            nanos_per_reading: 1e9 / rate,
        }
    }

    /// How long after the (offset) start reading `seq` (1-based) is due.
    pub fn offset(&self, seq: u64) -> Duration {
        Duration::from_nanos((seq.saturating_sub(1) as f64 * self.nanos_per_reading) as u64)
    }

    /// When reading `seq` is due.
    pub fn due(&self, seq: u64) -> Instant {
        self.start + self.offset(seq)
    }

    /// The intended send time of reading `seq`, µs since the Unix epoch: what it carries.
    pub fn intended_unix_us(&self, seq: u64) -> u64 {
        self.start_unix_us + self.offset(seq).as_micros() as u64
    }

    /// Readings due strictly before `end`: how many a device publishes in a --duration.
    pub fn due_before(&self, end: Instant) -> u64 {
        let window = end.saturating_duration_since(self.start).as_nanos() as f64;
        (window / self.nanos_per_reading).ceil() as u64
    }
}

/// Waits shorter than this are finished by yielding to the runtime rather than by arming
/// a timer: at high rates the next reading is due sooner than a timer round trip (a
/// syscall to arm it, the wake-up from `epoll_wait`) takes.
const YIELD_BELOW: Duration = Duration::from_micros(20);

/// Waits until due times, precise to tens of microseconds (see the module's doc).
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<tokio_timerfd::Delay>,
}

impl Pacer {
    /// A pacer with its own timer; when no timerfd can be had (out of file descriptors),
    /// it says so and falls back to tokio's millisecond timer.
    pub fn new() -> Pacer {
        #[cfg(target_os = "linux")]
        {
            let timer = tokio_timerfd::Delay::new(Instant::now())
                .map_err(|e| {
                    tracing::warn!(
                        "no high-resolution timer ({e}): pacing falls back to tokio's \
                         millisecond timer, so readings may leave up to 1 ms late"
                    )
                })
                .ok();
            Pacer { timer }
        }
        #[cfg(not(target_os = "linux"))]
        Pacer {}
    }

    /// Returns at `due` or shortly after; at once if it has passed.
    pub async fn until(&mut self, due: Instant) {
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if left < YIELD_BELOW {
                tokio::task::yield_now().await;
                continue;
            }
            self.sleep_until(due).await;
        }
    }

    #[cfg(target_os = "linux")]
    async fn sleep_until(&mut self, due: Instant) {
        if let Some(timer) = self.timer.as_mut() {
            timer.reset(due);
            if timer.await.is_ok() {
                return;
            }
            tracing::warn!("the high-resolution timer failed: pacing falls back to tokio's");
            self.timer = None;
        }
        tokio::time::sleep_until(due.into()).await;
    }

    #[cfg(not(target_os = "linux"))]
    async fn sleep_until(&mut self, due: Instant) {
        tokio::time::sleep_until(due.into()).await;
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

/// Stagger for device `index` (0-based) of `devices` at `rate` each: spreads the devices'
/// first readings evenly over one interval.
pub fn stagger(index: u32, devices: u32, rate: f64) -> Duration {
    Duration::from_secs_f64(f64::from(index) / f64::from(devices.max(1)) / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_due_one_interval_apart_from_the_start() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1_000_000, 1000.0, Duration::ZERO);
        assert_eq!(s.due(1), t0);
        assert_eq!(s.due(2) - t0, Duration::from_millis(1));
        assert_eq!(s.due(1001) - t0, Duration::from_secs(1));
        assert_eq!(s.intended_unix_us(1), 1_000_000);
        assert_eq!(s.intended_unix_us(11), 1_010_000);
    }

    #[test]
    fn intended_times_do_not_depend_on_when_a_reading_is_sent() {
        // The schedule is a pure function of seq: a late sender gets the same stamp.
        let s = Schedule::new(Instant::now(), 5_000_000, 10_000.0, Duration::ZERO);
        let early = s.intended_unix_us(500);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.intended_unix_us(500), early);
        assert_eq!(early, 5_000_000 + 499 * 100);
    }

    #[test]
    fn fractional_rates_and_offsets() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 0, 3.0, Duration::from_millis(10));
        assert_eq!(s.due(1) - t0, Duration::from_millis(10));
        // 1/3 s, truncated to whole nanoseconds, never rounded up.
        assert_eq!(s.offset(2), Duration::from_nanos(333_333_333));
        assert_eq!(s.intended_unix_us(4), 10_000 + 1_000_000);
    }

    #[test]
    fn a_duration_holds_rate_times_seconds_readings() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 0, 1000.0, Duration::ZERO);
        assert_eq!(s.due_before(t0 + Duration::from_secs(2)), 2000);
        assert_eq!(s.due_before(t0 + Duration::from_micros(1500)), 2);
        assert_eq!(s.due_before(t0), 0);
    }

    /// Lateness of a paced run of `n` readings at `rate`, sorted, in µs.
    async fn paced_lateness(rate: f64, n: u64) -> Vec<u64> {
        let schedule = Schedule::new(Instant::now(), 0, rate, Duration::from_millis(2));
        let mut pacer = Pacer::new();
        let mut late = Vec::new();
        for seq in 1..=n {
            let due = schedule.due(seq);
            pacer.until(due).await;
            let now = Instant::now();
            assert!(now >= due, "reading {seq} left before it was due");
            late.push((now - due).as_micros() as u64);
        }
        late.sort_unstable();
        late
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_pacer_never_leaves_early_and_is_well_under_tokios_millisecond() {
        // 2,000 readings at 10,000/s. tokio's timer left the median reading about
        // 500-1,000 µs late; the bound is generous, for a loaded machine (the figures
        // themselves come from `scripts/bench`).
        let late = paced_lateness(10_000.0, 2_000).await;
        let median = late[late.len() / 2];
        assert!(median < 400, "median lateness {median} µs");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_due_time_in_the_past_returns_at_once() {
        let mut pacer = Pacer::new();
        let before = Instant::now();
        pacer.until(before - Duration::from_millis(5)).await;
        pacer.until(before).await;
        assert!(before.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn devices_are_spread_over_one_interval() {
        assert_eq!(stagger(0, 4, 100.0), Duration::ZERO);
        assert_eq!(stagger(2, 4, 100.0), Duration::from_millis(5));
        assert!(stagger(3, 4, 100.0) < Duration::from_millis(10));
    }
}
