//! The reports the clients end with: one JSON document for machines (`--report-json`)
//! and a short summary on stderr for humans. Both come from the same structs.

use std::fmt;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::timing::{Latencies, LatencySummary};
use crate::verify::{StreamSummary, Verdict};

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
    /// Seconds the in-flight window was full (every reading it may have unacknowledged was
    /// out), summed over devices: time the broker held the publisher back.
    #[serde(default)]
    pub window_full_s: f64,
    /// Every reading published and, at QoS 1 and 2, acknowledged.
    pub complete: bool,
    /// Stopped early by SIGINT or SIGTERM.
    pub interrupted: bool,
    /// Peak resident memory of the publisher process, KiB.
    pub peak_rss_kib: Option<u64>,
}

/// What one of `mqtt-baseline`'s plain clients did: the reference the pipeline is measured
/// against (rumqttc clients that publish and count fixed-size messages, and verify nothing
/// else).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineReport {
    /// `"baseline-publisher"` or `"baseline-subscriber"`.
    pub kind: String,
    /// Messages asked for.
    pub count: u64,
    /// Messages acknowledged (publisher) or received (subscriber).
    pub done: u64,
    /// From the CONNACK (publisher) or the first message (subscriber) to the last.
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    pub complete: bool,
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
    /// Latency, transit and the publisher's lateness (`latency_us`, `transit_us`,
    /// `publisher_lateness_us`, ...; see [`Latencies`]).
    #[serde(flatten)]
    pub latency: Latencies,
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
    /// The shared-subscription group this subscriber was a member of (`--share`): it saw
    /// only its share of the stream, and `merge` gives the group's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,
}

/// The verdict over the reports of several subscribers (`mqtt-subscriber merge`),
/// computed from the union of what each received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeReport {
    pub schema_version: u32,
    /// Always `"merge"`.
    pub kind: String,
    pub topic: String,
    /// The members' shared-subscription group, if they were in one.
    pub share_group: Option<String>,
    /// One entry per merged report, in the order given.
    pub members: Vec<MemberSummary>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// An example of why a payload failed, from the first member that had one.
    pub last_decode_error: Option<String>,
}

/// What one member of a merge saw on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// The report file, as named on the command line.
    pub report: String,
    pub client_id: String,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub corrupt: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    pub reconnects: u64,
    pub interrupted: bool,
    pub idle_timeout: bool,
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
        if self.window_full_s >= 0.05 {
            write!(f, "; in-flight window full for {:.1} s", self.window_full_s)?;
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
        // A share member sees only its share: "missing" would read as loss, so its
        // summary leaves it to `merge`.
        let missing = match &self.share_group {
            Some(_) => "missing: see merge".to_owned(),
            None => format!("{} missing", v.missing),
        };
        writeln!(
            f,
            "Summary: {} received, {} distinct of {} expected, {} duplicates, {missing}, \
             {} corrupt, {} foreign, {} out of order, {:.2} s, {:.0} msg/s",
            v.received,
            v.distinct,
            v.expected,
            v.duplicates,
            v.corrupt,
            v.foreign,
            v.out_of_order,
            self.elapsed_s,
            self.msgs_per_s
        )?;
        write_latencies(f, &self.latency)?;
        match &self.share_group {
            // A member's streams are only its share: their gaps are the other members'.
            Some(_) => writeln!(
                f,
                "Streams: {} seen; their verdicts come from merging the members' reports",
                v.streams.len()
            )?,
            None => write_streams(f, v)?,
        }
        if let Some(e) = &self.last_decode_error {
            writeln!(f, "Example of a bad payload: {e}")?;
        }
        match &self.share_group {
            Some(group) if !v.complete && v.corrupt == 0 => write!(
                f,
                "Verdict: SHARE MEMBER of group {group}: {} distinct readings of the {} \
                 expected over the group; `mqtt-subscriber merge` on every member's \
                 report gives the group's verdict",
                v.distinct, v.expected
            )?,
            _ => write!(f, "Verdict: {}", verdict_line(v))?,
        }
        if self.interrupted {
            write!(f, " (interrupted)")?;
        } else if self.idle_timeout {
            write!(f, " (stopped after the idle timeout)")?;
        }
        Ok(())
    }
}

