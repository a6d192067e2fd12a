//! Third-party MQTT peers for the interop tests: Mosquitto, its command-line clients and
//! Python paho. Finds them without installing anything, runs them on loopback, and
//! decides what a missing one means: a failure under CI (`CI=true`, where `.ci/run`
//! installs them all), a skip with a hint everywhere else.

use std::fs;
use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Broker, Proc};

/// Bound on every wait for a peer to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Reports a missing peer: panics under CI, otherwise prints why the test is skipped.
/// Returns `None` so callers can write `let Some(x) = peers::mosquitto() else { return };`.
fn missing<T>(what: &str, ci_hint: &str, install_hint: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} not found; {ci_hint}");
    }
    eprintln!("skipped: {what} not installed ({install_hint})");
    None
}

use mqtt_harness::peers::find_program;

/// The Mosquitto broker, or `None` (after reporting it) when it is not installed.
pub fn mosquitto() -> Option<PathBuf> {
    find_program("mosquitto").or_else(|| {
        missing(
            "mosquitto",
            ".ci/run installs it",
            "apt-get install mosquitto",
        )
    })
}

/// The `mosquitto_sub` client, or `None` (after reporting it).
pub fn mosquitto_sub() -> Option<PathBuf> {
    find_program("mosquitto_sub").or_else(|| {
        missing(
            "mosquitto_sub",
            ".ci/run installs it",
            "apt-get install mosquitto-clients",
        )
    })
}

/// The `mosquitto_pub` client, or `None` (after reporting it).
pub fn mosquitto_pub() -> Option<PathBuf> {
    find_program("mosquitto_pub").or_else(|| {
        missing(
            "mosquitto_pub",
            ".ci/run installs it",
            "apt-get install mosquitto-clients",
        )
    })
}

/// NATS Server (2.9 or newer, for its MQTT support and clustered JetStream), or `None`
/// (after reporting it). `scripts/cluster` runs it from config/nats.
pub fn nats_server() -> Option<PathBuf> {
    find_program("nats-server").or_else(|| {
        missing(
            "nats-server",
            ".ci/run installs it",
            "apt-get install nats-server",
        )
    })
}

/// The workspace root (the root package's manifest directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Python interpreter that can `import paho.mqtt`: `$MQTT_PAHO_PYTHON`, else the
/// virtual environment `scripts/python-env.sh` creates (`target/venv`). Tests never
/// install it themselves.
pub fn paho_python() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let candidate = match std::env::var_os("MQTT_PAHO_PYTHON") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => workspace_root().join("target/venv/bin/python"),
        };
        let imports = Command::new(&candidate)
            .args(["-c", "import paho.mqtt.client"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        imports.then_some(candidate)
    });
    found.clone().or_else(|| {
        missing(
            "Python with paho-mqtt",
            ".ci/run creates it with scripts/python-env.sh",
            "run scripts/python-env.sh, or set MQTT_PAHO_PYTHON",
        )
    })
}

/// The original demo's paho clients (`seed_pub.py`, `seed_sub.py`), run in place from
/// `../shared/seed-demo` beside the workspace; a missing directory counts as a missing peer.
pub fn seed_demo() -> Option<PathBuf> {
    let dir = workspace_root().join("../shared/seed-demo");
    if dir.join("seed_pub.py").is_file() && dir.join("seed_sub.py").is_file() {
        Some(dir)
    } else {
        missing(
            "the seed demo (../shared/seed-demo)",
            "it belongs beside the workspace",
            "expected at ../shared/seed-demo next to the workspace",
        )
    }
}

/// Our paho helper script, `tests/peers/paho_peer.py`.
pub fn paho_peer_script() -> PathBuf {
    workspace_root().join("tests/peers/paho_peer.py")
}

/// A third-party program under the test's [`Proc`]: its outputs readable while it runs,
/// killed (even when stopped) when dropped.
pub struct Program(Proc);

impl Program {
    /// Starts `program` with `args` and `stdin`. Mosquitto's clients get an empty
    /// configuration directory, so a user's `~/.config/mosquitto_sub` cannot change them;
    /// Python runs unbuffered and writes no bytecode.
    pub fn spawn(program: &Path, args: &[&str], stdin: Stdio) -> Program {
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let config = std::env::temp_dir().join("mqtt-pipeline-tests-empty-config");
        let _ = fs::create_dir_all(&config);
        let mut command = Command::new(program);
        command
            .args(args)
            .env("XDG_CONFIG_HOME", &config)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(stdin);
        Program(Proc::start(&name, &mut command))
    }
}

impl std::ops::Deref for Program {
    type Target = Proc;

    fn deref(&self) -> &Proc {
        &self.0
    }
}

