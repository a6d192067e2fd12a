//! Test support: starts the real binaries on loopback, waits for them with bounded
//! waits, and reads their reports, so that each test reads as a story.
//!
//! The binaries belong to other packages of the workspace, so `CARGO_BIN_EXE_*` is not
//! available here; the first call builds them (`cargo build --bins`, a no-op when fresh)
//! into the same target directory as this test and runs them from there.

#![allow(dead_code)]

pub mod chaos;
pub mod hardening;
pub mod mqtt;
pub mod peers;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// The directory holding the workspace's binaries for this build profile.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This test runs from <target>/<profile>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in <target>/<profile>/deps")
            .to_path_buf();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let target = dir.parent().expect("target directory");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--bins", "--workspace"])
            .arg("--target-dir")
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Cargo gives a test the package's `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`...; build
        // scripts that watch those (ring's does) would see them change and rebuild half the
        // tree, and the next `cargo test` would rebuild it back. Build as a shell would.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| key.starts_with(prefix))
                || key == "CARGO_PRIMARY_PACKAGE"
                || key == "CARGO_TARGET_TMPDIR"
            {
                build.env_remove(&*key);
            }
        }
        if profile == "release" {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build for the binaries");
        assert!(status.success(), "cargo build --bins failed");
        dir
    })
}

/// Path of one of the workspace's binaries, built and fresh.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A process under the harness (`mqtt_harness::process`: output to files, killed when
/// dropped) with the waits a test story wants: bounded, and panicking with the process's
/// stderr when what was awaited does not happen.
pub struct Proc {
    pub name: String,
    inner: mqtt_harness::process::Proc,
}

impl Proc {
    /// Starts `bin(name)` with `args`.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_with_env(name, args, &[])
    }

    /// [`Proc::spawn`] with `env` set (and the user's MQTT_* settings never inherited).
    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = mqtt_harness::process::Proc::command(&bin(name));
        command.args(args).envs(env.iter().copied());
        Proc::start(name, &mut command)
    }

    /// Starts `program` (e.g. a shell that starts one of ours), named `name` in messages.
    pub fn spawn_program(name: &str, program: &Path, args: &[&str]) -> Proc {
        let mut command = mqtt_harness::process::Proc::command(program);
        command.args(args);
        Proc::start(name, &mut command)
    }

    /// Starts `command` as it is.
    pub fn start(name: &str, command: &mut Command) -> Proc {
        let inner = mqtt_harness::process::Proc::spawn(name, command, None)
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            inner,
        }
    }

    pub fn pid(&self) -> i32 {
        self.inner.pid()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.inner.stdout()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.inner.stderr()
    }

    /// Both outputs, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "{0} stdout:\n{1}\n{0} stderr:\n{2}",
            self.name,
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits until `done(stdout, stderr)` holds, panicking after `timeout` or if the
    /// process exits first.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&str, &str) -> bool) {
        let name = self.name.clone();
        self.inner
            .wait_until(what, timeout, |p| done(&p.stdout(), &p.stderr()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        self.wait_until(&format!("{needle:?} on stderr"), timeout, |_, err| {
            err.contains(needle)
        });
    }

    /// Waits until `done(stdout)` holds.
    pub fn wait_for_stdout(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        self.wait_until(what, timeout, |out, _| done(out));
    }

    /// Waits for the process to exit, killing it and panicking after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        self.inner
            .wait(timeout)
            .map(|exit| exit.status)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.inner.try_wait().map(|exit| exit.status)
    }

    /// Sends `signal` (e.g. `libc::SIGINT`).
    pub fn signal(&self, signal: i32) {
        self.inner
            .signal(signal)
            .unwrap_or_else(|e| panic!("signal {signal} to {}: {e}", self.name));
    }

    /// Kills the process (SIGKILL: no goodbye, no last flush) and waits until it is gone.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
    }

    /// The first line of stdout, bounded by `timeout`.
    pub fn stdout_line(&mut self, timeout: Duration) -> String {
        let name = self.name.clone();
        self.inner
            .first_stdout_line(timeout)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The piped stdin (of a command started with one); dropping it closes it.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.inner
            .take_stdin()
            .expect("stdin is piped and not yet taken")
    }
}

/// The real broker on an ephemeral loopback port.
pub struct Broker {
    pub proc: Proc,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    /// A broker on a given address, e.g. the port of one that was killed.
    pub fn start_with_listen(listen: &str) -> Broker {
        Self::spawn(&["--listen", listen])
    }