impl fmt::Display for MergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.verdict;
        let group = match &self.share_group {
            Some(g) => format!(" of share group {g}"),
            None => String::new(),
        };
        writeln!(
            f,
            "Merged {} reports{group} on {}:",
            self.members.len(),
            self.topic
        )?;
        for m in &self.members {
            let how = if m.interrupted {
                ", interrupted"
            } else if m.idle_timeout {
                ", stopped after the idle timeout"
            } else {
                ""
            };
            writeln!(
                f,
                "  {} ({}): {} received, {} distinct, {} duplicates, {} corrupt, {:.2} s{how}",
                m.report, m.client_id, m.received, m.distinct, m.duplicates, m.corrupt, m.elapsed_s
            )?;
        }
        writeln!(
            f,
            "Summary: {} received, {} distinct of {} expected, {} duplicates, {} missing, \
             {} corrupt, {} foreign",
            v.received, v.distinct, v.expected, v.duplicates, v.missing, v.corrupt, v.foreign
        )?;
        write_streams(f, v)?;
        if let Some(e) = &self.last_decode_error {
            writeln!(f, "Example of a bad payload: {e}")?;
        }
        write!(f, "Verdict: {}", verdict_line(v))
    }
}

/// The latency lines of a summary: each histogram that has samples, and a warning when
/// the clocks disagree.
fn write_latencies(f: &mut fmt::Formatter<'_>, l: &Latencies) -> fmt::Result {
    let line = |f: &mut fmt::Formatter<'_>, name: &str, s: &LatencySummary, note: &str| {
        if s.samples == 0 {
            return Ok(());
        }
        writeln!(
            f,
            "{name}: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs{note}",
            s.p50, s.p90, s.p99, s.p999, s.max
        )
    };
    line(f, "Latency", &l.latency_us, "")?;
    // Transit and lateness differ from the latency only when readings left late: a flat-out
    // run stamps each reading as it sends it (1 µs is the histograms' floor).
    if l.publisher_lateness_us.max > 1 {
        line(
            f,
            "Transit",
            &l.transit_us,
            " (from when each reading actually left)",
        )?;
        line(
            f,
            "Publisher lateness",
            &l.publisher_lateness_us,
            " (after each reading's intended send time)",
        )?;
    }
    if l.arrived_before_sent > 0 {
        writeln!(
            f,
            "Warning: {} readings arrived before they left by the clocks: the publisher's \
             and this machine's clocks disagree, and so do the figures above",
            l.arrived_before_sent
        )?;
    }
    Ok(())
}

/// How many streams a summary names; the JSON report has them all.
const STREAMS_LISTED: usize = 5;

/// The per-stream part of a summary. A few streams are listed one by one; many are
/// counted, and only the worst of those with readings missing are named.
fn write_streams(f: &mut fmt::Formatter<'_>, v: &Verdict) -> fmt::Result {
    let streams = &v.streams;
    let in_streams: u64 = streams.iter().map(|s| s.missing).sum();
    if v.missing > in_streams {
        writeln!(
            f,
            "{} expected readings are in no stream that arrived (--count counts them; \
             did a device never publish?)",
            v.missing - in_streams
        )?;
    }
    if streams.len() <= STREAMS_LISTED {
        for s in streams {
            write_stream(f, s, streams.len() > 1)?;
        }
        if streams.len() == 1 && !v.missing_ranges.is_empty() {
            writeln!(f, "First missing: {}", ranges_text(&v.missing_ranges))?;
        }
        return Ok(());
    }
    let incomplete = streams.iter().filter(|s| !s.is_complete()).count();
    let with_duplicates = streams.iter().filter(|s| s.duplicates > 0).count();
    let state = match incomplete {
        0 => "all complete".to_string(),
        n => format!("{n} with readings missing (worst first below)"),
    };
    writeln!(
        f,
        "Streams: {}, {state}, {with_duplicates} with duplicates",
        streams.len()
    )?;
    // Streams come worst first, so the incomplete ones lead.
    for s in streams
        .iter()
        .take_while(|s| !s.is_complete())
        .take(STREAMS_LISTED)
    {
        write_stream(f, s, true)?;
    }
    if incomplete > STREAMS_LISTED {
        writeln!(
            f,
            "... and {} more streams with readings missing",
            incomplete - STREAMS_LISTED
        )?;
    }
    Ok(())
}

/// One stream's line; `with_ranges` names its first gaps (with several streams, the
/// overall "First missing" list could not say whose they are).
fn write_stream(f: &mut fmt::Formatter<'_>, s: &StreamSummary, with_ranges: bool) -> fmt::Result {
    let total = match s.total {
        0 => " (total not announced)".to_string(),
        n => format!(" of {n}"),
    };
    write!(
        f,
        "Stream {} ({}): {} distinct{total}, {} missing, {} duplicates",
        s.id, s.device_id, s.distinct, s.missing, s.duplicates
    )?;
    if with_ranges && !s.missing_ranges.is_empty() {
        write!(f, " (first missing: {})", ranges_text(&s.missing_ranges))?;
    }
    writeln!(f)
}

fn ranges_text(ranges: &[[u64; 2]]) -> String {
    let ranges: Vec<String> = ranges
        .iter()
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    ranges.join(", ")
}

