//! A panic in rumqttd's router thread must end the process with exit code 1, not leave a
//! broker that accepts clients it can never serve. The test re-runs itself as a child process
//! that makes a real rumqttd router panic (a segment size below rumqttd's 1 KiB minimum, which
//! our config validation would refuse), and checks how that child ends.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "MQTT_BROKER_ROUTER_PANIC_CHILD";
const NAME: &str = "router_panic_ends_the_process_with_code_1";

#[test]
fn router_panic_ends_the_process_with_code_1() {
    if std::env::var_os(CHILD).is_some() {
        make_the_router_panic();
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not exit after the router panicked");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("max_segment_size"),
        "default panic message kept: {stderr}"
    );
    assert!(
        stderr.contains("rumqttd router thread panicked; broker cannot route messages, exiting"),
        "{stderr}"
    );
}

fn make_the_router_panic() {
    mqtt_broker::install_router_panic_hook();
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 10,
            max_outgoing_packet_count: 10,
            max_segment_size: 512,
            max_segment_count: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let broker = rumqttd::Broker::new(config);
    let (mut tx, _rx) = broker.link("probe").unwrap();
    // The first subscription creates a commit log, and rumqttd panics on its segment size.
    tx.subscribe("t").unwrap();
    std::thread::sleep(Duration::from_secs(10));
    // Still alive: the hook did not fire; the parent sees exit code 0 and fails.
}