    /// A broker on an ephemeral port configured by `toml` (read once, at start).
    pub fn start_with_config(toml: &str) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broker.toml");
        fs::write(&path, toml).expect("write the broker config");
        Self::start_with(&["--config", path.to_str().expect("utf-8 path")])
    }

    pub fn start_with(extra: &[&str]) -> Broker {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    /// A broker with exactly these arguments (which must include `--listen`).
    pub fn start_exact(args: &[&str]) -> Broker {
        Self::spawn(args)
    }

    fn spawn(args: &[&str]) -> Broker {
        let mut proc = Proc::spawn("mqtt-broker", args);
        let line = proc.stdout_line(Duration::from_secs(20));
        let addr = line
            .trim()
            .strip_prefix("mqtt-broker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the broker: {line:?}"));
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {addr:?}"));
        Broker { proc, port }
    }

    /// Kills the broker (SIGKILL: it keeps only what its log, if any, holds) and waits
    /// until it is gone; a broker started on [`Broker::listen_addr`] takes its place.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Its loopback address as `--listen` takes it, for a broker started in its place.
    pub fn listen_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port_arg(&self) -> String {
        self.port.to_string()
    }

    /// The loopback address it listens on, for the test's own MQTT clients.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// A subscriber that has confirmed its subscription, writing its report to a file.
pub struct Subscriber {
    pub proc: Proc,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Subscriber {
    pub fn start(port: u16, extra: &[&str]) -> Subscriber {
        let (mut proc, report, dir) = spawn_client("mqtt-subscriber", port, extra);
        proc.wait_for_stderr("subscribed to", Duration::from_secs(20));
        Subscriber {
            proc,
            report,
            _dir: dir,
        }
    }

    /// Waits for the exit and returns its status and the JSON report.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Value) {
        let status = self.proc.wait(timeout);
        (status, read_json(&self.report, &self.proc))
    }

    /// Waits for the exit like [`Subscriber::finish`] and asserts that it succeeded (exit 0);
    /// returns the report.
    pub fn finish_ok(self, timeout: Duration) -> Value {
        let (status, report) = self.finish(timeout);
        assert!(status.success(), "subscriber failed: {status}: {report}");
        report
    }

    /// Waits for the exit like [`Subscriber::finish`] and asserts a complete run of `n`
    /// readings: exit 0, `n` distinct, none missing, none corrupt, `complete`. Returns the
    /// report, for what a story checks beyond that.
    pub fn finish_complete(self, timeout: Duration, n: u64) -> Value {
        let report = self.finish_ok(timeout);
        assert_eq!(num(&report, "distinct"), n, "{report}");
        assert_eq!(num(&report, "missing"), 0, "{report}");
        assert_eq!(num(&report, "corrupt"), 0, "{report}");
        assert_eq!(report["complete"], true, "{report}");
        report
    }

    /// Kills the subscriber (SIGKILL: no goodbye, no last flush) and waits until it is gone.
    pub fn kill(mut self) {
        self.proc.kill();
    }
}

