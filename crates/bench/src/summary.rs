//! Medians over a row's runs, the table people read, and the ratios between rows.

use std::fmt::Write as _;

use serde::Serialize;

use mqtt_protocol::timing::{Latencies, LatencySummary};

use crate::runner::Measurement;
use crate::scenario::{BrokerKind, Scenario, LATENCY_RATES};

/// A row with every run and the medians the table shows.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub scenario: Scenario,
    /// Set when the row could not run here (a missing peer).
    pub skipped: Option<String>,
    /// Runs that failed outright (no verdict), with why.
    pub errors: Vec<String>,
    pub runs: Vec<Measurement>,
    pub median: Option<Measurement>,
    /// Every run verified complete.
    pub all_complete: bool,
}

impl Row {
    /// A row not run yet.
    pub fn new(scenario: Scenario) -> Row {
        Row {
            scenario,
            skipped: None,
            errors: Vec::new(),
            runs: Vec::new(),
            median: None,
            all_complete: false,
        }
    }

    /// The tables' "verified" cell: why the row did not run (the first line), or how many
    /// of its runs verified complete.
    pub fn verified_cell(&self) -> String {
        let cell = match (&self.skipped, &self.median, self.errors.first()) {
            (Some(why), _, _) => format!("skipped: {why}"),
            (None, None, Some(error)) => format!("FAILED: {error}"),
            (None, None, None) => String::new(),
            (None, Some(_), _) if self.all_complete && self.errors.is_empty() => {
                format!("yes ({}/{})", self.runs.len(), self.runs.len())
            }
            (None, Some(_), _) => format!(
                "NO ({} of {} complete)",
                self.runs.iter().filter(|r| r.complete).count(),
                self.runs.len() + self.errors.len()
            ),
        };
        cell.lines().next().unwrap_or("").to_owned()
    }

    /// `group: name`, for progress lines.
    pub fn label(&self) -> String {
        format!("{}: {}", self.scenario.group, self.scenario.name)
    }

