//! The subscriber's command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mqtt_client::flags::ClientArgs;
use mqtt_protocol::{exit, topic};

use crate::state::{Policy, Stage};

/// Data consumer and verifier: subscribes to sensor readings, counts them, and proves
/// that every expected reading arrived intact (no gaps, no corruption).
///
/// Prints `Messages received: N` every --progress-every messages and a verdict at the
/// end on stderr; --report-json writes the same figures as JSON. Start it before the
/// publisher: it waits for the first reading as long as it takes.
///
/// Naming the client (--client-id) or keeping state (--state) makes the session
/// persistent, so the broker keeps what arrives while the subscriber is away; a lost
/// connection is retried for --reconnect-for seconds.
///
/// To split one stream between K subscribers, start each with `--share GROUP
/// --report-sets --report-json member-i.json`, then `mqtt-subscriber merge
/// member-*.json` for the verdict over all of them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mqtt-subscriber",
    version,
    after_help = exit::HELP,
    args_conflicts_with_subcommands = true,
    mut_arg("count", |a| a.help("Distinct readings expected over all streams; stop once they arrived")),
    mut_arg("progress_every", |a| a.help("Print `Messages received: N` every K messages (0: never)"))
)]
pub struct SubscriberArgs {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub client: ClientArgs,

    /// Topic filter to subscribe to (`+` and `#` wildcards allowed).
    #[arg(long, value_name = "FILTER", default_value = "sensors/#", value_parser = topic::parse_topic_filter)]
    pub topic: String,

    /// Stop when nothing arrived for this many seconds, counted from the first
    /// message (before it, wait as long as it takes).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_seconds)]
    pub idle_timeout: f64,

    /// Keep what arrived in PATH (a journal, checkpointed to PATH.checkpoint so that it
    /// stays about as small as the verifier's bitmaps) and acknowledge readings only once
    /// they are on record; a subscriber killed and started again with the same PATH
    /// resumes with an exact verdict. Implies a persistent session (the client id is kept
    /// in the file).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// With --state: also fsync the journal before acknowledging (survives power loss,
    /// not just a crash; slower).
    #[arg(long, requires = "state")]
    pub fsync: bool,

    /// Simulate processing: spend at least this many microseconds on each message.
    #[arg(long, value_name = "MICROS", default_value_t = 0)]
    pub process_delay_us: u64,

    /// Join the shared subscription `$share/GROUP/<FILTER>`: the broker hands each
    /// reading to one member of GROUP, so K subscribers split the stream. A member
    /// cannot judge completeness alone: it reports what it saw, stops after
    /// --idle-timeout (or once it alone has --count, the total over the group), and
    /// exits 0 unless something was corrupt, it was interrupted or failed; `merge` gives
    /// the verdict. Always a clean session, even with --client-id; not with --state.
    #[arg(long, value_name = "GROUP", value_parser = share_group)]
    pub share: Option<String>,

    /// Checkpoint the state once the journal holds this many bytes (and twice the last
    /// checkpoint's size); for tests.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, hide = true)]
    pub checkpoint_bytes: u64,

    /// Pause (60 s) at this point of every checkpoint, saying so on stderr, so that a
    /// test can kill the subscriber there.
    #[arg(long, value_name = "STAGE", value_enum, hide = true)]
    pub checkpoint_pause: Option<Stage>,

    /// Put each stream's set of received sequence numbers into the JSON report (base64
    /// of a roaring bitmap), so that `merge` can combine this report with others.
    #[arg(long, requires = "report_json")]
    pub report_sets: bool,
}

/// Subcommands; without one, the subscriber subscribes and verifies.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Merge the reports of --share members into one verdict.
    ///
    /// Combines the reports of subscribers that split one stream (`--share`, each run
    /// with --report-sets) into one verdict: what their union received, which readings
    /// more than one member got (duplicates), and what none of them got (missing).
    ///
    /// Exits like a subscriber: 0 complete, 3 missing, 4 corrupt; 1 if a report cannot
    /// be read or used, 2 for a bad command line.
    Merge(MergeArgs),
}

/// `mqtt-subscriber merge`.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// The members' JSON reports (written with --report-json and --report-sets).
    #[arg(value_name = "REPORT.json", required = true)]
    pub reports: Vec<PathBuf>,

    /// Readings expected over all members together (default: the members' own
    /// --count, which must then agree).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Write the merged report as JSON to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,
}

impl SubscriberArgs {
    /// Checks what clap cannot check flag by flag.
    pub fn validate(&self) -> Result<(), String> {
        self.client.validate()?;
        if self.share.is_some() && self.state.is_some() {
            return Err(
                "--share cannot be used with --state: a journal needs a persistent \
                        session, and a shared subscription needs a clean one (rumqttd loses \
                        its routing when a persistent member of a group leaves)"
                    .into(),
            );
        }
        Ok(())
    }

    /// When to checkpoint the --state (see `state`).
    pub fn policy(&self) -> Policy {
        Policy {
            min_journal_bytes: self.checkpoint_bytes,
            pause: self.checkpoint_pause,
        }
    }

    /// The filter to subscribe with: `--topic`, or `$share/GROUP/<topic>` with `--share`.
    pub fn subscription(&self) -> String {
        match &self.share {
            Some(group) => format!("$share/{group}/{}", self.topic),
            None => self.topic.clone(),
        }
    }
}

/// A share group name: one non-empty topic level without wildcards.
fn share_group(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['/', '+', '#', '\0']) {
        Err("must be one topic level: not empty, without '/', '+' or '#'".into())
    } else {
        Ok(s.to_owned())
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<SubscriberArgs, clap::Error> {
        SubscriberArgs::try_parse_from(
            std::iter::once("mqtt-subscriber").chain(args.iter().copied()),
        )
    }

    #[test]
    fn the_flat_flags_still_run_the_subscriber() {
        let args = parse(&["--count", "5", "--topic", "a/#"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(
            (args.client.count, args.subscription().as_str()),
            (5, "a/#")
        );
        assert!(args.validate().is_ok());
    }

    #[test]
    fn a_share_member_subscribes_through_its_group() {
        let args = parse(&["--share", "fleet", "--report-sets", "--report-json", "-"]).unwrap();
        assert_eq!(args.subscription(), "$share/fleet/sensors/#");
        for bad in ["", "a/b", "a+", "#"] {
            assert!(parse(&["--share", bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn share_with_state_is_refused_with_the_reason() {
        let args = parse(&["--share", "g", "--state", "s.journal"]).unwrap();
        let message = args.validate().unwrap_err();
        assert!(
            message.contains("--share cannot be used with --state"),
            "{message}"
        );
    }

    #[test]
    fn report_sets_needs_a_report() {
        let err = parse(&["--report-sets"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn merge_is_a_subcommand_of_its_own() {
        let args = parse(&["merge", "a.json", "b.json", "--count", "10"]).unwrap();
        let Some(Command::Merge(merge)) = args.command else {
            panic!("no merge subcommand");
        };
        assert_eq!(merge.reports.len(), 2);
        assert_eq!(merge.count, Some(10));
        assert_eq!(
            parse(&["merge"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        // Subscriber flags do not mix with the subcommand.
        assert!(parse(&["--count", "5", "merge", "a.json"]).is_err());
    }
}