fn verdict_line(v: &Verdict) -> String {
    if v.complete {
        "COMPLETE: every expected reading arrived intact".to_string()
    } else if v.corrupt > 0 {
        format!("CORRUPT: {} corrupt readings arrived", v.corrupt)
    } else {
        format!("INCOMPLETE: {} readings missing", v.missing)
    }
}

/// An error that may carry the report of what was done before it failed.
pub trait Partial<R> {
    fn partial_report(&self) -> Option<&R>;
}

/// [`conclude`] for the result of a client run: its report, or its error with whatever
/// report the error carries.
pub fn conclude_run<R, E>(
    result: &Result<R, E>,
    json_path: Option<&Path>,
    verdict: impl Fn(&R) -> u8,
) -> std::process::ExitCode
where
    R: Serialize + fmt::Display,
    E: fmt::Display + Partial<R>,
{
    match result {
        Ok(report) => conclude(Some(report), None, json_path, verdict),
        Err(e) => conclude(e.partial_report(), Some(e), json_path, verdict),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::tests::binary;
    use crate::verify::Verifier;

    /// A report of `streams` streams of 10 readings, with `gaps` of them missing one.
    fn report(streams: u64, gaps: u64) -> VerifyReport {
        let mut v = Verifier::new(streams * 10);
        for stream in 1..=streams {
            for seq in (1..=10).filter(|s| stream > gaps || *s != 4) {
                v.record_payload(&binary(stream, seq, 10));
            }
        }
        VerifyReport {
            schema_version: SCHEMA_VERSION,
            kind: "subscriber".into(),
            client_id: "c".into(),
            topic: "sensors/#".into(),
            qos: 1,
            verdict: v.verdict(),
            latency: Latencies::default(),
            per_second: vec![],
            elapsed_s: 1.0,
            msgs_per_s: 1.0,
            interrupted: false,
            idle_timeout: false,
            last_decode_error: None,
            reconnects: 0,
            resumed: 0,
            peak_rss_kib: None,
            share_group: None,
        }
    }

    #[test]
    fn the_summary_shows_transit_and_lateness_only_when_readings_left_late() {
        let summary = |p50| LatencySummary {
            p50,
            p90: p50,
            p99: p50,
            p999: p50,
            max: p50,
            samples: 10,
        };
        let mut r = report(1, 0);
        r.latency = Latencies {
            latency_us: summary(900),
            transit_us: summary(900),
            publisher_lateness_us: summary(1),
            ..Latencies::default()
        };
        let flat_out = r.to_string();
        assert!(flat_out.contains("Latency: p50 900 µs"), "{flat_out}");
        assert!(!flat_out.contains("Transit") && !flat_out.contains("lateness"));
        r.latency.transit_us = summary(200);
        r.latency.publisher_lateness_us = summary(700);
        r.latency.arrived_before_sent = 3;
        let paced = r.to_string();
        assert!(paced.contains("Transit: p50 200 µs"), "{paced}");
        assert!(paced.contains("Publisher lateness: p50 700 µs"), "{paced}");
        assert!(
            paced.contains("Warning: 3 readings arrived before they left"),
            "{paced}"
        );
    }

    #[test]
    fn a_thousand_complete_streams_take_one_line() {
        let text = report(1000, 0).to_string();
        assert!(
            text.contains("Streams: 1000, all complete, 0 with duplicates"),
            "{text}"
        );
        assert!(text.lines().count() < 6, "{text}");
    }

    #[test]
    fn many_streams_name_only_the_worst() {
        let text = report(1000, 7).to_string();
        assert!(
            text.contains("Streams: 1000, 7 with readings missing"),
            "{text}"
        );
        let named: Vec<&str> = text.lines().filter(|l| l.starts_with("Stream ")).collect();
        assert_eq!(named.len(), 5, "{text}");
        assert!(
            named.iter().all(|l| l.ends_with("(first missing: 4)")),
            "{text}"
        );
        assert!(
            text.contains("... and 2 more streams with readings missing"),
            "{text}"
        );
        assert!(
            !text.contains("First missing:"),
            "ranges without their stream: {text}"
        );
    }

    #[test]
    fn a_few_streams_are_all_listed() {
        let text = report(1, 1).to_string();
        assert!(text.contains("First missing: 4"), "{text}");
        let text = report(3, 0).to_string();
        assert_eq!(text.lines().filter(|l| l.starts_with("Stream ")).count(), 3);
    }

    #[test]
    fn a_share_member_points_to_merge_and_sets_stay_out_of_plain_reports() {
        let mut member = report(1000, 1000);
        member.share_group = Some("fleet".into());
        let text = member.to_string();
        assert!(
            text.contains("Verdict: SHARE MEMBER of group fleet"),
            "{text}"
        );
        assert!(!text.contains("Stream "), "{text}");
        let json = serde_json::to_string(&report(2, 0)).unwrap();
        assert!(
            !json.contains("\"set\"") && !json.contains("share_group"),
            "{json}"
        );
    }
}