/// A subscriber that keeps its session (a fixed client id) and its `--state` file across
/// restarts, so that a run killed midway resumes where it was.
pub struct Resumable {
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Resumable {
    /// For `n` readings as client `client_id`, giving up `idle_timeout_s` seconds after the
    /// last reading that came.
    pub fn new(n: u64, client_id: &str, idle_timeout_s: u64) -> Resumable {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("subscriber.state");
        let args = [
            "--count",
            &n.to_string(),
            "--state",
            state.to_str().expect("utf-8 path"),
            "--client-id",
            client_id,
            "--idle-timeout",
            &idle_timeout_s.to_string(),
        ]
        .map(String::from)
        .to_vec();
        Resumable { args, _dir: dir }
    }

    /// Starts it, or starts it again, against `port`.
    pub fn start(&self, port: u16) -> Subscriber {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Subscriber::start(port, &args)
    }
}

/// A publisher running in the background, writing its report to a file.
pub struct Publisher {
    pub proc: Proc,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Publisher {
    pub fn start(port: u16, extra: &[&str]) -> Publisher {
        let (proc, report, dir) = spawn_client("mqtt-publisher", port, extra);
        Publisher {
            proc,
            report,
            _dir: dir,
        }
    }

    /// Waits for the exit and returns its status, the JSON report and stderr.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Value, String) {
        let status = self.proc.wait(timeout);
        let report = read_json(&self.report, &self.proc);
        (status, report, self.proc.stderr())
    }
}

/// Starts one of our clients against `port`, writing its JSON report to a file in a
/// scratch directory of its own: the process, the report's path and the directory.
fn spawn_client(name: &str, port: u16, extra: &[&str]) -> (Proc, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join(format!("{name}.json"));
    let port = port.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--report-json",
        report.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    (Proc::spawn(name, &args), report, dir)
}

/// Runs the publisher to completion; returns its status, JSON report and stderr.
pub fn publish(port: u16, extra: &[&str], timeout: Duration) -> (ExitStatus, Value, String) {
    Publisher::start(port, extra).finish(timeout)
}

/// Runs the publisher to completion like [`publish`] and panics, with its stderr, unless
/// it exits 0; returns its JSON report and stderr.
pub fn publish_ok(port: u16, extra: &[&str], timeout: Duration) -> (Value, String) {
    let (status, report, stderr) = publish(port, extra, timeout);
    assert!(status.success(), "publisher failed: {status}\n{stderr}");
    (report, stderr)
}

/// Publishes `n` readings at full speed to the broker on `port` like [`publish_ok`], and
/// asserts that the broker acknowledged every one; returns the publisher's report.
pub fn publish_all(port: u16, n: u64, timeout: Duration) -> Value {
    let (published, _) = publish_ok(port, &["--count", &n.to_string()], timeout);
    assert_eq!(num(&published, "acked"), n, "{published}");
    published
}

/// The pipeline's own story at QoS 1 through the broker on `port`: a subscriber waiting
/// for `n` readings, then the publisher sending them. Asserts that all `n` were published,
/// acknowledged and verified complete, in the publisher's stream, each process within
/// `timeout`. Returns the publisher's stderr and the subscriber's report.
pub fn qos1_run_complete(port: u16, n: u64, timeout: Duration) -> (String, Value) {
    let count = n.to_string();
    let subscriber = Subscriber::start(port, &["--count", &count, "--qos", "1"]);
    let (published, stderr) = publish_ok(port, &["--count", &count, "--qos", "1"], timeout);
    assert_eq!(num(&published, "published"), n);
    assert_eq!(num(&published, "acked"), n);
    let verified = subscriber.finish_complete(timeout, n);
    // The subscriber names the publisher's stream.
    assert_eq!(verified["streams"][0]["id"], published["stream_id"]);
    (stderr, verified)
}

/// Starts a publisher on a count it will not reach (`extra` adds flags), interrupts it with
/// `signal` (SIGINT or SIGTERM) once it has published `at` readings, and asserts the
/// orderly stop an interrupt owes: exit 130, a report saying `interrupted`, and every
/// reading handed to the broker before the signal acknowledged in the grace period.
/// Returns the report and stderr.
pub fn interrupt_publisher(port: u16, extra: &[&str], at: u64, signal: i32) -> (Value, String) {
    const MORE: u64 = 100_000_000;
    let more = MORE.to_string();
    let mut args = vec!["--count", &more];
    args.extend_from_slice(extra);
    let mut publisher = Publisher::start(port, &args);
    publisher.proc.wait_for_stderr(
        &format!("Messages published: {at}\n"),
        Duration::from_secs(30),
    );
    publisher.proc.signal(signal);
    let (status, report, stderr) = publisher.finish(Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_eq!(report["interrupted"], true);
    let (published, acked) = (num(&report, "published"), num(&report, "acked"));
    assert!((at..MORE).contains(&published), "{report}");
    assert_eq!(acked, published, "{report}");
    (report, stderr)
}

/// Reads a JSON report a process wrote.
pub fn read_json(path: &Path, proc: &Proc) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{} wrote no report at {} ({e}); stderr:\n{}",
            proc.name,
            path.display(),
            proc.stderr()
        )
    });
    serde_json::from_str(&text).expect("report is JSON")
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> u16 {
    mqtt_harness::process::free_port().expect("a free loopback port")
}

/// Shorthand for a JSON field as u64.
pub fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no number {key:?}: {v}"))
}

/// Runs a binary that ends by itself at once (a usage error, `mqtt-subscriber merge`) and
/// returns its status, stdout and stderr.
pub fn run_quick(name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(name, args);
    let status = proc.wait(Duration::from_secs(30));
    (status, proc.stdout(), proc.stderr())
}

/// Writes `report` to `dir/name` (e.g. a subscriber's report, for `merge`).
pub fn write_report(dir: &Path, name: &str, report: &Value) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, serde_json::to_vec_pretty(report).expect("JSON")).expect("write report");
    path
}

impl Proc {
    /// The exit status if the process has ended, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.try_wait()
    }
}
