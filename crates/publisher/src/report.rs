//! The publisher's report: the shared [`PublishReport`] fields (totals over every
//! device) plus what only the simulator knows: its devices, their streams, pacing.

use std::fmt;

use mqtt_protocol::report::PublishReport;
use serde::Serialize;

/// What a run did, over all devices. Serialises as one flat JSON object: the
/// `PublishReport` keys, then `devices`, `rate_per_device`, `duration_s`, `streams`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Totals over all devices. With several devices, `client_id` is the prefix of
    /// theirs, `device_id` and `topic` the bases of theirs, `stream_id` the first
    /// device's stream and `count` the readings asked of all devices together. In
    /// --duration mode `count` is 0 (nothing was asked up front) and `complete` means
    /// every published reading was acknowledged.
    #[serde(flatten)]
    pub summary: PublishReport,
    /// Devices simulated, each with its own connection and stream.
    pub devices: u32,
    /// --rate: readings per second per device, or null when not paced.
    pub rate_per_device: Option<f64>,
    /// --duration in seconds, or null when publishing a count.
    pub duration_s: Option<f64>,
    /// One entry per device, in device order.
    pub streams: Vec<DeviceStream>,
}

/// One device's stream, as the subscriber's report will name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStream {
    /// 16 hex digits.
    pub id: String,
    pub client_id: String,
    pub device_id: String,
    pub topic: String,
    pub published: u64,
    pub acked: u64,
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.devices == 1 && self.duration_s.is_none() {
            return self.summary.fmt(f);
        }
        let s = &self.summary;
        writeln!(f, "Total messages published: {}", s.published)?;
        let asked = match self.duration_s {
            Some(secs) => format!("for {secs} s"),
            None => format!("of {}", s.count),
        };
        write!(
            f,
            "Summary: {} published {asked} by {} device(s), {} acknowledged (QoS {}), {:.2} s, {:.0} msg/s",
            s.published, self.devices, s.acked, s.qos, s.elapsed_s, s.msgs_per_s
        )?;
        if s.interrupted {
            write!(f, " (interrupted)")?;
        }
        for d in self.streams.iter().take(5) {
            write!(
                f,
                "\nStream {} ({}): {} published, {} acknowledged",
                d.id, d.device_id, d.published, d.acked
            )?;
        }
        if self.streams.len() > 5 {
            write!(f, "\n... and {} more streams", self.streams.len() - 5)?;
        }
        Ok(())
    }
}