    /// Computes the medians of a row that ran; true unless it ran and a run failed or
    /// was not verified complete (a skipped row is judged by the caller).
    pub fn summarise(&mut self) -> bool {
        if self.skipped.is_some() {
            return true;
        }
        self.median = medians(&self.runs);
        self.all_complete = !self.runs.is_empty() && self.runs.iter().all(|r| r.complete);
        self.all_complete && self.errors.is_empty()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The per-metric median of `runs` (each metric on its own).
pub fn medians(runs: &[Measurement]) -> Option<Measurement> {
    if runs.is_empty() {
        return None;
    }
    let m = |f: fn(&Measurement) -> f64| median(runs.iter().map(f).collect());
    let opt = |f: fn(&Measurement) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Some(Measurement {
        wall_s: m(|r| r.wall_s),
        msgs_per_s: m(|r| r.msgs_per_s),
        complete: runs.iter().all(|r| r.complete),
        publisher_cpu_s: m(|r| r.publisher_cpu_s),
        subscriber_cpu_s: m(|r| r.subscriber_cpu_s),
        broker_cpu_s: m(|r| r.broker_cpu_s),
        publisher_rss_kib: m(|r| r.publisher_rss_kib as f64) as u64,
        subscriber_rss_kib: m(|r| r.subscriber_rss_kib as f64) as u64,
        broker_rss_kib: m(|r| r.broker_rss_kib as f64) as u64,
        publisher_msgs_per_s: opt(|r| r.publisher_msgs_per_s),
        subscriber_msgs_per_s: opt(|r| r.subscriber_msgs_per_s),
        latency: median_latencies(runs),
    })
}

/// Each percentile of each histogram the median over the runs that have it; the
/// distribution is the one of the run with the median p50 latency.
fn median_latencies(runs: &[Measurement]) -> Option<Latencies> {
    let all: Vec<&Latencies> = runs.iter().filter_map(|r| r.latency.as_ref()).collect();
    if all.is_empty() {
        return None;
    }
    let summary = |which: fn(&Latencies) -> &LatencySummary| {
        let of = |f: fn(&LatencySummary) -> u64| {
            median(all.iter().map(|l| f(which(l)) as f64).collect()) as u64
        };
        LatencySummary {
            p50: of(|s| s.p50),
            p90: of(|s| s.p90),
            p99: of(|s| s.p99),
            p999: of(|s| s.p999),
            max: of(|s| s.max),
            samples: of(|s| s.samples),
        }
    };
    let mut by_p50 = all.clone();
    by_p50.sort_by_key(|l| l.latency_us.p50);
    Some(Latencies {
        latency_us: summary(|l| &l.latency_us),
        transit_us: summary(|l| &l.transit_us),
        publisher_lateness_us: summary(|l| &l.publisher_lateness_us),
        latency_percentiles_us: by_p50[by_p50.len() / 2].latency_percentiles_us.clone(),
        arrived_before_sent: all.iter().map(|l| l.arrived_before_sent).max().unwrap_or(0),
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The table, as fixed-width text (also valid Markdown).
pub fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| row | N | msg/s | wall s | pub msg/s | sub msg/s | CPU s pub/sub/broker | peak RSS MiB pub/sub/broker | p50/p99 ms | verified |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let s = &row.scenario;
        let name = format!("{}: {}", s.group, s.name);
        let verified = row.verified_cell();
        let Some(m) = &row.median else {
            let _ = writeln!(
                t,
                "| {name} | {} | - | - | - | - | - | - | - | {verified} |",
                s.messages
            );
            continue;
        };
        let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.0}"));
        let latency = m.latency.as_ref().map_or("-".into(), |l| {
            let l = &l.latency_us;
            format!("{:.2}/{:.2}", l.p50 as f64 / 1000.0, l.p99 as f64 / 1000.0)
        });
        let _ = writeln!(
            t,
            "| {name} | {} | {:.0} | {:.2} | {} | {} | {:.2}/{:.2}/{:.2} | {:.1}/{:.1}/{:.1} | {latency} | {verified} |",
            s.messages,
            m.msgs_per_s,
            m.wall_s,
            rate(m.publisher_msgs_per_s),
            rate(m.subscriber_msgs_per_s),
            m.publisher_cpu_s,
            m.subscriber_cpu_s,
            m.broker_cpu_s,
            mib(m.publisher_rss_kib),
            mib(m.subscriber_rss_kib),
            mib(m.broker_rss_kib),
        );
    }
    t
}

/// The latency rows as a table of their own: each rate through each broker, the
/// percentiles from the intended send time, the transit from the actual one, and how late
/// the publisher itself was (medians over the runs).
pub fn latency_table(rows: &[Row]) -> Option<String> {
    let paced: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.paced_rate.is_some())
        .collect();
    if paced.is_empty() {
        return None;
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| paced row (QoS 1, 61 B readings) | N | latency p50/p99/p99.9 µs | transit p50/p99/p99.9 µs | publisher lateness p50/p99 µs | verified |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---|");
    for row in paced {
        let three = |s: &LatencySummary| format!("{}/{}/{}", s.p50, s.p99, s.p999);
        let (latency, transit, late) = match row.median.as_ref().and_then(|m| m.latency.as_ref()) {
            Some(l) => (
                three(&l.latency_us),
                three(&l.transit_us),
                format!(
                    "{}/{}",
                    l.publisher_lateness_us.p50, l.publisher_lateness_us.p99
                ),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {latency} | {transit} | {late} | {} |",
            row.scenario.name,
            row.scenario.messages,
            row.verified_cell()
        );
    }
    Some(t)
}

/// A ratio between two rows' median throughput.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub what: String,
    pub ratio: f64,
}

/// The ratios the issue asks about: ours against Mosquitto and against the seed demo,
/// CPU per message, and how throughput holds up as N grows.
pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let rate = |prefix: &str| {
        rows.iter()
            .find(|r| r.scenario.name.starts_with(prefix))
            .and_then(|r| r.median.as_ref())
            .map(|m| m.msgs_per_s)
    };
    let mut out = Vec::new();
    let ours = rate("ours: our broker");
    for (other, label) in [
        (
            "Mosquitto + our clients",
            "ours / Mosquitto with our clients (msg/s)",
        ),
        (
            "seed demo",
            "ours / seed demo (Python paho + Mosquitto) (msg/s)",
        ),
        (
            "ours, publisher before",
            "ours / ours with the publisher before tuning (msg/s)",
        ),
    ] {
        if let (Some(a), Some(b)) = (ours, rate(other)) {
            out.push(Ratio {
                what: label.into(),
                ratio: a / b,
            });
        }
    }
    for (a, b, label) in [
        (
            "ours, 61 B readings",
            "rumqttd's own broker + plain",
            "ours (verified, 61 B) / rumqttd's own broker + plain rumqttc clients (msg/s)",
        ),
        (
            "our broker + plain",
            "rumqttd's own broker + plain",
            "our broker / rumqttd's own broker, both with plain rumqttc clients (msg/s)",
        ),
        (
            "ours, 61 B readings",
            "rumqttd's own broker + our clients",
            "our broker / rumqttd's own broker, both with our clients (msg/s)",
        ),
        (
            "ours over WebSockets",
            "ours, 61 B readings",
            "ours over WebSockets / ours over TCP (msg/s)",
        ),
    ] {
        if let (Some(a), Some(b)) = (rate(a), rate(b)) {
            out.push(Ratio {
                what: label.into(),
                ratio: a / b,
            });
        }
    }
    let p50 = |rate: u64, broker: BrokerKind| {
        rows.iter()
            .find(|r| r.scenario.paced_rate == Some(rate) && r.scenario.broker == broker)
            .and_then(|r| r.median.as_ref()?.latency.as_ref())
            .map(|l| l.latency_us.p50 as f64)
    };
    for rate in LATENCY_RATES {
        let mosquitto = p50(rate, BrokerKind::Mosquitto);
        for (label, broker) in [
            ("ours", BrokerKind::Ours),
            ("rumqttd's own broker", BrokerKind::Rumqttd),
        ] {
            if let (Some(a), Some(b)) = (p50(rate, broker), mosquitto) {
                out.push(Ratio {
                    what: format!(
                        "latency p50 at {rate} msg/s: {label} / Mosquitto (lower is better)"
                    ),
                    ratio: a / b.max(1.0),
                });
            }
        }
    }
    let linear: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.group == "linearity" && r.median.is_some())
        .collect();
    if let (Some(first), Some(last)) = (linear.first(), linear.last()) {
        if linear.len() > 1 {
            let (a, b) = (first.median.as_ref(), last.median.as_ref());
            if let (Some(a), Some(b)) = (a, b) {
                out.push(Ratio {
                    what: format!(
                        "throughput at {} / at {} messages",
                        last.scenario.messages, first.scenario.messages
                    ),
                    ratio: b.msgs_per_s / a.msgs_per_s,
                });
            }
        }
    }
    out
}

/// CPU seconds per million messages over all three processes, for a row's median.
pub fn cpu_per_million(row: &Row) -> Option<f64> {
    let m = row.median.as_ref()?;
    let total = m.publisher_cpu_s + m.subscriber_cpu_s + m.broker_cpu_s;
    Some(total / row.scenario.messages as f64 * 1e6)
}
