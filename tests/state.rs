//! The subscriber's `--state`: it stays about as small as the verifier's bitmaps however
//! many readings arrive, a SIGKILL at any point of a checkpoint still resumes to an
//! exact verdict, and a state file that cannot be written ends the run with exit 1 and
//! the report of what was verified.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{num, publish, read_json, Broker, Proc, Subscriber};

/// A broker, and a subscriber's state file in a scratch directory: what every story here
/// starts from.
struct Setup {
    broker: Broker,
    n: u64,
    count: String,
    state: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(n: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        Setup {
            // These stories stop or kill the subscriber while the publisher runs on: the
            // broker's logs must hold a whole run (the default of 4 x 256 KiB holds ~13,600
            // readings, then flow control holds the publisher, see tests/flow_control.rs).
            broker: Broker::start_with_config(
                "[router]\nmax_segment_size = 1048576\nmax_segment_count = 8\n",
            ),
            n,
            count: n.to_string(),
            state: dir.path().join("sub.state"),
            dir,
        }
    }

    /// A subscriber's flags: `--count N --state PATH`, then `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--count",
            &self.count,
            "--state",
            self.state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Publishes the N readings, every one acknowledged by the broker.
    fn publish_all(&self, timeout: Duration) {
        let extra = ["--count", &self.count, "--progress-every", "0"];
        let (status, published, stderr) = publish(self.broker.port, &extra, timeout);
        assert!(
            status.success() && num(&published, "acked") == self.n,
            "{published}\n{stderr}"
        );
    }
}

