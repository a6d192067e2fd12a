//! Child processes measured the way the kernel counts them: each is reaped with
//! `wait4`, which returns exactly that process's CPU time and peak resident memory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What one process cost, from `wait4`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
    /// Exit code, or `None` when killed by a signal.
    pub code: Option<i32>,
}

/// A running child with its output captured to files in a scratch directory.
pub struct Proc {
    pub name: String,
    pid: i32,
    _child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
    usage: Option<(Usage, Instant)>,
}

impl Proc {
    /// Starts `program` with `args`; `dir` holds its captured stdout and stderr.
    pub fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> Result<Proc> {
        Self::spawn_with_env(name, program, args, &[], dir)
    }

    /// As [`Proc::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> Result<Proc> {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("RUST_LOG")
            .env_remove("MQTT_HOST")
            .env_remove("MQTT_PORT")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("while starting {}", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            pid: child.id() as i32,
            _child: child,
            stdout,
            stderr,
            usage: None,
        })
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Reaps the process if it has exited; returns its usage and when it was seen ending.
    pub fn try_reap(&mut self) -> Option<(Usage, Instant)> {
        if self.usage.is_none() {
            let mut status = 0;
            // SAFETY: wait4 writes only into the two out-parameters we own.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if rc == self.pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let usage = Usage {
                    cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
                    peak_rss_kib: ru.ru_maxrss as u64,
                    code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                };
                self.usage = Some((usage, Instant::now()));
            }
        }
        self.usage
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn reap_within(&mut self, timeout: Duration) -> Result<(Usage, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = self.try_reap() {
                return Ok(done);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} did not finish within {timeout:?}; stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Polls until `ready(stdout, stderr)` holds; fails if the process exits first.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str, &str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(&self.stdout(), &self.stderr()) {
                return Ok(());
            }
            if self.try_reap().is_some() {
                bail!(
                    "{} exited before {what}; stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {timeout:?}; stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; returns what the process cost.
    pub fn terminate(&mut self) -> Usage {
        if self.try_reap().is_none() {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            if self.reap_within(Duration::from_secs(5)).is_err() {
                self.kill();
            }
        }
        self.usage.map(|(u, _)| u).unwrap_or_default()
    }

    fn kill(&mut self) {
        if self.usage.is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            for _ in 0..500 {
                if self.try_reap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
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
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
