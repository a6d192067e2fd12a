//! Finding the third-party programs the tests and the benchmark run (Mosquitto, its
//! clients, NATS Server, a Python with paho-mqtt), without installing anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An executable named `name` on PATH, or in the sbin directories a non-root PATH often
/// lacks (Debian puts `mosquitto` and `nats-server` in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs = std::env::var_os("PATH").unwrap_or_default();
    dirs.push(":/usr/sbin:/usr/local/sbin:/sbin");
    which::which_in(name, Some(dirs), "/").ok()
}

/// `candidate` if it is a Python that can `import paho.mqtt`.
pub fn python_with_paho(candidate: &Path) -> Option<PathBuf> {
    Command::new(candidate)
        .args(["-c", "import paho.mqtt.client"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then(|| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn programs_are_found_on_the_path_and_absent_ones_are_not() {
        assert!(super::find_program("sh").is_some());
        assert!(super::find_program("no-such-program-here").is_none());
    }
}
