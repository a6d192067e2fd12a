//! One small HTTP client for the processes the tests and the bench talk to over HTTP (a NATS
//! node's monitoring port, the broker's `/metrics`): ureq, no TLS, loopback only.

use std::time::Duration;

/// The body of `GET path` on 127.0.0.1:`port`, if it answers within 2 s.
pub fn get(port: u16, path: &str) -> Option<String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build(),
    );
    let mut reply = agent
        .get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    reply.body_mut().read_to_string().ok()
}