/// Bytes on disk of the state at `path`: the journal, the checkpoint and any temporary
/// file a checkpoint left.
fn state_bytes(path: &Path) -> u64 {
    let dir = path.parent().expect("state in a directory");
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name");
    std::fs::read_dir(dir)
        .expect("state directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(name))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// The verdict part of a subscriber report, for comparing two runs.
fn verdict(report: &Value) -> Value {
    let keys = [
        "expected",
        "received",
        "distinct",
        "duplicates",
        "missing",
        "corrupt",
        "out_of_order",
        "foreign",
        "missing_ranges",
        "streams",
        "complete",
    ];
    keys.iter()
        .map(|k| (k.to_string(), report[k].clone()))
        .collect()
}

#[test]
fn two_million_readings_leave_a_small_state_that_resumes_to_the_same_verdict() {
    const N: u64 = 2_000_000;
    let setup = Setup::new(N);
    let subscriber = Subscriber::start(
        setup.broker.port,
        &setup.args(&["--idle-timeout", "20", "--progress-every", "0"]),
    );
    setup.publish_all(Duration::from_secs(240));
    let (status, first) = subscriber.finish(Duration::from_secs(240));
    assert!(status.success() && first["complete"] == true, "{first}");
    let state = &setup.state;
    let bytes = state_bytes(state);
    eprintln!("state after {N} readings: {bytes} bytes on disk");
    // Without checkpoints the journal alone would be 25 bytes a reading: 50 MB.
    assert!(bytes <= 4_000_000, "{bytes} bytes of state");

    // Started again with that state, it has every reading already and says so.
    let report = setup.dir.path().join("again.json");
    let port = setup.broker.port_arg();
    let mut again = Proc::spawn(
        "mqtt-subscriber",
        &setup.args(&["--port", &port, "--report-json", report.to_str().unwrap()]),
    );
    let status = again.wait(Duration::from_secs(60));
    let second = read_json(&report, &again);
    assert!(status.success(), "{second}\n{}", again.stderr());
    assert_eq!(num(&second, "resumed"), N, "{second}");
    assert_eq!(verdict(&second), verdict(&first));
}

/// Where a checkpoint is paused and the subscriber killed, and what the files must
/// show at that moment.
type OnDisk = fn(&Path);

const STAGES: [(&str, OnDisk); 3] = [
    ("checkpoint-written", |state| {
        assert!(
            sibling(state, ".checkpoint.tmp").exists(),
            "no new checkpoint written"
        );
    }),
    ("checkpoint-renamed", |state| {
        // The new checkpoint covers the journal that is still in place.
        let checkpoint: Value =
            serde_json::from_slice(&std::fs::read(sibling(state, ".checkpoint")).unwrap()).unwrap();
        let journal = std::fs::read(state).unwrap();
        let line = journal.split(|b| *b == b'\n').next().unwrap();
        let header: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(checkpoint["header"]["generation"], header["generation"]);
    }),
    ("journal-written", |state| {
        assert!(sibling(state, ".tmp").exists(), "no new journal written");
    }),
];

fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[test]
fn a_subscriber_killed_at_each_point_of_a_checkpoint_resumes_exactly() {
    const N: u64 = 40_000;
    let setup = Setup::new(N);
    let state = &setup.state;
    let port = setup.broker.port_arg();
    // A checkpoint every 4,000 readings or so.
    let base = [
        "--client-id",
        "checkpoint-crash",
        "--checkpoint-bytes",
        "100000",
    ];
    let with_pause = |stage: &'static str| {
        let mut args = setup.args(&base);
        args.extend(["--idle-timeout", "5", "--checkpoint-pause", stage]);
        args
    };
    // Subscribed before anything is published: its session keeps what the others take.
    let first = Subscriber::start(setup.broker.port, &with_pause(STAGES[0].0));
    setup.publish_all(Duration::from_secs(120));
    let mut sub = first.proc;
    for (i, (stage, on_disk)) in STAGES.iter().enumerate() {
        if i > 0 {
            // A resumed session's backlog may fill a checkpoint before the SUBACK.
            let mut args = with_pause(stage);
            args.extend(["--port", &port]);
            sub = Proc::spawn("mqtt-subscriber", &args);
        }
        sub.wait_for_stderr("checkpoint paused at", Duration::from_secs(60));
        on_disk(state);
        sub.signal(libc::SIGKILL);
        sub.wait(Duration::from_secs(10));
        eprintln!("killed during a checkpoint, at {stage}");
    }
    let last = Subscriber::start(setup.broker.port, &setup.args(&base));
    let (status, report) = last.finish(Duration::from_secs(120));
    assert!(status.success(), "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert_eq!(num(&report, "missing"), 0, "{report}");
    assert_eq!(
        num(&report, "corrupt") + num(&report, "foreign"),
        0,
        "{report}"
    );
    // What a killed subscriber had on record but not acknowledged comes again: at most a
    // window of rumqttd's (100) per kill.
    let duplicates = num(&report, "duplicates");
    assert!(duplicates <= 3 * 100, "{report}");
    assert_eq!(num(&report, "received"), N + duplicates, "{report}");
}

#[test]
fn a_state_file_that_cannot_be_written_ends_the_run_with_its_report() {
    const N: u64 = 20_000;
    let setup = Setup::new(N);
    let report = setup.dir.path().join("sub.json");
    let port = setup.broker.port_arg();
    let named = ["--client-id", "disk-full"];
    let mut args = setup.args(&named);
    args.extend(["--port", &port, "--report-json", report.to_str().unwrap()]);
    // A file size limit of 64 KiB (ulimit -f counts 512-byte blocks in sh), with
    // SIGXFSZ ignored so that the write fails (EFBIG) as it would on a full disk.
    let mut sub = Proc::spawn_program(
        "mqtt-subscriber under ulimit -f",
        Path::new("/bin/sh"),
        &[
            &["-c", "trap '' XFSZ; ulimit -f 128; exec \"$0\" \"$@\""][..],
            &[support::bin("mqtt-subscriber").to_str().unwrap()],
            &args,
        ]
        .concat(),
    );
    sub.wait_for_stderr("subscribed to", Duration::from_secs(20));
    setup.publish_all(Duration::from_secs(60));
    let status = sub.wait(Duration::from_secs(60));
    let stderr = sub.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let failed = read_json(&report, &sub);
    assert!(num(&failed, "received") > 0, "{failed}");
    assert_eq!(failed["complete"], false, "{failed}");
    assert!(
        stderr.contains("Summary:") && stderr.contains("Verdict:"),
        "{stderr}"
    );
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("state file") && error[0].contains("too large"),
        "{stderr}"
    );

    // What was on record stays good: without the limit, the same state resumes and ends
    // complete.
    let again = Subscriber::start(setup.broker.port, &setup.args(&named));
    let (status, report) = again.finish(Duration::from_secs(60));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert!(num(&report, "resumed") > 0, "{report}");
}