impl std::ops::DerefMut for Program {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.0
    }
}

/// Runs `program` to completion (bounded by `timeout`) and returns its status and stdout.
pub fn run(program: &Path, args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut p = Program::spawn(program, args, Stdio::null());
    let status = p.wait(timeout);
    (status, p.stdout())
}

/// A Mosquitto broker on an ephemeral loopback port, with a configuration of our own
/// (anonymous clients, no persistence, no limit on queued QoS 1/2 messages), killed when
/// dropped.
pub struct Mosquitto {
    pub port: u16,
    pub program: Program,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` (the path [`mosquitto`] found) and waits until it accepts TCP
    /// connections. The port is picked by binding port 0 and releasing it; should another
    /// process take it in between, Mosquitto fails to bind and we try another.
    pub fn start(mosquitto: &Path) -> Mosquitto {
        let mut last_failure = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = super::closed_port();
            let config = dir.path().join("mosquitto.conf");
            fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\n\
                     allow_anonymous true\n\
                     persistence false\n\
                     # 0: no limit on QoS 1/2 messages queued per client (default 1000).\n\
                     max_queued_messages 0\n\
                     log_dest stderr\n\
                     log_type error\nlog_type warning\nlog_type notice\n\
                     log_type information\nlog_type subscribe\n"
                ),
            )
            .expect("writing mosquitto.conf");
            let mut program = Program::spawn(
                mosquitto,
                &["-c", config.to_str().expect("utf-8 path")],
                Stdio::null(),
            );
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(status) = program.try_wait() {
                    last_failure = format!("mosquitto exited ({status}):\n{}", program.stderr());
                    break;
                }
                // "... running" is logged after the listener is bound, so a connect then
                // reaches this Mosquitto and not whatever might have taken the port.
                if program.stderr().contains(" running")
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    return Mosquitto {
                        port,
                        program,
                        _dir: dir,
                    };
                }
                if Instant::now() >= deadline {
                    panic!(
                        "mosquitto did not listen on 127.0.0.1:{port} within {READY_TIMEOUT:?}\n{}",
                        program.output()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("mosquitto could not start: {last_failure}");
    }
}

/// Waits until our broker has logged that `client_id` subscribed: the only readiness a
/// third-party subscriber like the seed demo's (which prints `ready` before its SUBACK)
/// leaves behind. The broker logs `client "ID" subscribed to FILTER` at INFO when the
/// router's SUBACK goes out.
pub fn wait_for_subscription(broker: &Broker, client_id: &str, timeout: Duration) {
    let needle = format!("client {client_id:?} subscribed to ");
    let deadline = Instant::now() + timeout;
    loop {
        let log = broker.proc.stderr();
        if log.contains(&needle) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("our broker logged no subscription by {client_id} within {timeout:?}; stderr:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub retain: bool,
    pub qos: u8,
    pub topic: String,
    pub payload: String,
}

/// Prefix of the lines [`MosquittoSub`] asks `mosquitto_sub` to print per message; its
/// debug lines (`-d`, for SUBACK) go to the same stdout.
const MESSAGE_PREFIX: &str = "MSG ";

/// A `mosquitto_sub` that has its SUBACK, printing each message as one line. It also
/// subscribes to a marker topic of its own (last), so that [`Self::messages_settled`] can
/// tell when everything the broker had for it has arrived.
pub struct MosquittoSub {
    pub program: Program,
    port: u16,
    marker: String,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -h 127.0.0.1 -p PORT` with `args` (topics, QoS, `-C`, ...)
    /// and waits for its SUBACK.
    pub fn start(path: &Path, port: u16, args: &[&str]) -> MosquittoSub {
        static MARKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("marker/{}-{n}", std::process::id());
        let port_number = port;
        let port = port.to_string();
        let mut all = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-d",
            "-F",
            "MSG %r %q %t %p",
        ];
        all.extend_from_slice(args);
        all.extend(["-t", &marker]);
        // Its debug lines (SUBACK, PUBREC, ...) are block-buffered into a file and would
        // show only when a message flushes them: stdbuf (coreutils) makes stdout
        // line-buffered, so the SUBACK can be waited for.
        let mut program = match find_program("stdbuf") {
            Some(stdbuf) => {
                let path = path.to_str().expect("utf-8 path");
                let mut with = vec!["-oL", path];
                with.extend_from_slice(&all);
                Program::spawn(&stdbuf, &with, Stdio::null())
            }
            None => Program::spawn(path, &all, Stdio::null()),
        };
        program.name = "mosquitto_sub".to_owned();
        program.wait_for_stdout("SUBACK", READY_TIMEOUT, |out| {
            out.contains("Subscribed (mid:")
        });
        MosquittoSub {
            program,
            port: port_number,
            marker,
        }
    }

    /// The QoS levels the broker granted, from the SUBACK line (`Subscribed (mid: 1): 1`).
    pub fn granted_qos(&self) -> Vec<u8> {
        let out = self.program.stdout();
        let line = out
            .lines()
            .find(|l| l.starts_with("Subscribed (mid:"))
            .expect("SUBACK line");
        line.rsplit("):")
            .next()
            .unwrap_or("")
            .split(',')
            .filter_map(|q| q.trim().parse().ok())
            .collect::<Vec<u8>>()
            .split_last()
            .map_or(Vec::new(), |(_marker, asked)| asked.to_vec())
    }

    /// Every message printed so far (but the markers).
    pub fn messages(&self) -> Vec<Message> {
        self.parse(&self.program.stdout())
    }

    fn parse(&self, out: &str) -> Vec<Message> {
        let mut messages = parse_messages(out);
        messages.retain(|m| m.topic != self.marker);
        messages
    }

    /// Waits until at least `count` messages arrived (or panics after `timeout`).
    pub fn wait_messages(&mut self, count: usize, timeout: Duration) -> Vec<Message> {
        let marker = self.marker.clone();
        self.program
            .wait_for_stdout(&format!("{count} messages"), timeout, |out| {
                parse_messages(out)
                    .iter()
                    .filter(|m| m.topic != marker)
                    .count()
                    >= count
            });
        self.messages()
    }

    /// Every message the broker had for this subscriber, for checks that nothing (else)
    /// comes: publishes a marker to its marker topic and waits (bounded) until the marker
    /// arrives, after whatever the broker sent it before.
    pub fn messages_settled(&self) -> Vec<Message> {
        let publisher = find_program("mosquitto_pub").expect("mosquitto_pub");
        mosquitto_pub_run(
            &publisher,
            self.port,
            &["-t", &self.marker, "-q", "1", "-m", "."],
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        while !parse_messages(&self.program.stdout())
            .iter()
            .any(|m| m.topic == self.marker)
        {
            assert!(
                Instant::now() < deadline,
                "the marker never reached mosquitto_sub\n{}",
                self.program.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.messages()
    }

    /// Number of stdout lines containing `needle` (e.g. `sending PUBREC`).
    pub fn count_lines(&self, needle: &str) -> usize {
        self.program
            .stdout()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

fn parse_messages(out: &str) -> Vec<Message> {
    out.lines()
        .filter_map(|l| l.strip_prefix(MESSAGE_PREFIX))
        .filter_map(|rest| {
            let mut parts = rest.splitn(4, ' ');
            Some(Message {
                retain: parts.next()? == "1",
                qos: parts.next()?.parse().ok()?,
                topic: parts.next()?.to_owned(),
                payload: parts.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// Starts `mosquitto_pub -h 127.0.0.1 -p PORT` with `args`, reading `stdin`.
pub fn spawn_mosquitto_pub(path: &Path, port: u16, args: &[&str], stdin: Stdio) -> Program {
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    Program::spawn(path, &all, stdin)
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p PORT` with `args` to completion; panics unless it
/// exits 0 within 10 s.
pub fn mosquitto_pub_run(path: &Path, port: u16, args: &[&str]) {
    let mut program = spawn_mosquitto_pub(path, port, args, Stdio::null());
    let status = program.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "mosquitto_pub {args:?} failed ({status})\n{}",
        program.output()
    );
}

/// Writes `lines` to a file in `dir`, one per line, for a program's stdin.
pub fn lines_file(dir: &Path, name: &str, lines: impl Iterator<Item = String>) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::io::BufWriter::new(fs::File::create(&path).expect("lines file"));
    for line in lines {
        writeln!(file, "{line}").expect("writing lines");
    }
    file.flush().expect("flushing lines");
    path
}

/// Runs one check of `tests/peers/paho_peer.py` against the broker on `port` and returns
/// the JSON line it prints (what it observed).
pub fn paho_check(python: &Path, check: &str, port: u16, extra: &[&str]) -> serde_json::Value {
    let script = paho_peer_script();
    let port = port.to_string();
    let mut args = vec![script.to_str().expect("utf-8 path"), check, &port];
    args.extend_from_slice(extra);
    let mut program = Program::spawn(python, &args, Stdio::null());
    let status = program.wait(Duration::from_secs(60));
    let out = program.stdout();
    let line = out.lines().last().unwrap_or("");
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "paho_peer.py {check}: no JSON line ({e})\n{}",
            program.output()
        )
    });
    assert!(
        status.success() && value.get("error").is_none(),
        "paho_peer.py {check} failed ({status})\n{}",
        program.output()
    );
    value
}
