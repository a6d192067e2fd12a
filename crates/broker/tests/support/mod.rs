//! Starts and stops `mqtt-broker` processes for the tests, with every wait bounded: a broker
//! that hangs fails its test instead of the whole run, and a dropped handle kills the process.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use mqtt_harness::process::Proc;

pub const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");
/// Upper bound for anything the broker is expected to do "at once".
pub const WAIT: Duration = Duration::from_secs(10);
/// The line prefix the broker prints once it listens.
pub const READY: &str = "mqtt-broker listening on ";

/// The workspace root, where `config/broker.toml` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn shipped_config() -> PathBuf {
    workspace_root().join("config/broker.toml")
}

/// A running (or finished) `mqtt-broker` process, under the workspace's one process
/// wrapper (`mqtt_harness::process`).
pub struct Broker {
    proc: Proc,
    /// Stdout lines already handed out (the listening line, once read).
    lines_read: usize,
}

impl Broker {
    /// Starts `mqtt-broker ARGS` with the default log level (RUST_LOG and the broker's own
    /// environment variables cleared), in the workspace root.
    pub fn start(args: &[&str]) -> Broker {
        Broker::start_with(args, &[], &workspace_root())
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Broker {
        let mut command = Proc::command(Path::new(BIN));
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("NO_COLOR")
            .envs(env.iter().copied());
        let proc = Proc::spawn("mqtt-broker", &mut command, None).expect("spawn mqtt-broker");
        Broker {
            proc,
            lines_read: 0,
        }
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Waits for the "listening on" line and returns the address it names.
    pub fn ready(&mut self) -> SocketAddr {
        let line = self
            .proc
            .first_stdout_line(WAIT)
            .unwrap_or_else(|e| panic!("no listening line: {e}"));
        self.lines_read = 1;
        let addr = line
            .strip_prefix(READY)
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        addr.parse()
            .expect("listening line ends in a socket address")
    }

    pub fn signal(&self, signal: i32) {
        self.proc
            .signal(signal)
            .unwrap_or_else(|e| panic!("kill({}, {signal}) failed: {e}", self.pid()));
    }

    /// Waits for the process to end (killing it and failing after `limit`).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        match self.proc.wait(limit) {
            Ok(exit) => exit.status,
            Err(e) => panic!("mqtt-broker still running after {limit:?}: {e}"),
        }
    }

    /// Everything written on stderr so far.
    pub fn stderr(&mut self) -> String {
        self.proc.stderr()
    }

    /// The stdout lines not read yet (call after exit).
    pub fn stdout_lines(&mut self) -> Vec<String> {
        let out = self.proc.stdout();
        let lines: Vec<String> = out
            .lines()
            .skip(self.lines_read)
            .map(str::to_owned)
            .collect();
        self.lines_read += lines.len();
        lines
    }
}

/// Runs `mqtt-broker ARGS` to completion: (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let mut broker = Broker::start_with(args, &[], cwd);
    let status = broker.wait(WAIT);
    let stdout = broker.stdout_lines().join("\n");
    (status.code(), stdout, broker.stderr())
}

/// A file in the temp directory holding `contents`, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("mqtt-broker-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A hand-written MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s; rumqttd refuses 0).
pub fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut packet = vec![0x10, u8::try_from(12 + id.len()).expect("short client id")];
    packet.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C]);
    packet.extend_from_slice(&u16::try_from(id.len()).expect("short id").to_be_bytes());
    packet.extend_from_slice(id);
    packet
}

/// Connects, sends CONNECT and returns the first 4 bytes of the answer (a CONNACK is
/// `20 02 00 00` when accepted).
pub fn mqtt_handshake(addr: SocketAddr, client_id: &str) -> [u8; 4] {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to broker");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
        .write_all(&connect_packet(client_id))
        .expect("send CONNECT");
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).expect("read CONNACK");
    answer
}
