//! The subscriber's `--state`: it stays about as small as the verifier's bitmaps however
//! many readings arrive, a SIGKILL at any point of a checkpoint still resumes to an
//! exact verdict, and a state file that cannot be written ends the run with exit 1 and
//! the report of what was verified.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{num, publish, read_json, Broker, Proc, Subscriber};

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
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sub.state");
    let count = N.to_string();
    let state_arg = state.to_str().unwrap();
    let args = [
        "--count",
        &count,
        "--state",
        state_arg,
        "--idle-timeout",
        "20",
        "--progress-every",
        "0",
    ];
    let subscriber = Subscriber::start(broker.port, &args);
    let (status, published, stderr) = publish(
        broker.port,
        &["--count", &count, "--progress-every", "0"],
        Duration::from_secs(240),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(num(&published, "acked"), N);
    let (status, first) = subscriber.finish(Duration::from_secs(240));
    assert!(status.success(), "{first}");
    assert_eq!(first["complete"], true, "{first}");
    let bytes = state_bytes(&state);
    eprintln!("state after {N} readings: {bytes} bytes on disk");
    // Without checkpoints the journal alone would be 25 bytes a reading: 50 MB.
    assert!(bytes <= 4_000_000, "{bytes} bytes of state");

    // Started again with that state, it has every reading already and says so.
    let report = dir.path().join("again.json");
    let mut again = Proc::spawn(
        "mqtt-subscriber",
        &[
            "--port",
            &broker.port_arg(),
            "--report-json",
            report.to_str().unwrap(),
            "--count",
            &count,
            "--state",
            state_arg,
        ],
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
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sub.state");
    let count = N.to_string();
    let port = broker.port_arg();
    let base = [
        "--count",
        &count,
        "--state",
        state.to_str().unwrap(),
        "--client-id",
        "checkpoint-crash",
        "--idle-timeout",
        "5",
        // A checkpoint every 4,000 readings or so.
        "--checkpoint-bytes",
        "100000",
    ];
    let with_pause = |stage: &str| {
        let mut args = vec!["--port", &port];
        args.extend_from_slice(&base);
        args.extend(["--checkpoint-pause", stage]);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    // Subscribed before anything is published: its session keeps what the others take.
    let first = Subscriber::start(
        broker.port,
        &with_pause(STAGES[0].0)[2..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let (status, published, stderr) =
        publish(broker.port, &["--count", &count], Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert_eq!(num(&published, "acked"), N);
    let mut sub = first.proc;
    for (i, (stage, on_disk)) in STAGES.iter().enumerate() {
        if i > 0 {
            // A resumed session's backlog may fill a checkpoint before the SUBACK.
            let args = with_pause(stage);
            sub = Proc::spawn(
                "mqtt-subscriber",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        sub.wait_for_stderr("checkpoint paused at", Duration::from_secs(60));
        on_disk(&state);
        sub.signal(libc::SIGKILL);
        sub.wait(Duration::from_secs(10));
        eprintln!("killed during a checkpoint, at {stage}");
    }
    let last = Subscriber::start(broker.port, &base);
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
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sub.state");
    let report = dir.path().join("sub.json");
    let count = N.to_string();
    let port = broker.port_arg();
    let args = [
        "--port",
        &port,
        "--count",
        &count,
        "--state",
        state.to_str().unwrap(),
        "--client-id",
        "disk-full",
        "--report-json",
        report.to_str().unwrap(),
    ];
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
    let (status, _, stderr) = publish(broker.port, &["--count", &count], Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
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
    let again = Subscriber::start(broker.port, &args[2..8]);
    let (status, report) = again.finish(Duration::from_secs(60));
    assert!(status.success(), "{report}");
    assert_eq!(num(&report, "distinct"), N, "{report}");
    assert!(num(&report, "resumed") > 0, "{report}");
}
