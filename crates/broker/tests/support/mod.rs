//! Starts and stops `mqtt-broker` processes for the tests, with every wait bounded: a broker
//! that hangs fails its test instead of the whole run, and a dropped handle kills the process.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// A running (or finished) `mqtt-broker` process.
pub struct Broker {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    status: Option<ExitStatus>,
}

impl Broker {
    /// Starts `mqtt-broker ARGS` with the default log level (RUST_LOG and the broker's own
    /// environment variables cleared), in the workspace root.
    pub fn start(args: &[&str]) -> Broker {
        Broker::start_with(args, &[], &workspace_root())
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Broker {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .env_remove("MQTT_BROKER_CONFIG")
            .env_remove("MQTT_BROKER_LISTEN")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn mqtt-broker");

        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Broker {
            child,
            stdout,
            stderr: Some(stderr),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Waits for the "listening on" line and returns the address it names.
    pub fn ready(&mut self) -> SocketAddr {
        let line = match self.stdout.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                panic!(
                    "no listening line within {WAIT:?} ({e}); stderr:\n{}",
                    self.stderr()
                );
            }
        };
        let addr = line
            .strip_prefix(READY)
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        addr.parse()
            .expect("listening line ends in a socket address")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to end (killing it and failing after `limit`).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "mqtt-broker still running after {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything written on stderr; waits for the process to close it (so: call after exit).
    pub fn stderr(&mut self) -> String {
        match self.stderr.take() {
            Some(handle) => handle.join().unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Remaining stdout lines (call after exit).
    pub fn stdout_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
