//! One child process as the tests and the benchmark need it: stdout and stderr captured
//! to files (so they can be read while it runs), every wait bounded, reaped with `wait4`
//! (which gives exactly that process's CPU time and peak memory), and killed when
//! dropped, so that a test that fails never leaves a process behind.

use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(5);

/// How a process ended and what it cost.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: ExitStatus,
    /// User plus system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
    /// When it was seen ending.
    pub at: Instant,
}

/// Why a wait failed. The message names the process and ends with its last stderr lines.
#[derive(Debug, Error)]
pub enum WaitError {
    #[error("{name} exited ({status}) before {what}; stderr:\n{stderr}")]
    Exited {
        name: String,
        what: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{name}: no {what} within {timeout:?} (killed); stderr:\n{stderr}")]
    Timeout {
        name: String,
        what: String,
        timeout: Duration,
        stderr: String,
    },
}

/// A running (or finished) child process.
pub struct Proc {
    pub name: String,
    child: Child,
    pid: i32,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<Exit>,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `command` with stdout and stderr going to files in `dir` (a temporary
    /// directory when `None`); stdin is whatever `command` says (null by default here).
    pub fn spawn(name: &str, command: &mut Command, dir: Option<&Path>) -> io::Result<Proc> {
        let temp = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir()?),
        };
        let dir = dir
            .or(temp.as_ref().map(tempfile::TempDir::path))
            .unwrap_or(Path::new("."));
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let child = command
            .stdout(fs::File::create(&stdout_path)?)
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting {}: {e}", command.get_program().to_string_lossy()),
                )
            })?;
        Ok(Proc {
            name: name.to_owned(),
            pid: child.id() as i32,
            child,
            stdout_path,
            stderr_path,
            exit: None,
            _dir: temp,
        })
    }

    /// A command for `program` with stdin closed and none of the variables that would
    /// point our binaries elsewhere than a test means (MQTT_*, RUST_LOG) inherited.
    pub fn command(program: &Path) -> Command {
        let mut command = Command::new(program);
        command.stdin(Stdio::null());
        for var in [
            "MQTT_HOST",
            "MQTT_PORT",
            "MQTT_BROKERS",
            "MQTT_PASSWORD",
            "MQTT_USERNAME",
            "MQTT_TLS",
            "MQTT_CA_FILE",
            "MQTT_BROKER_CONFIG",
            "MQTT_BROKER_LISTEN",
            "RUST_LOG",
        ] {
            command.env_remove(var);
        }
        command
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The piped stdin (for a command spawned with `Stdio::piped()`); dropping it closes it.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Reaps the process if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            let mut status = 0;
            // SAFETY: wait4 writes only into the two out-parameters we own.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == self.pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                self.exit = Some(Exit {
                    status: ExitStatus::from_raw(status),
                    cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
                    peak_rss_kib: usage.ru_maxrss as u64,
                    at: Instant::now(),
                });
            }
        }
        self.exit
    }

    /// Polls until `ready(self)` holds; fails if the process exits first (and `ready`
    /// still does not hold) or after `timeout`, killing it then.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Proc) -> bool,
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(exit) = self.try_wait() {
                if ready(self) {
                    return Ok(());
                }
                return Err(WaitError::Exited {
                    name: self.name.clone(),
                    what: what.to_owned(),
                    status: exit.status,
                    stderr: tail(&self.stderr()),
                });
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(WaitError::Timeout {
                    name: self.name.clone(),
                    what: what.to_owned(),
                    timeout,
                    stderr: tail(&self.stderr()),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; kills it after that.
    pub fn wait(&mut self, timeout: Duration) -> Result<Exit, WaitError> {
        self.wait_until("its exit", timeout, |p| p.exit.is_some())?;
        Ok(self.exit.expect("ready means reaped"))
    }

    /// The first line on stdout, once there is one.
    pub fn first_stdout_line(&mut self, timeout: Duration) -> Result<String, WaitError> {
        self.wait_until("a line on stdout", timeout, |p| p.stdout().contains('\n'))?;
        Ok(self.stdout().lines().next().unwrap_or("").to_owned())
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) unless the process was already reaped.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.exit.is_some() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "already exited"));
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        match unsafe { libc::kill(self.pid, signal) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; how it ended.
    pub fn terminate(&mut self, grace: Duration) -> Option<Exit> {
        if self.try_wait().is_none() {
            let _ = self.signal(libc::SIGTERM);
            let _ = self.wait(grace);
        }
        self.kill();
        self.exit
    }

    /// SIGKILL (which also ends a stopped process) and reap.
    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = self.signal(libc::SIGKILL);
        for _ in 0..1000 {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of some output, for error messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_exit_and_cost_are_captured() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
        )
        .unwrap();
        let exit = p.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(exit.status.code(), Some(3));
        assert!(exit.peak_rss_kib > 0);
        assert_eq!((p.stdout(), p.stderr()), ("out\n".into(), "err\n".into()));
    }

    #[test]
    fn waits_are_bounded_and_kill() {
        let mut p = Proc::spawn("sleep", Command::new("sleep").arg("30"), None).unwrap();
        let started = Instant::now();
        let err = p.wait(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, WaitError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(p
            .try_wait()
            .is_some_and(|e| e.status.signal() == Some(libc::SIGKILL)));
    }
}
