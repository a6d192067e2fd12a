//! The publisher's command line.

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::Parser;
use mqtt_client::connect::MAX_PACKET_SIZE;
use mqtt_client::flags::ClientArgs;
use mqtt_protocol::reading::{PayloadFormat, MAX_DEVICE_ID_LEN};
use mqtt_protocol::{exit, topic};

/// IoT sensor simulator: publishes numbered sensor readings to an MQTT broker and counts
/// the broker's acknowledgements.
///
/// Prints `Messages published: N` every --progress-every messages and a summary at the
/// end on stderr; --report-json writes the same figures as JSON.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mqtt-publisher",
    version,
    after_help = exit::HELP,
    mut_arg("count", |a| a.help("Readings to publish, per device (sequence numbers 1..=N)")),
    mut_arg("progress_every", |a| a.help("Print `Messages published: N` every K messages (0: never)"))
)]
pub struct PublisherArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Topic to publish to (no wildcards).
    #[arg(long, default_value = "sensors/data", value_parser = topic::parse_topic_name)]
    pub topic: String,

    /// Payload encoding: compact binary or JSON.
    #[arg(
        long,
        default_value = "binary",
        value_parser = PossibleValuesParser::new(["binary", "json"]).try_map(|s| s.parse::<PayloadFormat>())
    )]
    pub payload: PayloadFormat,

    /// Pad each reading to at least BYTES bytes (binary size; JSON comes out larger).
    #[arg(long, value_name = "BYTES", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=(MAX_PACKET_SIZE as i64 / 2)))]
    pub payload_size: u32,

    /// Device id carried in every reading.
    #[arg(long, default_value = "sensor-1", value_parser = device_id)]
    pub device_id: String,

    /// Publishes that may await their acknowledgement at once (the in-flight window).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,

    /// Give up when the broker acknowledges nothing for this many seconds. A broker may hold
    /// a publisher back while a subscriber catches up (ours: up to its [flow] offline_hold_s,
    /// 30 s by default, for a subscriber that went away), so this is well above that.
    #[arg(long, value_name = "SECS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_timeout: u64,

    /// Pace each device at MSGS_PER_S readings per second instead of as fast as the
    /// window allows, each reading leaving within microseconds of its time (a timerfd on
    /// Linux). Every reading carries its *intended* send time on that schedule and how late
    /// it actually left, so a publisher that falls behind shows up at the subscriber, as
    /// latency and as publisher lateness.
    #[arg(long, value_name = "MSGS_PER_S", value_parser = positive_number)]
    pub rate: Option<f64>,

    /// Publish for SECS seconds instead of --count readings per device. The total is not
    /// known up front, so readings announce total 0 and the report says how many went out.
    #[arg(long, value_name = "SECS", conflicts_with = "count", value_parser = positive_number)]
    pub duration: Option<f64>,

    /// Simulate N devices, each with its own connection (client id `<id>-<i>`), stream,
    /// device id `<device-id>-<i>` and topic `<topic>/<device-id>-<i>`, for i in 1..=N.
    /// --count and --rate apply to each device.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub devices: u32,
}

impl PublisherArgs {
    /// Checks what clap cannot check flag by flag: the names the devices will get.
    pub fn validate(&self) -> Result<(), String> {
        self.client.validate()?;
        if self.devices > 1 {
            let longest = crate::device::Identity::new(self, self.devices, "x");
            if longest.device_id.len() > MAX_DEVICE_ID_LEN {
                return Err(format!(
                    "--device-id {:?} with --devices {} makes device ids longer than {MAX_DEVICE_ID_LEN} bytes",
                    self.device_id, self.devices
                ));
            }
            topic::parse_topic_name(&longest.topic).map_err(|e| {
                format!(
                    "--device-id {:?} cannot be a topic level: {e}",
                    self.device_id
                )
            })?;
        }
        Ok(())
    }

    /// Readings each device is asked for; `None` when publishing for a --duration.
    pub fn count_per_device(&self) -> Option<u64> {
        self.duration.is_none().then_some(self.client.count)
    }
}

fn positive_number(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn device_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_DEVICE_ID_LEN {
        Err(format!("must be 1 to {MAX_DEVICE_ID_LEN} bytes"))
    } else {
        Ok(s.to_owned())
    }
}
