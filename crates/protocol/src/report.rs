//! The reports the clients end with: one JSON document for machines (`--report-json`)
//! and a short summary on stderr for humans. Both come from the same structs.

use std::fmt;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::timing::LatencySummary;
use crate::verify::Verdict;

/// Version of the JSON documents below; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// What the publisher did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishReport {
    pub schema_version: u32,
    /// Always `"publisher"`.
    pub kind: String,
    pub client_id: String,
    /// Stream id of this run, 16 hex digits; the subscriber's report names it.
    pub stream_id: String,
    pub device_id: String,
    pub topic: String,
    pub qos: u8,
    pub payload: String,
    /// Size of each reading's payload in bytes.
    pub payload_bytes: usize,
    /// Readings the run was asked to publish.
    pub count: u64,
    /// Readings written to the broker connection.
    pub published: u64,
    /// Readings the broker acknowledged (PUBACK at QoS 1, PUBCOMP at QoS 2; at QoS 0,
    /// nothing is acknowledged and this stays 0).
    pub acked: u64,
    /// Unacknowledged readings sent again after a reconnect (not counted in `published`).
    pub republished: u64,
    /// Times a lost connection was re-established during the run.
    pub reconnects: u64,
    pub elapsed_s: f64,
    /// `published / elapsed_s`.
    pub msgs_per_s: f64,
    /// Every reading published and, at QoS 1 and 2, acknowledged.
    pub complete: bool,
    /// Stopped early by SIGINT or SIGTERM.
    pub interrupted: bool,
    /// Peak resident memory of the publisher process, KiB.
    pub peak_rss_kib: Option<u64>,
}

/// What the subscriber saw, with the verifier's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub schema_version: u32,
    /// Always `"subscriber"`.
    pub kind: String,
    pub client_id: String,
    pub topic: String,
    pub qos: u8,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Latency from each reading's send time to its arrival, µs.
    pub latency_us: LatencySummary,
    /// Readings that arrived in each second of the run, from the first arrival.
    pub per_second: Vec<u64>,
    /// From the first arrival to the last.
    pub elapsed_s: f64,
    /// `received / elapsed_s`.
    pub msgs_per_s: f64,
    /// Stopped early by SIGINT or SIGTERM.
    pub interrupted: bool,
    /// Stopped because nothing arrived for the idle timeout.
    pub idle_timeout: bool,
    /// An example of why a payload failed, if any did.
    pub last_decode_error: Option<String>,
    /// Times the connection was lost and re-established during the run.
    pub reconnects: u64,
    /// Arrivals replayed from the `--state` journal of an earlier, interrupted run.
    pub resumed: u64,
    /// Peak resident memory of the subscriber process, KiB.
    pub peak_rss_kib: Option<u64>,
}

/// Messages per second, 0 for an empty interval.
pub fn rate(count: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        count as f64 / elapsed_s
    } else {
        0.0
    }
}

/// Writes `report` as pretty JSON to `path`, or to stdout when `path` is `-`.
pub fn write_json<T: Serialize>(report: &T, path: &Path) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    json.push(b'\n');
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(&json)?;
        out.flush()
    } else {
        std::fs::write(path, json)
    }
}

impl fmt::Display for PublishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Total messages published: {}", self.published)?;
        write!(
            f,
            "Summary: {} of {} published, {} acknowledged (QoS {}), {:.2} s, {:.0} msg/s, stream {}",
            self.published,
            self.count,
            self.acked,
            self.qos,
            self.elapsed_s,
            self.msgs_per_s,
            self.stream_id
        )?;
        if self.reconnects > 0 {
            write!(
                f,
                "; {} reconnects, {} unacknowledged readings sent again",
                self.reconnects, self.republished
            )?;
        }
        if self.interrupted {
            write!(f, " (interrupted)")?;
        }
        Ok(())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.verdict;
        writeln!(f, "Total messages received: {}", v.received)?;
        if self.resumed > 0 || self.reconnects > 0 {
            writeln!(
                f,
                "Resumed {} arrivals from the state file; {} reconnects during this run",
                self.resumed, self.reconnects
            )?;
        }
        writeln!(
            f,
            "Summary: {} received, {} distinct of {} expected, {} duplicates, {} missing, \
             {} corrupt, {} foreign, {} out of order, {:.2} s, {:.0} msg/s",
            v.received,
            v.distinct,
            v.expected,
            v.duplicates,
            v.missing,
            v.corrupt,
            v.foreign,
            v.out_of_order,
            self.elapsed_s,
            self.msgs_per_s
        )?;
        let l = &self.latency_us;
        if l.samples > 0 {
            writeln!(
                f,
                "Latency: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                l.p50, l.p90, l.p99, l.p999, l.max
            )?;
        }
        for s in v.streams.iter().take(5) {
            let total = match s.total {
                0 => " (total not announced)".to_string(),
                n => format!(" of {n}"),
            };
            writeln!(
                f,
                "Stream {} ({}): {} distinct{total}, {} missing, {} duplicates",
                s.id, s.device_id, s.distinct, s.missing, s.duplicates
            )?;
        }
        if v.streams.len() > 5 {
            writeln!(f, "... and {} more streams", v.streams.len() - 5)?;
        }
        if !v.missing_ranges.is_empty() {
            let ranges: Vec<String> = v
                .missing_ranges
                .iter()
                .map(|[a, b]| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            writeln!(f, "First missing: {}", ranges.join(", "))?;
        }
        if let Some(e) = &self.last_decode_error {
            writeln!(f, "Example of a bad payload: {e}")?;
        }
        let verdict = if v.complete {
            "COMPLETE: every expected reading arrived intact".to_string()
        } else if v.corrupt > 0 {
            format!("CORRUPT: {} corrupt readings arrived", v.corrupt)
        } else {
            format!("INCOMPLETE: {} readings missing", v.missing)
        };
        write!(f, "Verdict: {verdict}")?;
        if self.interrupted {
            write!(f, " (interrupted)")?;
        } else if self.idle_timeout {
            write!(f, " (stopped after the idle timeout)")?;
        }
        Ok(())
    }
}

/// The end of a client run, shared by both binaries: prints the summary of whatever was
/// done (also after a failure), writes the JSON report if asked, prints the error if
/// any, and returns the exit code: 1 for an error or an unwritable report, else
/// `verdict(report)`.
pub fn conclude<R: Serialize + fmt::Display>(
    report: Option<&R>,
    error: Option<&dyn fmt::Display>,
    json_path: Option<&Path>,
    verdict: impl Fn(&R) -> u8,
) -> std::process::ExitCode {
    if let Some(report) = report {
        eprintln!("{report}");
        if let Some(path) = json_path {
            if let Err(e) = write_json(report, path) {
                eprintln!("error: cannot write the report to {}: {e}", path.display());
                return crate::exit::code(crate::exit::RUNTIME_ERROR);
            }
        }
    }
    crate::exit::code(match (report, error) {
        (_, Some(error)) => {
            eprintln!("error: {error}");
            crate::exit::RUNTIME_ERROR
        }
        (Some(report), None) => verdict(report),
        (None, None) => crate::exit::OK,
    })
}
